//! Publishes the node's [`SriovNodeStateStatus`] and its SR-IOV label, only when they change.
//!
//! The cost to the API server is what matters (5,000 nodes): in the steady state a node sends
//! nothing; a change costs one request (a server-side apply of the status subresource, field
//! manager `sriov-rs`, forced: the daemon is the status' only writer), plus one merge patch of
//! the Node when the label's value changes. [`run`] sends at most one update per
//! [`PublisherConfig::min_interval`] (jittered, so nodes that change together, e.g. after a
//! rollout, do not call in lockstep) and coalesces everything that happens in between into the
//! latest state. Failures back off exponentially. The daemon needs no list or watch.
//!
//! A status subresource cannot create its object, so the first apply of a new node gets 404;
//! the publisher then reads the Node (its uid), applies the object itself with an
//! ownerReference to the Node (the garbage collector deletes the state with the Node), and
//! applies the status again.

use crate::crd::{SriovNodeState, SriovNodeStateSpec};
use crate::status::SriovNodeStateStatus;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::json;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "sriov-rs";
/// Set to `"true"` while the node has an SR-IOV-enabled PF, removed otherwise (the label
/// node-feature-discovery uses, so existing node selectors keep working).
pub const SRIOV_CAPABLE_LABEL: &str = "feature.node.kubernetes.io/network-sriov.capable";

/// A write to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Reading the Node (for the ownerReference) failed.
    #[error("reading node {node}: {source}")]
    GetNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    /// Creating the SriovNodeState failed.
    #[error("creating SriovNodeState {node}: {source}")]
    Create {
        node: String,
        #[source]
        source: kube::Error,
    },
    /// Applying the status failed.
    #[error("applying the status of SriovNodeState {node}: {source}")]
    Status {
        node: String,
        #[source]
        source: kube::Error,
    },
    /// Patching the Node's label failed.
    #[error("labelling node {node}: {source}")]
    Label {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// How the publisher behaves.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The node (and object) name; the daemon gets it from `NODE_NAME` (downward API).
    pub node_name: String,
    /// At least this long between two updates.
    pub min_interval: Duration,
    /// Up to this much is added at random to each wait (and to the delay of the first update).
    pub jitter: Duration,
    /// Longest wait after repeated failures.
    pub max_backoff: Duration,
}

impl PublisherConfig {
    /// Defaults: one update per 10 s at most, 0-2 s of jitter, backoff up to 5 min.
    pub fn new(node_name: impl Into<String>) -> Self {
        PublisherConfig {
            node_name: node_name.into(),
            min_interval: Duration::from_secs(10),
            jitter: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
        }
    }

    pub(crate) fn jittered(&self, base: Duration) -> Duration {
        let nanos = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return base;
        }
        // RandomState is seeded randomly per process and changes with every instance.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        base + Duration::from_nanos(random % nanos)
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.min(16);
        self.jittered(
            self.min_interval
                .saturating_mul(factor)
                .min(self.max_backoff),
        )
    }
}

