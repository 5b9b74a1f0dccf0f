//! The node daemon on a simulated node of 8 PFs x 128 VFs (1,024 VFs), driven by the kubelet
//! emulator over real sockets. `cargo bench -p sriov-e2e --bench device_plugin` (root). The
//! daemon measured is the image's (static) binary, built by `scripts/build-image.sh
//! --binaries-only`, or the one `SRIOV_DP_BENCH_BINARY` names (to compare builds).
//!
//! Prints, against the targets of the daemon's issue:
//! - cold start to the first ListAndWatch answer (< 50 ms);
//! - Allocate latency p50 / p99, one VF per call, gRPC round trip included (p99 < 1 ms);
//! - resident memory of the idle daemon (< 10 MiB), also in `--mode both` (device plugins and
//!   DRA from one daemon);
//! - PF link down -> Unhealthy list at kubelet (< 100 ms);
//! - kubelet restart -> every pool re-registered and listed again (< 1 s).

use sriov_e2e::kubelet::{DaemonArgs, DaemonProcess, KubeletEmulator, RegistrationMode};
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"{"resourceList": [
    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
    {"resourceName": "low", "selectors": {"pfNames": ["ens1f0#0-63", "ens2f0#0-63"]}},
    {"resourceName": "kernel", "selectors": {"vendors": ["8086"], "drivers": ["iavf"]}}
]}"#;
const POOLS: [&str; 3] = ["intel.com/dpdk", "intel.com/low", "intel.com/kernel"];
const WAIT: Duration = Duration::from_secs(20);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn summary(label: &str, mut times: Vec<Duration>, target: &str) {
    times.sort();
    println!(
        "{label:<44} p50 {:>11}  p99 {:>11}  max {:>11}  (n={}, target {target})",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().expect("samples")),
        times.len()
    );
}

struct Run {
    daemon: DaemonProcess,
    kubelet: KubeletEmulator,
    _tmp: tempfile::TempDir,
}

fn start(bin: &Path, lab: &SimNode) -> Run {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubelet_dir = tmp.path().join("kubelet");
    let kubelet =
        KubeletEmulator::start(&kubelet_dir, RegistrationMode::KubeletSocket).expect("kubelet");
    let config = tmp.path().join("config.json");
    std::fs::write(&config, CONFIG).expect("config");
    // As deployed: metrics served, the node-state file written, the device-information files
    // on a tmpfs (a node's /run; the lab's root is one, the benchmark's temporary folder may
    // not be).
    let args = DaemonArgs {
        metrics_address: Some(sriov_e2e::local::unused_local_addr()),
        devinfo_dir: lab.paths().root().join("devinfo"),
        extra: vec![
            "--node-state-file".into(),
            tmp.path().join("node-state.json").display().to_string(),
        ],
        ..DaemonArgs::on_lab(lab, tmp.path(), config)
    };
    let log = tmp.path().join("daemon.log");
    std::env::set_var("RUST_LOG", "warn");
    let daemon = DaemonProcess::spawn(bin, &args, &log).expect("spawn");
    Run {
        daemon,
        kubelet,
        _tmp: tmp,
    }
}

/// A `/proc/PID/status` field in KiB (VmRSS, RssAnon, RssFile).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn print_rss(label: &str, pid: u32, target: &str) {
    let mib = |field| status_kib(pid, field) as f64 / 1024.0;
    println!(
        "{label:<44} {:.1} MiB (anonymous {:.1}, file-backed {:.1})  ({target})",
        mib("VmRSS"),
        mib("RssAnon"),
        mib("RssFile")
    );
}

