//! GC: release the VF and IPAM allocation of every attachment of this network that is not in
//! `cni.dev/valid-attachments`.

use super::release::{release, release_upstream, Problem, Problems, Whereabouts};
use super::{state_err, Ctx};
use crate::spec::CniError;
use serde_json::Value;
use std::time::Duration;

/// `{containerID, ifname}` pairs from `cni.dev/valid-attachments`.
fn valid_attachments(ctx: &Ctx) -> Result<Vec<(String, String)>, CniError> {
    let key = "cni.dev/valid-attachments";
    let list = ctx
        .conf
        .raw
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| {
            CniError::config(format!(
                "{key}: required for GC (a list of {{containerID, ifname}})"
            ))
        })?;
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let field = |f: &str| {
                a.get(f)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| CniError::config(format!("{key}[{i}].{f}: must be a string")))
            };
            Ok((field("containerID")?, field("ifname")?))
        })
        .collect()
}

pub fn gc(ctx: &Ctx) -> Result<Value, CniError> {
    let valid = valid_attachments(ctx)?;
    let is_valid = |cid: &str, ifname: &str| valid.iter().any(|(c, i)| c == cid && i == ifname);
    let mut problems = Problems::default();
    ctx.remove_stale_temps();
    for record in ctx.state.records().map_err(state_err)? {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                problems.push(Problem::Record(e));
                continue;
            }
        };
        if record.owner.network != ctx.conf.name
            || is_valid(&record.owner.container_id, &record.owner.ifname)
        {
            continue;
        }
        let lock = ctx.state.lock_vf(record.pci).map_err(state_err)?;
        // Re-read under the lock: a DEL may have finished, or a new ADD taken the VF.
        let Some(current) = ctx.state.load(&record.pci).map_err(state_err)? else {
            continue;
        };
        if current.owner != record.owner {
            continue;
        }
        tracing::info!(
            "GC: releasing VF {} of container {} ({})",
            current.pci,
            current.owner.container_id,
            current.owner.ifname
        );
        if current.ipam {
            if let Err(e) = ctx.ipam_del(
                &current.owner.container_id,
                &current.owner.ifname,
                current.owner.netns.as_deref(),
            ) {
                problems.push(Problem::Ipam(e));
            }
        }
        let pod_ns = Whereabouts::open(None, &current);
        let at = Whereabouts {
            pod_ns: pod_ns.as_ref(),
            wait: Duration::ZERO,
        };
        if let Err(p) = release(ctx, &current, &lock, at) {
            problems.extend(p);
        }
    }
    // Scalable functions' attachments.
    for e in super::sf::gc(ctx, &is_valid) {
        problems.push(Problem::Other(e));
    }
    // Attachments upstream sriov-cni made before the node switched (`<container id>-<ifname>`).
    match ctx.upstream() {
        Ok(Some(up)) => gc_upstream(ctx, &up, &valid, &mut problems),
        Ok(None) => {}
        Err(e) => problems.push(Problem::Other(e)),
    }
    if problems.is_empty() {
        Ok(Value::Null)
    } else {
        Err(problems.into_error("GC: "))
    }
}

/// GC of the attachments upstream sriov-cni made for this network.
fn gc_upstream(
    ctx: &Ctx,
    up: &crate::upstream::UpstreamState,
    valid: &[(String, String)],
    problems: &mut Problems,
) {
    let attachments = up.attachments().unwrap_or_else(|e| {
        problems.push(Problem::Other(e));
        Vec::new()
    });
    for a in attachments {
        if a.network != ctx.conf.name || valid.iter().any(|(c, i)| a.file == format!("{c}-{i}")) {
            continue;
        }
        // Runtimes' container IDs have no '-': the first one ends it.
        let Some((cid, ifname)) = a.file.split_once('-') else {
            continue;
        };
        tracing::info!(
            "GC: releasing VF {} that sriov-cni attached to container {cid} ({ifname})",
            a.device
        );
        if a.ipam {
            if let Err(e) = ctx.ipam_del(cid, ifname, None) {
                problems.push(Problem::Ipam(e));
            }
        }
        if let Err(p) = release_upstream(ctx, up, &a, cid, ifname, None) {
            problems.extend(p);
        }
    }
}
