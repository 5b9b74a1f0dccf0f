//! The `sriov` CNI plugin against a hostile tenant, on a simulated node: a NetworkAttachmentDefinition
//! (its JSON, `args` and `runtimeConfig`) can choose no host path and no host device but its VF.
//! Each test tries one attack and checks that it is refused or contained, that nothing was
//! created or changed outside the plugin's own folders, and that the VF and every host link are
//! untouched. Needs root.

mod cni_common;

use cni_common::CniLab;
use serde_json::{json, Value};
use std::path::Path;

const VF1: &str = "0000:3b:02.1";

fn lab(prefix: &str) -> CniLab {
    CniLab::new(prefix, |s| s.pfs(1).vfs(4))
}

/// Every link of the node, fingerprinted.
fn node_links(lab: &CniLab) -> Vec<Value> {
    let mut names: Vec<String> = CniLab::links_in(&lab.node.netns_name())
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.iter().map(|n| lab.fingerprint(n)).collect()
}

#[test]
fn node_local_keys_in_a_network_config_are_refused_and_touch_nothing() {
    let lab = lab("cni-sec-keys");
    let pod = lab.pod("a");
    let before = node_links(&lab);
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path();
    // A crafted tree: a "VF" whose netdev is the node's uplink.
    std::fs::create_dir_all(o.join("sys/bus/pci/devices")).unwrap();
    let attempts = [
        ("sysfsRoot", json!(o.join("sys"))),
        ("stateDir", json!(o.join("state"))),
        ("poolConfig", json!("/etc/shadow")),
        ("podResourcesSocket", json!(o.join("kubelet.sock"))),
        ("deviceInfoDir", json!(o.join("devinfo"))),
        ("logDir", json!(o.join("logs"))),
    ];
    for (key, value) in &attempts {
        for (place, conf) in [
            (key.to_string(), json!({"deviceID": VF1, *key: value})),
            (
                format!("runtimeConfig.{key}"),
                json!({"deviceID": VF1, "runtimeConfig": {*key: value}}),
            ),
            (
                format!("args.cni.{key}"),
                json!({"deviceID": VF1, "args": {"cni": {*key: value}}}),
            ),
        ] {
            for cmd in ["ADD", "DEL", "CHECK"] {
                let c = lab.call(cmd, "c1", "net1", &pod, &lab.conf("1.1.0", conf.clone()));
                let j = c.err(7, &format!("{place}: a node-local setting"));
                assert!(
                    j["msg"]
                        .as_str()
                        .unwrap()
                        .contains("/etc/sriov-rs/cni.json"),
                    "{j}"
                );
            }
        }
    }
    let made: Vec<_> = std::fs::read_dir(o)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        made,
        ["sys"],
        "nothing created outside the plugin's folders"
    );
    assert_eq!(node_links(&lab), before, "no host link touched");
    assert!(CniLab::pod_link(&pod, "net1").is_none());
    assert!(lab.records().is_empty());
}

