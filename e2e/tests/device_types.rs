//! The device types beyond kernel VFs on simulated nodes (root): PCI accelerators
//! (`deviceType: accelerator`), scalable functions (`deviceType: auxNetDevice`) and vDPA
//! devices of VFs (`vdpaType`): discovery, pools with upstream's selectors and configs from
//! upstream's documentation. Allocate's outputs through the real daemon are tested in
//! e2e/tests/device_plugin.rs.
//!
//! Each test builds its own lab under a unique name; the lab's Drop removes it, also when the
//! test fails.

use sriov::config::Config;
use sriov::discovery::{DiscoveryOptions, Node};
use sriov::names::PciAddress;
use sriov::pools::{self, Uplinks};
use sriov::sysfs::Sysfs;
use sriov_e2e::sim::{self, unique_name, Model, SimNode, SimSpec};
use std::fs;

fn lab(spec: SimSpec) -> SimNode {
    SimNode::up(&spec).unwrap_or_else(|e| panic!("lab {}: {e}", spec.name))
}

fn pci(s: &str) -> PciAddress {
    PciAddress::parse(s).unwrap()
}

/// Discovery as the daemon does it for `config`, and the pools (no uplinks).
fn pools_of(node: &SimNode, config: &str) -> (Node, pools::Pools, u64) {
    let config = Config::parse(config, "intel.com").unwrap();
    let sysfs = Sysfs::new(node.sysfs_root());
    let found = Node::discover(&sysfs, &pools::discovery_options(&config)).unwrap();
    let reads = sysfs.reads();
    let assigned = pools::assign_with(&config, &found, "intel.com", Uplinks::Known(&[]));
    (found, assigned, reads)
}

fn ids(pools: &pools::Pools, name: &str) -> Vec<String> {
    pools
        .pool(name)
        .unwrap_or_else(|| panic!("no pool {name}"))
        .devices
        .iter()
        .map(|d| d.id())
        .collect()
}

/// An Intel ACC100 card as the kernel shows it (class 0x120000, PF 8086:0d5c, VFs 8086:0d5d on
/// vfio-pci): found only when the config has an accelerator pool, and selected with upstream's
/// accelerator selectors (pkg/accelerator/accelDeviceProvider.go GetFilteredDevices: vendors,
/// devices, drivers, pciAddresses) plus rootDevices with VF ranges.
#[test]
fn accelerator_functions_and_selectors() {
    let node = lab(SimSpec::new(unique_name("accel"))
        .pfs(1)
        .vfs(2)
        .accel_vfs(4)
        .links(false));
    let card = node.description().accelerator.clone().unwrap();
    let vfs: Vec<String> = card.vfs.iter().map(|v| v.pci.clone()).collect();

    // Without an accelerator pool nothing of class 0x12 is read.
    let (plain, _, plain_reads) = pools_of(
        &node,
        r#"{"resourceList": [{"resourceName": "net", "selectors": {"vendors": ["8086"]}}]}"#,
    );
    assert!(plain.accelerators.is_empty());

    // upstream README's accelerator example, with this card's VF device ID.
    let config = r#"{"resourceList": [
        {"resourceName": "net", "selectors": {"vendors": ["8086"]}},
        {"resourceName": "intel_fec", "deviceType": "accelerator",
         "selectors": [{"vendors": ["8086"], "devices": ["0d5d"]}]},
        {"resourceName": "fec_pf", "deviceType": "accelerator", "selectors": {"vendors": ["8086"]}}
    ]}"#;
    let (found, assigned, reads) = pools_of(&node, config);
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    assert!(
        reads > plain_reads,
        "the accelerator functions are read only now"
    );
    assert_eq!(found.accelerators.len(), 5, "{:?}", found.accelerators);
    let pf = &found.accelerators[0];
    assert_eq!(
        (
            pf.pci,
            pf.vendor,
            pf.device,
            pf.class,
            pf.driver.as_deref(),
            pf.pf
        ),
        (
            pci(sim::ACCEL_PCI),
            0x8086,
            0x0d5c,
            0x120000,
            Some("pci-pf-stub"),
            None
        )
    );
    for (k, a) in found.accelerators[1..].iter().enumerate() {
        assert_eq!(a.pci, pci(&vfs[k]));
        assert_eq!(
            (a.device, a.driver.as_deref(), a.pf, a.vf_index),
            (
                0x0d5d,
                Some("vfio-pci"),
                Some(pci(sim::ACCEL_PCI)),
                Some(k as u32)
            )
        );
    }
    // The NIC pool (vendors 8086) takes no accelerator; the FEC pool takes the VFs; the PF
    // (an accelerator function like the VFs, upstream holds no PF back) goes to the next pool.
    assert!(ids(&assigned, "intel.com/net")
        .iter()
        .all(|id| !id.starts_with("0000:f7")));
    assert_eq!(ids(&assigned, "intel.com/intel_fec"), vfs);
    assert_eq!(ids(&assigned, "intel.com/fec_pf"), [sim::ACCEL_PCI]);

    // drivers, pciAddresses, rootDevices with VF ranges, acpiIndexes (none here).
    let (_, p, _) = pools_of(
        &node,
        &format!(
            r#"{{"resourceList": [
            {{"resourceName": "a", "deviceType": "accelerator", "selectors": {{"pciAddresses": ["{}"]}}}},
            {{"resourceName": "b", "deviceType": "accelerator", "selectors": {{"rootDevices": ["{}#1-2"]}}}},
            {{"resourceName": "c", "deviceType": "accelerator", "selectors": {{"drivers": ["vfio-pci"]}}}},
            {{"resourceName": "d", "deviceType": "accelerator", "selectors": {{"acpiIndexes": ["7"]}}}},
            {{"resourceName": "e", "deviceType": "accelerator", "selectors": {{"pfNames": ["ens1f0"]}}}}
        ]}}"#,
            vfs[3],
            sim::ACCEL_PCI
        ),
    );
    assert_eq!(ids(&p, "intel.com/a"), [vfs[3].clone()]);
    assert_eq!(ids(&p, "intel.com/b"), [vfs[1].clone(), vfs[2].clone()]);
    assert_eq!(ids(&p, "intel.com/c"), [vfs[0].clone()]);
    assert!(ids(&p, "intel.com/d").is_empty());
    assert!(
        ids(&p, "intel.com/e").is_empty(),
        "an accelerator has no PF netdev: pfNames selects none"
    );
}

