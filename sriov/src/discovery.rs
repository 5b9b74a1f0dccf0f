//! Discovery of the node's PCI network devices, their SR-IOV state and their VFs, from sysfs.
//!
//! The result is a plain value ([`Node`]) built from a [`Sysfs`] root, so it can be tested on
//! simulated trees. Only what is needed is read: a VF costs one link (`physfn`), two attributes
//! (`vendor`, `device`), its `driver` link and its `net/` folder; optional attributes (RDMA,
//! ACPI index, VF netdev details) are read only when [`DiscoveryOptions`] asks for them.
//!
//! A malformed device (garbage in an attribute, a dangling link) never aborts discovery: it is
//! skipped or degraded and reported in [`Node::warnings`], naming the path.

use crate::names::PciAddress;
use crate::sysfs::{Sysfs, SysfsError};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Discovery failed as a whole (the tree itself is unusable).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no PCI devices folder at {0} (is the sysfs root right?)")]
    NoPciBus(String),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// PCI class code 0x02xxxx: network controller.
const PCI_CLASS_NETWORK: u32 = 0x02;

/// Drivers that take a VF away from the kernel network stack (DPDK / passthrough).
pub const USERSPACE_DRIVERS: &[&str] = &["vfio-pci", "uio_pci_generic", "igb_uio"];

/// What to read beyond the essentials.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryOptions {
    /// Read each VF's netdev attributes (MAC, MTU, link state); PFs always get them.
    pub vf_netdev_details: bool,
    /// Look for an RDMA device (`infiniband/`) under each device.
    pub rdma: bool,
    /// Read `acpi_index` of each device.
    pub acpi_index: bool,
    /// Read the InfiniBand partition key of each device on an `infiniband` link (`pKeys`).
    pub p_keys: bool,
    /// Read PCI processing accelerators (class 0x12) too ([`crate::accelerator`]).
    pub accelerators: bool,
    /// Read the auxiliary devices of every network function ([`crate::aux_device`]).
    pub aux_devices: bool,
    /// Read each VF's vDPA device ([`crate::vdpa`]).
    pub vdpa: bool,
}

/// The node as discovered.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Node {
    /// Physical network devices (PFs and plain NICs), sorted by PCI address; VFs are inside.
    pub devices: Vec<PciNetDevice>,
    /// PCI accelerators, with [`DiscoveryOptions::accelerators`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accelerators: Vec<crate::accelerator::AccelDevice>,
    /// Auxiliary network devices, with [`DiscoveryOptions::aux_devices`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aux_devices: Vec<crate::aux_device::AuxDevice>,
    /// What could not be read, each naming the path.
    pub warnings: Vec<String>,
    /// Attributes only some selectors use, by device; read only when the config uses them
    /// ([`DiscoveryOptions::p_keys`], [`crate::ddp::read_profiles`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector_attrs: BTreeMap<PciAddress, SelectorAttrs>,
}

/// A device's attributes for the selectors that few configs use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SelectorAttrs {
    /// `pKeys`: the partition key at index 0 of port 1 of its first RDMA device.
    pub p_key: Option<String>,
    /// `ddpProfiles`: the DDP package it (or its PF) runs.
    pub ddp_profile: Option<String>,
}

/// The SR-IOV state of a physical device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SriovStatus {
    /// No SR-IOV capability (no `sriov_totalvfs`).
    NotSupported,
    /// Capable, 0 VFs enabled.
    Disabled { total: u32 },
    /// `enabled` of `total` VFs enabled.
    Enabled { enabled: u32, total: u32 },
}

impl std::fmt::Display for SriovStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SriovStatus::NotSupported => write!(f, "not supported"),
            SriovStatus::Disabled { total } => write!(f, "disabled (0 of {total})"),
            SriovStatus::Enabled { enabled, total } => write!(f, "enabled {enabled} of {total}"),
        }
    }
}

/// A kernel network interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Netdev {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// `operstate`: up, down, lowerlayerdown, unknown, ...
    pub operstate: Option<String>,
    /// `carrier`: None when the kernel does not report it (interface down).
    pub carrier: Option<bool>,
    /// Link type name from `type` (ARPHRD): `ether`, `infiniband`, ...
    pub link_type: Option<String>,
}

