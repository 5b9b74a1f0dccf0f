//! DEL: idempotent, best effort, collects errors. Succeeds when the netns is gone, the VF is
//! already back, the record is missing or `CNI_NETNS` is empty; never touches a VF that another
//! attachment owns now; drops the record only once the VF is clean.

use super::release::{
    release, release_upstream, Problem, Problems, Whereabouts, NETDEV_RETURN_WAIT,
};
use super::{state_err, Ctx};
use crate::spec::CniError;
use serde_json::Value;
use sriov::state::{StateDir, VfLock, VfRecord};
use std::time::Duration;

pub fn del(ctx: &Ctx) -> Result<Value, CniError> {
    let env = &ctx.env;
    let mut problems = Problems::default();
    ctx.remove_stale_temps();

    if let Some(name) = &ctx.conf.aux_device {
        // A scalable function's attachment.
        if let Err(e) = super::sf::del(ctx, Some(name)) {
            problems.push(Problem::Other(e));
        }
    } else if let Some((record, lock)) =
        find_locked(&ctx.state, ctx, &env.container_id, &env.ifname)?
    {
        let pod_ns = Whereabouts::open(env.netns.as_deref(), &record);
        let at = Whereabouts {
            wait: if pod_ns.is_some() {
                Duration::ZERO
            } else {
                NETDEV_RETURN_WAIT
            },
            pod_ns: pod_ns.as_ref(),
        };
        if let Err(p) = release(ctx, &record, &lock, at) {
            problems.extend(p);
        }
    } else if ctx.conf.device_id.is_none() && {
        // Without a deviceID the attachment may be a scalable function's.
        match super::sf::del(ctx, None) {
            Ok(found) => found.is_some(),
            Err(e) => {
                problems.push(Problem::Other(e));
                true
            }
        }
    } {
    } else {
        // An attachment upstream sriov-cni made before the node switched to this plugin.
        match ctx.upstream() {
            Ok(Some(up)) => match up.attachment(&env.container_id, &env.ifname) {
                Ok(Some(a)) => {
                    if let Err(p) = release_upstream(
                        ctx,
                        &up,
                        &a,
                        &env.container_id,
                        &env.ifname,
                        env.netns.as_deref(),
                    ) {
                        problems.extend(p);
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(Problem::Other(e)),
            },
            Ok(None) => {}
            Err(e) => problems.push(Problem::Other(e)),
        }
    }
    // IPAM DEL always (it is idempotent too): a record dropped by a successful restore whose IPAM
    // DEL failed leaves an allocation only this finds.
    if let Err(e) = ctx.ipam_del(&env.container_id, &env.ifname, env.netns.as_deref()) {
        problems.push(Problem::Ipam(e));
    }
    if problems.is_empty() {
        Ok(Value::Null)
    } else {
        Err(problems.into_error(""))
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
