//! The status built from discovery, pools and live counts.

use sriov::discovery::{Netdev, Node, PciNetDevice, SriovStatus, Vf};
use sriov::names::PciAddress;
use sriov_node_state::{build_status, PoolCounts, SriovState};
use std::collections::BTreeMap;

fn netdev(name: &str, up: bool, mtu: u32) -> Netdev {
    Netdev {
        name: name.into(),
        mac: None,
        mtu: Some(mtu),
        operstate: Some(if up { "up" } else { "down" }.into()),
        carrier: Some(up),
        link_type: Some("ether".into()),
    }
}

fn pf(
    pci: &str,
    netdevs: Vec<Netdev>,
    sriov: SriovStatus,
    vfs: u32,
    numa: Option<u32>,
) -> PciNetDevice {
    let pci = PciAddress::parse(pci).unwrap();
    let vfs = (0..vfs)
        .map(|i| Vf {
            pci: PciAddress::parse(&format!("0000:3b:02.{i}")).unwrap(),
            index: i,
            pf: pci,
            vendor: 0x8086,
            device: 0x1889,
            driver: Some("iavf".into()),
            netdev: Some(format!("ens1f0v{i}")),
            netdev_details: None,
            iommu_group: None,
            numa_node: numa,
            rdma: false,
        })
        .collect();
    PciNetDevice {
        pci,
        vendor: 0x8086,
        device: 0x1593,
        class: 0x020000,
        driver: Some("ice".into()),
        numa_node: numa,
        netdevs,
        sriov,
        vfs,
        rdma: false,
        acpi_index: None,
    }
}

fn node() -> Node {
    Node {
        devices: vec![
            pf(
                "0000:3b:00.0",
                vec![netdev("ens1f0", true, 9000)],
                SriovStatus::Enabled {
                    enabled: 4,
                    total: 64,
                },
                4,
                Some(0),
            ),
            pf(
                "0000:3b:00.1",
                vec![netdev("ens1f1", false, 1500)],
                SriovStatus::Disabled { total: 64 },
                0,
                Some(0),
            ),
            pf("0000:5e:00.0", vec![], SriovStatus::NotSupported, 0, None),
        ],
        warnings: vec![],
        selector_attrs: Default::default(),
    }
}

#[test]
fn status_reads_like_an_adapter_table() {
    let node = node();
    let config = sriov::config::Config::parse(
        r#"{"resourceList": [{"resourceName": "fast", "selectors": {"pfNames": ["ens1f0#0-2"]}},
                             {"resourceName": "rest", "selectors": {"drivers": ["iavf"]}}]}"#,
        "intel.com",
    )
    .unwrap();
    let pools = sriov::pools::assign(&config, &node, "intel.com", &[]);
    let counts = BTreeMap::from([(
        "intel.com/fast".to_string(),
        PoolCounts {
            healthy: 2,
            allocated: 1,
        },
    )]);
    let s = build_status(
        &node,
        &pools,
        &counts,
        Some("config: resourceList[2]: refused".into()),
        &|_| None,
    );

    assert_eq!(s.pfs.len(), 3);
    let p = &s.pfs[0];
    assert_eq!(
        (
            p.name.as_str(),
            p.pci_address.as_str(),
            p.vendor_device.as_str()
        ),
        ("ens1f0", "0000:3b:00.0", "8086:1593")
    );
    assert_eq!(
        (p.sriov, p.vfs_enabled, p.vfs_total),
        (SriovState::Enabled, 4, 64)
    );
    assert_eq!(
        (p.link.as_str(), p.mtu, p.numa_node, p.driver.as_deref()),
        ("up", Some(9000), Some(0), Some("ice"))
    );
    assert_eq!(
        (s.pfs[1].sriov, s.pfs[1].vfs_total, s.pfs[1].link.as_str()),
        (SriovState::Disabled, 64, "down")
    );
    // No netdev: named by its PCI address.
    assert_eq!(
        (s.pfs[2].name.as_str(), s.pfs[2].link.as_str()),
        ("0000:5e:00.0", "none")
    );

    let names: Vec<_> = s
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.vfs, p.healthy, p.allocated))
        .collect();
    // `rest` has no live counts yet: all healthy, none allocated.
    assert_eq!(
        names,
        [("intel.com/fast", 3, 2, 1), ("intel.com/rest", 1, 1, 0)]
    );

    let sum = &s.summary;
    assert_eq!(sum.adapters, "ens1f0,ens1f1,0000:5e:00.0");
    assert_eq!(sum.sriov, "4/64,off,-");
    assert_eq!(sum.links, "up,down,none");
    assert_eq!(sum.mtus, "9000,1500,-");
    assert_eq!(sum.numa, "0,0,-");
    assert_eq!(sum.drivers, "ice,ice,ice");
    assert_eq!(
        (sum.pools, sum.healthy.as_str(), sum.allocated),
        (2, "3/4", 1)
    );
    assert_eq!(
        s.last_error.as_deref(),
        Some("config: resourceList[2]: refused")
    );
    assert!(s.sriov_capable());
}

#[test]
fn capable_only_with_vfs_enabled() {
    let mut node = node();
    node.devices.remove(0);
    let s = build_status(&node, &Default::default(), &BTreeMap::new(), None, &|_| {
        None
    });
    assert!(!s.sriov_capable(), "capable but disabled is not enabled");
    assert_eq!(s.summary.healthy, "0/0");
    let json = serde_json::to_value(&s).unwrap();
    assert!(
        json.get("lastError").is_none(),
        "no error, no field (apply removes it)"
    );
    assert_eq!(json["pfs"][0]["sriov"], "Disabled");
    assert_eq!(json["pfs"][0]["vfsTotal"], 64);
}

#[test]
fn link_notifications_since_discovery_win() {
    let node = node();
    let from_sysfs = build_status(&node, &Default::default(), &BTreeMap::new(), None, &|_| {
        None
    });
    let name = node.devices[0].netdevs[0].name.clone();
    let was = from_sysfs.pfs[0].link.clone();
    let flipped = was == "up";
    let live = build_status(&node, &Default::default(), &BTreeMap::new(), None, &|n| {
        (n == name).then_some(!flipped)
    });
    assert_eq!(live.pfs[0].link, if flipped { "down" } else { "up" });
    assert_ne!(live.summary.links, from_sysfs.summary.links);
    // Other adapters keep what sysfs said.
    assert_eq!(live.pfs[1..], from_sysfs.pfs[1..]);
}
