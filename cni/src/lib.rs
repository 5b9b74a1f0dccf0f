//! The `sriov` CNI plugin: the CNI protocol ([`spec`], [`netconf`]) around the `sriov`
//! library's dataplane.

pub mod netconf;
pub mod spec;
