//! The node's SR-IOV state in the cluster.
//!
//! The node daemon publishes one cluster-scoped [`SriovNodeState`] per node, named after the
//! node: each PF as a hypervisor's adapter table shows it, each pool with its VF, healthy and
//! allocated counts, and the last error. It also labels the Node
//! `feature.node.kubernetes.io/network-sriov.capable=true` while it has an SR-IOV-enabled PF.
//!
//! - [`crd`]: the custom resource type (its CRD is generated from it and shipped in the chart).
//! - [`status`]: builds the status from discovery, pools and per-pool counts (no I/O).
//! - [`publisher`]: sends only what changed (server-side apply of the status, a merge patch of
//!   the label), at most once per interval, coalescing what happens in between.
//!
//! The daemon holds a `tokio::sync::watch` of the latest status and drives [`publisher::run`].
//!
//! Tests: no API server exists where this is built, so `tests/publisher.rs` points a
//! `kube::Client` at an in-test HTTP server that checks every request (path, verb, content
//! type, `fieldManager`, `force`, body) and answers as the API server does.

pub mod crd;
pub mod publisher;
pub mod status;

pub use crd::{
    PfStatus, PoolStatus, SriovNodeState, SriovNodeStateSpec, SriovNodeStateStatus, SriovState,
    Summary,
};
pub use publisher::{
    run, PublishError, Publisher, PublisherConfig, FIELD_MANAGER, SRIOV_CAPABLE_LABEL,
};
pub use status::{build_status, PoolCounts};
