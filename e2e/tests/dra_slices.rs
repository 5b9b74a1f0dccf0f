//! The node's ResourceSlices as the cluster gets them: a simulated node (8 PFs x 128 VFs, a real
//! sysfs tree) is discovered and pooled, its DRA devices built, and the slice publisher keeps
//! the in-test API server's ResourceSlices matching, through every change: first publication,
//! nothing to do, a VF count change, a health change with taints, a cluster without taints, a
//! concurrent writer (409), stale slices of the node, and the node losing its devices.

use serde_json::{json, Value};
use sriov::discovery::{DiscoveryOptions, Node};
use sriov::health::{Health, Unhealthy};
use sriov::sysfs::Sysfs;
use sriov_e2e::apiserver::{ApiServer, LoggedRequest, Resource};
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use sriov_node_state::dra::{DraDevices, DEFAULT_DRIVER};
use sriov_node_state::slice_publisher::SlicePublisher;
use sriov_node_state::PublisherConfig;
use std::collections::BTreeMap;

const NODE: &str = "worker-1";

fn devices(
    sim: &SimNode,
    taints: bool,
    health: &BTreeMap<sriov::names::PciAddress, Health>,
) -> DraDevices {
    sriov_e2e::dra::sim_devices(sim, taints, health)
}

async fn api() -> ApiServer {
    let api = ApiServer::start().await.unwrap();
    api.insert(Resource::Nodes, json!({"metadata": {"name": NODE}}));
    // Another driver's slice on the same node and our driver's slice on another node: never ours.
    for (name, node, driver) in [
        ("other-gpu", NODE, "gpu.example.com"),
        ("w2", "worker-2", DEFAULT_DRIVER),
    ] {
        api.insert(
            Resource::ResourceSlices,
            json!({"metadata": {"name": name}, "spec": {"driver": driver, "nodeName": node,
                   "pool": {"name": node, "generation": 3, "resourceSliceCount": 1}, "devices": []}}),
        );
    }
    api
}

fn ours(api: &ApiServer) -> Vec<Value> {
    api.objects(Resource::ResourceSlices)
        .into_iter()
        .filter(|s| s["spec"]["nodeName"] == NODE && s["spec"]["driver"] == DEFAULT_DRIVER)
        .collect()
}

fn summary(requests: &[LoggedRequest]) -> Vec<(String, u16)> {
    requests
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect()
}