impl Netdev {
    /// Up with carrier, as far as sysfs tells.
    pub fn is_link_up(&self) -> bool {
        self.operstate.as_deref() == Some("up") && self.carrier != Some(false)
    }
}

/// A physical network device: a PF or a plain NIC.
#[derive(Debug, Clone, Serialize)]
pub struct PciNetDevice {
    pub pci: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
    /// None when the kernel reports -1 (no NUMA affinity).
    pub numa_node: Option<u32>,
    pub netdevs: Vec<Netdev>,
    pub sriov: SriovStatus,
    pub vfs: Vec<Vf>,
    pub rdma: bool,
    pub acpi_index: Option<u32>,
}

impl PciNetDevice {
    /// The first netdev's name, which is how operators name a PF.
    pub fn name(&self) -> Option<&str> {
        self.netdevs.first().map(|n| n.name.as_str())
    }

    /// "ens1f0" or, without a netdev, the PCI address.
    pub fn display_name(&self) -> String {
        self.name()
            .map(str::to_string)
            .unwrap_or_else(|| self.pci.to_string())
    }

    pub fn link_type(&self) -> Option<&str> {
        self.netdevs.first().and_then(|n| n.link_type.as_deref())
    }
}

/// A virtual function.
#[derive(Debug, Clone, Serialize)]
pub struct Vf {
    pub pci: PciAddress,
    /// N of the PF's `virtfnN` link.
    pub index: u32,
    pub pf: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub driver: Option<String>,
    /// The kernel netdev, when bound to a network driver and visible in this netns.
    pub netdev: Option<String>,
    /// Details of the netdev, with [`DiscoveryOptions::vf_netdev_details`].
    pub netdev_details: Option<Netdev>,
    /// IOMMU group, for VFs bound to vfio-pci or uio.
    pub iommu_group: Option<u32>,
    pub numa_node: Option<u32>,
    pub rdma: bool,
    /// Its vDPA device, with [`DiscoveryOptions::vdpa`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdpa: Option<crate::vdpa::VdpaDevice>,
}

impl Vf {
    /// Bound to vfio-pci or a uio driver (a DPDK / passthrough VF).
    pub fn is_userspace(&self) -> bool {
        self.driver
            .as_deref()
            .is_some_and(|d| USERSPACE_DRIVERS.contains(&d))
    }
}

/// Names the kernel's ARPHRD_* link types the way the upstream device plugin's `linkTypes` does.
pub fn link_type_name(arphrd: u32) -> String {
    match arphrd {
        1 => "ether".into(),
        32 => "infiniband".into(),
        772 => "loopback".into(),
        776 => "sit".into(),
        65534 => "none".into(),
        other => other.to_string(),
    }
}

impl Node {
    /// Discovers the node under `sysfs`.
    pub fn discover(sysfs: &Sysfs, opts: &DiscoveryOptions) -> Result<Node, DiscoveryError> {
        let dir = sysfs.pci_devices_dir();
        let names = sysfs
            .list(&dir)?
            .ok_or_else(|| DiscoveryError::NoPciBus(dir.display().to_string()))?;
        let mut node = Node::default();
        // A VF's routing ID is its PF's plus a non-zero offset, so in address order every VF
        // comes after its PF: VFs met through virtfnN links are skipped without a syscall.
        let mut known_vfs = std::collections::HashSet::new();
        let pass = Pass {
            devices: sysfs.open_dir(&dir)?,
            links: LinkTargets::default(),
        };
        for name in &names {
            let Ok(pci) = PciAddress::parse(name) else {
                node.warnings.push(format!(
                    "{}: not a PCI address, ignored",
                    dir.join(name).display()
                ));
                continue;
            };
            if known_vfs.contains(&pci) {
                continue;
            }
            let path = dir.join(name);
            // VFs are discovered through their PF's virtfnN links.
            if sysfs
                .link_name(&path.join("physfn"))
                .ok()
                .flatten()
                .is_some()
            {
                continue;
            }
            match Self::read_physical(sysfs, opts, pci, &path, &pass, &mut node.warnings) {
                Ok(Some(dev)) => {
                    known_vfs.extend(dev.vfs.iter().map(|v| v.pci));
                    node.devices.push(dev)
                }
                Ok(None) => {}
                Err(e) => node.warnings.push(format!("{pci}: skipped: {e}")),
            }
        }
        if opts.accelerators {
            known_vfs.extend(node.devices.iter().map(|d| d.pci));
            crate::accelerator::discover(sysfs, &names, &known_vfs, opts, &mut node);
        }
        if opts.aux_devices {
            crate::aux_device::discover(sysfs, &mut node);
        }
        if opts.p_keys {
            node.read_p_keys(sysfs);
        }
        Ok(node)
    }

