//! DRA prepare latency: the daemon in `--mode dra` on a simulated node (2 PFs x 8 VFs), the
//! real sidecar's claim service in front of the in-process API server, kubelet's DRA side
//! emulated on one kept connection (as kubelet keeps it). Each round the "scheduler" stores a
//! new claim with its `status.allocation` (one VF), kubelet calls NodePrepareResources, then
//! NodeUnprepareResources; the gRPC round trip is timed. Two kinds of claims:
//! - a kernel VF (no driver change): record, claim service round trip, checks, CDI spec;
//! - `driver: vfio-pci`: the same plus the bind to vfio-pci and back to iavf. The simulated
//!   node's binds are played by `sim::BindEmulator` (inotify on `drivers_probe`), so they
//!   complete after the daemon's write, not during it as in the kernel: the daemon sees them at
//!   its next look (every 10 ms), and these figures include that wait.
//!
//! Also: a prepare of a claim already prepared (kubelet after a restart: answered from the
//! record), and the time from the prepare call until the claim's `Ready` condition is in the
//! API server (the daemon reports it through the sidecar after answering kubelet).
//!
//! `cargo bench -p sriov-e2e --bench dra_prepare` (root). `DRA_BENCH_ROUNDS` (default 200)
//! rounds of each kind; `SRIOV_DRA_BENCH_BINARIES=DIR` measures the `sriov-device-plugin` and
//! `sriov-node-state` in DIR instead of the workspace's (release) build.

use serde_json::json;
use sriov_e2e::dra_node::{dev, result, vfio_config, DraNode, DraNodeSpec, DRIVER, WAIT};
use sriov_e2e::kubelet::dra::claim;
use sriov_e2e::sim::{self, unique_name, vf_pci, BindEmulator, SimNode, SimSpec};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Both drivers in one pool: a VF bound to vfio-pci for a claim stays a healthy pool device.
const POOLS: &str = r#"{"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf", "vfio-pci"]}}]}"#;
const VFS: u32 = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{label:<52} p50 {:>9}  p99 {:>9}  max {:>9}  (n={})",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().expect("timed rounds")),
        times.len()
    );
}

/// Removes the work folder, also when the benchmark panics.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Times {
    prepare: Vec<Duration>,
    again: Vec<Duration>,
    ready: Vec<Duration>,
    unprepare: Vec<Duration>,
}

fn driver_of(lab: &SimNode, pci: &str) -> String {
    std::fs::read_link(
        lab.sysfs_root()
            .join("bus/pci/devices")
            .join(pci)
            .join("driver"),
    )
    .ok()
    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    .unwrap_or_default()
}

