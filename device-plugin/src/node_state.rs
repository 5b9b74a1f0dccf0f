//! The node's SR-IOV state in the cluster: when the daemon runs in Kubernetes (the service
//! environment is set and `NODE_NAME` names the node), every change of adapters, pools,
//! health or allocations is handed to the `SriovNodeState` publisher, which coalesces and
//! rate-limits the API writes.
//!
//! Allocations come from kubelet's pod resources API (the truth about which pod holds which
//! device), read on the resync tick.

use crate::pool::PoolSnapshot;
use sriov::discovery::Node;
use sriov::pools::{Pool, Pools};
use sriov_node_state::{
    build_status, PoolCounts, Publisher, PublisherConfig, SriovNodeStateStatus,
};
use sriov_proto::podresources::v1::{
    pod_resources_lister_client::PodResourcesListerClient, ListPodResourcesRequest,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// How long a pod resources `List` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

pub struct NodeState {
    tx: watch::Sender<Option<SriovNodeStateStatus>>,
    pod_resources_socket: PathBuf,
    allocated: BTreeMap<String, u32>,
}

impl NodeState {
    /// Starts publishing when running in a cluster; `None` (and a log line saying why) otherwise.
    pub async fn start(kubelet_dir: &Path) -> Option<NodeState> {
        std::env::var_os("KUBERNETES_SERVICE_HOST")?;
        let Ok(node) = std::env::var("NODE_NAME") else {
            tracing::warn!("in a cluster but NODE_NAME is not set: no SriovNodeState is published");
            return None;
        };
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("no Kubernetes client ({e}): no SriovNodeState is published");
                return None;
            }
        };
        let (tx, rx) = watch::channel(None);
        tracing::info!(node = %node, "publishing SriovNodeState");
        tokio::spawn(sriov_node_state::run(
            Publisher::new(client, PublisherConfig::new(node)),
            rx,
        ));
        Some(NodeState {
            tx,
            pod_resources_socket: kubelet_dir.join("pod-resources/kubelet.sock"),
            allocated: BTreeMap::new(),
        })
    }

    /// Re-reads how many devices of each resource pods hold now.
    pub async fn refresh_allocations(&mut self) {
        match count_allocations(&self.pod_resources_socket).await {
            Ok(counts) => self.allocated = counts,
            Err(e) => tracing::debug!("pod resources unavailable: {e}"),
        }
    }

    /// Hands the current state to the publisher (which writes only what changed).
    pub fn update<'a>(
        &self,
        node: &Node,
        pools: impl Iterator<Item = &'a PoolSnapshot>,
        zero_config: bool,
        last_error: Option<String>,
    ) {
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
        let status = build_status(node, &pools, &counts, last_error);
        self.tx.send_if_modified(|cur| {
            if cur.as_ref() == Some(&status) {
                false
            } else {
                *cur = Some(status);
                true
            }
        });
    }
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