    /// The partition key of every device on an InfiniBand link, as upstream reads it
    /// (pkg/netdevice/pciNetDevice.go `NewPciNetDevice`, only for link type `infiniband`;
    /// pkg/utils/utils.go `GetPKey` and sriovnet `GetPKeyByIndexFromPci`: the first entry of
    /// `infiniband/`, then `ports/1/pkeys/0`, trimmed). A VF shares its PF's link type.
    fn read_p_keys(&mut self, sysfs: &Sysfs) {
        let mut found = Vec::new();
        for pf in &self.devices {
            if pf.link_type() != Some("infiniband") {
                continue;
            }
            let devices = std::iter::once(pf.pci)
                .filter(|_| pf.vfs.is_empty())
                .chain(pf.vfs.iter().map(|v| v.pci));
            for pci in devices {
                let ib = sysfs.pci_device(&pci).join("infiniband");
                let first = match sysfs.list(&ib) {
                    Ok(names) => names.and_then(|n| n.into_iter().next()),
                    Err(e) => {
                        self.warnings
                            .push(format!("{e}; no partition key for {pci}"));
                        None
                    }
                };
                let Some(first) = first else { continue };
                match sysfs.read_opt(&ib.join(first).join("ports/1/pkeys/0")) {
                    Ok(Some(key)) if !key.is_empty() => found.push((pci, key)),
                    Ok(_) => {}
                    Err(e) => self
                        .warnings
                        .push(format!("{e}; no partition key for {pci}")),
                }
            }
        }
        for (pci, key) in found {
            self.selector_attrs.entry(pci).or_default().p_key = Some(key);
        }
    }

    /// Every VF of every PF, in PCI order of the PFs and VF index order.
    pub fn vfs(&self) -> impl Iterator<Item = (&PciNetDevice, &Vf)> {
        self.devices
            .iter()
            .flat_map(|pf| pf.vfs.iter().map(move |vf| (pf, vf)))
    }

    pub fn device(&self, pci: &PciAddress) -> Option<&PciNetDevice> {
        self.devices.iter().find(|d| &d.pci == pci)
    }

    pub fn device_by_name(&self, name: &str) -> Option<&PciNetDevice> {
        self.devices
            .iter()
            .find(|d| d.netdevs.iter().any(|n| n.name == name))
    }

    /// The VF with that PCI address, with its PF.
    pub fn vf(&self, pci: &PciAddress) -> Option<(&PciNetDevice, &Vf)> {
        self.vfs().find(|(_, vf)| &vf.pci == pci)
    }

    fn read_physical(
        sysfs: &Sysfs,
        opts: &DiscoveryOptions,
        pci: PciAddress,
        path: &Path,
        pass: &Pass,
        warnings: &mut Vec<String>,
    ) -> Result<Option<PciNetDevice>, SysfsError> {
        let class = sysfs.read_hex(&path.join("class"))?;
        if class >> 16 != PCI_CLASS_NETWORK {
            return Ok(None);
        }
        let vendor = read_id(sysfs, &path.join("vendor"))?;
        let device = read_id(sysfs, &path.join("device"))?;
        let driver = sysfs.link_name(&path.join("driver"))?;
        let numa_node = read_numa(sysfs, path, warnings);
        let netdevs = read_netdevs(sysfs, path, true, &LinkTargets::default())?;
        let sriov = match sysfs.read_opt(&path.join("sriov_totalvfs"))? {
            None => SriovStatus::NotSupported,
            Some(t) => {
                let total = parse_count(&t, &path.join("sriov_totalvfs"))?;
                let enabled: u32 = sysfs.read_int(&path.join("sriov_numvfs"))?;
                if enabled == 0 {
                    SriovStatus::Disabled { total }
                } else {
                    SriovStatus::Enabled { enabled, total }
                }
            }
        };
        let mut dev = PciNetDevice {
            pci,
            vendor,
            device,
            class,
            driver,
            numa_node,
            netdevs,
            sriov,
            vfs: Vec::new(),
            rdma: opts.rdma && sysfs.exists(&path.join("infiniband")),
            acpi_index: None,
        };
        if opts.acpi_index {
            dev.acpi_index = sysfs.read_int(&path.join("acpi_index")).ok();
        }
        if let SriovStatus::Enabled { .. } = sriov {
            dev.vfs = read_vfs(sysfs, opts, &dev, path, pass, warnings)?;
        }
        Ok(Some(dev))
    }
}

