//! The node's SR-IOV state for the cluster: with `--node-state-file`, every change of adapters,
//! pools, health or allocations is written to that file, which the `sriov-node-state` sidecar
//! publishes as the node's `SriovNodeState` (the daemon itself links no Kubernetes client and
//! needs no API credentials).
//!
//! Allocations come from kubelet's pod resources API (the truth about which pod holds which
//! device), read on the resync tick.

use crate::pool::PoolSnapshot;
use sriov::discovery::Node;
use sriov::pools::{Pool, Pools};
use sriov_node_state::{build_status, status_file, PoolCounts, SriovNodeStateStatus};
use sriov_proto::podresources::v1::{
    pod_resources_lister_client::PodResourcesListerClient, ListPodResourcesRequest,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a pod resources `List` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

pub struct NodeState {
    file: PathBuf,
    /// What the file holds now (`None`: unknown, e.g. after a failed write).
    written: Option<SriovNodeStateStatus>,
    /// The last write error, logged once (writes are retried with backoff).
    failing: Option<String>,
    pod_resources_socket: PathBuf,
    allocated: BTreeMap<String, u32>,
}

impl NodeState {
    /// Writes the node state to `file` from now on.
    pub fn new(file: PathBuf, kubelet_dir: &Path) -> NodeState {
        tracing::info!(file = %file.display(), "writing the node state for the sriov-node-state sidecar");
        NodeState {
            file,
            written: None,
            failing: None,
            pod_resources_socket: kubelet_dir.join("pod-resources/kubelet.sock"),
            allocated: BTreeMap::new(),
        }
    }

    /// Re-reads how many devices of each resource pods hold now.
    pub async fn refresh_allocations(&mut self) {
        match count_allocations(&self.pod_resources_socket).await {
            Ok(counts) => self.allocated = counts,
            Err(e) => tracing::debug!("pod resources unavailable: {e}"),
        }
    }

    /// The status to write now, if it differs from what the file holds.
    pub fn pending<'a>(
        &self,
        node: &Node,
        pools: impl Iterator<Item = &'a PoolSnapshot>,
        zero_config: bool,
        last_error: Option<String>,
        live_link_up: &dyn Fn(&str) -> Option<bool>,
    ) -> Option<SriovNodeStateStatus> {
        let mut counts = BTreeMap::new();
        let pools = Pools {
            pools: pools
                .map(|s| {
                    let (healthy, _) = s.counts();
                    let name = s.full_name();
                    counts.insert(
                        name.clone(),
                        PoolCounts {
                            healthy: u32::try_from(healthy).unwrap_or(u32::MAX),
                            allocated: self.allocated.get(&name).copied().unwrap_or(0),
                        },
                    );
                    Pool {
                        config: s.config.clone(),
                        devices: s.devices.iter().map(|t| t.device.clone()).collect(),
                    }
                })
                .collect(),
            zero_config,
        };
        let status = build_status(node, &pools, &counts, last_error, live_link_up);
        (self.written.as_ref() != Some(&status)).then_some(status)
    }

    /// The file to write.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The file now holds `status`.
    pub fn written(&mut self, status: SriovNodeStateStatus) {
        self.written = Some(status);
        if self.failing.take().is_some() {
            tracing::info!(file = %self.file.display(), "node state written again");
        }
    }

    /// A write failed (the file's content is unknown now); logged when the error is new.
    pub fn failed(&mut self, error: String, retry: std::time::Duration) {
        self.written = None;
        if self.failing.as_deref() != Some(error.as_str()) {
            tracing::warn!(
                "node state not written (retried with backoff, next in {retry:?}): {error}"
            );
            self.failing = Some(error);
        } else {
            tracing::debug!("node state still not written, next try in {retry:?}: {error}");
        }
    }
}

/// Writes `status` to `file` (on a blocking thread: the caller's).
pub fn write(file: &Path, status: &SriovNodeStateStatus) -> Result<(), String> {
    crate::fault::panic_at("node-state-panic-once");
    status_file::write(file, status).map_err(|e| e.to_string())
}

/// Devices per resource that kubelet reports as held by pods.
pub async fn count_allocations(socket: &Path) -> Result<BTreeMap<String, u32>, String> {
    let channel = sriov_proto::connect_unix(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut client = PodResourcesListerClient::new(channel);
    let resp = tokio::time::timeout(LIST_TIMEOUT, client.list(ListPodResourcesRequest {}))
        .await
        .map_err(|_| "List timed out".to_string())?
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for pod in resp.pod_resources {
        for c in pod.containers {
            for d in c.devices {
                *counts.entry(d.resource_name).or_default() += d.device_ids.len() as u32;
            }
        }
    }
    Ok(counts)
}
