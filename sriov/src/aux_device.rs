//! `deviceType: auxNetDevice`: auxiliary-bus network devices, such as Mellanox scalable
//! functions (`/sys/bus/auxiliary/devices/mlx5_core.sf.4`), each with its own netdev and RDMA
//! device, deployed on a parent PCI function (a PF, or a VF).
//!
//! What upstream does, and we with it (pkg/auxnetdevice, pkg/devices/gen_net.go
//! `NewGenNetDevice`, sriovnet's `GetAuxNetDevicesFromPci`, `GetSfIndexByAuxDev`,
//! `GetPfPciFromAux`, `GetUplinkRepresentor`):
//! - the devices are the folders `<driver>.<type>.<n>` inside the folder of a network PCI
//!   function that has a `net/` folder;
//! - the kubelet ID is the auxiliary device's name; vendor, device, driver and NUMA node are
//!   the parent function's; the function index (`pfNames`/`rootDevices` ranges) is `sfnum`, and
//!   a device without one is skipped; `rootDevices` names the parent function; `pfNames` the
//!   parent's uplink representor (a switchdev netdev whose `phys_port_name` is `p<N>`), else
//!   the parent's first netdev;
//! - `auxTypes` is required and only `sf` is accepted (pkg/auxnetdevice/auxNetDeviceProvider.go
//!   `ValidConfig`);
//! - Allocate: the generic `_INFO` entry with the device's name, RDMA and vhost-net entries and
//!   device nodes as for a VF, `additionalInfo` looked up by the parent's PCI address
//!   (pkg/auxnetdevice/auxNetDevice.go `NewAuxNetDevice` builds the extra-info provider from
//!   the parent's address), and no device-information file (the auxNetDevice pool keeps
//!   pkg/resources/pool_stub.go `StoreDeviceInfoFile`, which writes none).
//!
//! Unlike upstream, a device whose netdev carries a default route is never offered (as for
//! VFs), and RDMA is read from sysfs only (upstream also asks devlink's `enable_rdma`).

use crate::config::{invalid, ConfigError, NetDeviceSelector};
use crate::devinfo::{AllocatedDevice, DevInfoError};
use crate::discovery::{read_netdevs, Node};
use crate::names::PciAddress;
use crate::pools::{DeviceKind, PoolDevice, Uplinks};
use crate::sysfs::{Sysfs, SysfsError};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The selectors of an auxNetDevice pool (upstream's `AuxNetDeviceSelectors`).
pub const SELECTOR_KEYS: &[&str] = &[
    "vendors",
    "devices",
    "drivers",
    "pfNames",
    "rootDevices",
    "linkTypes",
    "isRdma",
    "needVhostNet",
    "auxTypes",
];

/// The auxiliary device types upstream serves.
pub const SUPPORTED_AUX_TYPES: &[&str] = &["sf"];

/// Longest auxiliary device name we accept (a sysfs folder name; the kernel's are short).
const MAX_NAME_LEN: usize = 64;

/// What identifies an auxiliary pool device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuxId {
    /// `mlx5_core.sf.4`: the kubelet device ID.
    pub name: String,
    /// `sf`
    pub aux_type: String,
}

/// One auxiliary network device as discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuxDevice {
    pub name: String,
    pub aux_type: String,
    /// `sfnum`.
    pub sf_index: u32,
    /// The PCI function it is deployed on.
    pub parent: PciAddress,
    /// The name `pfNames` matches.
    pub pf_name: Option<String>,
    /// Its netdev in this network namespace.
    pub netdev: Option<String>,
    pub link_type: Option<String>,
    /// It has an RDMA device (`infiniband/`), read when a pool asks for `isRdma`.
    pub rdma: bool,
    pub vendor: u16,
    pub device: u16,
    pub driver: Option<String>,
    pub numa_node: Option<u32>,
}

/// Splits `<driver>.<type>.<n>` (pkg/utils/utils.go `ParseAuxDeviceType`): the type, when the
/// name is an auxiliary device's. Also checks the name can be a path component: no `/`, no
/// control characters, not `.`/`..`, at most 64 bytes.
pub fn aux_type_of(name: &str) -> Option<&str> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
    {
        return None;
    }
    let mut parts = name.split('.');
    let (driver, kind, n) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || driver.is_empty() || kind.is_empty() {
        return None;
    }
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(kind)
}

/// Validates an auxiliary device name that came from outside (kubelet, a NAD's `deviceID`)
/// before it reaches a path.
pub fn validate_name(name: &str) -> Result<(), String> {
    aux_type_of(name).map(|_| ()).ok_or_else(|| {
        format!("{name:?} is not an auxiliary device name such as \"mlx5_core.sf.4\"")
    })
}

/// `<root>/bus/auxiliary/devices/<name>`; `name` must pass [`validate_name`].
pub fn sysfs_dir(sysfs: &Sysfs, name: &str) -> PathBuf {
    sysfs.root().join("bus/auxiliary/devices").join(name)
}