/// An ownerReference to the Node `name` (its uid read from the API), so that the garbage
/// collector deletes what we publish for a node together with the Node. No
/// blockOwnerDeletion: it would need update rights on the Node's finalizers.
pub(crate) async fn node_owner_reference(
    nodes: &Api<Node>,
    name: &str,
) -> Result<serde_json::Value, kube::Error> {
    let node = nodes.get(name).await?;
    let uid = node.metadata.uid.unwrap_or_default();
    Ok(json!({"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}))
}

/// Writes the node's state; remembers what was written so an unchanged state costs nothing.
pub struct Publisher {
    config: PublisherConfig,
    nodes: Api<Node>,
    states: Api<SriovNodeState>,
    published_status: Option<SriovNodeStateStatus>,
    published_label: Option<bool>,
}

impl Publisher {
    pub fn new(client: Client, config: PublisherConfig) -> Self {
        Publisher {
            nodes: Api::all(client.clone()),
            states: Api::all(client),
            config,
            published_status: None,
            published_label: None,
        }
    }

    pub fn config(&self) -> &PublisherConfig {
        &self.config
    }

    /// Sends what differs from what was last published successfully; returns how many
    /// requests it made (0: nothing changed). After an error, the next call tries again.
    pub async fn publish(&mut self, status: &SriovNodeStateStatus) -> Result<usize, PublishError> {
        let mut requests = 0;
        if self.published_status.as_ref() != Some(status) {
            requests += self.apply_status(status).await?;
            self.published_status = Some(status.clone());
        }
        let capable = status.sriov_capable();
        if self.published_label != Some(capable) {
            self.patch_label(capable).await?;
            requests += 1;
            self.published_label = Some(capable);
        }
        Ok(requests)
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    async fn apply_status(&self, status: &SriovNodeStateStatus) -> Result<usize, PublishError> {
        let node = &self.config.node_name;
        let patch = json!({
            "apiVersion": SriovNodeState::api_version(&()),
            "kind": SriovNodeState::kind(&()),
            "metadata": {"name": node},
            "status": status,
        });
        let status_err = |source| PublishError::Status {
            node: node.clone(),
            source,
        };
        match self
            .states
            .patch_status(node, &Self::apply_params(), &Patch::Apply(&patch))
            .await
        {
            Ok(_) => Ok(1),
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                self.create().await?;
                self.states
                    .patch_status(node, &Self::apply_params(), &Patch::Apply(&patch))
                    .await
                    .map_err(status_err)?;
                Ok(4)
            }
            Err(e) => Err(status_err(e)),
        }
    }

    /// Applies the object itself (creating it), owned by the Node.
    async fn create(&self) -> Result<(), PublishError> {
        let node = &self.config.node_name;
        let owner = node_owner_reference(&self.nodes, node)
            .await
            .map_err(|source| PublishError::GetNode {
                node: node.clone(),
                source,
            })?;
        let object = json!({
            "apiVersion": SriovNodeState::api_version(&()),
            "kind": SriovNodeState::kind(&()),
            "metadata": {
                "name": node,
                "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
                "ownerReferences": [owner],
            },
            "spec": SriovNodeStateSpec { node_name: node.clone() },
        });
        self.states
            .patch(node, &Self::apply_params(), &Patch::Apply(&object))
            .await
            .map_err(|source| PublishError::Create {
                node: node.clone(),
                source,
            })?;
        Ok(())
    }

    async fn patch_label(&self, capable: bool) -> Result<(), PublishError> {
        let node = &self.config.node_name;
        // null removes the label (JSON merge patch).
        let value = if capable {
            json!("true")
        } else {
            serde_json::Value::Null
        };
        let patch = json!({"metadata": {"labels": {SRIOV_CAPABLE_LABEL: value}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.nodes
            .patch(node, &params, &Patch::Merge(&patch))
            .await
            .map_err(|source| PublishError::Label {
                node: node.clone(),
                source,
            })?;
        Ok(())
    }
}

/// Something [`run`] keeps current in the cluster: the SriovNodeState ([`Publisher`]) or the
/// node's ResourceSlices ([`crate::slice_publisher::SlicePublisher`]).
pub trait Publish: Send {
    /// What the daemon's file holds.
    type State: Clone + Send + Sync;
    type Error: std::fmt::Display + Send;
    /// What is published, for logs.
    const WHAT: &'static str;
    fn config(&self) -> &PublisherConfig;
    /// Sends what differs from what was last published successfully; returns how many
    /// requests it made (0: nothing changed). After an error, the next call tries again.
    fn publish(
        &mut self,
        state: &Self::State,
    ) -> impl std::future::Future<Output = Result<usize, Self::Error>> + Send;
}

impl Publish for Publisher {
    type State = SriovNodeStateStatus;
    type Error = PublishError;
    const WHAT: &'static str = "SriovNodeState";

    fn config(&self) -> &PublisherConfig {
        &self.config
    }

    async fn publish(&mut self, state: &SriovNodeStateStatus) -> Result<usize, PublishError> {
        Publisher::publish(self, state).await
    }
}

/// Keeps the cluster's view of the node current until the sender of `states` is dropped.
///
/// `states` holds the latest state (`None` until the daemon has one). The current value is
/// published at start (after up to [`PublisherConfig::jitter`]), then each change, at most
/// once per [`PublisherConfig::min_interval`] and always the latest value; after a failure,
/// the same is retried with exponential backoff even if nothing changes.
pub async fn run<P: Publish>(mut publisher: P, mut states: watch::Receiver<Option<P::State>>) {
    let config = publisher.config().clone();
    let mut next_allowed = Instant::now() + config.jittered(Duration::ZERO);
    let mut failures = 0u32;
    // Look at the current value first, without waiting for a change.
    let mut check_now = true;
    loop {
        if !check_now && states.changed().await.is_err() {
            return;
        }
        check_now = false;
        tokio::time::sleep_until(next_allowed).await;
        // Coalescing: whatever arrived while we waited is in the latest value.
        let Some(state) = states.borrow_and_update().clone() else {
            continue;
        };
        match publisher.publish(&state).await {
            Ok(0) => failures = 0,
            Ok(n) => {
                failures = 0;
                tracing::debug!(node = %config.node_name, requests = n, "published {}", P::WHAT);
                next_allowed = Instant::now() + config.jittered(config.min_interval);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = config.backoff(failures);
                tracing::warn!(node = %config.node_name, error = %e, retry_in = ?wait, "publishing the {} failed", P::WHAT);
                next_allowed = Instant::now() + wait;
                // Retry even if nothing changes, unless the daemon is gone.
                check_now = states.has_changed().is_ok();
                if !check_now {
                    return;
                }
            }
        }
    }
}
