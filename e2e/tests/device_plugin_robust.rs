//! The daemon never wedges, never flaps, never fails open: each problem found by a review of
//! the daemon (panicking work, probes tied to the resync interval, an unreadable route table,
//! a reverted config, metrics missing until their first event, sysfs errors at Allocate, a
//! socket path as `:authority`) on the real process and a simulated node. Needs root.

mod dp_common;

use dp_common::*;
use prost::Message;
use sriov_e2e::kubelet::raw_h2::{unary_call, RawCallError};
use sriov_e2e::kubelet::RegistrationMode;
use sriov_e2e::sim::SimSpec;
use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::pluginregistration as reg;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn error_count(kind: &str) -> String {
    format!("sriov_dp_errors_total{{kind=\"{kind}\"}}")
}

#[test]
fn work_that_panics_is_retried_and_the_daemon_keeps_serving() {
    let env = Env::start(
        "dp-panic",
        SimSpec::default().pfs(1).vfs(3),
        IAVF_POOL,
        Run {
            env: vec![(
                "SRIOV_DP_FAULT",
                "discovery-panic-once,node-state-panic-once",
            )],
            node_state: true,
            ..Run::default()
        },
    );
    // The first discovery panicked: retried, and the pool is served all the same.
    env.wait_devices("intel.com/net", |d| d.len() == 3 && all_healthy(d));
    env.wait_log("discovery panicked");
    env.wait_metric(&error_count("discovery"), 1.0);
    // The first node-state write panicked: retried, and the file says all is well.
    env.wait_metric(&error_count("node_state"), 1.0);
    env.wait_node_state("the pool and no error", |v| {
        v["pools"].as_array().is_some_and(|p| p.len() == 1) && v.get("lastError").is_none()
    });
    assert!(env.http_get("/readyz").starts_with("HTTP/1.1 200"));
    let r = env.kubelet.allocate("intel.com/net", &[vf(0, 1)]).unwrap();
    assert_eq!(r.envs["PCIDEVICE_INTEL_COM_NET"], vf(0, 1));
}

