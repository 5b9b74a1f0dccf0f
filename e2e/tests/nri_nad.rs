//! `netAttachDefName` in the NRI attach, at the claim service: the real sidecar claim service
//! (`sriov_node_state::claim_service`) reading NetworkAttachmentDefinitions from the in-test
//! API server, the daemon's client asking it over the Unix socket, and the config the daemon
//! would give the CNI (the NAD's `spec.config` under the claim's `VfConfig`). The same code
//! path the NRI attach takes at RunPodSandbox, without containerd.

use serde_json::{json, Value};
use sriov::dra_claim::{ClaimRef, VfConfig};
use sriov::dra_record::PreparedDevice;
use sriov_device_plugin::dra::{claims, nri};
use sriov_e2e::apiserver::{ApiServer, Resource};
use std::path::{Path, PathBuf};

fn nad(namespace: &str, name: &str, config: Value) -> Value {
    json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": name, "namespace": namespace}, "spec": config})
}

fn claim(namespace: &str) -> ClaimRef {
    ClaimRef {
        namespace: namespace.into(),
        name: "c1".into(),
        uid: "0b5a7c1e-0000-4000-8000-000000000001".into(),
    }
}

fn device(config: VfConfig) -> PreparedDevice {
    PreparedDevice {
        request: "vf".into(),
        pool: "worker-1".into(),
        device: "0000-3b-02-1".into(),
        pci: "0000:3b:02.1".into(),
        resource_name: "intel.com/net".into(),
        original_driver: None,
        original_driver_override: None,
        config,
        cdi_device_id: String::new(),
    }
}

/// The API server with NADs, and the sidecar's claim service on a socket in `dir`.
async fn start(dir: &Path) -> (ApiServer, PathBuf) {
    let api = ApiServer::start().await.unwrap();
    let sriov_config = json!({"cniVersion": "1.0.0", "name": "net-a", "type": "sriov",
        "vlan": 100, "mtu": 9000, "spoofchk": "off", "deviceID": "0000:99:00.1",
        "ipam": {"type": "host-local", "subnet": "10.56.100.0/24", "rangeStart": "10.56.100.10"}});
    api.insert(
        Resource::NetworkAttachmentDefinitions,
        nad("apps", "net-a", json!({"config": sriov_config.to_string()})),
    );
    api.insert(
        Resource::NetworkAttachmentDefinitions,
        nad(
            "infra",
            "chain",
            json!({"config": json!({"cniVersion": "0.4.0", "name": "chain",
                "plugins": [{"type": "sriov", "trust": "on"}]}).to_string()}),
        ),
    );
    api.insert(
        Resource::NetworkAttachmentDefinitions,
        nad(
            "apps",
            "broken",
            json!({"config": "{\"type\": \"sriov\", "}),
        ),
    );
    api.insert(
        Resource::NetworkAttachmentDefinitions,
        nad(
            "apps",
            "macvlan",
            json!({"config": json!({"cniVersion": "1.0.0", "type": "macvlan"}).to_string()}),
        ),
    );
    api.insert(
        Resource::NetworkAttachmentDefinitions,
        nad("apps", "on-disk", json!({})),
    );
    api.insert(
        Resource::NetworkAttachmentDefinitions,
        nad(
            "apps",
            "huge",
            json!({"config": json!({"type": "sriov", "x": "a".repeat(70_000)}).to_string()}),
        ),
    );
    let socket = dir.join("claims.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(sriov_node_state::claim_service::serve(
        listener,
        api.client(),
    ));
    (api, socket)
}

