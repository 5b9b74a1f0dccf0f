//! The one way a VF goes back: ADD's cleanup of a dead pod's VF, ADD's rollback, DEL and GC all
//! call [`release`]. It restores the VF from its record, removes the device-information file the
//! record says we wrote, and drops the record once the VF is clean (or keeps it as orphaned when
//! the pod's namespace is gone and the netdev went with it).
//!
//! What goes wrong is collected as typed [`Problem`]s and turned into the CNI's error JSON once,
//! by [`Problems::into_error`].

use super::{attach_code, Ctx};
use crate::fault;
use crate::spec::{CniError, ErrorCode};
use crate::upstream::{UpstreamAttachment, UpstreamState};
use sriov::names::PciAddress;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::owned_dir::FileError;
use sriov::state::{Attached, Owner, StateError, VfLock, VfRecord};
use sriov::vf_attach::{self, AttachError};
use std::path::Path;
use std::time::Duration;

/// Something DEL, GC or a rollback could not do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Problem {
    #[error("VF {pci}: {error}")]
    Restore {
        pci: PciAddress,
        #[source]
        error: AttachError,
    },
    #[error("VF {pci}: {error}")]
    State {
        pci: PciAddress,
        #[source]
        error: StateError,
    },
    /// A record that cannot be read (GC lists them all).
    #[error("{0}")]
    Record(StateError),
    #[error("VF {pci}: device-information file: {error}")]
    DeviceInfo {
        pci: PciAddress,
        #[source]
        error: FileError,
    },
    #[error("{0}")]
    Ipam(CniError),
    /// A step that already has its CNI error (reading sriov-cni's files).
    #[error("{0}")]
    Other(CniError),
    /// sriov-cni's files of an attachment taken over.
    #[error("sriov-cni's record {file}: {error}")]
    Upstream {
        file: String,
        #[source]
        error: FileError,
    },
}

impl Problem {
    fn code(&self) -> ErrorCode {
        match self {
            Problem::Restore { error, .. } => attach_code(error),
            Problem::State { .. }
            | Problem::Record(_)
            | Problem::DeviceInfo { .. }
            | Problem::Upstream { .. } => ErrorCode::Io,
            Problem::Ipam(e) | Problem::Other(e) => e.code,
        }
    }
}

/// Every problem of one command, in the order met.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, p: Problem) {
        self.0.push(p);
    }

    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The message: every problem, `; `-separated.
    pub fn message(&self) -> String {
        self.0
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The CNI error: the first problem's code, every problem in the message.
    pub fn into_error(self, prefix: &str) -> CniError {
        let code = self.0.first().map_or(ErrorCode::Dataplane, Problem::code);
        CniError::new(code, format!("{prefix}{}", self.message()))
    }
}

/// How long DEL waits for a VF netdev the kernel is still returning from a dead namespace.
pub(crate) const NETDEV_RETURN_WAIT: Duration = Duration::from_millis(500);

/// Where the VF may be: in the pod (its namespace, if it still exists), and how long to wait for
/// a netdev returning from a dead one.
pub(crate) struct Whereabouts<'a> {
    pub pod_ns: Option<&'a Netns>,
    pub wait: Duration,
}

impl Whereabouts<'_> {
    /// The pod's namespace, opened if it still exists: the one ADD recorded (where the VF went),
    /// else `path` (`CNI_NETNS`).
    pub fn open(path: Option<&std::path::Path>, record: &VfRecord) -> Option<Netns> {
        record
            .owner
            .netns
            .as_deref()
            .into_iter()
            .chain(path)
            .find_map(|p| Netns::open(p).ok())
    }
}

