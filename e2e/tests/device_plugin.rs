//! `sriov-device-plugin run` end to end: the real daemon process on a simulated node, driven by
//! the kubelet emulator over real Unix sockets. Needs root (the lab builds namespaces, links and
//! mounts). Every test has its own lab, kubelet folder and daemon, all removed on drop, also
//! when the test fails (the daemon's log is printed then).

mod dp_common;

use dp_common::*;
use serde_json::Value;
use sriov_e2e::kubelet::RegistrationMode;
use sriov_e2e::sim::{self, SimSpec};
use sriov_proto::deviceplugin::v1beta1 as dp;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const THREE_POOLS: &str = r#"{"resourceList": [
    {"resourceName": "netdev", "selectors": {"drivers": ["iavf"]},
     "additionalInfo": {"*": {"team": "blue"}}},
    {"resourceName": "dpdk", "excludeTopology": true, "selectors": {"drivers": ["vfio-pci"], "needVhostNet": true}},
    {"resourceName": "nothing", "selectors": {"vendors": ["abcd"]}}
]}"#;

#[test]
fn registers_every_pool_and_lists_devices() {
    let env = Env::new(
        "dp-reg",
        SimSpec::default().pfs(2).vfs(4).vfio(1).numa(true),
        THREE_POOLS,
        RegistrationMode::KubeletSocket,
    );
    let netdev = env.wait_devices("intel.com/netdev", |d| d.len() == 6);
    let dpdk = env.wait_devices("intel.com/dpdk", |d| d.len() == 2);
    // A pool without devices is still advertised, with an empty list.
    let nothing = env.wait_devices("intel.com/nothing", |_| true);
    assert!(nothing.is_empty());

    let regs = env.kubelet.with_state(|s| s.registrations.clone());
    let mut names: Vec<&str> = regs.iter().map(|r| r.resource.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["intel.com/dpdk", "intel.com/netdev", "intel.com/nothing"]
    );
    for r in &regs {
        assert_eq!(r.version, "v1beta1");
        let file = r
            .endpoint
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(file, format!("{}.sock", r.resource.replace('/', "_")));
        assert!(
            r.options
                .as_ref()
                .unwrap()
                .get_preferred_allocation_available
        );
    }
    let plugin = env.kubelet.plugin("intel.com/netdev").unwrap();
    assert!(plugin.options.unwrap().get_preferred_allocation_available);

    // IDs are VF PCI addresses; NUMA from sysfs (PF 0 on node 0, PF 1 on node 1).
    let mut expected: Vec<String> = (0..2).flat_map(|p| (0..3).map(move |k| vf(p, k))).collect();
    expected.sort();
    assert_eq!(ids(&netdev), expected);
    assert!(all_healthy(&netdev));
    for d in &netdev {
        let numa = if d.id.starts_with("0000:3b") { 0 } else { 1 };
        assert_eq!(
            d.topology
                .as_ref()
                .map(|t| t.nodes.iter().map(|n| n.id).collect::<Vec<_>>()),
            Some(vec![numa]),
            "{}",
            d.id
        );
    }
    assert_eq!(ids(&dpdk), [vf(0, 3), vf(1, 3)]);
    assert!(dpdk.iter().all(|d| d.topology.is_none()), "excludeTopology");
}

#[test]
fn pf_link_down_makes_its_vfs_unhealthy_and_back() {
    let env = Env::new(
        "dp-health",
        SimSpec::default().pfs(2).vfs(4),
        IAVF_POOL,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/net", |d| d.len() == 8 && all_healthy(d));
    let on_pf0 = |d: &dp::Device| d.id.starts_with("0000:3b");

    let t = Instant::now();
    env.ip(&["link", "set", "ens1f0", "down"]);
    let devices = env.wait_devices("intel.com/net", |d| {
        d.iter()
            .filter(|d| on_pf0(d))
            .all(|d| d.health == sriov_proto::UNHEALTHY)
    });
    let down_latency = t.elapsed();
    assert!(
        devices
            .iter()
            .filter(|d| !on_pf0(d))
            .all(|d| d.health == sriov_proto::HEALTHY),
        "PF 1's VFs stay healthy"
    );
    eprintln!("link down -> Unhealthy at kubelet: {down_latency:?} (including `ip` itself)");
    assert!(
        down_latency < Duration::from_millis(1000),
        "{down_latency:?}"
    );

    // Kubelet would not offer it, but a stale Allocate must be refused clearly.
    let err = env
        .kubelet
        .allocate("intel.com/net", &[vf(0, 0)])
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("ens1f0 is down"), "{err}");

    env.ip(&["link", "set", "ens1f0", "up"]);
    env.wait_devices("intel.com/net", all_healthy);

    // Carrier loss (the switch side goes down) is Unhealthy too.
    env.ip(&["link", "set", "p-ens2f0", "down"]);
    env.wait_devices("intel.com/net", |d| {
        d.iter()
            .filter(|d| !on_pf0(d))
            .all(|d| d.health == sriov_proto::UNHEALTHY)
    });
    env.ip(&["link", "set", "p-ens2f0", "up"]);
    env.wait_devices("intel.com/net", all_healthy);
}