#[tokio::test]
async fn the_claim_service_serves_a_nad_and_the_attach_config_is_the_nad_under_the_vf_config() {
    let dir = tempfile::tempdir().unwrap();
    let (api, socket) = start(dir.path()).await;

    // The sidecar returns the NAD's spec.config as stored.
    let raw = claims::fetch_nad(&socket, "apps", "net-a").await.unwrap();
    let raw: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["ipam"]["subnet"], "10.56.100.0/24");
    let got = api.take_requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].method.as_str(), got[0].path.as_str(), got[0].status),
        (
            "GET",
            "/apis/k8s.cni.cncf.io/v1/namespaces/apps/network-attachment-definitions/net-a",
            200
        )
    );

    // The NAD in the claim's namespace, the VfConfig over it: its vlan and mtu win, the NAD's
    // ipam, spoofchk and name stay, the VF is the claim's.
    let vf = VfConfig {
        net_attach_def_name: Some("net-a".into()),
        vlan: Some(20),
        mtu: Some(1500),
        mac: Some("02:00:00:00:00:07".into()),
        ..Default::default()
    };
    let conf = nri::attach_config(&socket, &claim("apps"), &device(vf.clone()))
        .await
        .unwrap();
    assert_eq!(
        conf,
        json!({"cniVersion": "1.0.0", "name": "net-a", "type": "sriov", "deviceID": "0000:3b:02.1",
               "vlan": 20, "mtu": 1500, "mac": "02:00:00:00:00:07", "spoofchk": "off",
               "ipam": {"type": "host-local", "subnet": "10.56.100.0/24", "rangeStart": "10.56.100.10"}})
    );
    // The VfConfig's ipam replaces the NAD's.
    let with_ipam = VfConfig {
        ipam: Some(json!({"type": "static", "addresses": [{"address": "10.9.0.5/24"}]})),
        ..vf.clone()
    };
    let conf = nri::attach_config(&socket, &claim("apps"), &device(with_ipam))
        .await
        .unwrap();
    assert_eq!(conf["ipam"]["type"], "static");

    // netAttachDefNamespace names another namespace; a conflist of just sriov.
    let other = VfConfig {
        net_attach_def_name: Some("chain".into()),
        net_attach_def_namespace: Some("infra".into()),
        ..Default::default()
    };
    let conf = nri::attach_config(&socket, &claim("apps"), &device(other))
        .await
        .unwrap();
    assert_eq!(
        conf,
        json!({"cniVersion": "0.4.0", "name": "chain", "type": "sriov", "trust": "on",
               "deviceID": "0000:3b:02.1"})
    );

    // Without a NAD, the VfConfig alone, and no request.
    api.take_requests();
    let conf = nri::attach_config(
        &socket,
        &claim("apps"),
        &device(VfConfig {
            vlan: Some(5),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(conf["name"], "sriov-dra");
    assert_eq!(conf["vlan"], 5);
    assert!(api.take_requests().is_empty());
}

#[tokio::test]
async fn a_missing_or_bad_nad_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (api, socket) = start(dir.path()).await;
    let named = |nad: &str| {
        device(VfConfig {
            net_attach_def_name: Some(nad.into()),
            ..Default::default()
        })
    };
    for (nad, why) in [
        ("nope", "NetworkAttachmentDefinition apps/nope not found"),
        (
            "broken",
            "NetworkAttachmentDefinition apps/broken: spec.config is not JSON",
        ),
        (
            "macvlan",
            "NetworkAttachmentDefinition apps/macvlan: its plugin type is \"macvlan\", not \"sriov\"",
        ),
        (
            "on-disk",
            "NetworkAttachmentDefinition apps/on-disk has no spec.config",
        ),
        (
            "huge",
            "NetworkAttachmentDefinition apps/huge: spec.config is longer than 65536 bytes",
        ),
    ] {
        let e = nri::attach_config(&socket, &claim("apps"), &named(nad))
            .await
            .unwrap_err();
        assert!(
            e.starts_with("netAttachDefName of claim apps/c1: ") && e.contains(why),
            "{nad}: {e}"
        );
    }
    // Names that are not the API's never reach a request path.
    api.take_requests();
    for (namespace, name) in [
        ("apps", "../../api/v1/secrets"),
        ("Apps", "net-a"),
        ("", "x"),
    ] {
        let e = claims::fetch_nad(&socket, namespace, name)
            .await
            .unwrap_err();
        assert!(
            e.starts_with("bad NetworkAttachmentDefinition request: netAttachDef"),
            "{namespace}/{name}: {e}"
        );
    }
    assert!(api.take_requests().is_empty());
}
