//! Allocate and GetPreferredAllocation on a pool snapshot: the decisions, without gRPC.

use crate::pool::{Context, PoolSnapshot};
use sriov::allocation::{self, Candidate};
use sriov::devinfo::{self, AllocatedDevice, DevInfoError, DeviceNode};
use sriov::health::Health;
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
    #[error(transparent)]
    DevInfo(#[from] DevInfoError),
}

impl AllocateError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocateError::UnknownDevice { .. } => "unknown_device",
            AllocateError::Unhealthy { .. } => "unhealthy",
            AllocateError::NoIommuGroup { .. } => "no_iommu_group",
            AllocateError::Empty => "empty",
            AllocateError::DevInfo(_) => "devinfo",
        }
    }
}

/// What one container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerAllocation {
    pub envs: BTreeMap<String, String>,
    pub devices: Vec<DeviceNode>,
    /// Device-information files to write, one per device.
    pub devinfo: Vec<AllocatedDevice>,
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
    let rdma = snapshot.config.is_rdma();
    let mut devices = Vec::with_capacity(ids.len());
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
        let d = devinfo::resolve(&ctx.sysfs, tracked.device.pci, tracked.device.pf_pci, rdma);
        if d.is_vfio() && d.iommu_group.is_none() {
            return Err(AllocateError::NoIommuGroup { id: id.clone() });
        }
        devices.push(d);
    }
    Ok(ContainerAllocation {
        envs: devinfo::envs(&pool, &snapshot.config.additional_info, &devices),
        devices: devinfo::device_nodes(&ctx.dev_root, &devices, snapshot.config.need_vhost_net()),
        devinfo: devices,
    })
}

/// Writes the device-information files of a planned allocation; returns their paths.
pub fn write_devinfo(
    pool: &str,
    ctx: &Context,
    a: &ContainerAllocation,
) -> Result<Vec<PathBuf>, AllocateError> {
    a.devinfo
        .iter()
        .map(|d| devinfo::write_file(&ctx.devinfo_dir, pool, d).map_err(AllocateError::from))
        .collect()
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
            id: t.device.pci.to_string(),
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
