//! Config parsing (upstream config.json, as documented upstream) and pool selection on
//! hand-built nodes. Selection on real sysfs trees is tested in e2e/tests/discovery.rs.

use sriov::config::{AllocationPolicy, Config, ConfigError, VfRanges};
use sriov::discovery::{Netdev, Node, PciNetDevice, SriovStatus, Vf};
use sriov::names::PciAddress;
use sriov::pools;

fn pci(s: &str) -> PciAddress {
    PciAddress::parse(s).unwrap()
}

fn netdev(name: &str, link_type: &str) -> Netdev {
    Netdev {
        name: name.into(),
        mac: None,
        mtu: Some(1500),
        operstate: Some("up".into()),
        carrier: Some(true),
        link_type: Some(link_type.into()),
    }
}

/// A PF at bus `bus` with `n` VFs (vfio-bound from index `vfio_from`).
fn pf(
    bus: u8,
    name: &str,
    ids: (u16, u16, u16),
    drivers: (&str, &str),
    n: u32,
    vfio_from: u32,
) -> PciNetDevice {
    let (vendor, pf_dev, vf_dev) = ids;
    let pf_pci = PciAddress {
        domain: 0,
        bus,
        device: 0,
        function: 0,
    };
    let vfs = (0..n)
        .map(|i| {
            let rid = 16 + i;
            let vfio = i >= vfio_from;
            Vf {
                pci: PciAddress {
                    domain: 0,
                    bus,
                    device: (rid >> 3) as u8,
                    function: (rid & 7) as u8,
                },
                index: i,
                pf: pf_pci,
                vendor,
                device: vf_dev,
                driver: Some(if vfio {
                    "vfio-pci".into()
                } else {
                    drivers.1.into()
                }),
                netdev: (!vfio).then(|| format!("{name}v{i}")),
                netdev_details: None,
                iommu_group: vfio.then_some(100 + i),
                numa_node: Some(u32::from(bus % 2)),
                rdma: vendor == 0x15b3,
            }
        })
        .collect();
    PciNetDevice {
        pci: pf_pci,
        vendor,
        device: pf_dev,
        class: 0x020000,
        driver: Some(drivers.0.into()),
        numa_node: Some(u32::from(bus % 2)),
        netdevs: vec![netdev(
            name,
            if vendor == 0x15b3 && bus == 0x5f {
                "infiniband"
            } else {
                "ether"
            },
        )],
        sriov: if n == 0 {
            SriovStatus::Disabled { total: 8 }
        } else {
            SriovStatus::Enabled {
                enabled: n,
                total: 8,
            }
        },
        vfs,
        rdma: vendor == 0x15b3,
        acpi_index: Some(u32::from(bus)),
    }
}

const INTEL: (u16, u16, u16) = (0x8086, 0x1572, 0x154c);
const MLNX: (u16, u16, u16) = (0x15b3, 0x1017, 0x1018);

fn node() -> Node {
    let plain = PciNetDevice {
        pci: pci("0000:00:1f.6"),
        vendor: 0x8086,
        device: 0x15b8,
        class: 0x020000,
        driver: Some("e1000e".into()),
        numa_node: None,
        netdevs: vec![netdev("eno1", "ether")],
        sriov: SriovStatus::NotSupported,
        vfs: vec![],
        rdma: false,
        acpi_index: Some(1),
    };
    Node {
        devices: vec![
            plain,
            pf(0x3b, "ens1f0", INTEL, ("i40e", "iavf"), 8, 6),
            pf(0x3c, "ens2f0", INTEL, ("i40e", "iavf"), 4, 4),
            pf(0x5e, "ens3f0", MLNX, ("mlx5_core", "mlx5_core"), 4, 4),
            pf(0x5f, "ib0", MLNX, ("mlx5_core", "mlx5_core"), 2, 2),
            pf(0x60, "ens5f0", INTEL, ("i40e", "iavf"), 0, 0),
        ],
        warnings: vec![],
        selector_attrs: Default::default(),
    }
}

fn names(pools: &pools::Pools, name: &str) -> Vec<String> {
    pools
        .pool(name)
        .unwrap_or_else(|| panic!("no pool {name}"))
        .devices
        .iter()
        .map(|d| d.pci.to_string())
        .collect()
}

