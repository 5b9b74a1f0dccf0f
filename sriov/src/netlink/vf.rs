//! VF settings as plain values ([`VfInfo`]) and the `IFLA_VFINFO_LIST`
//! parser.
//!
//! The parser is ours rather than netlink-packet-route's because that one
//! loses information we need: the kernel reports spoofchk and trust as
//! `-1` when the driver does not say, which it turns into `false`; an
//! unknown VLAN protocol becomes 802.1Q. It also works on plain bytes, so it
//! is tested without root or hardware.

use std::fmt;
use std::str::FromStr;

use super::attrs::{nlas, u32_at};
use super::error::NetlinkError;
use super::link::MacAddr;

// <linux/if_link.h>
const IFLA_VF_INFO: u16 = 1;
const IFLA_VF_MAC: u16 = 1;
const IFLA_VF_VLAN: u16 = 2;
const IFLA_VF_TX_RATE: u16 = 3;
const IFLA_VF_SPOOFCHK: u16 = 4;
const IFLA_VF_LINK_STATE: u16 = 5;
const IFLA_VF_RATE: u16 = 6;
const IFLA_VF_TRUST: u16 = 9;
const IFLA_VF_VLAN_LIST: u16 = 12;
const IFLA_VF_VLAN_INFO: u16 = 1;

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// The VLAN tag protocol of a VF's port VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VlanProto {
    /// 802.1Q (`0x8100`), the default.
    #[default]
    Dot1Q,
    /// 802.1ad (`0x88a8`, QinQ).
    Dot1Ad,
}

impl VlanProto {
    pub(crate) fn from_ethertype(v: u16) -> Option<Self> {
        match v {
            ETH_P_8021Q => Some(Self::Dot1Q),
            ETH_P_8021AD => Some(Self::Dot1Ad),
            _ => None,
        }
    }
}

impl fmt::Display for VlanProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dot1Q => "802.1Q",
            Self::Dot1Ad => "802.1ad",
        })
    }
}

impl FromStr for VlanProto {
    type Err = NetlinkError;

    /// `802.1q` / `802.1ad`, any case (sriov-cni's `vlanProto`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("802.1q") {
            Ok(Self::Dot1Q)
        } else if s.eq_ignore_ascii_case("802.1ad") {
            Ok(Self::Dot1Ad)
        } else {
            Err(NetlinkError::InvalidArgument(format!(
                "unknown VLAN protocol {s:?} (expected 802.1q or 802.1ad)"
            )))
        }
    }
}

/// A VF's administrative link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VfLinkState {
    /// Follow the PF's link.
    #[default]
    Auto,
    /// Always up.
    Enable,
    /// Always down.
    Disable,
}

impl VfLinkState {
    pub(crate) fn from_raw(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Auto),
            1 => Some(Self::Enable),
            2 => Some(Self::Disable),
            _ => None,
        }
    }
}

impl fmt::Display for VfLinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Enable => "enable",
            Self::Disable => "disable",
        })
    }
}

impl FromStr for VfLinkState {
    type Err = NetlinkError;

    /// `auto` / `enable` / `disable` (sriov-cni's `link_state`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "enable" => Ok(Self::Enable),
            "disable" => Ok(Self::Disable),
            _ => Err(NetlinkError::InvalidArgument(format!(
                "unknown VF link state {s:?} (expected auto, enable or disable)"
            ))),
        }
    }
}

/// One VF's settings as its PF reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VfInfo {
    /// VF number on the PF (0-based, as in `virtfnN`).
    pub vf: u32,
    /// Administrative MAC; all zeros when none is set.
    pub mac: MacAddr,
    /// Port VLAN, 0 when none.
    pub vlan: u16,
    pub qos: u8,
    pub vlan_proto: VlanProto,
    /// `None` when the driver does not report it.
    pub spoof_check: Option<bool>,
    /// `None` when the driver does not report it.
    pub trust: Option<bool>,
    /// `None` when the kernel sent no (or an unknown) link state.
    pub link_state: Option<VfLinkState>,
    /// Mb/s, 0 = no guarantee.
    pub min_tx_rate: u32,
    /// Mb/s, 0 = no limit.
    pub max_tx_rate: u32,
}

