//! NodePrepareResources / NodeUnprepareResources for one claim, without gRPC: the claim's
//! allocation (from the sidecar's claim service) checked against this node's pools, drivers
//! bound, a CDI spec written, all of it recorded first ([`sriov::dra_record`]) so that a kill at
//! any point is undone at the next start, or by the next call for the claim.
//!
//! Blocking (sysfs binds wait for the kernel): called on a blocking thread, one claim at a time.

use super::{Dra, DraView};
use crate::pool::PoolSnapshot;
use serde_json::Value;
use sriov::cdi::{self, ContainerEdits, Device, Spec};
use sriov::devinfo::{self, AllocatedDevice};
use sriov::dra_claim::{self, ClaimRef};
use sriov::dra_record::{ClaimRecord, Phase, PreparedDevice};
use sriov::health::TrackedDevice;
use sriov::names::PciAddress;
use sriov::provision::{self, WaitPolicy};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The CDI class of claim specs (dra-driver-sriov's): kind `<driver>/vf`.
pub const CLAIM_CDI_CLASS: &str = "vf";

/// `<driver>-vf_<claim uid>.json` (dra-driver-sriov's naming, as JSON).
pub fn claim_cdi_file(driver: &str, uid: &str) -> String {
    format!("{driver}-{CLAIM_CDI_CLASS}_{uid}.json")
}

impl DraView {
    /// The pool and the tracked device a DRA device name stands for.
    pub fn find(&self, device: &str) -> Option<(&Arc<PoolSnapshot>, &TrackedDevice)> {
        self.pools.iter().find_map(|p| {
            p.devices
                .iter()
                .find(|t| sriov_node_state::dra::device_name(&t.device.pci) == device)
                .map(|t| (p, t))
        })
    }
}

fn pci(d: &PreparedDevice) -> Result<PciAddress, String> {
    PciAddress::parse(&d.pci).map_err(|e| format!("record: {e}"))
}

impl Dra {
    fn kind(&self) -> String {
        format!("{}/{CLAIM_CDI_CLASS}", self.driver)
    }

    /// Tells the device plugin side which devices DRA claims hold now (every record's).
    fn publish_prepared(&self) {
        let mut set = std::collections::BTreeSet::new();
        if let Ok(all) = self.records.all() {
            for r in all.into_iter().flatten() {
                set.extend(
                    r.devices
                        .iter()
                        .filter_map(|d| PciAddress::parse(&d.pci).ok()),
                );
            }
        }
        self.ctx.dra_prepared.send_if_modified(|s| {
            let changed = *s != set;
            *s = set;
            changed
        });
    }

    /// Prepares `claim` whose `status` the API server gave; returns its devices (with their
    /// CDI device IDs). Idempotent: a prepared claim answers from its record (its consumers
    /// refreshed: a claim shared by several pods is prepared once).
    pub fn prepare(&self, claim: &ClaimRef, status: &Value) -> Result<Vec<PreparedDevice>, String> {
        claim.check_uid().map_err(|e| e.to_string())?;
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.prepare_locked(claim, status);
        self.publish_prepared();
        result
    }

    fn prepare_locked(
        &self,
        claim: &ClaimRef,
        status: &Value,
    ) -> Result<Vec<PreparedDevice>, String> {
        let alloc = dra_claim::allocation(claim, status, &self.driver, &self.node_name)
            .map_err(|e| e.to_string())?;
        let records = &self.records;
        if let Some(mut rec) = records.read(&claim.uid).map_err(|e| e.to_string())? {
            if rec.phase == Phase::Prepared {
                let had: Vec<(&str, &str)> = rec
                    .devices
                    .iter()
                    .map(|d| (d.request.as_str(), d.device.as_str()))
                    .collect();
                let now: Vec<(&str, &str)> = alloc
                    .devices
                    .iter()
                    .map(|d| (d.request.as_str(), d.device.as_str()))
                    .collect();
                if had != now {
                    return Err(format!(
                        "claim {} is prepared with devices {had:?}, its allocation now names {now:?}: unprepare it first",
                        claim.label()
                    ));
                }
                if rec.pods != alloc.pods {
                    rec.pods = alloc.pods;
                    records.write(&rec).map_err(|e| e.to_string())?;
                }
                return Ok(rec.devices);
            }
            // A prepare or unprepare of an earlier run, cut short: undone before anew.
            tracing::warn!(claim = %claim.label(), phase = ?rec.phase, "undoing an unfinished prepare");
            self.undo(&rec)?;
        }
        if alloc.devices.is_empty() {
            return Ok(Vec::new());
        }
        let view = self.view.borrow().clone();
        let taken = self.devices_of_other_claims(&claim.uid)?;
        let mut devices = Vec::new();
        for a in &alloc.devices {
            let (pool, tracked) = view.find(&a.device).ok_or_else(|| {
                format!(
                    "claim {}: device {} is not a pool device of this node",
                    claim.label(),
                    a.device
                )
            })?;
            if let sriov::health::Health::Unhealthy(why) = &tracked.health {
                return Err(format!(
                    "claim {}: device {} is unhealthy: {why}",
                    claim.label(),
                    a.device
                ));
            }
            let pci = tracked.device.pci;
            if let Some(other) = taken.get(&pci.to_string()) {
                return Err(format!(
                    "claim {}: device {} is prepared for claim {other}",
                    claim.label(),
                    a.device
                ));
            }
            let original_driver = self
                .ctx
                .sysfs
                .link_name(&self.ctx.sysfs.pci_device(&pci).join("driver"))
                .map_err(|e| format!("device {pci}: {e}"))?;
            let original_driver_override = if a.config.wants_vfio() {
                provision::driver_override(&self.ctx.sysfs, &pci)
                    .map_err(|e| format!("device {pci}: {e}"))?
            } else {
                None
            };
            devices.push(PreparedDevice {
                request: a.request.clone(),
                pool: a.pool.clone(),
                device: a.device.clone(),
                pci: pci.to_string(),
                resource_name: pool.full_name(),
                original_driver,
                original_driver_override,
                config: a.config.clone(),
                cdi_device_id: cdi::qualified_name(
                    &self.kind(),
                    &format!("{}-{}", claim.uid, a.device),
                ),
            });
        }
        let mut rec = ClaimRecord {
            claim: claim.clone(),
            phase: Phase::Preparing,
            devices,
            pods: alloc.pods,
            cdi_file: claim_cdi_file(&self.driver, &claim.uid),
        };
        // Before anything changes; from now on the device plugin side no longer offers them.
        records.write(&rec).map_err(|e| e.to_string())?;
        self.publish_prepared();
        match self.apply(&rec, &view) {
            Ok(()) => {}
            Err(e) => {
                let undone = self.undo(&rec).err();
                return Err(match undone {
                    None => e,
                    Some(u) => format!("{e}; undoing it: {u}"),
                });
            }
        }
        if crate::fault::hit("dra-hang-before-prepared") {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        rec.phase = Phase::Prepared;
        records.write(&rec).map_err(|e| e.to_string())?;
        tracing::info!(claim = %claim.label(), devices = rec.devices.len(), "claim prepared");
        Ok(rec.devices)
    }

    /// PCI address → claim of every other record.
    fn devices_of_other_claims(&self, uid: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for r in self
            .records
            .all()
            .map_err(|e| e.to_string())?
            .into_iter()
            .flatten()
        {
            if r.claim.uid != uid {
                for d in &r.devices {
                    out.insert(d.pci.clone(), r.claim.label());
                }
            }
        }
        Ok(out)
    }

    /// Binds drivers and writes the CDI spec.
    fn apply(&self, rec: &ClaimRecord, view: &DraView) -> Result<(), String> {
        for d in &rec.devices {
            if d.config.wants_vfio() {
                provision::bind_driver(
                    &self.ctx.sysfs,
                    &pci(d)?,
                    "vfio-pci",
                    WaitPolicy::default(),
                )
                .map_err(|e| format!("binding {} to vfio-pci: {e}", d.pci))?;
            }
        }
        let spec = self.claim_spec(rec, view)?;
        self.cdi
            .write(&rec.cdi_file, &spec)
            .map_err(|e| e.to_string())
    }

    /// The claim's CDI spec: per device its device nodes (read now: the driver may have just
    /// changed) and its env entry; for the whole claim, per pool, the envs Allocate gives
    /// (`PCIDEVICE_<PREFIX>_<NAME>` and `..._INFO`).
    fn claim_spec(&self, rec: &ClaimRecord, view: &DraView) -> Result<Spec, String> {
        let mut by_pool: BTreeMap<String, (Arc<PoolSnapshot>, Vec<AllocatedDevice>)> =
            BTreeMap::new();
        let mut devices = Vec::new();
        for d in &rec.devices {
            let (pool, tracked) = view
                .find(&d.device)
                .ok_or_else(|| format!("device {} left the pools", d.device))?;
            let resolved = devinfo::resolve(
                &self.ctx.sysfs,
                tracked.device.pci,
                tracked.device.pf_pci,
                pool.config.is_rdma(),
            )
            .map_err(|e| e.to_string())?;
            let mut resolved = resolved;
            resolved.need_vhost_net =
                pool.config.need_vhost_net() || d.config.add_vhost_mount == Some(true);
            if resolved.is_vfio() && resolved.iommu_group.is_none() && !resolved.vfio_noiommu {
                return Err(format!(
                    "device {} is on vfio-pci without an IOMMU group",
                    d.pci
                ));
            }
            let vhost = pool.config.need_vhost_net() || d.config.add_vhost_mount == Some(true);
            devices.push(Device {
                name: format!("{}-{}", rec.claim.uid, d.device),
                container_edits: crate::cdi::device_edits(
                    &pool.full_name(),
                    &self.ctx.dev_root,
                    &resolved,
                    vhost,
                ),
            });
            by_pool
                .entry(pool.full_name())
                .or_insert_with(|| (pool.clone(), Vec::new()))
                .1
                .push(resolved);
        }
        let mut env = Vec::new();
        for (name, (pool, resolved)) in &by_pool {
            let info = devinfo::PoolInfo {
                additional_info: pool.config.additional_info.as_ref(),
                vhost_net: resolved.iter().any(|d| d.need_vhost_net)
                    && devinfo::vhost_net_available(&self.ctx.dev_root),
                dev_root: &self.ctx.dev_root,
            };
            for (k, v) in devinfo::envs(name, &info, resolved) {
                env.push(format!("{k}={v}"));
            }
        }
        Ok(Spec {
            cdi_version: self.cdi_version,
            kind: self.kind(),
            devices,
            container_edits: ContainerEdits {
                env,
                device_nodes: Vec::new(),
            },
        })
    }

    /// Unprepares `claim`: idempotent (no record, nothing to do).
    pub fn unprepare(&self, claim: &ClaimRef) -> Result<(), String> {
        claim.check_uid().map_err(|e| e.to_string())?;
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut rec) = self.records.read(&claim.uid).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        rec.phase = Phase::Unpreparing;
        self.records.write(&rec).map_err(|e| e.to_string())?;
        let undone = self.undo(&rec);
        self.publish_prepared();
        undone?;
        tracing::info!(claim = %claim.label(), "claim unprepared");
        Ok(())
    }

    /// Gives the devices back (their drivers as before prepare), removes the CDI spec, then the
    /// record. Errors are collected; the record stays (as `Unpreparing`) if anything failed.
    fn undo(&self, rec: &ClaimRecord) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(e) = self.cdi.remove(&rec.cdi_file) {
            problems.push(e.to_string());
        }
        for d in &rec.devices {
            let (Some(orig), true) = (&d.original_driver, d.config.wants_vfio()) else {
                continue;
            };
            let result = pci(d).and_then(|p| {
                provision::bind_driver(&self.ctx.sysfs, &p, orig, WaitPolicy::default())
                    .map_err(|e| format!("rebinding {} to {orig}: {e}", d.pci))?;
                // Binding left `orig` as the override: put back what the device had.
                match &d.original_driver_override {
                    Some(over) => provision::set_driver_override(&self.ctx.sysfs, &p, over)
                        .map_err(|e| format!("restoring the driver_override of {}: {e}", d.pci)),
                    None => Ok(()),
                }
            });
            if let Err(e) = result {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            self.records
                .remove(&rec.claim.uid)
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let mut kept = rec.clone();
        kept.phase = Phase::Unpreparing;
        let _ = self.records.write(&kept);
        Err(problems.join("; "))
    }

    /// At start: every prepare or unprepare a kill cut short is undone. Returns how many.
    pub fn recover(&self) -> usize {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let records = match self.records.all() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("DRA records unreadable: {e}");
                return 0;
            }
        };
        let mut undone = 0;
        for r in records {
            match r {
                Ok(rec) if rec.phase != Phase::Prepared => match self.undo(&rec) {
                    Ok(()) => {
                        undone += 1;
                        tracing::warn!(claim = %rec.claim.label(), phase = ?rec.phase, "undid an unfinished claim preparation");
                    }
                    Err(e) => {
                        tracing::error!(claim = %rec.claim.label(), "cannot undo an unfinished preparation: {e}")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::error!("{e}"),
            }
        }
        self.publish_prepared();
        undone
    }
}
