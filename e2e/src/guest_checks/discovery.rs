//! Scenario 1: discovery agrees with what the guest's sysfs says, read another way (from
//! /sys/class/net, not /sys/bus/pci/devices).

use super::{ensure, igb_pfs, GuestShape};
use anyhow::{Context, Result};
use sriov::discovery::SriovStatus;
use sriov::sysfs::Sysfs;
use std::fs;
use std::path::Path;

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

pub fn run(expect: &GuestShape) -> Result<()> {
    let sysfs = Sysfs::new("/sys");
    let (node, pfs) = igb_pfs(&sysfs)?;
    ensure(pfs.len() == expect.pfs as usize, || {
        format!("{} igb PFs found, {} expected", pfs.len(), expect.pfs)
    })?;
    for (i, pf) in pfs.iter().enumerate() {
        ensure((pf.vendor, pf.device) == (0x8086, 0x10c9), || {
            format!("{}: id {:04x}:{:04x}", pf.pci, pf.vendor, pf.device)
        })?;
        ensure(
            pf.sriov
                == SriovStatus::Enabled {
                    enabled: expect.vfs,
                    total: 7,
                },
            || {
                format!(
                    "{}: SR-IOV {} (expected enabled {} of 7)",
                    pf.pci, pf.sriov, expect.vfs
                )
            },
        )?;
        let want_numa = if expect.numa && i == 1 { Some(1) } else { None };
        ensure(pf.numa_node == want_numa, || {
            format!(
                "{}: NUMA {:?}, expected {want_numa:?}",
                pf.pci, pf.numa_node
            )
        })?;
        println!(
            "PF {} {} {} {} NUMA {:?}",
            pf.pci,
            pf.display_name(),
            pf.sriov,
            pf.driver.as_deref().unwrap_or("-"),
            pf.numa_node
        );
    }
    // Independent view: every netdev in /sys/class/net whose device has a physfn link.
    let mut seen = 0;
    for entry in fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let dev = Path::new("/sys/class/net").join(&name).join("device");
        let Some(pci) = link_name(&dev) else { continue };
        let Some(pf_pci) = link_name(&dev.join("physfn")) else {
            continue;
        };
        let index = fs::read_dir(dev.join("physfn"))?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let i: u32 = n.strip_prefix("virtfn")?.parse().ok()?;
                (link_name(&e.path()).as_deref() == Some(pci.as_str())).then_some(i)
            })
            .with_context(|| format!("{pci}: not among its PF's virtfn links"))?;
        let driver = link_name(&dev.join("driver"));
        let vf_pci = sriov::names::PciAddress::parse(&pci)?;
        let (pf, vf) = node
            .vf(&vf_pci)
            .with_context(|| format!("VF {pci} ({name}) not discovered"))?;
        ensure(pf.pci.to_string() == pf_pci, || {
            format!("{pci}: PF {} vs sysfs {pf_pci}", pf.pci)
        })?;
        ensure(vf.index == index, || {
            format!("{pci}: index {} vs sysfs {index}", vf.index)
        })?;
        ensure(vf.driver == driver, || {
            format!("{pci}: driver {:?} vs sysfs {driver:?}", vf.driver)
        })?;
        ensure(vf.netdev.as_deref() == Some(name.as_str()), || {
            format!("{pci}: netdev {:?} vs sysfs {name}", vf.netdev)
        })?;
        ensure(vf.numa_node == pf.numa_node, || {
            format!("{pci}: NUMA differs from its PF")
        })?;
        ensure((vf.vendor, vf.device) == (0x8086, 0x10ca), || {
            format!("{pci}: VF id {:04x}:{:04x}", vf.vendor, vf.device)
        })?;
        println!("VF {pci} index {index} of {pf_pci} driver {driver:?} netdev {name}");
        seen += 1;
    }
    let want = (expect.pfs * expect.vfs) as usize;
    ensure(seen == want && node.vfs().count() == want, || {
        format!(
            "{seen} VFs in /sys/class/net, {} discovered, {want} expected",
            node.vfs().count()
        )
    })?;
    println!(
        "discovery: {} PFs, {seen} VFs agree with sysfs ({} sysfs reads)",
        pfs.len(),
        sysfs.reads()
    );
    Ok(())
}