/// Decode the value of an `IFLA_VFINFO_LIST` attribute: a list of
/// `IFLA_VF_INFO` nests, one per VF. Truncated or inconsistent input is an
/// error (never a panic); attributes we do not use are skipped.
pub fn parse_vfinfo_list(value: &[u8]) -> Result<Vec<VfInfo>, NetlinkError> {
    let mut vfs = Vec::new();
    for (kind, info) in nlas(value, "IFLA_VFINFO_LIST")? {
        if kind != IFLA_VF_INFO {
            return Err(decode(
                "IFLA_VFINFO_LIST",
                format!("attribute {kind} where IFLA_VF_INFO was expected"),
            ));
        }
        vfs.push(parse_vf(info)?);
    }
    vfs.sort_by_key(|v| v.vf);
    Ok(vfs)
}

fn decode(what: &'static str, reason: impl Into<String>) -> NetlinkError {
    NetlinkError::Decode {
        what,
        reason: reason.into(),
    }
}
/// Every `IFLA_VF_*` struct starts with `__u32 vf`. Check the struct is
/// at least `len` bytes and that it is about the VF we are reading.
fn vf_struct<'a>(
    value: &'a [u8],
    len: usize,
    name: &'static str,
    vf: &mut Option<u32>,
) -> Result<&'a [u8], NetlinkError> {
    if value.len() < len {
        return Err(decode(
            "IFLA_VF_INFO",
            format!("{name} is {} bytes, expected {len}", value.len()),
        ));
    }
    let id = u32_at(value, 0).unwrap_or_default();
    match *vf {
        None => *vf = Some(id),
        Some(seen) if seen != id => {
            return Err(decode(
                "IFLA_VF_INFO",
                format!("{name} is about VF {id} inside VF {seen}'s entry"),
            ))
        }
        Some(_) => {}
    }
    Ok(value)
}

/// The kernel fills spoofchk/trust with `(u32)-1` before asking the
/// driver; a value still -1 means the driver has no opinion.
fn tristate(v: u32) -> Option<bool> {
    (v != u32::MAX).then_some(v != 0)
}

fn parse_vf(info: &[u8]) -> Result<VfInfo, NetlinkError> {
    const WHAT: &str = "IFLA_VF_INFO";
    let field = |v: &[u8], offset: usize| u32_at(v, offset).unwrap_or_default();
    let mut vf_id = None;
    let mut out = VfInfo::default();
    let mut rate = None;
    let mut tx_rate = None;
    for (kind, value) in nlas(info, WHAT)? {
        match kind {
            IFLA_VF_MAC => {
                let v = vf_struct(value, 4 + 32, "IFLA_VF_MAC", &mut vf_id)?;
                out.mac = MacAddr::from_slice(&v[4..]).unwrap_or_default();
            }
            IFLA_VF_VLAN => {
                let v = vf_struct(value, 12, "IFLA_VF_VLAN", &mut vf_id)?;
                (out.vlan, out.qos) = vlan_qos(field(v, 4), field(v, 8))?;
            }
            IFLA_VF_RATE => {
                let v = vf_struct(value, 12, "IFLA_VF_RATE", &mut vf_id)?;
                rate = Some((field(v, 4), field(v, 8)));
            }
            IFLA_VF_TX_RATE => {
                let v = vf_struct(value, 8, "IFLA_VF_TX_RATE", &mut vf_id)?;
                tx_rate = Some(field(v, 4));
            }
            IFLA_VF_SPOOFCHK => {
                let v = vf_struct(value, 8, "IFLA_VF_SPOOFCHK", &mut vf_id)?;
                out.spoof_check = tristate(field(v, 4));
            }
            IFLA_VF_TRUST => {
                let v = vf_struct(value, 8, "IFLA_VF_TRUST", &mut vf_id)?;
                out.trust = tristate(field(v, 4));
            }
            IFLA_VF_LINK_STATE => {
                let v = vf_struct(value, 8, "IFLA_VF_LINK_STATE", &mut vf_id)?;
                out.link_state = VfLinkState::from_raw(field(v, 4));
            }
            IFLA_VF_VLAN_LIST => {
                // One entry today (MAX_VLAN_LIST_LEN); it repeats IFLA_VF_VLAN
                // and adds the protocol.
                if let Some((_, entry)) = nlas(value, "IFLA_VF_VLAN_LIST")?
                    .into_iter()
                    .find(|(k, _)| *k == IFLA_VF_VLAN_INFO)
                {
                    // struct ifla_vf_vlan_info: vf, vlan, qos (u32), __be16 proto
                    let v = vf_struct(entry, 14, "IFLA_VF_VLAN_INFO", &mut vf_id)?;
                    (out.vlan, out.qos) = vlan_qos(field(v, 4), field(v, 8))?;
                    let proto = u16::from_be_bytes([v[12], v[13]]);
                    out.vlan_proto = VlanProto::from_ethertype(proto).ok_or_else(|| {
                        decode(WHAT, format!("unknown VLAN protocol {proto:#06x}"))
                    })?;
                }
            }
            // broadcast, RSS query, stats, IB GUIDs: not needed
            _ => {}
        }
    }
    out.vf = vf_id.ok_or_else(|| decode(WHAT, "an entry without any VF number"))?;
    // IFLA_VF_RATE (min and max) supersedes the older IFLA_VF_TX_RATE (max).
    match (rate, tx_rate) {
        (Some((min, max)), _) => (out.min_tx_rate, out.max_tx_rate) = (min, max),
        (None, Some(max)) => out.max_tx_rate = max,
        (None, None) => {}
    }
    Ok(out)
}