/// Waits until the API server got the daemon's report (through the sidecar: a patch of the
/// claim's status), looking every 0.2 ms; the time since `since`.
fn wait_report(node: &DraNode, name: &str, since: Instant) -> Duration {
    let path = format!("/resourceclaims/{name}/status");
    loop {
        if node
            .api
            .take_requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with(&path) && r.status == 200)
        {
            return since.elapsed();
        }
        assert!(since.elapsed() < WAIT, "no report to {name}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `rounds` claims (`<prefix>-<i>`) of one VF each, on `pf`'s VFs in turn; `vfio`: with
/// `driver: vfio-pci`.
fn rounds(
    node: &DraNode,
    lab: &SimNode,
    prefix: &str,
    pf: u32,
    vfio: bool,
    rounds: usize,
) -> Times {
    let mut conn = node
        .kubelet
        .connect(DRIVER)
        .unwrap_or_else(|e| panic!("connecting to the driver: {e}"));
    let mut t = Times::default();
    for i in 0..rounds {
        let pci = vf_pci(pf, i as u32 % VFS);
        let name = format!("{prefix}-{i}");
        let config = if vfio {
            json!([vfio_config()])
        } else {
            json!([])
        };
        let uid = node.claim(&name, json!([result("vf", &pci)]), config, &[&name]);
        let c = claim("default", &name, &uid);

        node.api.take_requests();
        let start = Instant::now();
        let r = conn.prepare(vec![c.clone()]).expect("NodePrepareResources");
        t.prepare.push(start.elapsed());
        let got = &r.claims[&uid];
        assert_eq!(got.error, "", "prepare {name}\n{}", node.daemon.log());
        let want = if vfio { "vfio-pci" } else { "iavf" };
        assert_eq!(driver_of(lab, &pci), want, "{pci} after prepare");
        t.ready.push(wait_report(node, &name, start));
        assert_eq!(
            node.ready_condition(&name, &dev(&pci)),
            Some(("True".into(), "Prepared".into())),
            "{name}'s condition"
        );

        let again = Instant::now();
        let r = conn.prepare(vec![c.clone()]).expect("NodePrepareResources");
        t.again.push(again.elapsed());
        assert_eq!(r.claims[&uid].error, "");
        // Its report too, before the unprepare is timed.
        wait_report(node, &name, again);

        let start = Instant::now();
        let r = conn.unprepare(vec![c]).expect("NodeUnprepareResources");
        t.unprepare.push(start.elapsed());
        assert_eq!(r.claims[&uid].error, "", "unprepare {name}");
        assert_eq!(driver_of(lab, &pci), "iavf", "{pci} after unprepare");
        assert!(node.record(&uid).is_none(), "record of {name} left");
    }
    t
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the DRA prepare benchmark needs root (simulated node)"
    );
    sim::gc().expect("gc");
    let n: usize = std::env::var("DRA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let lab = SimNode::up(&SimSpec::new(unique_name("bench-dra")).pfs(2).vfs(VFS))
        .unwrap_or_else(|e| panic!("lab up: {e}"));
    let work = WorkDir(std::env::temp_dir().join(unique_name("bench-dra-prepare")));
    let spec = match std::env::var_os("SRIOV_DRA_BENCH_BINARIES") {
        Some(dir) => DraNodeSpec::on_lab_with(&lab, &PathBuf::from(dir), &work.0, POOLS),
        None => DraNodeSpec::on_lab(&lab, &work.0, POOLS),
    };
    println!(
        "daemon binary: {}, sidecar: {:?}",
        spec.daemon_bin.display(),
        spec.sidecar
    );
    let vfio_vfs: Vec<String> = (0..VFS).map(|v| vf_pci(1, v)).collect();
    let _binds = BindEmulator::start(&lab, &vfio_vfs).unwrap_or_else(|e| panic!("{e}"));
    let node = DraNode::start(spec, None).unwrap_or_else(|e| panic!("{e}"));
    // Every device published healthy before the first claim.
    node.kubelet
        .wait_for("every device healthy", WAIT, |s| {
            let h = s.last_health()?;
            (h.len() == 2 * VFS as usize && h.iter().all(|d| d.1 == 1)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", node.daemon.log()));

    // Warm-up (first connections, page cache), not counted.
    rounds(&node, &lab, "warm-up", 0, false, 5);
    let kernel = rounds(&node, &lab, "kernel", 0, false, n);
    let vfio = rounds(&node, &lab, "vfio", 1, true, n);
    println!("DRA prepare / unprepare, one VF per claim, kubelet's gRPC round trip:");
    summary("NodePrepareResources, kernel VF", kernel.prepare);
    summary("NodeUnprepareResources, kernel VF", kernel.unprepare);
    summary(
        "NodePrepareResources, driver: vfio-pci (bind)",
        vfio.prepare,
    );
    summary(
        "NodeUnprepareResources, driver: vfio-pci (rebind)",
        vfio.unprepare,
    );
    summary("NodePrepareResources again (from the record)", kernel.again);
    summary(
        "prepare call to Ready condition stored, kernel VF",
        kernel.ready,
    );
    summary(
        "prepare call to Ready condition stored, vfio-pci",
        vfio.ready,
    );
}
