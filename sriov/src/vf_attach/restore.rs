//! Restore: the inverse of attach, from the saved record, collecting every error.
//!
//! Works from any point of a crashed or failed ADD: the netdev is searched in the pod (under
//! `CNI_IFNAME` or the temporary name) and then on the host (temporary name, original name, what
//! sysfs shows), and only a link that is provably this VF is touched: its parent device is the
//! VF's PCI address, or (for devices without a parent, such as veth stand-ins) it carries our
//! temporary name or an ifindex the record knows.

use super::attach::pf_op;
use super::locate::{temp_name, VfLocation};
use super::AttachError;
use crate::netlink::{LinkInfo, NetlinkSocket, Netns};
use crate::state::{PfSideState, VfRecord};
use crate::sysfs::Sysfs;
use std::time::{Duration, Instant};

/// What [`restore`] could not do.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub errors: Vec<AttachError>,
    /// The VF's netdev was found neither in the pod nor on the host.
    pub netdev_missing: bool,
}

impl RestoreReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

fn is_this_vf(link: &LinkInfo, record: &VfRecord, tmp: &str) -> bool {
    let pci = record.pci.to_string();
    match &link.parent_dev {
        Some(parent) => *parent == pci,
        None => {
            let mut known = vec![];
            if let Some(n) = &record.original.netdev {
                known.push(n.ifindex);
            }
            if let Some(a) = &record.attached {
                known.extend(a.pod_ifindex);
                known.extend(a.rebound_ifindex);
            }
            link.name == tmp || known.contains(&link.index)
        }
    }
}

/// Finds the VF among `names` through `sock`.
fn find(
    sock: &mut NetlinkSocket,
    names: &[&str],
    record: &VfRecord,
    tmp: &str,
) -> Option<LinkInfo> {
    names
        .iter()
        .filter_map(|n| sock.link_by_name(n).ok())
        .find(|l| is_this_vf(l, record, tmp))
}

