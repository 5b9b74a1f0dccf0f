//! The node's SR-IOV state in the cluster.
//!
//! One cluster-scoped [`SriovNodeState`] per node, named after it: each PF as a hypervisor's
//! adapter table shows it, each pool with its VF, healthy and allocated counts, and the last
//! error. The Node is labelled `feature.node.kubernetes.io/network-sriov.capable=true` while it
//! has an SR-IOV-enabled PF.
//!
//! Two processes share the work, so the privileged node daemon links no Kubernetes client and
//! holds no API credentials:
//! - the daemon computes the status ([`status`], no I/O) and writes it to a file
//!   ([`status_file`]) whenever it changes;
//! - the `sriov-node-state` sidecar ([`sidecar`], feature `api`) follows that file and
//!   publishes it ([`publisher`]): only what changed, at most once per interval.
//!
//! The same split serves Dynamic Resource Allocation: the daemon builds the node's DRA devices
//! ([`dra`], no I/O) and writes them to a second file; the sidecar cuts them into ResourceSlices
//! and keeps the node's slices matching ([`slice_publisher`]). To prepare a claim the daemon
//! asks the sidecar's node-local claim service ([`claim_service`], a Unix socket) for the
//! claim's status.
//!
//! [`crd`] is the custom resource type (its CRD is generated from it and shipped in the chart).
//!
//! Tests: no API server exists where this is built, so `tests/publisher.rs` points a
//! `kube::Client` at an in-test HTTP server that checks every request (path, verb, content
//! type, `fieldManager`, `force`, body) and answers as the API server does.

#[cfg(feature = "api")]
pub mod claim_service;
#[cfg(feature = "api")]
pub mod crd;
pub mod dra;
#[cfg(feature = "api")]
pub mod publisher;
#[cfg(feature = "api")]
pub mod sidecar;
#[cfg(feature = "api")]
pub mod slice_publisher;
pub mod status;
pub mod status_file;

#[cfg(feature = "api")]
pub use crd::{SriovNodeState, SriovNodeStateSpec};
#[cfg(feature = "api")]
pub use publisher::{
    run, PublishError, Publisher, PublisherConfig, FIELD_MANAGER, SRIOV_CAPABLE_LABEL,
};
pub use status::{
    build_status, PfStatus, PoolCounts, PoolStatus, SriovNodeStateStatus, SriovState, Summary,
};
