//! What a lab should look like: the user's request ([`SimSpec`]) and its checks.

use super::error::{Result, SimError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest lab name; keeps `sriovlab-NAME-...` netns names readable.
pub const MAX_NAME_LEN: usize = 24;
/// Most PFs a lab may have (one PCI bus each, starting at 0x3b).
pub const MAX_PFS: u32 = 64;
/// Most VFs per PF: routing ids 16..=255 of the PF's bus (offset 16, stride 1).
/// Also keeps the bridge under the kernel's 1024-port limit.
pub const MAX_VFS_PER_PF: u32 = 240;

/// Which NIC family the PFs emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Intel X710: PF 8086:1572 (i40e), VF 8086:154c (iavf).
    #[default]
    Intel,
    /// Mellanox ConnectX-5: PF 15b3:1017, VF 15b3:1018, both mlx5_core.
    Mellanox,
    /// Even PFs Intel, odd PFs Mellanox.
    Mixed,
}

impl Model {
    /// The concrete NIC of PF `index`.
    pub fn nic_for_pf(self, index: u32) -> NicModel {
        match self {
            Model::Intel => NicModel::Intel,
            Model::Mellanox => NicModel::Mellanox,
            Model::Mixed if index.is_multiple_of(2) => NicModel::Intel,
            Model::Mixed => NicModel::Mellanox,
        }
    }
}

impl FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "intel" => Ok(Model::Intel),
            "mellanox" => Ok(Model::Mellanox),
            "mixed" => Ok(Model::Mixed),
            other => Err(format!(
                "unknown model {other:?} (expected intel, mellanox or mixed)"
            )),
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Model::Intel => "intel",
            Model::Mellanox => "mellanox",
            Model::Mixed => "mixed",
        })
    }
}

/// One NIC family, with the IDs and drivers its PF and VFs show in sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    Intel,
    Mellanox,
}

impl NicModel {
    pub fn vendor(self) -> &'static str {
        match self {
            NicModel::Intel => "8086",
            NicModel::Mellanox => "15b3",
        }
    }
    pub fn pf_device(self) -> &'static str {
        match self {
            NicModel::Intel => "1572",
            NicModel::Mellanox => "1017",
        }
    }
    pub fn vf_device(self) -> &'static str {
        match self {
            NicModel::Intel => "154c",
            NicModel::Mellanox => "1018",
        }
    }
    pub fn pf_driver(self) -> &'static str {
        match self {
            NicModel::Intel => "i40e",
            NicModel::Mellanox => "mlx5_core",
        }
    }
    pub fn vf_driver(self) -> &'static str {
        match self {
            NicModel::Intel => "iavf",
            NicModel::Mellanox => "mlx5_core",
        }
    }
}

/// The request for a simulated node. Build with [`SimSpec::new`] and the
/// chained setters, or fill the public fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSpec {
    /// Lab name, `^[a-z0-9][a-z0-9-]{0,23}$`.
    pub name: String,
    /// Number of SR-IOV PFs.
    pub pfs: u32,
    /// VFs enabled per PF at `up` (0 = SR-IOV disabled).
    pub vfs: u32,
    /// `sriov_totalvfs` of every PF; `None` = max(vfs, 8).
    pub total_vfs: Option<u32>,
    /// PFs of the first half on NUMA node 0, the rest on node 1 (else -1).
    pub numa: bool,
    /// The last `vfio` VFs of every PF are bound to vfio-pci.
    pub vfio: u32,
    /// The `uio` VFs before those are bound to igb_uio (`uio/uioN`, `/dev/uioN`).
    #[serde(default)]
    pub uio: u32,
    /// The vfio groups are no-IOMMU groups (`name` is `vfio-noiommu`, `/dev/vfio/noiommu-N`),
    /// as in a VM without a virtual IOMMU.
    #[serde(default)]
    pub noiommu: bool,
    /// Kernel VFs of Mellanox PFs have an RDMA device (`infiniband/mlx5_N`) with its
    /// character devices (`infiniband_verbs`, `infiniband_mad` classes, `/dev/infiniband`).
    #[serde(default)]
    pub rdma: bool,
    /// NIC family.
    pub model: Model,
    /// Real veth/bridge links in the node netns (false: static `net/` files).
    pub links: bool,
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            name: String::new(),
            pfs: 2,
            vfs: 4,
            total_vfs: None,
            numa: false,
            vfio: 0,
            uio: 0,
            noiommu: false,
            rdma: false,
            model: Model::Intel,
            links: true,
        }
    }
}

