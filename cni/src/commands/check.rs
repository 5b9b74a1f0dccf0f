//! CHECK: the pod interface against `prevResult` (and the MTU lock), the VF's PF-side settings
//! against the config, then IPAM CHECK.

use super::{netlink_err, open_netns, state_err, Ctx};
use crate::result::IpamResult;
use crate::spec::{CniError, ErrorCode};
use serde_json::Value;
use sriov::netlink::NetlinkSocket;

pub fn check(ctx: &Ctx) -> Result<Value, CniError> {
    let (env, conf) = (&ctx.env, &ctx.conf);
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult: required for CHECK"))?;
    let (_ns, mut sock) = open_netns(env)?;
    if let Some(found) = super::sf::check(ctx, prev, &mut sock)? {
        return found;
    }
    let ours = ctx
        .state
        .find_owned(&env.container_id, &env.ifname)
        .map_err(state_err)?;
    let record = match ours {
        Some(r) => r,
        // An attachment upstream sriov-cni made before the node switched.
        None => upstream_record(ctx, &env.container_id, &env.ifname)?.ok_or_else(|| {
            CniError::new(
                ErrorCode::ContainerUnknown,
                format!(
                    "no VF is attached to container {} as {}",
                    env.container_id, env.ifname
                ),
            )
        })?,
    };
    // Findings, not errors: each says what differs from what ADD set up.
    let mut problems: Vec<String> = Vec::new();
    let netns_path = env.netns.as_deref().unwrap_or(std::path::Path::new(""));

    if record.original.netdev.is_some() {
        match sock.link_by_name(&env.ifname) {
            Err(_) => problems.push(format!(
                "{} is missing from {}",
                env.ifname,
                netns_path.display()
            )),
            Ok(link) => {
                let want = prev
                    .get("interfaces")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(env.ifname.as_str()));
                if let Some(mac) = want.and_then(|i| i.get("mac")).and_then(Value::as_str) {
                    let have = link.mac.map(|m| m.to_string()).unwrap_or_default();
                    if !have.eq_ignore_ascii_case(mac) {
                        problems.push(format!(
                            "mac: {} has {have}, prevResult says {mac}",
                            env.ifname
                        ));
                    }
                }
                let want_mtu = record
                    .mtu_lock
                    .as_ref()
                    .map(|l| l.mtu)
                    .or(conf.mtu)
                    .or_else(|| {
                        want.and_then(|i| i.get("mtu"))
                            .and_then(Value::as_u64)
                            .map(|m| m as u32)
                    });
                if let Some(mtu) = want_mtu.filter(|m| *m != link.mtu) {
                    problems.push(format!(
                        "mtu: {} has MTU {}, expected {mtu}",
                        env.ifname, link.mtu
                    ));
                }
                if !link.up {
                    problems.push(format!("{} is down", env.ifname));
                }
                let prev_ips = IpamResult::parse(prev)
                    .map_err(|e| CniError::config(format!("prevResult: {}", e.msg)))?;
                let have = sock
                    .addresses(link.index)
                    .map_err(netlink_err("list addresses"))?;
                for ip in &prev_ips.ips {
                    if !have
                        .iter()
                        .any(|a| a.address == ip.address.addr && a.prefix_len == ip.address.prefix)
                    {
                        problems.push(format!(
                            "address {} is missing from {}",
                            ip.address, env.ifname
                        ));
                    }
                }
            }
        }
    }
    problems.extend(check_pf_side(ctx, &record));
    if let Some(call) = ctx.ipam() {
        if let Err(e) = call.run("CHECK", &env.container_id, &env.ifname, Some(netns_path)) {
            problems.push(e.msg);
        }
    }
    if problems.is_empty() {
        Ok(Value::Null)
    } else {
        Err(CniError::new(
            ErrorCode::Dataplane,
            format!("CHECK failed: {}", problems.join("; ")),
        ))
    }
}

/// Our view of the attachment upstream sriov-cni made for this container, if it made one.
fn upstream_record(
    ctx: &Ctx,
    container_id: &str,
    ifname: &str,
) -> Result<Option<sriov::state::VfRecord>, CniError> {
    let Some(up) = ctx.upstream()? else {
        return Ok(None);
    };
    let Some(a) = up.attachment(container_id, ifname)? else {
        return Ok(None);
    };
    let allocation = up.allocation(&a.device)?;
    super::release::upstream_record(
        ctx,
        &a,
        container_id,
        ifname,
        ctx.env.netns.as_deref(),
        allocation,
    )
    .map_err(super::attach_err(&a.device))
}

/// The VF's PF-side settings against the knobs the config sets.
fn check_pf_side(ctx: &Ctx, record: &sriov::state::VfRecord) -> Vec<String> {
    let conf = &ctx.conf;
    let mut problems = Vec::new();
    let asks = conf.vlan.is_some()
        || conf.spoofchk.is_some()
        || conf.trust.is_some()
        || conf.link_state.is_some()
        || conf.min_tx_rate.is_some()
        || conf.max_tx_rate.is_some();
    let Some(pf_index) = record.original.pf.ifindex.filter(|_| asks) else {
        return problems;
    };
    let info = match NetlinkSocket::new()
        .and_then(|mut s| s.pf_vf_info(pf_index, record.original.vf_index))
    {
        Ok(i) => i,
        Err(e) => return vec![format!("read VF settings: {e}")],
    };
    let mut cmp = |name: &str, want: Option<String>, have: String| {
        if let Some(w) = want {
            if w != have {
                problems.push(format!("{name}: the VF has {have}, the config says {w}"));
            }
        }
    };
    cmp(
        "vlan",
        conf.vlan.map(|v| v.to_string()),
        info.vlan.to_string(),
    );
    cmp(
        "vlanQoS",
        conf.vlan.map(|_| conf.vlan_qos.unwrap_or(0).to_string()),
        info.qos.to_string(),
    );
    cmp(
        "vlanProto",
        conf.vlan_proto.map(|p| p.to_string()),
        info.vlan_proto.to_string(),
    );
    let on_off = |b: Option<bool>| {
        b.map_or("unknown".to_string(), |b| {
            if b { "on" } else { "off" }.to_string()
        })
    };
    cmp(
        "spoofchk",
        conf.spoofchk.map(|b| on_off(Some(b))),
        on_off(info.spoof_check),
    );
    cmp(
        "trust",
        conf.trust.map(|b| on_off(Some(b))),
        on_off(info.trust),
    );
    cmp(
        "link_state",
        conf.link_state.map(|s| s.to_string()),
        info.link_state.map_or("unknown".into(), |s| s.to_string()),
    );
    cmp(
        "min_tx_rate",
        conf.min_tx_rate.map(|r| r.to_string()),
        info.min_tx_rate.to_string(),
    );
    cmp(
        "max_tx_rate",
        conf.max_tx_rate.map(|r| r.to_string()),
        info.max_tx_rate.to_string(),
    );
    problems
}
