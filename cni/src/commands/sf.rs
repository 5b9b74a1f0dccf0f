//! ADD and DEL of a scalable function (`deviceID` names an auxiliary device, e.g.
//! `mlx5_core.sf.4`): its netdev moves into the pod as a VF's does, without PF-side settings
//! (the config refuses those keys). The record is saved before the first change; a failed ADD
//! and DEL restore the netdev (name, MTU, MAC, down) wherever it is.

use super::add::configure_pod;
use super::{netlink_err, netns_alive, open_netns, refuse_if_held, Ctx};
use crate::result::{render, Interface, IpamResult};
use crate::spec::{CniError, ErrorCode};
use serde_json::Value;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::sf_attach::{self, SfError, SfLock, SfPodSettings, SfRecord, SfState};
use sriov::state::Owner;
use std::path::Path;

fn sf_err(name: &str) -> impl FnOnce(SfError) -> CniError + '_ {
    move |e| {
        let code = match e {
            SfError::NotAnSf(_) => ErrorCode::InvalidConfig,
            SfError::Netlink { .. } => ErrorCode::Dataplane,
            _ => ErrorCode::Io,
        };
        CniError::new(code, format!("SF {name}: {e}"))
    }
}

pub fn add(ctx: &Ctx, name: &str) -> Result<Value, CniError> {
    let (env, conf) = (&ctx.env, &ctx.conf);
    let (pod_ns, mut pod_sock) = open_netns(env)?;
    let netns_path = env.netns.as_deref().unwrap_or(Path::new(""));
    // The name reaches paths: checked before anything (the lock file) uses it.
    sf_attach::check_name(name).map_err(|e| CniError::config(format!("deviceID: {e}")))?;
    let state = SfState::open(&ctx.node.state_dir).map_err(sf_err(name))?;
    let lock = state.lock(name).map_err(sf_err(name))?;
    let mut host = NetlinkSocket::new().map_err(netlink_err("open a netlink socket"))?;
    if let Some(old) = state.load(name).map_err(sf_err(name))? {
        refuse_if_held(
            &format!("SF {name}"),
            &old.owner,
            netns_alive(&old.owner),
            env,
        )?;
        // Left by a pod whose namespace is gone: its netdev is back on the node.
        sf_attach::restore(&mut host, &old, None).map_err(|e| {
            CniError::new(
                ErrorCode::VfBusy,
                format!(
                    "deviceID: SF {name} was left by container {} (namespace gone) and cannot be \
                     cleaned: {e}",
                    old.owner.container_id
                ),
            )
        })?;
        state.remove(&lock, name).map_err(sf_err(name))?;
    }
    let loc = sf_attach::locate(&ctx.sysfs, name)
        .map_err(|e| CniError::config(format!("deviceID: {e}")))?;
    match sriov::discovery::default_route_interfaces(None) {
        Ok(uplinks) if uplinks.contains(&loc.netdev) => {
            return Err(CniError::config(format!(
                "deviceID: the netdev {} of {name} carries the node's default route",
                loc.netdev
            )))
        }
        Ok(_) => {}
        Err(e) => {
            return Err(CniError::new(
                ErrorCode::Dataplane,
                format!(
                    "cannot tell whether {} is the node's uplink: {e}",
                    loc.netdev
                ),
            ))
        }
    }
    if pod_sock.link_by_name(&env.ifname).is_ok() {
        return Err(CniError::new(
            ErrorCode::InvalidEnv,
            format!(
                "CNI_IFNAME: {} already exists in {}",
                env.ifname,
                netns_path.display()
            ),
        ));
    }
    let original = sf_attach::snapshot(&mut host, &loc).map_err(sf_err(name))?;
    let mut record = SfRecord {
        name: name.to_string(),
        owner: Owner {
            network: conf.name.clone(),
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: Some(netns_path.to_path_buf()),
        },
        original,
        result: None,
    };
    state.save(&lock, &record).map_err(sf_err(name))?;
    let mut ipam_ran = false;
    let attached = attach(ctx, &mut host, &loc, &pod_ns, &mut pod_sock, &mut ipam_ran);
    match attached {
        Ok(result) => {
            record.result = Some(result.clone());
            state.save(&lock, &record).map_err(sf_err(name))?;
            Ok(result)
        }
        Err(e) => Err(rollback(
            ctx,
            &state,
            &lock,
            &mut host,
            &record,
            (&pod_ns, &mut pod_sock),
            ipam_ran,
            e,
        )),
    }
}

