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
    let ask = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "the claim service ({}) is not reachable: {e}",
                socket.display()
            )
        })?;
        let mut line =
            json!({"namespace": claim.namespace, "name": claim.name, "uid": claim.uid}).to_string();
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
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(e.to_string());
        }
        v.get("status")
            .cloned()
            .ok_or_else(|| "claim service: an answer without status".to_string())
    };
    tokio::time::timeout(TIMEOUT, ask)
        .await
        .map_err(|_| format!("the claim service did not answer within {TIMEOUT:?}"))?
}
