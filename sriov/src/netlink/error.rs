//! Errors of the netlink dataplane.
//!
//! Kernel answers keep their errno ([`nix::errno::Errno`]) so callers can
//! match `ENODEV`, `EEXIST`, `EOPNOTSUPP`...; the `Display` text names the
//! operation and the object, e.g. `set mtu 9000 on ens1f0v3: Invalid argument (EINVAL)`.

use std::fmt;

use nix::errno::Errno;

/// `Result` with [`NetlinkError`] as the default error.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// Everything that can go wrong talking rtnetlink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The kernel refused a request.
    #[error("{op} on {object}: {}{}", errno_text(*errno), ext_ack_text(ext_ack))]
    Kernel {
        /// What we asked for, e.g. `set mtu 9000`.
        op: String,
        /// The link (name when known, else `ifindex N`) or other object.
        object: String,
        errno: Errno,
        /// The kernel's extended ACK message, when it gave one.
        ext_ack: Option<String>,
    },
    /// The PF driver refused one VF setting (each setting is its own request,
    /// so the failing knob is always known).
    #[error("VF {vf} of {pf}: {error}")]
    VfSetting {
        /// The PF (name when known, else `ifindex N`).
        pf: String,
        vf: u32,
        error: VfSettingError,
    },
    /// The PF reports no such VF (or is no SR-IOV PF at all).
    #[error("{pf} has no VF {vf} ({})", match num_vfs {
        Some(n) => format!("it reports {n} VFs"),
        None => "it is not an SR-IOV PF".to_string(),
    })]
    NoSuchVf {
        pf: String,
        vf: u32,
        num_vfs: Option<u32>,
    },
    /// Opening or entering a network namespace failed.
    #[error("{op} {path}: {}", errno_text(*errno))]
    Netns {
        op: &'static str,
        path: String,
        errno: Errno,
    },
    /// The netlink socket itself failed (socket, bind, send, recv).
    #[error("netlink socket: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel sent bytes we could not decode.
    #[error("malformed {what} from the kernel: {reason}")]
    Decode { what: &'static str, reason: String },
    /// The kernel's answer did not follow the protocol (missing reply...).
    #[error("netlink protocol error during {op}: {reason}")]
    Protocol { op: String, reason: String },
    /// The caller passed a value we refuse before asking the kernel.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl NetlinkError {
    /// The errno, when the kernel (or a namespace syscall) returned one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Kernel { errno, .. } | Self::Netns { errno, .. } => Some(*errno),
            Self::VfSetting { error, .. } => Some(error.errno),
            Self::Socket { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// True when the object is gone (`ENODEV`; a link lookup by name or index
    /// that found nothing).
    pub fn is_no_device(&self) -> bool {
        self.errno() == Some(Errno::ENODEV)
    }
}

/// One per-VF knob set through the PF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VfSetting {
    Mac,
    Vlan,
    SpoofCheck,
    Trust,
    /// `min_tx_rate` alone (max is 0).
    MinTxRate,
    /// `max_tx_rate` alone (min is 0), or both 0 (clearing limits).
    MaxTxRate,
    /// Both rates at once: the kernel takes them in one attribute, so a
    /// failure cannot be pinned on either.
    TxRates,
    LinkState,
}

impl fmt::Display for VfSetting {
    /// The names used by sriov-cni's NAD fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mac => "mac",
            Self::Vlan => "vlan",
            Self::SpoofCheck => "spoofchk",
            Self::Trust => "trust",
            Self::MinTxRate => "min_tx_rate",
            Self::MaxTxRate => "max_tx_rate",
            Self::TxRates => "min_tx_rate/max_tx_rate",
            Self::LinkState => "link_state",
        })
    }
}

/// A VF setting the PF driver refused, e.g.
/// `min_tx_rate: the driver rejects it (EINVAL)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {} ({errno:?}){}", vf_hint(*errno), ext_ack_text(ext_ack))]
pub struct VfSettingError {
    pub setting: VfSetting,
    pub errno: Errno,
    pub ext_ack: Option<String>,
}

impl VfSettingError {
    /// True when the driver does not implement this knob at all (as opposed
    /// to rejecting the value): callers may choose to skip such settings.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.errno, Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT)
    }
}

