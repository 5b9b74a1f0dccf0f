//! Allocate and GetPreferredAllocation on a pool: the decisions and the device-information
//! files, without gRPC (the gRPC edge maps [`AllocateError`] to a status, once).

use crate::pool::{Context, PoolShared, PoolSnapshot};
use sriov::allocation::{self, Candidate};
use sriov::config::DeviceType;
use sriov::devinfo::{self, AllocatedDevice, DevInfoError, DeviceNode};
use sriov::health::Health;
use sriov::names::PciAddress;
use sriov::vdpa::VdpaDevice;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("device {id:?} is not in pool {pool}")]
    UnknownDevice { pool: String, id: String },
    #[error("device {id} of pool {pool} is unhealthy: {reason}")]
    Unhealthy {
        pool: String,
        id: String,
        reason: String,
    },
    #[error("device {id} is bound to vfio-pci but has no IOMMU group in sysfs")]
    NoIommuGroup { id: String },
    #[error("no devices requested")]
    Empty,
    /// Reading the device's current state failed, or the device is gone.
    #[error("{0}")]
    Resolve(DevInfoError),
    /// Writing a device-information file failed (every file of the call was removed again).
    #[error("{0}")]
    Write(DevInfoError),
    /// `--use-cdi`: the pool's CDI spec could not be brought up to date for these devices.
    #[error("{0}")]
    Cdi(sriov::cdi::CdiError),
}

impl AllocateError {
    /// Every [`AllocateError::reason`], for metrics at 0 from the start.
    pub const REASONS: [&'static str; 8] = [
        "unknown_device",
        "unhealthy",
        "no_iommu_group",
        "empty",
        "device_gone",
        "sysfs",
        "devinfo",
        "cdi",
    ];

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocateError::UnknownDevice { .. } => "unknown_device",
            AllocateError::Unhealthy { .. } => "unhealthy",
            AllocateError::NoIommuGroup { .. } => "no_iommu_group",
            AllocateError::Empty => "empty",
            AllocateError::Resolve(DevInfoError::Gone { .. }) => "device_gone",
            AllocateError::Resolve(_) => "sysfs",
            AllocateError::Write(_) => "devinfo",
            AllocateError::Cdi(_) => "cdi",
        }
    }

    /// The device that is gone from sysfs, if that is the error.
    pub fn gone(&self) -> Option<PciAddress> {
        match self {
            AllocateError::Resolve(DevInfoError::Gone { pci }) => Some(*pci),
            _ => None,
        }
    }
}

/// What one container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerAllocation {
    pub envs: BTreeMap<String, String>,
    pub devices: Vec<DeviceNode>,
    /// The devices as resolved now, one per requested ID.
    pub devinfo: Vec<AllocatedDevice>,
    /// Each device's vDPA device (pools with `vdpaType`), parallel to `devinfo`.
    pub vdpa: Vec<Option<VdpaDevice>>,
    /// Whether device-information files are written: netDevice pools only (upstream writes
    /// none for accelerator and auxNetDevice pools).
    pub write_devinfo: bool,
}