/// Slices are complete and consistent: one generation, the right count, every device once.
fn assert_pool(api: &ApiServer, want_devices: usize, per_slice: usize) -> i64 {
    let slices = ours(api);
    let gens: Vec<i64> = slices
        .iter()
        .map(|s| s["spec"]["pool"]["generation"].as_i64().unwrap())
        .collect();
    assert!(gens.windows(2).all(|w| w[0] == w[1]), "{gens:?}");
    let count = want_devices.div_ceil(per_slice);
    assert_eq!(slices.len(), count);
    let mut names = vec![];
    for s in &slices {
        assert_eq!(s["spec"]["pool"]["resourceSliceCount"], count);
        assert_eq!(s["spec"]["pool"]["name"], NODE);
        assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Node");
        let devs = s["spec"]["devices"].as_array().unwrap();
        assert!(devs.len() <= per_slice);
        names.extend(devs.iter().map(|d| d["name"].as_str().unwrap().to_string()));
    }
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(
        (n, names.len()),
        (want_devices, want_devices),
        "each device once"
    );
    gens[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_follow_the_node_through_every_change() {
    let mut sim = SimNode::up(
        &SimSpec::new(unique_name("dra"))
            .pfs(8)
            .vfs(128)
            .links(false),
    )
    .unwrap();
    let api = api().await;
    let mut publisher = SlicePublisher::new(api.client(), PublisherConfig::new(NODE));

    // First publication: 1,024 devices in 8 slices of 128, generation 1.
    let d = devices(&sim, false, &BTreeMap::new());
    assert_eq!(d.devices.len(), 1024);
    let n = publisher.publish(&d).await.unwrap();
    let r = api.take_requests();
    assert_eq!(n, r.len());
    // list, get node (owner), 8 creates
    assert_eq!(summary(&r)[..2], [("GET".into(), 200), ("GET".into(), 200)]);
    assert_eq!(
        r[0].query["fieldSelector"],
        format!("spec.nodeName={NODE},spec.driver={DEFAULT_DRIVER}")
    );
    assert_eq!(
        r.iter()
            .filter(|r| r.method == "POST" && r.status == 201)
            .count(),
        8
    );
    assert_eq!(assert_pool(&api, 1024, 128), 1);
    let first = &ours(&api)[0];
    assert_eq!(
        first["metadata"]["name"],
        format!("{NODE}-{DEFAULT_DRIVER}-0")
    );
    assert_eq!(
        first["spec"]["devices"][0]["attributes"]["k8s.cni.cncf.io/resourceName"],
        json!({"string": "intel.com/sriov_net"})
    );

    // The same devices again: nothing sent.
    assert_eq!(publisher.publish(&d).await.unwrap(), 0);
    assert!(api.take_requests().is_empty());
    // A new publisher (a sidecar restart) finds the slices current: one list, nothing written.
    let mut restarted = SlicePublisher::new(api.client(), PublisherConfig::new(NODE));
    assert_eq!(restarted.publish(&d).await.unwrap(), 1);
    assert_eq!(summary(&api.take_requests()), [("GET".into(), 200)]);

    // A VF count change: PF 0 goes from 128 to 64 VFs. 960 devices: 8 slices at generation 2,
    // all updated (PUT with the listed resourceVersion).
    let pf0 = sim.description().pfs[0].netdev.clone();
    // Through 0, as the kernel requires.
    sim.set_vfs(&pf0, 0).unwrap();
    sim.set_vfs(&pf0, 64).unwrap();
    let d = devices(&sim, false, &BTreeMap::new());
    assert_eq!(d.devices.len(), 960);
    publisher.publish(&d).await.unwrap();
    let r = api.take_requests();
    assert_eq!(
        r.iter()
            .filter(|r| r.method == "PUT" && r.status == 200)
            .count(),
        8
    );
    assert!(r
        .iter()
        .filter(|r| r.method == "PUT")
        .all(|r| r.body["metadata"]["resourceVersion"].is_string()));
    assert_eq!(assert_pool(&api, 960, 128), 2);

    // Fewer devices: 3 PFs lose all their VFs, 576 devices need 5 slices; the other 3 go.
    for pf in &sim.description().pfs.clone()[5..] {
        sim.set_vfs(&pf.netdev, 0).unwrap();
    }
    let d = devices(&sim, false, &BTreeMap::new());
    assert_eq!(d.devices.len(), 576);
    publisher.publish(&d).await.unwrap();
    let r = api.take_requests();
    assert_eq!(
        r.iter()
            .filter(|r| r.method == "DELETE" && r.status == 200)
            .count(),
        3
    );
    assert_eq!(assert_pool(&api, 576, 128), 3);
    assert_eq!(
        api.objects(Resource::ResourceSlices).len(),
        5 + 2,
        "the others' slices stay"
    );

    // Taints on: slices of at most 64 devices, unhealthy devices tainted NoSchedule.
    let node = Node::discover(&Sysfs::new(sim.sysfs_root()), &DiscoveryOptions::default()).unwrap();
    let sick = node.device_by_name(&pf0).unwrap().vfs[0].pci;
    let health = BTreeMap::from([(
        sick,
        Health::Unhealthy(Unhealthy::PfDown { pf: pf0.clone() }),
    )]);
    let d = devices(&sim, true, &health);
    publisher.publish(&d).await.unwrap();
    api.take_requests();
    assert_eq!(assert_pool(&api, 576, 64), 4);
    let tainted: Vec<Value> = ours(&api)
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().unwrap().clone())
        .filter(|d| d.get("taints").is_some())
        .collect();
    assert_eq!(tainted.len(), 1);
    assert_eq!(
        tainted[0]["name"],
        sriov_node_state::dra::device_name(&sick)
    );
    assert_eq!(
        tainted[0]["taints"][0]["key"],
        format!("{DEFAULT_DRIVER}/unhealthy")
    );
    assert_eq!(tainted[0]["taints"][0]["value"], "PfDown");
    assert_eq!(tainted[0]["taints"][0]["effect"], "NoSchedule");
    assert!(
        tainted[0]["taints"][0]["timeAdded"].is_string(),
        "set by the server"
    );
    // Republished unchanged by a restarted sidecar: the server's timeAdded is kept, no write.
    let mut restarted = SlicePublisher::new(api.client(), PublisherConfig::new(NODE));
    assert_eq!(restarted.publish(&d).await.unwrap(), 1);
    api.take_requests();

    // The device is healthy again, but someone else writes our first slice between the
    // publisher's list and its update: 409, a fresh list, and the update goes through.
    api.race_next_updates(1);
    let d = devices(&sim, true, &BTreeMap::new());
    publisher.publish(&d).await.unwrap();
    let r = api.take_requests();
    let conflicts: Vec<_> = r.iter().filter(|r| r.status == 409).collect();
    assert_eq!(conflicts.len(), 1, "{:?}", summary(&r));
    assert_eq!(conflicts[0].method, "PUT");
    assert_eq!(
        r.iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("resourceslices"))
            .count(),
        2,
        "re-read after the conflict"
    );
    assert_eq!(assert_pool(&api, 576, 64), 5);
    assert!(ours(&api).iter().all(|s| s["spec"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d.get("taints").is_none())));

    // A cluster without DRADeviceTaints drops taints: the publisher notices, sends none and
    // cuts at 128 again.
    api.drop_device_taints(true);
    let mut plain = SlicePublisher::new(api.client(), PublisherConfig::new(NODE));
    let d = devices(&sim, true, &health);
    plain.publish(&d).await.unwrap();
    assert!(!plain.taints_served());
    // Generation 6 went out with taints (dropped by the server), 7 without them.
    assert_eq!(assert_pool(&api, 576, 128), 7);
    assert!(ours(&api).iter().all(|s| s["spec"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d.get("taints").is_none())));
    api.drop_device_taints(false);

    // No devices left: every slice of the node goes.
    let empty = DraDevices {
        driver: DEFAULT_DRIVER.into(),
        ..Default::default()
    };
    plain.publish(&empty).await.unwrap();
    assert!(ours(&api).is_empty());
    assert_eq!(api.objects(Resource::ResourceSlices).len(), 2);
}
