//! Keeps the node's ResourceSlices (`resource.k8s.io/v1`) matching the daemon's DRA devices.
//!
//! The slices of a node are the ones with `spec.nodeName` = the node and `spec.driver` = the
//! driver (one field-selected list finds them all). They are named `<node>-<driver>-<i>`
//! ([`crate::dra::slice_name`]) and owned by the Node (the garbage collector removes them with
//! it). On a change the publisher lists them, and when the wanted slices differ from what is
//! there it writes all of them at the next `pool.generation` (the highest found plus one:
//! consumers ignore slices of an older generation, so a pool is never half old and half new):
//! updates (with the listed `resourceVersion`), creates what is missing, deletes the rest. A 409
//! (someone else wrote in between) or a 404 (deleted meanwhile) re-reads and starts over, a few
//! times. In the steady state it sends nothing: what was published last is remembered.
//!
//! Taints: a cluster without the `DRADeviceTaints` feature drops `devices[].taints` when it
//! stores a slice. The publisher sees it in the server's answer, stops sending taints (and cuts
//! slices at 128 devices again) for the rest of its life, and logs it once.

use crate::dra::{slice_name, slice_specs, DraDevices, SliceSpec};
use crate::publisher::{node_owner_reference, Publish, PublisherConfig, FIELD_MANAGER};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How often a sync starts over after a conflict before it gives up (until the next retry).
const MAX_ATTEMPTS: usize = 4;