fn vlan_qos(vlan: u32, qos: u32) -> Result<(u16, u8), NetlinkError> {
    if vlan > 4095 || qos > 7 {
        return Err(decode(
            "IFLA_VF_INFO",
            format!("vlan {vlan} qos {qos} out of range"),
        ));
    }
    Ok((vlan as u16, qos as u8))
}

#[cfg(test)]
mod tests {
    use super::super::link::tests::nla;
    use super::*;

    fn u32s(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    fn mac_attr(vf: u32, mac: [u8; 6]) -> Vec<u8> {
        let mut v = vf.to_ne_bytes().to_vec();
        v.extend_from_slice(&mac);
        v.resize(4 + 32, 0);
        nla(IFLA_VF_MAC, &v)
    }

    fn vlan_list(vf: u32, vlan: u32, qos: u32, proto: u16) -> Vec<u8> {
        let mut v = u32s(&[vf, vlan, qos]);
        v.extend_from_slice(&proto.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        nla(IFLA_VF_VLAN_LIST, &nla(IFLA_VF_VLAN_INFO, &v))
    }

    /// A VF entry the way the kernel's rtnl_fill_vfinfo lays it out.
    fn full_vf(
        vf: u32,
        mac: [u8; 6],
        vlan: u32,
        qos: u32,
        proto: u16,
        spoof: u32,
        trust: u32,
    ) -> Vec<u8> {
        let mut v = mac_attr(vf, mac);
        v.extend(nla(13, &[0xff; 36])); // IFLA_VF_BROADCAST, ignored
        v.extend(nla(IFLA_VF_VLAN, &u32s(&[vf, vlan, qos])));
        v.extend(nla(IFLA_VF_RATE, &u32s(&[vf, 10, 1000])));
        v.extend(nla(IFLA_VF_TX_RATE, &u32s(&[vf, 1000])));
        v.extend(nla(IFLA_VF_SPOOFCHK, &u32s(&[vf, spoof])));
        v.extend(nla(IFLA_VF_LINK_STATE, &u32s(&[vf, 2])));
        v.extend(nla(7, &u32s(&[vf, u32::MAX]))); // RSS query, ignored
        v.extend(nla(IFLA_VF_TRUST, &u32s(&[vf, trust])));
        v.extend(vlan_list(vf, vlan, qos, proto));
        nla(IFLA_VF_INFO, &v)
    }

    #[test]
    fn several_vfs_with_802_1ad() {
        let mut list = full_vf(1, [2, 0, 0, 0, 0, 0x11], 100, 3, ETH_P_8021Q, 1, 0);
        list.extend(full_vf(
            0,
            [2, 0, 0, 0, 0, 0x10],
            200,
            0,
            ETH_P_8021AD,
            0,
            1,
        ));
        let vfs = parse_vfinfo_list(&list).unwrap();
        assert_eq!(vfs.len(), 2);
        assert_eq!(
            vfs[0],
            VfInfo {
                vf: 0,
                mac: MacAddr([2, 0, 0, 0, 0, 0x10]),
                vlan: 200,
                qos: 0,
                vlan_proto: VlanProto::Dot1Ad,
                spoof_check: Some(false),
                trust: Some(true),
                link_state: Some(VfLinkState::Disable),
                min_tx_rate: 10,
                max_tx_rate: 1000,
            }
        );
        assert_eq!(vfs[1].vf, 1);
        assert_eq!(
            (vfs[1].vlan, vfs[1].qos, vfs[1].vlan_proto),
            (100, 3, VlanProto::Dot1Q)
        );
        assert_eq!(vfs[1].spoof_check, Some(true));
        assert_eq!(vfs[1].trust, Some(false));
    }

    #[test]
    fn missing_optional_attributes() {
        // An old driver: MAC, VLAN and the legacy TX rate only; spoofchk
        // and trust left at -1 by the kernel.
        let mut v = mac_attr(4, [0; 6]);
        v.extend(nla(IFLA_VF_VLAN, &u32s(&[4, 0, 0])));
        v.extend(nla(IFLA_VF_TX_RATE, &u32s(&[4, 500])));
        v.extend(nla(IFLA_VF_SPOOFCHK, &u32s(&[4, u32::MAX])));
        let vfs = parse_vfinfo_list(&nla(IFLA_VF_INFO, &v)).unwrap();
        assert_eq!(
            vfs,
            vec![VfInfo {
                vf: 4,
                max_tx_rate: 500,
                ..VfInfo::default()
            }]
        );
        assert!(vfs[0].mac.is_zero());
        assert_eq!(vfs[0].spoof_check, None);
        assert_eq!(vfs[0].link_state, None);
        // An empty list is no VFs.
        assert!(parse_vfinfo_list(&[]).unwrap().is_empty());
    }

    #[test]
    fn truncated_and_garbage_input_are_errors() {
        let good = full_vf(0, [2, 0, 0, 0, 0, 1], 1, 1, ETH_P_8021Q, 1, 1);
        // Every truncation is either an error or (at an attribute boundary
        // of the outer list) a shorter list; never a panic.
        for len in 0..good.len() {
            let _ = parse_vfinfo_list(&good[..len]);
        }
        assert!(parse_vfinfo_list(&good[..good.len() - 4]).is_err());
        // Random-ish bytes
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let len = (x % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = parse_vfinfo_list(&bytes);
        }
        // A struct shorter than the kernel's
        let short = nla(IFLA_VF_INFO, &nla(IFLA_VF_MAC, &u32s(&[0, 1])));
        let e = parse_vfinfo_list(&short).unwrap_err();
        assert!(e.to_string().contains("IFLA_VF_MAC is 8 bytes"), "{e}");
        // Not an IFLA_VF_INFO
        assert!(parse_vfinfo_list(&nla(7, &mac_attr(0, [0; 6]))).is_err());
        // An entry mixing two VFs
        let mut mixed = mac_attr(0, [0; 6]);
        mixed.extend(nla(IFLA_VF_TRUST, &u32s(&[1, 1])));
        assert!(parse_vfinfo_list(&nla(IFLA_VF_INFO, &mixed)).is_err());
        // No VF number at all
        assert!(parse_vfinfo_list(&nla(IFLA_VF_INFO, &[])).is_err());
        // Out-of-range VLAN, unknown protocol
        let bad_vlan = nla(IFLA_VF_INFO, &nla(IFLA_VF_VLAN, &u32s(&[0, 5000, 0])));
        assert!(parse_vfinfo_list(&bad_vlan).is_err());
        let bad_proto = nla(IFLA_VF_INFO, &vlan_list(0, 1, 0, 0x1234));
        assert!(parse_vfinfo_list(&bad_proto).is_err());
    }

    #[test]
    fn names_parse() {
        assert_eq!("802.1AD".parse::<VlanProto>().unwrap(), VlanProto::Dot1Ad);
        assert_eq!("802.1q".parse::<VlanProto>().unwrap(), VlanProto::Dot1Q);
        assert!("qinq".parse::<VlanProto>().is_err());
        assert_eq!(
            "Enable".parse::<VfLinkState>().unwrap(),
            VfLinkState::Enable
        );
        assert!("up".parse::<VfLinkState>().is_err());
        assert_eq!(VfLinkState::Disable.to_string(), "disable");
        assert_eq!(VlanProto::Dot1Ad.to_string(), "802.1ad");
    }
}
