//! ADD: validate → lock → save → apply → (on any error) roll back.

use super::device_info::{self, Target};
use super::release::{release, Problem, Problems, Whereabouts};
use super::{attach_err, netlink_err, open_netns, owner_alive, refuse_if_held, state_err, Ctx};
use crate::fault;
use crate::result::{render, Interface, IpamResult};
use crate::spec::{CniError, ErrorCode};
use serde_json::Value;
use sriov::names::PciAddress;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::state::{Attached, MtuLock, Owner, VfLock, VfRecord, RECORD_FORMAT};
use sriov::vf_attach::{self, AttachOutcome, PfSettings, PodSettings, VfLocation};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub fn add(ctx: &Ctx) -> Result<Value, CniError> {
    if let Some(name) = &ctx.conf.aux_device {
        return super::sf::add(ctx, name);
    }
    let env = &ctx.env;
    let conf = &ctx.conf;
    let (pod_ns, mut pod_sock) = open_netns(env)?;
    let netns_path = env.netns.as_deref().unwrap_or(Path::new(""));
    let devinfo = device_info::target(ctx)?;
    let (pci, lock) = crate::vf_select::select(ctx)?;
    ctx.remove_stale_temps();
    if let Some(ns) = ctx.upstream_holder(&pci)? {
        return Err(CniError::new(
            ErrorCode::VfBusy,
            format!(
                "deviceID: VF {pci} is attached by sriov-cni to the live network namespace {}",
                ns.display()
            ),
        ));
    }
    let mut host = NetlinkSocket::new().map_err(netlink_err("open a netlink socket"))?;

    if let Some(old) = ctx.state.load(&pci).map_err(state_err)? {
        refuse_if_held(&format!("VF {pci}"), &old.owner, owner_alive(&old), env)?;
        // Left behind by a pod whose namespace is gone: finish its cleanup first.
        let at = Whereabouts {
            pod_ns: None,
            wait: Duration::ZERO,
        };
        if let Err(problems) = release(ctx, &old, &lock, at) {
            return Err(CniError::new(
                ErrorCode::VfBusy,
                format!(
                    "deviceID: VF {pci} was left by container {} (namespace gone) and cannot be cleaned: {}",
                    old.owner.container_id,
                    problems.message()
                ),
            ));
        }
        if ctx.state.load(&pci).map_err(state_err)?.is_some() {
            return Err(CniError::new(
                ErrorCode::VfBusy,
                format!(
                    "deviceID: VF {pci} was left by container {} (namespace gone) and its netdev is still missing",
                    old.owner.container_id
                ),
            ));
        }
        tracing::info!(
            "VF {pci}: cleaned up after container {}",
            old.owner.container_id
        );
    }

    let loc = vf_attach::locate(&ctx.sysfs, pci).map_err(attach_err(&pci))?;
    let (original, pf_link) =
        vf_attach::snapshot(&mut host, &ctx.sysfs, &loc).map_err(attach_err(&pci))?;
    if let (Some(mtu), Some(pf)) = (conf.mtu, pf_link) {
        if mtu > pf.mtu {
            return Err(CniError::config(format!(
                "mtu: {mtu} is above the MTU {} of the PF {}",
                pf.mtu,
                loc.pf_name.as_deref().unwrap_or("?")
            )));
        }
    }
    if !loc.is_userspace() && pod_sock.link_by_name(&env.ifname).is_ok() {
        return Err(CniError::new(
            ErrorCode::InvalidEnv,
            format!(
                "CNI_IFNAME: {} already exists in {}",
                env.ifname,
                netns_path.display()
            ),
        ));
    }

    // A MAC from the node's prefix when the config names none: chosen and recorded under a
    // node-wide lock, so two parallel ADDs never pick the same one.
    let asked = env.args.mac.or(conf.mac);
    let _mac_lock = match (&ctx.node.mac_prefix, asked) {
        (Some(_), None) => Some(ctx.state.lock_named("platform-mac").map_err(state_err)?),
        _ => None,
    };
    let assigned_mac = match (&ctx.node.mac_prefix, asked) {
        (Some(prefix), None) => Some(platform_mac(ctx, prefix, pci)?),
        _ => None,
    };
    let mut record = VfRecord {
        format: RECORD_FORMAT,
        pci,
        owner: Owner {
            network: conf.name.clone(),
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: Some(netns_path.to_path_buf()),
        },
        original,
        ipam: ctx.ipam().is_some(),
        attached: None,
        mtu_lock: None,
        orphaned: false,
        device_info_file: devinfo.as_ref().filter(|t| t.ours).map(|t| t.path.clone()),
        assigned_mac,
        upstream: false,
    };
    ctx.state.save(&lock, &record).map_err(state_err)?;
    drop(_mac_lock);
    tracing::debug!("VF {pci}: original state saved");
    fault::point("save");

    let mut ipam_ran = false;
    let attached = attach(
        ctx,
        &mut host,
        &loc,
        &mut record,
        &lock,
        &pod_ns,
        &mut pod_sock,
        devinfo.as_ref(),
        &mut ipam_ran,
    );
    // The sockets hold references into the pod's namespace: close them before a rollback.
    drop(pod_sock);
    drop(host);
    match attached {
        Ok(v) => Ok(v),
        Err(e) => Err(rollback(ctx, &lock, &record, &pod_ns, ipam_ran, e)),
    }
}