/// Scalable functions as mlx5 deploys them (auxiliary devices inside the PF's folder, with
/// `sfnum`, a netdev and an RDMA device), pooled with upstream's auxNetDevice selectors and
/// the configs of upstream's docs/subfunctions/README.md.
#[test]
fn scalable_functions_and_selectors() {
    let node = lab(SimSpec::new(unique_name("sf"))
        .pfs(2)
        .vfs(2)
        .sfs(3)
        .model(Model::Mellanox));
    let desc = node.description().clone();
    let sf = |pf: usize, k: usize| desc.pfs[pf].sfs[k].name.clone();
    // Another auxiliary device type (no sfnum: skipped without a word, as it is no SF), and an
    // SF whose sfnum is missing (skipped with a warning, as upstream fails to create it).
    let pf0 = node
        .sysfs_root()
        .join("bus/pci/devices")
        .join(sim::pf_pci(0));
    fs::create_dir_all(pf0.join("mlx5_core.eth.0/net")).unwrap();
    fs::create_dir_all(pf0.join("mlx5_core.sf.900/net")).unwrap();

    let config = r#"{"resourceList": [
        {"resourceName": "cx6dx_vf", "resourcePrefix": "nvidia.com",
         "selectors": [{"vendors": ["15b3"], "devices": ["1018"]}]},
        {"resourceName": "cx6dx_sf", "resourcePrefix": "nvidia.com", "deviceType": "auxNetDevice",
         "selectors": [{"vendors": ["15b3"], "devices": ["1017"], "auxTypes": ["sf"], "isRdma": true}]}
    ]}"#;
    let (found, assigned, _) = pools_of(&node, config);
    assert_eq!(found.aux_devices.len(), 6, "{:?}", found.aux_devices);
    assert_eq!(found.warnings.len(), 1, "{:?}", found.warnings);
    assert!(
        found.warnings[0].contains("mlx5_core.sf.900/sfnum"),
        "{:?}",
        found.warnings
    );
    let a = &found.aux_devices[0];
    let want = &desc.pfs[0].sfs[0];
    assert_eq!(
        (
            a.name.as_str(),
            a.aux_type.as_str(),
            a.sf_index,
            a.parent,
            a.pf_name.as_deref(),
            a.netdev.as_deref(),
            a.link_type.as_deref(),
            a.rdma,
            (a.vendor, a.device),
            a.driver.as_deref()
        ),
        (
            want.name.as_str(),
            "sf",
            1,
            pci(&sim::pf_pci(0)),
            Some("ens1f0"),
            Some(want.netdev.as_str()),
            Some("ether"),
            true,
            (0x15b3, 0x1017),
            Some("mlx5_core")
        )
    );
    // VFs and SFs apart: device IDs of the SF pool are the auxiliary names.
    assert_eq!(ids(&assigned, "nvidia.com/cx6dx_vf").len(), 4);
    assert_eq!(
        ids(&assigned, "nvidia.com/cx6dx_sf"),
        [sf(0, 0), sf(0, 1), sf(0, 2), sf(1, 0), sf(1, 1), sf(1, 2)]
    );

    // docs/subfunctions/README.md, BlueField-2 example ("pfNames": ["p0#1-5"]) on this node's
    // PF names: SF numbers 2-3 of ens1f0; rootDevices; linkTypes; auxTypes.
    let (_, p, _) = pools_of(
        &node,
        &format!(
            r#"{{"resourceList": [
            {{"resourceName": "bf2_sf", "deviceType": "auxNetDevice",
              "selectors": [{{"vendors": ["15b3"], "devices": ["1017"], "pfNames": ["ens1f0#2-5"], "auxTypes": ["sf"]}}]}},
            {{"resourceName": "ib", "deviceType": "auxNetDevice", "selectors": {{"auxTypes": ["sf"], "linkTypes": ["infiniband"]}}}},
            {{"resourceName": "root", "deviceType": "auxNetDevice", "selectors": {{"auxTypes": ["sf"], "rootDevices": ["{}#1"]}}}},
            {{"resourceName": "rest", "deviceType": "auxNetDevice", "selectors": {{"auxTypes": ["sf"], "drivers": ["mlx5_core"]}}}}
        ]}}"#,
            sim::pf_pci(1)
        ),
    );
    assert_eq!(ids(&p, "intel.com/bf2_sf"), [sf(0, 1), sf(0, 2)]);
    assert!(ids(&p, "intel.com/ib").is_empty());
    assert_eq!(ids(&p, "intel.com/root"), [sf(1, 0)]);
    assert_eq!(ids(&p, "intel.com/rest"), [sf(0, 0), sf(1, 1), sf(1, 2)]);

    // An SF whose netdev carries the default route is never offered.
    let config = Config::parse(
        r#"{"resourceList": [{"resourceName": "s", "deviceType": "auxNetDevice", "selectors": {"auxTypes": ["sf"]}}]}"#,
        "intel.com",
    )
    .unwrap();
    let uplink = [desc.pfs[1].sfs[2].netdev.clone()];
    let p = pools::assign_with(&config, &found, "intel.com", Uplinks::Known(&uplink));
    assert_eq!(ids(&p, "intel.com/s").len(), 5);
    assert!(!ids(&p, "intel.com/s").contains(&sf(1, 2)));
    let p = pools::assign_with(&config, &found, "intel.com", Uplinks::Unknown);
    assert!(ids(&p, "intel.com/s").is_empty());

    // Without an auxNetDevice pool no auxiliary device is read.
    let plain =
        Node::discover(&Sysfs::new(node.sysfs_root()), &DiscoveryOptions::default()).unwrap();
    assert!(plain.aux_devices.is_empty());
}

