//! More of the `sriov` CNI plugin on a simulated node: STATUS, device-information files, the
//! MTU lock, DPDK (vfio-pci) VFs. Needs root. Every test builds its own lab.

mod cni_common;

use cni_common::CniLab;
use serde_json::{json, Value};

const VF0: &str = "0000:3b:02.0";

fn lab(prefix: &str) -> CniLab {
    CniLab::new(prefix, |s| s.pfs(2).vfs(4))
}

#[test]
fn status_ready_only_with_state_and_vfs() {
    let lab = lab("cni-status");
    lab.call("STATUS", "", "", "", &lab.conf("1.1.0", json!({})))
        .ok();
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("bus/pci/devices")).unwrap();
    lab.set_node_config(json!({"sysfsRoot": empty.path()}));
    lab.call("STATUS", "", "", "", &lab.conf("1.1.0", json!({})))
        .err(50, "sysfsRoot: no SR-IOV VF");
    let file = empty.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    lab.set_node_config(json!({"stateDir": file.join("state")}));
    lab.call("STATUS", "", "", "", &lab.conf("1.1.0", json!({})))
        .err(50, "stateDir");
    lab.set_node_config(json!({}));
    lab.call("STATUS", "", "", "", &lab.conf("1.0.0", json!({})))
        .err(1, "STATUS needs 1.1.0");
}

#[test]
fn log_file_gets_the_steps_at_debug_and_only_errors_at_error() {
    let lab = lab("cni-log");
    let pod = lab.pod("a");
    let log = lab.log_dir().join("sriov.log");
    let conf = |level: &str| {
        lab.conf(
            "1.1.0",
            json!({"deviceID": VF0, "logLevel": level, "logFile": log}),
        )
    };
    lab.call("ADD", "c1", "net1", &pod, &conf("debug")).ok();
    lab.call("DEL", "c1", "net1", &pod, &conf("debug")).ok();
    let text = std::fs::read_to_string(&log).unwrap();
    for line in [
        "DEBUG VF 0000:3b:02.0: original state saved",
        "DEBUG VF 0000:3b:02.0: step move done",
        "INFO ADD c1 net1: ok in",
        "INFO DEL c1 net1: ok in",
    ] {
        assert!(text.contains(line), "{line:?} not in the log:\n{text}");
    }
    std::fs::remove_file(&log).unwrap();
    lab.call("ADD", "c2", "net1", &pod, &conf("error")).ok();
    // The VF is c2's: refused.
    lab.call("ADD", "c3", "net1", &pod, &conf("error"))
        .err(101, "belongs to container c2");
    lab.call("DEL", "c2", "net1", &pod, &conf("error")).ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("ERROR ADD c3 net1: deviceID: VF 0000:3b:02.0 belongs to container c2"),
        "{text}"
    );
}

#[test]
fn device_info_file_is_written_when_absent() {
    let lab = lab("cni-devinfo");
    let pod = lab.pod("a");
    let file = lab.device_info_dir().join("cni/default-sriov-net-c1_net1");
    let conf = lab.conf(
        "1.1.0",
        json!({"deviceID": VF0, "runtimeConfig": {"CNIDeviceInfoFile": file}}),
    );
    lab.call("ADD", "c1", "net1", &pod, &conf).ok();
    let info: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(info["pci"]["pci-address"], VF0);
    assert_eq!(info["pci"]["pf-pci-address"], "0000:3b:00.0");
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert!(!file.exists(), "the file we wrote goes at DEL");
    // One Multus wrote is left to Multus.
    std::fs::write(&file, "{}").unwrap();
    lab.call("ADD", "c1", "net1", &pod, &conf).ok();
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{}");
    assert!(lab.records().is_empty());
}

