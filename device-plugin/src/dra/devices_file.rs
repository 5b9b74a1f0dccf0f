//! The node's DRA devices for the sidecar (`--dra-devices-file`): built from discovery, the
//! pools and their live health (`sriov_node_state::dra::for_each_device`), written atomically
//! whenever they change; the sidecar publishes them as the node's ResourceSlices.
//!
//! The list is never held: with 1,024 devices it is a few MiB of small allocations, and the
//! heap keeps its high-water mark resident (a kept copy, and a new one built next to it for
//! each comparison, made the idle daemon in `both` mode 14.8 MiB). Each check streams the
//! devices through a digest; a write streams them again straight into the file's JSON.

use crate::pool::PoolSnapshot;
use sriov::discovery::Node;
use sriov::health::Health;
use sriov::names::PciAddress;
use sriov::pools::{Pool, Pools};
use sriov_node_state::dra::{for_each_device, DraDevice, DraOptions, PfTopology};
use sriov_node_state::status_file;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

pub struct DevicesFile {
    path: PathBuf,
    opts: DraOptions,
    /// A digest of what the file holds (`None`: unknown).
    written: Option<u64>,
}

/// The pools and health a list is made of.
struct Inputs {
    pools: Pools,
    health: BTreeMap<PciAddress, Health>,
}

impl Inputs {
    fn of<'a>(snapshots: impl Iterator<Item = &'a PoolSnapshot>) -> Inputs {
        let mut health = BTreeMap::new();
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
        Inputs { pools, health }
    }
}

impl DevicesFile {
    pub fn new(path: PathBuf, driver: String, taints: bool) -> DevicesFile {
        DevicesFile {
            path,
            opts: DraOptions { driver, taints },
            written: None,
        }
    }

    /// Writes the devices when they differ from the file's: `Ok(false)` when they do not.
    pub fn sync<'a>(
        &mut self,
        node: &Node,
        snapshots: impl Iterator<Item = &'a PoolSnapshot>,
    ) -> Result<bool, String> {
        let inputs = Inputs::of(snapshots);
        let digest = self.digest(node, &inputs);
        if self.written == Some(digest) {
            return Ok(false);
        }
        let body = self.json(node, &inputs)?;
        match status_file::write_bytes(&self.path, &body) {
            Ok(()) => {
                self.written = Some(digest);
                Ok(true)
            }
            Err(e) => {
                self.written = None;
                Err(format!("{}: {e}", self.path.display()))
            }
        }
    }

    fn each(&self, node: &Node, inputs: &Inputs, f: impl FnMut(Option<DraDevice>, Vec<String>)) {
        let topology = PfTopology::default();
        for_each_device(
            node,
            &inputs.pools,
            &inputs.health,
            &topology,
            &self.opts,
            f,
        );
    }

    /// `DefaultHasher::new()` (fixed keys): the same devices give the same digest for the life
    /// of the process, and a change of any field another (a collision would delay a write
    /// until the next change; 1 in 2^64).
    fn digest(&self, node: &Node, inputs: &Inputs) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.opts.driver.hash(&mut h);
        self.opts.taints.hash(&mut h);
        self.each(node, inputs, |dev, warnings| {
            dev.hash(&mut h);
            warnings.hash(&mut h);
        });
        h.finish()
    }

    /// The file's body: a `DraDevices` (driver, taints, devices, warnings) written a device at
    /// a time.
    fn json(&self, node: &Node, inputs: &Inputs) -> Result<Vec<u8>, String> {
        let failed = |e: serde_json::Error| format!("DRA devices: {e}");
        let mut body = Vec::with_capacity(64 * 1024);
        body.extend_from_slice(b"{\"driver\":");
        serde_json::to_writer(&mut body, &self.opts.driver).map_err(failed)?;
        body.extend_from_slice(if self.opts.taints {
            b",\"taints\":true,\"devices\":["
        } else {
            b",\"taints\":false,\"devices\":["
        });
        let (mut first, mut error, mut warnings) = (true, None, vec![]);
        self.each(node, inputs, |dev, w| {
            warnings.extend(w);
            let Some(dev) = dev else { return };
            if !first {
                body.push(b',');
            }
            first = false;
            if let Err(e) = serde_json::to_writer(&mut body, &dev) {
                error.get_or_insert(e);
            }
        });
        if let Some(e) = error {
            return Err(failed(e));
        }
        body.push(b']');
        if !warnings.is_empty() {
            body.extend_from_slice(b",\"warnings\":");
            serde_json::to_writer(&mut body, &warnings).map_err(failed)?;
        }
        body.push(b'}');
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::vf;
    use sriov::health::TrackedDevice;
    use sriov_node_state::dra::{build_devices, DraDevices};

    /// Pool `intel.com/<name>` of VFs `k` of PF 0000:3b:00.0 with their health.
    fn snapshot(name: &str, devices: &[(u8, Health)]) -> PoolSnapshot {
        let text = format!(r#"{{"resourceList": [{{"resourceName": "{name}"}}]}}"#);
        let config = sriov::config::Config::parse(&text, "intel.com").unwrap();
        PoolSnapshot {
            config: config.resources.unwrap()[0].clone(),
            devices: devices
                .iter()
                .map(|(k, health)| TrackedDevice {
                    device: vf(*k),
                    health: health.clone(),
                })
                .collect(),
        }
    }

    /// What the file holds, read back as the sidecar reads it.
    fn on_disk(path: &std::path::Path) -> DraDevices {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn the_streamed_file_is_the_list_and_is_written_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dra-devices.json");
        let node = Node::default();
        for taints in [false, true] {
            let mut f = DevicesFile::new(path.clone(), "d.example.com".into(), taints);
            let gone = Health::Unhealthy(sriov::health::Unhealthy::DeviceGone);
            let pools = [
                snapshot("a", &[(1, Health::Healthy), (0, gone)]),
                snapshot("b", &[(2, Health::Healthy)]),
            ];
            assert_eq!(f.sync(&node, pools.iter()), Ok(true));
            let inputs = Inputs::of(pools.iter());
            let want = build_devices(
                &node,
                &inputs.pools,
                &inputs.health,
                &PfTopology::default(),
                &f.opts,
            );
            assert_eq!(want.devices.len(), 3);
            assert_eq!(on_disk(&path), want, "taints {taints}");
            // Unchanged: not written again.
            std::fs::remove_file(&path).unwrap();
            assert_eq!(f.sync(&node, pools.iter()), Ok(false));
            assert!(!path.exists());
            // Any change is.
            let fewer = [snapshot("a", &[(1, Health::Healthy)])];
            assert_eq!(f.sync(&node, fewer.iter()), Ok(true));
            assert_eq!(on_disk(&path).devices.len(), 1);
            let renamed = [snapshot("c", &[(1, Health::Healthy)])];
            assert_eq!(f.sync(&node, renamed.iter()), Ok(true));
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn no_pools_is_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dra-devices.json");
        let mut f = DevicesFile::new(path.clone(), "d".into(), false);
        assert_eq!(f.sync(&Node::default(), std::iter::empty()), Ok(true));
        assert_eq!(
            on_disk(&path),
            DraDevices {
                driver: "d".into(),
                ..Default::default()
            }
        );
    }
}
