//! Scenario 3: every VF setting through the PF with our rtnetlink code, read back from the
//! kernel's IFLA_VFINFO_LIST with our own parser. What igb supports must read back exactly;
//! what it rejects must come back as a typed error naming the setting.

use super::{ensure, igb_pfs, pf_up};
use anyhow::{bail, Result};
use sriov::netlink::{
    Errno, MacAddr, NetlinkError, NetlinkSocket, VfLinkState, VfSetting, VlanProto,
};
use sriov::sysfs::Sysfs;

/// Expects `r` to fail as a VF setting error for `setting` with `errno`.
fn expect_rejected(r: sriov::netlink::Result<()>, setting: VfSetting, errno: Errno) -> Result<()> {
    match r {
        Err(NetlinkError::VfSetting { error, .. })
            if error.setting == setting && error.errno == errno =>
        {
            println!("rejected as expected: {error}");
            Ok(())
        }
        Err(e) => bail!("{setting:?}: expected {errno}, got {e}"),
        Ok(()) => bail!("{setting:?}: igb accepted it; expected {errno}"),
    }
}

pub fn run() -> Result<()> {
    let sysfs = Sysfs::new("/sys");
    let (_, pfs) = igb_pfs(&sysfs)?;
    let pf = &pfs[0];
    let mut nl = NetlinkSocket::new()?;
    let pfi = pf_up(&mut nl, pf)?;
    let vf = 0;

    let mac: MacAddr = "02:11:22:33:44:55".parse()?;
    nl.set_vf_mac(pfi, vf, mac)?;
    nl.set_vf_vlan(pfi, vf, 100, 3, VlanProto::Dot1Q)?;
    nl.set_vf_spoofchk(pfi, vf, false)?;
    nl.set_vf_trust(pfi, vf, true)?;
    nl.set_vf_rate(pfi, vf, 0, 100)?;
    let got = nl.pf_vf_info(pfi, vf)?;
    println!("read back: {got:?}");
    ensure(got.mac == mac, || format!("admin MAC {} != {mac}", got.mac))?;
    ensure(
        (got.vlan, got.qos, got.vlan_proto) == (100, 3, VlanProto::Dot1Q),
        || format!("vlan {}/{} {:?}", got.vlan, got.qos, got.vlan_proto),
    )?;
    ensure(got.spoof_check == Some(false), || {
        format!("spoofchk {:?}", got.spoof_check)
    })?;
    ensure(got.trust == Some(true), || format!("trust {:?}", got.trust))?;
    ensure(got.max_tx_rate == 100 && got.min_tx_rate == 0, || {
        format!("rates {}/{}", got.min_tx_rate, got.max_tx_rate)
    })?;

    // The other way round, to prove each knob really moves.
    nl.set_vf_spoofchk(pfi, vf, true)?;
    nl.set_vf_trust(pfi, vf, false)?;
    nl.set_vf_vlan(pfi, vf, 0, 0, VlanProto::Dot1Q)?;
    nl.set_vf_rate(pfi, vf, 0, 0)?;
    let got = nl.pf_vf_info(pfi, vf)?;
    ensure(
        got.spoof_check == Some(true) && got.trust == Some(false),
        || format!("{got:?}"),
    )?;
    ensure(
        got.vlan == 0 && got.qos == 0 && got.max_tx_rate == 0,
        || format!("{got:?}"),
    )?;

    // What igb rejects, as typed errors naming the setting.
    expect_rejected(
        nl.set_vf_rate(pfi, vf, 10, 0),
        VfSetting::MinTxRate,
        Errno::EINVAL,
    )?;
    expect_rejected(
        nl.set_vf_link_state(pfi, vf, VfLinkState::Enable),
        VfSetting::LinkState,
        Errno::EOPNOTSUPP,
    )?;
    expect_rejected(
        nl.set_vf_vlan(pfi, vf, 100, 0, VlanProto::Dot1Ad),
        VfSetting::Vlan,
        Errno::EPROTONOSUPPORT,
    )?;
    // Beyond link speed: EINVAL naming max_tx_rate.
    expect_rejected(
        nl.set_vf_rate(pfi, vf, 0, 100_000),
        VfSetting::MaxTxRate,
        Errno::EINVAL,
    )?;

    // Leave the VF clean: zero admin MAC.
    nl.set_vf_mac(pfi, vf, MacAddr([0; 6]))?;
    ensure(nl.pf_vf_info(pfi, vf)?.mac.is_zero(), || {
        "admin MAC not cleared".into()
    })?;
    println!("vf-settings: all supported settings read back, rejections typed");
    Ok(())
}