#[test]
fn vf_rebound_or_vanished_is_unhealthy_until_it_returns() {
    let env = Env::new(
        "dp-rebind",
        SimSpec::default().pfs(1).vfs(4),
        IAVF_POOL,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/net", |d| d.len() == 4 && all_healthy(d));
    let sys = env.lab.sysfs_root().to_path_buf();
    let target = vf(0, 1);
    let health_of =
        |d: &[dp::Device], id: &str| d.iter().find(|d| d.id == id).map(|d| d.health.clone());

    // Rebound to vfio-pci behind the daemon's back: no longer fits a pool of iavf VFs.
    let rebind = |from: &str, to: &str| {
        let dev = sys.join("bus/pci/devices").join(&target);
        std::fs::remove_file(dev.join("driver")).unwrap();
        symlink(format!("../../../bus/pci/drivers/{to}"), dev.join("driver")).unwrap();
        std::fs::remove_file(sys.join("bus/pci/drivers").join(from).join(&target)).unwrap();
        symlink(
            format!("../../../../devices/pci0000:00/{target}"),
            sys.join("bus/pci/drivers").join(to).join(&target),
        )
        .unwrap();
    };
    rebind("iavf", "vfio-pci");
    env.wait_devices("intel.com/net", |d| {
        d.len() == 4 && health_of(d, &target).as_deref() == Some(sriov_proto::UNHEALTHY)
    });
    let err = env
        .kubelet
        .allocate("intel.com/net", std::slice::from_ref(&target))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("no longer matches the pool (driver vfio-pci)"),
        "{err}"
    );
    rebind("vfio-pci", "iavf");
    env.wait_devices("intel.com/net", |d| d.len() == 4 && all_healthy(d));

    // The VF vanished while the PF still counts 4: Unhealthy, not silently dropped.
    let pf = sys.join("bus/pci/devices/0000:3b:00.0");
    let link = pf.join("virtfn2");
    let was = std::fs::read_link(&link).unwrap();
    std::fs::remove_file(&link).unwrap();
    env.wait_devices("intel.com/net", |d| {
        d.len() == 4 && health_of(d, &vf(0, 2)).as_deref() == Some(sriov_proto::UNHEALTHY)
    });
    symlink(was, &link).unwrap();
    env.wait_devices("intel.com/net", |d| d.len() == 4 && all_healthy(d));
}

#[test]
fn preferred_allocation_packs_or_spreads() {
    let config = r#"{"resourceList": [
        {"resourceName": "pack", "selectors": {"pfNames": ["ens1f0#0-3", "ens2f0#0-3", "ens3f0#0-3"]}},
        {"resourceName": "spread", "allocationPolicy": "spread", "selectors": {"pfNames": ["ens1f0#4-7", "ens2f0#4-7", "ens3f0#4-7"]}}
    ]}"#;
    let env = Env::new(
        "dp-pref",
        SimSpec::default().pfs(3).vfs(8),
        config,
        RegistrationMode::KubeletSocket,
    );
    let pack = ids(&env.wait_devices("intel.com/pack", |d| d.len() == 12));
    let spread = ids(&env.wait_devices("intel.com/spread", |d| d.len() == 12));
    let pf_of = |id: &str| id[..7].to_string();
    let pfs = |chosen: &[String]| {
        let mut p: Vec<String> = chosen.iter().map(|i| pf_of(i)).collect();
        p.sort();
        p.dedup();
        p.len()
    };

    let got = env
        .kubelet
        .preferred_allocation("intel.com/pack", &pack, &[], 3)
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(pfs(&got), 1, "packed onto one PF: {got:?}");
    // Deterministic.
    assert_eq!(
        env.kubelet
            .preferred_allocation("intel.com/pack", &pack, &[], 3)
            .unwrap(),
        got
    );
    // must_include on PF 2 pulls the rest there.
    let must = vec![vf(2, 1)];
    let got = env
        .kubelet
        .preferred_allocation("intel.com/pack", &pack, &must, 3)
        .unwrap();
    assert!(got.contains(&must[0]) && pfs(&got) == 1, "{got:?}");

    let got = env
        .kubelet
        .preferred_allocation("intel.com/spread", &spread, &[], 3)
        .unwrap();
    assert_eq!(pfs(&got), 3, "one per PF: {got:?}");
    let got = env
        .kubelet
        .preferred_allocation("intel.com/spread", &spread, &must_spread(&spread), 2)
        .unwrap();
    assert_eq!(pfs(&got), 2, "{got:?}");
}

fn must_spread(spread: &[String]) -> Vec<String> {
    vec![spread[0].clone()]
}

