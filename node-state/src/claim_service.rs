//! The node-local claim service: the sidecar answers the daemon's "what does claim X say?" so
//! the privileged daemon, which holds no API credentials, can prepare DRA claims.
//!
//! On a Unix socket (`--dra-claims-socket`, in the sidecar's own folder of the volume it shares
//! with the daemon), one request per connection, one JSON line each way:
//! `{"namespace", "name", "uid"}` → `{"status": <the claim's status>}` or `{"error": "..."}`;
//! with `"report": [<status.devices entries>]` the sidecar applies those entries to the claim's
//! status instead (server-side apply on the status subresource, field manager
//! [`FIELD_MANAGER`], so other drivers' entries stay) → `{"ok": true}` or `{"error"}`.
//! The claim is read from the API server (GET, nothing cached, so a repeated prepare sees the
//! current `reservedFor`); a claim whose UID differs from the one kubelet named (deleted and
//! created again under the same name) is an error, never another claim's allocation.
//!
//! For the NRI attach, `{"nad": {"namespace", "name"}}` → `{"config": <the
//! NetworkAttachmentDefinition's spec.config, a string>}`: the NAD a claim's `VfConfig` names
//! (`netAttachDefName`), read with a GET (RBAC: get on `network-attachment-definitions`, only
//! with NRI on). Both names are checked as the API's names before they reach the request path;
//! a config longer than [`MAX_NAD_CONFIG`] is refused. The config is not interpreted here: the
//! daemon takes it apart and the CNI plugin checks every field.

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::Client;
use serde_json::{json, Value};
use sriov::dra_claim::ClaimRef;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The longest request line read (a report carries conditions with messages).
const MAX_REQUEST: usize = 256 * 1024;
/// The field manager of the claim status entries the daemon reports.
pub const FIELD_MANAGER: &str = "sriov-rs-dra";
/// How long one request may take, API call included.
const TIMEOUT: Duration = Duration::from_secs(10);
pub use sriov::dra_claim::MAX_NAD_CONFIG;

/// Serves the claim service on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, client: Client) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let client = client.clone();
                tokio::spawn(async move {
                    if tokio::time::timeout(TIMEOUT, answer(stream, client))
                        .await
                        .is_err()
                    {
                        tracing::warn!("claim service: a request timed out");
                    }
                });
            }
            Err(e) => {
                tracing::error!("claim service: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, client: Client) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let reply = match reader.read_line(&mut line).await {
        Ok(_) => {
            let request: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
            if let Some(nad) = request.get("nad") {
                match nad_config(&client, nad).await {
                    Ok(config) => json!({ "config": config }),
                    Err(e) => {
                        tracing::warn!("claim service: {e}");
                        json!({ "error": e })
                    }
                }
            } else {
                match serde_json::from_value::<ClaimRef>(request.clone()) {
                    Ok(claim) => {
                        let result = match request.get("report") {
                            Some(devices) => report(&client, &claim, devices)
                                .await
                                .map(|()| json!({ "ok": true })),
                            None => lookup(&client, &claim)
                                .await
                                .map(|status| json!({ "status": status })),
                        };
                        result.unwrap_or_else(|e| {
                            tracing::warn!(claim = %claim.label(), "claim service: {e}");
                            json!({ "error": e })
                        })
                    }
                    Err(e) => json!({ "error": format!("bad request: {e}") }),
                }
            }
        }
        Err(e) => json!({ "error": format!("bad request: {e}") }),
    };
    let mut body = reply.to_string();
    body.push('\n');
    let _ = write.write_all(body.as_bytes()).await;
}

/// Applies `devices` (entries of `status.devices`) to the claim's status; the claim's UID is
/// sent along as a precondition.
pub async fn report(client: &Client, claim: &ClaimRef, devices: &Value) -> Result<(), String> {
    use kube::api::{Patch, PatchParams};
    claim.check_uid().map_err(|e| e.to_string())?;
    if !devices.is_array() {
        return Err("report: not a list of status.devices entries".into());
    }
    let resource = ApiResource::erase::<ResourceClaim>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &claim.namespace, &resource);
    let body = json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": claim.name, "namespace": claim.namespace, "uid": claim.uid},
        "status": {"devices": devices},
    });
    api.patch_status(
        &claim.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|e| format!("writing the status of ResourceClaim {}: {e}", claim.label()))?;
    Ok(())
}

/// The claim's `status`, if it is the claim kubelet named.
pub async fn lookup(client: &Client, claim: &ClaimRef) -> Result<Value, String> {
    claim.check_uid().map_err(|e| e.to_string())?;
    sriov::names::validate_node_name(&claim.namespace)
        .map_err(|_| format!("namespace {:?} is not a DNS label", claim.namespace))?;
    let resource = ApiResource::erase::<ResourceClaim>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &claim.namespace, &resource);
    let object = api
        .get(&claim.name)
        .await
        .map_err(|e| format!("reading ResourceClaim {}: {e}", claim.label()))?;
    let uid = object.metadata.uid.clone().unwrap_or_default();
    if uid != claim.uid {
        return Err(format!(
            "ResourceClaim {} has uid {uid}, not {} (deleted and created again?)",
            claim.label(),
            claim.uid
        ));
    }
    Ok(object.data.get("status").cloned().unwrap_or(Value::Null))
}

/// The `spec.config` of the NetworkAttachmentDefinition `{"namespace", "name"}` names.
pub async fn nad_config(client: &Client, nad: &Value) -> Result<String, String> {
    let field = |k: &str| nad.get(k).and_then(Value::as_str).unwrap_or_default();
    let (namespace, name) = (field("namespace"), field("name"));
    // The same checks as the VfConfig fields these come from: names, never path segments.
    let names = sriov::dra_claim::VfConfig {
        net_attach_def_name: Some(name.to_string()),
        net_attach_def_namespace: Some(namespace.to_string()),
        ..Default::default()
    };
    names
        .check()
        .map_err(|(f, why)| format!("bad NetworkAttachmentDefinition request: {f}: {why}"))?;
    let label = format!("NetworkAttachmentDefinition {namespace}/{name}");
    let resource = ApiResource {
        group: "k8s.cni.cncf.io".into(),
        version: "v1".into(),
        api_version: "k8s.cni.cncf.io/v1".into(),
        kind: "NetworkAttachmentDefinition".into(),
        plural: "network-attachment-definitions".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let object = match api.get(name).await {
        Ok(o) => o,
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(format!("{label} not found")),
        Err(e) => return Err(format!("reading {label}: {e}")),
    };
    let config = match object.data.pointer("/spec/config") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        Some(Value::String(_)) | None => {
            return Err(format!(
                "{label} has no spec.config (a NAD whose config is a file on the node is not supported)"
            ))
        }
        Some(_) => return Err(format!("{label}: spec.config is not a string")),
    };
    if config.len() > MAX_NAD_CONFIG {
        return Err(format!(
            "{label}: spec.config is longer than {MAX_NAD_CONFIG} bytes"
        ));
    }
    Ok(config)
}