/// The documented upstream example: kernel VFs, DPDK VFs by PF, Mellanox RDMA.
#[test]
fn upstream_basic_example() {
    let text = r#"{
      "resourceList": [
        {"resourceName": "intel_sriov_netdevice",
         "selectors": {"vendors": ["8086"], "devices": ["154c", "10ed", "1889"], "drivers": ["i40evf", "ixgbevf", "iavf"]}},
        {"resourceName": "intel_sriov_dpdk", "resourcePrefix": "intel.com",
         "selectors": {"vendors": ["8086"], "devices": ["154c", "10ed"], "drivers": ["vfio-pci"],
                       "pfNames": ["ens1f0", "enp2s2f1"], "needVhostNet": true}},
        {"resourceName": "mlnx_sriov_rdma", "resourcePrefix": "mellanox.com",
         "selectors": {"vendors": ["15b3"], "devices": ["1018"], "drivers": ["mlx5_core"], "isRdma": true}}
      ]
    }"#;
    let config = Config::parse(text, "intel.com").unwrap();
    assert!(config.warnings.is_empty());
    let res = config.resources.as_ref().unwrap();
    assert_eq!(res.len(), 3);
    assert!(res[1].need_vhost_net());
    assert!(res[2].is_rdma());
    assert_eq!(res[2].full_name(), "mellanox.com/mlnx_sriov_rdma");
    let pools = pools::assign(&config, &node(), "intel.com", &[]);
    assert!(!pools.zero_config);
    // Kernel VFs of both Intel PFs: 6 of ens1f0 (two are vfio) and all 4 of ens2f0.
    let kernel = names(&pools, "intel.com/intel_sriov_netdevice");
    assert_eq!(kernel.len(), 10);
    assert_eq!(kernel[0], "0000:3b:02.0");
    assert_eq!(kernel[9], "0000:3c:02.3");
    // vfio VFs of ens1f0 only (pfNames), not of ens2f0 (which has none anyway).
    assert_eq!(
        names(&pools, "intel.com/intel_sriov_dpdk"),
        ["0000:3b:02.6", "0000:3b:02.7"]
    );
    assert_eq!(names(&pools, "mellanox.com/mlnx_sriov_rdma").len(), 6);
}

/// Node-specific configs as upstream documents them carry Go field names (`IsRdma`,
/// `NeedVhostNet`, `SelectorObj`): Go matches keys case-insensitively, so must we.
#[test]
fn upstream_node_specific_config_with_go_field_names() {
    let text = r#"{"resourceList":[{"resourceName":"sriovnics","selectors":{"pfNames":["ens1f0#0-4","ens2f0#0-9"],"IsRdma":false,"NeedVhostNet":false},"SelectorObj":null}]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let pools = pools::assign(&config, &node(), "intel.com", &[]);
    let got = names(&pools, "intel.com/sriovnics");
    // ens1f0 VFs 0-4 and every ens2f0 VF (it has 4).
    assert_eq!(got.len(), 9);
    assert!(got.contains(&"0000:3b:02.4".to_string()));
    assert!(!got.contains(&"0000:3b:02.5".to_string()));
}

#[test]
fn vf_ranges_and_root_devices() {
    let text = r#"{"resourceList":[
        {"resourceName":"a","selectors":{"pfNames":["ens1f0#1,3,5-6"]}},
        {"resourceName":"b","selectors":{"rootDevices":["0000:3b:00.0#0-3"]}},
        {"resourceName":"c","selectors":{"rootDevices":["0000:3c:00.0"]}}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let pools = pools::assign(&config, &node(), "intel.com", &[]);
    assert_eq!(
        names(&pools, "intel.com/a"),
        [
            "0000:3b:02.1",
            "0000:3b:02.3",
            "0000:3b:02.5",
            "0000:3b:02.6"
        ]
    );
    // First match wins: 1 and 3 went to "a" already.
    assert_eq!(
        names(&pools, "intel.com/b"),
        ["0000:3b:02.0", "0000:3b:02.2"]
    );
    assert_eq!(names(&pools, "intel.com/c").len(), 4);
    assert!(VfRanges(vec![(5, 6)]).contains(6));
}

