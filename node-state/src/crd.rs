//! The `SriovNodeState` custom resource (`sriov-rs.io/v1alpha1`, cluster-scoped, one per node,
//! named after it).
//!
//! `kubectl get sriovnodestates` prints one row per node whose columns list the node's PFs in
//! the same order (`ens1f0,ens1f1` / `8/64,off` / `up,down` / `9000,1500`): a kubectl column
//! shows only the first match of a JSONPath, so the per-PF lists are precomputed strings in
//! [`Summary`]. `-o wide` adds drivers, PCI addresses and the last error.

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

/// What the daemon sees on its node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SriovNodeStateStatus {
    /// Physical network devices (SR-IOV PFs and plain NICs), in PCI order.
    #[serde(default)]
    pub pfs: Vec<PfStatus>,
    /// The device plugin resource pools, in config order.
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
    /// The table columns.
    #[serde(default)]
    pub summary: Summary,
    /// The daemon's last error (config refused, discovery or provisioning failure), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// SR-IOV state of a physical device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SriovState {
    /// No SR-IOV capability.
    #[default]
    NotSupported,
    /// Capable, no VFs enabled.
    Disabled,
    /// VFs enabled.
    Enabled,
}

/// One physical network device, as a hypervisor's adapter table shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PfStatus {
    /// Netdev name, or the PCI address when it has none.
    pub name: String,
    pub pci_address: String,
    /// `8086:1593`
    pub vendor_device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    pub sriov: SriovState,
    pub vfs_total: u32,
    pub vfs_enabled: u32,
    /// `up`, `down`, or `none` (no netdev, e.g. a PF bound to vfio-pci).
    pub link: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
}

/// One resource pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Full resource name, `intel.com/sriov_netdevice`.
    pub name: String,
    /// Devices (VFs, or whole PFs) in the pool.
    pub vfs: u32,
    pub healthy: u32,
    pub allocated: u32,
}

/// Precomputed printer columns: per-PF values joined by commas, in the order of `pfs`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub adapters: String,
    pub sriov: String,
    pub links: String,
    pub mtus: String,
    pub numa: String,
    pub drivers: String,
    pub pci_addresses: String,
    pub pools: u32,
    /// `healthy/total` over all pools.
    pub healthy: String,
    pub allocated: u32,
}

impl SriovNodeStateStatus {
    /// Whether the node has an SR-IOV-enabled PF (the Node label's value).
    pub fn sriov_capable(&self) -> bool {
        self.pfs.iter().any(|pf| pf.sriov == SriovState::Enabled)
    }
}
