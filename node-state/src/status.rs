//! Builds a [`SriovNodeStateStatus`] from what the daemon knows; no I/O.

use serde::{Deserialize, Serialize};
use sriov::discovery::{Node, PciNetDevice, SriovStatus};
use sriov::pools::Pools;
use std::collections::BTreeMap;

/// What the daemon sees on its node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
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
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
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
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
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
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
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
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
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

/// A pool's live counts, which only the daemon knows (health checks, kubelet allocations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub healthy: u32,
    pub allocated: u32,
}

fn pf_status(dev: &PciNetDevice, live_link_up: &dyn Fn(&str) -> Option<bool>) -> PfStatus {
    let (sriov, vfs_enabled, vfs_total) = match dev.sriov {
        SriovStatus::NotSupported => (SriovState::NotSupported, 0, 0),
        SriovStatus::Disabled { total } => (SriovState::Disabled, 0, total),
        SriovStatus::Enabled { enabled, total } => (SriovState::Enabled, enabled, total),
    };
    let netdev = dev.netdevs.first();
    PfStatus {
        name: dev.display_name(),
        pci_address: dev.pci.to_string(),
        vendor_device: format!("{:04x}:{:04x}", dev.vendor, dev.device),
        driver: dev.driver.clone(),
        sriov,
        vfs_total,
        vfs_enabled,
        link: match netdev {
            None => "none".into(),
            Some(n) if live_link_up(&n.name).unwrap_or_else(|| n.is_link_up()) => "up".into(),
            Some(_) => "down".into(),
        },
        mtu: netdev.and_then(|n| n.mtu),
        numa_node: dev.numa_node,
    }
}

fn join<T>(pfs: &[PfStatus], f: impl Fn(&PfStatus) -> T) -> String
where
    T: ToString,
{
    pfs.iter()
        .map(|p| f(p).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn opt(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The status for `node` and its `pools`. `counts` holds each pool's live counts by full
/// resource name; a pool missing there counts all its devices healthy and none allocated.
/// `live_link_up` answers, for a netdev name, what link notifications said since discovery
/// (up: administratively up with carrier); `None` keeps what discovery read from sysfs.
pub fn build_status(
    node: &Node,
    pools: &Pools,
    counts: &BTreeMap<String, PoolCounts>,
    last_error: Option<String>,
    live_link_up: &dyn Fn(&str) -> Option<bool>,
) -> SriovNodeStateStatus {
    let pfs: Vec<PfStatus> = node
        .devices
        .iter()
        .map(|d| pf_status(d, live_link_up))
        .collect();
    let pools: Vec<PoolStatus> = pools
        .pools
        .iter()
        .map(|p| {
            let name = p.full_name();
            let vfs = u32::try_from(p.devices.len()).unwrap_or(u32::MAX);
            let c = counts.get(&name).copied().unwrap_or(PoolCounts {
                healthy: vfs,
                allocated: 0,
            });
            PoolStatus {
                name,
                vfs,
                healthy: c.healthy,
                allocated: c.allocated,
            }
        })
        .collect();
    let total: u32 = pools.iter().map(|p| p.vfs).sum();
    let summary = Summary {
        adapters: join(&pfs, |p| p.name.clone()),
        sriov: join(&pfs, |p| match p.sriov {
            SriovState::NotSupported => "-".to_string(),
            SriovState::Disabled => "off".to_string(),
            SriovState::Enabled => format!("{}/{}", p.vfs_enabled, p.vfs_total),
        }),
        links: join(&pfs, |p| p.link.clone()),
        mtus: join(&pfs, |p| opt(p.mtu)),
        numa: join(&pfs, |p| opt(p.numa_node)),
        drivers: join(&pfs, |p| opt(p.driver.as_deref())),
        pci_addresses: join(&pfs, |p| p.pci_address.clone()),
        pools: u32::try_from(pools.len()).unwrap_or(u32::MAX),
        healthy: format!("{}/{}", pools.iter().map(|p| p.healthy).sum::<u32>(), total),
        allocated: pools.iter().map(|p| p.allocated).sum(),
    };
    SriovNodeStateStatus {
        pfs,
        pools,
        summary,
        last_error,
    }
}