/// vDPA devices of VFs as the kernel lays them out (vhost_vdpa with its /dev node, virtio_vdpa
/// with a virtio netdev), pooled with the configs of upstream's docs/vdpa/configMap.yaml.
#[test]
fn vdpa_devices_and_vdpa_type() {
    let node = lab(SimSpec::new(unique_name("vdpa"))
        .pfs(1)
        .vfs(4)
        .vdpa(2)
        .model(Model::Mellanox));
    let desc = node.description().clone();
    let vf = |k: usize| desc.pfs[0].vfs[k].pci.clone();
    // docs/vdpa/configMap.yaml (device 101e is a ConnectX-6 Dx VF; this lab's VFs are 1018).
    let config = r#"{"resourceList": [
        {"resourceName": "vdpa_mlx_virtio",
         "selectors": [{"vendors": ["15b3"], "devices": ["1018"], "drivers": ["mlx5_core"], "vdpaType": "virtio"}]},
        {"resourceName": "vdpa_mlx_vhost",
         "selectors": [{"vendors": ["15b3"], "devices": ["1018"], "drivers": ["mlx5_core"], "vdpaType": "vhost"}]},
        {"resourceName": "plain", "selectors": [{"drivers": ["mlx5_core"]}]}
    ]}"#;
    let (found, assigned, _) = pools_of(&node, config);
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    let (_, vf0) = found.vf(&pci(&vf(0))).unwrap();
    let v0 = vf0.vdpa.as_ref().unwrap();
    assert_eq!(
        (v0.name.as_str(), v0.driver.as_deref(), v0.vhost.as_deref()),
        ("vdpa0", Some("vhost_vdpa"), Some("vhost-vdpa-0"))
    );
    let (_, vf1) = found.vf(&pci(&vf(1))).unwrap();
    let v1 = vf1.vdpa.as_ref().unwrap();
    assert_eq!(
        (
            v1.driver.as_deref(),
            v1.virtio.as_deref(),
            v1.virtio_netdev.as_deref()
        ),
        (Some("virtio_vdpa"), Some("virtio1"), Some("ens1f0v1vd"))
    );
    assert_eq!(ids(&assigned, "intel.com/vdpa_mlx_virtio"), [vf(1)]);
    assert_eq!(ids(&assigned, "intel.com/vdpa_mlx_vhost"), [vf(0)]);
    // The PF (no VFs left for it: it has VFs) and the VFs without vDPA devices.
    assert_eq!(ids(&assigned, "intel.com/plain"), [vf(2), vf(3)]);

    // A vDPA device unbound from its driver serves no vDPA pool (govdpa's bus info has no type).
    let link = node
        .sysfs_root()
        .join("bus/pci/devices")
        .join(vf(0))
        .join("vdpa0/driver");
    fs::remove_file(&link).unwrap();
    let (_, assigned, _) = pools_of(&node, config);
    assert!(ids(&assigned, "intel.com/vdpa_mlx_vhost").is_empty());
    assert_eq!(ids(&assigned, "intel.com/plain"), [vf(0), vf(2), vf(3)]);
}
