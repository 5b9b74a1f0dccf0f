//! `lab.json`: what a lab contains, as serde structs (printed by `sriov-lab up`,
//! read back by tests), and the naming/addressing rules that produce it.

use super::error::{Result, SimError};
use super::paths::LabPaths;
use super::spec::{NicModel, SimSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabDescription {
    pub name: String,
    /// The fake `/sys`.
    pub sysfs_root: PathBuf,
    /// Node netns name (`sriovlab-NAME`).
    pub netns: String,
    /// `/var/run/netns/sriovlab-NAME`.
    pub netns_path: PathBuf,
    /// The node netns's real sysfs mount.
    pub netsys: PathBuf,
    /// The fake `/dev` (holds `vfio/<group>`).
    pub dev_root: PathBuf,
    pub pfs: Vec<PfDescription>,
    pub plain_nics: Vec<PlainNic>,
    /// Process whose death lets `gc` remove the lab; `None` = kept until `down`.
    pub owner_pid: Option<u32>,
    /// The request the lab was built from (set-vfs reuses vfio/links).
    pub spec: SimSpec,
}

/// One SR-IOV physical function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PfDescription {
    pub index: u32,
    pub pci: String,
    pub netdev: String,
    /// Hex without `0x`, as selectors spell it (`8086`).
    pub vendor: String,
    pub device: String,
    pub driver: String,
    /// -1 when the node has no NUMA.
    pub numa_node: i32,
    pub total_vfs: u32,
    pub num_vfs: u32,
    /// The embedded-switch bridge; `None` without links.
    pub bridge: Option<String>,
    pub model: NicModel,
    pub vf_device: String,
    pub vfs: Vec<VfDescription>,
}

/// One enabled virtual function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfDescription {
    pub index: u32,
    pub pci: String,
    /// `None` when bound to vfio-pci.
    pub netdev: Option<String>,
    pub driver: String,
    /// Only for vfio-pci VFs.
    pub iommu_group: Option<u32>,
    /// `uioN`, only for igb_uio VFs.
    #[serde(default)]
    pub uio_device: Option<String>,
    /// `mlx5_N`, for kernel VFs of Mellanox PFs in labs with `rdma`.
    #[serde(default)]
    pub rdma_device: Option<String>,
    /// Whether its IOMMU group is a no-IOMMU one.
    #[serde(default)]
    pub noiommu: bool,
}

/// A NIC without SR-IOV (discovery must not offer it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainNic {
    pub pci: String,
    pub netdev: String,
    pub driver: String,
}

/// The plain onboard NIC every lab has.
pub const PLAIN_NIC_PCI: &str = "0000:00:1f.6";
pub const PLAIN_NIC_NETDEV: &str = "eno1";
/// The NVMe disk every lab has (class 0x010802; not a network device).
pub const NVME_PCI: &str = "0000:00:17.0";
/// First IOMMU group number handed to vfio VFs.
pub const FIRST_IOMMU_GROUP: u32 = 100;
/// Driver of VFs given to userspace.
pub const VFIO_DRIVER: &str = "vfio-pci";
/// Driver of VFs given to userspace through uio.
pub const UIO_DRIVER: &str = "igb_uio";
/// Drivers that have a folder under `bus/pci/drivers`.
pub const DRIVERS: [&str; 7] = [
    "i40e",
    "iavf",
    "mlx5_core",
    "e1000e",
    "vfio-pci",
    "igb_uio",
    "nvme",
];

/// PCI address of PF `i`: each PF on its own bus from 0x3b.
pub fn pf_pci(pf: u32) -> String {
    format!("0000:{:02x}:00.0", 0x3b + pf)
}

/// PCI address of VF `k` of PF `pf`: routing id = PF + offset 16 + k × stride 1.
pub fn vf_pci(pf: u32, vf: u32) -> String {
    let rid = 16 + vf;
    format!("0000:{:02x}:{:02x}.{}", 0x3b + pf, rid >> 3, rid & 7)
}

pub fn pf_netdev(pf: u32) -> String {
    format!("ens{}f0", pf + 1)
}

pub fn vf_netdev(pf: u32, vf: u32) -> String {
    format!("ens{}f0v{vf}", pf + 1)
}

/// The bridge-side peer of a PF/VF veth.
pub fn peer_netdev(netdev: &str) -> String {
    format!("p-{netdev}")
}

pub fn bridge_name(pf: u32) -> String {
    format!("esw{pf}")
}

/// Stable per (PF, VF): unlike real hardware, numbers survive a re-`up`.
pub fn iommu_group(pf: u32, vf: u32) -> u32 {
    FIRST_IOMMU_GROUP + pf * 256 + vf
}

/// With `numa`, the first half (rounded down, at least one PF) is on node 0.
fn numa_node(spec: &SimSpec, pf: u32) -> i32 {
    match spec.numa {
        false => -1,
        true if pf < (spec.pfs / 2).max(1) => 0,
        true => 1,
    }
}

/// Stable per (PF, VF), like [`iommu_group`]: `/dev/uioN` of an igb_uio VF.
pub fn uio_number(pf: u32, vf: u32) -> u32 {
    pf * 256 + vf
}

/// Stable per (PF, VF): the RDMA device of a kernel VF of a Mellanox PF (`mlx5_N`), whose
/// character devices are `uverbsN`, `umadN` and `issmN`.
pub fn rdma_number(pf: u32, vf: u32) -> u32 {
    pf * 256 + vf
}

