//! Snapshot and attach: the forward half of the dataplane.

use super::locate::VfLocation;
use super::{AttachError, Step};
use crate::netlink::{
    Errno, LinkInfo, MacAddr, NetlinkError, NetlinkSocket, Netns, VfInfo, VfLinkState, VlanProto,
};
use crate::state::{NetdevState, OriginalState, PfRef, PfSideState};
use crate::sysfs::Sysfs;
use std::time::{Duration, Instant};

/// Per-VF knobs set through the PF; `None` leaves a knob as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PfSettings {
    /// VLAN id (0 clears), QoS, protocol.
    pub vlan: Option<(u16, u8, VlanProto)>,
    pub mac: Option<MacAddr>,
    pub min_tx_rate: Option<u32>,
    pub max_tx_rate: Option<u32>,
    pub spoof_check: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<VfLinkState>,
}

impl PfSettings {
    /// Whether any knob other than the MAC is asked for (the MAC has a fallback).
    pub fn needs_pf(&self) -> bool {
        self.vlan.is_some()
            || self.min_tx_rate.is_some()
            || self.max_tx_rate.is_some()
            || self.spoof_check.is_some()
            || self.trust.is_some()
            || self.link_state.is_some()
    }
}

/// What the pod's netdev should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    pub ifname: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
}

/// What [`attach`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOutcome {
    /// The netdev's ifindex in the pod (`None` for userspace VFs).
    pub pod_ifindex: Option<u32>,
    /// Its MAC in the pod.
    pub mac: Option<MacAddr>,
    /// Its MTU in the pod.
    pub mtu: Option<u32>,
    /// Whether the PF holds the requested MAC as the VF's admin MAC.
    pub admin_mac: bool,
    /// The host ifindex after a VF driver rebind.
    pub rebound_ifindex: Option<u32>,
}

/// The PF's ifindex and MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PfLink {
    pub index: u32,
    pub mtu: u32,
}

fn pf_side(info: &VfInfo) -> PfSideState {
    PfSideState {
        mac: info.mac,
        vlan: info.vlan,
        qos: info.qos,
        vlan_proto: info.vlan_proto,
        spoof_check: info.spoof_check,
        trust: info.trust,
        min_tx_rate: info.min_tx_rate,
        max_tx_rate: info.max_tx_rate,
        link_state: info.link_state,
    }
}

pub(crate) fn netdev_state(link: &LinkInfo) -> NetdevState {
    NetdevState {
        name: link.name.clone(),
        ifindex: link.index,
        mac: link.mac,
        mtu: link.mtu,
        up: link.up,
        promisc: link.promisc,
        altnames: link.altnames.clone(),
    }
}

/// The VF's netdev in the calling thread's namespace, by the names sysfs shows.
pub(crate) fn host_netdev(host: &mut NetlinkSocket, loc: &VfLocation) -> Option<LinkInfo> {
    loc.netdev_names
        .iter()
        .find_map(|name| host.link_by_name(name).ok())
}

/// Reads everything [`super::restore`] needs, after checking that the netdev found for the VF is
/// the VF's own and not the node's uplink ([`super::verify`]). Fails with [`AttachError::Busy`]
/// when the VF's netdev is not in this namespace (another pod or namespace holds it).
pub fn snapshot(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    loc: &VfLocation,
) -> Result<(OriginalState, Option<PfLink>), AttachError> {
    // The PF and the VF's settings as it reports them, in one request.
    let (pf_link, pf_side) = match &loc.pf_name {
        Some(name) => {
            let (l, vf) = host
                .pf_by_name_with_vf(name, loc.vf_index)
                .map_err(AttachError::netlink(format!("read the PF {name}")))?;
            // No such VF in the reply: not a PF that reports VFs (a stand-in, or a driver without
            // VF info): there is no PF-side state to save, and none can be changed.
            let link = PfLink {
                index: l.index,
                mtu: l.mtu,
            };
            (Some(link), vf.map(|info| pf_side(&info)))
        }
        None => (None, None),
    };
    let netdev = if loc.is_userspace() {
        None
    } else {
        let link = host_netdev(host, loc).ok_or_else(|| {
            AttachError::Busy(format!(
                "its netdev ({}) is not in this network namespace: another pod or namespace holds it",
                if loc.netdev_names.is_empty() { "none in sysfs".to_string() } else { loc.netdev_names.join(", ") }
            ))
        })?;
        super::verify::check_netdev(host, sysfs, loc, &link, pf_link.map(|p| p.index))?;
        Some(netdev_state(&link))
    };
    let original = OriginalState {
        pf: PfRef {
            pci: loc.pf_pci,
            name: loc.pf_name.clone(),
            ifindex: pf_link.map(|p| p.index),
            driver: loc.pf_driver.clone(),
        },
        vf_index: loc.vf_index,
        driver: loc.driver.clone(),
        netdev,
        pf_side,
    };
    Ok((original, pf_link))
}