/// upstream's `ValidConfig` for auxNetDevice pools.
pub(crate) fn check_selector(s: &NetDeviceSelector, at: &str) -> Result<(), ConfigError> {
    if s.aux_types.is_empty() {
        return Err(invalid(
            at,
            "auxTypes is required for deviceType auxNetDevice (e.g. \"auxTypes\": [\"sf\"])",
        ));
    }
    for t in &s.aux_types {
        if !SUPPORTED_AUX_TYPES.contains(&t.as_str()) {
            return Err(invalid(
                &format!("{at}.auxTypes"),
                format!("{t:?} is not supported (as upstream: only \"sf\")"),
            ));
        }
    }
    Ok(())
}

/// Reads the auxiliary devices of every network function of `node` (PFs, NICs and kernel VFs).
pub(crate) fn discover(sysfs: &Sysfs, node: &mut Node) {
    struct Parent {
        pci: PciAddress,
        vendor: u16,
        device: u16,
        driver: Option<String>,
        numa_node: Option<u32>,
        /// Where its uplink representor is looked for: its PF's netdevs.
        pf: PciAddress,
        link_type: Option<String>,
        first_netdev: Option<String>,
    }
    let mut parents = Vec::new();
    for d in &node.devices {
        parents.push(Parent {
            pci: d.pci,
            vendor: d.vendor,
            device: d.device,
            driver: d.driver.clone(),
            numa_node: d.numa_node,
            pf: d.pci,
            link_type: d.link_type().map(str::to_string),
            first_netdev: d.name().map(str::to_string),
        });
        for vf in d.vfs.iter().filter(|v| !v.is_userspace()) {
            parents.push(Parent {
                pci: vf.pci,
                vendor: vf.vendor,
                device: vf.device,
                driver: vf.driver.clone(),
                numa_node: vf.numa_node,
                pf: d.pci,
                link_type: d.link_type().map(str::to_string),
                first_netdev: vf.netdev.clone(),
            });
        }
    }
    let mut found = Vec::new();
    let links = crate::discovery::LinkTargets::default();
    for p in parents {
        let dir = sysfs.pci_device(&p.pci);
        // sriovnet GetAuxNetDevicesFromPci: only network functions (a `net/` folder).
        if !sysfs.exists(&dir.join("net")) {
            continue;
        }
        let Ok(Some(entries)) = sysfs.list_entries(&dir) else {
            continue;
        };
        let mut uplink: Option<Option<String>> = None;
        for (name, is_link) in entries {
            let Some(aux_type) = aux_type_of(&name) else {
                continue;
            };
            let aux_dir = dir.join(&name);
            // Auxiliary devices are folders here; links (`driver`, `physfn`, ...) are not.
            if is_link || !sysfs.exists(&aux_dir) {
                continue;
            }
            let sf_index = match sysfs.read_int::<u32>(&aux_dir.join("sfnum")) {
                Ok(n) => n,
                Err(e) => {
                    if SUPPORTED_AUX_TYPES.contains(&aux_type) {
                        node.warnings.push(format!("{e}; auxiliary device skipped"));
                    }
                    continue;
                }
            };
            let netdevs = match read_netdevs(sysfs, &aux_dir, false, &links) {
                Ok(n) => n,
                Err(e) => {
                    node.warnings.push(format!("{e}; auxiliary device skipped"));
                    continue;
                }
            };
            let netdev = netdevs.into_iter().next().map(|n| n.name);
            let link_type = netdev
                .as_ref()
                .and_then(|n| {
                    sysfs
                        .read_int::<u32>(&aux_dir.join("net").join(n).join("type"))
                        .ok()
                })
                .map(crate::discovery::link_type_name)
                .or_else(|| p.link_type.clone());
            let pf_name = uplink
                .get_or_insert_with(|| {
                    uplink_representor(sysfs, &p.pf).or_else(|| p.first_netdev.clone())
                })
                .clone();
            found.push(AuxDevice {
                aux_type: aux_type.to_string(),
                name,
                sf_index,
                parent: p.pci,
                pf_name,
                netdev,
                link_type,
                rdma: sysfs
                    .list(&aux_dir.join("infiniband"))
                    .ok()
                    .flatten()
                    .is_some_and(|l| !l.is_empty()),
                vendor: p.vendor,
                device: p.device,
                driver: p.driver.clone(),
                numa_node: p.numa_node,
            });
        }
    }
    found.sort_by(|a, b| (a.parent, &a.name).cmp(&(b.parent, &b.name)));
    node.aux_devices = found;
}

/// sriovnet `GetUplinkRepresentor`: the PF netdev in switchdev mode (a `phys_switch_id`) whose
/// `phys_port_name` is `p<N>`.
fn uplink_representor(sysfs: &Sysfs, pf: &PciAddress) -> Option<String> {
    let net = sysfs.pci_device(pf).join("net");
    for name in sysfs.list(&net).ok().flatten()? {
        let dir = net.join(&name);
        let switch_id = sysfs.read(&dir.join("phys_switch_id")).unwrap_or_default();
        let port = sysfs.read(&dir.join("phys_port_name")).unwrap_or_default();
        let is_uplink = port
            .strip_prefix('p')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !switch_id.is_empty() && is_uplink {
            return Some(name);
        }
    }
    None
}

