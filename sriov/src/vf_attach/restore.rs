//! Restore: the inverse of attach, from the saved record, collecting every error.
//!
//! Works from any point of a killed or failed ADD or DEL. The netdev is looked for in the pod
//! (under `CNI_IFNAME`, the temporary name or its original name: a DEL killed after renaming it
//! back in the pod leaves it there), then on the node (those names, what sysfs shows, then any
//! link whose parent device is the VF), and, if it is nowhere because a kill in the middle of a
//! driver rebind left the VF without its driver, the original driver is bound again and the
//! netdev waited for. Only a link that is provably this VF is touched: its parent device is the
//! VF's PCI address, or (for devices without a parent, such as veth stand-ins) it carries our
//! temporary name or an ifindex the record knows.
//!
//! Every step is idempotent (it compares with the saved state first), so a restore killed at any
//! point and run again finishes the job.

use super::attach::{bind_driver, on_off, pf_op};
use super::locate::{temp_name, VfLocation};
use super::AttachError;
use crate::discovery::USERSPACE_DRIVERS;
use crate::netlink::{LinkInfo, NetlinkSocket, Netns};
use crate::state::{PfSideState, VfRecord};
use crate::sysfs::Sysfs;
use std::time::{Duration, Instant};

/// A step of [`restore`], reported to the caller's checkpoint hook once passed (fault injection
/// in tests, tracing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStep {
    /// The pod's interface set down, before the move out.
    PodDown,
    /// The pod's interface renamed to the temporary name (only when the node holds its
    /// original name: the usual move out names it on arrival).
    PodRename,
    /// Moved back to the node.
    MoveOut,
    /// The VF's driver bound again (after a rebind that was cut short).
    Bind,
    /// PF-side settings put back.
    PfSide,
    Down,
    Mac,
    Mtu,
    Promisc,
    Rename,
    Altnames,
    Up,
    /// The PF's record of the VF's MAC put back (igb copies the netdev's MAC there).
    PfMac,
}

impl RestoreStep {
    /// Kebab-case name (`SRIOV_CNI_FAULT=restore-<name>`).
    pub fn name(self) -> &'static str {
        match self {
            RestoreStep::PodDown => "restore-pod-down",
            RestoreStep::PodRename => "restore-pod-rename",
            RestoreStep::MoveOut => "restore-move",
            RestoreStep::Bind => "restore-bind",
            RestoreStep::PfSide => "restore-pf-side",
            RestoreStep::Down => "restore-down",
            RestoreStep::Mac => "restore-mac",
            RestoreStep::Mtu => "restore-mtu",
            RestoreStep::Promisc => "restore-promisc",
            RestoreStep::Rename => "restore-rename",
            RestoreStep::Altnames => "restore-altnames",
            RestoreStep::Up => "restore-up",
            RestoreStep::PfMac => "restore-pf-mac",
        }
    }

    /// Every step, in the order [`restore`] passes them.
    pub const ALL: [RestoreStep; 13] = [
        RestoreStep::PodDown,
        RestoreStep::PodRename,
        RestoreStep::MoveOut,
        RestoreStep::Bind,
        RestoreStep::PfSide,
        RestoreStep::Down,
        RestoreStep::Mac,
        RestoreStep::Mtu,
        RestoreStep::Promisc,
        RestoreStep::Rename,
        RestoreStep::Altnames,
        RestoreStep::Up,
        RestoreStep::PfMac,
    ];
}

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

/// Finds the VF through `sock`: among `names`, then (for netdevs with a parent device, which
/// every PCI netdev has) among all links.
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
        .or_else(|| {
            let pci = record.pci.to_string();
            sock.links()
                .ok()?
                .into_iter()
                .find(|l| l.parent_dev.as_deref() == Some(pci.as_str()))
        })
}

