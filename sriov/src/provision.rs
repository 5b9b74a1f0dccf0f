//! PF provisioning: how many VFs a PF has, and its MTU.
//!
//! The kernel refuses to change a non-zero VF count to another non-zero count (EBUSY), so a change
//! goes through 0. After the write, VFs appear asynchronously (PCI enumeration, driver probe,
//! netdev registration): we wait, bounded, until each has its driver and, for kernel drivers,
//! its netdev.

use crate::discovery::USERSPACE_DRIVERS;
use crate::names::PciAddress;
use crate::sysfs::{Sysfs, SysfsError};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot create {requested} VFs on {pf}: valid range is 0-{total}")]
    OutOfRange {
        /// "0000:01:00.0 (ens1f0)"
        pf: String,
        requested: u32,
        total: u32,
    },
    #[error("{pf} does not support SR-IOV (no sriov_totalvfs)")]
    NotSupported { pf: String },
    #[error("timed out after {waited:?} waiting for the VFs of {pf}: {detail}")]
    Timeout {
        pf: String,
        waited: Duration,
        detail: String,
    },
    #[error("cannot set MTU {mtu} on {pf}: {why}")]
    Mtu { pf: String, mtu: u32, why: String },
    #[error("{pf}: {source}")]
    Sysfs {
        pf: String,
        #[source]
        source: SysfsError,
    },
}

/// How long to wait for VFs to appear, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    pub timeout: Duration,
    pub interval: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy {
            timeout: Duration::from_secs(20),
            interval: Duration::from_millis(10),
        }
    }
}

/// Names a PF for messages: `0000:01:00.0 (ens1f0)`.
fn pf_label(sysfs: &Sysfs, pf: &PciAddress) -> String {
    let net = sysfs.pci_device(pf).join("net");
    match sysfs
        .list(&net)
        .ok()
        .flatten()
        .and_then(|n| n.into_iter().next())
    {
        Some(name) => format!("{pf} ({name})"),
        None => pf.to_string(),
    }
}

/// Sets the number of VFs of `pf` to `count` and waits until they are ready.
///
/// Returns whether anything changed.
pub fn set_num_vfs(
    sysfs: &Sysfs,
    pf: &PciAddress,
    count: u32,
    wait: WaitPolicy,
) -> Result<bool, ProvisionError> {
    let dir = sysfs.pci_device(pf);
    let label = || pf_label(sysfs, pf);
    let wrap = |source| ProvisionError::Sysfs {
        pf: label(),
        source,
    };
    let total = match sysfs.read_opt(&dir.join("sriov_totalvfs")).map_err(wrap)? {
        None => return Err(ProvisionError::NotSupported { pf: label() }),
        Some(t) => t.parse::<u32>().map_err(|_| {
            wrap(SysfsError::Malformed {
                path: dir.join("sriov_totalvfs"),
                content: t.clone(),
                expected: "a decimal number",
            })
        })?,
    };
    if count > total {
        return Err(ProvisionError::OutOfRange {
            pf: label(),
            requested: count,
            total,
        });
    }
    let numvfs = dir.join("sriov_numvfs");
    let current: u32 = sysfs.read_int(&numvfs).map_err(wrap)?;
    if current == count {
        wait_for_vfs(sysfs, pf, count, wait)?;
        return Ok(false);
    }
    if current != 0 {
        sysfs.write(&numvfs, "0").map_err(wrap)?;
        wait_for_vfs(sysfs, pf, 0, wait)?;
    }
    if count != 0 {
        sysfs.write(&numvfs, &count.to_string()).map_err(wrap)?;
    }
    wait_for_vfs(sysfs, pf, count, wait)?;
    Ok(true)
}

/// Why the VFs of a PF are not ready yet, or None when they are.
fn vfs_not_ready(sysfs: &Sysfs, pf_dir: &Path, count: u32) -> Option<String> {
    let autoprobe = sysfs
        .read_opt(&pf_dir.join("sriov_drivers_autoprobe"))
        .ok()
        .flatten()
        .is_none_or(|v| v != "0");
    let links = sysfs.list(pf_dir).ok().flatten().unwrap_or_default();
    let present = links.iter().filter(|n| n.starts_with("virtfn")).count() as u32;
    if present != count {
        return Some(format!("{present} of {count} VFs present"));
    }
    for index in 0..count {
        let vf_dir = pf_dir.join(format!("virtfn{index}"));
        if !sysfs.exists(&vf_dir) {
            return Some(format!("virtfn{index} missing"));
        }
        if !autoprobe {
            continue;
        }
        match sysfs.link_name(&vf_dir.join("driver")) {
            Ok(Some(driver)) if USERSPACE_DRIVERS.contains(&driver.as_str()) => {}
            Ok(Some(_)) => {
                let net = sysfs.list(&vf_dir.join("net")).ok().flatten();
                if net.is_none_or(|n| n.is_empty()) {
                    return Some(format!("VF {index} has no netdev yet"));
                }
            }
            _ => return Some(format!("VF {index} has no driver yet")),
        }
    }
    None
}

/// Waits until exactly `count` VFs of `pf` exist with their drivers and netdevs.
pub fn wait_for_vfs(
    sysfs: &Sysfs,
    pf: &PciAddress,
    count: u32,
    wait: WaitPolicy,
) -> Result<(), ProvisionError> {
    let dir = sysfs.pci_device(pf);
    let start = Instant::now();
    loop {
        let Some(detail) = vfs_not_ready(sysfs, &dir, count) else {
            return Ok(());
        };
        if start.elapsed() >= wait.timeout {
            return Err(ProvisionError::Timeout {
                pf: pf_label(sysfs, pf),
                waited: wait.timeout,
                detail,
            });
        }
        std::thread::sleep(wait.interval);
    }
}

