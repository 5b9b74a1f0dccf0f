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
use sriov::names::PciAddress;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::owned_dir::FileError;
use sriov::state::{StateError, VfLock, VfRecord};
use sriov::vf_attach::{self, AttachError};
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
}

impl Problem {
    fn code(&self) -> ErrorCode {
        match self {
            Problem::Restore { error, .. } => attach_code(error),
            Problem::State { .. } | Problem::Record(_) | Problem::DeviceInfo { .. } => {
                ErrorCode::Io
            }
            Problem::Ipam(e) => e.code,
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