/// Checks the IDs and reads what each device is right now. Nothing is written.
pub fn plan(
    snapshot: &PoolSnapshot,
    ctx: &Context,
    ids: &[String],
) -> Result<ContainerAllocation, AllocateError> {
    if ids.is_empty() {
        return Err(AllocateError::Empty);
    }
    let pool = snapshot.full_name();
    let device_type = snapshot.config.device_type;
    let mut devices = Vec::with_capacity(ids.len());
    let mut vdpa = Vec::with_capacity(ids.len());
    for id in ids {
        let tracked = snapshot
            .device(id)
            .ok_or_else(|| AllocateError::UnknownDevice {
                pool: pool.clone(),
                id: id.clone(),
            })?;
        if let Health::Unhealthy(why) = &tracked.health {
            return Err(AllocateError::Unhealthy {
                pool: pool.clone(),
                id: id.clone(),
                reason: why.to_string(),
            });
        }
        if ctx.dra_prepared.borrow().contains(&tracked.device.pci) {
            return Err(AllocateError::Unhealthy {
                pool: pool.clone(),
                id: id.clone(),
                reason: "it is prepared for a DRA claim".into(),
            });
        }
        let t = &tracked.device;
        // isRdma and needVhostNet count for the selector object that took the device, as
        // upstream builds each device's info providers from it.
        let selector = snapshot
            .config
            .matching_selector(t)
            .map(|i| &snapshot.config.selectors[i]);
        let rdma = selector.is_some_and(|s| s.is_rdma);
        let mut d = match t.aux() {
            Some(aux) => sriov::aux_device::resolve(&ctx.sysfs, &aux.name, t.pci, rdma),
            None => devinfo::resolve(&ctx.sysfs, t.pci, t.pf_pci, rdma),
        }
        .map_err(AllocateError::Resolve)?;
        if d.is_vfio() && d.iommu_group.is_none() {
            return Err(AllocateError::NoIommuGroup { id: id.clone() });
        }
        d.need_vhost_net = selector.is_some_and(|s| s.need_vhost_net);
        vdpa.push(match selector.and_then(|s| s.vdpa_type) {
            None => None,
            Some(want) => Some(
                sriov::vdpa::resolve(&ctx.sysfs, &ctx.dev_root, t.pci, want)
                    .map_err(AllocateError::Resolve)?,
            ),
        });
        devices.push(d);
    }
    let info = devinfo::PoolInfo {
        additional_info: snapshot.config.additional_info.as_ref(),
        vhost_net: devices.iter().any(|d| d.need_vhost_net)
            && devinfo::vhost_net_available(&ctx.dev_root),
        dev_root: &ctx.dev_root,
    };
    let envs = match device_type {
        DeviceType::AuxNetDevice => {
            let named: Vec<(&str, AllocatedDevice)> = ids
                .iter()
                .map(String::as_str)
                .zip(devices.iter().cloned())
                .collect();
            sriov::aux_device::envs(&pool, &info, &named)
        }
        _ => sriov::vdpa::with_info(
            devinfo::envs(&pool, &info, &devices),
            &pool,
            &devices,
            &vdpa,
        ),
    };
    let mut nodes = devinfo::device_nodes(&info, &devices);
    sriov::vdpa::add_device_nodes(&mut nodes, &ctx.dev_root, &vdpa);
    Ok(ContainerAllocation {
        envs,
        devices: nodes,
        devinfo: devices,
        vdpa,
        write_devinfo: device_type == DeviceType::NetDevice,
    })
}

/// One Allocate call: plans every container first (nothing is written unless all are valid),
/// then writes the device-information files, each remembered by the pool as soon as it exists
/// (removed when the pool stops). If one cannot be written, every file this call wrote is
/// removed again and the call fails.
pub fn allocate(
    pool: &PoolShared,
    containers: &[Vec<String>],
) -> Result<Vec<ContainerAllocation>, AllocateError> {
    let snapshot = pool.current();
    let plans = containers
        .iter()
        .map(|ids| plan(&snapshot, &pool.ctx, ids))
        .collect::<Result<Vec<_>, _>>()?;
    // The spec must describe the devices as they are now before a runtime reads it.
    let fresh: Vec<AllocatedDevice> = plans.iter().flat_map(|p| p.devinfo.clone()).collect();
    crate::cdi::sync(pool, &fresh).map_err(AllocateError::Cdi)?;
    let mut written: Vec<PathBuf> = Vec::new();
    let files = plans
        .iter()
        .filter(|p| p.write_devinfo)
        .flat_map(|p| p.devinfo.iter().zip(&p.vdpa));
    for (d, vdpa) in files {
        let result = match vdpa {
            Some(v) => sriov::vdpa::write_file(&pool.ctx.devinfo_dir, &pool.name, d, v),
            None => devinfo::write_file(&pool.ctx.devinfo_dir, &pool.name, d),
        };
        match result {
            Ok(path) => {
                pool.remember_files([path.clone()]);
                written.push(path);
            }
            Err(e) => {
                pool.remove_files_of(&written);
                return Err(AllocateError::Write(e));
            }
        }
    }
    Ok(plans)
}

