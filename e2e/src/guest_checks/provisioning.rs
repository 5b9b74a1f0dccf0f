//! Scenario 2: provisioning through the library on real igb: 4 VFs; 8 is refused with the
//! exact message; then 4 -> 2 -> 0 (through 0, as the kernel requires).

use super::{ensure, igb_pfs};
use anyhow::{bail, Result};
use sriov::discovery::{DiscoveryOptions, Node, SriovStatus};
use sriov::provision::{set_num_vfs, ProvisionError, WaitPolicy};
use sriov::sysfs::Sysfs;

pub fn run() -> Result<()> {
    let sysfs = Sysfs::new("/sys");
    let (_, pfs) = igb_pfs(&sysfs)?;
    let pf = &pfs[0];
    let wait = WaitPolicy::default();
    let status = || -> Result<(SriovStatus, usize)> {
        let node = Node::discover(&sysfs, &DiscoveryOptions::default())?;
        let d = node
            .device(&pf.pci)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("PF vanished"))?;
        Ok((d.sriov, d.vfs.iter().filter(|v| v.netdev.is_some()).count()))
    };
    set_num_vfs(&sysfs, &pf.pci, 4, wait)?;
    let (st, with_netdev) = status()?;
    ensure(
        st == SriovStatus::Enabled {
            enabled: 4,
            total: 7,
        } && with_netdev == 4,
        || format!("after 4: {st}, {with_netdev} netdevs"),
    )?;
    match set_num_vfs(&sysfs, &pf.pci, 8, wait) {
        Err(e @ ProvisionError::OutOfRange { .. }) => {
            let want = format!(
                "cannot create 8 VFs on {} ({}): valid range is 0-7",
                pf.pci,
                pf.display_name()
            );
            ensure(e.to_string() == want, || {
                format!("message {e:?}, expected {want:?}")
            })?;
            println!("8 VFs refused: {e}");
        }
        other => bail!("8 VFs: expected OutOfRange, got {other:?}"),
    }
    for n in [2, 0] {
        set_num_vfs(&sysfs, &pf.pci, n, wait)?;
        let (st, with_netdev) = status()?;
        let want = if n == 0 {
            SriovStatus::Disabled { total: 7 }
        } else {
            SriovStatus::Enabled {
                enabled: n,
                total: 7,
            }
        };
        ensure(st == want && with_netdev == n as usize, || {
            format!("after {n}: {st}, {with_netdev} netdevs")
        })?;
        println!("{}: {st}", pf.display_name());
    }
    Ok(())
}
