//! vDPA (`vdpaType: virtio | vhost` in a netDevice selector): a VF whose vDPA device is bound
//! to `virtio_vdpa` (the container gets a virtio netdev) or `vhost_vdpa` (it gets the
//! `/dev/vhost-vdpa-N` character device).
//!
//! The kernel's layout, which we read (govdpa reads the vDPA devices of a VF over the vdpa
//! generic netlink family and then the same sysfs folders; we find them in sysfs directly):
//! - `bus/pci/devices/<vf>/vdpaN/`, also `bus/vdpa/devices/vdpaN`, with its `driver` link
//!   (`bus/vdpa/drivers/vhost_vdpa` or `virtio_vdpa`);
//! - vhost: `vdpaN/vhost-vdpa-M/`, whose device node is `/dev/vhost-vdpa-M`;
//! - virtio: `bus/pci/devices/<vf>/virtioM/` (the virtio device's parent is the VF), also
//!   `bus/virtio/devices/virtioM`, with its netdev under `net/`.
//!
//! What upstream does with it (pkg/netdevice/netDeviceProvider.go `GetFilteredDevices` and
//! `ValidConfig`, pkg/infoprovider/vdpaInfoProvider.go, pkg/netdevice/netResourcePool.go
//! `StoreDeviceInfoFile`, pkg/utils/vdpa_provider.go `GetVdpaDeviceByPci`):
//! - a pool with `vdpaType` holds only VFs whose (first) vDPA device is bound to that type's
//!   driver; `vdpaType` and `isRdma` exclude each other;
//! - vhost: a device spec for `/dev/vhost-vdpa-M` and `"vdpa": {"mount": "/dev/vhost-vdpa-M"}`
//!   in `_INFO`; virtio: no device node and `"vdpa": {}`;
//! - the device-information file is of type `vdpa`: `parent-device` (the vDPA device),
//!   `driver` (`vhost`/`virtio`), `path` (vhost only), `pci-address`.
//!
//! Upstream fills the `_INFO` `mount` of a vhost device only from a device's second Allocate
//! on (it remembers the path its device-spec step found, which runs after the envs); we give
//! it every time.