/// Publishing the slices failed.
#[derive(Debug, thiserror::Error)]
pub enum SlicePublishError {
    #[error("reading node {node}: {source}")]
    GetNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing the ResourceSlices of node {node}: {source}")]
    List {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing ResourceSlice {name}: {source}")]
    Write {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting ResourceSlice {name}: {source}")]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("ResourceSlices of node {node}: still conflicting after {MAX_ATTEMPTS} attempts")]
    Conflicts { node: String },
    #[error("ResourceSlice {name}: {why}")]
    Encode { name: String, why: String },
}

/// Why a sync must start over.
enum Retry {
    /// Someone else changed the slices.
    Conflict,
    /// The server dropped the taints: send none.
    TaintsDropped,
}

enum SyncError {
    Retry(Retry),
    Fatal(SlicePublishError),
}

impl From<SlicePublishError> for SyncError {
    fn from(e: SlicePublishError) -> Self {
        SyncError::Fatal(e)
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 404)
}

/// The node's slices as found: name → (resourceVersion, spec as we write it).
struct Existing {
    slices: BTreeMap<String, (Option<String>, Option<SliceSpec>)>,
    generation: i64,
}

/// Publishes one node's ResourceSlices.
pub struct SlicePublisher {
    config: PublisherConfig,
    slices: Api<ResourceSlice>,
    nodes: Api<Node>,
    owner: Option<Value>,
    published: Option<DraDevices>,
    taints_served: bool,
}

impl SlicePublisher {
    pub fn new(client: Client, config: PublisherConfig) -> Self {
        SlicePublisher {
            slices: Api::all(client.clone()),
            nodes: Api::all(client),
            config,
            owner: None,
            published: None,
            taints_served: true,
        }
    }

    pub fn config(&self) -> &PublisherConfig {
        &self.config
    }

    /// Whether the API server keeps device taints (false once it was seen dropping them).
    pub fn taints_served(&self) -> bool {
        self.taints_served
    }

    /// Makes the node's slices match `devices`; returns the number of requests (0: nothing
    /// changed since the last successful call).
    pub async fn publish(&mut self, devices: &DraDevices) -> Result<usize, SlicePublishError> {
        if self.published.as_ref() == Some(devices) {
            return Ok(0);
        }
        let mut requests = 0;
        for _ in 0..MAX_ATTEMPTS {
            match self.sync(devices, &mut requests).await {
                Ok(()) => {
                    self.published = Some(devices.clone());
                    return Ok(requests);
                }
                Err(SyncError::Retry(Retry::Conflict)) => {}
                Err(SyncError::Retry(Retry::TaintsDropped)) => {
                    tracing::warn!(
                        node = %self.config.node_name,
                        "the API server drops device taints (DRADeviceTaints is off): publishing unhealthy devices without them"
                    );
                    self.taints_served = false;
                }
                Err(SyncError::Fatal(e)) => {
                    self.published = None;
                    return Err(e);
                }
            }
        }
        self.published = None;
        Err(SlicePublishError::Conflicts {
            node: self.config.node_name.clone(),
        })
    }

    /// What is sent: without taints when the server does not keep them.
    fn effective(&self, devices: &DraDevices) -> DraDevices {
        let mut d = devices.clone();
        if !self.taints_served {
            d.taints = false;
            for dev in &mut d.devices {
                dev.taints.clear();
            }
        }
        d
    }

    async fn existing(
        &self,
        driver: &str,
        requests: &mut usize,
    ) -> Result<Existing, SlicePublishError> {
        let node = &self.config.node_name;
        let selector = format!("spec.nodeName={node},spec.driver={driver}");
        *requests += 1;
        let list = self
            .slices
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(|source| SlicePublishError::List {
                node: node.clone(),
                source,
            })?;
        let mut slices = BTreeMap::new();
        let mut generation = 0;
        for s in list.items {
            let Some(name) = s.metadata.name.clone() else {
                continue;
            };
            if s.spec.pool.name == *node {
                generation = generation.max(s.spec.pool.generation);
            }
            // A spec we would not write (fields we do not set) never compares equal.
            let spec = serde_json::to_value(&s.spec)
                .ok()
                .and_then(|v| serde_json::from_value::<SliceSpec>(v).ok());
            slices.insert(name, (s.metadata.resource_version.clone(), spec));
        }
        Ok(Existing { slices, generation })
    }

    async fn owner(&mut self, requests: &mut usize) -> Result<Value, SlicePublishError> {
        if let Some(o) = &self.owner {
            return Ok(o.clone());
        }
        let node = &self.config.node_name;
        *requests += 1;
        let owner = node_owner_reference(&self.nodes, node)
            .await
            .map_err(|source| SlicePublishError::GetNode {
                node: node.clone(),
                source,
            })?;
        self.owner = Some(owner.clone());
        Ok(owner)
    }

    /// The wanted slices by name at `generation`, with the server's taint timestamps kept.
    fn wanted(
        &self,
        devices: &DraDevices,
        generation: i64,
        existing: &Existing,
    ) -> Vec<(String, SliceSpec)> {
        let node = &self.config.node_name;
        slice_specs(devices, node, generation)
            .into_iter()
            .enumerate()
            .map(|(i, mut spec)| {
                let name = slice_name(node, &devices.driver, i);
                if let Some((_, Some(old))) = existing.slices.get(&name) {
                    keep_taint_times(&mut spec, old);
                }
                (name, spec)
            })
            .collect()
    }

    async fn sync(&mut self, devices: &DraDevices, requests: &mut usize) -> Result<(), SyncError> {
        let devices = self.effective(devices);
        let existing = self.existing(&devices.driver, requests).await?;
        let unchanged = self.wanted(&devices, existing.generation, &existing);
        let same = unchanged.len() == existing.slices.len()
            && unchanged.iter().all(|(name, spec)| {
                matches!(existing.slices.get(name), Some((_, Some(old))) if old == spec)
            });
        if same {
            return Ok(());
        }
        let owner = self.owner(requests).await?;
        let wanted = self.wanted(&devices, existing.generation + 1, &existing);
        let mut taints_dropped = false;
        for (name, spec) in &wanted {
            let version = existing.slices.get(name).and_then(|(v, _)| v.clone());
            let slice = slice_object(name, spec, &owner, version.as_deref())?;
            *requests += 1;
            let written = match version {
                Some(_) => {
                    self.slices
                        .replace(name, &PostParams::default(), &slice)
                        .await
                }
                None => self.slices.create(&post_params(), &slice).await,
            };
            let stored = match written {
                Ok(s) => s,
                Err(e) if is_conflict(&e) => return Err(SyncError::Retry(Retry::Conflict)),
                Err(source) => {
                    return Err(SyncError::Fatal(SlicePublishError::Write {
                        name: name.clone(),
                        source,
                    }))
                }
            };
            let sent_taints = spec.devices.iter().any(|d| !d.taints.is_empty());
            let kept_taints = stored
                .spec
                .devices
                .iter()
                .flatten()
                .any(|d| d.taints.as_ref().is_some_and(|t| !t.is_empty()));
            taints_dropped |= sent_taints && !kept_taints;
        }
        for name in existing.slices.keys() {
            if wanted.iter().any(|(n, _)| n == name) {
                continue;
            }
            *requests += 1;
            match self.slices.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                // Already gone: that is what we wanted.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(SyncError::Fatal(SlicePublishError::Delete {
                        name: name.clone(),
                        source,
                    }))
                }
            }
        }
        if taints_dropped {
            return Err(SyncError::Retry(Retry::TaintsDropped));
        }
        Ok(())
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Copies `timeAdded` of taints the server already stores into `spec` (the server sets it; an
/// unchanged taint must compare equal and keep its time).
fn keep_taint_times(spec: &mut SliceSpec, old: &SliceSpec) {
    for d in &mut spec.devices {
        let Some(o) = old.devices.iter().find(|o| o.name == d.name) else {
            continue;
        };
        for t in &mut d.taints {
            if let Some(ot) = o
                .taints
                .iter()
                .find(|ot| ot.key == t.key && ot.value == t.value && ot.effect == t.effect)
            {
                t.time_added = ot.time_added.clone();
            }
        }
    }
}

fn slice_object(
    name: &str,
    spec: &SliceSpec,
    owner: &Value,
    resource_version: Option<&str>,
) -> Result<ResourceSlice, SlicePublishError> {
    let mut metadata = json!({
        "name": name,
        "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        "ownerReferences": [owner],
    });
    if let Some(v) = resource_version {
        metadata["resourceVersion"] = json!(v);
    }
    let object = json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": metadata,
        "spec": spec,
    });
    serde_json::from_value(object).map_err(|e| SlicePublishError::Encode {
        name: name.into(),
        why: e.to_string(),
    })
}

impl Publish for SlicePublisher {
    type State = DraDevices;
    type Error = SlicePublishError;
    const WHAT: &'static str = "ResourceSlices";

    fn config(&self) -> &PublisherConfig {
        &self.config
    }

    async fn publish(&mut self, state: &DraDevices) -> Result<usize, SlicePublishError> {
        SlicePublisher::publish(self, state).await
    }
}