/// Puts the VF back as `record` saved it. `pod_netns`: the pod's namespace if it still exists.
/// `wait_for_netdev`: how long to wait for a netdev that is in neither namespace (the kernel
/// returns physical netdevs to the root namespace asynchronously when a namespace dies).
pub fn restore(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    record: &VfRecord,
    pod_netns: Option<&Netns>,
    wait_for_netdev: Duration,
) -> RestoreReport {
    let mut report = RestoreReport::default();
    let tmp = temp_name(&record.pci);
    let original = &record.original;

    let mut host_link = None;
    if let Some(saved) = &original.netdev {
        // 1. Out of the pod, under the temporary name.
        let mut pod_failed = false;
        if let Some(ns) = pod_netns {
            match out_of_pod(host, ns, record, &tmp) {
                Ok(found) => host_link = found,
                Err(e) => {
                    report.errors.push(e);
                    pod_failed = true;
                }
            }
        }
        // 2. On the host (also after a failure in the pod: the move may have happened).
        if host_link.is_none() {
            let wait = if pod_failed {
                Duration::ZERO
            } else {
                wait_for_netdev
            };
            let deadline = Instant::now() + wait;
            loop {
                let sysfs_names = sysfs
                    .list(&sysfs.pci_device(&record.pci).join("net"))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let mut names: Vec<&str> = vec![tmp.as_str(), saved.name.as_str()];
                names.extend(sysfs_names.iter().map(String::as_str));
                names.push(record.owner.ifname.as_str());
                host_link = find(host, &names, record, &tmp);
                if host_link.is_some() || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if host_link.is_none() && !pod_failed {
                report.netdev_missing = true;
                report.errors.push(AttachError::Lost(format!(
                    "VF {}: its netdev ({}) is neither in the pod nor on the node",
                    record.pci, saved.name
                )));
            }
        }
    }

    // 3. PF-side settings (before the netdev MAC: igb refuses a netdev MAC while our admin
    //    MAC is still set).
    if let (Some(saved), Some(pf_index)) = (&original.pf_side, original.pf.ifindex) {
        restore_pf_side(host, record, saved, pf_index, &mut report);
    }

    // 4. The netdev, on the host.
    if let (Some(saved), Some(link)) = (&original.netdev, host_link) {
        let name = link.name.clone();
        let mut errors = Vec::new();
        let step = |errors: &mut Vec<AttachError>, what: String, r: crate::netlink::Result<()>| {
            if let Err(e) = r {
                errors.push(AttachError::netlink(what)(e));
            }
        };
        if link.up {
            step(
                &mut errors,
                format!("set {name} down"),
                host.set_down(link.index),
            );
        }
        if let Some(mac) = saved.mac {
            if link.mac != Some(mac) {
                step(
                    &mut errors,
                    format!("restore MAC {mac}"),
                    host.set_mac(link.index, mac),
                );
            }
        }
        if link.mtu != saved.mtu {
            step(
                &mut errors,
                format!("restore MTU {}", saved.mtu),
                host.set_mtu(link.index, saved.mtu),
            );
        }
        if link.promisc != saved.promisc {
            step(
                &mut errors,
                "restore promiscuous mode".into(),
                host.set_promiscuity(link.index, saved.promisc),
            );
        }
        if link.name != saved.name {
            match host.link_by_name(&saved.name) {
                Ok(other) if other.index != link.index => errors.push(AttachError::Busy(format!(
                    "VF {}: cannot rename {} back to {}: ifindex {} has that name now",
                    record.pci, link.name, saved.name, other.index
                ))),
                _ => step(
                    &mut errors,
                    format!("rename {} back to {}", link.name, saved.name),
                    host.rename(link.index, &saved.name),
                ),
            }
        }
        // Altnames: exactly the saved ones.
        let current = host
            .link_by_index(link.index)
            .map(|l| l.altnames)
            .unwrap_or_default();
        for alt in current.iter().filter(|a| !saved.altnames.contains(a)) {
            step(
                &mut errors,
                format!("remove stray altname {alt}"),
                host.del_altname(link.index, alt),
            );
        }
        for alt in saved.altnames.iter().filter(|a| !current.contains(a)) {
            step(
                &mut errors,
                format!("restore altname {alt}"),
                host.add_altname(link.index, alt),
            );
        }
        if saved.up {
            step(
                &mut errors,
                format!("set {} up", saved.name),
                host.set_up(link.index),
            );
        }
        report.errors.extend(errors);
        // igb records a MAC the VF sets on itself as the VF's MAC in IFLA_VF_MAC: after the
        // netdev MAC went back, put the PF's view back too (e.g. 00:00:00:00:00:00).
        if let (Some(saved), Some(pf_index)) = (&original.pf_side, original.pf.ifindex) {
            if let Ok(now) = host.pf_vf_info(pf_index, original.vf_index) {
                if now.mac != saved.mac {
                    let loc = location(record);
                    let vf = original.vf_index;
                    if let Err(e) = pf_op(&loc, "mac", || host.set_vf_mac(pf_index, vf, saved.mac))
                    {
                        report.errors.push(e);
                    }
                }
            }
        }
    }
    report
}

fn location(record: &VfRecord) -> VfLocation {
    VfLocation {
        pci: record.pci,
        pf_pci: record.original.pf.pci,
        pf_name: record.original.pf.name.clone(),
        pf_driver: record.original.pf.driver.clone(),
        vf_index: record.original.vf_index,
        driver: record.original.driver.clone(),
        netdev_names: vec![],
    }
}

/// Moves the VF from the pod to this namespace under the temporary name; `Ok(None)` when it is
/// not in the pod.
fn out_of_pod(
    host: &mut NetlinkSocket,
    ns: &Netns,
    record: &VfRecord,
    tmp: &str,
) -> Result<Option<LinkInfo>, AttachError> {
    let mut pod =
        NetlinkSocket::new_in(ns).map_err(AttachError::netlink("open a socket in the pod"))?;
    let Some(link) = find(&mut pod, &[record.owner.ifname.as_str(), tmp], record, tmp) else {
        return Ok(None);
    };
    if link.up {
        pod.set_down(link.index)
            .map_err(AttachError::netlink("set the pod interface down"))?;
    }
    // Leave under the original name when the pod has no link of that name: no rename is then
    // needed on the node after the move, where RTNL is often still busy with the move's
    // aftermath (linkwatch). If the node took that name meanwhile, the move fails with EEXIST
    // and the VF leaves under the temporary name instead.
    let original = record.original.netdev.as_ref().map(|n| n.name.as_str());
    let mut names: Vec<&str> = Vec::new();
    if let Some(o) = original.filter(|o| pod.link_by_name(o).is_err()) {
        names.push(o);
    }
    names.push(tmp);
    let host_ns = Netns::current().map_err(AttachError::netlink("open the node's namespace"))?;
    let mut current = link.name.clone();
    for (i, name) in names.iter().enumerate() {
        if current != *name {
            pod.rename(link.index, name)
                .map_err(AttachError::netlink(format!(
                    "rename {current} to {name} in the pod"
                )))?;
            current = name.to_string();
        }
        match pod.move_to_netns(link.index, &host_ns) {
            Ok(()) => {
                return host
                    .link_by_name(name)
                    .map(Some)
                    .map_err(AttachError::netlink("find the VF back on the node"));
            }
            Err(e) if e.errno() == Some(crate::netlink::Errno::EEXIST) && i + 1 < names.len() => {
                continue
            }
            Err(e) => return Err(AttachError::netlink("move back to the node's namespace")(e)),
        }
    }
    unreachable!("the temporary name is always tried last")
}

fn restore_pf_side(
    host: &mut NetlinkSocket,
    record: &VfRecord,
    saved: &PfSideState,
    pf_index: u32,
    report: &mut RestoreReport,
) {
    let vf = record.original.vf_index;
    let loc = location(record);
    let now = match host.pf_vf_info(pf_index, vf) {
        Ok(info) => info,
        Err(e) => {
            report
                .errors
                .push(AttachError::netlink("read the VF's settings from its PF")(
                    e,
                ));
            return;
        }
    };
    let p = pf_index;
    let mut check = |r: Result<(), AttachError>| {
        if let Err(e) = r {
            report.errors.push(e);
        }
    };
    if let Some(state) = saved.link_state {
        if now.link_state != Some(state) {
            check(pf_op(&loc, "link_state", || {
                host.set_vf_link_state(p, vf, state)
            }));
        }
    }
    if (now.min_tx_rate, now.max_tx_rate) != (saved.min_tx_rate, saved.max_tx_rate) {
        check(pf_op(&loc, "min_tx_rate/max_tx_rate", || {
            host.set_vf_rate(p, vf, saved.min_tx_rate, saved.max_tx_rate)
        }));
    }
    if let Some(on) = saved.spoof_check {
        if now.spoof_check != Some(on) {
            check(pf_op(&loc, "spoofchk", || host.set_vf_spoofchk(p, vf, on)));
        }
    }
    if let Some(on) = saved.trust {
        if now.trust != Some(on) {
            check(pf_op(&loc, "trust", || host.set_vf_trust(p, vf, on)));
        }
    }
    if (now.vlan, now.qos, now.vlan_proto) != (saved.vlan, saved.qos, saved.vlan_proto) {
        // Clearing a VLAN is always 802.1Q 0/0; some drivers refuse 802.1ad with VLAN 0.
        let proto = if saved.vlan == 0 {
            Default::default()
        } else {
            saved.vlan_proto
        };
        check(pf_op(&loc, "vlan", || {
            host.set_vf_vlan(p, vf, saved.vlan, saved.qos, proto)
        }));
    }
    if now.mac != saved.mac {
        check(pf_op(&loc, "mac", || host.set_vf_mac(p, vf, saved.mac)));
    }
}
