//! The daemon's side of the sidecar's node-local claim service
//! (`sriov_node_state::claim_service`): one JSON line out, one back, per claim.

use serde_json::{json, Value};
use sriov::dra_claim::ClaimRef;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The longest answer read (a claim's status with its configs).
const MAX_ANSWER: u64 = 1 << 20;
/// The sidecar reads the claim from the API server: allow for that.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The claim's `status`, as the API server has it now.
pub async fn fetch_status(socket: &Path, claim: &ClaimRef) -> Result<Value, String> {
    let request = json!({"namespace": claim.namespace, "name": claim.name, "uid": claim.uid});
    exchange(socket, request)
        .await?
        .get("status")
        .cloned()
        .ok_or_else(|| "claim service: an answer without status".to_string())
}

/// The `spec.config` of NetworkAttachmentDefinition `namespace/name`, as the API server has it
/// now (the NRI attach's base config when a `VfConfig` names a NAD).
pub async fn fetch_nad(socket: &Path, namespace: &str, name: &str) -> Result<String, String> {
    let request = json!({"nad": {"namespace": namespace, "name": name}});
    match exchange(socket, request).await?.get("config") {
        Some(Value::String(c)) => Ok(c.clone()),
        _ => Err("claim service: an answer without the NAD's config".into()),
    }
}

/// Asks the sidecar to apply `devices` (entries of the claim's `status.devices`).
pub async fn report(socket: &Path, claim: &ClaimRef, devices: Vec<Value>) -> Result<(), String> {
    let request = json!({"namespace": claim.namespace, "name": claim.name, "uid": claim.uid,
                         "report": devices});
    exchange(socket, request).await.map(drop)
}

/// One request line to the claim service and its answer (an `error` in it is the error),
/// within [`TIMEOUT`].
async fn exchange(socket: &Path, request: Value) -> Result<Value, String> {
    let ask = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "the claim service ({}) is not reachable: {e}",
                socket.display()
            )
        })?;
        let mut line = request.to_string();
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("claim service: {e}"))?;
        let mut answer = String::new();
        BufReader::new(stream.take(MAX_ANSWER))
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("claim service: {e}"))?;
        let v: Value = serde_json::from_str(answer.trim())
            .map_err(|e| format!("claim service: unreadable answer: {e}"))?;
        match v.get("error").and_then(Value::as_str) {
            Some(e) => Err(e.to_string()),
            None => Ok(v),
        }
    };
    tokio::time::timeout(TIMEOUT, ask)
        .await
        .map_err(|_| format!("the claim service did not answer within {TIMEOUT:?}"))?
}

/// The `status.devices` entries of our results in a claim's status, each with a `Ready`
/// condition: `True`/`Prepared`, or `False`/`PrepareFailed` with the error as its message.
pub fn device_statuses(status: &Value, driver: &str, error: Option<&str>, now: &str) -> Vec<Value> {
    let condition = match error {
        None => json!({"type": "Ready", "status": "True", "reason": "Prepared",
                       "message": "prepared on the node", "lastTransitionTime": now}),
        Some(e) => {
            let message: String = e.chars().take(4096).collect();
            json!({"type": "Ready", "status": "False", "reason": "PrepareFailed",
                   "message": message, "lastTransitionTime": now})
        }
    };
    status
        .pointer("/allocation/devices/results")
        .and_then(Value::as_array)
        .map(|results| {
            results
                .iter()
                .filter(|r| r.get("driver").and_then(Value::as_str) == Some(driver))
                .filter_map(|r| {
                    Some(json!({
                        "driver": driver,
                        "pool": r.get("pool")?.as_str()?,
                        "device": r.get("device")?.as_str()?,
                        "conditions": [condition.clone()],
                    }))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Now as RFC 3339 UTC (`2026-12-02T06:30:00Z`), as Kubernetes writes times.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    sriov::dra_claim::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_statuses() {
        assert_eq!(sriov::dra_claim::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            sriov::dra_claim::rfc3339(1_709_251_199),
            "2024-02-29T23:59:59Z"
        );
        let status = json!({"allocation": {"devices": {"results": [
            {"request": "a", "driver": "d.io", "pool": "n", "device": "x"},
            {"request": "b", "driver": "other.io", "pool": "n", "device": "y"}]}}});
        let s = device_statuses(&status, "d.io", Some("field \"vlan\": bad"), "T");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["device"], "x");
        assert_eq!(s[0]["conditions"][0]["reason"], "PrepareFailed");
    }
}
