//! Assigning discovered devices to resource pools.
//!
//! Candidates are every VF, plus PFs without VFs enabled (as the upstream device plugin offers
//! them), never a netdev that carries the default route. Devices are visited in PCI order and
//! each goes to the first pool whose selectors match it: the assignment is deterministic and a
//! device lands in at most one pool.

use crate::config::{Config, NetDeviceSelector, PfProvisioning, PfRef, ResourceConfig};
use crate::discovery::{DiscoveryOptions, Node, PciNetDevice, SriovStatus, Vf};
use crate::names::{self, PciAddress};
use serde::Serialize;
use std::collections::BTreeSet;

/// A device as the selectors see it: a VF, or a whole PF without VFs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolDevice {
    pub pci: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub driver: Option<String>,
    /// The PF this VF belongs to; for a PF, itself.
    pub pf_pci: PciAddress,
    pub pf_name: Option<String>,
    /// None for a PF.
    pub vf_index: Option<u32>,
    pub netdev: Option<String>,
    pub numa_node: Option<u32>,
    pub iommu_group: Option<u32>,
    pub link_type: Option<String>,
    pub rdma: bool,
    pub acpi_index: Option<u32>,
    /// Read only when a selector uses `pKeys` / `ddpProfiles`.
    pub p_key: Option<String>,
    pub ddp_profile: Option<String>,
}

impl PoolDevice {
    fn from_vf(pf: &PciNetDevice, vf: &Vf) -> Self {
        PoolDevice {
            pci: vf.pci,
            vendor: vf.vendor,
            device: vf.device,
            driver: vf.driver.clone(),
            pf_pci: pf.pci,
            pf_name: pf.name().map(str::to_string),
            vf_index: Some(vf.index),
            netdev: vf.netdev.clone(),
            numa_node: vf.numa_node,
            iommu_group: vf.iommu_group,
            // A VF shares its PF port's link layer.
            link_type: vf
                .netdev_details
                .as_ref()
                .and_then(|n| n.link_type.clone())
                .or_else(|| pf.link_type().map(str::to_string)),
            rdma: vf.rdma,
            acpi_index: None,
            p_key: None,
            ddp_profile: None,
        }
    }

    fn from_pf(pf: &PciNetDevice) -> Self {
        PoolDevice {
            pci: pf.pci,
            vendor: pf.vendor,
            device: pf.device,
            driver: pf.driver.clone(),
            pf_pci: pf.pci,
            pf_name: pf.name().map(str::to_string),
            vf_index: None,
            netdev: pf.name().map(str::to_string),
            numa_node: pf.numa_node,
            iommu_group: None,
            link_type: pf.link_type().map(str::to_string),
            rdma: pf.rdma,
            acpi_index: pf.acpi_index,
            p_key: None,
            ddp_profile: None,
        }
    }
}

/// Go's `strings.EqualFold` for the names operators write: equal under case folding.
pub fn equal_fold(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || (!a.is_ascii() && a.to_lowercase() == b.to_lowercase())
}

/// Whether a VF (`vf_index`) of the PF `pf` (its netdev name or PCI address) is selected.
///
/// As upstream (pkg/resources/deviceSelectors.go, `pfNameSelector`/`rootDeviceSelector` with
/// `getItem` and `isSelected`): the PF is compared case-insensitively, only the first entry
/// naming it counts, and a PF device itself (no VF index) is never selected this way.
/// PCI addresses are parsed into one canonical form, so for `rootDevices` `same` is equality.
fn pf_ref_matches<T>(refs: &[PfRef<T>], same: impl Fn(&T) -> bool, vf_index: Option<u32>) -> bool {
    let Some(index) = vf_index else {
        return false;
    };
    refs.iter()
        .find(|r| same(&r.pf))
        .is_some_and(|r| r.vfs.as_ref().is_none_or(|ranges| ranges.contains(index)))
}