#[test]
fn mtu_lock_is_recorded_enforced_and_checked() {
    use sriov::mtu_lock::{scan_locks, LockEvent, MtuLockWatcher};
    let lab = lab("cni-mtulock");
    let pod = lab.pod("a");
    let ns = CniLab::ns_name(&pod).to_string();
    let conf = lab.conf(
        "1.1.0",
        json!({"deviceID": VF0, "mtu": 1400, "mtuLock": true}),
    );
    let r = lab.call("ADD", "c1", "net1", &pod, &conf);
    r.ok();
    let locks = scan_locks(lab.state.path()).unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!((locks[0].1.mtu, locks[0].1.ifname.as_str()), (1400, "net1"));
    let mut watcher = MtuLockWatcher::open(locks[0].0, locks[0].1.clone()).unwrap();
    assert_eq!(watcher.enforce().unwrap(), LockEvent::Unchanged);
    // The pod changes its MTU: restored at the next notification.
    CniLab::ip(&ns, &["link", "set", "net1", "mtu", "1300"]);
    let start = std::time::Instant::now();
    match watcher.wait(std::time::Duration::from_secs(1)).unwrap() {
        LockEvent::Restored(r) => assert_eq!((r.found, r.restored), (1300, 1400)),
        other => panic!("expected a restore, got {other:?}"),
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(CniLab::pod_link(&pod, "net1").unwrap()["mtu"], 1400);
    drop(watcher);
    // Without the daemon, CHECK reports the drift.
    let mut check = conf.clone();
    check["prevResult"] = r.json();
    lab.call("CHECK", "c1", "net1", &pod, &check).ok();
    CniLab::ip(&ns, &["link", "set", "net1", "mtu", "1300"]);
    lab.call("CHECK", "c1", "net1", &pod, &check)
        .err(100, "mtu: net1 has MTU 1300, expected 1400");
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert!(scan_locks(lab.state.path()).unwrap().is_empty());
}

#[test]
fn dpdk_vf_gets_pf_side_settings_only() {
    let lab = CniLab::new("cni-dpdk", |s| s.pfs(1).vfs(2).vfio(1));
    let pod = lab.pod("a");
    let vf = lab.vf_pci(0, 1);
    let conf = lab.conf("1.1.0", json!({"deviceID": vf}));
    let r = lab.call("ADD", "c1", "net1", &pod, &conf);
    r.ok();
    assert_eq!(r.json()["interfaces"][0]["pciID"], vf);
    assert_eq!(lab.records().len(), 1);
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert!(lab.records().is_empty());
    // PF-side settings are still attempted (and refused by the stand-in).
    let conf = lab.conf("1.1.0", json!({"deviceID": vf, "spoofchk": "off"}));
    lab.call("ADD", "c1", "net1", &pod, &conf)
        .err(100, "spoofchk");
    assert!(lab.records().is_empty());
}

fn metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn wait_metric(addr: std::net::SocketAddr, line: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !metrics(addr).lines().any(|l| l == line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in:\n{}",
            metrics(addr)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The node daemon enforces the lock the CNI recorded: the pod changes its MTU, the daemon puts
/// it back within a second, counts it, and lets go of the pod at DEL.
#[test]
fn daemon_enforces_mtu_locks() {
    use sriov_e2e::kubelet::{DaemonArgs, DaemonProcess};
    let lab = lab("cni-dmtulock");
    let tmp = tempfile::tempdir().unwrap();
    let addr = sriov_e2e::local::unused_local_addr();
    let args = DaemonArgs {
        config: tmp.path().join("none.json"),
        sysfs_root: lab.node.sysfs_root().to_path_buf(),
        kubelet_dir: tmp.path().join("kubelet"),
        devinfo_dir: tmp.path().join("devinfo"),
        dev_root: lab.node.paths().dev(),
        netns: Some(lab.node.netns_path().to_path_buf()),
        metrics_address: Some(addr),
        extra: vec![
            "--cni-state-dir".into(),
            lab.state.path().display().to_string(),
        ],
    };
    let bin = sriov_e2e::workspace_binary("sriov-device-plugin");
    let mut daemon = DaemonProcess::spawn(&bin, &args, &tmp.path().join("daemon.log")).unwrap();
    wait_metric(addr, "sriov_dp_mtu_locks 0");

    let pod = lab.pod("a");
    let ns = CniLab::ns_name(&pod).to_string();
    let conf = lab.conf(
        "1.1.0",
        json!({"deviceID": VF0, "mtu": 1400, "mtuLock": true}),
    );
    lab.call("ADD", "c1", "net1", &pod, &conf).ok();
    wait_metric(addr, "sriov_dp_mtu_locks 1");

    CniLab::ip(&ns, &["link", "set", "net1", "mtu", "1300"]);
    let changed = std::time::Instant::now();
    while CniLab::pod_link(&pod, "net1").unwrap()["mtu"] != 1400 {
        assert!(
            changed.elapsed() < std::time::Duration::from_secs(1),
            "MTU not restored within 1 s\n{}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    wait_metric(addr, "sriov_dp_mtu_lock_restores_total 1");
    assert!(daemon
        .log()
        .contains("the pod changed its locked MTU to 1300; restored 1400"));

    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    wait_metric(addr, "sriov_dp_mtu_locks 0");
    daemon.terminate(std::time::Duration::from_secs(5));
}
