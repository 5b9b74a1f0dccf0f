//! The node's DRA devices for the sidecar (`--dra-devices-file`): built from discovery, the
//! pools and their live health (`sriov_node_state::dra::build_devices`), written atomically
//! whenever they change; the sidecar publishes them as the node's ResourceSlices.

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
    /// What the file holds (`None`: unknown).
    written: Option<DraDevices>,
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
        (self.written.as_ref() != Some(&devices)).then_some(devices)
    }

    pub fn write(&mut self, devices: DraDevices) -> Result<(), String> {
        match status_file::write_json(&self.path, &devices, "DRA devices") {
            Ok(()) => {
                self.written = Some(devices);
                Ok(())
            }
            Err(e) => {
                self.written = None;
                Err(format!("{}: {e}", self.path.display()))
            }
        }
    }
}
