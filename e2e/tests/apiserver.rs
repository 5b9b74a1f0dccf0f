//! The in-test API server through the real kube client: what a driver does with ResourceSlices
//! and ResourceClaims, and the errors the real server gives (the Status bodies kube-rs parses).

use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sriov_e2e::apiserver::{ApiServer, Resource};

fn slice(name: &str, node: &str, devices: usize) -> ResourceSlice {
    let devices: Vec<_> = (0..devices)
        .map(|i| json!({"name": format!("d{i}"), "attributes": {"x.io/a": {"int": i}}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": name, "labels": {"app": "test", "node": node}},
        "spec": {"driver": "x.io", "nodeName": node,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": devices}}))
    .unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn resource_slices_like_the_api_server() {
    let server = ApiServer::start().await.unwrap();
    let slices: Api<ResourceSlice> = Api::all(server.client());
    let pp = PostParams::default();

    let a = slices.create(&pp, &slice("a", "n1", 2)).await.unwrap();
    let rv_a = a.metadata.resource_version.clone().unwrap();
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    assert_eq!(a.metadata.generation, Some(1));
    slices.create(&pp, &slice("b", "n2", 1)).await.unwrap();
    let e = api_error(slices.create(&pp, &slice("a", "n1", 1)).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        e.message,
        "resourceslices.resource.k8s.io \"a\" already exists"
    );

    // Field and label selectors.
    let on_n1 = slices
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(on_n1.items.len(), 1);
    assert_eq!(on_n1.items[0].metadata.name.as_deref(), Some("a"));
    let by_label = slices
        .list(&ListParams::default().labels("app=test,node!=n1"))
        .await
        .unwrap();
    assert_eq!(by_label.items.len(), 1);
    let e = api_error(
        slices
            .list(&ListParams::default().fields("spec.foo=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "field label not supported: spec.foo")
    );

    // Update: the current resourceVersion wins, a stale one is 409 Conflict.
    let mut a2 = a.clone();
    a2.spec.pool.generation = 2;
    let a2 = slices.replace("a", &pp, &a2).await.unwrap();
    assert_ne!(a2.metadata.resource_version.as_deref(), Some(rv_a.as_str()));
    assert_eq!(a2.metadata.generation, Some(2), "spec changed");
    let e = api_error(slices.replace("a", &pp, &a).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("the object has been modified"),
        "{}",
        e.message
    );

    // Validation: 422 with causes; immutable fields.
    let e = api_error(
        slices
            .create(&pp, &slice("big", "n1", 129))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "ResourceSlice.resource.k8s.io \"big\" is invalid: spec.devices: Too many: 129: must have at most 128 items"
    );
    let mut moved = a2.clone();
    moved.spec.node_name = Some("n9".into());
    let e = api_error(slices.replace("a", &pp, &moved).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.nodeName: field is immutable"),
        "{}",
        e.message
    );

    // Server-side apply: creates, needs a field manager.
    let applied = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": "c"}, "spec": {"driver": "x.io", "nodeName": "n1",
        "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1}, "devices": []}});
    let c = slices
        .patch("c", &PatchParams::apply("me"), &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(c.spec.node_name.as_deref(), Some("n1"));
    let log = server.take_requests();
    let last = log.last().unwrap();
    assert_eq!(
        (
            last.content_type.as_str(),
            last.query["fieldManager"].as_str()
        ),
        ("application/apply-patch+yaml", "me")
    );

    // 404 NotFound, deletes and deletecollection.
    let e = api_error(slices.get("nope").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        e.message,
        "resourceslices.resource.k8s.io \"nope\" not found"
    );
    slices.delete("b", &DeleteParams::default()).await.unwrap();
    assert!(server.get(Resource::ResourceSlices, "", "b").is_none());
    slices
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().fields("spec.nodeName=n1"),
        )
        .await
        .unwrap();
    assert!(server.objects(Resource::ResourceSlices).is_empty());
}

#[tokio::test]
async fn resource_claims_and_their_status() {
    let server = ApiServer::start().await.unwrap();
    let claims: Api<ResourceClaim> = Api::namespaced(server.client(), "ns1");
    let claim: ResourceClaim = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "vf", "namespace": "ns1"},
        "spec": {"devices": {"requests": [{"name": "vf", "exactly": {"deviceClassName": "sriov"}}]}},
        "status": {"reservedFor": [{"resource": "pods", "name": "ignored", "uid": "1"}]}}))
    .unwrap();
    let created = claims.create(&PostParams::default(), &claim).await.unwrap();
    assert!(created.status.is_none(), "status is not written on create");
    assert!(server.get(Resource::ResourceClaims, "ns1", "vf").is_some());

    // The scheduler allocates (a status update); the main resource ignores status.
    let mut allocated = created.clone();
    allocated.status = serde_json::from_value(json!({"allocation": {"devices": {"results": [
        {"request": "vf", "driver": "x.io", "pool": "n1", "device": "0000-3b-02-0"}]}}}))
    .unwrap();
    let ignored = claims
        .replace("vf", &PostParams::default(), &allocated)
        .await
        .unwrap();
    assert!(ignored.status.is_none());
    allocated.metadata.resource_version = ignored.metadata.resource_version.clone();
    let with_status = claims
        .replace_status("vf", &PostParams::default(), &allocated)
        .await
        .unwrap();
    assert_eq!(
        with_status
            .status
            .as_ref()
            .unwrap()
            .allocation
            .as_ref()
            .unwrap()
            .devices
            .as_ref()
            .unwrap()
            .results
            .as_ref()
            .unwrap()[0]
            .device,
        "0000-3b-02-0"
    );

    // Two drivers apply their own status.devices entries: both stay (merged by key).
    for (manager, device) in [("x.io", "0000-3b-02-0"), ("y.io", "gpu-0")] {
        let status = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "vf", "namespace": "ns1"},
            "status": {"devices": [{"driver": manager, "pool": "n1", "device": device,
                                    "networkData": {"interfaceName": "net1"}}]}});
        claims
            .patch_status("vf", &PatchParams::apply(manager), &Patch::Apply(&status))
            .await
            .unwrap();
    }
    let got = claims.get("vf").await.unwrap();
    let devices = got.status.unwrap().devices.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(got.metadata.resource_version.is_some());
    // A stale resourceVersion on the status: 409.
    let e = api_error(
        claims
            .replace_status("vf", &PostParams::default(), &allocated)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    // The status of a missing claim: 404, and apply does not create through a subresource.
    let e = api_error(
        claims
            .patch_status(
                "nope",
                &PatchParams::apply("x.io"),
                &Patch::Apply(&json!({"status": {}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    // Other namespaces do not see it; a cluster-wide list does.
    let other: Api<ResourceClaim> = Api::namespaced(server.client(), "ns2");
    assert!(other
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let all: Api<ResourceClaim> = Api::all(server.client());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}