fn attach(
    ctx: &Ctx,
    host: &mut NetlinkSocket,
    loc: &sf_attach::SfLocation,
    pod_ns: &Netns,
    pod_sock: &mut NetlinkSocket,
    ipam_ran: &mut bool,
) -> Result<Value, CniError> {
    let (env, conf) = (&ctx.env, &ctx.conf);
    let pod = SfPodSettings {
        ifname: env.ifname.clone(),
        mac: env.args.mac.or(conf.mac),
        mtu: conf.mtu,
    };
    let index = sf_attach::attach(host, loc, &pod, pod_ns, pod_sock).map_err(sf_err(&loc.name))?;
    let ipam = match ctx.ipam() {
        Some(call) => {
            let r = call.add()?;
            *ipam_ran = true;
            r
        }
        None => IpamResult::default(),
    };
    configure_pod(pod_ns, pod_sock, index, &env.ifname, &ipam)?;
    let link = pod_sock
        .link_by_index(index)
        .map_err(netlink_err("read the pod interface"))?;
    let iface = Interface {
        name: env.ifname.clone(),
        mac: link.mac.map(|m| m.to_string()),
        sandbox: env.netns.as_ref().map(|p| p.display().to_string()),
        mtu: Some(link.mtu),
        pci_id: None,
    };
    Ok(render(conf.cni_version, &iface, &ipam))
}

#[allow(clippy::too_many_arguments)]
fn rollback(
    ctx: &Ctx,
    state: &SfState,
    lock: &SfLock,
    host: &mut NetlinkSocket,
    record: &SfRecord,
    pod: (&Netns, &mut NetlinkSocket),
    ipam_ran: bool,
    e: CniError,
) -> CniError {
    let env = &ctx.env;
    let mut msg = e.msg.clone();
    if ipam_ran {
        if let Err(i) = ctx.ipam_del(&env.container_id, &env.ifname, env.netns.as_deref()) {
            msg.push_str(&format!("; rollback: IPAM DEL failed: {}", i.msg));
        }
    }
    match sf_attach::restore(host, record, Some(pod)) {
        Ok(()) => {
            if let Err(r) = state.remove(lock, &record.name) {
                msg.push_str(&format!("; rollback: {r}"));
            }
        }
        Err(r) => msg.push_str(&format!("; rollback incomplete (DEL finishes it): {r}")),
    }
    CniError::new(e.code, msg)
}

/// DEL of an SF attachment: `name` from the config, else found by owner. Idempotent: no
/// record, nothing to do; a record of another attachment is left alone.
pub fn del(ctx: &Ctx, name: Option<&str>) -> Result<Option<()>, CniError> {
    let env = &ctx.env;
    let Some(state) = (match SfState::open(&ctx.node.state_dir) {
        Ok(s) => Some(s),
        Err(e) => return Err(sf_err(name.unwrap_or("?"))(e)),
    }) else {
        return Ok(None);
    };
    let record = match name {
        Some(n) => state.load(n).map_err(sf_err(n))?,
        None => state
            .find_owned(&env.container_id, &env.ifname)
            .map_err(sf_err("?"))?,
    };
    let Some(record) = record.filter(|r| r.owner.is(&env.container_id, &env.ifname)) else {
        return Ok(None);
    };
    let name = record.name.clone();
    let lock = state.lock(&name).map_err(sf_err(&name))?;
    let Some(record) = state
        .load(&name)
        .map_err(sf_err(&name))?
        .filter(|r| r.owner.is(&env.container_id, &env.ifname))
    else {
        return Ok(None);
    };
    let mut host = NetlinkSocket::new().map_err(netlink_err("open a netlink socket"))?;
    let pod = env
        .netns
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| Netns::open(p).ok())
        .and_then(|ns| NetlinkSocket::new_in(&ns).ok().map(|s| (ns, s)));
    let result = match pod {
        Some((ns, mut sock)) => sf_attach::restore(&mut host, &record, Some((&ns, &mut sock))),
        None => sf_attach::restore(&mut host, &record, None),
    };
    result.map_err(sf_err(&name))?;
    state.remove(&lock, &name).map_err(sf_err(&name))?;
    Ok(Some(()))
}