/// GetPreferredAllocation for one container: only healthy pool devices are candidates.
pub fn preferred(
    snapshot: &PoolSnapshot,
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Vec<String> {
    let candidates: Vec<Candidate> = snapshot
        .devices
        .iter()
        .filter(|t| t.health.is_healthy())
        .map(|t| Candidate {
            id: t.device.id(),
            pf: t.device.pf_pci.to_string(),
            numa: t.device.numa_node,
        })
        .collect();
    allocation::preferred(
        &candidates,
        allocation::Request {
            available,
            must_include,
            size,
        },
        snapshot.config.allocation_policy,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::{pool_with, vf};
    use std::os::unix::fs::symlink;

    /// A VF whose `driver` link cannot be read (a file where the link should be: readlink
    /// fails) is an error, not a kernel VF without device nodes; nothing is written.
    #[test]
    fn an_unreadable_driver_link_fails_the_allocation() {
        let (tmp, pool, _events) = pool_with(&[vf(0), vf(1)]);
        let dev = tmp.path().join("sys/bus/pci/devices/0000:3b:02.1");
        std::fs::remove_file(dev.join("driver")).unwrap();
        std::fs::write(dev.join("driver"), "").unwrap();
        let e = allocate(&pool, &[vec!["0000:3b:02.0".into(), "0000:3b:02.1".into()]]).unwrap_err();
        assert_eq!(e.reason(), "sysfs");
        assert!(
            e.to_string().contains("0000:3b:02.1") && e.to_string().contains("driver"),
            "{e}"
        );
        assert!(
            !tmp.path().join("devinfo").exists()
                || std::fs::read_dir(tmp.path().join("devinfo"))
                    .unwrap()
                    .next()
                    .is_none()
        );
        // A device whose folder vanished is gone.
        std::fs::remove_dir_all(&dev).unwrap();
        let e = allocate(&pool, &[vec!["0000:3b:02.1".into()]]).unwrap_err();
        assert_eq!(
            (e.reason(), e.gone().map(|p| p.to_string())),
            ("device_gone", Some("0000:3b:02.1".into()))
        );
    }

    /// The second file cannot be written: the first one goes again, and none is remembered.
    /// Written files are remembered and removed when the pool stops.
    #[test]
    fn a_failed_write_rolls_back_and_stop_removes_the_rest() {
        let (tmp, pool, _events) = pool_with(&[vf(0), vf(1)]);
        let dir = tmp.path().join("devinfo");
        std::fs::create_dir_all(dir.join("intel.com-net-0000:3b:02.1-device.json")).unwrap();
        std::fs::write(dir.join("keep"), "").unwrap();
        let e = allocate(
            &pool,
            &[vec!["0000:3b:02.0".into()], vec!["0000:3b:02.1".into()]],
        )
        .unwrap_err();
        assert_eq!(e.reason(), "devinfo");
        assert!(
            !dir.join("intel.com-net-0000:3b:02.0-device.json").exists(),
            "rolled back"
        );
        assert!(pool.devinfo_files.lock().unwrap().is_empty());
        std::fs::remove_dir(dir.join("intel.com-net-0000:3b:02.1-device.json")).unwrap();
        let done = allocate(
            &pool,
            &[vec!["0000:3b:02.0".into()], vec!["0000:3b:02.1".into()]],
        )
        .unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].envs["PCIDEVICE_INTEL_COM_NET"], "0000:3b:02.1");
        assert_eq!(pool.devinfo_files.lock().unwrap().len(), 2);
        pool.remove_files();
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["keep"]);
    }

    #[test]
    fn vfio_devices_get_their_group_read_now() {
        let (tmp, pool, _events) = pool_with(&[vf(0)]);
        let dev = tmp.path().join("sys/bus/pci/devices/0000:3b:02.0");
        std::fs::remove_file(dev.join("driver")).unwrap();
        symlink("../../../bus/pci/drivers/vfio-pci", dev.join("driver")).unwrap();
        let e = allocate(&pool, &[vec!["0000:3b:02.0".into()]]).unwrap_err();
        assert_eq!(e.reason(), "no_iommu_group");
        symlink("../../../kernel/iommu_groups/77", dev.join("iommu_group")).unwrap();
        let a = allocate(&pool, &[vec!["0000:3b:02.0".into()]]).unwrap();
        assert!(a[0]
            .devices
            .iter()
            .any(|n| n.container_path == "/dev/vfio/77"));
    }

    /// A pool of two selector objects: `needVhostNet` belongs to the second only, so only its
    /// device gets the `vhost` entry and nodes (upstream pkg/netdevice/pciNetDevice.go
    /// `NewPciNetDevice` builds each device's providers from the selector that took it).
    #[test]
    fn need_vhost_net_counts_per_selector_object() {
        use sriov::health::TrackedDevice;
        let tmp = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (vf(0), vf(1));
        b.driver = Some("vfio-pci".into());
        a.driver = Some("iavf".into());
        for (d, driver) in [(&a, "iavf"), (&b, "vfio-pci")] {
            let dir = tmp
                .path()
                .join("sys/bus/pci/devices")
                .join(d.pci.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            symlink(
                format!("../../../bus/pci/drivers/{driver}"),
                dir.join("driver"),
            )
            .unwrap();
        }
        let b_dir = tmp
            .path()
            .join("sys/bus/pci/devices")
            .join(b.pci.to_string());
        symlink("../../../kernel/iommu_groups/9", b_dir.join("iommu_group")).unwrap();
        let dev = tmp.path().join("dev");
        for n in ["vhost-net", "net/tun", "vfio/vfio", "vfio/9"] {
            std::fs::create_dir_all(dev.join(n).parent().unwrap()).unwrap();
            std::fs::write(dev.join(n), "").unwrap();
        }
        let config = sriov::config::Config::parse(
            r#"{"resourceList": [{"resourceName": "mixed", "selectors": [
                {"drivers": ["iavf"]}, {"drivers": ["vfio-pci"], "needVhostNet": true}]}]}"#,
            "intel.com",
        )
        .unwrap()
        .resources
        .unwrap()
        .remove(0);
        let snapshot = PoolSnapshot {
            config,
            devices: [a, b]
                .into_iter()
                .map(|device| TrackedDevice {
                    device,
                    health: Health::Healthy,
                })
                .collect(),
        };
        let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = Context {
            sysfs: sriov::sysfs::Sysfs::new(tmp.path().join("sys")),
            dev_root: dev.clone(),
            devinfo_dir: tmp.path().join("devinfo"),
            metrics: Default::default(),
            events,
            cdi: None,
            dra_prepared: tokio::sync::watch::channel(Default::default()).0,
        };
        let ids = ["0000:3b:02.0".to_string(), "0000:3b:02.1".to_string()];
        let p = plan(&snapshot, &ctx, &ids).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&p.envs["PCIDEVICE_INTEL_COM_MIXED_INFO"]).unwrap();
        assert!(info[&ids[0]].get("vhost").is_none(), "{info}");
        assert_eq!(
            info[&ids[1]]["vhost"],
            serde_json::json!({"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"})
        );
        let nodes: Vec<&str> = p
            .devices
            .iter()
            .map(|n| n.container_path.as_str())
            .collect();
        assert_eq!(
            nodes,
            [
                "/dev/vfio/vfio",
                "/dev/vfio/9",
                "/dev/vhost-net",
                "/dev/net/tun"
            ]
        );
    }
}
