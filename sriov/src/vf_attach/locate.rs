//! Finding a VF's PF, index, driver and netdev from sysfs: a handful of reads, never a discovery
//! of the whole node.

use super::AttachError;
use crate::discovery::USERSPACE_DRIVERS;
use crate::names::PciAddress;
use crate::sysfs::Sysfs;

/// Where a VF sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfLocation {
    pub pci: PciAddress,
    pub pf_pci: PciAddress,
    /// The PF's netdev; `None` when it has none (no PF-side settings possible).
    pub pf_name: Option<String>,
    pub pf_driver: Option<String>,
    pub vf_index: u32,
    pub driver: Option<String>,
    /// Names under the VF's `net/` (what sysfs shows; may be stale or empty once the netdev left
    /// the namespace sysfs was mounted from).
    pub netdev_names: Vec<String>,
}

impl VfLocation {
    /// Bound to vfio-pci or a uio driver (DPDK): no netdev, PF-side settings only.
    pub fn is_userspace(&self) -> bool {
        self.driver
            .as_deref()
            .is_some_and(|d| USERSPACE_DRIVERS.contains(&d))
    }

    /// The PF driver's name for messages (`the igb driver rejects it`).
    pub fn pf_driver_name(&self) -> String {
        self.pf_driver.clone().unwrap_or_else(|| "PF".into())
    }
}

/// The temporary name a VF carries while it moves between namespaces: derived from its PCI
/// address, so unique per VF and stable across retries (`sv00003b020` for `0000:3b:02.0`).
pub fn temp_name(pci: &PciAddress) -> String {
    format!(
        "sv{:04x}{:02x}{:02x}{:x}",
        pci.domain, pci.bus, pci.device, pci.function
    )
}

/// The PCI routing id (bus, device, function) the SR-IOV capability counts VFs in.
fn routing_id(p: &PciAddress) -> u32 {
    (u32::from(p.bus) << 8) | (u32::from(p.device) << 3) | u32::from(p.function)
}

