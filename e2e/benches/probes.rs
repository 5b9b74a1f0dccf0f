//! The probes on an idle node: two daemons (the image's static binary), one with
//! `--resync-seconds 5` and one with `--resync-seconds 300`, default liveness timeout (30 s),
//! probed as kubelet does (`/healthz` and `/readyz`, once a second each) for several minutes
//! (`SRIOV_PROBE_SOAK_SECONDS`, default 240). Prints every answer that was not 200 and the
//! slowest answer; fails if any probe failed once both daemons were ready.
//! `cargo bench -p sriov-e2e --bench probes` (root).

use sriov_e2e::kubelet::{DaemonArgs, DaemonProcess, KubeletEmulator, RegistrationMode};
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CONFIG: &str =
    r#"{"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}"#;

struct Daemon {
    resync: u64,
    probes: SocketAddr,
    process: DaemonProcess,
    _kubelet: KubeletEmulator,
    _tmp: tempfile::TempDir,
    failures: Vec<(Duration, String)>,
    sent: u32,
    slowest: Duration,
}

fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn start(bin: &std::path::Path, lab: &SimNode, resync: u64) -> Daemon {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubelet =
        KubeletEmulator::start(&tmp.path().join("kubelet"), RegistrationMode::KubeletSocket)
            .expect("kubelet");
    let config = tmp.path().join("config.json");
    std::fs::write(&config, CONFIG).expect("config");
    let probes = sriov_e2e::local::unused_local_addr();
    let args = DaemonArgs {
        metrics_address: Some(sriov_e2e::local::unused_local_addr()),
        extra: vec![
            format!("--resync-seconds={resync}"),
            format!("--probe-address={probes}"),
        ],
        ..DaemonArgs::on_lab(lab, tmp.path(), config)
    };
    let process = DaemonProcess::spawn_with_env(
        bin,
        &args,
        &tmp.path().join("daemon.log"),
        &[("RUST_LOG", "warn")],
    )
    .expect("spawn");
    Daemon {
        resync,
        probes,
        process,
        _kubelet: kubelet,
        _tmp: tmp,
        failures: Vec::new(),
        sent: 0,
        slowest: Duration::ZERO,
    }
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the probe benchmark needs root (simulated node)"
    );
    sriov_e2e::sim::gc().expect("gc");
    let soak = Duration::from_secs(
        std::env::var("SRIOV_PROBE_SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(240),
    );
    let bin = sriov_e2e::image_binary("sriov-device-plugin").unwrap_or_else(|e| panic!("{e}"));
    let lab = SimNode::up(&SimSpec::new(unique_name("bench-probes")).pfs(2).vfs(8)).expect("lab");
    let mut daemons = [start(&bin, &lab, 5), start(&bin, &lab, 300)];
    // Ready (every pool served and registered) before the soak starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    for d in &daemons {
        while !get(d.probes, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            assert!(
                Instant::now() < deadline,
                "resync {} s: never ready",
                d.resync
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!("idle node (2 PFs x 8 VFs), probing /healthz and /readyz once a second for {soak:?}");
    let start = Instant::now();
    let mut tick = start;
    while start.elapsed() < soak {
        for d in &mut daemons {
            for path in ["/healthz", "/readyz"] {
                let t = Instant::now();
                let answer = get(d.probes, path);
                d.slowest = d.slowest.max(t.elapsed());
                d.sent += 1;
                match answer {
                    Ok(r) if r.starts_with("HTTP/1.1 200") => {}
                    Ok(r) => d.failures.push((
                        start.elapsed(),
                        format!("{path}: {}", r.lines().last().unwrap_or("")),
                    )),
                    Err(e) => d.failures.push((start.elapsed(), format!("{path}: {e}"))),
                }
            }
        }
        tick += Duration::from_secs(1);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
    let mut failed = false;
    for d in &mut daemons {
        println!(
            "--resync-seconds {:<4} {} probes, {} not 200, slowest answer {:.2} ms",
            d.resync,
            d.sent,
            d.failures.len(),
            d.slowest.as_secs_f64() * 1000.0
        );
        for (at, what) in &d.failures {
            println!("    at {at:?}: {what}");
        }
        failed |= !d.failures.is_empty();
        d.process.terminate(Duration::from_secs(5));
    }
    assert!(!failed, "false probe failures on an idle node");
}
