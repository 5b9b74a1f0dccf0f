//! The node-local claim service: the sidecar answers the daemon's "what does claim X say?" so
//! the privileged daemon, which holds no API credentials, can prepare DRA claims.
//!
//! On a Unix socket (`--dra-claims-socket`, in the sidecar's own folder of the volume it shares
//! with the daemon), one request per connection, one JSON line each way:
//! `{"namespace", "name", "uid"}` → `{"status": <the claim's status>}` or `{"error": "..."}`.
//! The claim is read from the API server (GET, nothing cached, so a repeated prepare sees the
//! current `reservedFor`); a claim whose UID differs from the one kubelet named (deleted and
//! created again under the same name) is an error, never another claim's allocation.

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::Client;
use serde_json::{json, Value};
use sriov::dra_claim::ClaimRef;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The longest request line read.
const MAX_REQUEST: usize = 4096;
/// How long one request may take, API call included.
const TIMEOUT: Duration = Duration::from_secs(10);

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
        Ok(_) => match serde_json::from_str::<ClaimRef>(line.trim()) {
            Ok(claim) => match lookup(&client, &claim).await {
                Ok(status) => json!({ "status": status }),
                Err(e) => {
                    tracing::warn!(claim = %claim.label(), "claim service: {e}");
                    json!({ "error": e })
                }
            },
            Err(e) => json!({ "error": format!("bad request: {e}") }),
        },
        Err(e) => json!({ "error": format!("bad request: {e}") }),
    };
    let mut body = reply.to_string();
    body.push('\n');
    let _ = write.write_all(body.as_bytes()).await;
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
