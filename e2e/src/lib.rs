//! sriov-rs labs: a simulated SR-IOV node built from a fake sysfs tree and real kernel links
//! ([`sim`]), and a QEMU guest with emulated Intel 82576 (igb) VFs ([`vm`]).

pub mod sim;
pub mod vm;