#[test]
fn allocate_gives_upstream_envs_devices_and_devinfo_files() {
    let mut env = Env::new(
        "dp-alloc",
        SimSpec::default().pfs(2).vfs(4).vfio(1),
        THREE_POOLS,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/netdev", |d| d.len() == 6);
    env.wait_devices("intel.com/dpdk", |d| d.len() == 2);

    // Kernel netdev VFs: envs only.
    let ids = vec![vf(0, 0), vf(1, 2)];
    let r = env
        .kubelet
        .allocate_pod("pod-a", "default", "c0", "intel.com/netdev", &ids)
        .unwrap();
    assert_eq!(r.envs["PCIDEVICE_INTEL_COM_NETDEV"], ids.join(","));
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_NETDEV_INFO"]).unwrap();
    assert_eq!(
        info[&ids[0]],
        serde_json::json!({"generic": {"deviceID": ids[0]}, "extra": {"team": "blue"}})
    );
    assert!(
        r.devices.is_empty(),
        "no device nodes for kernel netdevs: {:?}",
        r.devices
    );
    for (id, pf) in [(&ids[0], "0000:3b:00.0"), (&ids[1], "0000:3c:00.0")] {
        let path = env
            .devinfo_dir()
            .join(format!("intel.com-netdev-{id}-device.json"));
        let v: Value = serde_json::from_slice(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": id, "pf-pci-address": pf}})
        );
    }

    // vfio-pci VFs: VFIO container and group nodes (host paths in the lab's /dev), vhost-net.
    let dpdk = vec![vf(0, 3)];
    let r = env.kubelet.allocate("intel.com/dpdk", &dpdk).unwrap();
    let group = sim::iommu_group(0, 3);
    let dev = env.lab.paths().dev();
    let specs: Vec<(String, String, String)> = r
        .devices
        .iter()
        .map(|d| {
            (
                d.container_path.clone(),
                d.host_path.clone(),
                d.permissions.clone(),
            )
        })
        .collect();
    let want = |c: &str, h: PathBuf| (c.to_string(), h.display().to_string(), "rw".to_string());
    assert_eq!(
        specs,
        vec![
            want("/dev/vfio/vfio", dev.join("vfio/vfio")),
            want(
                &format!("/dev/vfio/{group}"),
                dev.join(format!("vfio/{group}"))
            ),
            want("/dev/vhost-net", dev.join("vhost-net")),
            want("/dev/net/tun", dev.join("net/tun")),
        ]
    );
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_DPDK_INFO"]).unwrap();
    assert_eq!(
        info[&dpdk[0]]["vfio"],
        serde_json::json!({"mount": "/dev/vfio/vfio", "dev-mount": format!("/dev/vfio/{group}")})
    );

    // The IOMMU group is read at Allocate time: renumber it (as a reboot or rebind would).
    let link = env
        .lab
        .sysfs_root()
        .join("bus/pci/devices")
        .join(&dpdk[0])
        .join("iommu_group");
    std::fs::remove_file(&link).unwrap();
    symlink("../../../kernel/iommu_groups/4242", &link).unwrap();
    let r = env.kubelet.allocate("intel.com/dpdk", &dpdk).unwrap();
    assert!(
        r.devices
            .iter()
            .any(|d| d.container_path == "/dev/vfio/4242"),
        "{:?}",
        r.devices
    );

    // Unknown IDs are refused with a clear error.
    let err = env
        .kubelet
        .allocate("intel.com/netdev", &["0000:99:00.0".to_string()])
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("not in pool intel.com/netdev"),
        "{err}"
    );
    let err = env
        .kubelet
        .allocate("intel.com/netdev", &[vf(0, 3)])
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "a vfio VF is not in the netdev pool"
    );

    // SIGTERM: exit 0, sockets and device-information files removed.
    let sockets = env.kubelet.with_state(|s| {
        s.registrations
            .iter()
            .map(|r| r.endpoint.clone())
            .collect::<Vec<_>>()
    });
    assert!(sockets.iter().all(|s| s.exists()));
    let status = env
        .daemon
        .terminate(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(sockets.iter().all(|s| !s.exists()), "sockets removed");
    let left: Vec<_> = std::fs::read_dir(env.devinfo_dir()).unwrap().collect();
    assert!(
        left.is_empty(),
        "device-information files removed: {left:?}"
    );
    env.kubelet
        .wait_for(WAIT, |s| {
            s.plugins.values().all(|p| !p.connected).then_some(())
        })
        .unwrap();
}

