//! DRA devices and ResourceSlice specs built from discovery, pools and health: names,
//! attributes (dra-driver-sriov's, with their types), taints, chunking, the hand-over file.

use serde_json::json;
use sriov::discovery::{Netdev, Node, PciNetDevice, SriovStatus, Vf};
use sriov::health::{Health, Unhealthy};
use sriov::names::PciAddress;
use sriov_node_state::dra::{
    build_devices, device_name, slice_name, slice_specs, AttributeValue, DraDevices, DraOptions,
    PfTopology, DEFAULT_DRIVER, MAX_ATTRIBUTES,
};
use std::collections::BTreeMap;

fn pci(s: &str) -> PciAddress {
    PciAddress::parse(s).unwrap()
}

fn pf(bus: u8, vfs: u32, up: bool, numa: Option<u32>) -> PciNetDevice {
    let pf_pci = pci(&format!("0000:{bus:02x}:00.0"));
    let name = format!("ens{bus}f0");
    PciNetDevice {
        pci: pf_pci,
        vendor: 0x8086,
        device: 0x1593,
        class: 0x020000,
        driver: Some("ice".into()),
        numa_node: numa,
        netdevs: vec![Netdev {
            name: name.clone(),
            mac: None,
            mtu: Some(9000),
            operstate: Some(if up { "up" } else { "down" }.into()),
            carrier: Some(up),
            link_type: Some("ether".into()),
        }],
        sriov: SriovStatus::Enabled {
            enabled: vfs,
            total: 256,
        },
        vfs: (0..vfs)
            .map(|i| Vf {
                pci: pci(&format!("0000:{bus:02x}:{:02x}.{}", 2 + i / 8, i % 8)),
                index: i,
                pf: pf_pci,
                vendor: 0x8086,
                device: 0x1889,
                driver: Some(if i == 1 { "vfio-pci" } else { "iavf" }.into()),
                netdev: (i != 1).then(|| format!("{name}v{i}")),
                netdev_details: (i == 0).then(|| Netdev {
                    name: format!("{name}v0"),
                    mac: None,
                    mtu: Some(1500),
                    operstate: None,
                    carrier: None,
                    link_type: Some("ether".into()),
                }),
                iommu_group: (i == 1).then_some(42),
                numa_node: numa,
                rdma: i == 2,
            })
            .collect(),
        rdma: false,
        acpi_index: None,
    }
}

fn pools(node: &Node) -> sriov::pools::Pools {
    let config = sriov::config::Config::parse(
        r#"{"resourceList": [{"resourceName": "sriov_net", "selectors": {"drivers": ["iavf", "vfio-pci"]}}]}"#,
        "intel.com",
    )
    .unwrap();
    sriov::pools::assign(&config, node, "intel.com", &[])
}

fn attrs(d: &DraDevices, name: &str) -> serde_json::Value {
    let dev = d.devices.iter().find(|x| x.name == name).unwrap();
    serde_json::to_value(&dev.attributes).unwrap()
}