#[test]
fn selector_list_first_object_wins_and_keys_intersect() {
    let text = r#"{"resourceList":[
        {"resourceName":"mixed","selectors":[
            {"vendors":["15b3"],"linkTypes":["infiniband"]},
            {"vendors":["0x8086"],"drivers":["vfio-pci"]}
        ]},
        {"resourceName":"rest","selectors":{}}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let pools = pools::assign(&config, &node(), "intel.com", &[]);
    let mixed = names(&pools, "intel.com/mixed");
    // Both ib0 VFs (infiniband link) + the 2 Intel vfio VFs.
    assert_eq!(
        mixed,
        [
            "0000:3b:02.6",
            "0000:3b:02.7",
            "0000:5f:02.0",
            "0000:5f:02.1"
        ]
    );
    let pool = pools.pool("intel.com/mixed").unwrap();
    let ib = pool
        .devices
        .iter()
        .find(|d| d.pci == pci("0000:5f:02.0"))
        .unwrap();
    assert_eq!(pool.config.matching_selector(ib), Some(0));
    // Everything else (incl. PFs without VFs: eno1, ens5f0) goes to "rest".
    let rest = names(&pools, "intel.com/rest");
    assert!(rest.contains(&"0000:00:1f.6".to_string()));
    assert!(rest.contains(&"0000:60:00.0".to_string()));
    assert!(
        !rest.contains(&"0000:3b:00.0".to_string()),
        "a PF with VFs is never a device"
    );
    assert_eq!(rest.len(), 6 + 4 + 4 + 2);
}

#[test]
fn pci_addresses_acpi_and_default_route_exclusion() {
    let text = r#"{"resourceList":[
        {"resourceName":"byaddr","selectors":{"pciAddresses":["0000:3b:02.1","0000:00:1f.6"]}},
        {"resourceName":"byacpi","selectors":{"acpiIndexes":["96"]}}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let opts = pools::discovery_options(&config);
    assert!(opts.acpi_index && !opts.rdma);
    // eno1 carries the default route: never handed out.
    let pools = pools::assign(&config, &node(), "intel.com", &["eno1".to_string()]);
    assert_eq!(names(&pools, "intel.com/byaddr"), ["0000:3b:02.1"]);
    assert_eq!(names(&pools, "intel.com/byacpi"), ["0000:60:00.0"]);
}

#[test]
fn unknown_uplinks_keep_every_netdev_out() {
    // Everything with a netdev could be the uplink when the routes cannot be read: only the
    // vfio-pci VFs (no netdev) are offered.
    let config = Config::parse(
        r#"{"resourceList":[{"resourceName":"all","selectors":{"vendors":["8086"]}}]}"#,
        "intel.com",
    )
    .unwrap();
    let known = pools::assign(&config, &node(), "intel.com", &[]);
    let unknown = pools::assign_with(&config, &node(), "intel.com", pools::Uplinks::Unknown);
    assert!(names(&known, "intel.com/all").len() > 4);
    let all = unknown.pool("intel.com/all").unwrap();
    assert_eq!(
        all.devices.len(),
        2,
        "{:?}",
        names(&unknown, "intel.com/all")
    );
    assert!(all
        .devices
        .iter()
        .all(|d| d.netdev.is_none() && d.driver.as_deref() == Some("vfio-pci")));
}