/// SIGTERM on a quiet node (no link notification comes): the daemon stops at once, not when
/// its link watcher's blocking read next returns.
#[test]
fn sigterm_on_a_quiet_node_stops_at_once() {
    let mut env = Env::new(
        "dp-sigterm",
        SimSpec::default().pfs(1).vfs(2),
        IAVF_POOL,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/net", |d| d.len() == 2);
    env.wait_log("link snapshot");
    // The kernel announces a new link's carrier up to a second late: let the lab settle.
    std::thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    let status = env
        .daemon
        .terminate(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    println!("stopped {:?} after SIGTERM", asked.elapsed());
}

/// The probe listener has an address of its own (here 127.0.0.2, where the metrics listener
/// on 127.0.0.1 does not answer). With a resync of 300 s and a stall limit of 2 s the loop must
/// still beat; a loop that stops turning fails liveness.
#[test]
fn liveness_ignores_a_long_resync_and_fails_when_the_loop_stalls() {
    let port = sriov_e2e::local::unused_local_addr().port();
    let probes: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let mut env = Env::start(
        "dp-probes",
        SimSpec::default().pfs(1).vfs(2),
        IAVF_POOL,
        Run {
            env: vec![("SRIOV_DP_FAULT", "stall-on-config-change")],
            extra: vec![
                "--resync-seconds=300".into(),
                "--liveness-timeout-seconds=2".into(),
                format!("--probe-address={probes}"),
            ],
            ..Run::default()
        },
    );
    env.wait_devices("intel.com/net", |d| d.len() == 2);
    let deadline = Instant::now() + WAIT;
    while !http_get(probes, "/readyz").starts_with("HTTP/1.1 200") {
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            http_get(probes, "/readyz")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elsewhere = SocketAddr::new(probes.ip(), env.metrics.port());
    assert!(
        std::net::TcpStream::connect(elsewhere).is_err(),
        "the metrics listener serves 127.0.0.1 only"
    );
    assert!(http_get(probes, "/metrics").starts_with("HTTP/1.1 404"));
    // Idle for three stall limits: every probe answers 200.
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(6) {
        for path in ["/healthz", "/readyz"] {
            let r = http_get(probes, path);
            assert!(
                r.starts_with("HTTP/1.1 200"),
                "{path} after {:?}: {r}",
                idle.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A config change makes the loop stop turning (test-only fault): liveness fails, saying why.
    env.set_config(
        r#"{"resourceList": [{"resourceName": "other", "selectors": {"drivers": ["iavf"]}}]}"#,
    );
    env.wait_log("stalled on purpose");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = http_get(probes, "/healthz");
        if r.starts_with("HTTP/1.1 503") {
            assert!(r.contains("has not turned"), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "still live: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(env.http_get("/healthz").starts_with("HTTP/1.1 503"));
}

/// Uplinks read from a namespace that cannot be opened: unknown, so every VF with a netdev
/// stays out (only the vfio-pci ones are offered), and the daemon says why.
#[test]
fn unknown_uplinks_keep_every_netdev_out_of_the_pools() {
    let env = Env::start(
        "dp-uplink",
        SimSpec::default().pfs(1).vfs(4).vfio(2),
        r#"{"resourceList": [{"resourceName": "all", "selectors": {"vendors": ["8086"]}}]}"#,
        Run {
            netns: Some("/proc/self/status".into()),
            node_state: true,
            ..Run::default()
        },
    );
    let d = env.wait_devices("intel.com/all", |_| true);
    assert_eq!(ids(&d), [vf(0, 2), vf(0, 3)], "only the vfio-pci VFs");
    env.wait_metric(&error_count("uplink"), 1.0);
    env.wait_log("every netdev that could be the uplink stays out of the pools");
    let state = env.wait_node_state("the uplink error", |v| {
        v["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read the routes"))
    });
    assert!(state["lastError"]
        .as_str()
        .unwrap()
        .contains("/proc/self/status"));
}

/// A refused config, then the running one put back: `config_valid` returns to 1 and the
/// node's `lastError` clears (the unchanged text used to return early and leave both).
#[test]
fn a_reverted_config_clears_the_alert() {
    let mut env = Env::start(
        "dp-revert",
        SimSpec::default().pfs(1).vfs(2),
        IAVF_POOL,
        Run {
            node_state: true,
            ..Run::default()
        },
    );
    env.wait_devices("intel.com/net", |d| d.len() == 2);
    env.set_config(r#"{"resourceList": [{"resourceName": "net", "selector": {}}]}"#);
    env.wait_metric_is("sriov_dp_config_valid", |v| v == 0.0, "0");
    env.wait_node_state("the refusal", |v| {
        v["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("refused"))
    });
    env.set_config(IAVF_POOL);
    env.wait_metric_is("sriov_dp_config_valid", |v| v == 1.0, "1");
    env.wait_node_state("no error", |v| v.get("lastError").is_none());
    env.wait_log("holds the running config again");
    assert_eq!(
        env.metric("sriov_dp_reconfigurations_total{result=\"applied\"}"),
        Some(0.0),
        "nothing was applied: it is the running config"
    );
}

#[test]
fn metrics_are_complete_from_the_start_and_pass_promtool() {
    let env = Env::new(
        "dp-metrics",
        SimSpec::default().pfs(1).vfs(2),
        IAVF_POOL,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/net", |d| d.len() == 2);
    env.wait_metric(
        "sriov_dp_registrations_total{resource=\"intel.com/net\",result=\"success\"}",
        1.0,
    );
    let response = env.http_get("/metrics");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    for line in [
        "sriov_dp_allocations_total{resource=\"intel.com/net\"} 0",
        "sriov_dp_allocated_devices_total{resource=\"intel.com/net\"} 0",
        "sriov_dp_allocation_errors_total{resource=\"intel.com/net\",reason=\"unknown_device\"} 0",
        "sriov_dp_allocation_errors_total{resource=\"intel.com/net\",reason=\"sysfs\"} 0",
        "sriov_dp_preferred_allocations_total{resource=\"intel.com/net\"} 0",
        "sriov_dp_registrations_total{resource=\"intel.com/net\",result=\"failure\"} 0",
        "sriov_dp_reconfigurations_total{result=\"applied\"} 0",
        "sriov_dp_reconfigurations_total{result=\"rejected\"} 0",
        "sriov_dp_errors_total{kind=\"discovery\"} 0",
        "sriov_dp_errors_total{kind=\"netlink_parse\"} 0",
        "sriov_dp_mtu_lock_restores_total 0",
        "sriov_dp_build_info{version=\"0.1.0\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    let rss: f64 = env.metric("process_resident_memory_bytes").unwrap();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", env.daemon.pid().unwrap())).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        (rss - kib * 1024.0).abs() < 4.0 * 1024.0 * 1024.0,
        "{rss} vs {kib} KiB"
    );

    let promtool = which("promtool").unwrap_or_else(|| {
        panic!("promtool is missing: e2e/scripts/install-daemon-test-deps.sh installs it")
    });
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.is_file())
}

#[test]
fn allocate_fails_cleanly_on_sysfs_errors_and_reports_gone_devices() {
    let env = Env::new(
        "dp-sysfs",
        SimSpec::default().pfs(1).vfs(3),
        IAVF_POOL,
        RegistrationMode::KubeletSocket,
    );
    env.wait_devices("intel.com/net", |d| d.len() == 3 && all_healthy(d));
    let devices = env.lab.sysfs_root().join("bus/pci/devices");

    // An unreadable `driver` link (a file where the link should be: readlink fails).
    let driver = devices.join(vf(0, 1)).join("driver");
    let target = std::fs::read_link(&driver).unwrap();
    std::fs::remove_file(&driver).unwrap();
    std::fs::write(&driver, "").unwrap();
    let err = env
        .kubelet
        .allocate("intel.com/net", &[vf(0, 1)])
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    assert!(
        err.message().contains("driver") && err.message().contains(&vf(0, 1)),
        "{err}"
    );
    assert!(
        std::fs::read_dir(env.devinfo_dir()).map_or(true, |mut d| d.next().is_none()),
        "no device-information file for a failed Allocate"
    );
    env.wait_metric(
        "sriov_dp_allocation_errors_total{resource=\"intel.com/net\",reason=\"sysfs\"}",
        1.0,
    );
    std::fs::remove_file(&driver).unwrap();
    symlink(target, &driver).unwrap();
    env.kubelet.allocate("intel.com/net", &[vf(0, 1)]).unwrap();

    // A device gone from sysfs: refused, and it shows Unhealthy at kubelet.
    let gone = vf(0, 2);
    std::fs::remove_file(devices.join(&gone)).unwrap();
    std::fs::remove_file(devices.join("0000:3b:00.0/virtfn2")).unwrap();
    let err = env
        .kubelet
        .allocate("intel.com/net", std::slice::from_ref(&gone))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("gone"), "{err}");
    env.wait_devices("intel.com/net", |d| {
        d.iter()
            .any(|d| d.id == gone && d.health == sriov_proto::UNHEALTHY)
    });
}

/// Kubelets before 1.26 (grpc-go before 1.48) and Python's grpcio send the socket path as
/// HTTP/2 `:authority`: every server of the daemon answers them (h2 alone resets the stream).
#[test]
fn every_server_accepts_a_socket_path_as_authority() {
    for mode in [
        RegistrationMode::KubeletSocket,
        RegistrationMode::PluginWatcher,
    ] {
        let env = Env::new(
            "dp-authority",
            SimSpec::default().pfs(1).vfs(2),
            IAVF_POOL,
            mode,
        );
        env.wait_devices("intel.com/net", |d| d.len() == 2);
        let socket = env.kubelet.plugin("intel.com/net").unwrap().endpoint;
        let path = socket.display().to_string();
        for authority in [path.as_str(), "localhost", "", "unix:/run/x.sock"] {
            let reply = unary_call(
                &socket,
                authority,
                "/v1beta1.DevicePlugin/GetDevicePluginOptions",
                &dp::Empty {}.encode_to_vec(),
            )
            .unwrap_or_else(|e| panic!("{mode:?}, :authority {authority:?}: {e:?}"));
            let options = dp::DevicePluginOptions::decode(&reply[..]).unwrap();
            assert!(options.get_preferred_allocation_available);
        }
        let info = unary_call(
            &socket,
            &path,
            "/pluginregistration.Registration/GetInfo",
            &reg::InfoRequest {}.encode_to_vec(),
        );
        match mode {
            RegistrationMode::PluginWatcher => {
                let info = reg::PluginInfo::decode(&info.unwrap()[..]).unwrap();
                assert_eq!(info.name, "intel.com/net");
            }
            // No such service on a kubelet.sock-mode socket: a gRPC status, not a reset.
            RegistrationMode::KubeletSocket => {
                assert!(matches!(info, Err(RawCallError::Status(code, _)) if code == "12"))
            }
        }
    }
}
