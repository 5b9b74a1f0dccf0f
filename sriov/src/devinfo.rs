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
    /// The IOMMU group is a no-IOMMU one (its `name` says `vfio-noiommu`, as in VMs without a
    /// virtual IOMMU): its device node is `/dev/vfio/noiommu-N`.
    pub vfio_noiommu: bool,
    /// For uio-bound devices: the `uioN` under the device's `uio/` folder (`/dev/uioN`).
    pub uio_device: Option<String>,
    /// The RDMA devices (`mlx5_0`, ...), when the pool is `isRdma`: every entry of the device's
    /// `infiniband/` folder, in name order.
    pub rdma_devices: Vec<String>,
    /// Their RDMA character devices (`ucm3`, `issm3`, `umad3`, `uverbs3`), as named under
    /// `/dev/infiniband`.
    pub rdma_char_devices: Vec<String>,
    /// The selector that put the device in its pool has `needVhostNet` (upstream decides per
    /// selector object, pkg/netdevice/pciNetDevice.go `NewPciNetDevice`).
    pub need_vhost_net: bool,
}

/// Drivers whose devices are uio devices (`/dev/uioN`). Upstream (pkg/factory/factory.go,
/// `GetDefaultInfoProvider`) knows `uio` and `igb_uio`; `uio_pci_generic` is a uio driver as
/// well, so its devices get their node here too (a difference listed in the README).
pub const UIO_DRIVERS: &[&str] = &["igb_uio", "uio_pci_generic", "uio"];

impl AllocatedDevice {
    /// A device as the CNI describes it: its addresses and driver, nothing read for Allocate.
    pub fn plain(pci: PciAddress, pf_pci: PciAddress, driver: Option<String>) -> Self {
        AllocatedDevice {
            pci,
            pf_pci,
            driver,
            iommu_group: None,
            vfio_noiommu: false,
            uio_device: None,
            rdma_devices: Vec::new(),
            rdma_char_devices: Vec::new(),
            need_vhost_net: false,
        }
    }

    pub fn is_vfio(&self) -> bool {
        self.driver.as_deref() == Some("vfio-pci")
    }

    pub fn is_uio(&self) -> bool {
        self.driver
            .as_deref()
            .is_some_and(|d| UIO_DRIVERS.contains(&d))
    }

    /// The VFIO group node as (host path relative to the device root, container path):
    /// `vfio/noiommu-N` on the host in no-IOMMU mode, always `/dev/vfio/N` in the container
    /// (upstream pkg/utils/utils.go, `GetVFIODeviceFile`).
    pub fn vfio_group_node(&self) -> Option<(String, String)> {
        let group = self.iommu_group?;
        let host = if self.vfio_noiommu {
            format!("vfio/noiommu-{group}")
        } else {
            format!("vfio/{group}")
        };
        Some((host, format!("/dev/vfio/{group}")))
    }
}

