//! The CNI dataplane for one VF: find it ([`locate`]), record how it looks ([`snapshot`]), hand
//! it to a pod ([`attach`]) and put it back exactly as it was ([`restore`]).
//!
//! The order follows what can be undone:
//!
//! 1. PF-side settings, each its own request so a refusal names its knob: VLAN/QoS/proto,
//!    admin MAC, TX rates, spoof check, trust, link state. Any per-VF knob may be unsupported by a
//!    driver (`EOPNOTSUPP`); a knob the pod asked for that the driver refuses fails the ADD with
//!    the knob named, and [`restore`] later touches only knobs that differ from the saved state,
//!    so an unsupported knob that was never changed can never fail a DEL.
//! 2. The netdev: down, MAC, altnames removed (kernel 6.x refuses a move when an altname exists
//!    in the target namespace; they also leak host names into the pod), then one request that
//!    moves it into the pod's netns and names it `CNI_IFNAME` there (a VF called `eth0` or a pod
//!    that already has the VF's node name cannot collide: the kernel then takes `CNI_IFNAME` for
//!    the move itself), MTU.
//!
//! **MAC policy.** With `mac`, the admin MAC is set through the PF (the NIC then enforces it,
//! e.g. against spoofing) and the pod's netdev must carry it too:
//! - PF accepted it: the netdev MAC is set to the same value. Drivers that refuse that while an
//!   admin MAC is set and trust is off (igbvf: `EADDRNOTAVAIL`; it only applies the admin MAC at
//!   probe) get a VF driver rebind (unbind + bind through sysfs), after which the netdev comes
//!   back with the admin MAC.
//! - PF does not implement admin MACs (`EOPNOTSUPP`, e.g. veth stand-ins, some VF types): the
//!   netdev MAC alone is set, and the caller is told ([`AttachOutcome::admin_mac`] is false).
//! - PF rejects the value (`EINVAL`...): the ADD fails naming `mac`.
//!
//! [`restore`] never stops at the first error: it does every step it can and returns them all.

mod attach;
mod locate;
mod restore;
mod verify;

pub use attach::{attach, snapshot, AttachOutcome, PfSettings, PodSettings};
pub use locate::{locate, temp_name, VfLocation};
pub use restore::{restore, RestoreReport, RestoreStep};

use crate::netlink::{Errno, NetlinkError};
use crate::sysfs::SysfsError;

/// A step of [`attach`], reported to the caller's checkpoint hook after it completes (fault
/// injection in tests, tracing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Vlan,
    AdminMac,
    MaxTxRate,
    MinTxRate,
    SpoofCheck,
    Trust,
    LinkState,
    Down,
    Mac,
    /// Inside a rebind: the driver is unbound, the VF has no netdev anywhere.
    Unbind,
    Rebind,
    Altnames,
    /// Moved into the pod and named `CNI_IFNAME` (one request).
    Move,
    Mtu,
}

impl Step {
    /// Kebab-case name (`SRIOV_CNI_FAULT=<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Step::Vlan => "vlan",
            Step::AdminMac => "admin-mac",
            Step::MaxTxRate => "max-tx-rate",
            Step::MinTxRate => "min-tx-rate",
            Step::SpoofCheck => "spoofchk",
            Step::Trust => "trust",
            Step::LinkState => "link-state",
            Step::Down => "down",
            Step::Mac => "mac",
            Step::Unbind => "unbind",
            Step::Rebind => "rebind",
            Step::Altnames => "altnames",
            Step::Move => "move",
            Step::Mtu => "mtu",
        }
    }

    /// Every step, in the order [`attach`] runs them.
    pub const ALL: [Step; 14] = [
        Step::Vlan,
        Step::AdminMac,
        Step::MaxTxRate,
        Step::MinTxRate,
        Step::SpoofCheck,
        Step::Trust,
        Step::LinkState,
        Step::Down,
        Step::Mac,
        Step::Unbind,
        Step::Rebind,
        Step::Altnames,
        Step::Move,
        Step::Mtu,
    ];
}

/// What went wrong, with the step and the setting named. Messages never name the VF itself: the
/// caller puts it in front once, at its boundary (`VF 0000:3b:02.1: ...`).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The PF driver refused a per-VF knob, naming the key and the value, e.g.
    /// `min_tx_rate 10: the igb driver rejects it (EINVAL)`.
    #[error("{setting} {value}: the {driver} driver {} ({errno:?}){}", setting_hint(*errno), ext(ext_ack))]
    Setting {
        /// The netconf field (`vlan`, `vlanProto`, `mac`, `min_tx_rate`, ...).
        setting: &'static str,
        /// The value asked for, as the network config spells it.
        value: String,
        /// The PF's driver.
        driver: String,
        errno: Errno,
        ext_ack: Option<String>,
    },
    /// A kernel operation failed.
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{0}")]
    Sysfs(#[from] SysfsError),
    /// The VF belongs to someone else (another netns holds its netdev).
    #[error("{0}")]
    Busy(String),
    /// The request cannot be met by this VF (the config is wrong for this node), or the device
    /// is not a VF of this node we may hand out.
    #[error("{0}")]
    Invalid(String),
    /// The VF's netdev is nowhere to be found.
    #[error("{0}")]
    Lost(String),
}

impl AttachError {
    pub fn netlink(step: impl Into<String>) -> impl FnOnce(NetlinkError) -> AttachError {
        let step = step.into();
        move |source| AttachError::Netlink { step, source }
    }

    /// The errno behind it, if any.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            AttachError::Setting { errno, .. } => Some(*errno),
            AttachError::Netlink { source, .. } => source.errno(),
            _ => None,
        }
    }
}

fn setting_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EOPNOTSUPP => "does not support it",
        Errno::EPROTONOSUPPORT => "does not support this protocol",
        Errno::EINVAL => "rejects it",
        Errno::ERANGE => "finds the value out of range",
        Errno::EBUSY | Errno::EAGAIN => "stayed busy",
        Errno::EPERM => "refuses it (needs CAP_NET_ADMIN in the PF's namespace)",
        Errno::EADDRNOTAVAIL => "refuses this address",
        other => other.desc(),
    }
}

fn ext(ext_ack: &Option<String>) -> String {
    ext_ack
        .as_ref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_errors_read_like_the_issue() {
        let e = AttachError::Setting {
            setting: "min_tx_rate",
            value: "10".into(),
            driver: "igb".into(),
            errno: Errno::EINVAL,
            ext_ack: None,
        };
        assert_eq!(
            e.to_string(),
            "min_tx_rate 10: the igb driver rejects it (EINVAL)"
        );
        let e = AttachError::Setting {
            setting: "vlan",
            value: "100".into(),
            driver: "veth".into(),
            errno: Errno::EOPNOTSUPP,
            ext_ack: None,
        };
        assert_eq!(
            e.to_string(),
            "vlan 100: the veth driver does not support it (EOPNOTSUPP)"
        );
        assert_eq!(e.errno(), Some(Errno::EOPNOTSUPP));
    }

    #[test]
    fn step_names_are_unique() {
        let mut names: Vec<_> = Step::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Step::ALL.len());
    }
}