/// Restores the VF of `record`, removes our device-information file, and drops the record once
/// the VF is clean. With the pod's namespace gone and the netdev nowhere, the record is kept as
/// orphaned (the next ADD or GC finishes) and this succeeds: nothing the runtime could retry
/// would help.
pub(crate) fn release(
    ctx: &Ctx,
    record: &VfRecord,
    lock: &VfLock,
    at: Whereabouts<'_>,
) -> Result<(), Problems> {
    let pci = record.pci;
    let mut problems = Problems::default();
    let mut host = NetlinkSocket::new().map_err(|e| {
        let error = AttachError::Netlink {
            step: "open a netlink socket".into(),
            source: e,
        };
        Problems(vec![Problem::Restore { pci, error }])
    })?;
    let report = vf_attach::restore(
        &mut host,
        &ctx.sysfs,
        record,
        at.pod_ns,
        at.wait,
        &mut |step| {
            tracing::debug!("VF {pci}: {} done", step.name());
            fault::point(step.name())
        },
    );
    if report.is_clean() {
        if let Err(error) = super::device_info::remove(ctx, record) {
            problems.push(Problem::DeviceInfo { pci, error });
            return Err(problems);
        }
        fault::point("release-devinfo");
        if let Err(error) = ctx.state.remove(lock) {
            problems.push(Problem::State { pci, error });
            return Err(problems);
        }
        // The MAC is free again once the record is gone (a stale index entry never counts).
        if let Some(mac) = &record.assigned_mac {
            if let Err(error) = ctx.state.release_mac(mac, &pci) {
                tracing::warn!("VF {pci}: {error}");
            }
        }
        return Ok(());
    }
    let only_missing = report.netdev_missing && report.errors.len() == 1;
    if at.pod_ns.is_none() && report.netdev_missing {
        let mut orphan = record.clone();
        orphan.orphaned = true;
        if let Err(error) = ctx.state.save(lock, &orphan) {
            problems.push(Problem::State { pci, error });
        }
        tracing::warn!(
            "VF {pci}: namespace gone and netdev not found; kept as orphaned for the next ADD or GC: {}",
            report
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
        if only_missing && problems.is_empty() {
            return Ok(());
        }
    }
    problems.0.extend(
        report
            .errors
            .into_iter()
            .map(|error| Problem::Restore { pci, error }),
    );
    Err(problems)
}

/// Our record of an attachment upstream sriov-cni made, read against the node as it is now: the
/// VF's PF and drivers from sysfs, whether the PF reports VF settings at all, and the VF's
/// ifindex in the pod (sriov-cni kept none) when the pod still has it under `ifname`. `None` when
/// the VF no longer exists (nothing left to restore).
pub(crate) fn upstream_record(
    ctx: &Ctx,
    a: &UpstreamAttachment,
    container_id: &str,
    ifname: &str,
    netns: Option<&Path>,
    allocation: Option<std::path::PathBuf>,
) -> Result<Option<VfRecord>, AttachError> {
    let loc = match vf_attach::locate(&ctx.sysfs, a.device) {
        Ok(l) => l,
        Err(AttachError::Invalid(why)) => {
            tracing::warn!("VF {}: sriov-cni's attachment left: {why}", a.device);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut host = NetlinkSocket::new().map_err(AttachError::netlink("open a netlink socket"))?;
    let pf_name = (!a.master.is_empty())
        .then(|| a.master.clone())
        .or(loc.pf_name.clone());
    let pf_index = pf_name
        .as_deref()
        .and_then(|n| host.link_by_name(n).ok())
        .map(|l| l.index);
    let owner = Owner {
        network: a.network.clone(),
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns: allocation.or_else(|| netns.map(Path::to_path_buf)),
    };
    let mut record = a.record(
        owner,
        loc.pf_pci,
        pf_index,
        loc.pf_driver.clone(),
        loc.driver.clone(),
    );
    // A PF that reports no VF settings (a stand-in) has none to restore.
    if pf_index.is_none_or(|p| host.pf_vf_info(p, a.vf_id).is_err()) {
        record.original.pf_side = None;
    }
    if let Some(ns) = Whereabouts::open(netns, &record) {
        let pci = a.device.to_string();
        let link = NetlinkSocket::new_in(&ns)
            .and_then(|mut s| s.link_by_name(ifname))
            .ok()
            .filter(|l| l.parent_dev.as_deref().is_none_or(|p| p == pci));
        if let Some(l) = link {
            record.attached = Some(Attached {
                pod_ifindex: Some(l.index),
                rebound_ifindex: None,
                result: None,
                device_info_file: None,
            });
        }
    }
    Ok(Some(record))
}

/// Releases an attachment upstream sriov-cni made, through [`release`], then removes its files
/// as sriov-cni's own DEL would. A VF that is ours now (attached again since) is left alone: only
/// sriov-cni's stale files go.
pub(crate) fn release_upstream(
    ctx: &Ctx,
    up: &UpstreamState,
    a: &UpstreamAttachment,
    container_id: &str,
    ifname: &str,
    netns: Option<&Path>,
) -> Result<(), Problems> {
    let pci = a.device;
    let state = |error| Problems(vec![Problem::State { pci, error }]);
    let lock = ctx.state.lock_vf(pci).map_err(state)?;
    let ours = ctx.state.load(&pci).map_err(state)?;
    if ours.is_none() {
        let allocation = up
            .allocation(&pci)
            .map_err(|e| Problems(vec![Problem::Other(e)]))?;
        let record = upstream_record(ctx, a, container_id, ifname, netns, allocation)
            .map_err(|error| Problems(vec![Problem::Restore { pci, error }]))?;
        if let Some(record) = record {
            let pod_ns = Whereabouts::open(netns, &record);
            let at = Whereabouts {
                wait: if pod_ns.is_some() {
                    Duration::ZERO
                } else {
                    NETDEV_RETURN_WAIT
                },
                pod_ns: pod_ns.as_ref(),
            };
            release(ctx, &record, &lock, at)?;
            tracing::info!("VF {pci}: restored from sriov-cni's record {}", a.file);
        }
    }
    up.remove(a).map_err(|error| {
        Problems(vec![Problem::Upstream {
            file: a.file.clone(),
            error,
        }])
    })
}