/// What an errno usually means when a PF driver returns it for a VF knob
/// (igb: EINVAL for min_tx_rate, EOPNOTSUPP for link_state, EPROTONOSUPPORT
/// for 802.1ad).
fn vf_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EOPNOTSUPP => "not supported by this driver",
        Errno::EPROTONOSUPPORT => "this protocol is not supported by this driver",
        Errno::EINVAL => "the driver rejects it",
        Errno::ERANGE => "the value is out of range for this driver",
        Errno::EBUSY | Errno::EAGAIN => "the device is busy, try again",
        Errno::EPERM => "not permitted (needs CAP_NET_ADMIN in the PF's network namespace)",
        Errno::ENODEV => "the PF is gone",
        Errno::EADDRNOTAVAIL => "address not available",
        other => other.desc(),
    }
}

/// `Invalid argument (EINVAL)`.
pub(crate) fn errno_text(errno: Errno) -> String {
    format!("{} ({errno:?})", errno.desc())
}

fn ext_ack_text(ext_ack: &Option<String>) -> String {
    match ext_ack {
        Some(msg) => format!(": {msg}"),
        None => String::new(),
    }
}

/// A failure at the socket layer, before the operation's context is known.
/// Each public operation turns it into a [`NetlinkError`] naming itself.
#[derive(Debug)]
pub(crate) enum RawError {
    Kernel {
        errno: Errno,
        ext_ack: Option<String>,
    },
    Other(NetlinkError),
}

impl RawError {
    pub(crate) fn decode(what: &'static str, reason: impl fmt::Display) -> Self {
        Self::Other(NetlinkError::Decode {
            what,
            reason: reason.to_string(),
        })
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self::Other(NetlinkError::Protocol {
            op: String::new(),
            reason: reason.into(),
        })
    }

    /// Name the operation and its object.
    pub(crate) fn context(self, op: impl Into<String>, object: impl Into<String>) -> NetlinkError {
        match self {
            Self::Kernel { errno, ext_ack } => NetlinkError::Kernel {
                op: op.into(),
                object: object.into(),
                errno,
                ext_ack,
            },
            Self::Other(NetlinkError::Protocol { reason, .. }) => NetlinkError::Protocol {
                op: format!("{} on {}", op.into(), object.into()),
                reason,
            },
            Self::Other(e) => e,
        }
    }
}

impl From<NetlinkError> for RawError {
    fn from(e: NetlinkError) -> Self {
        Self::Other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_reads_like_a_sentence() {
        let e = NetlinkError::Kernel {
            op: "set mtu 9000".into(),
            object: "ens1f0v3".into(),
            errno: Errno::EINVAL,
            ext_ack: None,
        };
        assert_eq!(
            e.to_string(),
            "set mtu 9000 on ens1f0v3: Invalid argument (EINVAL)"
        );
        assert_eq!(e.errno(), Some(Errno::EINVAL));
    }

    #[test]
    fn ext_ack_is_appended() {
        let e = RawError::Kernel {
            errno: Errno::EEXIST,
            ext_ack: Some("name in use".into()),
        }
        .context("rename to eth0", "veth1");
        assert_eq!(
            e.to_string(),
            "rename to eth0 on veth1: File exists (EEXIST): name in use"
        );
    }

    #[test]
    fn vf_setting_error_names_setting_and_hint() {
        let e = VfSettingError {
            setting: VfSetting::MinTxRate,
            errno: Errno::EINVAL,
            ext_ack: None,
        };
        assert_eq!(e.to_string(), "min_tx_rate: the driver rejects it (EINVAL)");
        assert!(!e.is_unsupported());
        let e = VfSettingError {
            setting: VfSetting::LinkState,
            errno: Errno::EOPNOTSUPP,
            ext_ack: None,
        };
        assert_eq!(
            e.to_string(),
            "link_state: not supported by this driver (EOPNOTSUPP)"
        );
        assert!(e.is_unsupported());
        let outer = NetlinkError::VfSetting {
            pf: "ens1f0".into(),
            vf: 3,
            error: e,
        };
        assert_eq!(
            outer.to_string(),
            "VF 3 of ens1f0: link_state: not supported by this driver (EOPNOTSUPP)"
        );
        assert_eq!(outer.errno(), Some(Errno::EOPNOTSUPP));
    }

    #[test]
    fn no_such_vf_text() {
        let e = NetlinkError::NoSuchVf {
            pf: "veth0".into(),
            vf: 2,
            num_vfs: None,
        };
        assert_eq!(e.to_string(), "veth0 has no VF 2 (it is not an SR-IOV PF)");
        let e = NetlinkError::NoSuchVf {
            pf: "eth0".into(),
            vf: 9,
            num_vfs: Some(4),
        };
        assert_eq!(e.to_string(), "eth0 has no VF 9 (it reports 4 VFs)");
    }
}