#[test]
fn zero_config_one_pool_per_enabled_pf() {
    let config = Config::parse("{}", "example.org").unwrap();
    assert!(config.resources.is_none());
    let pools = pools::assign(&config, &node(), "example.org", &[]);
    assert!(pools.zero_config);
    let got: Vec<String> = pools.pools.iter().map(|p| p.full_name()).collect();
    assert_eq!(
        got,
        [
            "example.org/ens1f0",
            "example.org/ens2f0",
            "example.org/ens3f0",
            "example.org/ib0"
        ]
    );
    assert_eq!(pools.pool("example.org/ens1f0").unwrap().devices.len(), 8);
    // An explicit empty list means no pools at all.
    let none = Config::parse(r#"{"resourceList": []}"#, "intel.com").unwrap();
    assert!(pools::assign(&none, &node(), "intel.com", &[])
        .pools
        .is_empty());
}

#[test]
fn zero_config_names_are_sanitised_and_unique() {
    let mut n = node();
    n.devices[1].netdevs[0].name = "ens1f0.100".into();
    n.devices[2].netdevs[0].name = "ens1f0_100".into();
    let pools = pools::assign(&Config::default(), &n, "intel.com", &[]);
    let got: Vec<String> = pools
        .pools
        .iter()
        .map(|p| p.config.resource_name.clone())
        .collect();
    assert_eq!(got[0], "ens1f0_100");
    assert_eq!(got[1], "ens1f0_100_2");
}

#[test]
fn additional_info_and_policy() {
    let text = r#"{"resourceList":[{"resourceName":"x","allocationPolicy":"spread",
        "additionalInfo":{"*":{"token":"abc"},"0000:3b:02.0":{"port":"1"}}}]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let r = &config.resources.unwrap()[0];
    assert_eq!(r.allocation_policy, AllocationPolicy::Spread);
    let info = r.additional_info.as_ref().unwrap();
    assert_eq!(info["*"]["token"], "abc");
    assert_eq!(info["0000:3b:02.0"]["port"], "1");
    // Absent or null: None (no `extra` entry); `{}`: Some (every device gets `"extra": {}`),
    // as Go decodes pkg/types/types.go `ResourceConfig.AdditionalInfo`.
    for (text, given) in [
        (r#"{"resourceList":[{"resourceName":"x"}]}"#, false),
        (
            r#"{"resourceList":[{"resourceName":"x","additionalInfo":null}]}"#,
            false,
        ),
        (
            r#"{"resourceList":[{"resourceName":"x","additionalInfo":{}}]}"#,
            true,
        ),
    ] {
        let c = Config::parse(text, "intel.com").unwrap();
        assert_eq!(
            c.resources.unwrap()[0].additional_info.is_some(),
            given,
            "{text}"
        );
    }
}

#[test]
fn provisioning_extension() {
    let text = r#"{"provisioning":[
        {"pfNames":["ens1f0"],"numVfs":4,"mtu":9000},
        {"vendors":["8086"],"numVfs":2}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let n = node();
    let plan = pools::provisioning_plan(&config, &n);
    let got: Vec<(String, Option<u32>, Option<u32>)> = plan
        .iter()
        .map(|(pf, p)| (pf.display_name(), p.num_vfs, p.mtu))
        .collect();
    assert_eq!(
        got,
        [
            ("ens1f0".to_string(), Some(4), Some(9000)),
            ("ens2f0".to_string(), Some(2), None),
            ("ens5f0".to_string(), Some(2), None),
        ]
    );
}

fn err(text: &str) -> String {
    match Config::parse(text, "intel.com") {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_configs_name_the_place() {
    assert!(matches!(
        Config::parse("{", "intel.com"),
        Err(ConfigError::Json(_))
    ));
    let cases = [
        (r#"[]"#, "config: must be a JSON object"),
        (
            r#"{"resourceLists": []}"#,
            "config.resourceLists: unknown key (did you mean \"resourceList\"?)",
        ),
        (
            r#"{"resourceList": [{"selectors": {}}]}"#,
            "resourceName is required",
        ),
        (
            r#"{"resourceList": [{"resourceName": "../../etc"}]}"#,
            "invalid resource name",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "resourcePrefix": "Bad_Prefix"}]}"#,
            "resourcePrefix",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a"}, {"resourceName": "a"}]}"#,
            "intel.com/a is defined twice",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"vendor": ["8086"]}}]}"#,
            "resourceList[0] (a).selectors.vendor: unknown key (did you mean \"vendors\"?)",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"vendors": "8086"}}]}"#,
            "selectors.vendors: must be a list of strings, not \"8086\"",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"isRdma": "yes"}}]}"#,
            "selectors.isRdma: must be true or false, not \"yes\"",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": 7}]}"#,
            "(a).selectors: must be an object or a list of objects, not 7",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "additionalInfo": {"*": {"k": 1}}}]}"#,
            "additionalInfo.*.k: must be a string, not 1",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"vendors": ["80861"]}}]}"#,
            "not a hex PCI ID",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"ddpProfiles": "gtp"}}]}"#,
            "selectors.ddpProfiles: must be a list of strings, not \"gtp\"",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"pKeys": [7]}}]}"#,
            "selectors.pKeys: must be a list of strings, not 7",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": [{"vdpaType": "virtio"}]}]}"#,
            "selectors[0].vdpaType: this upstream selector is not supported",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"pfNames": ["ens1f0#3-1"]}}]}"#,
            "3 is above 1",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"pfNames": ["ens1f0#x"]}}]}"#,
            "bad VF range",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"pfNames": ["../../etc"]}}]}"#,
            "invalid interface name",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"rootDevices": ["../../etc#0-1"]}}]}"#,
            "invalid PCI address",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "selectors": {"pciAddresses": ["0000:3b:02.9"]}}]}"#,
            "invalid PCI address",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "deviceType": "gpu"}]}"#,
            "unknown device type",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "allocationPolicy": "random"}]}"#,
            "not one of pack, spread",
        ),
        (
            r#"{"resourceList": [{"resourceName": "a", "additionalInfo": {"../x": {}}}]}"#,
            "invalid PCI address",
        ),
        (r#"{"provisioning": [{"numVfs": 4}]}"#, "names no PF"),
        (
            r#"{"provisioning": [{"pfNames": ["ens1f0"]}]}"#,
            "sets nothing",
        ),
        (
            r#"{"provisioning": [{"pfNames": ["ens1f0"], "numVfs": -1}]}"#,
            "numVfs: must be a non-negative integer, not -1",
        ),
        (
            r#"{"provisioning": [{"pfNames": ["ens1f0"], "mtu": 20}]}"#,
            "provisioning[0].mtu: 20: valid MTUs are 68-65535",
        ),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert!(got.contains(want), "{text}\n  got:  {got}\n  want: {want}");
    }
}