/// The VF's index on its PF: the `virtfnN` link that points back at it. Found by the kernel's
/// own formula (VF routing id = PF's + `sriov_offset` + N × `sriov_stride`) and one link read,
/// or, if the PF does not show those, by reading its links in turn (a PF may have 256).
fn vf_index(
    sysfs: &Sysfs,
    pf_dir: &std::path::Path,
    pf_pci: PciAddress,
    pci: PciAddress,
) -> Result<Option<u32>, AttachError> {
    let pci_text = pci.to_string();
    let points_here = |i: u32| -> Result<bool, AttachError> {
        Ok(sysfs
            .link_name(&pf_dir.join(format!("virtfn{i}")))?
            .as_deref()
            == Some(pci_text.as_str()))
    };
    let offset = sysfs.read_int::<u32>(&pf_dir.join("sriov_offset")).ok();
    let stride = sysfs.read_int::<u32>(&pf_dir.join("sriov_stride")).ok();
    if let (Some(offset), Some(stride)) = (offset, stride.filter(|s| *s > 0)) {
        let first = routing_id(&pf_pci) + offset;
        let rid = routing_id(&pci);
        if pci.domain == pf_pci.domain && rid >= first && (rid - first).is_multiple_of(stride) {
            let i = (rid - first) / stride;
            if points_here(i)? {
                return Ok(Some(i));
            }
        }
    }
    for i in sysfs
        .list(pf_dir)?
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.strip_prefix("virtfn")?.parse::<u32>().ok())
    {
        if points_here(i)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Reads the VF's place from sysfs.
pub fn locate(sysfs: &Sysfs, pci: PciAddress) -> Result<VfLocation, AttachError> {
    let dir = sysfs.pci_device(&pci);
    if !sysfs.exists(&dir) {
        return Err(AttachError::Invalid(format!(
            "deviceID: no such PCI device under {}",
            sysfs.pci_devices_dir().display()
        )));
    }
    let Some(pf_name) = sysfs.link_name(&dir.join("physfn"))? else {
        return Err(AttachError::Invalid(
            "deviceID: not an SR-IOV VF (it has no physfn)".into(),
        ));
    };
    let pf_pci = PciAddress::parse(&pf_name)
        .map_err(|e| AttachError::Invalid(format!("deviceID: its physfn link is odd: {e}")))?;
    let pf_dir = sysfs.pci_device(&pf_pci);
    let vf_index = vf_index(sysfs, &pf_dir, pf_pci, pci)?.ok_or_else(|| {
        AttachError::Invalid(format!(
            "deviceID: its PF {pf_pci} has no virtfn link back to it"
        ))
    })?;
    Ok(VfLocation {
        pci,
        pf_pci,
        pf_name: sysfs
            .list(&pf_dir.join("net"))?
            .and_then(|n| n.into_iter().next()),
        pf_driver: sysfs.link_name(&pf_dir.join("driver"))?,
        vf_index,
        driver: sysfs.link_name(&dir.join("driver"))?,
        netdev_names: sysfs.list(&dir.join("net"))?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn temp_names_fit_ifnamsiz() {
        let pci = PciAddress::parse("0000:3b:02.0").unwrap();
        assert_eq!(temp_name(&pci), "sv00003b020");
        let pci = PciAddress::parse("ffff:ff:1f.7").unwrap();
        assert!(temp_name(&pci).len() <= 15);
    }

    #[test]
    fn locates_a_vf_in_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let devs = dir.path().join("bus/pci/devices");
        let pf = devs.join("0000:3b:00.0");
        let vf = devs.join("0000:3b:02.1");
        for d in [&pf, &vf, &pf.join("net/ens1f0"), &vf.join("net/ens1f0v1")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("drivers/i40e")).unwrap();
        symlink("../0000:3b:00.0", vf.join("physfn")).unwrap();
        symlink("../0000:3b:02.0", pf.join("virtfn0")).unwrap();
        symlink("../0000:3b:02.1", pf.join("virtfn1")).unwrap();
        symlink("../../../drivers/i40e", pf.join("driver")).unwrap();
        let sysfs = Sysfs::new(dir.path());
        let loc = locate(&sysfs, PciAddress::parse("0000:3b:02.1").unwrap()).unwrap();
        assert_eq!(loc.vf_index, 1);
        // With the SR-IOV capability's offset and stride, the index is computed, then checked.
        std::fs::write(pf.join("sriov_offset"), "16\n").unwrap();
        std::fs::write(pf.join("sriov_stride"), "1\n").unwrap();
        let before = sysfs.reads();
        let loc = locate(&sysfs, PciAddress::parse("0000:3b:02.1").unwrap()).unwrap();
        assert_eq!(loc.vf_index, 1);
        assert!(sysfs.reads() - before < 12, "no scan of the PF's links");
        // A lying stride falls back to the links.
        std::fs::write(pf.join("sriov_stride"), "2\n").unwrap();
        let loc = locate(&sysfs, PciAddress::parse("0000:3b:02.1").unwrap()).unwrap();
        assert_eq!(loc.vf_index, 1);
        assert_eq!(loc.pf_name.as_deref(), Some("ens1f0"));
        assert_eq!(loc.pf_driver.as_deref(), Some("i40e"));
        assert_eq!(loc.netdev_names, ["ens1f0v1"]);
        assert!(!loc.is_userspace());
        let e = locate(&sysfs, PciAddress::parse("0000:3b:00.0").unwrap()).unwrap_err();
        assert!(e.to_string().contains("not an SR-IOV VF"), "{e}");
        let e = locate(&sysfs, PciAddress::parse("0000:99:00.0").unwrap()).unwrap_err();
        assert!(e.to_string().contains("no such PCI device"), "{e}");
    }
}