#[test]
fn kubelet_restart_re_registers_within_a_second() {
    let config = r#"{"resourceList": [
        {"resourceName": "a", "selectors": {"pfNames": ["ens1f0"]}},
        {"resourceName": "b", "selectors": {"pfNames": ["ens2f0"]}}
    ]}"#;
    let mut env = Env::new(
        "dp-restart",
        SimSpec::default().pfs(2).vfs(4),
        config,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/a", |d| d.len() == 4);
    env.wait_devices("intel.com/b", |d| d.len() == 4);
    let pid = env.daemon.pid();

    for _ in 0..2 {
        let restarted = env.kubelet.restart().unwrap();
        let back = env
            .kubelet
            .wait_for(WAIT, |s| {
                let done = ["intel.com/a", "intel.com/b"].iter().all(|r| {
                    s.plugins
                        .get(*r)
                        .is_some_and(|p| p.connected && p.devices.len() == 4)
                        && s.registrations
                            .iter()
                            .any(|g| g.resource == *r && g.at > restarted)
                });
                done.then(Instant::now)
            })
            .unwrap();
        let took = back - restarted;
        eprintln!("kubelet restart -> re-registered and listed: {took:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    assert_eq!(env.daemon.pid(), pid);
    assert!(env.daemon.is_running());

    // Our own socket removed by someone else: recreated and registered again.
    let sock = env.kubelet.plugin("intel.com/a").unwrap().endpoint;
    let before = env.kubelet.with_state(|s| s.registrations.len());
    std::fs::remove_file(&sock).unwrap();
    env.kubelet
        .wait_for(WAIT, |s| {
            (s.registrations.len() > before
                && s.plugins.get("intel.com/a").is_some_and(|p| p.connected))
            .then_some(())
        })
        .unwrap();
    assert!(sock.exists());
}

#[test]
fn config_changes_apply_live() {
    let v1 = r#"{"resourceList": [
        {"resourceName": "keep", "selectors": {"pfNames": ["ens1f0"]}},
        {"resourceName": "edit", "selectors": {"pfNames": ["ens2f0#0-1"]}},
        {"resourceName": "drop", "selectors": {"pfNames": ["ens2f0#2-3"]}}
    ]}"#;
    let mut env = Env::new(
        "dp-config",
        SimSpec::default().pfs(2).vfs(4),
        v1,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/keep", |d| d.len() == 4);
    env.wait_devices("intel.com/edit", |d| d.len() == 2);
    env.wait_devices("intel.com/drop", |d| d.len() == 2);
    let keep_updates = env.kubelet.plugin("intel.com/keep").unwrap().updates.len();
    let registrations = env.kubelet.with_state(|s| s.registrations.len());
    let pid = env.daemon.pid();

    let v2 = r#"{"resourceList": [
        {"resourceName": "keep", "selectors": {"pfNames": ["ens1f0"]}},
        {"resourceName": "edit", "selectors": {"pfNames": ["ens2f0#0-2"]}, "additionalInfo": {"*": {"v": "2"}}},
        {"resourceName": "new", "selectors": {"pfNames": ["ens2f0#3"]}}
    ]}"#;
    env.set_config(v2);
    env.wait_devices("intel.com/edit", |d| d.len() == 3);
    env.wait_devices("intel.com/new", |d| d.len() == 1);
    env.kubelet
        .wait_for(WAIT, |s| {
            s.plugins
                .get("intel.com/drop")
                .is_some_and(|p| !p.connected)
                .then_some(())
        })
        .unwrap();
    assert!(
        !env.kubelet
            .plugin("intel.com/drop")
            .unwrap()
            .endpoint
            .exists(),
        "removed pool's socket is gone"
    );

    // The unchanged pool was not disturbed: same stream, no new list, no re-registration.
    let keep = env.kubelet.plugin("intel.com/keep").unwrap();
    assert!(keep.connected);
    assert_eq!(keep.updates.len(), keep_updates);
    let regs: Vec<String> = env.kubelet.with_state(|s| {
        s.registrations[registrations..]
            .iter()
            .map(|r| r.resource.clone())
            .collect()
    });
    assert_eq!(regs, ["intel.com/new"]);
    // The edited pool's new settings are used by Allocate.
    let r = env.kubelet.allocate("intel.com/edit", &[vf(1, 2)]).unwrap();
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_EDIT_INFO"]).unwrap();
    assert_eq!(info[vf(1, 2)]["extra"]["v"], "2");
    assert_eq!(env.daemon.pid(), pid, "no restart");

    // An invalid config is refused; the running one stays, and /metrics says so.
    env.set_config(
        r#"{"resourceList": [{"resourceName": "keep", "selectors": {"pfName": ["ens1f0"]}}]}"#,
    );
    env.wait_log("refusing the new config");
    std::thread::sleep(Duration::from_millis(200));
    assert!(env.kubelet.plugin("intel.com/new").unwrap().connected);
    assert_eq!(
        env.kubelet.plugin("intel.com/edit").unwrap().devices.len(),
        3
    );
    let metrics = env.http_get("/metrics");
    assert!(
        metrics.contains("sriov_dp_reconfigurations_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sriov_dp_config_valid 0"), "{metrics}");
    assert!(
        metrics.contains("sriov_dp_pool_devices{resource=\"intel.com/keep\",health=\"healthy\"} 4"),
        "{metrics}"
    );
    assert!(env.http_get("/healthz").starts_with("HTTP/1.1 200"));

    // A valid one after it applies again.
    env.set_config(v1);
    env.wait_devices("intel.com/drop", |d| d.len() == 2);
    env.wait_devices("intel.com/edit", |d| d.len() == 2);
}