fn parse_count(s: &str, path: &Path) -> Result<u32, SysfsError> {
    s.trim().parse().map_err(|_| SysfsError::Malformed {
        path: path.to_path_buf(),
        content: s.to_string(),
        expected: "a decimal number",
    })
}

pub(crate) fn read_id(sysfs: &Sysfs, path: &Path) -> Result<u16, SysfsError> {
    let v = sysfs.read_hex(path)?;
    u16::try_from(v).map_err(|_| SysfsError::Malformed {
        path: path.to_path_buf(),
        content: format!("{v:#x}"),
        expected: "a 16-bit PCI ID",
    })
}

pub(crate) fn read_numa(sysfs: &Sysfs, path: &Path, warnings: &mut Vec<String>) -> Option<u32> {
    match sysfs.read_int::<i64>(&path.join("numa_node")) {
        Ok(n) if n >= 0 => u32::try_from(n).ok(),
        Ok(_) => None,
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            warnings.push(format!("{e}; NUMA node taken as none"));
            None
        }
    }
}

/// Whether the targets of symlinked `net/` entries exist, for one discovery pass.
///
/// Real sysfs has folders in a device's `net/`; simulated trees link each entry to the
/// netdev's folder in the sysfs of a network namespace, and the link dangles once the netdev
/// moved to another namespace. A pass asks about hundreds of links into the same folder: the
/// first question about a folder is answered with one lookup, later ones from a single listing
/// of that folder, so a pass does not walk a path per netdev.
#[derive(Default)]
pub(crate) struct LinkTargets {
    folders: std::cell::RefCell<HashMap<PathBuf, Folder>>,
}

enum Folder {
    /// Asked about once: answered with a lookup.
    Seen,
    /// Listed: each entry's name and whether it is a symlink itself. `None`: no such folder.
    Listed(Option<HashMap<String, bool>>),
}

impl LinkTargets {
    /// Whether the link `dir/name`, pointing to `target`, can be followed.
    fn exists(&self, sysfs: &Sysfs, dir: &Path, name: &str, target: &Path) -> bool {
        let full = dir.join(target);
        let (Some(folder), Some(file)) = (full.parent(), full.file_name()) else {
            return sysfs.exists(&dir.join(name));
        };
        let mut folders = self.folders.borrow_mut();
        let listing = match folders.get(folder) {
            None => {
                folders.insert(folder.to_path_buf(), Folder::Seen);
                return sysfs.exists(&dir.join(name));
            }
            Some(Folder::Seen) => {
                let listed = sysfs.list_entries(folder).ok().flatten();
                let listed = listed.map(|entries| entries.into_iter().collect());
                folders.insert(folder.to_path_buf(), Folder::Listed(listed));
                match folders.get(folder) {
                    Some(Folder::Listed(l)) => l,
                    _ => return sysfs.exists(&dir.join(name)),
                }
            }
            Some(Folder::Listed(l)) => l,
        };
        match listing
            .as_ref()
            .and_then(|l| l.get(file.to_string_lossy().as_ref()))
        {
            None => false,
            Some(false) => true,
            // A link to a link: follow the whole chain.
            Some(true) => sysfs.exists(&dir.join(name)),
        }
    }
}

/// What one discovery pass keeps for all its devices: the PCI devices folder held open (every
/// VF's links are read relative to it, not walked from the root: a third of a pass's time on a
/// simulated tree) and the [`LinkTargets`] of symlinked netdevs.
struct Pass {
    devices: crate::sysfs::OpenDir,
    links: LinkTargets,
}

/// One VF as its PF's `virtfnN` link names it.
struct VfAt<'a> {
    pci: PciAddress,
    index: u32,
    /// Its folder's name under the PCI devices folder.
    name: &'a str,
    /// `<devices>/<name>`, for messages and the rarely read attributes.
    path: &'a Path,
}

