//! ADD and DEL latency of the `sriov` CNI plugin (exec to exit) against Debian's `host-device`
//! plugin doing the same move of a VF netdev into a pod, on a simulated node, in one run.
//!
//! `cargo bench -p sriov-e2e --bench cni` (root; `CNI_BENCH_ROUNDS` overrides the 500 rounds).
//! Our plugin is the image's static binary (built by `scripts/build-image.sh --binaries-only`),
//! or the one `SRIOV_CNI_BENCH_BINARY` names.
//! The benchmark process enters the node's netns itself, so both plugins are exec'ed directly
//! (no nsenter in the measurement).
//!
//! The kernel's netns move of a netdev costs most of either plugin's time and varies a lot
//! between runs (an `rcu_barrier`), so every round interleaves, back to back: both ADDs, the move
//! alone (in this process, the same netlink request), both DELs; which plugin goes first
//! alternates between rounds (the call right after a move pays more of the kernel's deferred
//! work). Each figure is then reported with its spread (p10-p90), the ratio both as the ratio of
//! medians and as the median of the per-round ratios (each round's pair saw the same machine).
//! Our time outside the move is exact per call: exec to exit minus the move inside that very
//! call, which the plugin reports on stderr with `SRIOV_CNI_TIMINGS=1`; host-device's can only be
//! estimated, as its call minus the separate move of the same round. The floor, a VERSION call
//! (exec to exit, no work), is measured both alone and right after a move, since every ADD and
//! DEL runs in the wake of a move the kernel has not finished paying for. Targets: ours outside
//! the move under 1 ms for ADD and DEL, and a ratio of at most 1.0.

use serde_json::{json, Value};
use sriov::netlink::{NetlinkSocket, Netns};
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const CNI_PATH: &str = "/usr/lib/cni";
/// Our plugin's node-local settings file (the lab's sysfs, the benchmark's state folder).
static NODE_CONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn rounds() -> usize {
    std::env::var("CNI_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn ms(d: f64) -> f64 {
    d * 1e3
}

/// Sorted samples in seconds (signed: differences may be negative).
struct Samples(Vec<f64>);

impl Samples {
    fn new(mut v: Vec<f64>) -> Samples {
        v.sort_by(f64::total_cmp);
        Samples(v)
    }
    fn p(&self, q: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * q).round() as usize]
    }
    fn median(&self) -> f64 {
        self.p(0.5)
    }
    /// `median (p10-p90), p99` in ms.
    fn show(&self) -> String {
        format!(
            "{:.3} ms ({:.3}-{:.3}), p99 {:.3}",
            ms(self.median()),
            ms(self.p(0.1)),
            ms(self.p(0.9)),
            ms(self.p(0.99))
        )
    }
    /// `median (p10-p90)` of a ratio.
    fn show_ratio(&self) -> String {
        format!(
            "{:.3} ({:.3}-{:.3})",
            self.median(),
            self.p(0.1),
            self.p(0.9)
        )
    }
}

/// One plugin call: how long it took, exec to exit, and the kernel's netns moves within it
/// (reported by our plugin; `None` for host-device).
struct Call {
    took: f64,
    moves: Option<f64>,
    /// The time our plugin spent in `main` (the rest is exec, loading and exit).
    in_main: Option<f64>,
}

