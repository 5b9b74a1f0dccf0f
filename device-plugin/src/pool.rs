//! A pool as the gRPC side sees it: an immutable snapshot (config + devices with health),
//! replaced as a whole by the daemon and read by the plugin server without locks.

use crate::metrics::Metrics;
use sriov::config::ResourceConfig;
use sriov::health::{Health, TrackedDevice};
use sriov::sysfs::Sysfs;
use sriov_proto::deviceplugin::v1beta1 as dp;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One version of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub config: ResourceConfig,
    /// Sorted by PCI address.
    pub devices: Vec<TrackedDevice>,
}

impl PoolSnapshot {
    pub fn full_name(&self) -> String {
        self.config.full_name()
    }

    /// The device with this ID (a PCI address); devices are sorted, so this is a binary search.
    pub fn device(&self, id: &str) -> Option<&TrackedDevice> {
        let pci = sriov::names::PciAddress::parse(id).ok()?;
        let i = self
            .devices
            .binary_search_by_key(&pci, |t| t.device.pci)
            .ok()?;
        self.devices.get(i)
    }

    /// (healthy, unhealthy)
    pub fn counts(&self) -> (u64, u64) {
        let healthy = self
            .devices
            .iter()
            .filter(|t| t.health.is_healthy())
            .count() as u64;
        (healthy, self.devices.len() as u64 - healthy)
    }

    /// What ListAndWatch sends: every device, its health and (unless `excludeTopology`) its NUMA
    /// node.
    pub fn list_response(&self) -> dp::ListAndWatchResponse {
        let devices = self
            .devices
            .iter()
            .map(|t| dp::Device {
                id: t.device.pci.to_string(),
                health: match t.health {
                    Health::Healthy => sriov_proto::HEALTHY,
                    Health::Unhealthy(_) => sriov_proto::UNHEALTHY,
                }
                .to_string(),
                topology: match (self.config.exclude_topology, t.device.numa_node) {
                    (false, Some(n)) => Some(dp::TopologyInfo {
                        nodes: vec![dp::NumaNode { id: i64::from(n) }],
                    }),
                    _ => None,
                },
            })
            .collect();
        dp::ListAndWatchResponse { devices }
    }
}

/// What every pool server shares: where things are on the node.
pub struct Context {
    pub sysfs: Sysfs,
    pub dev_root: PathBuf,
    pub devinfo_dir: PathBuf,
    pub metrics: Arc<Metrics>,
}

/// A pool's live state shared between the daemon (writer) and its plugin servers (readers).
pub struct PoolShared {
    pub name: String,
    pub snapshot: watch::Receiver<Arc<PoolSnapshot>>,
    /// Device-information files written by Allocate, removed when the pool stops.
    pub devinfo_files: Mutex<BTreeSet<PathBuf>>,
    pub ctx: Arc<Context>,
}

impl PoolShared {
    pub fn current(&self) -> Arc<PoolSnapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn remember_files(&self, files: impl IntoIterator<Item = PathBuf>) {
        self.devinfo_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(files);
    }

    /// Removes every device-information file this pool wrote.
    pub fn remove_files(&self) {
        let files =
            std::mem::take(&mut *self.devinfo_files.lock().unwrap_or_else(|p| p.into_inner()));
        for f in files {
            if let Err(e) = sriov::devinfo::remove_file(&f) {
                tracing::warn!(pool = %self.name, "{e}");
            }
        }
    }
}