#[test]
fn vf_count_changes_update_the_device_lists() {
    // A VF range: plain "ens1f0" would also select the PF itself while it has no VFs.
    let config =
        r#"{"resourceList": [{"resourceName": "net", "selectors": {"pfNames": ["ens1f0#0-7"]}}]}"#;
    let mut env = Env::new(
        "dp-numvfs",
        SimSpec::default().pfs(1).vfs(2).total_vfs(8),
        config,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/net", |d| d.len() == 2);
    env.lab.set_vfs("ens1f0", 0).unwrap();
    env.wait_devices("intel.com/net", |d| d.is_empty());
    env.lab.set_vfs("ens1f0", 6).unwrap();
    let d = env.wait_devices("intel.com/net", |d| d.len() == 6 && all_healthy(d));
    assert_eq!(ids(&d), (0..6).map(|k| vf(0, k)).collect::<Vec<_>>());
    env.lab.set_vfs("ens1f0", 0).unwrap();
    env.lab.set_vfs("ens1f0", 3).unwrap();
    env.wait_devices("intel.com/net", |d| d.len() == 3);
}

#[test]
fn plugin_watcher_registration() {
    let env = Env::new(
        "dp-watcher",
        SimSpec::default().pfs(1).vfs(3),
        IAVF_POOL,
        RegistrationMode::PluginWatcher,
    );
    let d = env.wait_devices("intel.com/net", |d| d.len() == 3);
    let plugin = env.kubelet.plugin("intel.com/net").unwrap();
    assert_eq!(
        plugin.endpoint,
        env.kubelet
            .kubelet_dir()
            .join("plugins_registry/intel.com_net.sock")
    );
    let r = env
        .kubelet
        .allocate("intel.com/net", &ids(&d)[..1])
        .unwrap();
    assert_eq!(r.envs["PCIDEVICE_INTEL_COM_NET"], d[0].id);
    env.wait_log("registered with kubelet (plugin watcher)");
}

#[test]
fn provisioning_sets_vf_counts_at_start_and_on_reload() {
    let config = |n: u32| {
        format!(
            r#"{{"resourceList": [{{"resourceName": "net", "selectors": {{"pfNames": ["ens1f0#0-7"]}}}}],
                "provisioning": [{{"pfNames": ["ens1f0"], "numVfs": {n}}}]}}"#
        )
    };
    let mut env = Env::with_kernel(
        "dp-prov",
        SimSpec::default().pfs(1).vfs(2).total_vfs(8),
        &config(5),
        true,
    );
    env.wait_devices("intel.com/net", |d| d.len() == 5 && all_healthy(d));
    env.set_config(&config(3));
    env.wait_devices("intel.com/net", |d| d.len() == 3 && all_healthy(d));
    let numvfs = env
        .lab
        .sysfs_root()
        .join("bus/pci/devices/0000:3b:00.0/sriov_numvfs");
    assert_eq!(std::fs::read_to_string(numvfs).unwrap().trim(), "3");
}

/// Sends `datagram` to the kernel uevent multicast group inside `netns`, worded as the kernel
/// words a driver bind. It comes from a user socket (root may send there; only sockets of that
/// netns receive it): the daemon does not filter senders, as a uevent only schedules a
/// rediscovery.
fn send_uevent(netns: &Path, datagram: &[u8]) {
    use netlink_sys::{protocols::NETLINK_KOBJECT_UEVENT, Socket, SocketAddr};
    let ns = sriov::netlink::Netns::open(netns).unwrap();
    let sent = ns
        .run_in(|| -> std::io::Result<usize> {
            let socket = Socket::new(NETLINK_KOBJECT_UEVENT)?;
            socket.send_to(datagram, &SocketAddr::new(0, 1), 0)
        })
        .unwrap();
    assert_eq!(sent.expect("sending a uevent"), datagram.len());
}

