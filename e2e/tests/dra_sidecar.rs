//! The hand-over the daemon's DRA mode will use: a DRA devices file written atomically on the
//! node (as the daemon will write it), followed by the real `sriov-node-state` sidecar, which
//! keeps the node's ResourceSlices in the in-test API server matching it.

use serde_json::json;
use sriov_e2e::apiserver::{ApiServer, Resource};
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use sriov_node_state::dra::{DraDevices, DEFAULT_DRIVER};
use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

const NODE: &str = "worker-1";

fn devices(sim: &SimNode) -> DraDevices {
    sriov_e2e::dra::sim_devices(sim, false, &BTreeMap::new())
}

/// The sidecar process, killed when dropped.
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (device count, generation) of each of the node's slices.
fn slices(api: &ApiServer) -> Vec<(usize, i64)> {
    api.objects(Resource::ResourceSlices)
        .iter()
        .map(|s| {
            (
                s["spec"]["devices"].as_array().map_or(0, Vec::len),
                s["spec"]["pool"]["generation"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn wait_slices(api: &ApiServer, want: &[(usize, i64)], log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while slices(api) != want {
        assert!(
            Instant::now() < deadline,
            "slices {:?}, want {want:?}\nsidecar log:\n{}",
            slices(api),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_sidecar_publishes_the_dra_devices_file() {
    let mut sim = SimNode::up(
        &SimSpec::new(unique_name("drasc"))
            .pfs(2)
            .vfs(100)
            .links(false),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(ApiServer::start()).unwrap();
    api.insert(Resource::Nodes, json!({"metadata": {"name": NODE}}));
    let tmp = tempfile::tempdir().unwrap();
    let addr = api.url().trim_start_matches("http://").parse().unwrap();
    let kubeconfig = sriov_e2e::local::write_kubeconfig(tmp.path(), addr);
    let file = tmp.path().join("dra-devices.json");
    let log = tmp.path().join("sidecar.log");

    // The sidecar starts before the daemon's first write (the usual order).
    let _sidecar = Sidecar(
        sriov_e2e::local::sidecar_command(
            &sriov_e2e::workspace_binary("sriov-node-state"),
            &tmp.path().join("node-state.json"),
            &kubeconfig,
            NODE,
            std::fs::File::create(&log).unwrap(),
        )
        .arg("--dra-devices-file")
        .arg(&file)
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(slices(&api).is_empty());

    // 200 devices: two slices of 128 and 72.
    sriov_node_state::status_file::write_json(&file, &devices(&sim), "DRA devices file").unwrap();
    wait_slices(&api, &[(128, 1), (72, 1)], &log);
    let first = api.objects(Resource::ResourceSlices);
    assert_eq!(
        first[0]["metadata"]["name"],
        format!("{NODE}-{DEFAULT_DRIVER}-0")
    );
    assert_eq!(first[0]["spec"]["nodeName"], NODE);

    // The VF count of one PF changes: the daemon rewrites the file, the sidecar republishes.
    let pf = sim.description().pfs[1].netdev.clone();
    sim.set_vfs(&pf, 0).unwrap();
    sriov_node_state::status_file::write_json(&file, &devices(&sim), "DRA devices file").unwrap();
    wait_slices(&api, &[(100, 2)], &log);

    // Garbage in the file: the last good state stays published, and the sidecar keeps going.
    std::fs::write(&file, "{").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(slices(&api), [(100, 2)]);
    sim.set_vfs(&pf, 10).unwrap();
    sriov_node_state::status_file::write_json(&file, &devices(&sim), "DRA devices file").unwrap();
    wait_slices(&api, &[(110, 3)], &log);
    drop(rt);
}
