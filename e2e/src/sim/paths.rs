//! Where a lab lives: everything under `/run/sriov-lab/NAME/` plus one netns.

use std::path::{Path, PathBuf};

/// Parent of every lab folder.
pub const RUN_ROOT: &str = "/run/sriov-lab";
/// Node netns names are `sriovlab-NAME`; pod netns of a lab `sriovlab-NAME-*`.
pub const NETNS_PREFIX: &str = "sriovlab-";
/// Where `ip netns add` puts its bind mounts.
pub const NETNS_DIR: &str = "/var/run/netns";
/// The fake PCI host bridge every device hangs off.
pub const PCI_ROOT: &str = "devices/pci0000:00";

/// The paths of one lab. The name must already be validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPaths {
    name: String,
    root: PathBuf,
}

impl LabPaths {
    pub fn new(name: &str) -> Self {
        LabPaths {
            name: name.to_string(),
            root: Path::new(RUN_ROOT).join(name),
        }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `/run/sriov-lab/NAME`
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The fake sysfs root (`.../sys`), what `/sys` is on a real node.
    pub fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }
    /// The real sysfs of the node netns, mounted here.
    pub fn netsys(&self) -> PathBuf {
        self.root.join("netsys")
    }
    /// Stand-in for `/dev` (vfio group files).
    pub fn dev(&self) -> PathBuf {
        self.root.join("dev")
    }
    /// Scratch files that are renamed into the tree (same filesystem).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn lab_json(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    /// flock()ed while the VF layout changes.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// The owner pid, written first so `gc` can judge a half-built lab.
    pub fn owner(&self) -> PathBuf {
        self.root.join("owner")
    }
    pub fn netns_name(&self) -> String {
        format!("{NETNS_PREFIX}{}", self.name)
    }
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name())
    }
    /// `sys/devices/pci0000:00/<bdf>`
    pub fn pci_dir(&self, bdf: &str) -> PathBuf {
        self.sys().join(PCI_ROOT).join(bdf)
    }
    /// The live sysfs folder of `ifname` in the node netns.
    pub fn live_netdev(&self, ifname: &str) -> PathBuf {
        self.netsys().join("devices/virtual/net").join(ifname)
    }
}