/// CHECK of an SF attachment (`deviceID` an SF's name, or without deviceID a record of this
/// owner): the pod interface is there with the MAC of `prevResult` and the config's MTU, then
/// IPAM CHECK. `None`: not an SF attachment (the caller checks VFs).
pub fn check(
    ctx: &Ctx,
    prev: &Value,
    pod_sock: &mut NetlinkSocket,
) -> Result<Option<Result<Value, CniError>>, CniError> {
    let (env, conf) = (&ctx.env, &ctx.conf);
    if conf.aux_device.is_none() && conf.device_id.is_some() {
        return Ok(None);
    }
    let state = SfState::open(&ctx.node.state_dir).map_err(sf_err("?"))?;
    let record = match &conf.aux_device {
        Some(n) => state.load(n).map_err(sf_err(n))?,
        None => state
            .find_owned(&env.container_id, &env.ifname)
            .map_err(sf_err("?"))?,
    };
    match (record, &conf.aux_device) {
        (Some(r), _) if r.owner.is(&env.container_id, &env.ifname) => {}
        (_, None) => return Ok(None),
        (_, Some(n)) => {
            return Err(CniError::new(
                ErrorCode::ContainerUnknown,
                format!(
                    "SF {n} is not attached to container {} as {}",
                    env.container_id, env.ifname
                ),
            ))
        }
    }
    let mut problems = Vec::new();
    match pod_sock.link_by_name(&env.ifname) {
        Err(_) => problems.push(format!("{} is missing from the pod", env.ifname)),
        Ok(link) => {
            let want_mac = prev
                .get("interfaces")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|i| i.get("name").and_then(Value::as_str) == Some(env.ifname.as_str()))
                .and_then(|i| i.get("mac"))
                .and_then(Value::as_str);
            if let Some(mac) = want_mac {
                let have = link.mac.map(|m| m.to_string()).unwrap_or_default();
                if !have.eq_ignore_ascii_case(mac) {
                    problems.push(format!(
                        "mac: {} has {have}, prevResult says {mac}",
                        env.ifname
                    ));
                }
            }
            if let Some(mtu) = conf.mtu.filter(|m| *m != link.mtu) {
                problems.push(format!(
                    "mtu: {} has {}, the config says {mtu}",
                    env.ifname, link.mtu
                ));
            }
        }
    }
    if let Some(call) = ctx.ipam() {
        let netns = env.netns.as_deref();
        if let Err(e) = call.run("CHECK", &env.container_id, &env.ifname, netns) {
            problems.push(e.msg);
        }
    }
    Ok(Some(if problems.is_empty() {
        Ok(Value::Null)
    } else {
        Err(CniError::new(
            ErrorCode::Dataplane,
            format!("CHECK failed: {}", problems.join("; ")),
        ))
    }))
}

/// GC of the SF attachments of this network that `is_valid` does not name: each netdev is put
/// back (from the pod when its namespace is still there) and the record removed.
pub fn gc(ctx: &Ctx, is_valid: &dyn Fn(&str, &str) -> bool) -> Vec<CniError> {
    let mut problems = Vec::new();
    let state = match SfState::open(&ctx.node.state_dir) {
        Ok(s) => s,
        Err(e) => return vec![sf_err("?")(e)],
    };
    let records = match state.records() {
        Ok(r) => r,
        Err(e) => return vec![sf_err("?")(e)],
    };
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                problems.push(sf_err("?")(e));
                continue;
            }
        };
        let owner = &record.owner;
        if owner.network != ctx.conf.name || is_valid(&owner.container_id, &owner.ifname) {
            continue;
        }
        let name = record.name.clone();
        let lock = match state.lock(&name) {
            Ok(l) => l,
            Err(e) => {
                problems.push(sf_err(&name)(e));
                continue;
            }
        };
        // Re-read under the lock: a DEL may have finished, or a new ADD taken the SF.
        match state.load(&name) {
            Ok(Some(current)) if current.owner == record.owner => {}
            Ok(_) => continue,
            Err(e) => {
                problems.push(sf_err(&name)(e));
                continue;
            }
        }
        tracing::info!(
            "GC: releasing SF {name} of container {} ({})",
            owner.container_id,
            owner.ifname
        );
        if ctx.ipam().is_some() {
            if let Err(e) = ctx.ipam_del(&owner.container_id, &owner.ifname, owner.netns.as_deref())
            {
                problems.push(e);
            }
        }
        let restored = match NetlinkSocket::new() {
            Err(e) => Err(netlink_err("open a netlink socket")(e)),
            Ok(mut host) => {
                let pod = owner
                    .netns
                    .as_deref()
                    .and_then(|p| Netns::open(p).ok())
                    .and_then(|ns| NetlinkSocket::new_in(&ns).ok().map(|s| (ns, s)));
                match pod {
                    Some((ns, mut sock)) => {
                        sf_attach::restore(&mut host, &record, Some((&ns, &mut sock)))
                    }
                    None => sf_attach::restore(&mut host, &record, None),
                }
                .map_err(sf_err(&name))
            }
        };
        match restored.and_then(|()| state.remove(&lock, &name).map_err(sf_err(&name))) {
            Ok(()) => {}
            Err(e) => problems.push(e),
        }
    }
    problems
}