/// Reads the device's `net/` folder. An entry that cannot be followed (the netdev moved to
/// another network namespace) is not a netdev of this namespace.
pub(crate) fn read_netdevs(
    sysfs: &Sysfs,
    path: &Path,
    details: bool,
    links: &LinkTargets,
) -> Result<Vec<Netdev>, SysfsError> {
    let net = path.join("net");
    if details {
        let Some(entries) = sysfs.list(&net)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        for name in entries {
            if crate::names::validate_ifname(&name).is_ok() {
                if let Some(n) = read_netdev(sysfs, &net.join(&name), name)? {
                    out.push(n);
                }
            }
        }
        return Ok(out);
    }
    let entries = sysfs.list_link_targets(&net)?;
    Ok(netdev_names(sysfs, &net, entries, links))
}

/// The netdevs of a `net/` folder listed with [`Sysfs::list_link_targets`] (none when there
/// is no such folder).
fn netdev_names(
    sysfs: &Sysfs,
    net: &Path,
    entries: Option<crate::sysfs::LinkEntries>,
    links: &LinkTargets,
) -> Vec<Netdev> {
    let Some(entries) = entries else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for (name, target) in entries {
        if crate::names::validate_ifname(&name).is_err() {
            continue;
        }
        if target.is_none_or(|t| links.exists(sysfs, net, &name, &t)) {
            out.push(Netdev {
                name,
                mac: None,
                mtu: None,
                operstate: None,
                carrier: None,
                link_type: None,
            });
        }
    }
    out
}

fn read_netdev(sysfs: &Sysfs, dir: &Path, name: String) -> Result<Option<Netdev>, SysfsError> {
    let operstate = match sysfs.read(&dir.join("operstate")) {
        Ok(s) => Some(s),
        // A dangling link: the netdev lives in another network namespace now.
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mtu = sysfs.read_int(&dir.join("mtu")).ok();
    let mac = sysfs.read_opt(&dir.join("address")).ok().flatten();
    // Reading `carrier` of a down interface fails with EINVAL: that means "unknown".
    let carrier = sysfs
        .read(&dir.join("carrier"))
        .ok()
        .and_then(|c| match c.as_str() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        });
    let link_type = sysfs
        .read_int::<u32>(&dir.join("type"))
        .ok()
        .map(link_type_name);
    Ok(Some(Netdev {
        name,
        mac,
        mtu,
        operstate,
        carrier,
        link_type,
    }))
}

fn read_vfs(
    sysfs: &Sysfs,
    opts: &DiscoveryOptions,
    pf: &PciNetDevice,
    pf_path: &Path,
    pass: &Pass,
    warnings: &mut Vec<String>,
) -> Result<Vec<Vf>, SysfsError> {
    let entries = sysfs.list(pf_path)?.unwrap_or_default();
    let mut indexes: BTreeSet<u32> = BTreeSet::new();
    for e in entries {
        if let Some(n) = e.strip_prefix("virtfn") {
            match n.parse() {
                Ok(i) => {
                    indexes.insert(i);
                }
                Err(_) => warnings.push(format!(
                    "{}: not a VF link, ignored",
                    pf_path.join(&e).display()
                )),
            }
        }
    }
    let devices = pass.devices.path();
    // Per the SR-IOV spec a VF has its PF's vendor ID and the device ID of the PF's SR-IOV
    // capability (`sriov_vf_device`): one read per PF instead of two per VF.
    let vf_ids = read_id(sysfs, &pf_path.join("sriov_vf_device"))
        .ok()
        .map(|device| (pf.vendor, device));
    // The PF's folder name under the devices folder (it parsed as a PCI address).
    let pf_name = pf_path
        .file_name()
        .map_or_else(|| pf.pci.to_string(), |n| n.to_string_lossy().into_owned());
    let mut vfs = Vec::with_capacity(indexes.len());
    for index in indexes {
        let target = match sysfs.link_name_in(&pass.devices, &format!("{pf_name}/virtfn{index}")) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                warnings.push(format!("{e}; VF {index} of {} skipped", pf.pci));
                continue;
            }
        };
        let Ok(pci) = PciAddress::parse(&target) else {
            warnings.push(format!(
                "{}: points to {target:?}, not a PCI address; VF skipped",
                pf_path.join(format!("virtfn{index}")).display()
            ));
            continue;
        };
        let path = devices.join(&target);
        let at = VfAt {
            pci,
            index,
            name: &target,
            path: &path,
        };
        let vf = read_vf(sysfs, opts, pf, pass, &at, vf_ids).and_then(|mut vf| {
            read_vf_netdev(sysfs, opts, &mut vf, pass, &at)?;
            Ok(vf)
        });
        match vf {
            Ok(mut vf) => {
                if opts.vdpa {
                    vf.vdpa = crate::vdpa::read(sysfs, &path, warnings);
                }
                vfs.push(vf)
            }
            Err(e) => warnings.push(format!("VF {index} ({pci}) of {} skipped: {e}", pf.pci)),
        }
    }
    Ok(vfs)
}

