//! The simulated node (sriov-lab), end to end. Needs root: every test builds
//! real namespaces, links and mounts. Each test uses its own lab name and
//! removes its lab on drop, also when it fails.

use sriov_e2e::sim::{self, Lab, LabDescription, Model, SimError, SimNode, SimSpec};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sriov-lab");

/// Fails loudly (never skips) when not root, and clears labs of killed runs.
fn setup() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the sim_lab tests need root (namespaces, mounts, links)"
    );
    sim::gc().expect("gc of dead labs");
}

fn up(spec: SimSpec) -> SimNode {
    setup();
    SimNode::up(&spec).unwrap_or_else(|e| panic!("up {}: {e}", spec.name))
}

fn spec(prefix: &str) -> SimSpec {
    SimSpec::new(sim::unique_name(prefix))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim_end()
        .to_string()
}

fn link_target(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_link(path)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
        .to_string_lossy()
        .into_owned()
}

fn dev(node: &Lab, bdf: &str) -> PathBuf {
    node.sysfs_root().join("bus/pci/devices").join(bdf)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j link show` in the node netns, by interface name.
fn links(node: &Lab) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(node.ip(&["-j", "link", "show"]).unwrap())).unwrap()
}

fn find<'a>(links: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    links.iter().find(|l| l["ifname"] == name)
}

fn is_up(link: &serde_json::Value) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

fn mounted_under(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().into_owned();
    read("/proc/self/mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn up_builds_sysfs_tree_and_links() {
    let node = up(spec("tree").pfs(2).vfs(4));
    let d = node.description().clone();
    let sys = node.sysfs_root().to_path_buf();
    assert_eq!(sys, Path::new("/run/sriov-lab").join(&d.name).join("sys"));
    assert_eq!(d.netns, format!("sriovlab-{}", d.name));
    assert!(d.netns_path.exists());

    // PF 0.
    let pf = dev(&node, "0000:3b:00.0");
    assert_eq!(link_target(&pf), "../../../devices/pci0000:00/0000:3b:00.0");
    for (file, want) in [
        ("vendor", "0x8086"),
        ("device", "0x1572"),
        ("class", "0x020000"),
        ("numa_node", "-1"),
        ("sriov_totalvfs", "8"),
        ("sriov_numvfs", "4"),
        ("sriov_offset", "16"),
        ("sriov_stride", "1"),
        ("sriov_vf_device", "154c"),
        ("sriov_drivers_autoprobe", "1"),
    ] {
        assert_eq!(read(pf.join(file)), want, "{file}");
    }
    assert_eq!(
        link_target(pf.join("driver")),
        "../../../bus/pci/drivers/i40e"
    );
    assert_eq!(link_target(pf.join("virtfn0")), "../0000:3b:02.0");
    assert_eq!(link_target(pf.join("virtfn3")), "../0000:3b:02.3");
    assert!(!pf.join("virtfn4").exists());
    assert_eq!(
        link_target(pf.join("net/ens1f0")),
        format!(
            "/run/sriov-lab/{}/netsys/devices/virtual/net/ens1f0",
            d.name
        )
    );
    assert_eq!(read(pf.join("net/ens1f0/operstate")), "up");
    assert_eq!(read(pf.join("net/ens1f0/carrier")), "1");
    assert_eq!(read(pf.join("net/ens1f0/type")), "1");
    let pf1 = dev(&node, "0000:3c:00.0");
    assert_eq!(link_target(pf1.join("virtfn1")), "../0000:3c:02.1");

    // VF 1 of PF 0.
    let vf = dev(&node, "0000:3b:02.1");
    assert_eq!(read(vf.join("vendor")), "0x8086");
    assert_eq!(read(vf.join("device")), "0x154c");
    assert_eq!(read(vf.join("class")), "0x020000");
    assert_eq!(link_target(vf.join("physfn")), "../0000:3b:00.0");
    assert_eq!(
        link_target(vf.join("driver")),
        "../../../bus/pci/drivers/iavf"
    );
    assert_eq!(read(vf.join("net/ens1f0v1/operstate")), "down");
    assert!(!vf.join("sriov_totalvfs").exists());
    assert!(!vf.join("iommu_group").exists());
    assert!(sys.join("bus/pci/drivers/iavf/0000:3b:02.1").exists());

    // Plain NIC, NVMe, drivers, class/net.
    let nic = dev(&node, "0000:00:1f.6");
    assert_eq!(read(nic.join("device")), "0x15b8");
    assert!(!nic.join("sriov_totalvfs").exists());
    assert_eq!(
        link_target(nic.join("driver")),
        "../../../bus/pci/drivers/e1000e"
    );
    assert_eq!(read(nic.join("net/eno1/operstate")), "up");
    let nvme = dev(&node, "0000:00:17.0");
    assert_eq!(read(nvme.join("class")), "0x010802");
    assert!(!nvme.join("net").exists());
    for driver in ["i40e", "iavf", "mlx5_core", "e1000e", "vfio-pci", "nvme"] {
        assert!(
            sys.join("bus/pci/drivers")
                .join(driver)
                .join("bind")
                .is_file(),
            "{driver}"
        );
    }
    assert_eq!(read(sys.join("class/net/ens2f0v3/address")).len(), 17);

    // Description.
    assert_eq!(d.pfs.len(), 2);
    assert_eq!(d.pfs[1].netdev, "ens2f0");
    assert_eq!(d.pfs[1].bridge.as_deref(), Some("esw1"));
    assert_eq!(d.pfs[0].vfs[3].pci, "0000:3b:02.3");
    assert_eq!(d.plain_nics[0].netdev, "eno1");
    assert_eq!(d.owner_pid, Some(std::process::id()));
    assert_eq!(
        LabDescription::load(&Path::new("/run/sriov-lab").join(&d.name).join("lab.json")).unwrap(),
        d
    );

    // Kernel links.
    let l = links(&node);
    for name in [
        "esw0", "esw1", "ens1f0", "ens2f0", "eno1", "p-eno1", "ens1f0v0", "ens2f0v3",
    ] {
        assert!(find(&l, name).is_some(), "{name} missing");
    }
    assert!(is_up(find(&l, "esw0").unwrap()));
    assert!(is_up(find(&l, "ens1f0").unwrap()));
    assert!(!is_up(find(&l, "ens1f0v0").unwrap()), "fresh VFs are down");
    let peer = find(&l, "p-ens2f0v2").unwrap();
    assert_eq!(peer["master"], "esw1");
    assert!(is_up(peer));
    assert_eq!(find(&l, "p-ens1f0").unwrap()["master"], "esw0");
    assert!(find(&l, "p-eno1").unwrap().get("master").is_none());

    // Live values through the tree.
    ok(node.ip(&["link", "set", "ens1f0", "mtu", "9000"]).unwrap());
    assert_eq!(read(pf.join("net/ens1f0/mtu")), "9000");
    ok(node
        .ip(&["link", "set", "ens1f0v1", "address", "02:11:22:33:44:55"])
        .unwrap());
    assert_eq!(read(vf.join("net/ens1f0v1/address")), "02:11:22:33:44:55");
    ok(node
        .run_in_netns(&["ip", "link", "set", "ens1f0v1", "up"])
        .unwrap());
    // The kernel's linkwatch updates operstate asynchronously.
    wait_until("VF operstate up", Duration::from_secs(5), || {
        read(vf.join("net/ens1f0v1/operstate")) == "up"
    });
}

#[test]
fn moved_vf_leaves_dangling_net_link() {
    let node = up(spec("move").pfs(1).vfs(2));
    let pod = node.create_pod_netns("pod").unwrap();
    assert!(netns_exists(&pod));
    ok(node
        .ip(&["link", "set", "ens1f0v1", "netns", &pod])
        .unwrap());
    let entry = dev(&node, "0000:3b:02.1").join("net/ens1f0v1");
    assert!(
        fs::symlink_metadata(&entry).is_ok(),
        "the link itself stays"
    );
    assert!(fs::metadata(&entry).is_err(), "but dangles");
    assert!(dev(&node, "0000:3b:02.0")
        .join("net/ens1f0v0/address")
        .exists());
    let name = node.name().to_string();
    node.down().unwrap();
    assert!(!netns_exists(&pod), "down removes pod netns too");
    assert!(!netns_exists(&format!("sriovlab-{name}")));
}

#[test]
fn set_vfs_follows_kernel_rules() {
    let mut node = up(spec("setvfs").pfs(2).vfs(4));
    let pf = dev(&node, "0000:3b:00.0");

    node.set_vfs("ens1f0", 0).unwrap();
    assert_eq!(read(pf.join("sriov_numvfs")), "0");
    assert!(!pf.join("virtfn0").exists());
    assert!(!dev(&node, "0000:3b:02.0").exists());
    assert!(!node
        .sysfs_root()
        .join("devices/pci0000:00/0000:3b:02.0")
        .exists());
    assert!(!node
        .sysfs_root()
        .join("bus/pci/drivers/iavf/0000:3b:02.0")
        .exists());
    let l = links(&node);
    assert!(find(&l, "ens1f0v0").is_none() && find(&l, "p-ens1f0v0").is_none());
    assert!(find(&l, "ens2f0v0").is_some(), "other PF untouched");
    assert!(node.description().pfs[0].vfs.is_empty());

    node.set_vfs("0000:3b:00.0", 2).unwrap();
    assert_eq!(read(pf.join("sriov_numvfs")), "2");
    assert_eq!(link_target(pf.join("virtfn1")), "../0000:3b:02.1");
    assert!(!pf.join("virtfn2").exists());
    assert_eq!(
        read(dev(&node, "0000:3b:02.1").join("net/ens1f0v1/mtu")),
        "1500"
    );
    let l = links(&node);
    assert_eq!(find(&l, "p-ens1f0v1").unwrap()["master"], "esw0");

    let busy = node.set_vfs("ens1f0", 3).unwrap_err();
    assert!(
        matches!(
            busy,
            SimError::NumVfsBusy {
                current: 2,
                requested: 3,
                ..
            }
        ),
        "{busy}"
    );
    assert!(busy.to_string().contains("write 0 first"), "{busy}");
    let range = node.set_vfs("ens1f0", 9).unwrap_err();
    assert!(
        matches!(range, SimError::NumVfsOutOfRange { total: 8, .. }),
        "{range}"
    );
    let msg = range.to_string();
    assert!(
        msg.contains("0000:3b:00.0") && msg.contains("0..=8"),
        "{msg}"
    );
    assert!(matches!(
        node.set_vfs("ens9f0", 1),
        Err(SimError::NoSuchPf { .. })
    ));
    node.set_vfs("ens1f0", 2).expect("same value is accepted");
    assert_eq!(read(pf.join("sriov_numvfs")), "2");

    let on_disk = Lab::open(node.name()).unwrap();
    assert_eq!(on_disk.description().pfs[0].num_vfs, 2);
    assert_eq!(on_disk.description().pfs[0].vfs.len(), 2);
    assert_eq!(on_disk.description().pfs[1].num_vfs, 4);
}

#[test]
fn kernel_emulator_applies_numvfs_writes() {
    let node = up(spec("kernel").pfs(2).vfs(4));
    let emulator = node.emulate_kernel().unwrap();
    let pf = dev(&node, "0000:3b:00.0");
    let numvfs = pf.join("sriov_numvfs");

    // What provisioning code does: 0 then N, back to back.
    fs::write(&numvfs, "0").unwrap();
    fs::write(&numvfs, "6").unwrap();
    let vf5 = dev(&node, "0000:3b:02.5");
    wait_until(
        "virtfn5 with driver and net",
        Duration::from_secs(5),
        || {
            pf.join("virtfn5").exists()
                && vf5.join("driver").exists()
                && vf5.join("net/ens1f0v5").exists()
        },
    );
    assert_eq!(read(&numvfs), "6");
    assert_eq!(
        emulator.writes(),
        [
            ("0000:3b:00.0".to_string(), 0, true),
            ("0000:3b:00.0".to_string(), 6, true)
        ]
    );
    assert!(find(&links(&node), "ens1f0v5").is_some());

    // Refused writes leave the VFs and the file as they were.
    fs::write(&numvfs, "3").unwrap();
    assert_eq!(read(&numvfs), "6", "restored before anyone can read");
    fs::write(&numvfs, "9\n").unwrap();
    assert_eq!(read(&numvfs), "6");
    let log = emulator.wait_for_writes(4, Duration::from_secs(5));
    assert_eq!(log.len(), 4);
    assert!(!log[2].accepted && log[2].error.as_deref().unwrap().contains("EBUSY"));
    assert!(!log[3].accepted && log[3].error.as_deref().unwrap().contains("ERANGE"));
    assert!(pf.join("virtfn5").exists());

    // Back-to-back changes on both PFs never lose the 0.
    for (round, n) in [2u32, 5, 1, 8, 3].into_iter().enumerate() {
        for bdf in ["0000:3b:00.0", "0000:3c:00.0"] {
            let file = dev(&node, bdf).join("sriov_numvfs");
            fs::write(&file, "0").unwrap();
            fs::write(&file, n.to_string()).unwrap();
            assert_eq!(read(&file), n.to_string(), "round {round}");
        }
    }
    let log = emulator.wait_for_writes(24, Duration::from_secs(5));
    assert!(log[4..].iter().all(|w| w.accepted), "{log:#?}");
    let last = dev(&node, "0000:3c:00.0");
    wait_until("3 VFs on PF 1", Duration::from_secs(5), || {
        last.join("virtfn2").exists() && !last.join("virtfn3").exists()
    });
    let d = Lab::open(node.name()).unwrap().description().clone();
    assert_eq!((d.pfs[0].num_vfs, d.pfs[1].num_vfs), (3, 3));
    assert!(emulator.failure().is_none());
    drop(emulator);

    // Stopped: writes are plain file writes again.
    fs::write(&numvfs, "0").unwrap();
    assert!(pf.join("virtfn0").exists());
}

#[test]
fn emulator_outliving_its_lab_is_harmless() {
    let node = up(spec("outlive").pfs(1).vfs(1));
    let root = node.paths().root().to_path_buf();
    let emulator = node.emulate_kernel().unwrap();
    drop(node);
    assert!(!root.exists());
    assert!(!mounted_under(&root));
    drop(emulator);
}

#[test]
fn numa_nodes() {
    let node = up(spec("numa").pfs(4).vfs(1).numa(true).links(false));
    let want = ["0", "0", "1", "1"];
    for (i, pf) in node.description().pfs.iter().enumerate() {
        assert_eq!(
            read(dev(&node, &pf.pci).join("numa_node")),
            want[i],
            "PF {i}"
        );
        assert_eq!(
            read(dev(&node, &pf.vfs[0].pci).join("numa_node")),
            want[i],
            "VF of PF {i}"
        );
        assert_eq!(pf.numa_node.to_string(), want[i]);
    }
    let plain = up(spec("nonuma").pfs(1).vfs(1).links(false));
    assert_eq!(read(dev(&plain, "0000:3b:00.0").join("numa_node")), "-1");
}

#[test]
fn vfio_bound_vfs() {
    let mut node = up(spec("vfio").pfs(1).vfs(4).vfio(1));
    let vf = dev(&node, "0000:3b:02.3");
    assert_eq!(
        link_target(vf.join("driver")),
        "../../../bus/pci/drivers/vfio-pci"
    );
    assert_eq!(
        link_target(vf.join("iommu_group")),
        "../../../kernel/iommu_groups/103"
    );
    assert!(!vf.join("net").exists());
    let back = node
        .sysfs_root()
        .join("kernel/iommu_groups/103/devices/0000:3b:02.3");
    assert_eq!(
        link_target(&back),
        "../../../../devices/pci0000:00/0000:3b:02.3"
    );
    assert_eq!(
        fs::canonicalize(&back).unwrap(),
        fs::canonicalize(&vf).unwrap()
    );
    let group_file = node.description().dev_root.join("vfio/103");
    assert!(group_file.is_file());
    assert!(node
        .sysfs_root()
        .join("bus/pci/drivers/vfio-pci/0000:3b:02.3")
        .exists());
    assert!(!dev(&node, "0000:3b:02.2").join("iommu_group").exists());
    assert_eq!(
        link_target(dev(&node, "0000:3b:02.2").join("driver")),
        "../../../bus/pci/drivers/iavf"
    );

    let d = node.description();
    assert_eq!(d.pfs[0].vfs[3].netdev, None);
    assert_eq!(d.pfs[0].vfs[3].driver, "vfio-pci");
    assert_eq!(d.pfs[0].vfs[3].iommu_group, Some(103));
    assert_eq!(d.pfs[0].vfs[2].iommu_group, None);
    let l = links(&node);
    assert!(find(&l, "ens1f0v3").is_none() && find(&l, "ens1f0v2").is_some());

    node.set_vfs("ens1f0", 0).unwrap();
    assert!(!group_file.exists());
    assert!(!node.sysfs_root().join("kernel/iommu_groups/103").exists());
    node.set_vfs("ens1f0", 2).unwrap();
    assert_eq!(
        link_target(dev(&node, "0000:3b:02.1").join("iommu_group")),
        "../../../kernel/iommu_groups/101"
    );
}

#[test]
fn mixed_model() {
    let node = up(spec("mixed").pfs(2).vfs(1).model(Model::Mixed).links(false));
    let (intel, mlx) = (dev(&node, "0000:3b:00.0"), dev(&node, "0000:3c:00.0"));
    assert_eq!(read(intel.join("vendor")), "0x8086");
    assert_eq!(read(mlx.join("vendor")), "0x15b3");
    assert_eq!(read(mlx.join("device")), "0x1017");
    assert_eq!(read(mlx.join("sriov_vf_device")), "1018");
    assert_eq!(
        link_target(mlx.join("driver")),
        "../../../bus/pci/drivers/mlx5_core"
    );
    let vf = dev(&node, "0000:3c:02.0");
    assert_eq!(read(vf.join("device")), "0x1018");
    assert_eq!(
        link_target(vf.join("driver")),
        "../../../bus/pci/drivers/mlx5_core"
    );
}

#[test]
fn no_links_tree_of_1024_vfs() {
    // How fast it builds is reported by `cargo bench --bench discovery`, not asserted here.
    setup();
    let spec = spec("nolinks").pfs(8).vfs(128).links(false);
    let node = SimNode::up(&spec).unwrap();
    let net = dev(&node, "0000:42:11.7").join("net/ens8f0v127");
    assert_eq!(read(net.join("mtu")), "1500");
    assert_eq!(read(net.join("operstate")), "down");
    assert_eq!(read(net.join("carrier")), "1");
    assert_eq!(read(net.join("type")), "1");
    assert_eq!(read(net.join("address")).len(), 17);
    assert_eq!(
        read(dev(&node, "0000:3b:00.0").join("net/ens1f0/operstate")),
        "up"
    );
    assert_eq!(node.description().pfs[7].bridge, None);
    let l = links(&node);
    assert_eq!(l.len(), 1, "only lo: {l:?}");
}

#[test]
fn links_for_1024_vfs() {
    setup();
    let spec = spec("many").pfs(8).vfs(128);
    let node = SimNode::up(&spec).unwrap();
    let l = links(&node);
    // lo + per PF (bridge, PF pair, 128 VF pairs) + eno1 pair.
    assert_eq!(l.len(), 1 + 8 * (1 + 2 + 256) + 2);
    assert_eq!(
        read(dev(&node, "0000:42:11.7").join("net/ens8f0v127/operstate")),
        "down"
    );
    node.down().unwrap();
}

#[test]
fn down_removes_everything_and_is_idempotent() {
    let node = up(spec("down").pfs(1).vfs(2));
    let name = node.name().to_string();
    let root = Path::new("/run/sriov-lab").join(&name);
    assert!(mounted_under(&root));
    let pod = node.create_pod_netns("p1").unwrap();
    let _kept = node.keep();
    sim::down(&name).unwrap();
    assert!(!netns_exists(&format!("sriovlab-{name}")));
    assert!(!netns_exists(&pod));
    assert!(!mounted_under(&root), "netsys still mounted");
    assert!(!root.exists());
    sim::down(&name).expect("second down");
    assert!(matches!(Lab::open(&name), Err(SimError::NoSuchLab { .. })));
}

#[test]
fn down_spares_labs_with_longer_names() {
    setup();
    let short = sim::unique_name("pre");
    let long = format!("{short}-x");
    let _a = SimNode::up(&SimSpec::new(&short).pfs(1).vfs(1).links(false)).unwrap();
    let b = SimNode::up(&SimSpec::new(&long).pfs(1).vfs(1).links(false)).unwrap();
    let b_pod = b.create_pod_netns("pod").unwrap();
    sim::down(&short).unwrap();
    assert!(netns_exists(&format!("sriovlab-{long}")));
    assert!(netns_exists(&b_pod));
    assert!(Lab::open(&long).is_ok());
}

#[test]
fn up_twice_replaces_the_lab() {
    let spec = spec("twice").pfs(1).vfs(4);
    let first = up(spec.clone()).keep();
    let pod = first.create_pod_netns("old").unwrap();
    let marker = first.paths().root().join("marker");
    fs::write(&marker, "x").unwrap();

    let node = SimNode::up(&spec.clone().vfs(2)).unwrap();
    assert!(!marker.exists());
    assert!(!netns_exists(&pod));
    assert_eq!(read(dev(&node, "0000:3b:00.0").join("sriov_numvfs")), "2");
    let netsys = node.description().netsys.to_string_lossy().into_owned();
    let mounts = read("/proc/self/mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(netsys.as_str()))
        .count();
    assert_eq!(mounts, 1);
    assert!(find(&links(&node), "ens1f0v1").is_some());
    assert!(find(&links(&node), "ens1f0v2").is_none());
}

/// Removes a CLI-made lab whatever happens.
struct CliLab(String);
impl Drop for CliLab {
    fn drop(&mut self) {
        let _ = sim::down(&self.0);
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn cli_up_set_vfs_down() {
    setup();
    let lab = CliLab(sim::unique_name("cli"));
    let out = cli(&[
        "up", "--name", &lab.0, "--pfs", "1", "--vfs", "2", "--model", "mellanox",
    ]);
    let d: LabDescription = serde_json::from_str(&ok(out)).expect("up prints a lab description");
    assert_eq!(d.name, lab.0);
    assert_eq!(d.owner_pid, None);
    assert_eq!(
        (d.pfs[0].vendor.as_str(), d.pfs[0].driver.as_str()),
        ("15b3", "mlx5_core")
    );
    assert_eq!(d.pfs[0].vfs.len(), 2);
    assert!(d
        .sysfs_root
        .join("bus/pci/devices/0000:3b:02.1/net/ens1f0v1")
        .exists());

    let busy = cli(&["set-vfs", "--name", &lab.0, "--pf", "ens1f0", "3"]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("EBUSY"));
    let pf: serde_json::Value = serde_json::from_str(&ok(cli(&[
        "set-vfs",
        "--name",
        &lab.0,
        "--pf",
        "0000:3b:00.0",
        "0",
    ])))
    .unwrap();
    assert_eq!(pf["num_vfs"], 0);

    ok(cli(&["down", "--name", &lab.0]));
    assert!(!d.sysfs_root.exists());
    ok(cli(&["down", "--name", &lab.0]));
}

#[test]
fn invalid_names_are_refused() {
    setup();
    for bad in [
        "../x",
        "",
        "Ab",
        "-a",
        "a/b",
        "abcdefghijklmnopqrstuvwxy",
        "a b",
    ] {
        let err = SimNode::up(&SimSpec::new(bad).links(false)).unwrap_err();
        assert!(matches!(err, SimError::InvalidName { .. }), "{bad}: {err}");
        assert!(sim::down(bad).is_err(), "{bad}");
        assert!(Lab::open(bad).is_err(), "{bad}");
    }
    assert!(!Path::new("/run/x").exists());
    let out = cli(&["up", "--name", "../x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid lab name"));
    assert!(out.stdout.is_empty());

    let bad_spec = SimSpec::new(sim::unique_name("spec")).vfs(9).total_vfs(8);
    assert!(matches!(
        SimNode::up(&bad_spec),
        Err(SimError::InvalidSpec(_))
    ));
}

#[test]
fn gc_removes_labs_of_dead_owners() {
    setup();
    // The owner lives while the lab is built (other tests' gc runs meanwhile),
    // then dies as a test process killed with -9 would.
    let mut owner = Command::new("sleep").arg("60").spawn().unwrap();
    let orphan = CliLab(sim::unique_name("orphan"));
    let kept = CliLab(sim::unique_name("kept"));
    let owner_pid = owner.id().to_string();
    ok(cli(&[
        "up",
        "--name",
        &orphan.0,
        "--pfs",
        "1",
        "--vfs",
        "1",
        "--owner-pid",
        &owner_pid,
    ]));
    ok(cli(&["up", "--name", &kept.0, "--pfs", "1", "--vfs", "1"]));
    let mine = up(spec("mine").pfs(1).vfs(1).links(false));
    owner.kill().unwrap();
    owner.wait().unwrap();

    // Tests run in parallel and each starts with a gc: any of them may be
    // the one that removes the orphan.
    let _removed: Vec<String> = serde_json::from_str(&ok(cli(&["gc"]))).unwrap();
    assert!(!Path::new("/run/sriov-lab").join(&orphan.0).exists());
    assert!(!netns_exists(&format!("sriovlab-{}", orphan.0)));
    assert!(Lab::open(&kept.0).is_ok(), "labs without owner stay");
    assert!(Lab::open(mine.name()).is_ok(), "labs of live owners stay");
}

#[test]
fn cli_needs_root() {
    setup();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "up",
            "--name",
            "x",
        ])
        .output()
        .expect("setpriv (util-linux) runs the CLI as nobody");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sriov-lab needs root"));
}

#[test]
fn cli_kernel_runs_until_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let node = up(spec("clikernel").pfs(1).vfs(2));
    let mut child = Command::new(BIN)
        .args(["kernel", "--name", node.name()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut banner).unwrap();
    assert!(banner.contains("emulating the kernel"), "{banner}");

    let pf = dev(&node, "0000:3b:00.0");
    fs::write(pf.join("sriov_numvfs"), "0").unwrap();
    fs::write(pf.join("sriov_numvfs"), "3").unwrap();
    assert_eq!(read(pf.join("sriov_numvfs")), "3");
    assert!(pf.join("virtfn2").exists());

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(out.status.success(), "{:?}: {rest}", out.status);
    assert!(rest.contains("SIGTERM"), "{rest}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (lines[1]["value"].as_u64(), lines[1]["accepted"].as_bool()),
        (Some(3), Some(true))
    );
}
