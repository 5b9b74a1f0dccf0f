//! What a container gets for its devices: the upstream-compatible environment variables, the
//! device nodes, and the device-information files (spec 1.1.0) that CNIs read.
//!
//! Everything that can change while the daemon runs (a VF's driver, its IOMMU group, its RDMA
//! device) is read from sysfs at allocation time through [`resolve`], never remembered from
//! start-up: IOMMU group numbers change when a VF is rebound or the node reboots.

use crate::names::PciAddress;
use crate::owned_dir::{Access, FileError, OwnedDir};
use crate::sysfs::{Sysfs, SysfsError};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The device-information spec version written.
pub const DEVINFO_VERSION: &str = "1.1.0";
/// Where the upstream device plugin writes its device-information files.
pub const DEFAULT_DEVINFO_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo/dp";
/// The VFIO container device every VFIO user opens.
pub const VFIO_CONTAINER: &str = "/dev/vfio/vfio";

#[derive(Debug, thiserror::Error)]
pub enum DevInfoError {
    #[error("device {pci} is gone from sysfs")]
    Gone { pci: PciAddress },
    #[error("cannot resolve device {pci}: {source}")]
    Sysfs {
        pci: PciAddress,
        #[source]
        source: SysfsError,
    },
    #[error("cannot write device-information file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("cannot remove device-information file {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: FileError,
    },
}

/// A device being allocated, with what sysfs says about it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedDevice {
    pub pci: PciAddress,
    /// Its PF (itself for a PF device).
    pub pf_pci: PciAddress,
    /// The driver bound now.
    pub driver: Option<String>,
    /// The IOMMU group, for devices bound to vfio-pci or a uio driver.
    pub iommu_group: Option<u32>,
    /// The RDMA device (`mlx5_0`), when the pool is `isRdma` and the device has one.
    pub rdma_device: Option<String>,
    /// Its RDMA character devices (`uverbs0`, `umad0`, ...), as named under `/dev/infiniband`.
    pub rdma_char_devices: Vec<String>,
}

impl AllocatedDevice {
    pub fn is_vfio(&self) -> bool {
        self.driver.as_deref() == Some("vfio-pci")
    }
}

/// Reads the current state of a device from sysfs. `rdma` asks for its RDMA devices.
///
/// Every sysfs error is an error: a `driver` link that cannot be read must not turn a vfio-pci
/// device into one without VFIO device nodes. A device whose folder is gone is
/// [`DevInfoError::Gone`].
pub fn resolve(
    sysfs: &Sysfs,
    pci: PciAddress,
    pf_pci: PciAddress,
    rdma: bool,
) -> Result<AllocatedDevice, DevInfoError> {
    let dir = sysfs.pci_device(&pci);
    let err = |source| DevInfoError::Sysfs { pci, source };
    let driver = sysfs.link_name(&dir.join("driver")).map_err(err)?;
    // No driver link: unbound, or the whole device is gone.
    if driver.is_none() && !sysfs.exists(&dir) {
        return Err(DevInfoError::Gone { pci });
    }
    let userspace = driver
        .as_deref()
        .is_some_and(|d| crate::discovery::USERSPACE_DRIVERS.contains(&d));
    let iommu_group = if userspace {
        let path = dir.join("iommu_group");
        match sysfs.link_name(&path).map_err(err)? {
            Some(g) => Some(g.parse().map_err(|_| {
                err(SysfsError::Malformed {
                    path,
                    content: g,
                    expected: "a link to an IOMMU group number",
                })
            })?),
            None => None,
        }
    } else {
        None
    };
    let (mut rdma_device, mut rdma_char_devices) = (None, Vec::new());
    if rdma {
        rdma_device = sysfs
            .list(&dir.join("infiniband"))
            .map_err(err)?
            .and_then(|n| n.into_iter().next());
        // The character devices of a port sit under the PCI device in their class folders.
        for class in ["infiniband_verbs", "infiniband_mad"] {
            if let Some(names) = sysfs.list(&dir.join(class)).map_err(err)? {
                rdma_char_devices.extend(names);
            }
        }
    }
    Ok(AllocatedDevice {
        pci,
        pf_pci,
        driver,
        iommu_group,
        rdma_device,
        rdma_char_devices,
    })
}

