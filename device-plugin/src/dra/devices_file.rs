//! The node's DRA devices for the sidecar (`--dra-devices-file`): built from discovery, the
//! pools and their live health (`sriov_node_state::dra::build_devices`), written atomically
//! whenever they change; the sidecar publishes them as the node's ResourceSlices.
//!
//! Only a digest of what the file holds stays in memory: with 1,024 devices the list itself is
//! a few MiB of small allocations, which a kept copy (and the holes its replacement leaves in
//! the heap) added to the idle daemon's resident memory.

use crate::pool::PoolSnapshot;
use sriov::discovery::Node;
use sriov::health::Health;
use sriov::names::PciAddress;
use sriov::pools::{Pool, Pools};
use sriov_node_state::dra::{build_devices, DraDevices, DraOptions, PfTopology};
use sriov_node_state::status_file;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct DevicesFile {
    path: PathBuf,
    opts: DraOptions,
    /// A digest of what the file holds (`None`: unknown).
    written: Option<u64>,
}

impl DevicesFile {
    pub fn new(path: PathBuf, driver: String, taints: bool) -> DevicesFile {
        DevicesFile {
            path,
            opts: DraOptions { driver, taints },
            written: None,
        }
    }

    /// The devices to write now, if they differ from the file's.
    pub fn pending<'a>(
        &self,
        node: &Node,
        snapshots: impl Iterator<Item = &'a PoolSnapshot>,
    ) -> Option<DraDevices> {
        let mut health: BTreeMap<PciAddress, Health> = BTreeMap::new();
        let pools = Pools {
            pools: snapshots
                .map(|s| {
                    for t in &s.devices {
                        health.insert(t.device.pci, t.health.clone());
                    }
                    Pool {
                        config: s.config.clone(),
                        devices: s.devices.iter().map(|t| t.device.clone()).collect(),
                    }
                })
                .collect(),
            ..Pools::default()
        };
        let devices = build_devices(node, &pools, &health, &PfTopology::default(), &self.opts);
        (self.written != Some(digest(&devices))).then_some(devices)
    }

    pub fn write(&mut self, devices: DraDevices) -> Result<(), String> {
        match status_file::write_json(&self.path, &devices, "DRA devices") {
            Ok(()) => {
                self.written = Some(digest(&devices));
                Ok(())
            }
            Err(e) => {
                self.written = None;
                Err(format!("{}: {e}", self.path.display()))
            }
        }
    }
}

/// `DefaultHasher::new()` (fixed keys): the same devices give the same digest for the life of
/// the process, and a change of any field gives another (a collision would delay a write until
/// the next change; 1 in 2^64).
fn digest(devices: &DraDevices) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    devices.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sriov_node_state::dra::{AttributeValue, DraDevice};

    fn one(mtu: i64) -> DraDevices {
        DraDevices {
            driver: "d".into(),
            taints: false,
            devices: vec![DraDevice {
                name: "pci-0000-3b-02-0".into(),
                attributes: [("mtu".to_string(), AttributeValue::Int(mtu))].into(),
                taints: vec![],
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn the_digest_follows_every_change() {
        assert_eq!(digest(&one(1500)), digest(&one(1500)));
        assert_ne!(digest(&one(1500)), digest(&one(9000)));
        let mut tainted = one(1500);
        tainted.taints = true;
        assert_ne!(digest(&one(1500)), digest(&tainted));
    }

    #[test]
    fn an_unchanged_list_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dra-devices.json");
        let mut f = DevicesFile::new(path.clone(), "d".into(), false);
        f.write(one(1500)).unwrap();
        let on_disk: DraDevices = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk, one(1500));
        assert_eq!(f.written, Some(digest(&one(1500))));
        let node = Node::default();
        // No pools: no devices, which differs from the file.
        assert_eq!(
            f.pending(&node, std::iter::empty())
                .map(|d| d.devices.len()),
            Some(0)
        );
    }
}
