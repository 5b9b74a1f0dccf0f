//! `--use-cdi`: one CDI spec per pool (upstream's kind `<prefix>/net-pci`, file
//! `sriov-dp-<prefix>-net-pci-<name>.yaml`), rewritten when the pool changes, checked at every
//! Allocate against what sysfs says of the allocated devices, removed when the pool stops.
//!
//! Each device's edits are its device nodes (VFIO container and group, vhost-net/tun, RDMA
//! character devices, as Allocate returns without CDI) and one environment entry naming it
//! (`PCIDEVICE_<PREFIX>_<NAME>_<PCI>=<pci>`): the CDI library refuses a device with empty
//! edits, which upstream writes for every kernel-driver VF (its spec then fails to load).

use crate::pool::{PoolShared, PoolSnapshot};
use sriov::cdi::{self, CdiError, ContainerEdits, Device, Spec, SpecDir, Version};
use sriov::devinfo::{self, AllocatedDevice};
use std::collections::BTreeMap;
use std::path::Path;

/// Where and how the daemon writes CDI specs.
#[derive(Debug)]
pub struct CdiSettings {
    pub dir: SpecDir,
    pub version: Version,
}

/// `PCIDEVICE_INTEL_COM_NET_0000_3B_02_0=0000:3b:02.0`
fn device_env(full_name: &str, pci: &str) -> String {
    let token: String = pci
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!(
        "{}_{}={pci}",
        devinfo::env_name(full_name),
        token.to_ascii_uppercase()
    )
}

/// The CDI edits of one device.
pub fn device_edits(
    full_name: &str,
    dev_root: &Path,
    d: &AllocatedDevice,
    need_vhost_net: bool,
) -> ContainerEdits {
    let mut d = d.clone();
    d.need_vhost_net |= need_vhost_net;
    let info = devinfo::PoolInfo {
        additional_info: None,
        vhost_net: d.need_vhost_net && devinfo::vhost_net_available(dev_root),
        dev_root,
    };
    ContainerEdits {
        env: vec![device_env(full_name, &d.pci.to_string())],
        device_nodes: devinfo::device_nodes(&info, std::slice::from_ref(&d))
            .into_iter()
            .map(|n| cdi::DeviceNode {
                path: n.container_path,
                host_path: Some(n.host_path.display().to_string()),
                node_type: None,
                permissions: Some(n.permissions.to_string()),
            })
            .collect(),
    }
}

/// What a pool device is, from the snapshot (what the last discovery read), unless `fresh`
/// has it as read now.
fn known(
    t: &sriov::health::TrackedDevice,
    fresh: &BTreeMap<String, &AllocatedDevice>,
) -> AllocatedDevice {
    let pci = t.device.pci.to_string();
    if let Some(d) = fresh.get(&pci) {
        return (*d).clone();
    }
    AllocatedDevice {
        pci: t.device.pci,
        pf_pci: t.device.pf_pci,
        driver: t.device.driver.clone(),
        iommu_group: t.device.iommu_group,
        vfio_noiommu: false,
        uio_device: None,
        rdma_devices: Vec::new(),
        rdma_char_devices: Vec::new(),
        need_vhost_net: false,
    }
}

/// The pool's spec; `None` for a pool without devices (a spec needs one).
pub fn pool_spec(
    snapshot: &PoolSnapshot,
    ctx: &crate::pool::Context,
    version: Version,
    fresh: &[AllocatedDevice],
) -> Option<Spec> {
    if snapshot.devices.is_empty() {
        return None;
    }
    let full = snapshot.full_name();
    let vhost = snapshot.config.need_vhost_net();
    let rdma = snapshot.config.is_rdma();
    let fresh: BTreeMap<String, &AllocatedDevice> =
        fresh.iter().map(|d| (d.pci.to_string(), d)).collect();
    let devices = snapshot
        .devices
        .iter()
        .map(|t| {
            let mut d = known(t, &fresh);
            // RDMA character devices are not in the snapshot: read them.
            if rdma && !fresh.contains_key(&d.pci.to_string()) {
                if let Ok(now) = devinfo::resolve(&ctx.sysfs, d.pci, d.pf_pci, true) {
                    d = now;
                }
            }
            Device {
                name: d.pci.to_string(),
                container_edits: device_edits(&full, &ctx.dev_root, &d, vhost),
            }
        })
        .collect();
    Some(Spec {
        cdi_version: version,
        kind: cdi::pool_kind(&snapshot.config.resource_prefix),
        devices,
        container_edits: ContainerEdits::default(),
    })
}

pub fn file_name(snapshot: &PoolSnapshot) -> String {
    cdi::pool_file_name(
        &snapshot.config.resource_prefix,
        &snapshot.config.resource_name,
    )
}

