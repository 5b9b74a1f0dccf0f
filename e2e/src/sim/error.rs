//! Errors of the simulated node. Every message names what failed and on which
//! path or command, so a failing end-to-end test explains itself.

use std::path::PathBuf;

/// Result alias of the `sim` module.
pub type Result<T, E = SimError> = std::result::Result<T, E>;

/// What can go wrong while building, changing or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Namespaces, mounts and links need root.
    #[error("sriov-lab needs root (running as uid {uid})")]
    NotRoot { uid: u32 },

    /// The lab name is not `^[a-z0-9][a-z0-9-]{0,23}$`.
    #[error("invalid lab name {name:?}: {reason} (expected ^[a-z0-9][a-z0-9-]{{0,23}}$)")]
    InvalidName { name: String, reason: &'static str },

    /// The requested topology cannot be built (limits, inconsistent counts).
    #[error("invalid lab spec: {0}")]
    InvalidSpec(String),

    /// No lab of that name exists (no `/run/sriov-lab/NAME/lab.json`).
    #[error("no lab named {name:?} (missing {path})")]
    NoSuchLab { name: String, path: PathBuf },

    /// `--pf` matched neither a PF netdev nor a PF PCI address.
    #[error("lab {lab:?} has no PF {pf:?} (known: {known})")]
    NoSuchPf {
        lab: String,
        pf: String,
        known: String,
    },

    /// Like the kernel's `-ERANGE` for a write above `sriov_totalvfs`.
    #[error("ERANGE: PF {pf} accepts 0..={total} VFs, not {requested}")]
    NumVfsOutOfRange {
        pf: String,
        requested: u32,
        total: u32,
    },

    /// Like the kernel's `-EBUSY` for a non-zero to different non-zero change.
    #[error(
        "EBUSY: PF {pf} has {current} VFs enabled, cannot change to {requested}: write 0 first"
    )]
    NumVfsBusy {
        pf: String,
        current: u32,
        requested: u32,
    },

    /// Like the kernel's `-EINVAL` for text that is not a number.
    #[error("EINVAL: PF {pf}: {raw:?} is not a number")]
    NumVfsInvalid { pf: String, raw: String },

    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A system call (mount, setns, fanotify, ...) failed.
    #[error("{action} {target}: {source}")]
    Sys {
        action: &'static str,
        target: String,
        #[source]
        source: nix::Error,
    },

    /// A helper program could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// A helper program exited with an error.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// `lab.json` could not be read or written.
    #[error("bad lab description {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl SimError {
    /// Shorthand for [`SimError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SimError::Io {
            action,
            path,
            source,
        }
    }

    /// Shorthand for [`SimError::Sys`].
    pub(crate) fn sys(
        action: &'static str,
        target: impl ToString,
    ) -> impl FnOnce(nix::Error) -> Self {
        let target = target.to_string();
        move |source| SimError::Sys {
            action,
            target,
            source,
        }
    }

    /// True for the two refusals the kernel gives to a `sriov_numvfs` write.
    pub fn is_numvfs_refusal(&self) -> bool {
        matches!(
            self,
            SimError::NumVfsOutOfRange { .. }
                | SimError::NumVfsBusy { .. }
                | SimError::NumVfsInvalid { .. }
        )
    }
}
