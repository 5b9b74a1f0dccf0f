//! Scenario 5 (guest booted with --iommu): bind a VF to vfio-pci; discovery reports its IOMMU
//! group and /dev/vfio/<group> exists; then give it back to igbvf.

use super::{ensure, igb_pfs};
use anyhow::{Context, Result};
use sriov::discovery::{DiscoveryOptions, Node};
use sriov::provision::{bind_driver, WaitPolicy};
use sriov::sysfs::Sysfs;
use std::path::Path;

pub fn run() -> Result<()> {
    let sysfs = Sysfs::new("/sys");
    let (node, pfs) = igb_pfs(&sysfs)?;
    let (_, vf) = node
        .vfs()
        .filter(|(p, _)| p.pci == pfs[0].pci)
        .last()
        .context("no VF on the first PF")?;
    let pci = vf.pci;
    bind_driver(&sysfs, &pci, "vfio-pci", WaitPolicy::default())?;
    let node = Node::discover(&sysfs, &DiscoveryOptions::default())?;
    let (_, vf) = node.vf(&pci).context("VF gone after binding")?;
    ensure(
        vf.driver.as_deref() == Some("vfio-pci") && vf.is_userspace(),
        || format!("{vf:?}"),
    )?;
    let group = vf
        .iommu_group
        .context("no IOMMU group reported for a vfio-pci VF")?;
    let dev = format!("/dev/vfio/{group}");
    ensure(Path::new(&dev).exists(), || format!("{dev} does not exist"))?;
    ensure(vf.netdev.is_none(), || {
        "a vfio VF still shows a netdev".into()
    })?;
    println!("vfio: {pci} bound to vfio-pci, IOMMU group {group}, {dev} present");
    bind_driver(&sysfs, &pci, "igbvf", WaitPolicy::default())?;
    println!("vfio: {pci} back on igbvf");
    Ok(())
}