#[test]
fn devices_carry_dra_driver_sriov_attributes_and_ours() {
    let node = Node {
        devices: vec![pf(0x3b, 4, true, Some(1)), pf(0x5e, 2, true, None)],
        warnings: vec![],
        selector_attrs: Default::default(),
    };
    let topology = PfTopology {
        pcie_roots: BTreeMap::from([(pci("0000:3b:00.0"), "pci0000:3a".to_string())]),
        eswitch_modes: BTreeMap::from([(pci("0000:5e:00.0"), "switchdev".to_string())]),
    };
    let d = build_devices(
        &node,
        &pools(&node),
        &BTreeMap::new(),
        &topology,
        &DraOptions::default(),
    );
    assert_eq!(d.driver, DEFAULT_DRIVER);
    let names: Vec<_> = d.devices.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0000-3b-02-0",
            "0000-3b-02-1",
            "0000-3b-02-2",
            "0000-3b-02-3",
            "0000-5e-02-0",
            "0000-5e-02-1"
        ]
    );
    let dr = DEFAULT_DRIVER;
    assert_eq!(
        attrs(&d, "0000-3b-02-0"),
        json!({
            format!("{dr}/vendor"): {"string": "8086"},
            format!("{dr}/deviceID"): {"string": "1889"},
            format!("{dr}/pfDeviceID"): {"string": "1593"},
            format!("{dr}/pciAddress"): {"string": "0000:3b:02.0"},
            format!("{dr}/PFName"): {"string": "ens59f0"},
            format!("{dr}/EswitchMode"): {"string": "legacy"},
            format!("{dr}/vfID"): {"int": 0},
            format!("{dr}/pfPciAddress"): {"string": "0000:3b:00.0"},
            format!("{dr}/linkType"): {"string": "ethernet"},
            format!("{dr}/rdmaCapable"): {"bool": false},
            "k8s.cni.cncf.io/deviceID": {"string": "0000:3b:02.0"},
            "k8s.cni.cncf.io/resourceName": {"string": "intel.com/sriov_net"},
            "resource.kubernetes.io/pciBusID": {"string": "0000:3b:02.0"},
            "resource.kubernetes.io/pcieRoot": {"string": "pci0000:3a"},
            "dra.net/numaNode": {"int": 1},
            format!("{dr}/driver"): {"string": "iavf"},
            format!("{dr}/mtu"): {"int": 1500},
            format!("{dr}/linkState"): {"string": "up"},
        })
    );
    // A vfio-pci VF: its driver; no netdev, so no MTU.
    let vfio = attrs(&d, "0000-3b-02-1");
    assert_eq!(vfio[format!("{dr}/driver")], json!({"string": "vfio-pci"}));
    assert!(vfio.get(format!("{dr}/mtu")).is_none());
    assert_eq!(vfio[format!("{dr}/vfID")], json!({"int": 1}));
    assert_eq!(
        attrs(&d, "0000-3b-02-2")[format!("{dr}/rdmaCapable")],
        json!({"bool": true})
    );
    // No NUMA affinity is -1 (as dra-driver-sriov); unknown PCIe root: no attribute; the
    // eswitch mode as told.
    let other = attrs(&d, "0000-5e-02-1");
    assert_eq!(other["dra.net/numaNode"], json!({"int": -1}));
    assert!(other.get("resource.kubernetes.io/pcieRoot").is_none());
    assert_eq!(
        other[format!("{dr}/EswitchMode")],
        json!({"string": "switchdev"})
    );
    for dev in &d.devices {
        assert!(dev.attributes.len() <= MAX_ATTRIBUTES);
        assert!(dev.taints.is_empty());
    }
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn the_driver_name_is_the_attribute_domain_and_unhealthy_devices_get_taints() {
    let node = Node {
        devices: vec![pf(0x3b, 3, false, Some(0))],
        warnings: vec![],
        selector_attrs: Default::default(),
    };
    let opts = DraOptions {
        driver: "sriovnetwork.k8snetworkplumbingwg.io".into(),
        taints: true,
    };
    let health = BTreeMap::from([
        (
            pci("0000:3b:02.0"),
            Health::Unhealthy(Unhealthy::PfDown {
                pf: "ens59f0".into(),
            }),
        ),
        (
            pci("0000:3b:02.1"),
            Health::Unhealthy(Unhealthy::NoLongerMatches {
                driver: Some("vfio-pci".into()),
            }),
        ),
        (pci("0000:3b:02.2"), Health::Healthy),
    ]);
    let d = build_devices(&node, &pools(&node), &health, &PfTopology::default(), &opts);
    let a = attrs(&d, "0000-3b-02-0");
    assert_eq!(
        a["sriovnetwork.k8snetworkplumbingwg.io/PFName"],
        json!({"string": "ens59f0"}),
        "drop-in: dra-driver-sriov's domain"
    );
    assert_eq!(
        a["sriovnetwork.k8snetworkplumbingwg.io/linkState"],
        json!({"string": "down"})
    );
    let taints: Vec<_> = d
        .devices
        .iter()
        .map(|x| serde_json::to_value(&x.taints).unwrap())
        .collect();
    assert_eq!(
        taints,
        [
            json!([{"key": "sriovnetwork.k8snetworkplumbingwg.io/unhealthy", "value": "PfDown", "effect": "NoSchedule"}]),
            json!([{"key": "sriovnetwork.k8snetworkplumbingwg.io/unhealthy", "value": "DriverMismatch", "effect": "NoSchedule"}]),
            json!([]),
        ]
    );
    // The daemon's health says the PF is up again: linkState follows it, not the old sysfs read.
    assert_eq!(
        attrs(&d, "0000-3b-02-2")["sriovnetwork.k8snetworkplumbingwg.io/linkState"],
        json!({"string": "up"})
    );
    // Without taints, the same health gives none.
    let plain = build_devices(
        &node,
        &pools(&node),
        &health,
        &PfTopology::default(),
        &DraOptions::default(),
    );
    assert!(plain.devices.iter().all(|x| x.taints.is_empty()));
}