/// Puts the VF back as `record` saved it. `pod_netns`: the pod's namespace if it still exists.
/// `wait_for_netdev`: how long to wait for a netdev that is in neither namespace (the kernel
/// returns physical netdevs to the root namespace asynchronously when a namespace dies).
/// `checkpoint` is called after each step.
pub fn restore(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    record: &VfRecord,
    pod_netns: Option<&Netns>,
    wait_for_netdev: Duration,
    checkpoint: &mut dyn FnMut(RestoreStep),
) -> RestoreReport {
    let mut report = RestoreReport::default();
    let tmp = temp_name(&record.pci);
    let original = &record.original;

    let mut host_link = None;
    if let Some(saved) = &original.netdev {
        // 1. Out of the pod, under the original or the temporary name.
        let mut pod_failed = false;
        if let Some(ns) = pod_netns {
            match out_of_pod(host, ns, record, &tmp, checkpoint) {
                Ok(found) => host_link = found,
                Err(e) => {
                    report.errors.push(e);
                    pod_failed = true;
                }
            }
        }
        // 2. On the host (also after a failure in the pod: the move may have happened).
        if host_link.is_none() {
            host_link = find_on_host(host, sysfs, record, &tmp, pod_failed, wait_for_netdev);
        }
        // 3. Nowhere: a rebind cut short leaves the VF without its driver.
        if host_link.is_none() && !pod_failed {
            match rebind_if_unbound(host, sysfs, record) {
                Ok(Some(link)) => {
                    checkpoint(RestoreStep::Bind);
                    host_link = Some(link);
                }
                Ok(None) => {}
                Err(e) => report.errors.push(e),
            }
        }
        if host_link.is_none() && !pod_failed {
            report.netdev_missing = true;
            report.errors.push(AttachError::Lost(format!(
                "its netdev ({}) is neither in the pod nor on the node",
                saved.name
            )));
        }
    }

    // 4. PF-side settings (before the netdev MAC: igb refuses a netdev MAC while our admin
    //    MAC is still set).
    if let (Some(saved), Some(pf_index)) = (&original.pf_side, original.pf.ifindex) {
        restore_pf_side(host, record, saved, pf_index, &mut report);
        checkpoint(RestoreStep::PfSide);
    }

    // 5. The netdev, on the host.
    if let (Some(saved), Some(link)) = (&original.netdev, host_link) {
        let name = link.name.clone();
        let cp = &mut *checkpoint;
        let down = link.up.then(|| host.set_down(link.index));
        note(
            &mut report,
            cp,
            RestoreStep::Down,
            || format!("set {name} down"),
            down,
        );
        let mac = saved.mac.filter(|m| link.mac != Some(*m));
        let r = mac.map(|m| set_netdev_mac(host, record, link.index, m));
        let what = || format!("restore MAC {}", mac.unwrap_or_default());
        note(&mut report, cp, RestoreStep::Mac, what, r);
        // 0: not captured (records made from upstream sriov-cni's).
        let mtu =
            (saved.mtu != 0 && link.mtu != saved.mtu).then(|| host.set_mtu(link.index, saved.mtu));
        let what = || format!("restore MTU {}", saved.mtu);
        note(&mut report, cp, RestoreStep::Mtu, what, mtu);
        let promisc = (!record.upstream && link.promisc != saved.promisc)
            .then(|| host.set_promiscuity(link.index, saved.promisc));
        let what = || "restore promiscuous mode".to_string();
        note(&mut report, cp, RestoreStep::Promisc, what, promisc);
        let rename = if link.name == saved.name {
            None
        } else {
            match host.link_by_name(&saved.name) {
                Ok(other) if other.index != link.index => {
                    report.errors.push(AttachError::Busy(format!(
                        "cannot rename {} back to {}: ifindex {} has that name now",
                        link.name, saved.name, other.index
                    )));
                    None
                }
                _ => Some(host.rename(link.index, &saved.name)),
            }
        };
        let what = || format!("rename {} back to {}", link.name, saved.name);
        note(&mut report, cp, RestoreStep::Rename, what, rename);
        // Altnames: exactly the saved ones (sriov-cni saved none: leave them).
        let current = if record.upstream {
            saved.altnames.clone()
        } else {
            host.link_by_index(link.index)
                .map(|l| l.altnames)
                .unwrap_or_default()
        };
        for alt in current.iter().filter(|a| !saved.altnames.contains(a)) {
            if let Err(e) = host.del_altname(link.index, alt) {
                report
                    .errors
                    .push(AttachError::netlink(format!("remove stray altname {alt}"))(
                        e,
                    ));
            }
        }
        for alt in saved.altnames.iter().filter(|a| !current.contains(a)) {
            if let Err(e) = host.add_altname(link.index, alt) {
                report
                    .errors
                    .push(AttachError::netlink(format!("restore altname {alt}"))(e));
            }
        }
        checkpoint(RestoreStep::Altnames);
        let up = saved.up.then(|| host.set_up(link.index));
        let what = || format!("set {} up", saved.name);
        note(&mut report, checkpoint, RestoreStep::Up, what, up);
        // igb records a MAC the VF sets on itself as the VF's MAC in IFLA_VF_MAC: after the
        // netdev MAC went back, put the PF's view back too (e.g. 00:00:00:00:00:00). A saved
        // non-zero MAC is set again in any case: whether it was administrative (an operator's,
        // enforced) or only recorded, igb does not tell, and a MAC clearing may have dropped an
        // operator's pin while the netdev's MAC went back.
        if let (Some(saved), Some(pf_index)) = (&original.pf_side, original.pf.ifindex) {
            if let Ok(now) = host.pf_vf_info(pf_index, original.vf_index) {
                if now.mac != saved.mac || !saved.mac.is_zero() {
                    let loc = location(record);
                    let vf = original.vf_index;
                    if let Err(e) = pf_op(&loc, "mac", saved.mac, || {
                        host.set_vf_mac(pf_index, vf, saved.mac)
                    }) {
                        report.errors.push(e);
                    }
                }
            }
            checkpoint(RestoreStep::PfMac);
        }
    }
    report
}

