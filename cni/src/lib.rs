//! The `sriov` CNI plugin: the CNI protocol ([`spec`], [`netconf`], [`env`], [`result`]) around
//! the `sriov` library's dataplane ([`sriov::vf_attach`], [`sriov::state`]).
//!
//! - [`commands`]: ADD, DEL, CHECK, GC, STATUS (and [`commands::run`], the whole invocation);
//! - [`vf_select`]: which VF (deviceID, kubelet pod resources, or a pool claimed under lock);
//! - [`ipam`]: IPAM plugin delegation;
//! - [`logging`]: `logFile` / `logLevel`;
//! - [`fault`]: test-only fault injection (`SRIOV_CNI_FAULT`), compiled out of release builds.

pub mod commands;
pub mod env;
pub mod fault;
pub mod ipam;
pub mod logging;
pub mod netconf;
pub mod node_config;
pub mod result;
pub mod spec;
pub mod upstream;
pub mod vf_select;
