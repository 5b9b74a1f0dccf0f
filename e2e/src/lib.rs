//! sriov-rs labs: a simulated SR-IOV node built from a fake sysfs tree and real kernel links
//! ([`sim`]), and a QEMU guest with emulated Intel 82576 (igb) VFs ([`vm`]).

pub mod apiserver;
pub mod bins;
pub mod cdi_check;
pub mod cni;
pub mod containerd17;
pub mod cri;
pub mod demo;
pub mod dra;
pub mod dra_node;
pub mod guest_checks;
pub mod kubelet;
pub mod local;
pub mod ping;
pub mod procs;
pub mod sim;
pub mod vm;

pub use bins::{image_binary, workspace_binary};