#[test]
fn other_device_types_and_misplaced_keys_warn() {
    let text = r#"{"resourceList": [
        {"resourceName": "fpga", "deviceType": "accelerator", "selectors": {"vendors": ["8086"]}},
        {"resourceName": "old", "isRdma": true, "selectors": {"vendors": ["15b3"]}}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    assert_eq!(config.resources.as_ref().unwrap().len(), 1);
    assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("deviceType \"accelerator\" is not supported"));
    assert!(config.warnings[1].contains("isRdma: belongs inside \"selectors\""));
}

/// Upstream pkg/resources/deviceSelectors.go, `pfNameSelector.Filter` and
/// `rootDeviceSelector.Filter`: a device without a PF name / PF address is skipped, and
/// pkg/utils/utils.go `GetPfName` / `GetPfAddr` give "" for anything that is not a VF (no
/// `physfn`). So a PF without VFs (ens5f0) or a plain NIC (eno1) is never selected by
/// `pfNames` or `rootDevices`, with or without a VF range. These pools held them before.
#[test]
fn pf_names_and_root_devices_never_select_a_pf() {
    let text = r#"{"resourceList":[
        {"resourceName":"bypf","selectors":{"pfNames":["ens5f0","eno1"]}},
        {"resourceName":"byroot","selectors":{"rootDevices":["0000:60:00.0","0000:00:1f.6"]}},
        {"resourceName":"rest","selectors":{"drivers":["i40e","e1000e"]}}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let pools = pools::assign(&config, &node(), "intel.com", &[]);
    assert!(names(&pools, "intel.com/bypf").is_empty());
    assert!(names(&pools, "intel.com/byroot").is_empty());
    // The PFs are still devices for the other selectors, as upstream offers them.
    assert_eq!(
        names(&pools, "intel.com/rest"),
        ["0000:00:1f.6", "0000:60:00.0"]
    );
}

