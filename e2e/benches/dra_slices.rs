//! ResourceSlice publication for 1,024 devices (a simulated node of 8 PFs x 128 VFs, a real
//! sysfs tree) against the in-test API server, through the real kube client.
//!
//! `cargo bench -p sriov-e2e --bench dra_slices` (root). Prints, as median and p99 of repeated
//! runs: building the DRA devices from discovery and pools; the first publication (a list, the
//! Node read, 8 creates); a change (one device unhealthy with taints: 16 slices of 64 rewritten
//! at the next generation); a publisher restart that finds everything current (one list); an
//! unchanged republish (no request); and the bytes of the slices as stored.

use serde_json::json;
use sriov::config::Config;
use sriov::discovery::{DiscoveryOptions, Node};
use sriov::health::{Health, Unhealthy};
use sriov::sysfs::Sysfs;
use sriov_e2e::apiserver::{ApiServer, Resource};
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use sriov_node_state::dra::{build_devices, DraDevices, DraOptions, PfTopology};
use sriov_node_state::slice_publisher::SlicePublisher;
use sriov_node_state::PublisherConfig;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const RUNS: usize = 20;
const NODE: &str = "worker-1";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(label: &str, mut times: Vec<Duration>, requests: usize) {
    times.sort();
    println!(
        "dra slices, 1,024 devices: {label}: median {:.2} ms, p99 {:.2} ms ({requests} requests)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
}

fn main() {
    let sim = SimNode::up(
        &SimSpec::new(unique_name("benchdra"))
            .pfs(8)
            .vfs(128)
            .links(false),
    )
    .expect("lab up");
    let config = Config::parse(
        r#"{"resourceList": [{"resourceName": "sriov_net", "selectors": {"drivers": ["iavf"]}}]}"#,
        "intel.com",
    )
    .expect("config");
    let node = Node::discover(&Sysfs::new(sim.sysfs_root()), &DiscoveryOptions::default())
        .expect("discover");
    let pools = sriov::pools::assign(&config, &node, "intel.com", &[]);
    let opts = DraOptions {
        taints: true,
        ..Default::default()
    };
    let sick = node
        .devices
        .iter()
        .find(|d| !d.vfs.is_empty())
        .expect("a PF")
        .vfs[0]
        .pci;
    let unhealthy = BTreeMap::from([(
        sick,
        Health::Unhealthy(Unhealthy::PfDown {
            pf: "ens1f0".into(),
        }),
    )]);

    let mut build = vec![];
    let mut healthy = DraDevices::default();
    for _ in 0..RUNS {
        let t = Instant::now();
        healthy = build_devices(
            &node,
            &pools,
            &BTreeMap::new(),
            &PfTopology::default(),
            &opts,
        );
        build.push(t.elapsed());
    }
    assert_eq!(healthy.devices.len(), 1024);
    report("build devices (no I/O)", build, 0);
    let sick_devices = build_devices(&node, &pools, &unhealthy, &PfTopology::default(), &opts);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut first, mut change, mut restart, mut unchanged) = (vec![], vec![], vec![], vec![]);
        let (mut n_first, mut n_change, mut n_restart) = (0, 0, 0);
        let mut bytes = 0;
        for _ in 0..RUNS {
            let api = ApiServer::start().await.expect("api");
            api.insert(Resource::Nodes, json!({"metadata": {"name": NODE}}));
            let mut p = SlicePublisher::new(api.client(), PublisherConfig::new(NODE));
            let t = Instant::now();
            n_first = p.publish(&healthy).await.expect("first");
            first.push(t.elapsed());
            let t = Instant::now();
            n_change = p.publish(&sick_devices).await.expect("change");
            change.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(p.publish(&sick_devices).await.expect("same"), 0);
            unchanged.push(t.elapsed());
            let mut fresh = SlicePublisher::new(api.client(), PublisherConfig::new(NODE));
            let t = Instant::now();
            n_restart = fresh.publish(&sick_devices).await.expect("restart");
            restart.push(t.elapsed());
            bytes = api
                .objects(Resource::ResourceSlices)
                .iter()
                .map(|s| s.to_string().len())
                .sum();
        }
        report("first publication", first, n_first);
        report(
            "one device unhealthy (taint, all slices at the next generation)",
            change,
            n_change,
        );
        report("publisher restart, slices current", restart, n_restart);
        report("unchanged republish", unchanged, 0);
        println!(
            "dra slices, 1,024 devices: {} KiB of ResourceSlices stored (16 slices of 64)",
            bytes / 1024
        );
    });
}