/// `PCIDEVICE_INTEL_COM_SRIOV_NET` for `intel.com/sriov_net`: upper case, `.` and `/` → `_`
/// (hyphens stay, as upstream).
pub fn env_name(full_resource: &str) -> String {
    let mut s = String::from("PCIDEVICE_");
    s.extend(full_resource.chars().map(|c| match c {
        '.' | '/' => '_',
        c => c.to_ascii_uppercase(),
    }));
    s
}

/// The `_INFO` JSON: per device, `generic.deviceID`, `vfio` mounts for vfio-pci devices and
/// `extra` from `additionalInfo` (`*` merged with, and overridden by, the device's own entry).
pub fn info_json(
    additional_info: &BTreeMap<String, BTreeMap<String, String>>,
    devices: &[AllocatedDevice],
) -> Value {
    let mut out = Map::new();
    for d in devices {
        let pci = d.pci.to_string();
        let mut entry = Map::new();
        entry.insert("generic".into(), json!({ "deviceID": pci }));
        if d.is_vfio() {
            if let Some(group) = d.iommu_group {
                entry.insert(
                    "vfio".into(),
                    json!({ "mount": VFIO_CONTAINER, "dev-mount": format!("/dev/vfio/{group}") }),
                );
            }
        }
        let mut extra: BTreeMap<&str, &str> = BTreeMap::new();
        for key in ["*", pci.as_str()] {
            if let Some(m) = additional_info.get(key) {
                extra.extend(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
        }
        if !extra.is_empty() {
            entry.insert("extra".into(), json!(extra));
        }
        out.insert(pci, Value::Object(entry));
    }
    Value::Object(out)
}

/// The two environment variables of a container: the comma-separated device IDs and `_INFO`.
pub fn envs(
    full_resource: &str,
    additional_info: &BTreeMap<String, BTreeMap<String, String>>,
    devices: &[AllocatedDevice],
) -> BTreeMap<String, String> {
    let key = env_name(full_resource);
    let ids: Vec<String> = devices.iter().map(|d| d.pci.to_string()).collect();
    let mut out = BTreeMap::new();
    out.insert(
        format!("{key}_INFO"),
        info_json(additional_info, devices).to_string(),
    );
    out.insert(key, ids.join(","));
    out
}

/// A device node to expose: `host_path` on the node, `container_path` in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub container_path: String,
    pub host_path: PathBuf,
    pub permissions: &'static str,
}

/// The device nodes of a container: VFIO container and groups for vfio-pci devices, vhost-net
/// and tun with `need_vhost_net`, and RDMA character devices that exist. Host paths live under
/// `dev_root` (normally `/dev`); nodes that must exist but do not are skipped only for RDMA,
/// where upstream also offers "what is present".
pub fn device_nodes(
    dev_root: &Path,
    devices: &[AllocatedDevice],
    need_vhost_net: bool,
) -> Vec<DeviceNode> {
    let mut out: Vec<DeviceNode> = Vec::new();
    let mut add = |rel: &str| {
        let container_path = format!("/dev/{rel}");
        if !out.iter().any(|n| n.container_path == container_path) {
            out.push(DeviceNode {
                container_path,
                host_path: dev_root.join(rel),
                permissions: "rw",
            });
        }
    };
    for d in devices {
        if d.is_vfio() {
            if let Some(group) = d.iommu_group {
                add("vfio/vfio");
                add(&format!("vfio/{group}"));
            }
        }
    }
    if need_vhost_net {
        add("vhost-net");
        add("net/tun");
    }
    let rdma: Vec<&String> = devices.iter().flat_map(|d| &d.rdma_char_devices).collect();
    if !rdma.is_empty() {
        for name in std::iter::once(&"rdma_cm".to_string()).chain(rdma) {
            let rel = format!("infiniband/{name}");
            if dev_root.join(&rel).exists() {
                add(&rel);
            }
        }
    }
    out
}

/// `intel.com-sriov_net-0000:3b:02.0-device.json`
pub fn file_name(full_resource: &str, pci: &PciAddress) -> String {
    format!("{}-{pci}-device.json", full_resource.replace('/', "-"))
}

/// The device-information file content (spec 1.1.0).
pub fn file_json(d: &AllocatedDevice) -> Value {
    let mut pci = Map::new();
    pci.insert("pci-address".into(), json!(d.pci.to_string()));
    pci.insert("pf-pci-address".into(), json!(d.pf_pci.to_string()));
    if let Some(rdma) = &d.rdma_device {
        pci.insert("rdma-device".into(), json!(rdma));
    }
    json!({ "type": "pci", "version": DEVINFO_VERSION, "pci": pci })
}

/// Writes the device's file into `dir` (created if needed, ours, writable by nobody else),
/// atomically and without following symlinks ([`crate::owned_dir`]): a CNI reading it never sees
/// half a file. Returns its path.
pub fn write_file(
    dir: &Path,
    full_resource: &str,
    d: &AllocatedDevice,
) -> Result<PathBuf, DevInfoError> {
    let name = file_name(full_resource, &d.pci);
    let path = dir.join(&name);
    let err = |source| DevInfoError::Write {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_vec(&file_json(d)).map_err(|e| {
        err(FileError::Io {
            op: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })
    })?;
    OwnedDir::open(dir, Access::Shared, true)
        .and_then(|folder| folder.write_atomic(&name, &text, 0o644))
        .map_err(err)?;
    Ok(path)
}

/// Removes a device-information file (relative to its folder, never through a symlink); one
/// already gone, or whose folder is gone, is fine.
pub fn remove_file(path: &Path) -> Result<(), DevInfoError> {
    let err = |source| DevInfoError::Remove {
        path: path.to_path_buf(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(err(FileError::Refused {
            path: path.to_path_buf(),
            reason: "not a file path".into(),
        }));
    };
    match OwnedDir::open(dir, Access::Shared, false) {
        Ok(folder) => folder.remove(name).map(|_| ()).map_err(err),
        Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pci(s: &str) -> PciAddress {
        PciAddress::parse(s).unwrap()
    }

    fn dev(addr: &str, driver: &str, group: Option<u32>) -> AllocatedDevice {
        AllocatedDevice {
            pci: pci(addr),
            pf_pci: pci("0000:3b:00.0"),
            driver: Some(driver.into()),
            iommu_group: group,
            rdma_device: None,
            rdma_char_devices: vec![],
        }
    }

    #[test]
    fn env_names() {
        assert_eq!(
            env_name("intel.com/sriov_net"),
            "PCIDEVICE_INTEL_COM_SRIOV_NET"
        );
        assert_eq!(
            env_name("example.org/dpdk-pool"),
            "PCIDEVICE_EXAMPLE_ORG_DPDK-POOL"
        );
    }

    #[test]
    fn envs_match_upstream() {
        let mut info = BTreeMap::new();
        info.insert(
            "*".to_string(),
            BTreeMap::from([
                ("k".to_string(), "all".to_string()),
                ("x".into(), "1".into()),
            ]),
        );
        info.insert(
            "0000:3b:02.1".to_string(),
            BTreeMap::from([("k".to_string(), "mine".to_string())]),
        );
        let devs = [
            dev("0000:3b:02.0", "iavf", None),
            dev("0000:3b:02.1", "vfio-pci", Some(105)),
        ];
        let e = envs("intel.com/net", &info, &devs);
        assert_eq!(e["PCIDEVICE_INTEL_COM_NET"], "0000:3b:02.0,0000:3b:02.1");
        let v: Value = serde_json::from_str(&e["PCIDEVICE_INTEL_COM_NET_INFO"]).unwrap();
        assert_eq!(
            v,
            json!({
                "0000:3b:02.0": {"generic": {"deviceID": "0000:3b:02.0"}, "extra": {"k": "all", "x": "1"}},
                "0000:3b:02.1": {
                    "generic": {"deviceID": "0000:3b:02.1"},
                    "vfio": {"mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/105"},
                    "extra": {"k": "mine", "x": "1"}
                }
            })
        );
    }

    #[test]
    fn nodes() {
        let root = Path::new("/lab/dev");
        let devs = [
            dev("0000:3b:02.0", "vfio-pci", Some(7)),
            dev("0000:3b:02.1", "vfio-pci", Some(8)),
        ];
        let n = device_nodes(root, &devs, true);
        let paths: Vec<(&str, PathBuf)> = n
            .iter()
            .map(|n| (n.container_path.as_str(), n.host_path.clone()))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("/dev/vfio/vfio", root.join("vfio/vfio")),
                ("/dev/vfio/7", root.join("vfio/7")),
                ("/dev/vfio/8", root.join("vfio/8")),
                ("/dev/vhost-net", root.join("vhost-net")),
                ("/dev/net/tun", root.join("net/tun")),
            ]
        );
        assert!(device_nodes(root, &[dev("0000:3b:02.0", "iavf", None)], false).is_empty());
    }

    #[test]
    fn files() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = dev("0000:3b:02.3", "mlx5_core", None);
        d.rdma_device = Some("mlx5_3".into());
        let path = write_file(&dir.path().join("dp"), "nvidia.com/rdma", &d).unwrap();
        assert_eq!(
            path.file_name().unwrap(),
            "nvidia.com-rdma-0000:3b:02.3-device.json"
        );
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"type": "pci", "version": "1.1.0", "pci": {
                "pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0", "rdma-device": "mlx5_3"}})
        );
        remove_file(&path).unwrap();
        remove_file(&path).unwrap();
        assert!(!path.exists());
    }

    /// An RDMA-capable VF (as mlx5 shows it in sysfs): its RDMA device and character devices
    /// are found, and the container gets `rdma_cm` plus the ones that exist under /dev.
    #[test]
    fn rdma_devices_are_resolved_and_mapped() {
        let root = tempfile::tempdir().unwrap();
        let pci = PciAddress::parse("0000:3b:02.3").unwrap();
        let pf = PciAddress::parse("0000:3b:00.0").unwrap();
        let dev = root.path().join("sys/bus/pci/devices/0000:3b:02.3");
        for d in [
            "infiniband/mlx5_3",
            "infiniband_verbs/uverbs3",
            "infiniband_mad/umad3",
        ] {
            std::fs::create_dir_all(dev.join(d)).unwrap();
        }
        let dev_root = root.path().join("dev");
        std::fs::create_dir_all(dev_root.join("infiniband")).unwrap();
        for n in ["rdma_cm", "uverbs3"] {
            std::fs::write(dev_root.join("infiniband").join(n), "").unwrap();
        }
        let sysfs = Sysfs::new(root.path().join("sys"));
        let d = resolve(&sysfs, pci, pf, true).unwrap();
        assert_eq!(d.rdma_device.as_deref(), Some("mlx5_3"));
        assert_eq!(d.rdma_char_devices, ["uverbs3", "umad3"]);
        let nodes = device_nodes(&dev_root, std::slice::from_ref(&d), false);
        let paths: Vec<&str> = nodes.iter().map(|n| n.container_path.as_str()).collect();
        // umad3 has no node under /dev here: only what exists is offered.
        assert_eq!(
            paths,
            ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs3"]
        );
        assert_eq!(nodes[1].host_path, dev_root.join("infiniband/uverbs3"));
        assert_eq!(nodes[1].permissions, "rw");
        // Without isRdma nothing RDMA is read.
        let plain = resolve(&sysfs, pci, pf, false).unwrap();
        assert!(plain.rdma_device.is_none() && plain.rdma_char_devices.is_empty());
    }

    /// A `driver` link that cannot be read (here: a file, so readlink fails with EINVAL) or an
    /// IOMMU group that is no number are errors, not a device without a driver; a device
    /// without its folder is gone.
    #[test]
    fn sysfs_errors_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let pci = PciAddress::parse("0000:3b:02.0").unwrap();
        let pf = PciAddress::parse("0000:3b:00.0").unwrap();
        let sysfs = Sysfs::new(root.path());
        assert!(matches!(
            resolve(&sysfs, pci, pf, false),
            Err(DevInfoError::Gone { .. })
        ));
        let dev = root.path().join("bus/pci/devices/0000:3b:02.0");
        std::fs::create_dir_all(&dev).unwrap();
        assert_eq!(resolve(&sysfs, pci, pf, false).unwrap().driver, None);
        std::fs::write(dev.join("driver"), "").unwrap();
        let e = resolve(&sysfs, pci, pf, false).unwrap_err();
        assert!(matches!(e, DevInfoError::Sysfs { .. }), "{e}");
        assert!(e.to_string().contains("driver"), "{e}");
        std::fs::remove_file(dev.join("driver")).unwrap();
        std::os::unix::fs::symlink("../../../bus/pci/drivers/vfio-pci", dev.join("driver"))
            .unwrap();
        std::os::unix::fs::symlink("../../../kernel/iommu_groups/x1", dev.join("iommu_group"))
            .unwrap();
        let e = resolve(&sysfs, pci, pf, false).unwrap_err();
        assert!(e.to_string().contains("IOMMU group"), "{e}");
    }
}