impl NetDeviceSelector {
    /// All keys present must match (they intersect); absent keys match everything.
    pub fn matches(&self, d: &PoolDevice) -> bool {
        (self.vendors.is_empty() || self.vendors.contains(&d.vendor))
            && (self.devices.is_empty() || self.devices.contains(&d.device))
            && (self.drivers.is_empty()
                || d.driver.as_ref().is_some_and(|x| self.drivers.contains(x)))
            && (self.pci_addresses.is_empty() || self.pci_addresses.contains(&d.pci))
            && (self.acpi_indexes.is_empty()
                || d.acpi_index.is_some_and(|i| self.acpi_indexes.contains(&i)))
            && (self.pf_names.is_empty()
                || d.pf_name
                    .as_ref()
                    .is_some_and(|n| {
                        pf_ref_matches(&self.pf_names, |p| equal_fold(p, n), d.vf_index)
                    }))
            && (self.root_devices.is_empty()
                || pf_ref_matches(&self.root_devices, |p| p == &d.pf_pci, d.vf_index))
            && (self.link_types.is_empty()
                || d.link_type
                    .as_ref()
                    .is_some_and(|l| self.link_types.contains(&l.to_ascii_lowercase())))
            && (!self.is_rdma || d.rdma)
            // pkg/resources/pKeySelector.go and ddpSelector.go: a device without one never
            // matches; values compare exactly.
            && (self.p_keys.is_empty() || d.p_key.as_ref().is_some_and(|k| self.p_keys.contains(k)))
            && (self.ddp_profiles.is_empty()
                || d.ddp_profile
                    .as_ref()
                    .is_some_and(|p| self.ddp_profiles.contains(p)))
    }
}

impl ResourceConfig {
    /// Index of the first selector object that matches, if any.
    pub fn matching_selector(&self, d: &PoolDevice) -> Option<usize> {
        self.selectors.iter().position(|s| s.matches(d))
    }
}

/// A resource pool and the devices it holds, in PCI order.
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub config: ResourceConfig,
    pub devices: Vec<PoolDevice>,
}

impl Pool {
    pub fn full_name(&self) -> String {
        self.config.full_name()
    }
}

/// The pools of a node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pools {
    pub pools: Vec<Pool>,
    /// True when the pools come from the zero-config default (no `resourceList`).
    pub zero_config: bool,
}

impl Pools {
    pub fn pool(&self, full_name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.full_name() == full_name)
    }

    /// The pool holding this device.
    pub fn pool_of(&self, pci: &PciAddress) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|p| p.devices.iter().any(|d| &d.pci == pci))
    }
}

/// What discovery must read for this config's selectors to work.
pub fn discovery_options(config: &Config) -> DiscoveryOptions {
    let selectors = || {
        config
            .resources
            .iter()
            .flatten()
            .flat_map(|r| r.selectors.iter())
    };
    DiscoveryOptions {
        vf_netdev_details: false,
        rdma: selectors().any(|s| s.is_rdma),
        acpi_index: selectors().any(|s| !s.acpi_indexes.is_empty()),
        p_keys: selectors().any(|s| !s.p_keys.is_empty()),
    }
}

/// Discovers the node with what the config's selectors need: [`discovery_options`], and the DDP
/// profiles (one devlink dump, `ddptool` only when given) when a pool selects by
/// `ddpProfiles`.
pub fn discover_for(
    sysfs: &crate::sysfs::Sysfs,
    config: &Config,
    ddptool: Option<std::path::PathBuf>,
) -> Result<Node, crate::discovery::DiscoveryError> {
    let mut node = Node::discover(sysfs, &discovery_options(config))?;
    if uses_ddp_profiles(config) {
        crate::ddp::read_profiles(&mut node, &mut crate::ddp::NodeDdp { ddptool });
    }
    Ok(node)
}

/// Whether any pool selects by `ddpProfiles`: only then are DDP profiles read
/// ([`crate::ddp::read_profiles`]), which costs a devlink request per device.
pub fn uses_ddp_profiles(config: &Config) -> bool {
    config
        .resources
        .iter()
        .flatten()
        .flat_map(|r| r.selectors.iter())
        .any(|s| !s.ddp_profiles.is_empty())
}

/// The zero-config default: one pool per SR-IOV-enabled PF, named after its netdev.
pub fn zero_config_resources(node: &Node, prefix: &str) -> Vec<ResourceConfig> {
    let mut used = BTreeSet::new();
    let mut out = Vec::new();
    for pf in &node.devices {
        if !matches!(pf.sriov, SriovStatus::Enabled { .. }) {
            continue;
        }
        let base = names::sanitize_resource_name(&pf.display_name());
        let mut name = base.clone();
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        out.push(ResourceConfig {
            resource_name: name,
            resource_prefix: prefix.to_string(),
            exclude_topology: false,
            additional_info: None,
            selectors: vec![NetDeviceSelector {
                root_devices: vec![PfRef {
                    pf: pf.pci,
                    vfs: None,
                }],
                ..Default::default()
            }],
            allocation_policy: Default::default(),
        });
    }
    out
}