/// The VFs PF `pf` gets when `n` are enabled: the last `spec.vfio` go to vfio-pci, the
/// `spec.uio` before them to igb_uio.
pub fn make_vfs(spec: &SimSpec, pf: u32, nic: NicModel, n: u32) -> Vec<VfDescription> {
    let first_vfio = n.saturating_sub(spec.vfio);
    let first_uio = first_vfio.saturating_sub(spec.uio);
    (0..n)
        .map(|k| {
            let vfio = k >= first_vfio;
            let uio = !vfio && k >= first_uio;
            let kernel = !vfio && !uio;
            VfDescription {
                index: k,
                pci: vf_pci(pf, k),
                netdev: kernel.then(|| vf_netdev(pf, k)),
                driver: match (vfio, uio) {
                    (true, _) => VFIO_DRIVER,
                    (_, true) => UIO_DRIVER,
                    _ => nic.vf_driver(),
                }
                .to_string(),
                iommu_group: vfio.then(|| iommu_group(pf, k)),
                uio_device: uio.then(|| format!("uio{}", uio_number(pf, k))),
                rdma_device: (kernel && spec.rdma && nic == NicModel::Mellanox)
                    .then(|| format!("mlx5_{}", rdma_number(pf, k))),
                noiommu: vfio && spec.noiommu,
            }
        })
        .collect()
}

impl LabDescription {
    /// The description of a freshly built lab (pure; nothing is created).
    pub fn build(spec: &SimSpec, paths: &LabPaths, owner_pid: Option<u32>) -> Self {
        let total_vfs = spec.effective_total_vfs();
        let pfs = (0..spec.pfs)
            .map(|i| {
                let nic = spec.model.nic_for_pf(i);
                PfDescription {
                    index: i,
                    pci: pf_pci(i),
                    netdev: pf_netdev(i),
                    vendor: nic.vendor().to_string(),
                    device: nic.pf_device().to_string(),
                    driver: nic.pf_driver().to_string(),
                    numa_node: numa_node(spec, i),
                    total_vfs,
                    num_vfs: spec.vfs,
                    bridge: spec.links.then(|| bridge_name(i)),
                    model: nic,
                    vf_device: nic.vf_device().to_string(),
                    vfs: make_vfs(spec, i, nic, spec.vfs),
                }
            })
            .collect();
        LabDescription {
            name: spec.name.clone(),
            sysfs_root: paths.sys(),
            netns: paths.netns_name(),
            netns_path: paths.netns_path(),
            netsys: paths.netsys(),
            dev_root: paths.dev(),
            pfs,
            plain_nics: vec![PlainNic {
                pci: PLAIN_NIC_PCI.to_string(),
                netdev: PLAIN_NIC_NETDEV.to_string(),
                driver: "e1000e".to_string(),
            }],
            owner_pid,
            spec: spec.clone(),
        }
    }

    /// A PF by netdev name or PCI address.
    pub fn pf(&self, key: &str) -> Option<&PfDescription> {
        self.pfs.iter().find(|pf| pf.netdev == key || pf.pci == key)
    }

    pub(crate) fn pf_position(&self, key: &str) -> Result<usize> {
        self.pfs
            .iter()
            .position(|pf| pf.netdev == key || pf.pci == key)
            .ok_or_else(|| SimError::NoSuchPf {
                lab: self.name.clone(),
                pf: key.to_string(),
                known: self
                    .pfs
                    .iter()
                    .map(|pf| format!("{}/{}", pf.netdev, pf.pci))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Every VF of every PF.
    pub fn vfs(&self) -> impl Iterator<Item = (&PfDescription, &VfDescription)> {
        self.pfs
            .iter()
            .flat_map(|pf| pf.vfs.iter().map(move |vf| (pf, vf)))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(SimError::io("read", path))?;
        serde_json::from_str(&text).map_err(|source| SimError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes `lab.json` atomically (temp file + rename).
    pub(crate) fn save(&self, paths: &LabPaths) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|source| SimError::Json {
            path: paths.lab_json(),
            source,
        })?;
        super::sysfs_tree::replace_file(paths, &paths.lab_json(), &(text + "\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(pf_pci(0), "0000:3b:00.0");
        assert_eq!(pf_pci(1), "0000:3c:00.0");
        assert_eq!(vf_pci(0, 0), "0000:3b:02.0");
        assert_eq!(vf_pci(0, 9), "0000:3b:03.1");
        assert_eq!(vf_pci(0, 239), "0000:3b:1f.7");
        assert_eq!(vf_netdev(1, 3), "ens2f0v3");
        assert!(
            peer_netdev(&vf_netdev(63, 239)).len() <= 15,
            "fits IFNAMSIZ"
        );
    }

    #[test]
    fn description() {
        let spec = SimSpec::new("d").pfs(3).vfs(4).vfio(1).numa(true);
        let d = LabDescription::build(&spec, &LabPaths::new("d"), Some(1));
        let numa: Vec<_> = d.pfs.iter().map(|p| p.numa_node).collect();
        assert_eq!(numa, [0, 1, 1]);
        let vf3 = &d.pfs[0].vfs[3];
        assert_eq!(
            (vf3.netdev.as_deref(), vf3.driver.as_str()),
            (None, "vfio-pci")
        );
        assert_eq!(vf3.iommu_group, Some(103));
        assert_eq!(d.pfs[0].vfs[2].iommu_group, None);
        assert_eq!(d.pf("ens2f0").map(|p| p.index), Some(1));
        assert_eq!(d.pf("0000:3d:00.0").map(|p| p.index), Some(2));
        assert!(d.pf_position("ens9f0").is_err());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<LabDescription>(&json).unwrap(), d);
    }
}