/// `on` / `off`, as the network config spells it.
pub(crate) fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Runs one PF-side request, retrying while the driver is busy (some drivers answer `EBUSY` to
/// parallel VF changes on one PF); a refusal becomes [`AttachError::Setting`].
pub(crate) fn pf_op(
    loc: &VfLocation,
    setting: &'static str,
    value: impl std::fmt::Display,
    mut op: impl FnMut() -> crate::netlink::Result<()>,
) -> Result<(), AttachError> {
    let mut delay = Duration::from_millis(2);
    for attempt in 0.. {
        match op() {
            Ok(()) => return Ok(()),
            Err(e) => {
                let errno = e.errno();
                if matches!(errno, Some(Errno::EBUSY | Errno::EAGAIN)) && attempt < 6 {
                    std::thread::sleep(delay);
                    delay *= 2;
                    continue;
                }
                let value = value.to_string();
                return Err(match (e, errno) {
                    (NetlinkError::VfSetting { error, .. }, _) => AttachError::Setting {
                        setting,
                        value,
                        driver: loc.pf_driver_name(),
                        errno: error.errno,
                        ext_ack: error.ext_ack,
                    },
                    (NetlinkError::Kernel { errno, ext_ack, .. }, _) => AttachError::Setting {
                        setting,
                        value,
                        driver: loc.pf_driver_name(),
                        errno,
                        ext_ack,
                    },
                    (other, _) => AttachError::netlink(format!("{setting} {value}"))(other),
                });
            }
        }
    }
    unreachable!("the retry loop returns")
}

/// Applies `pf` through the PF and moves the VF's netdev into `pod_netns` as `pod.ifname`
/// (down; the caller brings it up once addresses are in place). `pod_sock` must be a socket
/// inside `pod_netns`. `checkpoint` is called after every completed step.
///
/// On error the VF is left part-way: call [`super::restore`] with the saved state.
#[allow(clippy::too_many_arguments)]
pub fn attach(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    loc: &VfLocation,
    original: &OriginalState,
    pf: &PfSettings,
    pod: &PodSettings,
    pod_netns: &Netns,
    pod_sock: &mut NetlinkSocket,
    checkpoint: &mut dyn FnMut(Step),
) -> Result<AttachOutcome, AttachError> {
    let mut out = AttachOutcome::default();
    let vf = loc.vf_index;
    let pf_index = original.pf.ifindex;
    let no_pf = |setting: &'static str| {
        AttachError::Invalid(format!(
            "{setting}: the PF {} has no netdev, so per-VF settings cannot be set",
            loc.pf_pci
        ))
    };
    let cur = original.pf_side.clone();

    if let Some((id, qos, proto)) = pf.vlan {
        let p = pf_index.ok_or_else(|| no_pf("vlan"))?;
        // A driver without 802.1ad says so with EPROTONOSUPPORT: name the key that asked for it.
        pf_op(loc, "vlan", id, || host.set_vf_vlan(p, vf, id, qos, proto)).map_err(
            |e| match e {
                AttachError::Setting {
                    driver,
                    errno: Errno::EPROTONOSUPPORT,
                    ext_ack,
                    ..
                } => AttachError::Setting {
                    setting: "vlanProto",
                    value: proto.to_string(),
                    driver,
                    errno: Errno::EPROTONOSUPPORT,
                    ext_ack,
                },
                AttachError::Setting {
                    setting,
                    driver,
                    errno,
                    ext_ack,
                    ..
                } if qos != 0 => AttachError::Setting {
                    setting,
                    value: format!("{id} (vlanQoS {qos})"),
                    driver,
                    errno,
                    ext_ack,
                },
                other => other,
            },
        )?;
        checkpoint(Step::Vlan);
    }
    if let Some(mac) = pf.mac {
        if let Some(p) = pf_index {
            match pf_op(loc, "mac", mac, || host.set_vf_mac(p, vf, mac)) {
                Ok(()) => out.admin_mac = true,
                Err(e) if e.errno() == Some(Errno::EOPNOTSUPP) => {
                    tracing::info!(
                        "VF {}: the PF cannot set an admin MAC ({e}); setting the netdev MAC only",
                        loc.pci
                    );
                }
                Err(e) => return Err(e),
            }
        }
        checkpoint(Step::AdminMac);
    }
    let (cur_min, cur_max) = cur
        .as_ref()
        .map_or((0, 0), |c| (c.min_tx_rate, c.max_tx_rate));
    let new_max = pf.max_tx_rate.unwrap_or(cur_max);
    if let Some(max) = pf.max_tx_rate {
        let p = pf_index.ok_or_else(|| no_pf("max_tx_rate"))?;
        // Keep the current minimum unless it would exceed the new maximum.
        let min = if max != 0 && cur_min > max {
            0
        } else {
            cur_min
        };
        pf_op(loc, "max_tx_rate", max, || {
            host.set_vf_rate(p, vf, min, max)
        })?;
        checkpoint(Step::MaxTxRate);
    }
    if let Some(min) = pf.min_tx_rate {
        let p = pf_index.ok_or_else(|| no_pf("min_tx_rate"))?;
        pf_op(loc, "min_tx_rate", min, || {
            host.set_vf_rate(p, vf, min, new_max)
        })?;
        checkpoint(Step::MinTxRate);
    }
    if let Some(on) = pf.spoof_check {
        let p = pf_index.ok_or_else(|| no_pf("spoofchk"))?;
        pf_op(loc, "spoofchk", on_off(on), || {
            host.set_vf_spoofchk(p, vf, on)
        })?;
        checkpoint(Step::SpoofCheck);
    }
    if let Some(on) = pf.trust {
        let p = pf_index.ok_or_else(|| no_pf("trust"))?;
        pf_op(loc, "trust", on_off(on), || host.set_vf_trust(p, vf, on))?;
        checkpoint(Step::Trust);
    }
    if let Some(state) = pf.link_state {
        let p = pf_index.ok_or_else(|| no_pf("link_state"))?;
        pf_op(loc, "link_state", state, || {
            host.set_vf_link_state(p, vf, state)
        })?;
        checkpoint(Step::LinkState);
    }

    let Some(saved) = &original.netdev else {
        // DPDK VF: PF-side settings only.
        return Ok(out);
    };
    // As the snapshot read it a moment ago, under the VF's lock.
    let mut link = LinkInfo {
        index: saved.ifindex,
        name: saved.name.clone(),
        mac: saved.mac,
        mtu: saved.mtu,
        up: saved.up,
        altnames: saved.altnames.clone(),
        ..LinkInfo::default()
    };
    if link.up {
        host.set_down(link.index)
            .map_err(AttachError::netlink(format!("set {} down", link.name)))?;
    }
    checkpoint(Step::Down);

    if let Some(mac) = pod.mac {
        if link.mac != Some(mac) {
            match host.set_mac(link.index, mac) {
                Ok(()) => {}
                Err(e) if out.admin_mac => {
                    // igbvf: EADDRNOTAVAIL while an admin MAC is set and trust is off; the
                    // admin MAC takes effect at the next probe.
                    tracing::info!(
                        "VF {}: netdev refuses the MAC ({e}); rebinding its driver",
                        loc.pci
                    );
                    link = rebind(host, sysfs, loc, checkpoint)?;
                    out.rebound_ifindex = Some(link.index);
                    checkpoint(Step::Rebind);
                    if link.mac != Some(mac) {
                        return Err(AttachError::Invalid(format!(
                            "mac: the VF came back from a driver rebind with MAC {} instead of {mac}",
                            link.mac.map_or("none".into(), |m| m.to_string())
                        )));
                    }
                }
                Err(e) => return Err(AttachError::netlink("mac")(e)),
            }
        }
        checkpoint(Step::Mac);
    }

    for alt in &link.altnames {
        host.del_altname(link.index, alt)
            .map_err(AttachError::netlink(format!("remove altname {alt}")))?;
    }
    checkpoint(Step::Altnames);
    // One request moves it and names it: the kernel keeps its name for the move when the pod
    // has no link of that name (else takes `ifname` at once), then renames it. If that rename
    // fails, it is in the pod under its node name, where [`super::restore`] looks too.
    host.move_to_netns_as(link.index, pod_netns, &pod.ifname)
        .map_err(AttachError::netlink(format!(
            "move into the pod's network namespace as {}",
            pod.ifname
        )))?;
    checkpoint(Step::Move);

    let moved = pod_sock
        .link_by_name(&pod.ifname)
        .map_err(AttachError::netlink("find the VF in the pod"))?;
    let mut mtu = moved.mtu;
    if let Some(want) = pod.mtu {
        if want != moved.mtu {
            pod_sock
                .set_mtu(moved.index, want)
                .map_err(AttachError::netlink("mtu"))?;
            mtu = want;
        }
        checkpoint(Step::Mtu);
    }
    out.pod_ifindex = Some(moved.index);
    out.mac = pod.mac.or(moved.mac);
    out.mtu = Some(mtu);
    Ok(out)
}

