//! The sriov-rs node library: everything that touches sysfs or netlink.
//!
//! - [`names`]: validation of every name that reaches a path (PCI addresses, interface and resource names).
//! - [`sysfs`]: a rooted, read-counting view of sysfs.
//! - [`discovery`]: PCI network devices, PFs and their VFs, as plain values.
//! - [`provision`]: setting a PF's VF count and MTU.
//! - [`config`]: the upstream device plugin `config.json`, plus our extensions.
//! - [`pools`]: assigning discovered VFs to resource pools (first match wins).
//! - [`report`]: the "physical adapters" status view.
//! - [`netlink`]: a small synchronous rtnetlink socket (links, netns moves, VF settings).

pub mod config;
pub mod discovery;
pub mod names;
pub mod netlink;
pub mod pools;
pub mod provision;
pub mod report;
pub mod sysfs;