#[allow(clippy::too_many_arguments)]
fn attach(
    ctx: &Ctx,
    host: &mut NetlinkSocket,
    loc: &VfLocation,
    record: &mut VfRecord,
    lock: &VfLock,
    pod_ns: &Netns,
    pod_sock: &mut NetlinkSocket,
    devinfo: Option<&Target>,
    ipam_ran: &mut bool,
) -> Result<Value, CniError> {
    let (env, conf, pci) = (&ctx.env, &ctx.conf, record.pci);
    let mac = env.args.mac.or(conf.mac).or(record.assigned_mac);
    let pf = PfSettings {
        vlan: conf.vlan.map(|v| {
            (
                v,
                conf.vlan_qos.unwrap_or(0),
                conf.vlan_proto.unwrap_or_default(),
            )
        }),
        mac,
        min_tx_rate: conf.min_tx_rate,
        max_tx_rate: conf.max_tx_rate,
        spoof_check: conf.spoofchk,
        trust: conf.trust,
        link_state: conf.link_state,
    };
    let pod = PodSettings {
        ifname: env.ifname.clone(),
        mac,
        mtu: conf.mtu,
    };
    let out: AttachOutcome = vf_attach::attach(
        host,
        &ctx.sysfs,
        loc,
        &record.original,
        &pf,
        &pod,
        pod_ns,
        pod_sock,
        &mut |step| {
            tracing::debug!("VF {pci}: step {} done", step.name());
            fault::point(step.name())
        },
    )
    .map_err(attach_err(&pci))?;
    if mac.is_some() && !out.admin_mac {
        tracing::info!("VF {pci}: MAC set on the netdev only (the PF has no admin MAC for it)");
    }

    let ipam = match ctx.ipam() {
        Some(call) => {
            // A failed IPAM ADD cleans up after itself; only a successful one needs a DEL.
            let r = call.add()?;
            *ipam_ran = true;
            fault::point("ipam");
            r
        }
        None => IpamResult::default(),
    };
    if let Some(index) = out.pod_ifindex {
        configure_pod(pod_ns, pod_sock, index, &env.ifname, &ipam)?;
    } else if !ipam.ips.is_empty() {
        tracing::info!(
            "VF {pci} has no netdev (userspace driver): IPAM addresses are reported, not applied"
        );
    }

    if let Some(target) = devinfo {
        device_info::write(target, loc)?;
        fault::point("device-info");
    }
    let iface = Interface {
        name: env.ifname.clone(),
        mac: out.mac.map(|m| m.to_string()),
        sandbox: env.netns.as_ref().map(|p| p.display().to_string()),
        mtu: out.mtu,
        pci_id: Some(pci.to_string()),
    };
    let result = render(conf.cni_version, &iface, &ipam);
    record.attached = Some(Attached {
        pod_ifindex: out.pod_ifindex,
        rebound_ifindex: out.rebound_ifindex,
        result: Some(result.clone()),
        device_info_file: None,
    });
    if conf.mtu_lock {
        record.mtu_lock = Some(MtuLock {
            netns: env.netns.clone().unwrap_or_default(),
            ifname: env.ifname.clone(),
            ifindex: out.pod_ifindex,
            mtu: conf.mtu.unwrap_or_default(),
        });
    }
    // Adds information only: the record written before the first change already lets a DEL
    // restore everything.
    ctx.state.save(lock, record).map_err(state_err)?;
    fault::point("record");
    Ok(result)
}

/// The attachment's MAC from the node's prefix: derived from the pod (or container) and the
/// interface, moved on while another live attachment of this node holds it.
fn platform_mac(
    ctx: &Ctx,
    prefix: &sriov::platform_mac::MacPrefix,
    pci: PciAddress,
) -> Result<sriov::netlink::MacAddr, CniError> {
    let env = &ctx.env;
    let key = sriov::platform_mac::key(env.args.pod(), &env.container_id, &env.ifname);
    let mut failed = None;
    let mac = prefix.assign(&key, |m| match ctx.state.mac_taken(m, &pci) {
        Ok(taken) => taken,
        Err(e) => {
            failed.get_or_insert(e);
            true
        }
    });
    if let Some(e) = failed {
        return Err(state_err(e));
    }
    let mac = mac.ok_or_else(|| {
        CniError::new(
            ErrorCode::VfBusy,
            format!("macPrefix: every MAC of {prefix} is taken on this node"),
        )
    })?;
    ctx.state.claim_mac(&mac, &pci).map_err(state_err)?;
    Ok(mac)
}