/// Runs one plugin call.
fn call(bin: &Path, cmd: &str, cid: &str, netns: &str, conf: &[u8]) -> Call {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "net1")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", CNI_PATH)
        .env("CNI_ARGS", "")
        .env("SRIOV_CNI_TIMINGS", "1")
        .env(
            "SRIOV_CNI_NODE_CONFIG",
            NODE_CONFIG.get().expect("node config written"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child.stdin.take().unwrap().write_all(conf).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{} {cmd} failed: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reported = |key: &str| {
        stderr
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(|us| us.parse::<f64>().expect(key) / 1e6)
    };
    Call {
        took,
        moves: reported("netns_move_us"),
        in_main: reported("main_us"),
    }
}

/// The kernel's move of a netdev into a namespace and back, measured through the same netlink
/// request the plugins make; returns the move in.
struct Mover {
    host: NetlinkSocket,
    host_ns: Netns,
    pod_ns: Netns,
    in_pod: NetlinkSocket,
    ifname: String,
}

impl Mover {
    fn new(ifname: &str, pod: &str) -> Mover {
        let pod_ns = Netns::open(pod).unwrap();
        Mover {
            host: NetlinkSocket::new().unwrap(),
            host_ns: Netns::current().unwrap(),
            in_pod: NetlinkSocket::new_in(&pod_ns).unwrap(),
            pod_ns,
            ifname: ifname.to_string(),
        }
    }

    /// The move in, named as both plugins name it in the pod (the kernel renames it as part of
    /// the move; host-device renames in a request of its own).
    fn once(&mut self) -> f64 {
        let index = self.host.link_by_name(&self.ifname).unwrap().index;
        let start = Instant::now();
        self.host
            .move_to_netns_as(index, &self.pod_ns, "net1")
            .unwrap();
        let took = start.elapsed().as_secs_f64();
        let index = self.in_pod.link_by_name("net1").unwrap().index;
        self.in_pod
            .move_to_netns_as(index, &self.host_ns, &self.ifname)
            .unwrap();
        took
    }
}

/// What one scenario measured, per round.
#[derive(Default)]
struct Rounds {
    ours_add: Vec<f64>,
    ours_del: Vec<f64>,
    /// Our calls minus the moves within them.
    ours_add_outside: Vec<f64>,
    ours_del_outside: Vec<f64>,
    /// Our calls minus their time in `main`: exec, loading, exit.
    ours_process: Vec<f64>,
    theirs_add: Vec<f64>,
    theirs_del: Vec<f64>,
    moves: Vec<f64>,
}

fn scenario(
    label: &str,
    ours: (&Path, Value),
    theirs: (&Path, Value),
    pods: (&str, &str),
    mover: &mut Mover,
) -> (f64, f64, f64, f64) {
    let (ours_conf, theirs_conf) = (
        ours.1.to_string().into_bytes(),
        theirs.1.to_string().into_bytes(),
    );
    let n = rounds();
    let mut r = Rounds::default();
    for i in 0..n + 20 {
        let cid = format!("bench{i}");
        // Which plugin goes first alternates: the call right after a move pays more of the
        // kernel's deferred work, so a fixed order would favour one of them.
        let pair = |command: &str| {
            let our_call = || call(ours.0, command, &cid, pods.0, &ours_conf);
            let their_call = || call(theirs.0, command, &cid, pods.1, &theirs_conf).took;
            if i % 2 == 0 {
                let a = our_call();
                (a, their_call())
            } else {
                let b = their_call();
                (our_call(), b)
            }
        };
        let (add, their_add) = pair("ADD");
        let moved = mover.once();
        let (del, their_del) = pair("DEL");
        // The first rounds warm caches (page cache, dentries) for both.
        if i >= 20 {
            let outside = |c: &Call| c.took - c.moves.expect("the plugin reports its moves");
            r.ours_add_outside.push(outside(&add));
            r.ours_del_outside.push(outside(&del));
            for c in [&add, &del] {
                r.ours_process
                    .push(c.took - c.in_main.expect("the plugin reports its time in main"));
            }
            r.ours_add.push(add.took);
            r.theirs_add.push(their_add);
            r.moves.push(moved);
            r.ours_del.push(del.took);
            r.theirs_del.push(their_del);
        }
    }
    let per_round = |a: &[f64], b: &[f64], f: fn(f64, f64) -> f64| {
        Samples::new(a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect())
    };
    let (oa, od) = (
        Samples::new(r.ours_add.clone()),
        Samples::new(r.ours_del.clone()),
    );
    let (ta, td) = (
        Samples::new(r.theirs_add.clone()),
        Samples::new(r.theirs_del.clone()),
    );
    let mv = Samples::new(r.moves.clone());
    let add_ratio = per_round(&r.ours_add, &r.theirs_add, |a, b| a / b);
    let del_ratio = per_round(&r.ours_del, &r.theirs_del, |a, b| a / b);
    let add_outside = Samples::new(r.ours_add_outside.clone());
    let del_outside = Samples::new(r.ours_del_outside.clone());
    let their_add_outside = per_round(&r.theirs_add, &r.moves, |a, b| a - b);
    let their_del_outside = per_round(&r.theirs_del, &r.moves, |a, b| a - b);
    println!("cni {label}: {n} interleaved rounds, exec to exit; median (p10-p90), p99");
    println!("  sriov        ADD {} | DEL {}", oa.show(), od.show());
    println!("  host-device  ADD {} | DEL {}", ta.show(), td.show());
    println!("  netns move alone {}", mv.show());
    println!(
        "  ratio sriov/host-device: ADD {:.3} (medians), {} (per round); DEL {:.3} (medians), {} (per round)",
        oa.median() / ta.median(),
        add_ratio.show_ratio(),
        od.median() / td.median(),
        del_ratio.show_ratio()
    );
    println!(
        "  outside the move: sriov ADD {} | DEL {} (exact); host-device ADD {} | DEL {} (estimated)",
        add_outside.show(),
        del_outside.show(),
        their_add_outside.show(),
        their_del_outside.show()
    );
    println!(
        "  of ours outside the move, exec + loading + exit (not in main): {}",
        Samples::new(r.ours_process.clone()).show()
    );
    (
        add_ratio.median(),
        del_ratio.median(),
        add_outside.median(),
        del_outside.median(),
    )
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the CNI benchmark needs root"
    );
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-cni-test-deps.sh");
    assert!(
        Command::new(&deps).status().unwrap().success(),
        "{}",
        deps.display()
    );
    // The plugin as the image ships it (static), like Debian's statically linked Go plugins; or
    // another build (or a wrapper that profiles it) named by `SRIOV_CNI_BENCH_BINARY`.
    let ours = match std::env::var_os("SRIOV_CNI_BENCH_BINARY") {
        Some(path) => PathBuf::from(path),
        None => sriov_e2e::image_binary("sriov").unwrap_or_else(|e| panic!("{e}")),
    };
    let host_device = PathBuf::from(CNI_PATH).join("host-device");
    let node =
        SimNode::up(&SimSpec::new(unique_name("bench-cni")).pfs(1).vfs(4).vfio(1)).expect("lab up");
    let pod_a = format!("/var/run/netns/{}", node.create_pod_netns("a").unwrap());
    let pod_b = format!("/var/run/netns/{}", node.create_pod_netns("b").unwrap());
    let pod_c = format!("/var/run/netns/{}", node.create_pod_netns("c").unwrap());
    let state = tempfile::tempdir().unwrap();
    let ipam_dir = tempfile::tempdir().unwrap();
    let settings = state.path().join("cni.json");
    // The records in memory, as on a node (the default stateDir is under /run, a tmpfs): the
    // lab's own folder is one.
    let records = node.sysfs_root().parent().unwrap().join("bench-cni-state");
    std::fs::write(
        &settings,
        json!({"sysfsRoot": node.sysfs_root(), "stateDir": records, "logDir": state.path()})
            .to_string(),
    )
    .unwrap();
    NODE_CONFIG.set(settings).unwrap();
    // Both plugins run where the node's netdevs are.
    let node_ns = std::fs::File::open(node.netns_path()).unwrap();
    nix::sched::setns(&node_ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter the node netns");
    let mut mover = Mover::new(&sriov_e2e::sim::vf_netdev(0, 2), &pod_c);

    // The floor: a VERSION call does no work, so it is exec, loading and exit alone. Measured
    // twice for our plugin: as is, and right after the kernel moved a netdev into a pod and
    // back, as every ADD and DEL runs (the work the kernel defers past a move, RCU callbacks
    // and workqueue items, lands on whatever runs next on this 2-core machine).
    let version = br#"{"cniVersion": "1.0.0"}"#;
    let (mut ours_v, mut theirs_v, mut after_move) = (vec![], vec![], vec![]);
    for i in 0..rounds() {
        ours_v.push(call(&ours, "VERSION", &format!("v{i}"), &pod_a, version).took);
        theirs_v.push(call(&host_device, "VERSION", &format!("v{i}"), &pod_b, version).took);
        mover.once();
        after_move.push(call(&ours, "VERSION", &format!("m{i}"), &pod_a, version).took);
    }
    let after_move = Samples::new(after_move);
    println!(
        "cni VERSION (exec to exit, no work): sriov {} | host-device {}",
        Samples::new(ours_v).show(),
        Samples::new(theirs_v).show()
    );
    println!(
        "cni VERSION right after a netns move and back: sriov {}",
        after_move.show()
    );

    let ours_conf = |ipam: Option<Value>| {
        let mut c = json!({"cniVersion": "1.0.0", "name": "bench", "type": "sriov",
            "deviceID": sriov_e2e::sim::vf_pci(0, 0), "logLevel": "error"});
        if let Some(i) = ipam {
            c["ipam"] = i;
        }
        c
    };
    let theirs_conf = |ipam: Option<Value>| {
        let mut c = json!({"cniVersion": "1.0.0", "name": "bench-hd", "type": "host-device",
            "device": sriov_e2e::sim::vf_netdev(0, 1)});
        if let Some(i) = ipam {
            c["ipam"] = i;
        }
        c
    };
    let ipam = |net: &str| json!({"type": "host-local", "subnet": net, "dataDir": ipam_dir.path()});
    let (add_ratio, del_ratio, add_out, del_out) = scenario(
        "without IPAM",
        (&ours, ours_conf(None)),
        (&host_device, theirs_conf(None)),
        (&pod_a, &pod_b),
        &mut mover,
    );
    scenario(
        "with host-local IPAM",
        (&ours, ours_conf(Some(ipam("10.201.0.0/24")))),
        (&host_device, theirs_conf(Some(ipam("10.202.0.0/24")))),
        (&pod_a, &pod_b),
        &mut mover,
    );
    let met = add_out < 1e-3 && del_out < 1e-3 && add_ratio <= 1.0 && del_ratio <= 1.0;
    println!(
        "target (without IPAM: outside the move < 1 ms for ADD and DEL, ratio <= 1.0): ADD {:.3} ms, DEL {:.3} ms outside the move; ratio ADD {add_ratio:.3}, DEL {del_ratio:.3} (medians of per-round ratios): {}",
        ms(add_out),
        ms(del_out),
        if met { "met" } else { "NOT met" }
    );
    let floor = after_move.median();
    println!(
        "  of which the exec-to-exit floor right after a move (VERSION): {:.3} ms; our work beyond it: ADD {:.3} ms, DEL {:.3} ms",
        ms(floor),
        ms(add_out - floor),
        ms(del_out - floor)
    );
    // Everything but the kernel's move: a VF bound to vfio-pci gets the whole ADD (lock, state
    // saved, sysfs, netlink reads, result) without a netdev to move.
    let mut dpdk = ours_conf(None);
    dpdk["deviceID"] = json!(sriov_e2e::sim::vf_pci(0, 3));
    let dpdk = dpdk.to_string().into_bytes();
    let (mut add, mut del) = (vec![], vec![]);
    for i in 0..rounds() {
        let cid = format!("dpdk{i}");
        add.push(call(&ours, "ADD", &cid, &pod_a, &dpdk).took);
        del.push(call(&ours, "DEL", &cid, &pod_a, &dpdk).took);
    }
    println!(
        "cni sriov on a vfio-pci VF (no netdev move): ADD {} | DEL {}",
        Samples::new(add).show(),
        Samples::new(del).show()
    );
}