#[test]
fn a_kernel_uevent_triggers_rediscovery() {
    // Real sysfs has no inotify: a driver bound by the kernel is known from its uevent. The
    // resync backstop is an hour away, and the change below is made where no inotify watch
    // looks (only the VF's own `driver` link), so only the uevent can reveal it.
    let env = Env::in_node_netns(
        "dp-uevent",
        SimSpec::default().pfs(1).vfs(4),
        IAVF_POOL,
        &["--resync-seconds", "3600"],
    );
    env.wait_devices("intel.com/net", |d| d.len() == 4 && all_healthy(d));
    let target = vf(0, 1);
    let dev = env.lab.sysfs_root().join("bus/pci/devices").join(&target);
    std::fs::remove_file(dev.join("driver")).unwrap();
    symlink("../../../bus/pci/drivers/vfio-pci", dev.join("driver")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let before = env
        .kubelet
        .wait_devices("intel.com/net", WAIT, |_| true)
        .unwrap();
    // A real kernel uevent (a PCI or block device of this machine) would reach the daemon too:
    // only without one may we say nothing else noticed the change.
    if !env.daemon.log().contains("uevent action=") {
        assert!(all_healthy(&before), "changed without a uevent: {before:?}");
    }

    // What the kernel sends when vfio-pci binds the VF (an unrelated subsystem first, which
    // must not matter).
    send_uevent(
        env.lab.netns_path(),
        b"add@/devices/virtual/block/loop9\0ACTION=add\0SUBSYSTEM=block\0SEQNUM=1\0",
    );
    let devpath = format!("/devices/pci0000:00/{target}");
    let event = format!(
        "bind@{devpath}\0ACTION=bind\0DEVPATH={devpath}\0SUBSYSTEM=pci\0DRIVER=vfio-pci\0SEQNUM=2\0"
    );
    send_uevent(env.lab.netns_path(), event.as_bytes());
    env.kubelet
        .wait_devices("intel.com/net", Duration::from_secs(5), |d| {
            d.iter()
                .any(|d| d.id == target && d.health == sriov_proto::UNHEALTHY)
        })
        .unwrap_or_else(|e| panic!("no update within 5 s of the uevent: {e}"));
    env.wait_log(&format!(
        "uevent action=bind subsystem=pci devpath={devpath}"
    ));
}

/// The (container path, host path) of each device spec.
fn spec_paths(r: &dp::ContainerAllocateResponse) -> Vec<(String, String)> {
    r.devices
        .iter()
        .map(|d| {
            assert_eq!(d.permissions, "rw");
            (d.container_path.clone(), d.host_path.clone())
        })
        .collect()
}

fn devinfo_files(env: &Env) -> Vec<String> {
    match std::fs::read_dir(env.devinfo_dir()) {
        Err(_) => vec![],
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
    }
}

/// An accelerator pool end to end (upstream README's `intel_fpga` shape with an ACC100 card's
/// VF device ID): ListAndWatch lists the VFs by PCI address; Allocate gives what upstream's
/// accelerator pool gives (pkg/accelerator/accelResourcePool.go on pkg/resources/pool_stub.go:
/// the generic and vfio `_INFO` entries of pkg/infoprovider, `additionalInfo` by PCI address,
/// the VFIO container and group nodes) and writes no device-information file
/// (pool_stub.go StoreDeviceInfoFile writes none).
#[test]
fn accelerator_pool_end_to_end() {
    let env = Env::new(
        "dp-accel",
        SimSpec::default().pfs(1).vfs(2).accel_vfs(4),
        &format!(
            r#"{{"resourceList": [
                {{"resourceName": "net", "selectors": {{"drivers": ["iavf"]}}}},
                {{"resourceName": "intel_fec", "deviceType": "accelerator",
                  "selectors": [{{"vendors": ["8086"], "devices": ["0d5d"], "drivers": ["vfio-pci"]}}],
                  "additionalInfo": {{"{}": {{"queue": "5g"}}}}}}
            ]}}"#,
            sim::accel_vf_pci(1)
        ),
        RegistrationMode::KubeletSocket,
    );
    let vfs: Vec<String> = (0..4).map(sim::accel_vf_pci).collect();
    let listed = env.wait_devices("intel.com/intel_fec", |d| d.len() == 4 && all_healthy(d));
    assert_eq!(ids(&listed), vfs);
    assert!(listed.iter().all(|d| d.topology.is_none()), "no NUMA node");
    env.wait_devices("intel.com/net", |d| d.len() == 2);

    let want = vec![vfs[0].clone(), vfs[1].clone()];
    let r = env.kubelet.allocate("intel.com/intel_fec", &want).unwrap();
    assert_eq!(r.envs["PCIDEVICE_INTEL_COM_INTEL_FEC"], want.join(","));
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_INTEL_FEC_INFO"]).unwrap();
    let (g0, g1) = (sim::accel_iommu_group(0), sim::accel_iommu_group(1));
    assert_eq!(
        info,
        serde_json::json!({
            // `extra` is there (empty) for every device once the pool has additionalInfo
            // (pkg/infoprovider/extraInfoProvider.go GetEnvVal, as for netDevice pools).
            &want[0]: {"generic": {"deviceID": &want[0]},
                       "vfio": {"mount": "/dev/vfio/vfio", "dev-mount": format!("/dev/vfio/{g0}")},
                       "extra": {}},
            &want[1]: {"generic": {"deviceID": &want[1]},
                       "vfio": {"mount": "/dev/vfio/vfio", "dev-mount": format!("/dev/vfio/{g1}")},
                       "extra": {"queue": "5g"}}
        })
    );
    let dev = env.lab.paths().dev();
    let host = |p: &str| dev.join(p).display().to_string();
    assert_eq!(
        spec_paths(&r),
        [
            ("/dev/vfio/vfio".to_string(), host("vfio/vfio")),
            (format!("/dev/vfio/{g0}"), host(&format!("vfio/{g0}"))),
            (format!("/dev/vfio/{g1}"), host(&format!("vfio/{g1}"))),
        ]
    );
    assert!(devinfo_files(&env).is_empty(), "{:?}", devinfo_files(&env));

    // The PF is not in this pool; a netDevice pool's VF is not either.
    for id in [sim::ACCEL_PCI.to_string(), vf(0, 0)] {
        let err = env
            .kubelet
            .allocate("intel.com/intel_fec", &[id])
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    }

    // A VF rebound away from vfio-pci leaves the pool's selection: Unhealthy, not vanished.
    let sys = env.lab.sysfs_root();
    let link = sys.join("bus/pci/devices").join(&vfs[3]).join("driver");
    std::fs::remove_file(&link).unwrap();
    symlink("../../../bus/pci/drivers/pci-pf-stub", &link).unwrap();
    std::fs::remove_file(sys.join("bus/pci/drivers/vfio-pci").join(&vfs[3])).unwrap();
    env.wait_devices("intel.com/intel_fec", |d| {
        d.len() == 4
            && d.iter()
                .filter(|d| d.health == sriov_proto::UNHEALTHY)
                .map(|d| d.id.as_str())
                .eq([vfs[3].as_str()])
    });
}

