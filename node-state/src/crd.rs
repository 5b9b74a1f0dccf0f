//! The `SriovNodeState` custom resource (`sriov-rs.io/v1alpha1`, cluster-scoped, one per node,
//! named after it).
//!
//! `kubectl get sriovnodestates` prints one row per node whose columns list the node's PFs in
//! the same order (`ens1f0,ens1f1` / `8/64,off` / `up,down` / `9000,1500`): a kubectl column
//! shows only the first match of a JSONPath, so the per-PF lists are precomputed strings in
//! [`Summary`]. `-o wide` adds drivers, PCI addresses and the last error.

use crate::status::SriovNodeStateStatus;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The node a state belongs to (the object is also named after it).
// clippy reads the repeated `printcolumn(type_ = ..)` keys as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "sriov-rs.io",
    version = "v1alpha1",
    kind = "SriovNodeState",
    plural = "sriovnodestates",
    singular = "sriovnodestate",
    shortname = "sns",
    category = "sriov-rs",
    status = "SriovNodeStateStatus",
    derive = "PartialEq",
    doc = "The SR-IOV adapters and VF pools of one node, published by the sriov-rs node daemon.",
    printcolumn(
        name = "Adapters",
        type_ = "string",
        json_path = ".status.summary.adapters",
        description = "PFs and plain NICs, by netdev name"
    ),
    printcolumn(
        name = "SR-IOV",
        type_ = "string",
        json_path = ".status.summary.sriov",
        description = "per adapter: VFs enabled/total, off, or - (not capable)"
    ),
    printcolumn(name = "Link", type_ = "string", json_path = ".status.summary.links"),
    printcolumn(name = "MTU", type_ = "string", json_path = ".status.summary.mtus"),
    printcolumn(name = "NUMA", type_ = "string", json_path = ".status.summary.numa"),
    printcolumn(
        name = "Driver",
        type_ = "string",
        json_path = ".status.summary.drivers",
        priority = "1"
    ),
    printcolumn(
        name = "PCI",
        type_ = "string",
        json_path = ".status.summary.pciAddresses",
        priority = "1"
    ),
    printcolumn(name = "Pools", type_ = "integer", json_path = ".status.summary.pools"),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.summary.healthy",
        description = "healthy/total devices over all pools"
    ),
    printcolumn(
        name = "Allocated",
        type_ = "integer",
        json_path = ".status.summary.allocated"
    ),
    printcolumn(
        name = "Error",
        type_ = "string",
        json_path = ".status.lastError",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SriovNodeStateSpec {
    pub node_name: String,
}