/// A name read from sysfs that becomes part of a /dev path: one plain path component.
fn plain_component(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The RDMA character device classes upstream looks in, in its order (rdmamap
/// `GetRdmaCharDevices`: ucm, issm, umad, uverbs): one device of each per RDMA device, the first
/// whose `ibdev` names it.
const RDMA_CHAR_CLASSES: [(&str, &str); 4] = [
    ("infiniband_cm", "ucm"),
    ("infiniband_mad", "issm"),
    ("infiniband_mad", "umad"),
    ("infiniband_verbs", "uverbs"),
];

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
    let mut d = AllocatedDevice::plain(pci, pf_pci, driver);
    let userspace = d
        .driver
        .as_deref()
        .is_some_and(|d| crate::discovery::USERSPACE_DRIVERS.contains(&d));
    if userspace {
        let path = dir.join("iommu_group");
        if let Some(g) = sysfs.link_name(&path).map_err(err)? {
            let group: u32 = g.parse().map_err(|_| {
                err(SysfsError::Malformed {
                    path,
                    content: g,
                    expected: "a link to an IOMMU group number",
                })
            })?;
            d.iommu_group = Some(group);
            if d.is_vfio() {
                // Upstream reads the group's `name` (absent on bare metal).
                let name = sysfs
                    .root()
                    .join(format!("kernel/iommu_groups/{group}/name"));
                d.vfio_noiommu =
                    sysfs.read_opt(&name).map_err(err)?.as_deref() == Some("vfio-noiommu");
            }
        }
    }
    if d.is_uio() {
        // Upstream (pkg/utils/utils.go, `GetUIODeviceFile`): the first entry of `uio/`.
        d.uio_device = sysfs
            .list(&dir.join("uio"))
            .map_err(err)?
            .and_then(|n| n.into_iter().find(|n| plain_component(n)));
    }
    if rdma {
        d.rdma_devices = sysfs
            .list(&dir.join("infiniband"))
            .map_err(err)?
            .unwrap_or_default();
        d.rdma_devices.retain(|n| plain_component(n));
        let mut classes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for dev in &d.rdma_devices {
            for (class, prefix) in RDMA_CHAR_CLASSES {
                if !classes.contains_key(class) {
                    let names = sysfs
                        .list(&sysfs.root().join("class").join(class))
                        .map_err(err)?
                        .unwrap_or_default();
                    classes.insert(class, names);
                }
                let found = classes[class].iter().find(|n| {
                    n.contains(prefix)
                        && plain_component(n)
                        && sysfs
                            .read_opt(&sysfs.root().join("class").join(class).join(n).join("ibdev"))
                            .ok()
                            .flatten()
                            .as_deref()
                            == Some(dev.as_str())
                });
                if let Some(n) = found {
                    d.rdma_char_devices.push(n.clone());
                }
            }
        }
    }
    Ok(d)
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

/// Whether the node has `/dev/vhost-net` (under `dev_root`): upstream offers the `vhost` entry
/// of `needVhostNet` pools only then (pkg/netdevice/pciNetDevice.go, `NewPciNetDevice` with
/// pkg/infoprovider/vhostNetInfoProvider.go, `VhostNetDeviceExist`).
pub fn vhost_net_available(dev_root: &Path) -> bool {
    dev_root.join("vhost-net").exists()
}

/// The container paths of a device's RDMA character devices that exist under `dev_root`, in
/// upstream's order (per RDMA device: ucm, issm, umad, uverbs; then `rdma_cm`).
fn rdma_nodes(dev_root: &Path, d: &AllocatedDevice) -> Vec<String> {
    let mut out: Vec<String> = d
        .rdma_char_devices
        .iter()
        .filter(|n| dev_root.join("infiniband").join(n).exists())
        .map(|n| format!("/dev/infiniband/{n}"))
        .collect();
    if !d.rdma_devices.is_empty() && dev_root.join("infiniband/rdma_cm").exists() {
        out.push("/dev/infiniband/rdma_cm".into());
    }
    out
}

/// What a pool adds to its devices' `_INFO` entries and device nodes beyond what each device's
/// driver brings.
#[derive(Debug, Clone, Copy)]
pub struct PoolInfo<'a> {
    /// `additionalInfo`, when the resource has the key.
    pub additional_info: Option<&'a crate::config::AdditionalInfo>,
    /// The node has `/dev/vhost-net` ([`vhost_net_available`]): devices that need it get it.
    pub vhost_net: bool,
    /// Where the node's device nodes are (`/dev`).
    pub dev_root: &'a Path,
}

/// The `_INFO` JSON, per device as upstream's info providers build it (pkg/infoprovider):
/// `generic.deviceID`; `vfio` (`mount`, `dev-mount`) for vfio-pci devices; `uio` (`mount`) for
/// uio devices; `extra` whenever the resource has `additionalInfo` (`*` merged with, and
/// overridden by, the device's own entry; `{}` when neither applies); `rdma` (`uverbs`, `umad`,
/// `issm`, `rdma_cm`, `rdma_dev`) for RDMA devices of an `isRdma` pool; `vhost` (`net-mount`,
/// `tun-mount`) for devices of `needVhostNet` selectors on nodes with vhost-net.
pub fn info_json(pool: &PoolInfo<'_>, devices: &[AllocatedDevice]) -> Value {
    let mut out = Map::new();
    for d in devices {
        let pci = d.pci.to_string();
        let mut entry = Map::new();
        entry.insert("generic".into(), json!({ "deviceID": pci }));
        if d.is_vfio() {
            if let Some((_, container)) = d.vfio_group_node() {
                entry.insert(
                    "vfio".into(),
                    json!({ "mount": VFIO_CONTAINER, "dev-mount": container }),
                );
            }
        }
        if d.is_uio() {
            let mut uio = Map::new();
            if let Some(n) = &d.uio_device {
                uio.insert("mount".into(), json!(format!("/dev/{n}")));
            }
            entry.insert("uio".into(), Value::Object(uio));
        }
        if let Some(additional_info) = pool.additional_info {
            let mut extra: BTreeMap<&str, &str> = BTreeMap::new();
            for key in ["*", pci.as_str()] {
                if let Some(m) = additional_info.get(key) {
                    extra.extend(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                }
            }
            entry.insert("extra".into(), json!(extra));
        }
        if !d.rdma_devices.is_empty() {
            // pkg/infoprovider/rdmaInfoProvider.go, `GetEnvVal`: each node by the kind its
            // name contains, and the first RDMA device.
            let mut rdma = Map::new();
            for path in rdma_nodes(pool.dev_root, d) {
                let kind = ["uverbs", "umad", "issm", "rdma_cm"]
                    .into_iter()
                    .find(|k| path.contains(k));
                if let Some(kind) = kind {
                    rdma.insert(kind.into(), json!(path));
                }
            }
            rdma.insert("rdma_dev".into(), json!(d.rdma_devices[0]));
            entry.insert("rdma".into(), Value::Object(rdma));
        }
        if pool.vhost_net && d.need_vhost_net {
            entry.insert(
                "vhost".into(),
                json!({ "net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun" }),
            );
        }
        out.insert(pci, Value::Object(entry));
    }
    Value::Object(out)
}

/// The two environment variables of a container: the comma-separated device IDs and `_INFO`.
pub fn envs(
    full_resource: &str,
    pool: &PoolInfo<'_>,
    devices: &[AllocatedDevice],
) -> BTreeMap<String, String> {
    let key = env_name(full_resource);
    let ids: Vec<String> = devices.iter().map(|d| d.pci.to_string()).collect();
    let mut out = BTreeMap::new();
    out.insert(format!("{key}_INFO"), info_json(pool, devices).to_string());
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

/// The device nodes of a container, per device in upstream's provider order (pkg/devices/api.go
/// `GetDeviceSpecs` over the providers of pkg/netdevice/pciNetDevice.go `NewPciNetDevice`), the
/// same host path given once (pkg/resources/pool_stub.go, `DeviceSpecExist`):
/// - vfio-pci: the VFIO container and the group (`vfio/noiommu-N` on the host in no-IOMMU mode,
///   `/dev/vfio/N` in the container);
/// - uio: `/dev/uioN`;
/// - RDMA devices of an `isRdma` pool: their character devices and `rdma_cm`, those that exist;
/// - devices of `needVhostNet` selectors: `/dev/vhost-net` and `/dev/net/tun`, only when both
///   exist (upstream
///   `vhostNetInfoProvider.GetDeviceSpecs`).
///
/// Host paths live under `pool.dev_root` (normally `/dev`).
pub fn device_nodes(pool: &PoolInfo<'_>, devices: &[AllocatedDevice]) -> Vec<DeviceNode> {
    let dev_root = pool.dev_root;
    let mut out: Vec<DeviceNode> = Vec::new();
    let mut add = |host_rel: &str, container_path: String| {
        let host_path = dev_root.join(host_rel);
        if !out.iter().any(|n| n.host_path == host_path) {
            out.push(DeviceNode {
                container_path,
                host_path,
                permissions: "rw",
            });
        }
    };
    let vhost = pool.vhost_net && dev_root.join("net/tun").exists();
    for d in devices {
        if d.is_vfio() {
            if let Some((host, container)) = d.vfio_group_node() {
                add("vfio/vfio", VFIO_CONTAINER.into());
                add(&host, container);
            }
        }
        if let Some(n) = d.uio_device.as_deref().filter(|_| d.is_uio()) {
            add(n, format!("/dev/{n}"));
        }
        for path in rdma_nodes(dev_root, d) {
            add(path.trim_start_matches("/dev/"), path.clone());
        }
        if vhost && d.need_vhost_net {
            add("vhost-net", "/dev/vhost-net".into());
            add("net/tun", "/dev/net/tun".into());
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
    // Every RDMA device, joined by `,` (pkg/netdevice/netResourcePool.go, `StoreDeviceInfoFile`).
    if !d.rdma_devices.is_empty() {
        pci.insert("rdma-device".into(), json!(d.rdma_devices.join(",")));
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
    use std::os::unix::fs::symlink;

    fn pci(s: &str) -> PciAddress {
        PciAddress::parse(s).unwrap()
    }

    fn dev(addr: &str, driver: &str, group: Option<u32>) -> AllocatedDevice {
        let mut d = AllocatedDevice::plain(pci(addr), pci("0000:3b:00.0"), Some(driver.into()));
        d.iommu_group = group;
        d.need_vhost_net = true;
        d
    }

    /// A sysfs tree and a device root in a temporary folder.
    struct Tree {
        tmp: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let t = Tree {
                tmp: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir_all(t.dev_root()).unwrap();
            t
        }
        fn sys(&self) -> PathBuf {
            self.tmp.path().join("sys")
        }
        fn dev_root(&self) -> PathBuf {
            self.tmp.path().join("dev")
        }
        fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.sys())
        }
        /// A PCI device bound to `driver`.
        fn device(&self, addr: &str, driver: &str) -> PathBuf {
            let dir = self.sys().join("bus/pci/devices").join(addr);
            std::fs::create_dir_all(&dir).unwrap();
            symlink(
                format!("../../../bus/pci/drivers/{driver}"),
                dir.join("driver"),
            )
            .unwrap();
            dir
        }
        fn group(&self, dir: &Path, group: u32, name: Option<&str>) {
            let g = self.sys().join(format!("kernel/iommu_groups/{group}"));
            std::fs::create_dir_all(&g).unwrap();
            if let Some(name) = name {
                std::fs::write(g.join("name"), format!("{name}\n")).unwrap();
            }
            symlink(
                format!("../../../kernel/iommu_groups/{group}"),
                dir.join("iommu_group"),
            )
            .unwrap();
        }
        fn node(&self, rel: &str) {
            let p = self.dev_root().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        fn info<'a>(
            &'a self,
            dev_root: &'a Path,
            extra: Option<&'a BTreeMap<String, BTreeMap<String, String>>>,
            vhost: bool,
        ) -> PoolInfo<'a> {
            PoolInfo {
                additional_info: extra,
                vhost_net: vhost && vhost_net_available(dev_root),
                dev_root,
            }
        }
    }

    fn paths(n: &[DeviceNode]) -> Vec<(&str, PathBuf)> {
        n.iter()
            .map(|n| (n.container_path.as_str(), n.host_path.clone()))
            .collect()
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

    /// Upstream pkg/infoprovider/extraInfoProvider.go `GetEnvVal` (`*` first, then the device's
    /// own entry) and pkg/netdevice/pciNetDevice.go `NewPciNetDevice` (the `extra` provider is
    /// added whenever `rc.AdditionalInfo` is non-nil, so a device without a matching entry gets
    /// `"extra": {}`); pkg/infoprovider/vfioInfoProvider.go `GetEnvVal` for `vfio`.
    #[test]
    fn envs_match_upstream() {
        let root = Path::new("/nonexistent");
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
        let pool = PoolInfo {
            additional_info: Some(&info),
            vhost_net: false,
            dev_root: root,
        };
        let e = envs("intel.com/net", &pool, &devs);
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
        // `additionalInfo` given but naming other devices only: `extra` is `{}`.
        let other = BTreeMap::from([("0000:99:00.0".to_string(), BTreeMap::new())]);
        let pool = PoolInfo {
            additional_info: Some(&other),
            ..pool
        };
        let v = info_json(&pool, &devs[..1]);
        assert_eq!(
            v,
            json!({"0000:3b:02.0": {"generic": {"deviceID": "0000:3b:02.0"}, "extra": {}}})
        );
        // No `additionalInfo` key: no `extra` entry at all.
        let pool = PoolInfo {
            additional_info: None,
            ..pool
        };
        assert_eq!(
            info_json(&pool, &devs[..1]),
            json!({"0000:3b:02.0": {"generic": {"deviceID": "0000:3b:02.0"}}})
        );
    }

    /// Device specs per device in provider order (pkg/devices/api.go `GetDeviceSpecs`: generic,
    /// vfio, ..., vhost), one per host path across devices (pkg/resources/pool_stub.go
    /// `DeviceSpecExist`); vhost-net and tun only when both exist
    /// (pkg/infoprovider/vhostNetInfoProvider.go `GetDeviceSpecs`), the `vhost` entry whenever
    /// the provider was added (`VhostNetDeviceExist` in pkg/netdevice/pciNetDevice.go).
    #[test]
    fn nodes_in_upstream_order_and_vhost_only_when_present() {
        let t = Tree::new();
        let root = t.dev_root();
        let devs = [
            dev("0000:3b:02.0", "vfio-pci", Some(7)),
            dev("0000:3b:02.1", "vfio-pci", Some(8)),
        ];
        // No /dev/vhost-net on this node: no vhost entry, no nodes.
        let pool = t.info(&root, None, true);
        assert!(!pool.vhost_net);
        let n = device_nodes(&pool, &devs);
        assert_eq!(
            paths(&n),
            vec![
                ("/dev/vfio/vfio", root.join("vfio/vfio")),
                ("/dev/vfio/7", root.join("vfio/7")),
                ("/dev/vfio/8", root.join("vfio/8")),
            ]
        );
        assert!(info_json(&pool, &devs)["0000:3b:02.0"]
            .get("vhost")
            .is_none());
        // vhost-net without tun: the entry, but no nodes (upstream returns none).
        t.node("vhost-net");
        let pool = t.info(&root, None, true);
        assert_eq!(device_nodes(&pool, &devs).len(), 3);
        assert_eq!(
            info_json(&pool, &devs)["0000:3b:02.1"]["vhost"],
            json!({"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"})
        );
        t.node("net/tun");
        let pool = t.info(&root, None, true);
        let n = device_nodes(&pool, &devs);
        assert_eq!(
            paths(&n),
            vec![
                ("/dev/vfio/vfio", root.join("vfio/vfio")),
                ("/dev/vfio/7", root.join("vfio/7")),
                ("/dev/vhost-net", root.join("vhost-net")),
                ("/dev/net/tun", root.join("net/tun")),
                ("/dev/vfio/8", root.join("vfio/8")),
            ]
        );
        assert!(n.iter().all(|n| n.permissions == "rw"));
        // Without needVhostNet nothing of it.
        let plain = t.info(&root, None, false);
        assert!(device_nodes(&plain, &[dev("0000:3b:02.0", "iavf", None)]).is_empty());
    }

    /// uio devices: pkg/factory/factory.go `GetDefaultInfoProvider` (igb_uio, uio) and
    /// pkg/infoprovider/uioInfoProvider.go: the spec `/dev/uioN` from the first entry of the
    /// device's `uio/` folder (pkg/utils/utils.go `GetUIODeviceFile`), `_INFO` `uio.mount`.
    #[test]
    fn uio_devices_get_their_node() {
        let t = Tree::new();
        let root = t.dev_root();
        for (addr, driver, n) in [
            ("0000:3b:02.0", "igb_uio", 3),
            ("0000:3b:02.1", "uio_pci_generic", 4),
        ] {
            let dir = t.device(addr, driver);
            std::fs::create_dir_all(dir.join(format!("uio/uio{n}"))).unwrap();
            t.group(&dir, 40 + n, None);
            t.node(&format!("uio{n}"));
        }
        // Bound to a uio driver, but its uio device is not there (yet): an empty entry.
        t.device("0000:3b:02.2", "igb_uio");
        let sysfs = t.sysfs();
        let pf = pci("0000:3b:00.0");
        let devs: Vec<AllocatedDevice> = ["0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"]
            .iter()
            .map(|a| resolve(&sysfs, pci(a), pf, false).unwrap())
            .collect();
        assert_eq!(devs[0].uio_device.as_deref(), Some("uio3"));
        assert_eq!(devs[0].iommu_group, Some(43));
        let pool = t.info(&root, None, false);
        assert_eq!(
            paths(&device_nodes(&pool, &devs)),
            vec![
                ("/dev/uio3", root.join("uio3")),
                ("/dev/uio4", root.join("uio4")),
            ]
        );
        let v = info_json(&pool, &devs);
        assert_eq!(v["0000:3b:02.0"]["uio"], json!({"mount": "/dev/uio3"}));
        assert_eq!(v["0000:3b:02.1"]["uio"], json!({"mount": "/dev/uio4"}));
        assert_eq!(v["0000:3b:02.2"]["uio"], json!({}));
        assert!(v["0000:3b:02.0"].get("vfio").is_none());
    }

    /// vfio without an IOMMU: the group's `name` is `vfio-noiommu`, so the host node is
    /// `/dev/vfio/noiommu-N` and the container path and `dev-mount` stay `/dev/vfio/N`
    /// (pkg/utils/utils.go `GetVFIODeviceFile`; pkg/infoprovider/vfioInfoProvider.go).
    #[test]
    fn vfio_noiommu_groups() {
        let t = Tree::new();
        let root = t.dev_root();
        let a = t.device("0000:3b:02.0", "vfio-pci");
        t.group(&a, 12, Some("vfio-noiommu"));
        let b = t.device("0000:3b:02.1", "vfio-pci");
        // An IOMMU group with another name (as real IOMMUs may have) is a normal group.
        t.group(&b, 13, Some("other"));
        let sysfs = t.sysfs();
        let pf = pci("0000:3b:00.0");
        let devs = [
            resolve(&sysfs, pci("0000:3b:02.0"), pf, false).unwrap(),
            resolve(&sysfs, pci("0000:3b:02.1"), pf, false).unwrap(),
        ];
        assert!(devs[0].vfio_noiommu && !devs[1].vfio_noiommu);
        let pool = t.info(&root, None, false);
        assert_eq!(
            paths(&device_nodes(&pool, &devs)),
            vec![
                ("/dev/vfio/vfio", root.join("vfio/vfio")),
                ("/dev/vfio/12", root.join("vfio/noiommu-12")),
                ("/dev/vfio/13", root.join("vfio/13")),
            ]
        );
        assert_eq!(
            info_json(&pool, &devs)["0000:3b:02.0"]["vfio"],
            json!({"mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/12"})
        );
    }

    /// The device-information file lists every RDMA device joined by `,`
    /// (pkg/netdevice/netResourcePool.go `StoreDeviceInfoFile`).
    #[test]
    fn files() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = dev("0000:3b:02.3", "mlx5_core", None);
        d.rdma_devices = vec!["mlx5_3".into(), "mlx5_7".into()];
        let path = write_file(&dir.path().join("dp"), "nvidia.com/rdma", &d).unwrap();
        assert_eq!(
            path.file_name().unwrap(),
            "nvidia.com-rdma-0000:3b:02.3-device.json"
        );
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"type": "pci", "version": "1.1.0", "pci": {
                "pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0",
                "rdma-device": "mlx5_3,mlx5_7"}})
        );
        remove_file(&path).unwrap();
        remove_file(&path).unwrap();
        assert!(!path.exists());
    }

    /// An RDMA-capable VF as mlx5 shows it in sysfs: its RDMA devices from `infiniband/`, their
    /// character devices from the `infiniband_{cm,mad,verbs}` classes by `ibdev` (rdmamap
    /// `GetRdmaCharDevices`: ucm, issm, umad, uverbs, then `/dev/infiniband/rdma_cm` if it
    /// exists), the specs and the `_INFO` `rdma` entry (pkg/infoprovider/rdmaInfoProvider.go
    /// `GetEnvVal`: `uverbs`, `umad`, `issm`, `rdma_cm` by name, `rdma_dev` the first device from
    /// pkg/devices/rdma.go `GetRdmaDeviceName`).
    #[test]
    fn rdma_devices_are_resolved_and_mapped() {
        let t = Tree::new();
        let root = t.dev_root();
        let pf = pci("0000:3b:00.0");
        let dir = t.device("0000:3b:02.3", "mlx5_core");
        std::fs::create_dir_all(dir.join("infiniband/mlx5_3")).unwrap();
        let class = t.sys().join("class");
        // Another device's nodes come first in name order: they must not be taken.
        for (cls, name, ibdev) in [
            ("infiniband_verbs", "uverbs2", "mlx5_2"),
            ("infiniband_verbs", "uverbs3", "mlx5_3"),
            ("infiniband_mad", "issm3", "mlx5_3"),
            ("infiniband_mad", "umad2", "mlx5_2"),
            ("infiniband_mad", "umad3", "mlx5_3"),
        ] {
            std::fs::create_dir_all(class.join(cls).join(name)).unwrap();
            std::fs::write(
                class.join(cls).join(name).join("ibdev"),
                format!("{ibdev}\n"),
            )
            .unwrap();
        }
        for n in ["rdma_cm", "uverbs3", "umad3", "issm3", "uverbs2"] {
            t.node(&format!("infiniband/{n}"));
        }
        let sysfs = t.sysfs();
        let d = resolve(&sysfs, pci("0000:3b:02.3"), pf, true).unwrap();
        assert_eq!(d.rdma_devices, ["mlx5_3"]);
        assert_eq!(d.rdma_char_devices, ["issm3", "umad3", "uverbs3"]);
        let pool = t.info(&root, None, false);
        let nodes = device_nodes(&pool, std::slice::from_ref(&d));
        assert_eq!(
            paths(&nodes),
            vec![
                ("/dev/infiniband/issm3", root.join("infiniband/issm3")),
                ("/dev/infiniband/umad3", root.join("infiniband/umad3")),
                ("/dev/infiniband/uverbs3", root.join("infiniband/uverbs3")),
                ("/dev/infiniband/rdma_cm", root.join("infiniband/rdma_cm")),
            ]
        );
        assert_eq!(
            info_json(&pool, std::slice::from_ref(&d))["0000:3b:02.3"]["rdma"],
            json!({"uverbs": "/dev/infiniband/uverbs3", "umad": "/dev/infiniband/umad3",
                   "issm": "/dev/infiniband/issm3", "rdma_cm": "/dev/infiniband/rdma_cm",
                   "rdma_dev": "mlx5_3"})
        );
        // A node missing under /dev is not offered (a container could not start with it).
        std::fs::remove_file(root.join("infiniband/umad3")).unwrap();
        let nodes = device_nodes(&pool, std::slice::from_ref(&d));
        assert!(!nodes.iter().any(|n| n.container_path.contains("umad")));
        // Without isRdma nothing RDMA is read.
        let plain = resolve(&sysfs, pci("0000:3b:02.3"), pf, false).unwrap();
        assert!(plain.rdma_devices.is_empty() && plain.rdma_char_devices.is_empty());
        assert!(info_json(&pool, &[plain])["0000:3b:02.3"]
            .get("rdma")
            .is_none());
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
        symlink("../../../bus/pci/drivers/vfio-pci", dev.join("driver")).unwrap();
        symlink("../../../kernel/iommu_groups/x1", dev.join("iommu_group")).unwrap();
        let e = resolve(&sysfs, pci, pf, false).unwrap_err();
        assert!(e.to_string().contains("IOMMU group"), "{e}");
    }
}
