//! The sriov-rs node library: everything that touches sysfs or netlink.
//!
//! - [`names`]: validation of every name that reaches a path (PCI addresses, interface and resource names).
//! - [`sysfs`]: a rooted, read-counting view of sysfs.
//! - [`discovery`]: PCI network devices, PFs and their VFs, as plain values.
//! - [`provision`]: setting a PF's VF count and MTU.
//! - [`config`]: the upstream device plugin `config.json`, plus our extensions.
//! - [`platform_mac`]: MACs from the node's prefix for attachments whose config names none.
//! - [`accelerator`], [`aux_device`], [`vdpa`]: the device types beyond VFs (PCI accelerators,
//!   auxiliary-bus devices such as scalable functions, vDPA devices of VFs).
//! - [`pools`]: assigning discovered VFs to resource pools (first match wins).
//! - [`report`]: the "physical adapters" status view.
//! - [`allocation`]: GetPreferredAllocation (must-include, NUMA, pack or spread across PFs).
//! - [`cdi`]: Container Device Interface specs (values, the specification's rules, atomic writes).
//! - [`devinfo`]: what a container gets: envs, device nodes, device-information files.
//! - [`dra_claim`]: a DRA claim's allocation and its merged, checked `VfConfig`s.
//! - [`dra_record`]: the node-local, crash-safe record of prepared DRA claims.
//! - [`health`]: device health from discovery and link state.
//! - [`linkwatch`]: rtnetlink link notifications in a given network namespace.
//! - [`netlink`]: a small synchronous rtnetlink socket (links, netns moves, VF settings).
//! - [`owned_dir`]: folders we own, and the one atomic, no-symlink way to write files there.
//! - [`state`]: the CNI's crash-safe per-VF records and locks.
//! - [`vf_attach`]: the CNI dataplane: save, attach, restore a VF.
//! - [`sf_attach`]: the same for a scalable function's netdev (no PF-side settings).
//! - [`mtu_lock`]: enforcing `mtuLock` MTUs in pods (driven by the node daemon).
//! - [`logging`]: stderr logging, text or JSON, for the long-running programs.

pub mod accelerator;
pub mod allocation;
pub mod aux_device;
pub mod cdi;
pub mod config;
pub mod ddp;
pub mod devinfo;
pub mod discovery;
pub mod dra_claim;
pub mod dra_record;
pub mod health;
pub mod linkwatch;
pub mod logging;
pub mod mtu_lock;
pub mod names;
pub mod netlink;
pub mod owned_dir;
pub mod platform_mac;
pub mod pools;
pub mod provision;
pub mod report;
pub mod sf_attach;
pub mod state;
pub mod sysfs;
pub mod vdpa;
pub mod vf_attach;