fn read_vf(
    sysfs: &Sysfs,
    opts: &DiscoveryOptions,
    pf: &PciNetDevice,
    pass: &Pass,
    at: &VfAt,
    ids: Option<(u16, u16)>,
) -> Result<Vf, SysfsError> {
    let (path, name) = (at.path, at.name);
    let (vendor, device) = match ids {
        Some(ids) => ids,
        None => (
            read_id(sysfs, &path.join("vendor"))?,
            read_id(sysfs, &path.join("device"))?,
        ),
    };
    let driver = sysfs.link_name_in(&pass.devices, &format!("{name}/driver"))?;
    // An unbound VF is legal, but so is a virtfnN link to a folder that is gone: tell them
    // apart (the only case where nothing else read above would have failed).
    if driver.is_none() && !sysfs.exists(path) {
        return Err(SysfsError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the PF's virtfn link points to a missing device",
            ),
        });
    }
    let mut vf = Vf {
        pci: at.pci,
        index: at.index,
        pf: pf.pci,
        vendor,
        device,
        driver,
        netdev: None,
        netdev_details: None,
        iommu_group: None,
        // A VF sits on its PF's NUMA node; no need to read it again.
        numa_node: pf.numa_node,
        rdma: opts.rdma && sysfs.exists_in(&pass.devices, &format!("{name}/infiniband")),
        vdpa: None,
    };
    if vf.is_userspace() {
        if let Some(group) = sysfs.link_name_in(&pass.devices, &format!("{name}/iommu_group"))? {
            vf.iommu_group = Some(group.parse().map_err(|_| SysfsError::Malformed {
                path: path.join("iommu_group"),
                content: group,
                expected: "a link to an IOMMU group number",
            })?);
        }
    }
    Ok(vf)
}

/// The netdev of a VF bound to a kernel driver.
fn read_vf_netdev(
    sysfs: &Sysfs,
    opts: &DiscoveryOptions,
    vf: &mut Vf,
    pass: &Pass,
    at: &VfAt,
) -> Result<(), SysfsError> {
    if vf.is_userspace() {
        return Ok(());
    }
    let mut netdevs = if opts.vf_netdev_details {
        read_netdevs(sysfs, at.path, true, &pass.links)?
    } else {
        let entries = sysfs.list_link_targets_in(&pass.devices, &format!("{}/net", at.name))?;
        netdev_names(sysfs, &at.path.join("net"), entries, &pass.links)
    };
    if !netdevs.is_empty() {
        let first = netdevs.swap_remove(0);
        vf.netdev = Some(first.name.clone());
        if opts.vf_netdev_details {
            vf.netdev_details = Some(first);
        }
    }
    Ok(())
}

/// Why the node's uplinks could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cannot read the routes of {netns}: {source}")]
    Netlink {
        netns: String,
        #[source]
        source: crate::netlink::NetlinkError,
    },
    #[error("a default route (table {table}) goes through nexthop object {id}, whose interface is not resolved")]
    NexthopObject { table: u32, id: u32 },
    #[error("a default route (table {table}) names no output interface")]
    NoInterface { table: u32 },
}

/// `RT_TABLE_LOCAL`: the kernel's own routes (local and broadcast addresses).
const LOCAL_TABLE: u32 = 255;