/// Brings the pool's spec file in line with its snapshot (and with `fresh`, devices just read
/// from sysfs by Allocate). Returns whether it was written. Nothing happens when CDI is off or
/// when the file already says this; with `fresh` given, the file is only rewritten if one of
/// those devices differs from what it says.
pub fn sync(pool: &PoolShared, fresh: &[AllocatedDevice]) -> Result<bool, CdiError> {
    let Some(settings) = &pool.ctx.cdi else {
        return Ok(false);
    };
    let snapshot = pool.current();
    let mut written = pool.cdi_spec.lock().unwrap_or_else(|p| p.into_inner());
    let full = snapshot.full_name();
    let vhost = snapshot.config.need_vhost_net();
    if !fresh.is_empty() {
        let up_to_date = written.as_ref().is_some_and(|(_, spec)| {
            fresh.iter().all(|d| {
                let want = device_edits(&full, &pool.ctx.dev_root, d, vhost);
                let name = d.pci.to_string();
                spec.devices
                    .iter()
                    .any(|x| x.name == name && x.container_edits == want)
            })
        });
        if up_to_date {
            return Ok(false);
        }
    }
    let file = file_name(&snapshot);
    match pool_spec(&snapshot, &pool.ctx, settings.version, fresh) {
        None => {
            if let Some((old, _)) = written.take() {
                settings.dir.remove(&old)?;
            }
            settings.dir.remove(&file)?;
            Ok(false)
        }
        Some(spec) => {
            if written.as_ref() == Some(&(file.clone(), spec.clone())) {
                return Ok(false);
            }
            settings.dir.write(&file, &spec)?;
            if let Some((old, _)) = written.as_ref() {
                if *old != file {
                    settings.dir.remove(old)?;
                }
            }
            *written = Some((file, spec));
            Ok(true)
        }
    }
}

/// Removes the pool's spec file (the pool stops).
pub fn remove(pool: &PoolShared) -> Result<(), CdiError> {
    let Some(settings) = &pool.ctx.cdi else {
        return Ok(());
    };
    let mut written = pool.cdi_spec.lock().unwrap_or_else(|p| p.into_inner());
    let file = file_name(&pool.current());
    if let Some((old, _)) = written.take() {
        settings.dir.remove(&old)?;
    }
    settings.dir.remove(&file)?;
    Ok(())
}

/// Removes `sriov-dp-*` specs no running pool owns (left by a previous run, or by upstream's
/// plugin before the switch). Returns the names removed.
pub fn remove_orphans(settings: &CdiSettings, keep: &[String]) -> Result<Vec<String>, CdiError> {
    let mut removed = Vec::new();
    for f in settings.dir.files_with_prefix(cdi::POOL_FILE_PREFIX)? {
        if !keep.contains(&f) && settings.dir.remove(&f)? {
            removed.push(f);
        }
    }
    Ok(removed)
}

/// What Allocate adds with CDI on: the annotation upstream returns
/// (`cdi.k8s.io/<prefix>_net-pci` = the devices' qualified names, comma-separated) and the same
/// names as `cdi_devices`. An annotation key the CDI rules refuse (a prefix too long) is left
/// out with the reason: `cdi_devices` alone serves kubelets since 1.28.
pub fn allocation(
    snapshot: &PoolSnapshot,
    ids: &[String],
) -> (BTreeMap<String, String>, Vec<String>, Option<CdiError>) {
    let kind = cdi::pool_kind(&snapshot.config.resource_prefix);
    let names: Vec<String> = ids
        .iter()
        .map(|id| cdi::qualified_name(&kind, id))
        .collect();
    let mut annotations = BTreeMap::new();
    let mut problem = None;
    match cdi::annotation_key(&snapshot.config.resource_prefix, cdi::POOL_CLASS) {
        Ok(key) => {
            annotations.insert(key, names.join(","));
        }
        Err(e) => problem = Some(e),
    }
    (annotations, names, problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::{pool_with, vf};
    use sriov::names::PciAddress;

    /// Written once, not again while nothing changes; a device Allocate reads differently
    /// (rebound to vfio-pci) rewrites it; removal takes the file.
    #[test]
    fn sync_writes_only_what_changed() {
        let (tmp, mut pool, _events) = pool_with(&[vf(0), vf(1)]);
        let dir = tmp.path().join("cdi");
        std::sync::Arc::get_mut(&mut pool.ctx).unwrap().cdi = Some(CdiSettings {
            dir: SpecDir::open(&dir).unwrap(),
            version: Version::V0_5_0,
        });
        let file = dir.join("sriov-dp-intel.com-net-pci-net.yaml");
        assert!(sync(&pool, &[]).unwrap());
        assert!(!sync(&pool, &[]).unwrap(), "unchanged");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(v["devices"][1]["name"], "0000:3b:02.1");
        let same = AllocatedDevice {
            pci: PciAddress::parse("0000:3b:02.1").unwrap(),
            pf_pci: PciAddress::parse("0000:3b:00.0").unwrap(),
            driver: Some("iavf".into()),
            iommu_group: None,
            vfio_noiommu: false,
            uio_device: None,
            rdma_devices: vec![],
            rdma_char_devices: vec![],
            need_vhost_net: false,
        };
        assert!(!sync(&pool, std::slice::from_ref(&same)).unwrap());
        let rebound = AllocatedDevice {
            driver: Some("vfio-pci".into()),
            iommu_group: Some(42),
            ..same
        };
        assert!(sync(&pool, &[rebound]).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(
            v["devices"][1]["containerEdits"]["deviceNodes"][1]["path"],
            "/dev/vfio/42"
        );
        remove(&pool).unwrap();
        assert!(!file.exists());
    }
}