/// An auxNetDevice pool end to end: scalable functions listed by auxiliary device name,
/// Unhealthy while their PF is down; Allocate gives the names in the env, the generic entry with
/// the name, `additionalInfo` by the parent's PCI address (pkg/auxnetdevice/auxNetDevice.go
/// NewAuxNetDevice), the RDMA character devices of the SF's RDMA device (pkg/devices/rdma.go
/// over rdmamap GetRdmaDevicesForAuxdev), and no device-information file.
#[test]
fn aux_net_device_pool_end_to_end() {
    let env = Env::new(
        "dp-sf",
        SimSpec::default()
            .pfs(2)
            .vfs(2)
            .sfs(3)
            .model(sim::Model::Mellanox),
        &format!(
            r#"{{"resourceList": [
                {{"resourceName": "cx6dx_sf", "resourcePrefix": "nvidia.com", "deviceType": "auxNetDevice",
                  "selectors": [{{"vendors": ["15b3"], "devices": ["1017"], "auxTypes": ["sf"], "isRdma": true}}],
                  "additionalInfo": {{"{}": {{"fabric": "a"}}}}}}
            ]}}"#,
            sim::pf_pci(0)
        ),
        RegistrationMode::KubeletSocket,
    );
    let desc = env.lab.description().clone();
    let names: Vec<String> = desc
        .pfs
        .iter()
        .flat_map(|pf| pf.sfs.iter().map(|s| s.name.clone()))
        .collect();
    let listed = env.wait_devices("nvidia.com/cx6dx_sf", |d| d.len() == 6 && all_healthy(d));
    assert_eq!(ids(&listed), names);

    let sf = &desc.pfs[0].sfs[1];
    let r = env
        .kubelet
        .allocate("nvidia.com/cx6dx_sf", std::slice::from_ref(&sf.name))
        .unwrap();
    assert_eq!(r.envs["PCIDEVICE_NVIDIA_COM_CX6DX_SF"], sf.name);
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_NVIDIA_COM_CX6DX_SF_INFO"]).unwrap();
    assert_eq!(info.as_object().unwrap().len(), 1, "{info}");
    assert_eq!(
        info[&sf.name]["generic"],
        serde_json::json!({"deviceID": &sf.name})
    );
    assert_eq!(info[&sf.name]["extra"], serde_json::json!({"fabric": "a"}));
    let dev = env.lab.paths().dev();
    let host = |p: &str| dev.join(p).display().to_string();
    assert_eq!(
        spec_paths(&r),
        [
            // rdmamap GetRdmaCharDevices' order: ucm, issm, umad, uverbs, then rdma_cm.
            (
                format!("/dev/infiniband/{}", sf.umad),
                host(&format!("infiniband/{}", sf.umad))
            ),
            (
                format!("/dev/infiniband/{}", sf.uverbs),
                host(&format!("infiniband/{}", sf.uverbs))
            ),
            (
                "/dev/infiniband/rdma_cm".to_string(),
                host("infiniband/rdma_cm")
            ),
        ]
    );
    assert!(devinfo_files(&env).is_empty(), "{:?}", devinfo_files(&env));
    // The parent's PCI address names no SF.
    let err = env
        .kubelet
        .allocate("nvidia.com/cx6dx_sf", &[sim::pf_pci(0)])
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Their PF's link down: PF 0's SFs Unhealthy, PF 1's stay Healthy.
    let on_pf0 = |id: &str| desc.pfs[0].sfs.iter().any(|s| s.name == id);
    env.ip(&["link", "set", "ens1f0", "down"]);
    env.wait_devices("nvidia.com/cx6dx_sf", |d| {
        d.iter()
            .all(|d| (d.health == sriov_proto::UNHEALTHY) == on_pf0(&d.id))
    });
    env.ip(&["link", "set", "ens1f0", "up"]);
    env.wait_devices("nvidia.com/cx6dx_sf", all_healthy);

    // An SF removed (its devlink port deleted): gone from the pool's selection, Unhealthy.
    let gone = &desc.pfs[1].sfs[2];
    let sys = env.lab.sysfs_root();
    std::fs::remove_file(sys.join("bus/auxiliary/devices").join(&gone.name)).unwrap();
    std::fs::remove_dir_all(
        sys.join("bus/pci/devices")
            .join(sim::pf_pci(1))
            .join(&gone.name),
    )
    .unwrap();
    env.wait_devices("nvidia.com/cx6dx_sf", |d| {
        d.iter()
            .any(|d| d.id == gone.name && d.health == sriov_proto::UNHEALTHY)
    });
}

