//! Scenarios that run inside the QEMU igb guest (`sriov-guest-check SCENARIO`), against real
//! igb PFs and igbvf VFs, with the library's own code. Each returns an error naming what did
//! not hold; the binary prints it and exits non-zero.
//!
//! They assume what `sriov-lab vm` sets up: igb PFs with VFs already created, the host root as
//! the guest's (read-only) root, this binary run from the host's target folder.

mod daemon;
mod discovery;
mod dra;
mod pods;
mod provisioning;
mod vf_settings;
mod vfio;

use anyhow::{bail, Context, Result};
use sriov::discovery::{DiscoveryOptions, Node, PciNetDevice};
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::sysfs::Sysfs;
use std::fs::File;
use std::os::fd::OwnedFd;

/// Every scenario name, in the order `all` runs them (provisioning changes VF counts: last).
pub const SCENARIOS: &[&str] = &[
    "discovery",
    "vf-settings",
    "pods",
    "vfio",
    "daemon",
    "dra",
    "provisioning",
];

/// Runs one scenario (or `all`). `expect` carries what the VM was booted with.
pub fn run(scenario: &str, expect: &GuestShape) -> Result<()> {
    match scenario {
        "discovery" => discovery::run(expect),
        "vf-settings" => vf_settings::run(),
        "pods" => pods::run(),
        "vfio" => vfio::run(),
        "provisioning" => provisioning::run(),
        "daemon" => daemon::run(expect.iommu),
        "dra" => dra::run(),
        "all" => {
            for s in SCENARIOS {
                // Both bind a VF to vfio-pci: no IOMMU, no vfio-pci.
                if (*s == "vfio" || *s == "dra") && !expect.iommu {
                    continue;
                }
                println!("== scenario {s}");
                let start = std::time::Instant::now();
                run(s, expect).with_context(|| format!("scenario {s}"))?;
                println!(
                    "== scenario {s}: ok ({:.1} s)",
                    start.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        other => bail!("unknown scenario {other:?} (one of {SCENARIOS:?} or all)"),
    }
}

/// What the guest was booted with (what the checks expect to find).
pub use crate::vm::GuestShape;

/// The guest's igb PFs, in PCI order.
fn igb_pfs(sysfs: &Sysfs) -> Result<(Node, Vec<PciNetDevice>)> {
    let node = Node::discover(sysfs, &DiscoveryOptions::default())?;
    let pfs: Vec<PciNetDevice> = node
        .devices
        .iter()
        .filter(|d| d.driver.as_deref() == Some("igb"))
        .cloned()
        .collect();
    if pfs.is_empty() {
        bail!("no igb PF found (devices: {:?})", node.devices);
    }
    Ok((node, pfs))
}

/// The daemon's pool config in the guest: one pool, `igb`, of the 82576's VFs.
const IGB_POOLS: &str = r#"{"resourceList": [{"resourceName": "igb", "selectors": {"vendors": ["8086"], "devices": ["10ca"]}}]}"#;

/// The guest's igb PFs ([`igb_pfs`]), each up with carrier ([`pf_up`]), and how many VFs they
/// have; with the netlink socket used.
fn igb_pfs_up(sysfs: &Sysfs) -> Result<(Vec<PciNetDevice>, usize, NetlinkSocket)> {
    let (node, pfs) = igb_pfs(sysfs)?;
    let mut nl = NetlinkSocket::new()?;
    for pf in &pfs {
        pf_up(&mut nl, pf)?;
    }
    let total = node
        .vfs()
        .filter(|(p, _)| pfs.iter().any(|x| x.pci == p.pci))
        .count();
    Ok((pfs, total, nl))
}

/// A fresh anonymous network namespace, alive as long as the returned handle.
fn new_netns() -> Result<Netns> {
    let fd: OwnedFd = std::thread::spawn(|| -> Result<OwnedFd> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET)")?;
        Ok(File::open("/proc/thread-self/ns/net")?.into())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
    Ok(Netns::from_fd(fd))
}

/// The ifindex of a PF's netdev in this namespace, brought up (VF rate limits need carrier).
fn pf_up(nl: &mut NetlinkSocket, pf: &PciNetDevice) -> Result<u32> {
    let name = pf.name().context("PF without netdev")?;
    let link = nl.link_by_name(name)?;
    nl.set_up(link.index)?;
    // igb takes a moment to report carrier after going up.
    for _ in 0..100 {
        if nl.link_by_index(link.index)?.carrier == Some(true) {
            return Ok(link.index);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("{name} has no carrier 5 s after going up")
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        bail!(msg())
    }
}
