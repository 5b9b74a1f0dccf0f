//! A small synchronous rtnetlink dataplane: links, network namespaces, VF
//! settings through the PF, addresses and routes.
//!
//! - [`NetlinkSocket`]: one socket bound to one network namespace; every
//!   operation is one request answered by one ACK or reply (or a dump).
//! - Notifications: [`NetlinkSocket::subscribe`] to a [`Group`], then
//!   [`NetlinkSocket::next_notification`] (link changes, parsed by the same
//!   tolerant parser as replies).
//! - [`Netns`]: an opened namespace; [`NetlinkSocket::new_in`] and
//!   [`Netns::run_in`] work inside it without moving the calling thread.
//! - Values: [`LinkInfo`], [`VfInfo`], [`AddressInfo`], [`RouteInfo`].
//! - Errors: [`NetlinkError`] keeps the kernel's errno and names the
//!   operation and object; VF knobs fail with a [`VfSettingError`].
//!
//! Requests are built as plain values and replies parsed from plain bytes
//! (see [`parse_vfinfo_list`]); only the socket does IO, so everything but
//! the kernel round trip is tested without root.

mod addr;
mod attrs;
mod error;
pub mod genl;
mod link;
mod link_ops;
mod netns;
mod notify;
mod route;
mod socket;
mod vf;
mod vf_ops;

pub use addr::AddressInfo;
pub use error::{NetlinkError, Result, VfSetting, VfSettingError};
pub use genl::{Devlink, DevlinkInfo, GenlSocket};
pub use link::{LinkInfo, MacAddr, OperState};
pub use link_ops::time_in_netns_moves;
pub use netns::Netns;
pub use notify::{Group, Notification};
pub use route::{RouteInfo, MAIN_TABLE};
pub use socket::NetlinkSocket;
pub use vf::{parse_vfinfo_list, VfInfo, VfLinkState, VlanProto};

/// Errno values callers match on, re-exported for convenience.
pub use nix::errno::Errno;