/// The auxiliary devices as pool devices, in (parent, name) order; never one whose netdev is
/// an uplink.
pub fn candidates(node: &Node, uplinks: Uplinks<'_>) -> Vec<PoolDevice> {
    node.aux_devices
        .iter()
        .filter(|a| !uplinks.excludes(a.netdev.as_deref()))
        .map(|a| PoolDevice {
            pci: a.parent,
            vendor: a.vendor,
            device: a.device,
            driver: a.driver.clone(),
            pf_pci: a.parent,
            pf_name: a.pf_name.clone(),
            vf_index: Some(a.sf_index),
            netdev: a.netdev.clone(),
            numa_node: a.numa_node,
            iommu_group: None,
            link_type: a.link_type.clone(),
            rdma: a.rdma,
            acpi_index: None,
            kind: DeviceKind::Aux(AuxId {
                name: a.name.clone(),
                aux_type: a.aux_type.clone(),
            }),
            vdpa: None,
            p_key: None,
            ddp_profile: None,
        })
        .collect()
}

/// What Allocate needs of an auxiliary device now: its parent's driver, and with `rdma` the
/// RDMA device and character devices under the auxiliary device (rdmamap
/// `GetRdmaDevicesForAuxdev`). The result's `pci` is the parent function.
pub fn resolve(
    sysfs: &Sysfs,
    name: &str,
    parent: PciAddress,
    rdma: bool,
) -> Result<AllocatedDevice, DevInfoError> {
    let err = |source| DevInfoError::Sysfs {
        pci: parent,
        source,
    };
    validate_name(name).map_err(|msg| {
        err(SysfsError::Io {
            path: PathBuf::from(name),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg),
        })
    })?;
    let dir = sysfs_dir(sysfs, name);
    if !sysfs.exists(&dir) {
        return Err(err(SysfsError::Io {
            path: dir,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the auxiliary device is gone",
            ),
        }));
    }
    let mut d = crate::devinfo::resolve(sysfs, parent, parent, false)?;
    if rdma {
        d.rdma_devices = sysfs
            .list(&dir.join("infiniband"))
            .map_err(err)?
            .unwrap_or_default();
        for class in ["infiniband_verbs", "infiniband_mad"] {
            if let Some(names) = sysfs.list(&dir.join(class)).map_err(err)? {
                d.rdma_char_devices.extend(names);
            }
        }
        // In upstream's order (rdmamap GetRdmaCharDevices: ucm, issm, umad, uverbs).
        d.rdma_char_devices.sort_by_key(|n| {
            ["ucm", "issm", "umad", "uverbs"]
                .iter()
                .position(|p| n.starts_with(p))
                .unwrap_or(4)
        });
    }
    Ok(d)
}

/// The two environment variables of a container of an auxNetDevice pool: the device names,
/// and `_INFO` keyed by name. Each entry is what a VF's would be (from
/// [`crate::devinfo::info_json`] over the resolved parent) with `generic.deviceID` the
/// device's name; `additionalInfo` applies by the parent's PCI address, as upstream.
pub fn envs(
    full_resource: &str,
    pool: &crate::devinfo::PoolInfo<'_>,
    devices: &[(&str, AllocatedDevice)],
) -> BTreeMap<String, String> {
    let key = crate::devinfo::env_name(full_resource);
    let mut info = serde_json::Map::new();
    for (name, d) in devices {
        let one = crate::devinfo::info_json(pool, std::slice::from_ref(d));
        let mut entry = one
            .get(d.pci.to_string())
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        entry["generic"] = serde_json::json!({ "deviceID": name });
        info.insert(name.to_string(), entry);
    }
    let names: Vec<&str> = devices.iter().map(|(n, _)| *n).collect();
    BTreeMap::from([
        (format!("{key}_INFO"), Value::Object(info).to_string()),
        (key, names.join(",")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pkg/utils/utils.go ParseAuxDeviceType: three dot-separated parts, the last a number.
    #[test]
    fn names() {
        assert_eq!(aux_type_of("mlx5_core.sf.4"), Some("sf"));
        assert_eq!(aux_type_of("mlx5_core.eth.0"), Some("eth"));
        for bad in [
            "mlx5_core.sf",
            "mlx5_core.sf.x",
            "a.b.c.1",
            "0000:3b:00.0",
            "../sf.1",
            "a/b.sf.1",
            ".sf.1",
            "x..1",
            "x.sf.-1",
            "x.sf.1\n",
        ] {
            assert_eq!(aux_type_of(bad), None, "{bad:?}");
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&format!("{}.sf.1", "a".repeat(70))).is_err());
    }
}