/// Sets the VF netdev's MAC back. Drivers that refuse a VF's own MAC change while the PF holds
/// an admin MAC for it and trust is off (igbvf: `EADDRNOTAVAIL`; the admin MAC may predate the
/// attachment, set by an operator or left by sriov-cni's DEL) get the admin MAC cleared for the
/// change; the PF-MAC step that follows puts the saved admin MAC back.
fn set_netdev_mac(
    host: &mut NetlinkSocket,
    record: &VfRecord,
    index: u32,
    mac: crate::netlink::MacAddr,
) -> crate::netlink::Result<()> {
    let first = host.set_mac(index, mac);
    let (Err(e), Some(pf), Some(_)) =
        (&first, record.original.pf.ifindex, &record.original.pf_side)
    else {
        return first;
    };
    if e.errno() != Some(crate::netlink::Errno::EADDRNOTAVAIL) {
        return first;
    }
    let vf = record.original.vf_index;
    if host.set_vf_mac(pf, vf, Default::default()).is_err() {
        return first;
    }
    host.set_mac(index, mac)
}

/// Records the error of a step that ran (`r` is `None` when there was nothing to do) and reports
/// the step as passed.
fn note(
    report: &mut RestoreReport,
    checkpoint: &mut dyn FnMut(RestoreStep),
    at: RestoreStep,
    what: impl FnOnce() -> String,
    r: Option<crate::netlink::Result<()>>,
) {
    if let Some(Err(e)) = r {
        report.errors.push(AttachError::netlink(what())(e));
    }
    checkpoint(at);
}