/// The node-state sidecar following the daemon's file, with no API server to reach (none
/// exists here): it reads and parses the status, fails to publish, and waits to retry.
fn sidecar_rss(run: &Run) {
    let bin = sriov_e2e::image_binary("sriov-node-state").unwrap_or_else(|e| panic!("{e}"));
    let dir = run._tmp.path();
    let kubeconfig = sriov_e2e::local::write_kubeconfig(dir, sriov_e2e::local::unused_local_addr());
    let mut child = Command::new(bin)
        .arg("--status-file")
        .arg(dir.join("node-state.json"))
        .args(["--node-name", "bench-node", "--min-interval-seconds", "0"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sriov-node-state");
    std::thread::sleep(Duration::from_secs(3));
    print_rss(
        "node-state sidecar, idle (API unreachable)",
        child.id(),
        "-",
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the device plugin benchmark needs root (simulated node)"
    );
    sriov_e2e::sim::gc().expect("gc");
    // The binary the image ships: static, built by `scripts/build-image.sh --binaries-only`;
    // or another build to compare with (`SRIOV_DP_BENCH_BINARY=path`).
    let bin: PathBuf = match std::env::var_os("SRIOV_DP_BENCH_BINARY") {
        Some(path) => PathBuf::from(path),
        None => sriov_e2e::image_binary("sriov-device-plugin").unwrap_or_else(|e| panic!("{e}")),
    };
    println!("daemon binary: {} (as in the image)", bin.display());
    let spec = SimSpec::new(unique_name("bench-dp"))
        .pfs(8)
        .vfs(128)
        .total_vfs(128)
        .vfio(8)
        .numa(true);
    let built = Instant::now();
    let lab = SimNode::up(&spec).expect("lab up");
    println!(
        "simulated node: 8 PFs x 128 VFs (8 vfio-pci per PF), built in {:?}",
        built.elapsed()
    );

    // Cold start: spawn -> first ListAndWatch list at kubelet (and -> every pool listed).
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut run = start(&bin, &lab);
        let spawned = run.daemon.started;
        let got_first = run
            .kubelet
            .wait_for(WAIT, |s| {
                s.plugins
                    .values()
                    .filter_map(|p| p.updates.first().map(|u| u.0))
                    .min()
            })
            .expect("first list");
        let got_all = run
            .kubelet
            .wait_for(WAIT, |s| {
                POOLS
                    .iter()
                    .map(|r| {
                        s.plugins
                            .get(*r)
                            .and_then(|p| p.updates.first().map(|u| u.0))
                    })
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().max())
            })
            .expect("all lists");
        first.push(got_first - spawned);
        all.push(got_all - spawned);
        run.daemon.terminate(Duration::from_secs(5));
    }
    summary("cold start -> first ListAndWatch answer", first, "< 50 ms");
    summary("cold start -> every pool listed (3 pools)", all, "-");

    let mut run = start(&bin, &lab);
    let kernel = run
        .kubelet
        .wait_devices("intel.com/kernel", WAIT, |d| d.len() == 8 * 120 - 128)
        .expect("kernel pool");
    run.kubelet
        .wait_devices("intel.com/dpdk", WAIT, |d| d.len() == 64)
        .expect("dpdk pool");
    run.kubelet
        .wait_devices("intel.com/low", WAIT, |d| d.len() == 128)
        .expect("low pool");

    // Allocate latency.
    let mut times = Vec::new();
    for i in 0..2000 {
        let id = vec![kernel[i % kernel.len()].id.clone()];
        let t = Instant::now();
        run.kubelet
            .allocate("intel.com/kernel", &id)
            .expect("allocate");
        times.push(t.elapsed());
    }
    summary("Allocate (1 VF, round trip)", times, "p99 < 1 ms");
    let mut times = Vec::new();
    let available: Vec<String> = kernel.iter().map(|d| d.id.clone()).collect();
    for _ in 0..500 {
        let t = Instant::now();
        run.kubelet
            .preferred_allocation("intel.com/kernel", &available, &[], 4)
            .expect("preferred");
        times.push(t.elapsed());
    }
    summary("GetPreferredAllocation (4 of 832, round trip)", times, "-");

    // Idle memory.
    std::thread::sleep(Duration::from_secs(2));
    print_rss(
        "resident memory, idle, 1,024 VFs",
        run.daemon.pid().expect("pid"),
        "target < 10 MiB",
    );
    sidecar_rss(&run);

    // Link down -> Unhealthy: a long-lived `ip -batch` so no process start is measured.
    let mut ip = Command::new("ip")
        .args(["-n", &lab.netns_name(), "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("ip -batch");
    let mut stdin = ip.stdin.take().expect("stdin");
    let (mut down, mut up) = (Vec::new(), Vec::new());
    let on_pf0 = |id: &str| id.starts_with("0000:3b:");
    for _ in 0..20 {
        for (state, want, out) in [
            ("down", sriov_proto::UNHEALTHY, &mut down),
            ("up", sriov_proto::HEALTHY, &mut up),
        ] {
            let t = Instant::now();
            writeln!(stdin, "link set ens1f0 {state}").expect("write");
            stdin.flush().expect("flush");
            let at = run
                .kubelet
                .wait_for(WAIT, |s| {
                    let p = s.plugins.get("intel.com/kernel")?;
                    let (at, list) = p.updates.last()?;
                    (*at >= t
                        && list
                            .iter()
                            .filter(|d| on_pf0(&d.id))
                            .all(|d| d.health == want))
                    .then_some(*at)
                })
                .expect("health update");
            out.push(at - t);
        }
    }
    drop(stdin);
    let _ = ip.wait();
    summary("PF link down -> Unhealthy at kubelet", down, "< 100 ms");
    summary("PF link up -> Healthy at kubelet", up, "-");

    // Kubelet restart -> re-registered and listed.
    let mut times = Vec::new();
    for _ in 0..10 {
        let restarted = run.kubelet.restart().expect("restart");
        let back = run
            .kubelet
            .wait_for(WAIT, |s| {
                POOLS
                    .iter()
                    .all(|r| {
                        s.plugins
                            .get(*r)
                            .is_some_and(|p| p.connected && !p.updates.is_empty())
                    })
                    .then(Instant::now)
            })
            .expect("re-registered");
        times.push(back - restarted);
    }
    summary("kubelet restart -> all pools re-registered", times, "< 1 s");
    run.daemon.terminate(Duration::from_secs(5));
    drop(run);

    both_mode_rss(&bin, &lab);
}

/// `--mode both`: the same daemon serving the pools as device plugins and through DRA (the DRA
/// kubelet plugin, its health stream, the devices file for the sidecar's ResourceSlices), with
/// the image's sidecar in front of the in-test API server; idle once every pool is listed at
/// kubelet and the driver is registered.
fn both_mode_rss(bin: &Path, lab: &SimNode) {
    use sriov_e2e::dra_node::{DraNode, DraNodeSpec};
    let tmp = tempfile::tempdir().expect("tempdir");
    let bins = bin.parent().expect("the daemon's folder");
    let mut spec = DraNodeSpec::on_lab_with(lab, bins, tmp.path(), CONFIG);
    spec.mode = "both".into();
    spec.env = vec![("RUST_LOG".into(), "warn".into())];
    let node = DraNode::start(spec, None).unwrap_or_else(|e| panic!("both mode: {e}"));
    let kubelet =
        KubeletEmulator::start(&tmp.path().join("kubelet"), RegistrationMode::KubeletSocket)
            .expect("kubelet");
    kubelet
        .wait_devices("intel.com/kernel", WAIT, |d| d.len() == 8 * 120 - 128)
        .unwrap_or_else(|e| panic!("{e}\n{}", node.daemon.log()));
    std::thread::sleep(Duration::from_secs(2));
    print_rss(
        "resident memory, idle, 1,024 VFs, --mode both",
        node.daemon.pid().expect("pid"),
        "target < 10 MiB",
    );
    drop(kubelet);
    drop(node);
}
