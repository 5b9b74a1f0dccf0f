//! DEL: idempotent, best effort, collects errors. Succeeds when the netns is gone, the VF is
//! already back, the record is missing or `CNI_NETNS` is empty; never touches a VF that another
//! attachment owns now; drops the record only once the VF is clean.

use super::{joined, netlink_err, state_err, Ctx};
use crate::spec::{CniError, ErrorCode};
use serde_json::Value;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::state::{StateDir, VfLock, VfRecord};
use std::time::Duration;

/// How long DEL waits for a VF netdev the kernel is still returning from a dead namespace.
const NETDEV_RETURN_WAIT: Duration = Duration::from_millis(500);

pub fn del(ctx: &Ctx) -> Result<Value, CniError> {
    let env = &ctx.env;
    let mut errors: Vec<String> = Vec::new();

    if let Some((record, lock)) = find_locked(&ctx.state, ctx, &env.container_id, &env.ifname)? {
        if let Err(e) = release(ctx, &record, &lock, env.netns.as_deref()) {
            errors.push(e);
        }
    }
    // IPAM DEL always (it is idempotent too): an ADD that died after IPAM but before its
    // record... cannot exist (the record comes first), but a record dropped by a successful
    // restore whose IPAM DEL failed can.
    if let Err(e) = ctx.ipam_del(&env.container_id, &env.ifname, env.netns.as_deref()) {
        errors.push(e.msg);
    }
    if errors.is_empty() {
        Ok(Value::Null)
    } else {
        Err(CniError::new(ErrorCode::Dataplane, joined(&errors)))
    }
}

/// The record of this attachment, locked and re-read under the lock. With a `deviceID` the VF
/// is known; otherwise (pool or pod-resources VFs) the records are searched by owner.
pub(crate) fn find_locked(
    state: &StateDir,
    ctx: &Ctx,
    container_id: &str,
    ifname: &str,
) -> Result<Option<(VfRecord, VfLock)>, CniError> {
    let candidate = match ctx.conf.device_id {
        Some(pci) => match state.load(&pci).map_err(state_err)? {
            Some(r) if r.owner.is(container_id, ifname) => Some(r),
            // The VF may have a new owner (this is a late DEL of an old pod): look further.
            _ => state.find_owned(container_id, ifname).map_err(state_err)?,
        },
        None => state.find_owned(container_id, ifname).map_err(state_err)?,
    };
    let Some(candidate) = candidate else {
        return Ok(None);
    };
    let lock = state.lock_vf(candidate.pci).map_err(state_err)?;
    match state.load(&candidate.pci).map_err(state_err)? {
        Some(r) if r.owner.is(container_id, ifname) => Ok(Some((r, lock))),
        _ => Ok(None),
    }
}

/// Restores the VF of `record` and drops the record once clean. With the netns gone and the
/// netdev nowhere, the record is kept as orphaned (the next ADD or GC finishes) and this
/// succeeds: nothing the runtime could retry would help.
pub(crate) fn release(
    ctx: &Ctx,
    record: &VfRecord,
    lock: &VfLock,
    netns: Option<&std::path::Path>,
) -> Result<(), String> {
    let pci = record.pci;
    let mut host = NetlinkSocket::new().map_err(|e| netlink_err("open a netlink socket")(e).msg)?;
    let netns = netns.or(record.owner.netns.as_deref());
    let pod_ns = netns.and_then(|p| Netns::open(p).ok());
    let wait = if pod_ns.is_some() {
        Duration::ZERO
    } else {
        NETDEV_RETURN_WAIT
    };
    let report = sriov::vf_attach::restore(&mut host, &ctx.sysfs, record, pod_ns.as_ref(), wait);
    if report.is_clean() {
        if let Some(path) = record
            .attached
            .as_ref()
            .and_then(|a| a.device_info_file.as_ref())
        {
            let _ = sriov::devinfo::remove_file(path);
        }
        ctx.state.remove(lock).map_err(|e| e.to_string())?;
        return Ok(());
    }
    if pod_ns.is_none() && report.netdev_missing {
        let only_missing = report.errors.len() == 1;
        let mut orphan = record.clone();
        orphan.orphaned = true;
        ctx.state
            .save(lock, &orphan, true)
            .map_err(|e| e.to_string())?;
        tracing::warn!(
            "VF {pci}: namespace gone and netdev not found; kept as orphaned for the next ADD or GC: {}",
            joined(&report.errors)
        );
        if only_missing {
            return Ok(());
        }
    }
    Err(format!("VF {pci}: {}", joined(&report.errors)))
}