/// The VF's netdev on the host, waiting up to `wait` for one the kernel is still returning.
fn find_on_host(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    record: &VfRecord,
    tmp: &str,
    pod_failed: bool,
    wait: Duration,
) -> Option<LinkInfo> {
    let saved = record.original.netdev.as_ref()?;
    let deadline = Instant::now() + if pod_failed { Duration::ZERO } else { wait };
    loop {
        let sysfs_names = sysfs
            .list(&sysfs.pci_device(&record.pci).join("net"))
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut names: Vec<&str> = vec![tmp, saved.name.as_str()];
        names.extend(sysfs_names.iter().map(String::as_str));
        names.push(record.owner.ifname.as_str());
        let found = find(host, &names, record, tmp);
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Binds the VF's original driver when it has none now (a kill between unbind and bind), and
/// returns its netdev; `Ok(None)` when the VF has a driver or had none to begin with.
fn rebind_if_unbound(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    record: &VfRecord,
) -> Result<Option<LinkInfo>, AttachError> {
    let Some(driver) = record.original.driver.as_deref() else {
        return Ok(None);
    };
    if USERSPACE_DRIVERS.contains(&driver) {
        return Ok(None);
    }
    let dev = sysfs.pci_device(&record.pci);
    if sysfs.link_name(&dev.join("driver"))?.is_some() {
        return Ok(None);
    }
    tracing::info!(
        "VF {}: no driver bound (a rebind was cut short); binding {driver} again",
        record.pci
    );
    bind_driver(host, sysfs, record.pci, driver, "driver").map(Some)
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

/// Moves the VF from the pod to this namespace; `Ok(None)` when it is not in the pod.
fn out_of_pod(
    host: &mut NetlinkSocket,
    ns: &Netns,
    record: &VfRecord,
    tmp: &str,
    checkpoint: &mut dyn FnMut(RestoreStep),
) -> Result<Option<LinkInfo>, AttachError> {
    let mut pod =
        NetlinkSocket::new_in(ns).map_err(AttachError::netlink("open a socket in the pod"))?;
    let original = record.original.netdev.as_ref().map(|n| n.name.as_str());
    let mut names = vec![record.owner.ifname.as_str(), tmp];
    names.extend(original);
    let Some(link) = find(&mut pod, &names, record, tmp) else {
        return Ok(None);
    };
    let host_ns = Netns::current().map_err(AttachError::netlink("open the node's namespace"))?;
    // Down first, in its own request: the kernel would close the device inside the move, but a
    // move of a device already down is the cheaper of the two by more than the extra request
    // (veth here: 22 against 24 ms, median of 30 each), as ADD does it.
    if link.up {
        pod.set_down(link.index)
            .map_err(AttachError::netlink("set the pod interface down"))?;
    }
    checkpoint(RestoreStep::PodDown);
    // The usual case, the original name free on the node: one request moves the VF and names it
    // there (renamed on arrival), with no moment for a kill between a rename and the move.
    // Should the node take the name meanwhile, the VF arrives under its pod name and the caller
    // finds it by its PCI parent.
    let leaves_as = match original.filter(|o| host.link_by_name(o).is_err()) {
        Some(o) => o,
        None => {
            // The node has another link of that name: leave under the temporary name (renamed
            // in the pod) and let the restore name it once the name is free.
            if link.name != tmp {
                pod.rename(link.index, tmp)
                    .map_err(AttachError::netlink(format!(
                        "rename {} to {tmp} in the pod",
                        link.name
                    )))?;
            }
            checkpoint(RestoreStep::PodRename);
            tmp
        }
    };
    pod.move_to_netns_as(link.index, &host_ns, leaves_as)
        .map_err(AttachError::netlink("move back to the node's namespace"))?;
    checkpoint(RestoreStep::MoveOut);
    host.link_by_name(leaves_as)
        .map(Some)
        .map_err(AttachError::netlink("find the VF back on the node"))
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
            check(pf_op(&loc, "link_state", state, || {
                host.set_vf_link_state(p, vf, state)
            }));
        }
    }
    if (now.min_tx_rate, now.max_tx_rate) != (saved.min_tx_rate, saved.max_tx_rate) {
        let rates = format!("{}/{}", saved.min_tx_rate, saved.max_tx_rate);
        check(pf_op(&loc, "min_tx_rate/max_tx_rate", rates, || {
            host.set_vf_rate(p, vf, saved.min_tx_rate, saved.max_tx_rate)
        }));
    }
    if let Some(on) = saved.spoof_check {
        if now.spoof_check != Some(on) {
            check(pf_op(&loc, "spoofchk", on_off(on), || {
                host.set_vf_spoofchk(p, vf, on)
            }));
        }
    }
    if let Some(on) = saved.trust {
        if now.trust != Some(on) {
            check(pf_op(&loc, "trust", on_off(on), || {
                host.set_vf_trust(p, vf, on)
            }));
        }
    }
    if (now.vlan, now.qos, now.vlan_proto) != (saved.vlan, saved.qos, saved.vlan_proto) {
        // Clearing a VLAN is always 802.1Q 0/0; some drivers refuse 802.1ad with VLAN 0.
        let proto = if saved.vlan == 0 {
            Default::default()
        } else {
            saved.vlan_proto
        };
        check(pf_op(&loc, "vlan", saved.vlan, || {
            host.set_vf_vlan(p, vf, saved.vlan, saved.qos, proto)
        }));
    }
    if now.mac != saved.mac {
        check(pf_op(&loc, "mac", saved.mac, || {
            host.set_vf_mac(p, vf, saved.mac)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_step_names_are_unique() {
        let mut names: Vec<_> = RestoreStep::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RestoreStep::ALL.len());
    }
}