/// The node's uplinks: every netdev carrying a default route. They are never pool devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplinks<'a> {
    Known(&'a [String]),
    /// They could not be determined (an unreadable route table): any device with a netdev
    /// could be one, so only devices without a netdev (vfio-pci, uio) are offered.
    Unknown,
}

impl Uplinks<'_> {
    /// Whether a device with this netdev must stay out of every pool.
    fn excludes(&self, netdev: Option<&str>) -> bool {
        match (self, netdev) {
            (_, None) => false,
            (Uplinks::Known(list), Some(n)) => list.iter().any(|d| d == n),
            (Uplinks::Unknown, Some(_)) => true,
        }
    }
}

/// Every device a pool may hold, in PCI order: VFs, and PFs that have no VFs enabled; never an
/// uplink.
pub fn candidates(node: &Node, uplinks: Uplinks<'_>) -> Vec<PoolDevice> {
    let mut out = Vec::new();
    let attrs = |mut d: PoolDevice| {
        if let Some(a) = node.selector_attrs.get(&d.pci) {
            d.p_key = a.p_key.clone();
            d.ddp_profile = a.ddp_profile.clone();
        }
        d
    };
    for pf in &node.devices {
        if pf.vfs.is_empty() {
            let d = attrs(PoolDevice::from_pf(pf));
            if !uplinks.excludes(d.netdev.as_deref()) {
                out.push(d);
            }
        }
        for vf in &pf.vfs {
            let d = attrs(PoolDevice::from_vf(pf, vf));
            if !uplinks.excludes(d.netdev.as_deref()) {
                out.push(d);
            }
        }
    }
    out.sort_by_key(|d| d.pci);
    out
}

/// Assigns devices to pools: explicit `resourceList`, or the zero-config default; the netdevs
/// in `default_route_ifaces` are left out.
pub fn assign(
    config: &Config,
    node: &Node,
    default_prefix: &str,
    default_route_ifaces: &[String],
) -> Pools {
    assign_with(
        config,
        node,
        default_prefix,
        Uplinks::Known(default_route_ifaces),
    )
}

/// [`assign`] with the uplinks as found (or not).
pub fn assign_with(
    config: &Config,
    node: &Node,
    default_prefix: &str,
    uplinks: Uplinks<'_>,
) -> Pools {
    let (resources, zero_config) = match &config.resources {
        Some(r) => (r.clone(), false),
        None => (zero_config_resources(node, default_prefix), true),
    };
    let mut pools: Vec<Pool> = resources
        .into_iter()
        .map(|config| Pool {
            config,
            devices: Vec::new(),
        })
        .collect();
    for dev in candidates(node, uplinks) {
        // Zero config serves VFs only: a PF without VFs is nobody's pool.
        if zero_config && dev.vf_index.is_none() {
            continue;
        }
        if let Some(pool) = pools
            .iter_mut()
            .find(|p| p.config.matching_selector(&dev).is_some())
        {
            pool.devices.push(dev);
        }
    }
    Pools { pools, zero_config }
}

impl PfProvisioning {
    /// Whether this entry names the PF (its keys intersect).
    pub fn matches(&self, pf: &PciNetDevice) -> bool {
        (self.pf_names.is_empty() || pf.netdevs.iter().any(|n| self.pf_names.contains(&n.name)))
            && (self.pci_addresses.is_empty() || self.pci_addresses.contains(&pf.pci))
            && (self.vendors.is_empty() || self.vendors.contains(&pf.vendor))
            && (self.devices.is_empty() || self.devices.contains(&pf.device))
            && (self.drivers.is_empty()
                || pf.driver.as_ref().is_some_and(|d| self.drivers.contains(d)))
    }
}

/// For each SR-IOV-capable PF, the first `provisioning` entry that names it.
pub fn provisioning_plan<'a>(
    config: &'a Config,
    node: &'a Node,
) -> Vec<(&'a PciNetDevice, &'a PfProvisioning)> {
    node.devices
        .iter()
        .filter(|pf| pf.sriov != SriovStatus::NotSupported)
        .filter_map(|pf| {
            config
                .provisioning
                .iter()
                .find(|p| p.matches(pf))
                .map(|p| (pf, p))
        })
        .collect()
}