#[test]
fn slices_are_cut_at_128_or_64_with_taints_and_count_right() {
    let node = Node {
        devices: (0..3).map(|b| pf(0x10 + b, 100, true, Some(0))).collect(),
        warnings: vec![],
        selector_attrs: Default::default(),
    };
    let mut d = build_devices(
        &node,
        &pools(&node),
        &BTreeMap::new(),
        &PfTopology::default(),
        &DraOptions::default(),
    );
    assert_eq!(d.devices.len(), 300);
    let s = slice_specs(&d, "worker-1", 7);
    let sizes: Vec<_> = s.iter().map(|x| x.devices.len()).collect();
    assert_eq!(sizes, [128, 128, 44]);
    for x in &s {
        assert_eq!(
            (
                x.pool.name.as_str(),
                x.pool.generation,
                x.pool.resource_slice_count
            ),
            ("worker-1", 7, 3)
        );
        assert_eq!(
            (x.node_name.as_str(), x.driver.as_str()),
            ("worker-1", DEFAULT_DRIVER)
        );
    }
    // In PCI order across slices, each device once.
    let all: Vec<_> = s.iter().flat_map(|x| &x.devices).map(|x| &x.name).collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted);
    d.taints = true;
    let sizes: Vec<_> = slice_specs(&d, "worker-1", 1)
        .iter()
        .map(|x| x.devices.len())
        .collect();
    assert_eq!(sizes, [64, 64, 64, 64, 44]);
    d.devices.clear();
    assert!(slice_specs(&d, "worker-1", 1).is_empty());
    let json = serde_json::to_value(&s[2]).unwrap();
    assert_eq!(
        json["pool"],
        json!({"name": "worker-1", "generation": 7, "resourceSliceCount": 3})
    );
    assert_eq!(json["nodeName"], "worker-1");
}

#[test]
fn names_are_dns() {
    assert_eq!(device_name(&pci("0000:3b:02.1")), "0000-3b-02-1");
    assert_eq!(device_name(&pci("10000:af:1f.7")), "10000-af-1f-7");
    assert_eq!(
        slice_name("worker-1", DEFAULT_DRIVER, 3),
        "worker-1-sriov.sriov-rs.io-3"
    );
    let long = "n".repeat(250);
    let a = slice_name(&long, DEFAULT_DRIVER, 12);
    assert!(a.len() <= 253, "{}", a.len());
    assert!(a.ends_with("-12"));
    assert_eq!(a, slice_name(&long, DEFAULT_DRIVER, 12), "stable");
    assert_ne!(
        slice_name(&long, DEFAULT_DRIVER, 1),
        slice_name(&format!("{long}x"), DEFAULT_DRIVER, 1)
    );
}

#[test]
fn the_hand_over_file_round_trips() {
    let node = Node {
        devices: vec![pf(0x3b, 2, true, Some(0))],
        warnings: vec![],
        selector_attrs: Default::default(),
    };
    let d = build_devices(
        &node,
        &pools(&node),
        &BTreeMap::new(),
        &PfTopology::default(),
        &DraOptions {
            taints: true,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dra-devices.json");
    sriov_node_state::status_file::write_json(&path, &d, "DRA devices file").unwrap();
    let back: DraDevices = sriov_node_state::status_file::read_json(&path, "DRA devices file")
        .unwrap()
        .unwrap();
    assert_eq!(back, d);
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(raw["driver"], DEFAULT_DRIVER);
    assert_eq!(raw["taints"], true);
    assert_eq!(raw["devices"][0]["name"], "0000-3b-02-0");
    std::fs::write(&path, r#"{"driver": 1}"#).unwrap();
    let err = sriov_node_state::status_file::read_json::<DraDevices>(&path, "DRA devices file")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a DRA devices file"), "{err}");
    // Attribute values are typed as the API types them.
    assert_eq!(
        serde_json::to_value(AttributeValue::Version("1.2.3".into())).unwrap(),
        json!({"version": "1.2.3"})
    );
}
