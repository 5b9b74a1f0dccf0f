//! The `sriov` CNI plugin on real igb VFs (QEMU 82576 with igbvf, `sriov_e2e::vm`): one boot
//! runs every scenario, since a TCG boot costs 10-20 s. Needs root.
//!
//! In the guest: ADD with vlan/qos, spoofchk, trust, max_tx_rate and MAC, checked in the PF's
//! IFLA_VFINFO_LIST and in the pod; a MAC without trust (igbvf refuses it until a driver
//! rebind); two pods on one VLAN reach each other, across VLANs they do not; settings igb
//! rejects fail cleanly naming the setting and leave the VF untouched; DEL restores every VF's
//! full original state (compared before/after); a kill at every PF-side step and in the rebind
//! leaves nothing the next DEL cannot restore; MACs from the node's platform prefix.

use serde_json::{json, Value};
use sriov::netlink::{NetlinkSocket, Netns, VfInfo};
use sriov::sysfs::Sysfs;
use sriov_e2e::vm::{guest_test_command, in_guest, run_vm_with, RunOptions, VmSpec};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN_ENV: &str = "SRIOV_CNI_BIN";
/// The plugin's node-local settings and folders in the guest (its /tmp is a throw-away layer).
const NODE_DIR: &str = "/tmp/cni-vm";
const STATE_DIR: &str = "/tmp/cni-vm/state";
/// Upstream sriov-cni's data folder (its records, written here as it writes them).
const UPSTREAM_DIR: &str = "/tmp/cni-vm/upstream";

