//! Discovery + pool selection on a simulated node of 8 PFs x 128 VFs (1,024 VFs).
//!
//! `cargo bench -p sriov-e2e --bench discovery` (root). Prints the median and p99 of repeated
//! runs and how many sysfs files one run reads. Target: under 20 ms.

use sriov::config::Config;
use sriov::discovery::Node;
use sriov::pools;
use sriov::sysfs::Sysfs;
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use std::time::{Duration, Instant};

const RUNS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench(label: &str, links: bool, accel: bool) {
    let spec = SimSpec::new(unique_name("bench"))
        .pfs(8)
        .vfs(128)
        .total_vfs(128)
        .vfio(8)
        .accel_vfs(if accel { 16 } else { 0 })
        .links(links);
    let built = Instant::now();
    let node = SimNode::up(&spec).expect("lab up");
    let build_time = built.elapsed();
    let accel_pool = if accel {
        r#"{"resourceName": "fec", "deviceType": "accelerator", "selectors": {"devices": ["0d5d"]}},"#
    } else {
        ""
    };
    let config = Config::parse(
        &format!(
            r#"{{"resourceList": [{accel_pool}
            {{"resourceName": "dpdk", "selectors": {{"drivers": ["vfio-pci"]}}}},
            {{"resourceName": "low", "selectors": {{"pfNames": ["ens1f0#0-63", "ens2f0#0-63"]}}}},
            {{"resourceName": "kernel", "selectors": {{"vendors": ["8086"], "drivers": ["iavf"]}}}}
        ]}}"#
        ),
        "intel.com",
    )
    .expect("config");
    let opts = pools::discovery_options(&config);
    let mut times = Vec::with_capacity(RUNS);
    let mut files = 0;
    let mut devices = 0;
    for _ in 0..RUNS {
        let sysfs = Sysfs::new(node.sysfs_root());
        let start = Instant::now();
        let found = Node::discover(&sysfs, &opts).expect("discover");
        let assigned = pools::assign(&config, &found, "intel.com", &[]);
        times.push(start.elapsed());
        files = sysfs.reads();
        devices = assigned
            .pools
            .iter()
            .map(|p| p.devices.len())
            .sum::<usize>();
        assert_eq!(found.vfs().count(), 1024);
        assert_eq!(found.accelerators.len(), if accel { 17 } else { 0 });
    }
    times.sort();
    println!(
        "discovery+pools {label}: 8 PFs x 128 VFs, {devices} pooled: median {:.2} ms, p99 {:.2} ms, \
         {files} sysfs reads per run (lab built in {:.1} s)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        build_time.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass other flags: run once anyway.
    bench("(veth-backed, live sysfs)", true, false);
    bench("(static tree)", false, false);
    // An accelerator pool makes discovery read the class of every other PCI function too.
    bench(
        "(static tree, plus an accelerator pool and a 16-VF ACC100)",
        false,
        true,
    );
}