#[test]
fn log_file_is_contained_to_the_log_folder_and_lines_are_escaped() {
    let lab = lab("cni-sec-log");
    let pod = lab.pod("a");
    let outside = tempfile::tempdir().unwrap();
    let cron = outside.path().join("cron.d");
    std::fs::create_dir(&cron).unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::create_dir(lab.log_dir().join("sub")).unwrap();
    std::os::unix::fs::symlink(&victim, lab.log_dir().join("link.log")).unwrap();
    let evil = "\n* * * * * root touch /tmp/pwned\n";
    for (log_file, created) in [
        (
            cron.join("sriov").display().to_string(),
            Some(cron.join("sriov")),
        ),
        ("relative.log".to_string(), None),
        (
            lab.log_dir().join("sub/x.log").display().to_string(),
            Some(lab.log_dir().join("sub/x.log")),
        ),
        (lab.log_dir().join("link.log").display().to_string(), None),
        (
            lab.log_dir().join("../escape.log").display().to_string(),
            Some(lab.node_dir.path().join("escape.log")),
        ),
    ] {
        // A failing call (the IPAM error echoes the tenant's subnet) and a working one.
        let bad = lab.conf(
            "1.1.0",
            json!({"deviceID": VF1, "logFile": log_file,
                   "ipam": {"type": "host-local", "subnet": evil}}),
        );
        let c = lab.call("ADD", "c1", "net1", &pod, &bad);
        assert_ne!(c.code, Some(0));
        let warnings: Vec<&str> = c
            .stderr
            .lines()
            .filter(|l| l.contains("ignoring logFile"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning on stderr: {}", c.stderr);
        assert!(
            !c.stderr.lines().any(|l| l.starts_with("* * * * *")),
            "no forged line on stderr: {}",
            c.stderr
        );
        let good = lab.conf("1.1.0", json!({"deviceID": VF1, "logFile": log_file}));
        lab.call("ADD", "c1", "net1", &pod, &good).ok();
        lab.call("DEL", "c1", "net1", &pod, &good).ok();
        if let Some(path) = created {
            assert!(!path.exists(), "{} must not be created", path.display());
        }
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!Path::new("/tmp/pwned").exists());
    assert!(std::fs::read_dir(&cron).unwrap().next().is_none());
    // The plugin runs in this test's working folder.
    assert!(!Path::new("relative.log").exists());

    // Inside the log folder: honoured, and a value with newlines stays on its line.
    let log = lab.log_dir().join("sriov.log");
    let bad = lab.conf(
        "1.1.0",
        json!({"deviceID": VF1, "logFile": log,
               "ipam": {"type": "host-local", "subnet": evil}}),
    );
    assert_ne!(lab.call("ADD", "c1", "net1", &pod, &bad).code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("ERROR ADD c1 net1"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("* * * * *")),
        "a config value forged a log line:\n{text}"
    );
    assert!(text.contains("\\n* * * * * root"), "escaped: {text}");
    assert!(lab.records().is_empty());
}

#[test]
fn device_info_file_outside_its_folder_is_refused_and_nothing_is_written() {
    let lab = lab("cni-sec-devinfo");
    let pod = lab.pod("a");
    let before = lab.fingerprint("ens1f0v1");
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path();
    let cni = lab.device_info_dir().join("cni");
    std::fs::create_dir_all(&cni).unwrap();
    for target in [
        o.join("made/a.json"),
        o.join("a.json"),
        cni.join("../a.json"),
        cni.join("sub/a.json"),
        cni.join(".hidden"),
        lab.device_info_dir().join("dp/x-device.json"),
        Path::new("relative.json").to_path_buf(),
    ] {
        let conf = lab.conf(
            "1.1.0",
            json!({"deviceID": VF1, "runtimeConfig": {"CNIDeviceInfoFile": target}}),
        );
        lab.call("ADD", "c1", "net1", &pod, &conf)
            .err(7, "runtimeConfig.CNIDeviceInfoFile");
        assert!(!target.exists(), "{} written", target.display());
        assert_eq!(lab.fingerprint("ens1f0v1"), before);
    }
    assert!(
        std::fs::read_dir(o).unwrap().next().is_none(),
        "no folder made"
    );
    // In the folder: written, and a neighbour named like the old temporary file is untouched.
    let file = cni.join("ns-net-c1_net1.json");
    let neighbour = cni.join("ns-net-c1_net1.tmp");
    std::fs::write(&neighbour, "mine").unwrap();
    let conf = lab.conf(
        "1.1.0",
        json!({"deviceID": VF1, "runtimeConfig": {"CNIDeviceInfoFile": file}}),
    );
    lab.call("ADD", "c1", "net1", &pod, &conf).ok();
    assert!(file.exists());
    assert_eq!(std::fs::read_to_string(&neighbour).unwrap(), "mine");
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert!(!file.exists());
    // A symlink planted at the file's place is refused, never followed.
    let victim = o.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, &file).unwrap();
    lab.call("ADD", "c1", "net1", &pod, &conf).err(5, "symlink");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(lab.fingerprint("ens1f0v1"), before);
    assert!(lab.records().is_empty());
}

#[test]
fn symlinks_and_foreign_files_in_the_state_folder_are_refused_never_followed() {
    let lab = lab("cni-sec-state");
    let pod = lab.pod("a");
    let before = lab.fingerprint("ens1f0v1");
    let conf = lab.conf("1.1.0", json!({"deviceID": VF1}));
    // Let the plugin make its folders.
    lab.call("ADD", "c0", "net1", &pod, &conf).ok();
    lab.call("DEL", "c0", "net1", &pod, &conf).ok();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let state = lab.state.path();
    let record = state.join(format!("vfs/{VF1}.json"));
    // A record symlink.
    std::os::unix::fs::symlink(&victim, &record).unwrap();
    lab.call("ADD", "c1", "net1", &pod, &conf).err(5, "symlink");
    std::fs::remove_file(&record).unwrap();
    // A dangling lock symlink: its target is never created.
    let lock = state.join(format!("locks/{VF1}.lock"));
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(outside.path().join("created"), &lock).unwrap();
    lab.call("ADD", "c1", "net1", &pod, &conf).err(5, "symlink");
    assert!(!outside.path().join("created").exists());
    std::fs::remove_file(&lock).unwrap();
    // A record folder of another owner.
    let vfs = state.join("vfs");
    nix::unistd::chown(&vfs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    lab.call("ADD", "c1", "net1", &pod, &conf)
        .err(5, "owned by uid 65534");
    nix::unistd::chown(&vfs, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(lab.fingerprint("ens1f0v1"), before, "VF untouched");
    assert!(CniLab::pod_link(&pod, "net1").is_none());
    // And it works again once the folder is sane.
    lab.call("ADD", "c1", "net1", &pod, &conf).ok();
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert_eq!(lab.fingerprint("ens1f0v1"), before);
}

#[test]
fn a_device_whose_netdev_is_not_its_own_or_is_the_uplink_is_refused() {
    let lab = lab("cni-sec-device");
    let pod = lab.pod("a");
    let node = lab.node.netns_name().to_string();
    let before = node_links(&lab);
    let net = lab
        .node
        .sysfs_root()
        .join(format!("bus/pci/devices/{VF1}/net"));
    let own = std::fs::read_link(net.join("ens1f0v1")).unwrap();
    // The VF's net/ names another host interface: the node's plain NIC, the PF, another VF.
    std::fs::remove_file(net.join("ens1f0v1")).unwrap();
    for other in ["eno1", "ens1f0", "ens1f0v2"] {
        std::os::unix::fs::symlink(&own, net.join(other)).unwrap();
        let conf = lab.conf("1.1.0", json!({"deviceID": VF1}));
        let c = lab.call("ADD", "c1", "net1", &pod, &conf);
        std::fs::remove_file(net.join(other)).unwrap();
        c.err(7, &format!("deviceID: netdev {other} is not this VF's"));
        assert_eq!(node_links(&lab), before, "{other}: no host link touched");
        assert!(lab.records().is_empty());
    }
    std::os::unix::fs::symlink(&own, net.join("ens1f0v1")).unwrap();
    // The VF's own netdev, but it carries the node's default route (IPv4, then IPv6).
    CniLab::ip(&node, &["link", "set", "ens1f0v1", "up"]);
    CniLab::ip(&node, &["addr", "add", "10.250.0.2/24", "dev", "ens1f0v1"]);
    CniLab::ip(&node, &["route", "add", "default", "via", "10.250.0.1"]);
    let conf = lab.conf("1.1.0", json!({"deviceID": VF1}));
    lab.call("ADD", "c1", "net1", &pod, &conf)
        .err(7, "carries the node's default IPv4 route");
    CniLab::ip(&node, &["route", "del", "default"]);
    CniLab::ip(
        &node,
        &[
            "-6",
            "addr",
            "add",
            "fd00:250::2/64",
            "dev",
            "ens1f0v1",
            "nodad",
        ],
    );
    CniLab::ip(
        &node,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:250::1",
            "dev",
            "ens1f0v1",
        ],
    );
    lab.call("ADD", "c1", "net1", &pod, &conf)
        .err(7, "carries the node's default IPv6 route");
    CniLab::ip(&node, &["-6", "route", "del", "default"]);
    assert!(lab.node_link("ens1f0v1").is_some(), "the uplink stays");
    assert!(lab.records().is_empty());
    // Without the default route it is an ordinary VF again.
    lab.call("ADD", "c1", "net1", &pod, &conf).ok();
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
}

#[test]
fn cni_netns_that_is_not_a_network_namespace_is_an_env_error() {
    let lab = lab("cni-sec-netns");
    let before = lab.fingerprint("ens1f0v1");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let conf = lab.conf("1.1.0", json!({"deviceID": VF1}));
    for netns in [
        "/proc/1/ns/mnt".to_string(),
        "/proc/1/ns/uts".to_string(),
        "/dev/null".to_string(),
        fifo.display().to_string(),
        file.display().to_string(),
        dir.path().display().to_string(),
    ] {
        for cmd in ["ADD", "CHECK"] {
            let mut c = conf.clone();
            c["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": []});
            lab.call(cmd, "c1", "net1", &netns, &c).err(4, "CNI_NETNS");
        }
    }
    // A bind-mounted namespace of another kind (as /run/netns entries are bind mounts).
    let mnt = dir.path().join("mntns");
    std::fs::write(&mnt, "").unwrap();
    let status = std::process::Command::new("mount")
        .args(["--bind", "/proc/self/ns/uts"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    let c = lab.call("ADD", "c1", "net1", &mnt.display().to_string(), &conf);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    c.err(4, "CNI_NETNS");
    assert_eq!(lab.fingerprint("ens1f0v1"), before);
    assert!(lab.records().is_empty());
}
