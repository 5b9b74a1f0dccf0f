//! The simulated SR-IOV node ("sriov-lab"): a realistic node without hardware.
//!
//! A lab named NAME is a fake sysfs tree under `/run/sriov-lab/NAME/sys` laid
//! out like the kernel's (PFs with `sriov_*` files and `virtfn*` links, VFs
//! with `physfn`, drivers, IOMMU groups), whose `net/IFNAME` entries link into
//! the real sysfs of netns `sriovlab-NAME`, where every PF and VF netdev is a
//! veth whose peer sits on a bridge per PF (the NIC's embedded switch). MAC,
//! MTU and operstate read through the tree are therefore live, and a VF netdev
//! moved into a pod netns leaves a dangling link, as on a real node.
//!
//! Building needs root. [`SimNode`] owns a lab for a test and removes it on
//! drop; [`Lab`] opens an existing one by name; [`KernelEmulator`] answers
//! writes to `sriov_numvfs` as the kernel does; [`BindEmulator`] driver binds through
//! `driver_override` and `drivers_probe`.

mod bind_emulator;
mod description;
mod error;
mod kernel_emulator;
mod lab;
mod links;
mod node;
mod paths;
mod spec;
mod sysfs_tree;
mod teardown;

pub use bind_emulator::{BindEmulator, FIRST_BIND_GROUP};
pub use description::{
    accel_iommu_group, accel_vf_pci, bridge_name, iommu_group, peer_netdev, pf_netdev, pf_pci,
    rdma_number, uio_number, vf_netdev, vf_pci, AccelDescription, AccelVfDescription,
    LabDescription, PfDescription, PlainNic, SfDescription, VdpaDescription, VfDescription,
    ACCEL_PCI, NVME_PCI, PLAIN_NIC_NETDEV, PLAIN_NIC_PCI, UIO_DRIVER, VFIO_DRIVER,
};
pub use error::{Result, SimError};
pub use kernel_emulator::{KernelEmulator, NumVfsWrite};
pub use lab::{ensure_root, Lab};
pub use links::mounts_under;
pub use node::{unique_name, SimNode};
pub use paths::{LabPaths, NETNS_DIR, NETNS_PREFIX, RUN_ROOT};
pub use spec::{validate_name, Model, NicModel, SimSpec, MAX_PFS, MAX_VFS_PER_PF};
pub use teardown::{down, gc, lab_names};
