//! A pool as the gRPC side sees it: an immutable snapshot (config + devices with health),
//! replaced as a whole by the daemon and read by the plugin server without locks.

use crate::daemon::Event;
use crate::metrics::{ErrorKind, Metrics};
use sriov::config::ResourceConfig;
use sriov::health::{Health, TrackedDevice};
use sriov::names::PciAddress;
use sriov::sysfs::Sysfs;
use sriov_proto::deviceplugin::v1beta1 as dp;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

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

    /// The device with this ID (a PCI address; devices are sorted, so this is a binary search),
    /// or in an auxNetDevice pool its auxiliary device name.
    pub fn device(&self, id: &str) -> Option<&TrackedDevice> {
        if self.config.device_type == sriov::config::DeviceType::AuxNetDevice {
            return self.devices.iter().find(|t| t.device.has_id(id));
        }
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

    /// What ListAndWatch sends: every device, its health (Unhealthy too when it is prepared for
    /// a DRA claim, one of `dra_prepared`) and (unless `excludeTopology`) its NUMA node.
    pub fn list_response(&self, dra_prepared: &BTreeSet<PciAddress>) -> dp::ListAndWatchResponse {
        let devices = self
            .devices
            .iter()
            .map(|t| dp::Device {
                id: t.device.id(),
                health: match t.health {
                    Health::Healthy if !dra_prepared.contains(&t.device.pci) => {
                        sriov_proto::HEALTHY
                    }
                    _ => sriov_proto::UNHEALTHY,
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

/// What every pool server shares: where things are on the node, and the way back to the main
/// loop (a device found gone, a plugin-watcher registration status).
pub struct Context {
    pub sysfs: Sysfs,
    pub dev_root: PathBuf,
    pub devinfo_dir: PathBuf,
    pub metrics: Arc<Metrics>,
    pub events: mpsc::UnboundedSender<Event>,
    /// `--use-cdi`: where pool specs go.
    pub cdi: Option<crate::cdi::CdiSettings>,
    /// Devices prepared for DRA claims (`--mode both`): Unhealthy at the device plugin, never
    /// allocated by it.
    pub dra_prepared: watch::Sender<BTreeSet<PciAddress>>,
}

/// A pool's live state shared between the daemon (writer) and its plugin servers (readers).
pub struct PoolShared {
    pub name: String,
    pub snapshot: watch::Receiver<Arc<PoolSnapshot>>,
    /// Device-information files written by Allocate, removed when the pool stops.
    pub devinfo_files: Mutex<BTreeSet<PathBuf>>,
    /// The CDI spec file on disk and what it says (`--use-cdi`).
    pub cdi_spec: Mutex<Option<(String, sriov::cdi::Spec)>>,
    pub ctx: Arc<Context>,
}

impl PoolShared {
    pub fn current(&self) -> Arc<PoolSnapshot> {
        self.snapshot.borrow().clone()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.devinfo_files.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn remember_files(&self, files: impl IntoIterator<Item = PathBuf>) {
        self.files().extend(files);
    }

    /// Removes these device-information files (an allocation's rollback) and forgets them.
    pub fn remove_files_of(&self, files: &[PathBuf]) {
        let mut remembered = self.files();
        for f in files {
            remembered.remove(f);
        }
        drop(remembered);
        self.remove(files.iter());
    }

    /// Removes every device-information file this pool wrote.
    pub fn remove_files(&self) {
        let files = std::mem::take(&mut *self.files());
        self.remove(files.iter());
    }

    fn remove<'a>(&self, files: impl Iterator<Item = &'a PathBuf>) {
        for f in files {
            if let Err(e) = sriov::devinfo::remove_file(f) {
                self.ctx.metrics.error(ErrorKind::Devinfo);
                tracing::warn!(pool = %self.name, "{e}");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sriov::health::{Health, TrackedDevice};
    use sriov::names::PciAddress;
    use sriov::pools::PoolDevice;
    use std::os::unix::fs::symlink;

    /// VF `k` of PF 0000:3b:00.0, bound to iavf.
    pub(crate) fn vf(k: u8) -> PoolDevice {
        let pci = |s: String| PciAddress::parse(&s).unwrap();
        PoolDevice {
            pci: pci(format!("0000:3b:02.{k}")),
            vendor: 0x8086,
            device: 0x154c,
            driver: Some("iavf".into()),
            pf_pci: pci("0000:3b:00.0".into()),
            pf_name: Some("ens1f0".into()),
            vf_index: Some(u32::from(k)),
            netdev: None,
            numa_node: None,
            iommu_group: None,
            link_type: None,
            rdma: false,
            acpi_index: None,
            p_key: None,
            ddp_profile: None,
            kind: Default::default(),
            vdpa: None,
        }
    }

    /// Pool `intel.com/net` of `devices` (Healthy) over a sysfs tree in a temporary folder
    /// (each device's folder with its `driver` link), device-information files in
    /// `<tmp>/devinfo`. Also returns the receiver of the events sent to the main loop.
    pub(crate) fn pool_with(
        devices: &[PoolDevice],
    ) -> (
        tempfile::TempDir,
        PoolShared,
        mpsc::UnboundedReceiver<Event>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        for d in devices {
            let dir = tmp
                .path()
                .join("sys/bus/pci/devices")
                .join(d.pci.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            symlink("../../../bus/pci/drivers/iavf", dir.join("driver")).unwrap();
        }
        let config = sriov::config::Config::parse(
            r#"{"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}"#,
            "intel.com",
        )
        .unwrap()
        .resources
        .unwrap()
        .remove(0);
        let snapshot = PoolSnapshot {
            config,
            devices: devices
                .iter()
                .map(|d| TrackedDevice {
                    device: d.clone(),
                    health: Health::Healthy,
                })
                .collect(),
        };
        let (events, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Context {
            sysfs: Sysfs::new(tmp.path().join("sys")),
            dev_root: tmp.path().join("dev"),
            devinfo_dir: tmp.path().join("devinfo"),
            metrics: Arc::new(Metrics::default()),
            events,
            cdi: None,
            dra_prepared: watch::channel(BTreeSet::new()).0,
        });
        let (_tx, snapshot) = watch::channel(Arc::new(snapshot));
        let pool = PoolShared {
            name: "intel.com/net".into(),
            snapshot,
            devinfo_files: Default::default(),
            cdi_spec: Default::default(),
            ctx,
        };
        (tmp, pool, rx)
    }
}