/// Sets the MTU of the PF's netdev (through sysfs, as `ip link set mtu` would).
pub fn set_pf_mtu(sysfs: &Sysfs, pf: &PciAddress, mtu: u32) -> Result<bool, ProvisionError> {
    let net = sysfs.pci_device(pf).join("net");
    let err = |why: String| ProvisionError::Mtu {
        pf: pf_label(sysfs, pf),
        mtu,
        why,
    };
    if !(68..=65535).contains(&mtu) {
        return Err(err("valid MTUs are 68-65535".into()));
    }
    let name = sysfs
        .list(&net)
        .ok()
        .flatten()
        .and_then(|n| n.into_iter().next())
        .ok_or_else(|| err("the PF has no netdev".into()))?;
    let path = net.join(name).join("mtu");
    let current: u32 = sysfs.read_int(&path).map_err(|e| err(e.to_string()))?;
    if current == mtu {
        return Ok(false);
    }
    sysfs
        .write(&path, &mtu.to_string())
        .map_err(|e| err(e.to_string()))?;
    Ok(true)
}

/// A device's `driver_override`: `Some("")` when unset (the kernel shows `(null)`), `None` when
/// the file does not exist.
pub fn driver_override(sysfs: &Sysfs, dev: &PciAddress) -> Result<Option<String>, ProvisionError> {
    let path = sysfs.pci_device(dev).join("driver_override");
    let value = sysfs
        .read_opt(&path)
        .map_err(|source| ProvisionError::Sysfs {
            pf: dev.to_string(),
            source,
        })?;
    Ok(value.map(|v| {
        let v = v.trim();
        if v == "(null)" {
            String::new()
        } else {
            v.to_string()
        }
    }))
}

/// Sets a device's `driver_override` back to `value` (empty: cleared, which the kernel takes
/// from a lone newline). Binds nothing.
pub fn set_driver_override(
    sysfs: &Sysfs,
    dev: &PciAddress,
    value: &str,
) -> Result<(), ProvisionError> {
    let wrap = |source| ProvisionError::Sysfs {
        pf: dev.to_string(),
        source,
    };
    if !value.is_empty() && !crate::names::is_plain_file_name(value) {
        return Err(wrap(SysfsError::Malformed {
            path: "driver_override".into(),
            content: value.to_string(),
            expected: "a driver name",
        }));
    }
    let value = if value.is_empty() { "\n" } else { value };
    sysfs
        .write(&sysfs.pci_device(dev).join("driver_override"), value)
        .map_err(wrap)
}

/// Binds a device to `driver` the way the kernel documents it: set `driver_override`, unbind
/// from the current driver, ask the PCI core to probe again; then wait (bounded) until it is
/// bound to `driver`. Used to hand VFs to vfio-pci (DPDK) and back.
pub fn bind_driver(
    sysfs: &Sysfs,
    dev: &PciAddress,
    driver: &str,
    wait: WaitPolicy,
) -> Result<(), ProvisionError> {
    let label = dev.to_string();
    let wrap = |source| ProvisionError::Sysfs {
        pf: label.clone(),
        source,
    };
    if !crate::names::is_plain_file_name(driver) {
        return Err(wrap(SysfsError::Malformed {
            path: "driver_override".into(),
            content: driver.to_string(),
            expected: "a driver name",
        }));
    }
    let dir = sysfs.pci_device(dev);
    if sysfs
        .link_name(&dir.join("driver"))
        .map_err(wrap)?
        .as_deref()
        == Some(driver)
    {
        return Ok(());
    }
    sysfs
        .write(&dir.join("driver_override"), driver)
        .map_err(wrap)?;
    if sysfs
        .link_name(&dir.join("driver"))
        .map_err(wrap)?
        .is_some()
    {
        sysfs
            .write(&dir.join("driver/unbind"), &label)
            .map_err(wrap)?;
    }
    sysfs
        .write(&sysfs.root().join("bus/pci/drivers_probe"), &label)
        .map_err(wrap)?;
    let start = Instant::now();
    loop {
        let now = sysfs.link_name(&dir.join("driver")).map_err(wrap)?;
        if now.as_deref() == Some(driver) {
            return Ok(());
        }
        if start.elapsed() >= wait.timeout {
            return Err(ProvisionError::Timeout {
                pf: label.clone(),
                waited: wait.timeout,
                detail: format!("bound to {now:?}, not {driver}"),
            });
        }
        std::thread::sleep(wait.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_override_reads_the_kernels_null_as_unset_and_clears_with_a_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let sysfs = Sysfs::new(tmp.path());
        let pci = PciAddress::parse("0000:01:10.0").unwrap();
        let dir = sysfs.pci_device(&pci);
        assert_eq!(driver_override(&sysfs, &pci).unwrap(), None, "no file");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("driver_override"), "(null)\n").unwrap();
        assert_eq!(driver_override(&sysfs, &pci).unwrap().as_deref(), Some(""));
        set_driver_override(&sysfs, &pci, "vfio-pci").unwrap();
        assert_eq!(
            driver_override(&sysfs, &pci).unwrap().as_deref(),
            Some("vfio-pci")
        );
        set_driver_override(&sysfs, &pci, "").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("driver_override")).unwrap(),
            "\n"
        );
        assert!(set_driver_override(&sysfs, &pci, "../x").is_err());
    }
}
