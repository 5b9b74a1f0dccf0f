//! ADD: validate → lock → save → apply → (on any error) roll back.

use super::{attach_err, joined, netlink_err, owner_alive, state_err, Ctx};
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
    let env = &ctx.env;
    let conf = &ctx.conf;
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnv, "CNI_NETNS: required for ADD"))?;
    let pod_ns = Netns::open(netns_path)
        .map_err(|e| CniError::new(ErrorCode::InvalidEnv, format!("CNI_NETNS: {e}")))?;
    let (pci, lock) = crate::vf_select::select(conf, env, &ctx.state, &ctx.sysfs)?;
    let mut host = NetlinkSocket::new().map_err(netlink_err("open a netlink socket"))?;

    if let Some(old) = ctx.state.load(&pci).map_err(state_err)? {
        if old.owner.is(&env.container_id, &env.ifname) {
            return Err(CniError::new(
                ErrorCode::VfBusy,
                format!(
                    "deviceID: VF {pci} is already attached to container {} as {}; DEL it first",
                    env.container_id, env.ifname
                ),
            ));
        }
        if owner_alive(&old) {
            return Err(CniError::new(
                ErrorCode::VfBusy,
                format!(
                    "deviceID: VF {pci} belongs to container {} ({} in {})",
                    old.owner.container_id,
                    old.owner.ifname,
                    old.owner
                        .netns
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display()
                ),
            ));
        }
        // Left behind by a pod whose namespace is gone: finish its cleanup first.
        let report = vf_attach::restore(&mut host, &ctx.sysfs, &old, None, Duration::ZERO);
        if !report.is_clean() {
            return Err(CniError::new(
                ErrorCode::VfBusy,
                format!(
                    "deviceID: VF {pci} was left by container {} (namespace gone) and cannot be cleaned: {}",
                    old.owner.container_id,
                    joined(&report.errors)
                ),
            ));
        }
        tracing::info!(
            "VF {pci}: cleaned up after container {}",
            old.owner.container_id
        );
        ctx.state.remove(&lock).map_err(state_err)?;
    }

    let loc = vf_attach::locate(&ctx.sysfs, pci).map_err(attach_err(&pci))?;
    let (original, pf_link) = vf_attach::snapshot(&mut host, &loc).map_err(attach_err(&pci))?;
    if let (Some(mtu), Some(pf)) = (conf.mtu, pf_link) {
        if mtu > pf.mtu {
            return Err(CniError::config(format!(
                "mtu: {mtu} is above the MTU {} of the PF {}",
                pf.mtu,
                loc.pf_name.as_deref().unwrap_or("?")
            )));
        }
    }
    let mut pod_sock = NetlinkSocket::new_in(&pod_ns)
        .map_err(netlink_err("open a netlink socket in CNI_NETNS"))?;
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
    };
    ctx.state.save(&lock, &record, true).map_err(state_err)?;
    tracing::debug!("VF {pci}: original state saved");
    fault::point("save");

    let mut ipam_ran = false;
    match attach(
        ctx,
        &mut host,
        &loc,
        &mut record,
        &lock,
        &pod_ns,
        &mut pod_sock,
        &mut ipam_ran,
    ) {
        Ok(v) => Ok(v),
        Err(e) => Err(rollback(
            ctx, &mut host, &lock, &record, &pod_ns, ipam_ran, e,
        )),
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
    ipam_ran: &mut bool,
) -> Result<Value, CniError> {
    let (env, conf, pci) = (&ctx.env, &ctx.conf, record.pci);
    let mac = env.args.mac.or(conf.mac);
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

    let device_info_file = write_device_info(conf.device_info_file.as_deref(), loc)?;
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
        device_info_file,
    });
    if conf.mtu_lock {
        record.mtu_lock = Some(MtuLock {
            netns: env.netns.clone().unwrap_or_default(),
            ifname: env.ifname.clone(),
            ifindex: out.pod_ifindex,
            mtu: conf.mtu.unwrap_or_default(),
        });
    }
    // Adds information only: the durable record written before the first change already lets a
    // DEL restore everything, so no fsync here.
    ctx.state.save(lock, record, false).map_err(state_err)?;
    fault::point("record");
    Ok(result)
}

/// Addresses, announcement settings, link up, routes.
fn configure_pod(
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

/// Writes the device-information file named by `runtimeConfig.CNIDeviceInfoFile` when it does
/// not exist yet (the device plugin usually wrote it). Returns its path if we wrote it.
fn write_device_info(
    path: Option<&Path>,
    loc: &VfLocation,
) -> Result<Option<std::path::PathBuf>, CniError> {
    let Some(path) = path else { return Ok(None) };
    if path.exists() {
        return Ok(None);
    }
    let dev = sriov::devinfo::AllocatedDevice {
        pci: loc.pci,
        pf_pci: loc.pf_pci,
        driver: loc.driver.clone(),
        iommu_group: None,
        rdma_device: None,
        rdma_char_devices: vec![],
    };
    let err = |e: std::io::Error| {
        CniError::new(
            ErrorCode::Io,
            format!("runtimeConfig.CNIDeviceInfoFile {}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(&sriov::devinfo::file_json(&dev))
        .map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(Some(path.to_path_buf()))
}

/// Undoes a failed ADD: IPAM DEL, VF restore, record dropped once clean. The ADD's error is
/// returned, with what the rollback could not do in its details.
fn rollback(
    ctx: &Ctx,
    host: &mut NetlinkSocket,
    lock: &VfLock,
    record: &VfRecord,
    pod_ns: &Netns,
    ipam_ran: bool,
    err: CniError,
) -> CniError {
    let pci: PciAddress = record.pci;
    let mut problems: Vec<String> = Vec::new();
    if ipam_ran {
        if let Err(e) = ctx.ipam_del(
            &ctx.env.container_id,
            &ctx.env.ifname,
            ctx.env.netns.as_deref(),
        ) {
            problems.push(e.msg);
        }
    }
    let report = vf_attach::restore(host, &ctx.sysfs, record, Some(pod_ns), Duration::ZERO);
    problems.extend(report.errors.iter().map(|e| e.to_string()));
    // The record is about the VF: it goes once the VF is clean (an IPAM release that failed is
    // retried by the runtime's DEL, which always calls IPAM DEL).
    if report.is_clean() {
        if let Err(e) = ctx.state.remove(lock) {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        tracing::info!("VF {pci}: ADD failed and was rolled back: {err}");
        err
    } else {
        tracing::error!(
            "VF {pci}: ADD failed ({err}) and the rollback is incomplete: {}",
            problems.join("; ")
        );
        let details = format!(
            "rollback incomplete (a DEL will retry): {}",
            problems.join("; ")
        );
        err.with_details(details)
    }
}