impl SimSpec {
    /// Defaults (2 PFs × 4 VFs, Intel, links) with the given name.
    pub fn new(name: impl Into<String>) -> Self {
        SimSpec {
            name: name.into(),
            ..SimSpec::default()
        }
    }
    pub fn pfs(mut self, pfs: u32) -> Self {
        self.pfs = pfs;
        self
    }
    pub fn vfs(mut self, vfs: u32) -> Self {
        self.vfs = vfs;
        self
    }
    pub fn total_vfs(mut self, total: u32) -> Self {
        self.total_vfs = Some(total);
        self
    }
    pub fn numa(mut self, numa: bool) -> Self {
        self.numa = numa;
        self
    }
    pub fn vfio(mut self, vfio: u32) -> Self {
        self.vfio = vfio;
        self
    }
    pub fn uio(mut self, uio: u32) -> Self {
        self.uio = uio;
        self
    }
    pub fn noiommu(mut self, noiommu: bool) -> Self {
        self.noiommu = noiommu;
        self
    }
    pub fn rdma(mut self, rdma: bool) -> Self {
        self.rdma = rdma;
        self
    }
    pub fn model(mut self, model: Model) -> Self {
        self.model = model;
        self
    }
    pub fn links(mut self, links: bool) -> Self {
        self.links = links;
        self
    }

    /// `sriov_totalvfs` the PFs get.
    pub fn effective_total_vfs(&self) -> u32 {
        self.total_vfs.unwrap_or(self.vfs.max(8))
    }

    /// Checks the name and every count; the error says which limit was hit.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let total = self.effective_total_vfs();
        let check = |ok: bool, msg: String| {
            if ok {
                Ok(())
            } else {
                Err(SimError::InvalidSpec(msg))
            }
        };
        check(
            (1..=MAX_PFS).contains(&self.pfs),
            format!("pfs must be 1..={MAX_PFS}, got {}", self.pfs),
        )?;
        check(
            total <= MAX_VFS_PER_PF,
            format!("total_vfs must be at most {MAX_VFS_PER_PF} (one PCI bus per PF), got {total}"),
        )?;
        check(
            self.vfs <= total,
            format!("vfs ({}) exceeds total_vfs ({total})", self.vfs),
        )?;
        check(
            self.vfio + self.uio <= self.vfs,
            format!(
                "vfio + uio ({} + {}) exceeds vfs ({})",
                self.vfio, self.uio, self.vfs
            ),
        )
    }
}

/// Checks a lab name against `^[a-z0-9][a-z0-9-]{0,23}$`. The name becomes a
/// path component and part of a netns name, so anything else (`../x`) is refused.
pub fn validate_name(name: &str) -> Result<()> {
    let fail = |reason| {
        Err(SimError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return fail("empty");
    };
    if name.len() > MAX_NAME_LEN {
        return fail("longer than 24 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return fail("must start with a lowercase letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return fail("only lowercase letters, digits and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "lab-1", "0abc", "abcdefghijklmnopqrstuvwx"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "-a",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "abcdefghijklmnopqrstuvwxy",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_limits() {
        assert!(SimSpec::new("x").validate().is_ok());
        assert_eq!(SimSpec::new("x").vfs(20).effective_total_vfs(), 20);
        assert_eq!(SimSpec::new("x").vfs(2).effective_total_vfs(), 8);
        assert!(SimSpec::new("x").vfs(9).total_vfs(8).validate().is_err());
        assert!(SimSpec::new("x").vfio(5).validate().is_err());
        assert!(SimSpec::new("x").pfs(0).validate().is_err());
        assert!(SimSpec::new("x").vfs(241).validate().is_err());
        assert!(SimSpec::new("x").vfs(240).validate().is_ok());
    }

    #[test]
    fn models() {
        assert_eq!(Model::Mixed.nic_for_pf(0), NicModel::Intel);
        assert_eq!(Model::Mixed.nic_for_pf(1), NicModel::Mellanox);
        assert_eq!("mellanox".parse::<Model>(), Ok(Model::Mellanox));
        assert!("amd".parse::<Model>().is_err());
    }
}
