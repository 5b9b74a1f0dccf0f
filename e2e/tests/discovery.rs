//! Discovery, pools, provisioning and the status view against simulated nodes (root).
//!
//! Each test builds its own lab under a unique name; the lab's Drop removes it, also when the
//! test fails.

use sriov::config::Config;
use sriov::discovery::{DiscoveryOptions, Node, SriovStatus};
use sriov::names::PciAddress;
use sriov::pools;
use sriov::provision::{self, ProvisionError, WaitPolicy};
use sriov::sysfs::Sysfs;
use sriov_e2e::sim::{unique_name, Model, SimNode, SimSpec};
use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::Duration;

fn lab(spec: SimSpec) -> SimNode {
    SimNode::up(&spec).unwrap_or_else(|e| panic!("lab {}: {e}", spec.name))
}

fn discover(node: &SimNode) -> Node {
    Node::discover(&Sysfs::new(node.sysfs_root()), &DiscoveryOptions::default()).unwrap()
}

fn pci(s: &str) -> PciAddress {
    PciAddress::parse(s).unwrap()
}

fn ip_json(node: &SimNode, ifname: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["-n", &node.netns_name(), "-j", "link", "show", ifname])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip link show {ifname}");
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

fn ip(node: &SimNode, args: &[&str]) {
    let st = Command::new("ip")
        .args(["-n", &node.netns_name()])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

#[test]
fn discovery_reports_what_the_lab_built() {
    let node = lab(SimSpec::new(unique_name("disc"))
        .pfs(3)
        .vfs(5)
        .numa(true)
        .vfio(1)
        .model(Model::Mixed));
    let desc = node.description().clone();
    let found = discover(&node);
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    // 3 PFs + the plain NIC; the NVMe disk is not a network device.
    assert_eq!(found.devices.len(), 4);
    let plain = found.device(&pci("0000:00:1f.6")).unwrap();
    assert_eq!(plain.sriov, SriovStatus::NotSupported);
    assert_eq!(plain.name(), Some("eno1"));
    assert!(found.device(&pci("0000:00:17.0")).is_none());

    for pf in &desc.pfs {
        let got = found.device(&pci(&pf.pci)).unwrap();
        assert_eq!(got.name(), Some(pf.netdev.as_str()));
        assert_eq!(format!("{:04x}", got.vendor), pf.vendor);
        assert_eq!(format!("{:04x}", got.device), pf.device);
        assert_eq!(got.driver.as_deref(), Some(pf.driver.as_str()));
        assert_eq!(got.numa_node.map(|n| n as i32).unwrap_or(-1), pf.numa_node);
        assert_eq!(
            got.sriov,
            SriovStatus::Enabled {
                enabled: 5,
                total: 8
            }
        );
        // Live link attributes come from the real veth.
        let link = ip_json(&node, &pf.netdev);
        let net = &got.netdevs[0];
        assert_eq!(net.mac.as_deref(), link["address"].as_str());
        assert_eq!(net.mtu, Some(1500));
        assert_eq!(net.link_type.as_deref(), Some("ether"));
        assert!(net.is_link_up(), "{net:?}");
        assert_eq!(got.vfs.len(), pf.vfs.len());
        for (vf, want) in got.vfs.iter().zip(&pf.vfs) {
            assert_eq!(vf.pci.to_string(), want.pci);
            assert_eq!(vf.index, want.index);
            assert_eq!(vf.pf, got.pci);
            assert_eq!(format!("{:04x}", vf.device), pf.vf_device);
            assert_eq!(vf.driver.as_deref(), Some(want.driver.as_str()));
            assert_eq!(vf.netdev, want.netdev);
            assert_eq!(vf.iommu_group, want.iommu_group);
            assert_eq!(vf.numa_node, got.numa_node);
        }
        // The last VF is vfio-bound: no netdev, an IOMMU group.
        let last = got.vfs.last().unwrap();
        assert!(last.is_userspace() && last.netdev.is_none() && last.iommu_group.is_some());
    }
    // --numa: first half of the PFs on node 0, the rest on node 1.
    let numas: Vec<Option<u32>> = desc
        .pfs
        .iter()
        .map(|p| found.device(&pci(&p.pci)).unwrap().numa_node)
        .collect();
    assert_eq!(numas, [Some(0), Some(1), Some(1)]);
}

#[test]
fn discovery_follows_live_links_and_netns_moves() {
    let node = lab(SimSpec::new(unique_name("live")).pfs(1).vfs(2));
    let pf = node.description().pfs[0].clone();
    ip(&node, &["link", "set", &pf.netdev, "mtu", "9000"]);
    ip(&node, &["link", "set", &pf.netdev, "down"]);
    let found = discover(&node);
    let net = &found.device(&pci(&pf.pci)).unwrap().netdevs[0];
    assert_eq!(net.mtu, Some(9000));
    assert_eq!(net.operstate.as_deref(), Some("down"));
    assert!(!net.is_link_up());

    // A VF netdev moved into a pod netns is no longer visible (as with real sysfs).
    let pod = format!("{}-pod", node.netns_name());
    let _pod = NetnsGuard::add(&pod);
    let vf0 = pf.vfs[0].netdev.clone().unwrap();
    ip(&node, &["link", "set", &vf0, "netns", &pod]);
    let found = discover(&node);
    let (_, vf) = found.vf(&pci(&pf.vfs[0].pci)).unwrap();
    assert_eq!(vf.netdev, None);
    let (_, vf1) = found.vf(&pci(&pf.vfs[1].pci)).unwrap();
    assert_eq!(vf1.netdev, pf.vfs[1].netdev);
}

/// Deletes a named netns on drop.
struct NetnsGuard(String);

impl NetnsGuard {
    fn add(name: &str) -> Self {
        let st = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(st.success());
        NetnsGuard(name.to_string())
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn pools_on_a_lab_tree() {
    let node = lab(SimSpec::new(unique_name("pools"))
        .pfs(4)
        .vfs(4)
        .vfio(1)
        .numa(true)
        .model(Model::Mixed)
        .links(false));
    let found = discover(&node);
    let config = Config::parse(
        r#"{"resourceList": [
            {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
            {"resourceName": "mlx", "resourcePrefix": "nvidia.com", "selectors": {"vendors": ["15b3"]}},
            {"resourceName": "first2", "selectors": {"pfNames": ["ens1f0#0-1", "ens3f0#1"]}},
            {"resourceName": "rest", "selectors": [{"rootDevices": ["0000:3b:00.0"]}, {"devices": ["154c"]}]}
        ]}"#,
        "intel.com",
    )
    .unwrap();
    let pools = pools::assign(&config, &found, "intel.com", &[]);
    let ids = |name: &str| -> Vec<String> {
        pools
            .pool(name)
            .unwrap()
            .devices
            .iter()
            .map(|d| d.pci.to_string())
            .collect()
    };
    // First match wins: every vfio VF (4) goes to dpdk, even Mellanox ones.
    assert_eq!(ids("intel.com/dpdk").len(), 4);
    // Mellanox PFs are ens2f0 and ens4f0 (odd indexes): 3 kernel VFs each.
    assert_eq!(ids("nvidia.com/mlx").len(), 6);
    assert_eq!(
        ids("intel.com/first2"),
        ["0000:3b:02.0", "0000:3b:02.1", "0000:3d:02.1"]
    );
    assert_eq!(
        ids("intel.com/rest"),
        ["0000:3b:02.2", "0000:3d:02.0", "0000:3d:02.2"]
    );
    // The plain NIC is a candidate (no VFs), but no selector matched it.
    assert!(pools.pool_of(&pci("0000:00:1f.6")).is_none());
    // Zero config: one pool per PF, all VFs.
    let zero = pools::assign(&Config::default(), &found, "intel.com", &[]);
    let names: Vec<String> = zero.pools.iter().map(|p| p.full_name()).collect();
    assert_eq!(
        names,
        [
            "intel.com/ens1f0",
            "intel.com/ens2f0",
            "intel.com/ens3f0",
            "intel.com/ens4f0"
        ]
    );
    assert!(zero.pools.iter().all(|p| p.devices.len() == 4));
    assert_eq!(zero.pools[2].devices[0].numa_node, Some(1));
}

#[test]
fn malformed_sysfs_gives_warnings_not_panics() {
    let node = lab(SimSpec::new(unique_name("bad")).pfs(3).vfs(3).links(false));
    let root = node.sysfs_root().to_path_buf();
    let desc = node.description().clone();
    let dev = |p: &str| root.join("bus/pci/devices").join(p);
    // PF 0: one VF's net/ folder is a file; a dangling virtfn link; garbage NUMA.
    fs::remove_dir_all(dev(&desc.pfs[0].vfs[1].pci).join("net")).unwrap();
    fs::write(dev(&desc.pfs[0].vfs[1].pci).join("net"), "not a folder").unwrap();
    fs::remove_file(dev(&desc.pfs[0].pci).join("virtfn2")).unwrap();
    symlink("../0000:ff:1f.7", dev(&desc.pfs[0].pci).join("virtfn2")).unwrap();
    fs::write(dev(&desc.pfs[0].pci).join("numa_node"), "lots\n").unwrap();
    // PF 1: garbage VF count; missing driver link.
    fs::write(
        dev(&desc.pfs[1].pci).join("sriov_numvfs"),
        "\u{0}\u{1}garbage",
    )
    .unwrap();
    // PF 2: a virtfn link that is not a PCI address; the driver link removed.
    symlink("../../etc", dev(&desc.pfs[2].pci).join("virtfn9")).unwrap();
    fs::remove_file(dev(&desc.pfs[2].pci).join("driver")).unwrap();
    // PF 2 has no sriov_vf_device (older kernels): VF IDs come from each VF.
    fs::remove_file(dev(&desc.pfs[2].pci).join("sriov_vf_device")).unwrap();
    // A folder entry that is not a PCI address, and a device with no class file.
    fs::create_dir(root.join("bus/pci/devices/not-a-device")).unwrap();
    fs::remove_file(dev("0000:00:17.0").join("class")).unwrap();

    let found = discover(&node);
    let w = found.warnings.join("\n");
    assert!(
        w.contains(&format!("{}/net", desc.pfs[0].vfs[1].pci)),
        "{w}"
    );
    assert!(w.contains("0000:ff:1f.7") || w.contains("virtfn2"), "{w}");
    assert!(w.contains("numa_node"), "{w}");
    assert!(w.contains("sriov_numvfs"), "{w}");
    assert!(w.contains("not-a-device"), "{w}");
    assert!(w.contains("virtfn9"), "{w}");
    assert!(w.contains("0000:00:17.0"), "{w}");
    let pf0 = found.device(&pci(&desc.pfs[0].pci)).unwrap();
    assert_eq!(pf0.numa_node, None);
    assert_eq!(pf0.vfs.len(), 1, "only VF 0 of PF 0 is readable");
    assert!(
        found.device(&pci(&desc.pfs[1].pci)).is_none(),
        "PF 1 skipped"
    );
    let pf2 = found.device(&pci(&desc.pfs[2].pci)).unwrap();
    assert_eq!(pf2.driver, None);
    assert_eq!(pf2.vfs.len(), 3);
    assert!(pf2
        .vfs
        .iter()
        .all(|v| (v.vendor, v.device) == (0x8086, 0x154c)));

    // A root without bus/pci/devices is an error that names it.
    let empty = tempfile::tempdir().unwrap();
    let e = Node::discover(&Sysfs::new(empty.path()), &DiscoveryOptions::default()).unwrap_err();
    assert!(e.to_string().contains("bus/pci/devices"), "{e}");
}

fn quick() -> WaitPolicy {
    WaitPolicy {
        timeout: Duration::from_secs(10),
        interval: Duration::from_millis(5),
    }
}

#[test]
fn provisioning_through_the_emulated_kernel() {
    let node = lab(SimSpec::new(unique_name("prov")).pfs(2).vfs(0).total_vfs(7));
    let kernel = node.emulate_kernel().unwrap();
    let sysfs = Sysfs::new(node.sysfs_root());
    let pf = pci(&node.description().pfs[0].pci);

    assert!(provision::set_num_vfs(&sysfs, &pf, 4, quick()).unwrap());
    let found = discover(&node);
    let dev = found.device(&pf).unwrap();
    assert_eq!(
        dev.sriov,
        SriovStatus::Enabled {
            enabled: 4,
            total: 7
        }
    );
    assert!(dev
        .vfs
        .iter()
        .all(|v| v.netdev.is_some() && v.driver.is_some()));

    // Out of range: the exact message, nothing written.
    let e = provision::set_num_vfs(&sysfs, &pf, 8, quick()).unwrap_err();
    assert!(matches!(e, ProvisionError::OutOfRange { .. }));
    assert_eq!(
        e.to_string(),
        "cannot create 8 VFs on 0000:3b:00.0 (ens1f0): valid range is 0-7"
    );
    // Same count: nothing to do.
    assert!(!provision::set_num_vfs(&sysfs, &pf, 4, quick()).unwrap());
    // Non-zero to non-zero goes through 0, as the kernel requires.
    assert!(provision::set_num_vfs(&sysfs, &pf, 2, quick()).unwrap());
    assert!(provision::set_num_vfs(&sysfs, &pf, 0, quick()).unwrap());
    let writes: Vec<(String, u32, bool)> = kernel
        .writes()
        .into_iter()
        .filter(|(p, _, _)| p == &pf.to_string())
        .collect();
    let values: Vec<(u32, bool)> = writes.iter().map(|(_, v, ok)| (*v, *ok)).collect();
    assert_eq!(values, [(4, true), (0, true), (2, true), (0, true)]);
    let found = discover(&node);
    assert_eq!(
        found.device(&pf).unwrap().sriov,
        SriovStatus::Disabled { total: 7 }
    );

    // PF MTU through the tree reaches the real link.
    assert!(provision::set_pf_mtu(&sysfs, &pf, 9000).unwrap());
    assert_eq!(ip_json(&node, "ens1f0")["mtu"], 9000);
    assert!(provision::set_pf_mtu(&sysfs, &pf, 10).is_err());

    // A PF without SR-IOV.
    let e = provision::set_num_vfs(&sysfs, &pci("0000:00:1f.6"), 1, quick()).unwrap_err();
    assert!(e.to_string().contains("does not support SR-IOV"), "{e}");
}

#[test]
fn provisioning_times_out_without_a_kernel() {
    let node = lab(SimSpec::new(unique_name("tmo")).pfs(1).vfs(0).links(false));
    let sysfs = Sysfs::new(node.sysfs_root());
    let pf = pci(&node.description().pfs[0].pci);
    let e = provision::set_num_vfs(
        &sysfs,
        &pf,
        2,
        WaitPolicy {
            timeout: Duration::from_millis(200),
            interval: Duration::from_millis(20),
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("timed out after 200ms waiting for the VFs of 0000:3b:00.0"),
        "{e}"
    );
}

#[test]
fn status_command_shows_adapters_and_pools() {
    let node = lab(SimSpec::new(unique_name("stat")).pfs(2).vfs(3).vfio(1));
    let bin = sriov_e2e::workspace_binary("sriov-device-plugin");
    let out = Command::new(&bin)
        .args(["status", "--sysfs-root"])
        .arg(node.sysfs_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Physical adapters"), "{text}");
    let row = text.lines().find(|l| l.starts_with("ens1f0 ")).unwrap();
    for cell in [
        "0000:3b:00.0",
        "8086:1572",
        "i40e",
        "enabled 3 of 8",
        "up",
        "1500",
    ] {
        assert!(row.contains(cell), "{cell} missing in {row:?}");
    }
    let eno = text.lines().find(|l| l.starts_with("eno1 ")).unwrap();
    assert!(eno.contains("not supported"), "{eno}");
    assert!(text.contains("intel.com/ens1f0: 3 device(s)"), "{text}");
    assert!(text.contains("iommu group"), "{text}");

    let cfg = tempfile::NamedTempFile::new().unwrap();
    fs::write(cfg.path(), r#"{"resourceList":[{"resourceName":"all"}]}"#).unwrap();
    let out = Command::new(&bin)
        .args(["status", "--json", "--config"])
        .arg(cfg.path())
        .arg("--sysfs-root")
        .arg(node.sysfs_root())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["adapters"].as_array().unwrap().len(), 3);
    assert_eq!(v["pools"][0]["resource"], "intel.com/all");
    // 6 VFs + the plain NIC (no VFs, no default route in this netns).
    assert_eq!(v["pools"][0]["devices"].as_array().unwrap().len(), 7);
    assert_eq!(v["adapters"][1]["sriov"]["state"], "enabled");

    // Bad input: a clear error, exit 1.
    fs::write(
        cfg.path(),
        r#"{"resourceList":[{"resourceName":"a","selectors":{"vendor":["8086"]}}]}"#,
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["status", "--config"])
        .arg(cfg.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("selectors.vendor: unknown key (did you mean \"vendors\"?)"),
        "{err}"
    );
}