/// Unbinds and binds the VF's driver so it probes again (and picks up the admin MAC); returns
/// the new netdev, down. A kill between the two leaves the VF without a driver (and without a
/// netdev anywhere); [`super::restore`] binds it back.
pub(crate) fn rebind(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    loc: &VfLocation,
    checkpoint: &mut dyn FnMut(Step),
) -> Result<LinkInfo, AttachError> {
    let driver = loc
        .driver
        .as_deref()
        .ok_or_else(|| AttachError::Invalid("mac: the VF has no driver to rebind".into()))?;
    let dev = sysfs.pci_device(&loc.pci);
    sysfs.write(&dev.join("driver/unbind"), &loc.pci.to_string())?;
    checkpoint(Step::Unbind);
    bind_driver(host, sysfs, loc.pci, driver, "mac")
}

/// Binds `driver` to the VF and waits (5 s at most) for its netdev to show up in this
/// namespace; returns it, down.
pub(crate) fn bind_driver(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    pci: crate::names::PciAddress,
    driver: &str,
    setting: &str,
) -> Result<LinkInfo, AttachError> {
    if !crate::names::is_plain_file_name(driver) {
        return Err(AttachError::Invalid(format!(
            "{setting}: {driver:?} is not a driver name"
        )));
    }
    let dev = sysfs.pci_device(&pci);
    sysfs.write(
        &sysfs
            .root()
            .join("bus/pci/drivers")
            .join(driver)
            .join("bind"),
        &pci.to_string(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names = sysfs.list(&dev.join("net"))?.unwrap_or_default();
        if let Some(link) = names.iter().find_map(|n| host.link_by_name(n).ok()) {
            if link.up {
                host.set_down(link.index)
                    .map_err(AttachError::netlink("set the rebound VF down"))?;
            }
            return Ok(link);
        }
        if Instant::now() > deadline {
            return Err(AttachError::Lost(format!(
                "{setting}: no netdev 5 s after binding {driver}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