use crate::devinfo::{AllocatedDevice, DevInfoError, DeviceNode};
use crate::names::PciAddress;
use crate::owned_dir::{Access, OwnedDir};
use crate::sysfs::{Sysfs, SysfsError};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `vdpaType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VdpaType {
    Virtio,
    Vhost,
}

impl VdpaType {
    pub fn parse(s: &str) -> Option<VdpaType> {
        match s {
            "virtio" => Some(VdpaType::Virtio),
            "vhost" => Some(VdpaType::Vhost),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VdpaType::Virtio => "virtio",
            VdpaType::Vhost => "vhost",
        }
    }

    /// The vDPA bus driver of this type (pkg/types/types.go `SupportedVdpaTypes`).
    pub fn driver(self) -> &'static str {
        match self {
            VdpaType::Virtio => "virtio_vdpa",
            VdpaType::Vhost => "vhost_vdpa",
        }
    }
}

/// A VF's vDPA device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VdpaDevice {
    /// `vdpa0`
    pub name: String,
    /// `vhost_vdpa`, `virtio_vdpa`, or None when unbound.
    pub driver: Option<String>,
    /// `vhost-vdpa-0`, when bound to vhost_vdpa.
    pub vhost: Option<String>,
    /// `virtio2`, when bound to virtio_vdpa.
    pub virtio: Option<String>,
    /// The virtio device's netdev.
    pub virtio_netdev: Option<String>,
}

impl VdpaDevice {
    /// The type this device serves: its driver's, once the driver's device exists (a
    /// vhost-vdpa character device, a virtio device); else none (govdpa `getBusInfo` fails
    /// such a device, so upstream offers it to no vDPA pool).
    pub fn vdpa_type(&self) -> Option<VdpaType> {
        match self.driver.as_deref()? {
            "vhost_vdpa" if self.vhost.is_some() => Some(VdpaType::Vhost),
            "virtio_vdpa" if self.virtio.is_some() => Some(VdpaType::Virtio),
            _ => None,
        }
    }

    /// `/dev/vhost-vdpa-0` as the container sees it.
    pub fn vhost_path(&self) -> Option<String> {
        self.vhost.as_ref().map(|v| format!("/dev/{v}"))
    }

    /// The `_INFO` entry (pkg/infoprovider/vdpaInfoProvider.go `GetEnvVal`).
    pub fn info_entry(&self) -> Value {
        match self.vhost_path() {
            Some(p) if self.vdpa_type() == Some(VdpaType::Vhost) => json!({ "mount": p }),
            _ => json!({}),
        }
    }

    /// The device-information file (spec 1.1.0, type `vdpa`).
    pub fn file_json(&self, pci: &PciAddress, pf_pci: &PciAddress) -> Value {
        let mut vdpa = serde_json::Map::new();
        vdpa.insert("parent-device".into(), json!(self.name));
        if let Some(t) = self.vdpa_type() {
            vdpa.insert("driver".into(), json!(t.as_str()));
            if t == VdpaType::Vhost {
                vdpa.insert("path".into(), json!(self.vhost_path()));
            }
        }
        vdpa.insert("pci-address".into(), json!(pci.to_string()));
        vdpa.insert("pf-pci-address".into(), json!(pf_pci.to_string()));
        json!({ "type": "vdpa", "version": crate::devinfo::DEVINFO_VERSION, "vdpa": vdpa })
    }
}

fn is_named(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The first vDPA device of the VF in `vf_dir` (by name), if any. An unreadable one is a
/// warning and no device.
pub fn read(sysfs: &Sysfs, vf_dir: &Path, warnings: &mut Vec<String>) -> Option<VdpaDevice> {
    let entries = match sysfs.list(vf_dir) {
        Ok(e) => e.unwrap_or_default(),
        Err(e) => {
            warnings.push(format!("{e}; no vDPA device read"));
            return None;
        }
    };
    let mut names: Vec<&String> = entries.iter().filter(|e| is_named(e, "vdpa")).collect();
    names.sort_by_key(|n| (n.len(), n.to_string()));
    let name = names.first()?.to_string();
    let dir = vf_dir.join(&name);
    let driver = match sysfs.link_name(&dir.join("driver")) {
        Ok(d) => d,
        Err(e) => {
            warnings.push(format!("{e}; vDPA device {name} skipped"));
            return None;
        }
    };
    let mut dev = VdpaDevice {
        name,
        driver,
        vhost: None,
        virtio: None,
        virtio_netdev: None,
    };
    match dev.driver.as_deref() {
        Some("vhost_vdpa") => {
            dev.vhost = sysfs
                .list(&dir)
                .ok()
                .flatten()
                .unwrap_or_default()
                .into_iter()
                .find(|e| is_named(e, "vhost-vdpa-"));
        }
        Some("virtio_vdpa") => {
            dev.virtio = entries
                .iter()
                .find(|e| {
                    is_named(e, "virtio")
                        && sysfs.exists(&sysfs.root().join("bus/virtio/devices").join(e))
                })
                .cloned();
            if let Some(v) = &dev.virtio {
                dev.virtio_netdev = crate::discovery::read_netdevs(
                    sysfs,
                    &vf_dir.join(v),
                    false,
                    &crate::discovery::LinkTargets::default(),
                )
                .ok()
                .and_then(|n| n.into_iter().next())
                .map(|n| n.name);
            }
        }
        _ => {}
    }
    Some(dev)
}

fn resolve_error(pci: PciAddress, path: &Path, msg: String) -> DevInfoError {
    DevInfoError::Sysfs {
        pci,
        source: SysfsError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, msg),
        },
    }
}

/// The VF's vDPA device now, for Allocate: it must still be bound to `want`'s driver, and a
/// vhost device's node must be a character device under `dev_root`.
pub fn resolve(
    sysfs: &Sysfs,
    dev_root: &Path,
    pci: PciAddress,
    want: VdpaType,
) -> Result<VdpaDevice, DevInfoError> {
    let dir = sysfs.pci_device(&pci);
    let mut warnings = Vec::new();
    let Some(dev) = read(sysfs, &dir, &mut warnings) else {
        let why = warnings.pop().unwrap_or_else(|| "no vDPA device".into());
        return Err(resolve_error(pci, &dir, why));
    };
    if dev.vdpa_type() != Some(want) {
        return Err(resolve_error(
            pci,
            &dir.join(&dev.name),
            format!(
                "vDPA device {} is not bound to {} (driver: {})",
                dev.name,
                want.driver(),
                dev.driver.as_deref().unwrap_or("none")
            ),
        ));
    }
    if let Some(vhost) = &dev.vhost {
        use std::os::unix::fs::FileTypeExt;
        let node = dev_root.join(vhost);
        let is_char = std::fs::metadata(&node).is_ok_and(|m| m.file_type().is_char_device());
        if !is_char {
            return Err(resolve_error(
                pci,
                &node,
                format!("{} is not a character device", node.display()),
            ));
        }
    }
    Ok(dev)
}

/// Adds the `vdpa` entry of each device with a vDPA device to the `_INFO` env of `envs`.
pub fn with_info(
    mut envs: BTreeMap<String, String>,
    full_resource: &str,
    devices: &[AllocatedDevice],
    vdpa: &[Option<VdpaDevice>],
) -> BTreeMap<String, String> {
    if vdpa.iter().all(Option::is_none) {
        return envs;
    }
    let key = format!("{}_INFO", crate::devinfo::env_name(full_resource));
    let Some(mut info) = envs
        .get(&key)
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    else {
        return envs;
    };
    for (d, v) in devices.iter().zip(vdpa) {
        if let (Some(v), Some(entry)) = (v, info.get_mut(d.pci.to_string())) {
            entry["vdpa"] = v.info_entry();
        }
    }
    envs.insert(key, info.to_string());
    envs
}

/// Adds `/dev/vhost-vdpa-N` of each vhost vDPA device (host path under `dev_root`).
pub fn add_device_nodes(nodes: &mut Vec<DeviceNode>, dev_root: &Path, vdpa: &[Option<VdpaDevice>]) {
    for v in vdpa.iter().flatten() {
        let (Some(vhost), Some(path)) = (&v.vhost, v.vhost_path()) else {
            continue;
        };
        if !nodes.iter().any(|n| n.container_path == path) {
            nodes.push(DeviceNode {
                container_path: path,
                host_path: dev_root.join(vhost),
                permissions: "rw",
            });
        }
    }
}

/// Writes the device's `vdpa` device-information file, as [`crate::devinfo::write_file`]
/// writes a `pci` one (same name, same folder rules).
pub fn write_file(
    dir: &Path,
    full_resource: &str,
    d: &AllocatedDevice,
    v: &VdpaDevice,
) -> Result<PathBuf, DevInfoError> {
    let name = crate::devinfo::file_name(full_resource, &d.pci);
    let path = dir.join(&name);
    let text = v.file_json(&d.pci, &d.pf_pci).to_string();
    OwnedDir::open(dir, Access::Shared, true)
        .and_then(|folder| folder.write_atomic(&name, text.as_bytes(), 0o644))
        .map_err(|source| DevInfoError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}