/// Addresses, announcement settings, link up, routes.
pub(super) fn configure_pod(
    pod_ns: &Netns,
    sock: &mut NetlinkSocket,
    index: u32,
    ifname: &str,
    ipam: &IpamResult,
) -> Result<(), CniError> {
    for ip in &ipam.ips {
        sock.add_address(index, ip.address.addr, ip.address.prefix)
            .map_err(netlink_err("ipam: add address"))?;
    }
    if !ipam.ips.is_empty() {
        announce_on_up(pod_ns, ifname, ipam)?;
        fault::point("addresses");
    }
    sock.set_up(index)
        .map_err(netlink_err("set the pod interface up"))?;
    fault::point("up");
    for r in &ipam.routes {
        let gw = r.gw.or_else(|| {
            ipam.ips
                .iter()
                .filter(|ip| ip.address.addr.is_ipv4() == r.dst.addr.is_ipv4())
                .find_map(|ip| ip.gateway)
        });
        let dst = (r.dst.prefix != 0).then_some((r.dst.addr, r.dst.prefix));
        let dst = dst.or_else(|| gw.is_none().then_some((r.dst.addr, 0)));
        sock.add_route(dst, gw, index)
            .map_err(netlink_err("ipam: add route"))?;
    }
    if !ipam.routes.is_empty() {
        fault::point("routes");
    }
    Ok(())
}

/// Makes the kernel announce the addresses when the link comes up: `arp_notify` sends a
/// gratuitous ARP for each IPv4 address on NETDEV_UP, `ndisc_notify` an unsolicited NA once
/// each IPv6 address finished DAD. The settings belong to the netdev in this namespace and go
/// away when it leaves.
fn announce_on_up(pod_ns: &Netns, ifname: &str, ipam: &IpamResult) -> Result<(), CniError> {
    let v4 = ipam
        .ips
        .iter()
        .any(|ip| matches!(ip.address.addr, IpAddr::V4(_)));
    let v6 = ipam
        .ips
        .iter()
        .any(|ip| matches!(ip.address.addr, IpAddr::V6(_)));
    let ifname = ifname.to_string();
    pod_ns
        .run_in(move || {
            let mut errors = Vec::new();
            if v4 {
                let p = format!("/proc/sys/net/ipv4/conf/{ifname}/arp_notify");
                if let Err(e) = std::fs::write(&p, "1") {
                    errors.push(format!("{p}: {e}"));
                }
            }
            if v6 {
                let p = format!("/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify");
                if let Err(e) = std::fs::write(&p, "1") {
                    errors.push(format!("{p}: {e}"));
                }
            }
            errors
        })
        .map_err(netlink_err("enter CNI_NETNS"))
        .map(|errors| {
            // Announcements are an optimisation (neighbours learn the MAC anyway): log only.
            for e in errors {
                tracing::warn!("cannot enable address announcements: {e}");
            }
        })
}

/// Undoes a failed ADD: IPAM DEL, then the one release path. The ADD's error is returned, with
/// what the rollback could not do in its details.
fn rollback(
    ctx: &Ctx,
    lock: &VfLock,
    record: &VfRecord,
    pod_ns: &Netns,
    ipam_ran: bool,
    err: CniError,
) -> CniError {
    let pci: PciAddress = record.pci;
    let mut problems = Problems::default();
    if ipam_ran {
        if let Err(e) = ctx.ipam_del(
            &ctx.env.container_id,
            &ctx.env.ifname,
            ctx.env.netns.as_deref(),
        ) {
            problems.push(Problem::Ipam(e));
        }
    }
    // The record goes once the VF is clean (an IPAM release that failed is retried by the
    // runtime's DEL, which always calls IPAM DEL).
    let at = Whereabouts {
        pod_ns: Some(pod_ns),
        wait: Duration::ZERO,
    };
    if let Err(p) = release(ctx, record, lock, at) {
        problems.extend(p);
    }
    if problems.is_empty() {
        tracing::info!("VF {pci}: ADD failed and was rolled back: {err}");
        err
    } else {
        let details = format!(
            "rollback incomplete (a DEL will retry): {}",
            problems.message()
        );
        tracing::error!("VF {pci}: ADD failed ({err}) and the {details}");
        err.with_details(details)
    }
}