/// The node's uplinks: every interface carrying a default route (IPv4 or IPv6, any table but
/// the local one, each next hop of a multipath route) in network namespace `netns` (None: the
/// calling thread's), from a netlink route dump. The upstream device plugin never hands those
/// out; neither do we, and when they cannot be determined the caller must assume any netdev
/// may be one ([`crate::pools::Uplinks::Unknown`]).
pub fn default_route_interfaces(netns: Option<&Path>) -> Result<Vec<String>, UplinkError> {
    use crate::netlink::{NetlinkSocket, Netns};
    let err = |source| UplinkError::Netlink {
        netns: netns.map_or_else(
            || "this network namespace".into(),
            |p| p.display().to_string(),
        ),
        source,
    };
    let mut socket = match netns {
        Some(path) => NetlinkSocket::new_in(&Netns::open(path).map_err(err)?),
        None => NetlinkSocket::new(),
    }
    .map_err(err)?;
    let routes = socket.routes().map_err(err)?;
    let mut out: Vec<String> = Vec::new();
    for r in routes
        .iter()
        .filter(|r| r.is_default_unicast() && r.table != LOCAL_TABLE)
    {
        if r.oifs().next().is_none() {
            return Err(match r.nexthop_id {
                Some(id) => UplinkError::NexthopObject { table: r.table, id },
                None => UplinkError::NoInterface { table: r.table },
            });
        }
        for index in r.oifs() {
            let name = socket.link_by_index(index).map_err(err)?.name;
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_display() {
        assert_eq!(SriovStatus::NotSupported.to_string(), "not supported");
        assert_eq!(
            SriovStatus::Enabled {
                enabled: 4,
                total: 7
            }
            .to_string(),
            "enabled 4 of 7"
        );
        assert_eq!(link_type_name(1), "ether");
        assert_eq!(link_type_name(32), "infiniband");
    }

    /// Symlinked `net/` entries (simulated trees) count only when their target exists, also
    /// when answered from the listing of the target folder, and a whole pass reads that folder
    /// once instead of following each link.
    #[test]
    fn linked_netdevs_count_only_when_their_target_exists() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("netns/net");
        std::fs::create_dir_all(&live).unwrap();
        let dev = |i: u32| tmp.path().join(format!("dev{i}"));
        for i in 0..40 {
            std::fs::create_dir_all(dev(i).join("net")).unwrap();
            let name = format!("eth{i}");
            // Every third netdev "moved away": its folder is gone, the link dangles. Some
            // targets are links themselves: to a folder, or dangling.
            match i {
                _ if i % 3 == 0 => {}
                _ if i % 5 == 0 => {
                    std::fs::create_dir(live.join(format!("real{i}"))).unwrap();
                    symlink(format!("real{i}"), live.join(&name)).unwrap();
                }
                _ if i % 7 == 0 => symlink("nowhere", live.join(&name)).unwrap(),
                _ => std::fs::create_dir(live.join(&name)).unwrap(),
            }
            // Absolute targets (as the lab makes them), and relative ones for a few devices.
            let target = if i % 4 != 1 {
                live.join(&name)
            } else {
                PathBuf::from("../../netns/net").join(&name)
            };
            symlink(&target, dev(i).join("net").join(&name)).unwrap();
        }
        // A folder entry is a netdev without a lookup.
        std::fs::create_dir_all(dev(40).join("net/eth40")).unwrap();
        let sysfs = Sysfs::new(tmp.path());
        let links = LinkTargets::default();
        let mut present = 0;
        for i in 0..=40 {
            let found = read_netdevs(&sysfs, &dev(i), false, &links).unwrap();
            let names: Vec<_> = found.iter().map(|n| n.name.as_str()).collect();
            let name = format!("eth{i}");
            let exists = dev(i).join("net").join(&name).exists();
            let expected = i == 40 || (i % 3 != 0 && (i % 5 == 0 || i % 7 != 0));
            assert_eq!(exists, expected, "test tree, {name}");
            assert_eq!(
                names,
                if exists { vec![name.as_str()] } else { vec![] },
                "{name}"
            );
            present += usize::from(exists);
        }
        assert_eq!(present, 24);
        // Per device the listing of `net/` and one readlink. The absolute target folder is
        // listed once (after one lookup); relative forms are looked up, and so is each link to
        // a link.
        let lookups = (0..40)
            .filter(|i| i % 4 == 1 || (i % 3 != 0 && (i % 5 == 0 || i % 7 == 0)))
            .count() as u64;
        assert_eq!(sysfs.reads(), 41 + 40 + 2 + lookups);
    }
}