#[test]
fn cni_on_real_igb_vfs() {
    if in_guest() {
        guest();
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the VM lab needs root");
    let bin = sriov_e2e::workspace_binary("sriov");
    let spec = VmSpec {
        pfs: 1,
        vfs: 4,
        timeout: Duration::from_secs(600),
        ..VmSpec::default()
    };
    let opts = RunOptions {
        env: vec![(BIN_ENV.into(), bin.display().to_string())],
        ..RunOptions::default()
    };
    let cmd = guest_test_command("cni_on_real_igb_vfs").unwrap();
    let out = run_vm_with(&spec, &cmd, &opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "--- guest stdout ---\n{}--- guest stderr ---\n{}",
        out.stdout, out.stderr
    );
    assert_eq!(out.status, 0, "guest scenario failed");
    assert!(
        out.stdout.contains("cni-vm: all scenarios passed"),
        "{}",
        out.stdout
    );
}

struct Vf {
    pci: String,
    index: u32,
}

/// What must be the same before ADD and after DEL (the ifindex may change: a rebind makes a
/// new netdev).
fn vf_state(nl: &mut NetlinkSocket, pf: u32, vf: &Vf, sysfs: &Sysfs) -> Value {
    let info: VfInfo = nl.pf_vf_info(pf, vf.index).unwrap();
    let names = sysfs
        .list(&sysfs.pci_devices_dir().join(&vf.pci).join("net"))
        .unwrap()
        .unwrap_or_default();
    let link = nl.link_by_name(&names[0]).unwrap();
    json!({
        "pf": format!("{info:?}"),
        "name": link.name, "mac": link.mac.map(|m| m.to_string()), "mtu": link.mtu,
        "up": link.up, "promisc": link.promisc, "altnames": link.altnames,
    })
}

fn plugin(cmd: &str, cid: &str, pod: &str, conf: &Value) -> (i32, Value) {
    plugin_env(cmd, cid, pod, conf, &[])
}

/// Like [`plugin`] with extra environment; a plugin killed by a signal gives `-signal`.
fn plugin_env(cmd: &str, cid: &str, pod: &str, conf: &Value, env: &[(&str, &str)]) -> (i32, Value) {
    use std::os::unix::process::ExitStatusExt;
    let bin = std::env::var(BIN_ENV).expect("SRIOV_CNI_BIN");
    let mut child = Command::new(bin)
        .envs(env.iter().copied())
        .env("SRIOV_CNI_NODE_CONFIG", format!("{NODE_DIR}/cni.json"))
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "net1")
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{cmd} {cid}: {}", text.trim());
    (
        out.status
            .code()
            .unwrap_or_else(|| -out.status.signal().unwrap_or(1)),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn conf(vf: &Vf, extra: Value, ip: Option<&str>) -> Value {
    let mut c = json!({"cniVersion": "1.1.0", "name": "igb", "type": "sriov", "deviceID": vf.pci,
                       "logLevel": "debug", "logFile": format!("{NODE_DIR}/logs/cni-vm.log")});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    if let Some(ip) = ip {
        c["ipam"] = json!({"type": "static", "addresses": [{"address": ip}]});
    }
    c
}

/// Sends UDP datagrams from `from` to `to`; true when one arrived.
fn reachable(from: (&str, Ipv4Addr), to: (&str, Ipv4Addr)) -> bool {
    let (from_ns, to_ns) = (
        Netns::open(format!("/var/run/netns/{}", from.0)).unwrap(),
        Netns::open(format!("/var/run/netns/{}", to.0)).unwrap(),
    );
    let dst = SocketAddr::new(IpAddr::V4(to.1), 7777);
    let receiver = to_ns
        .run_in(move || {
            let s = UdpSocket::bind(dst).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .unwrap();
    let src = from.1;
    from_ns
        .run_in(move || {
            let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
            for _ in 0..5 {
                let _ = s.send_to(b"sriov-rs", dst);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .unwrap();
    let mut buf = [0u8; 16];
    matches!(receiver.recv_from(&mut buf), Ok((8, _)))
}

/// The node-local settings the installer would write.
fn write_node_config() {
    write_node_config_with(json!({}));
}

/// The node-local settings the installer would write, plus `extra`'s keys.
fn write_node_config_with(extra: Value) {
    use std::os::unix::fs::PermissionsExt;
    for dir in [NODE_DIR, &format!("{NODE_DIR}/logs")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut conf = json!({"stateDir": STATE_DIR, "logDir": format!("{NODE_DIR}/logs"),
                      "deviceInfoDir": format!("{NODE_DIR}/devinfo"),
                      "upstreamStateDir": UPSTREAM_DIR});
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    std::fs::write(format!("{NODE_DIR}/cni.json"), conf.to_string()).unwrap();
}

fn guest() {
    write_node_config();
    let sysfs = Sysfs::new("/sys");
    let node = sriov::discovery::Node::discover(&sysfs, &Default::default()).unwrap();
    let pf = node
        .devices
        .iter()
        .find(|d| !d.vfs.is_empty())
        .expect("an igb PF with VFs");
    let pf_name = pf.name().unwrap().to_string();
    let vfs: Vec<Vf> = pf
        .vfs
        .iter()
        .map(|v| Vf {
            pci: v.pci.to_string(),
            index: v.index,
        })
        .collect();
    let mut nl = NetlinkSocket::new().unwrap();
    let pfi = nl.link_by_name(&pf_name).unwrap().index;
    // max_tx_rate needs carrier on the PF.
    nl.set_up(pfi).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nl.link_by_index(pfi).unwrap().running && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before: Vec<Value> = vfs
        .iter()
        .map(|v| vf_state(&mut nl, pfi, v, &sysfs))
        .collect();
    for pod in ["pa", "pb", "pc", "pd"] {
        assert!(Command::new("/usr/sbin/ip")
            .args(["netns", "add", pod])
            .status()
            .unwrap()
            .success());
    }

    // Pod A: every knob igb supports, MAC with trust on.
    let a = conf(
        &vfs[0],
        json!({"vlan": 100, "vlanQoS": 3, "spoofchk": "off", "trust": "on", "max_tx_rate": 100,
                                "mac": "02:00:00:00:a0:01", "mtu": 1400, "mtuLock": true}),
        Some("10.1.0.1/24"),
    );
    let (rc, res) = plugin("ADD", "ca", "pa", &a);
    assert_eq!(rc, 0, "ADD A: {res}");
    assert_eq!(res["interfaces"][0]["mac"], "02:00:00:00:a0:01");
    assert_eq!(res["interfaces"][0]["mtu"], 1400);
    assert_eq!(res["interfaces"][0]["pciID"], vfs[0].pci);
    let info = nl.pf_vf_info(pfi, vfs[0].index).unwrap();
    println!("VF 0 as the PF reports it: {info:?}");
    assert_eq!((info.vlan, info.qos), (100, 3));
    assert_eq!((info.spoof_check, info.trust), (Some(false), Some(true)));
    assert_eq!(info.max_tx_rate, 100);
    assert_eq!(info.mac.to_string(), "02:00:00:00:a0:01");
    let pa = Netns::open("/var/run/netns/pa").unwrap();
    let link = NetlinkSocket::new_in(&pa)
        .unwrap()
        .link_by_name("net1")
        .unwrap();
    assert_eq!(
        (link.mac.unwrap().to_string().as_str(), link.mtu, link.up),
        ("02:00:00:00:a0:01", 1400, true)
    );
    let mut check = a.clone();
    check["prevResult"] = res;
    assert_eq!(plugin("CHECK", "ca", "pa", &check).0, 0, "CHECK A");

    // MTU lock: the watcher the node daemon runs puts a changed MTU back within a second.
    let locks = sriov::mtu_lock::scan_locks(std::path::Path::new(STATE_DIR)).unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    let mut watcher =
        sriov::mtu_lock::MtuLockWatcher::open(locks[0].0, locks[0].1.clone()).unwrap();
    let mut in_a = NetlinkSocket::new_in(&pa).unwrap();
    let net1 = in_a.link_by_name("net1").unwrap().index;
    in_a.set_mtu(net1, 1300).unwrap();
    let changed = Instant::now();
    let event = watcher.wait(Duration::from_secs(1)).unwrap();
    println!("MTU lock: {event:?} after {:?}", changed.elapsed());
    assert!(
        matches!(event, sriov::mtu_lock::LockEvent::Restored(ref r) if r.found == 1300 && r.restored == 1400)
    );
    assert_eq!(in_a.link_by_index(net1).unwrap().mtu, 1400);
    drop(watcher);
    in_a.set_mtu(net1, 1300).unwrap();
    assert_eq!(
        plugin("CHECK", "ca", "pa", &check).0,
        1,
        "CHECK reports the drifted MTU"
    );
    in_a.set_mtu(net1, 1400).unwrap();
    println!("cni-vm: MTU lock ok");

    // Pod B: same VLAN, MAC without trust: igbvf refuses the netdev MAC while an admin MAC is
    // set, so the plugin rebinds the VF driver and the pod still sees the MAC.
    let b = conf(
        &vfs[1],
        json!({"vlan": 100, "mac": "02:00:00:00:b0:01"}),
        Some("10.1.0.2/24"),
    );
    let (rc, res) = plugin("ADD", "cb", "pb", &b);
    assert_eq!(rc, 0, "ADD B: {res}");
    let pb = Netns::open("/var/run/netns/pb").unwrap();
    let link = NetlinkSocket::new_in(&pb)
        .unwrap()
        .link_by_name("net1")
        .unwrap();
    assert_eq!(
        link.mac.unwrap().to_string(),
        "02:00:00:00:b0:01",
        "pod B sees the admin MAC"
    );

    // Pod C: another VLAN.
    let c = conf(&vfs[2], json!({"vlan": 200}), Some("10.1.0.3/24"));
    assert_eq!(plugin("ADD", "cc", "pc", &c).0, 0, "ADD C");

    // igbvf reports carrier a few seconds after a VF comes up (longer after a rebind).
    for pod in ["pa", "pb", "pc"] {
        let ns = Netns::open(format!("/var/run/netns/{pod}")).unwrap();
        let mut s = NetlinkSocket::new_in(&ns).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.link_by_name("net1").unwrap().running {
            assert!(
                Instant::now() < deadline,
                "{pod}: net1 has no carrier after 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert!(
        reachable(("pa", ip("10.1.0.1")), ("pb", ip("10.1.0.2"))),
        "same VLAN: A reaches B"
    );
    assert!(
        !reachable(("pa", ip("10.1.0.1")), ("pc", ip("10.1.0.3"))),
        "across VLANs: A must not reach C"
    );
    println!("cni-vm: VLAN isolation ok");

    // What igb rejects fails cleanly and leaves VF 3 as it was.
    for (extra, want) in [
        (
            json!({"min_tx_rate": 10}),
            "min_tx_rate 10: the igb driver rejects it (EINVAL)",
        ),
        (
            json!({"link_state": "enable"}),
            "link_state enable: the igb driver does not support it (EOPNOTSUPP)",
        ),
        (
            json!({"vlan": 5, "vlanProto": "802.1ad"}),
            "vlanProto 802.1ad: the igb driver does not support this protocol (EPROTONOSUPPORT)",
        ),
        (
            json!({"max_tx_rate": 100000}),
            "max_tx_rate 100000: the igb driver rejects it (EINVAL)",
        ),
    ] {
        let (rc, err) = plugin(
            "ADD",
            "cd",
            "pd",
            &conf(&vfs[3], extra, Some("10.1.0.4/24")),
        );
        assert_ne!(rc, 0);
        assert_eq!(err["code"], 100, "{err}");
        assert!(
            err["msg"].as_str().unwrap().contains(want),
            "{err} lacks {want}"
        );
        assert_eq!(
            vf_state(&mut nl, pfi, &vfs[3], &sysfs),
            before[3],
            "VF 3 untouched after: {want}"
        );
    }
    println!("cni-vm: rejected settings ok");

    for (cid, pod, cf) in [("ca", "pa", &a), ("cb", "pb", &b), ("cc", "pc", &c)] {
        assert_eq!(plugin("DEL", cid, pod, cf).0, 0, "DEL {cid}");
        assert_eq!(plugin("DEL", cid, pod, cf).0, 0, "second DEL {cid}");
    }
    for (k, v) in vfs.iter().enumerate() {
        assert_eq!(
            vf_state(&mut nl, pfi, v, &sysfs),
            before[k],
            "VF {k} fully restored"
        );
    }
    assert_eq!(
        std::fs::read_dir(format!("{STATE_DIR}/vfs"))
            .unwrap()
            .count(),
        0,
        "no state left"
    );
    crash_windows(&mut nl, pfi, &vfs[3], &before[3], &sysfs);
    admin_mac_set_before_add(&mut nl, pfi, &vfs[1], &sysfs);
    migration_from_sriov_cni(&mut nl, pfi, &vfs[2], &sysfs);
    platform_macs(&mut nl, pfi, &vfs[..2], &sysfs);
    println!("cni-vm: all scenarios passed");
}

/// kill -9 at the PF-side steps of ADD and of DEL on a real igb VF, the middle of a driver rebind
/// included, then DEL: the VF is fully restored (as the PF reports it and as its netdev looks)
/// and no record or temporary file is left.
fn crash_windows(nl: &mut NetlinkSocket, pfi: u32, vf: &Vf, before: &Value, sysfs: &Sysfs) {
    // Trust on: the netdev takes the MAC without a rebind; trust off: igbvf refuses it while an
    // admin MAC is set, so the plugin rebinds the driver (unbind, bind) to apply it.
    let general = conf(
        vf,
        json!({"vlan": 300, "vlanQoS": 2, "spoofchk": "off", "trust": "on", "max_tx_rate": 50,
               "mac": "02:00:00:00:d0:01", "mtu": 1400}),
        Some("10.1.0.9/24"),
    );
    // A MAC of its own each time: igbvf takes a MAC equal to one it already had without a
    // rebind.
    let rebinding = |k: u8| {
        conf(
            vf,
            json!({"vlan": 301, "mac": format!("02:00:00:00:d1:{k:02x}")}),
            None,
        )
    };
    let kill = |step: &str| [("SRIOV_CNI_FAULT", step.to_string())];
    let check = |nl: &mut NetlinkSocket, what: &str| {
        assert_eq!(
            vf_state(nl, pfi, vf, sysfs),
            *before,
            "{what}: VF not restored"
        );
        let left: Vec<_> = std::fs::read_dir(format!("{STATE_DIR}/vfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
    };
    // The PF-side steps: the netdev's own steps are the same as on the simulated node, which
    // kills at every one of them (cni_sim_crash.rs).
    let add_steps = [
        "vlan",
        "admin-mac",
        "max-tx-rate",
        "spoofchk",
        "trust",
        "mac",
        "move",
    ];
    for step in add_steps {
        let env = kill(step);
        let (rc, _) = plugin_env(
            "ADD",
            "ck",
            "pd",
            &general,
            &[(env[0].0, env[0].1.as_str())],
        );
        assert_eq!(rc, -9, "ADD not killed at {step}");
        assert_eq!(
            plugin("DEL", "ck", "pd", &general).0,
            0,
            "DEL after a kill at {step}"
        );
        check(nl, &format!("ADD killed at {step}"));
    }
    // Whether igbvf needs the rebind depends on the driver's mailbox timing (it sometimes takes
    // the netdev MAC at once): each try uses a fresh MAC, and at least one must reach the step.
    let mut macs = 0u8;
    let mut killed_in_rebind = |nl: &mut NetlinkSocket, step: &str, after: &dyn Fn(&Value)| {
        for _ in 0..6 {
            macs += 1;
            let c = rebinding(macs);
            let env = kill(step);
            let (rc, res) = plugin_env("ADD", "ck", "pd", &c, &[(env[0].0, env[0].1.as_str())]);
            match rc {
                -9 => {
                    after(&c);
                    check(nl, &format!("killed at {step}"));
                    return;
                }
                0 => {
                    assert_eq!(plugin("DEL", "ck", "pd", &c).0, 0, "DEL without a rebind");
                    check(nl, "ADD without a rebind");
                }
                _ => panic!("ADD with a fault at {step}: {rc} {res}"),
            }
        }
        panic!("igbvf never needed the rebind: {step} not reached");
    };
    for step in ["unbind", "rebind"] {
        killed_in_rebind(nl, step, &|c| {
            assert_eq!(
                plugin("DEL", "ck", "pd", c).0,
                0,
                "DEL after a kill at {step}"
            );
        });
    }
    println!("cni-vm: ADD killed at each PF-side step and mid-rebind, DEL restored the VF");
    let del_steps = [
        "restore-move",
        "restore-pf-side",
        "restore-mac",
        "restore-pf-mac",
    ];
    for step in del_steps {
        assert_eq!(
            plugin("ADD", "ck", "pd", &general).0,
            0,
            "ADD before {step}"
        );
        let env = kill(step);
        let (rc, _) = plugin_env(
            "DEL",
            "ck",
            "pd",
            &general,
            &[(env[0].0, env[0].1.as_str())],
        );
        assert_eq!(rc, -9, "DEL not killed at {step}");
        assert_eq!(plugin("DEL", "ck", "pd", &general).0, 0, "DEL after {step}");
        check(nl, &format!("DEL killed at {step}"));
    }
    // A DEL killed right after binding the driver back, after an ADD killed mid-rebind.
    killed_in_rebind(nl, "unbind", &|c| {
        let (rc, _) = plugin_env("DEL", "ck", "pd", c, &[("SRIOV_CNI_FAULT", "restore-bind")]);
        assert_eq!(rc, -9, "DEL not killed at restore-bind");
        assert_eq!(plugin("DEL", "ck", "pd", c).0, 0);
    });
    println!("cni-vm: DEL killed at each PF-side step and after re-binding, the next DEL restored the VF");
}

/// The VF's netdev as the node sees it now.
fn vf_netdev(nl: &mut NetlinkSocket, vf: &Vf, sysfs: &Sysfs) -> sriov::netlink::LinkInfo {
    let names = sysfs
        .list(&sysfs.pci_devices_dir().join(&vf.pci).join("net"))
        .unwrap()
        .unwrap_or_default();
    nl.link_by_name(&names[0]).unwrap()
}

/// Rebinds igbvf to the VF (it applies an admin MAC at probe).
fn rebind_igbvf(vf: &Vf) {
    std::fs::write(
        format!("/sys/bus/pci/devices/{}/driver/unbind", vf.pci),
        &vf.pci,
    )
    .unwrap();
    std::fs::write("/sys/bus/pci/drivers/igbvf/bind", &vf.pci).unwrap();
    let net = format!("/sys/bus/pci/devices/{}/net", vf.pci);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&net).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            Instant::now() < deadline,
            "no netdev after rebinding {}",
            vf.pci
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A VF with an admin MAC already set when ADD starts: by an operator (administrative, applied
/// by a driver rebind), or as upstream sriov-cni's DEL leaves it (the VF set its own MAC, which
/// igb records as the VF's MAC). ADD with another MAC and trust off (a rebind) and DEL both
/// succeed, and the VF is as it was.
fn admin_mac_set_before_add(nl: &mut NetlinkSocket, pfi: u32, vf: &Vf, sysfs: &Sysfs) {
    let preset: sriov::netlink::MacAddr = "02:00:00:00:e0:01".parse().unwrap();
    for how in ["an operator", "sriov-cni's DEL"] {
        if how == "an operator" {
            nl.set_vf_mac(pfi, vf.index, preset).unwrap();
            rebind_igbvf(vf);
        } else {
            nl.set_vf_mac(pfi, vf.index, Default::default()).unwrap();
            let link = vf_netdev(nl, vf, sysfs);
            nl.set_mac(link.index, preset).unwrap();
        }
        let before = vf_state(nl, pfi, vf, sysfs);
        // (igb may or may not show the admin MAC after the VF's probe; the netdev has it.)
        assert_eq!(before["mac"], "02:00:00:00:e0:01", "{how}: {before}");
        let c = conf(vf, json!({"mac": "02:00:00:00:e0:02", "vlan": 120}), None);
        let (rc, res) = plugin("ADD", "ce", "pb", &c);
        assert_eq!(rc, 0, "ADD over an admin MAC set by {how}: {res}");
        assert_eq!(res["interfaces"][0]["mac"], "02:00:00:00:e0:02");
        let (rc, res) = plugin("DEL", "ce", "pb", &c);
        assert_eq!(rc, 0, "DEL over an admin MAC set by {how}: {res}");
        assert_eq!(
            vf_state(nl, pfi, vf, sysfs),
            before,
            "{how}: restored exactly"
        );
    }
    nl.set_vf_mac(pfi, vf.index, Default::default()).unwrap();
    println!("cni-vm: admin MAC set before ADD ok");
}

/// A VF programmed as upstream sriov-cni's ADD leaves it (VF settings through the PF, moved into
/// the pod as net1 with its MAC and MTU) and its records in sriov-cni's format: our DEL restores
/// the VF (IFLA_VFINFO_LIST and the netdev as before) and removes sriov-cni's files.
fn migration_from_sriov_cni(nl: &mut NetlinkSocket, pfi: u32, vf: &Vf, sysfs: &Sysfs) {
    let before = vf_state(nl, pfi, vf, sysfs);
    let info = nl.pf_vf_info(pfi, vf.index).unwrap();
    let link = vf_netdev(nl, vf, sysfs);
    let mac: sriov::netlink::MacAddr = "02:00:00:00:f0:01".parse().unwrap();
    // What sriov-cni's ADD saves (LoadConf, FillOriginalVfInfo, SetupVF) and then does.
    let orig = json!({
        "HostIFName": link.name, "SpoofChk": info.spoof_check.unwrap_or(false),
        "Trust": info.trust.unwrap_or(false), "AdminMAC": info.mac.to_string(),
        "EffectiveMAC": link.mac.map(|m| m.to_string()), "Vlan": info.vlan, "VlanQoS": info.qos,
        "VlanProto": 33024, "MinTxRate": info.min_tx_rate, "MaxTxRate": info.max_tx_rate,
        "LinkState": 0, "MTU": link.mtu,
    });
    nl.set_vf_vlan(pfi, vf.index, 210, 3, Default::default())
        .unwrap();
    nl.set_vf_spoofchk(pfi, vf.index, false).unwrap();
    nl.set_vf_trust(pfi, vf.index, true).unwrap();
    nl.set_vf_mac(pfi, vf.index, mac).unwrap();
    let pod = Netns::open("/var/run/netns/pc").unwrap();
    nl.set_down(link.index).unwrap();
    nl.move_to_netns(link.index, &pod).unwrap();
    let mut in_pod = NetlinkSocket::new_in(&pod).unwrap();
    let moved = in_pod.link_by_name(&link.name).unwrap().index;
    in_pod.rename(moved, "net1").unwrap();
    in_pod.set_mac(moved, mac).unwrap();
    in_pod.set_mtu(moved, 1400).unwrap();
    in_pod.set_up(moved).unwrap();
    let nad = conf(
        vf,
        json!({"vlan": 210, "vlanQoS": 3, "spoofchk": "off", "trust": "on", "mac": mac.to_string()}),
        None,
    );
    let mut cache = nad.clone();
    cache["Master"] = json!(
        sysfs
            .list(&sysfs.pci_devices_dir().join(&vf.pci).join("physfn/net"))
            .unwrap()
            .unwrap()[0]
    );
    cache["VFID"] = json!(vf.index);
    cache["MAC"] = json!(mac.to_string());
    cache["OrigVfState"] = orig;
    std::fs::create_dir_all(format!("{UPSTREAM_DIR}/pci")).unwrap();
    std::fs::write(format!("{UPSTREAM_DIR}/cm-net1"), cache.to_string()).unwrap();
    std::fs::write(
        format!("{UPSTREAM_DIR}/pci/{}", vf.pci),
        "/var/run/netns/pc",
    )
    .unwrap();
    // Nobody else gets the VF meanwhile.
    let (rc, res) = plugin("ADD", "cx", "pd", &conf(vf, json!({}), None));
    assert_eq!((rc, res["code"].as_u64()), (1, Some(101)), "{res}");
    let (rc, res) = plugin("DEL", "cm", "pc", &nad);
    assert_eq!(rc, 0, "DEL of sriov-cni's attachment: {res}");
    assert_eq!(
        vf_state(nl, pfi, vf, sysfs),
        before,
        "restored from sriov-cni's record"
    );
    assert!(std::fs::read_dir(UPSTREAM_DIR)
        .unwrap()
        .all(|e| e.unwrap().path().is_dir()));
    assert_eq!(
        std::fs::read_dir(format!("{UPSTREAM_DIR}/pci"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        plugin("DEL", "cm", "pc", &nad).0,
        0,
        "a second DEL is a no-op"
    );
    println!("cni-vm: migration from sriov-cni ok");
}

/// MACs the platform assigns (node-local `macPrefix`): two pods whose configs name no MAC get
/// one from the prefix, set as the VF's admin MAC through the PF (read back from
/// IFLA_VFINFO_LIST), seen in the pod, and they reach each other; DEL restores the VFs.
fn platform_macs(nl: &mut NetlinkSocket, pfi: u32, vfs: &[Vf], sysfs: &Sysfs) {
    write_node_config_with(json!({"macPrefix": "0a:58:56"}));
    let before: Vec<Value> = vfs.iter().map(|v| vf_state(nl, pfi, v, sysfs)).collect();
    let pods = [("pa", "10.2.0.1"), ("pb", "10.2.0.2")];
    let mut macs = Vec::new();
    for (vf, (pod, ip)) in vfs.iter().zip(pods) {
        let c = conf(vf, json!({}), Some(&format!("{ip}/24")));
        let (rc, res) = plugin_env(
            "ADD",
            &format!("m{pod}"),
            pod,
            &c,
            &[(
                "CNI_ARGS",
                &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={pod}"),
            )],
        );
        assert_eq!(rc, 0, "ADD {pod}: {res}");
        let mac = res["interfaces"][0]["mac"].as_str().unwrap().to_string();
        assert!(mac.starts_with("0a:58:56:"), "{mac}");
        let info = nl.pf_vf_info(pfi, vf.index).unwrap();
        assert_eq!(info.mac.to_string(), mac, "the admin MAC, through the PF");
        let ns = Netns::open(format!("/var/run/netns/{pod}")).unwrap();
        let link = NetlinkSocket::new_in(&ns)
            .unwrap()
            .link_by_name("net1")
            .unwrap();
        assert_eq!(link.mac.unwrap().to_string(), mac, "the pod sees it");
        macs.push(mac);
    }
    assert_ne!(macs[0], macs[1]);
    for (pod, _) in pods {
        let ns = Netns::open(format!("/var/run/netns/{pod}")).unwrap();
        let mut s = NetlinkSocket::new_in(&ns).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.link_by_name("net1").unwrap().running {
            assert!(Instant::now() < deadline, "{pod}: no carrier");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert!(
        reachable(("pa", ip("10.2.0.1")), ("pb", ip("10.2.0.2"))),
        "pods with platform MACs reach each other"
    );
    for (vf, ((pod, ip), before)) in vfs.iter().zip(pods.iter().zip(&before)) {
        let c = conf(vf, json!({}), Some(&format!("{ip}/24")));
        assert_eq!(plugin("DEL", &format!("m{pod}"), pod, &c).0, 0, "DEL {pod}");
        assert_eq!(vf_state(nl, pfi, vf, sysfs), *before, "{pod}: VF restored");
    }
    println!("cni-vm: platform MACs ok");
}