/// `getItem` compares the PF part with `strings.EqualFold` and returns the first entry that
/// names the PF; `isSelected` then applies that entry's ranges only
/// (pkg/resources/deviceSelectors.go).
#[test]
fn pf_names_fold_case_and_the_first_entry_for_a_pf_wins() {
    let text = r#"{"resourceList":[
        {"resourceName":"upper","selectors":{"pfNames":["ENS2F0#2-4"]}},
        {"resourceName":"twice","selectors":{"pfNames":["ens1f0#0-1","Ens1f0#4"]}},
        {"resourceName":"roots","selectors":{"rootDevices":["0000:5e:00.0#1","0000:5e:00.0#0-3"]}}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let pools = pools::assign(&config, &node(), "intel.com", &[]);
    // ens2f0 has VFs 0-3: 2 and 3.
    assert_eq!(
        names(&pools, "intel.com/upper"),
        ["0000:3c:02.2", "0000:3c:02.3"]
    );
    // Only ens1f0#0-1 counts (2 VFs; before: 3 with VF 4).
    assert_eq!(
        names(&pools, "intel.com/twice"),
        ["0000:3b:02.0", "0000:3b:02.1"]
    );
    assert_eq!(names(&pools, "intel.com/roots"), ["0000:5e:02.1"]);
    // The dead entries are named.
    assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
    assert!(
        config.warnings[0].contains("pfNames[1]: Ens1f0 is already named")
            && config.warnings[0].contains("(ens1f0#0-1)"),
        "{:?}",
        config.warnings
    );
    assert!(config.warnings[1].contains("rootDevices[1]: 0000:5e:00.0 is already named"));
}

/// cmd/sriovdp/manager.go `readConfig`: a resource whose selectors cannot be turned into
/// selector objects (pkg/factory/factory.go `parseObjectOrSlice`: "need at least one
/// selector, got 0") is left out with a warning; the others are served.
#[test]
fn an_empty_selector_list_skips_only_that_resource() {
    let text = r#"{"resourceList":[
        {"resourceName":"empty","selectors":[]},
        {"resourceName":"kernel","selectors":{"drivers":["iavf"]}},
        {"resourceName":"empty","resourcePrefix":"example.com","selectors":[]}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    let res = config.resources.as_ref().unwrap();
    assert_eq!(
        res.iter().map(|r| r.full_name()).collect::<Vec<_>>(),
        ["intel.com/kernel"]
    );
    assert_eq!(config.warnings.len(), 2);
    assert!(
        config.warnings[0].contains("resourceList[0] (empty).selectors: an empty list"),
        "{:?}",
        config.warnings
    );
    let pools = pools::assign(&config, &node(), "intel.com", &[]);
    assert_eq!(names(&pools, "intel.com/kernel").len(), 6 + 4);
}

/// pkg/resources/pKeySelector.go and ddpSelector.go: a device matches when its value is one of
/// the list (exact strings); a device without one never does. Both are read only when a
/// selector uses them.
#[test]
fn p_keys_and_ddp_profiles_select_by_the_devices_value() {
    let text = r#"{"resourceList":[
        {"resourceName":"ib","selectors":{"pKeys":["0x8001"]}},
        {"resourceName":"gtp","selectors":{"ddpProfiles":["GTPv1-C/U IPv4/IPv6 payload"]}},
        {"resourceName":"none","selectors":{"pKeys":["0xffff"],"drivers":["iavf"]}}
    ]}"#;
    let config = Config::parse(text, "intel.com").unwrap();
    assert!(pools::discovery_options(&config).p_keys);
    assert!(pools::uses_ddp_profiles(&config));
    let plain = Config::parse(r#"{"resourceList":[{"resourceName":"a"}]}"#, "intel.com").unwrap();
    assert!(!pools::discovery_options(&plain).p_keys && !pools::uses_ddp_profiles(&plain));

    let mut node = node();
    let attrs = |p_key: Option<&str>, ddp: Option<&str>| sriov::discovery::SelectorAttrs {
        p_key: p_key.map(str::to_string),
        ddp_profile: ddp.map(str::to_string),
    };
    node.selector_attrs.extend([
        (pci("0000:5f:02.0"), attrs(Some("0xffff"), None)),
        (pci("0000:5f:02.1"), attrs(Some("0x8001"), None)),
        (
            pci("0000:3b:02.2"),
            attrs(None, Some("GTPv1-C/U IPv4/IPv6 payload")),
        ),
        (
            pci("0000:3b:02.3"),
            attrs(None, Some("ICE OS Default Package")),
        ),
    ]);
    let pools = pools::assign(&config, &node, "intel.com", &[]);
    assert_eq!(names(&pools, "intel.com/ib"), ["0000:5f:02.1"]);
    assert_eq!(names(&pools, "intel.com/gtp"), ["0000:3b:02.2"]);
    assert!(names(&pools, "intel.com/none").is_empty());
}
