//! `deviceType: accelerator`: PCI processing accelerators (class 0x12xxxx), such as Intel's
//! vRAN FEC cards (ACC100: PF 8086:0d5c, VFs 8086:0d5d; ACC200: 8086:57c0 / 57c1).
//!
//! As upstream (pkg/types/types.go `SupportedDevices`, pkg/accelerator/accelDeviceProvider.go
//! `AddTargetDevices`), every PCI function of class 0x12 is a candidate, PFs and VFs alike (an
//! accelerator PF with VFs is not held back as a network PF is). Its kubelet ID is its PCI
//! address; Allocate gives the generic `_INFO` entry, vfio/uio device nodes by driver and the
//! `additionalInfo` entries (pkg/factory/factory.go `GetDefaultInfoProvider`), and no
//! device-information file (pkg/resources/pool_stub.go `StoreDeviceInfoFile` writes none for
//! accelerator pools).
//!
//! Discovery reads non-network functions only when the config has an accelerator pool.

use crate::discovery::{read_id, read_numa, DiscoveryOptions, Node};
use crate::names::PciAddress;
use crate::pools::{DeviceKind, PoolDevice};
use crate::sysfs::Sysfs;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// PCI base class 0x12: processing accelerators.
pub const PCI_CLASS_ACCELERATOR: u32 = 0x12;

/// The selectors of an accelerator pool: upstream's `AccelDeviceSelectors` (vendors, devices,
/// drivers, pciAddresses), `acpiIndexes` (in upstream's documentation of these selectors), and
/// `pfNames`/`rootDevices` to pick a card's VFs by their PF (ranges `#0-3` work).
pub const SELECTOR_KEYS: &[&str] = &[
    "vendors",
    "devices",
    "drivers",
    "pciAddresses",
    "acpiIndexes",
    "pfNames",
    "rootDevices",
];

/// One accelerator function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccelDevice {
    pub pci: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
    pub numa_node: Option<u32>,
    /// The PF of a VF (its `physfn` link).
    pub pf: Option<PciAddress>,
    /// N of the PF's `virtfnN` link to this VF.
    pub vf_index: Option<u32>,
    /// With [`DiscoveryOptions::acpi_index`].
    pub acpi_index: Option<u32>,
}

/// Reads every class-0x12 function among `names` (the PCI bus's entries) not in `skip` (the
/// network functions already read). Unreadable functions become warnings.
pub(crate) fn discover(
    sysfs: &Sysfs,
    names: &[String],
    skip: &HashSet<PciAddress>,
    opts: &DiscoveryOptions,
    node: &mut Node,
) {
    let dir = sysfs.pci_devices_dir();
    // A PF's virtfnN links, read once per PF that has accelerator VFs.
    let mut vf_indexes: HashMap<PciAddress, HashMap<String, u32>> = HashMap::new();
    for name in names {
        let Ok(pci) = PciAddress::parse(name) else {
            continue;
        };
        if skip.contains(&pci) {
            continue;
        }
        let path = dir.join(name);
        let class = match sysfs.read_hex(&path.join("class")) {
            Ok(c) => c,
            Err(e) => {
                node.warnings
                    .push(format!("{e}; not read as an accelerator"));
                continue;
            }
        };
        if class >> 16 != PCI_CLASS_ACCELERATOR {
            continue;
        }
        match read(
            sysfs,
            opts,
            pci,
            class,
            &path,
            &mut vf_indexes,
            &mut node.warnings,
        ) {
            Ok(dev) => node.accelerators.push(dev),
            Err(e) => node
                .warnings
                .push(format!("accelerator {pci} skipped: {e}")),
        }
    }
}

fn read(
    sysfs: &Sysfs,
    opts: &DiscoveryOptions,
    pci: PciAddress,
    class: u32,
    path: &Path,
    vf_indexes: &mut HashMap<PciAddress, HashMap<String, u32>>,
    warnings: &mut Vec<String>,
) -> Result<AccelDevice, crate::sysfs::SysfsError> {
    let pf = match sysfs.link_name(&path.join("physfn"))? {
        None => None,
        Some(t) => match PciAddress::parse(&t) {
            Ok(p) => Some(p),
            Err(_) => {
                warnings.push(format!(
                    "{}: points to {t:?}, not a PCI address; read as a PF",
                    path.join("physfn").display()
                ));
                None
            }
        },
    };
    let vf_index = match pf {
        None => None,
        Some(pf) => vf_indexes
            .entry(pf)
            .or_insert_with(|| virtfn_links(sysfs, &sysfs.pci_device(&pf)))
            .get(&pci.to_string())
            .copied(),
    };
    Ok(AccelDevice {
        pci,
        vendor: read_id(sysfs, &path.join("vendor"))?,
        device: read_id(sysfs, &path.join("device"))?,
        class,
        driver: sysfs.link_name(&path.join("driver"))?,
        numa_node: read_numa(sysfs, path, warnings),
        pf,
        vf_index,
        acpi_index: opts
            .acpi_index
            .then(|| sysfs.read_int(&path.join("acpi_index")).ok())
            .flatten(),
    })
}

/// The PF's `virtfnN` links: VF address → N.
fn virtfn_links(sysfs: &Sysfs, pf_dir: &Path) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for e in sysfs.list(pf_dir).ok().flatten().unwrap_or_default() {
        let Some(Ok(n)) = e.strip_prefix("virtfn").map(str::parse::<u32>) else {
            continue;
        };
        if let Ok(Some(target)) = sysfs.link_name(&pf_dir.join(&e)) {
            out.insert(target, n);
        }
    }
    out
}

/// The accelerators as pool devices, in PCI order. A VF's `pf_pci` is its PF (for
/// `rootDevices`), a PF's is itself; none has a netdev, so `pfNames` selects nothing.
pub fn candidates(node: &Node) -> Vec<PoolDevice> {
    let mut out: Vec<PoolDevice> = node
        .accelerators
        .iter()
        .map(|a| PoolDevice {
            pci: a.pci,
            vendor: a.vendor,
            device: a.device,
            driver: a.driver.clone(),
            pf_pci: a.pf.unwrap_or(a.pci),
            pf_name: None,
            vf_index: a.vf_index,
            netdev: None,
            numa_node: a.numa_node,
            iommu_group: None,
            link_type: None,
            rdma: false,
            acpi_index: a.acpi_index,
            kind: DeviceKind::Accelerator,
            vdpa: None,
            p_key: None,
            ddp_profile: None,
        })
        .collect();
    out.sort_by_key(|d| d.pci);
    out
}