/// vDPA pools end to end (upstream docs/vdpa/configMap.yaml): a vhost VF gets
/// `/dev/vhost-vdpa-N` as a device spec, `"vdpa": {"mount": ...}` in `_INFO`
/// (pkg/infoprovider/vdpaInfoProvider.go) and a device-information file of type vdpa
/// (pkg/netdevice/netResourcePool.go StoreDeviceInfoFile); a virtio VF no device node,
/// `"vdpa": {}`, and a vdpa file without path. A vhost device whose node is gone is refused.
#[test]
fn vdpa_pools_end_to_end() {
    let env = Env::new(
        "dp-vdpa",
        SimSpec::default()
            .pfs(1)
            .vfs(4)
            .vdpa(2)
            .model(sim::Model::Mellanox),
        r#"{"resourceList": [
            {"resourceName": "vdpa_mlx_virtio",
             "selectors": [{"vendors": ["15b3"], "devices": ["1018"], "drivers": ["mlx5_core"], "vdpaType": "virtio"}]},
            {"resourceName": "vdpa_mlx_vhost",
             "selectors": [{"vendors": ["15b3"], "devices": ["1018"], "drivers": ["mlx5_core"], "vdpaType": "vhost"}]}
        ]}"#,
        RegistrationMode::KubeletSocket,
    );
    let (vf0, vf1, pf) = (vf(0, 0), vf(0, 1), sim::pf_pci(0));
    let listed = env.wait_devices("intel.com/vdpa_mlx_vhost", |d| d.len() == 1);
    assert_eq!(ids(&listed), std::slice::from_ref(&vf0));
    let listed = env.wait_devices("intel.com/vdpa_mlx_virtio", |d| d.len() == 1);
    assert_eq!(ids(&listed), std::slice::from_ref(&vf1));

    let r = env
        .kubelet
        .allocate("intel.com/vdpa_mlx_vhost", std::slice::from_ref(&vf0))
        .unwrap();
    let info: Value =
        serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_VDPA_MLX_VHOST_INFO"]).unwrap();
    assert_eq!(info[&vf0]["generic"], serde_json::json!({"deviceID": &vf0}));
    assert_eq!(
        info[&vf0]["vdpa"],
        serde_json::json!({"mount": "/dev/vhost-vdpa-0"})
    );
    let dev = env.lab.paths().dev();
    assert_eq!(
        spec_paths(&r),
        [(
            "/dev/vhost-vdpa-0".to_string(),
            dev.join("vhost-vdpa-0").display().to_string()
        )]
    );
    let file = |resource: &str, id: &str| -> Value {
        let path = env
            .devinfo_dir()
            .join(format!("intel.com-{resource}-{id}-device.json"));
        serde_json::from_slice(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap()
    };
    assert_eq!(
        file("vdpa_mlx_vhost", &vf0),
        serde_json::json!({"type": "vdpa", "version": "1.1.0", "vdpa": {
            "parent-device": "vdpa0", "driver": "vhost", "path": "/dev/vhost-vdpa-0",
            "pci-address": &vf0, "pf-pci-address": &pf}})
    );

    let r = env
        .kubelet
        .allocate("intel.com/vdpa_mlx_virtio", std::slice::from_ref(&vf1))
        .unwrap();
    let info: Value =
        serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_VDPA_MLX_VIRTIO_INFO"]).unwrap();
    assert_eq!(info[&vf1]["vdpa"], serde_json::json!({}));
    assert!(r.devices.is_empty(), "{:?}", r.devices);
    assert_eq!(
        file("vdpa_mlx_virtio", &vf1),
        serde_json::json!({"type": "vdpa", "version": "1.1.0", "vdpa": {
            "parent-device": "vdpa1", "driver": "virtio", "pci-address": &vf1,
            "pf-pci-address": &pf}})
    );

    // The vhost-vdpa node gone from /dev: refused, naming it.
    std::fs::remove_file(dev.join("vhost-vdpa-0")).unwrap();
    let err = env
        .kubelet
        .allocate("intel.com/vdpa_mlx_vhost", std::slice::from_ref(&vf0))
        .unwrap_err();
    assert!(err.message().contains("vhost-vdpa-0"), "{err}");
}
