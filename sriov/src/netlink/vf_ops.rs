//! Reading and setting VF knobs through the PF.
//!
//! Reads ask for ONE link (`RTM_GETLINK` by index with `RTEXT_FILTER_VF`),
//! never a dump: a dump with VF info walks every VF of every PF under RTNL,
//! which hurts at pod density. `RTEXT_FILTER_SKIP_STATS` also spares the
//! per-VF counters, which some drivers fetch from firmware one VF at a time.
//! The kernel has no per-VF filter: the reply holds all VFs of that PF.
//!
//! Each setter is its own `RTM_SETLINK`, so a refusal names its knob.

use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkVfInfo, VfInfo as NlVfInfo, VfInfoLinkState, VfInfoMac,
    VfInfoRate, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState as NlVfLinkState, VfVlan,
    VfVlanInfo, VlanProtocol,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::error::{NetlinkError, RawError, Result, VfSetting, VfSettingError};
use super::link::{parse_link, MacAddr};
use super::link_ops::{get_link_request, link_message, RTM_NEWLINK};
use super::socket::{NetlinkSocket, Request};
use super::vf::{parse_vfinfo_list, VfInfo, VfLinkState, VlanProto};

/// `RTM_GETLINK` for a PF with its VF list, without VF statistics.
pub(crate) fn pf_vf_info_request(pf_index: u32) -> Request {
    get_link_request(pf_index, &[LinkExtentMask::Vf, LinkExtentMask::SkipStats])
}

/// `RTM_SETLINK` on the PF with one `IFLA_VF_INFO` holding one setting.
fn set_vf(pf_index: u32, setting: NlVfInfo) -> Request {
    Request::new(RouteNetlinkMessage::SetLink(link_message(
        pf_index,
        vec![LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![setting])])],
    )))
}

pub(crate) fn set_vf_mac_request(pf_index: u32, vf: u32, mac: MacAddr) -> Request {
    set_vf(pf_index, NlVfInfo::Mac(VfInfoMac::new(vf, &mac.0)))
}

/// 802.1Q uses the plain `IFLA_VF_VLAN` every driver knows; only 802.1ad
/// needs `IFLA_VF_VLAN_LIST`, which carries the protocol.
pub(crate) fn set_vf_vlan_request(
    pf_index: u32,
    vf: u32,
    vlan: u16,
    qos: u8,
    proto: VlanProto,
) -> Request {
    let (vlan, qos) = (u32::from(vlan), u32::from(qos));
    set_vf(
        pf_index,
        match proto {
            VlanProto::Dot1Q => NlVfInfo::Vlan(VfInfoVlan::new(vf, vlan, qos)),
            VlanProto::Dot1Ad => NlVfInfo::VlanList(vec![VfVlan::Info(VfVlanInfo::new(
                vf,
                vlan,
                qos,
                VlanProtocol::Ieee8021Ad,
            ))]),
        },
    )
}

pub(crate) fn set_vf_spoofchk_request(pf_index: u32, vf: u32, on: bool) -> Request {
    set_vf(
        pf_index,
        NlVfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)),
    )
}

pub(crate) fn set_vf_trust_request(pf_index: u32, vf: u32, on: bool) -> Request {
    set_vf(pf_index, NlVfInfo::Trust(VfInfoTrust::new(vf, on)))
}

pub(crate) fn set_vf_rate_request(pf_index: u32, vf: u32, min: u32, max: u32) -> Request {
    set_vf(pf_index, NlVfInfo::Rate(VfInfoRate::new(vf, min, max)))
}

pub(crate) fn set_vf_link_state_request(pf_index: u32, vf: u32, state: VfLinkState) -> Request {
    let state = match state {
        VfLinkState::Auto => NlVfLinkState::Auto,
        VfLinkState::Enable => NlVfLinkState::Enable,
        VfLinkState::Disable => NlVfLinkState::Disable,
    };
    set_vf(
        pf_index,
        NlVfInfo::LinkState(VfInfoLinkState::new(vf, state)),
    )
}

/// Which knob a rate request is about: with both values non-zero the
/// kernel gives one errno for the pair.
fn rate_setting(min: u32, max: u32) -> VfSetting {
    match (min, max) {
        (0, 0) => VfSetting::TxRates,
        (_, 0) => VfSetting::MinTxRate,
        (0, _) => VfSetting::MaxTxRate,
        _ => VfSetting::TxRates,
    }
}

/// A GETLINK reply with its VF list.
fn pf_reply(kind: u16, payload: &[u8]) -> Result<Option<(super::LinkInfo, Vec<VfInfo>)>, RawError> {
    if kind != RTM_NEWLINK {
        return Ok(None);
    }
    let parsed = parse_link(payload)?;
    let vfs = match parsed.vfinfo_list {
        Some(list) => parse_vfinfo_list(list)?,
        None => Vec::new(),
    };
    Ok(Some((parsed.info, vfs)))
}

impl NetlinkSocket {
    /// Every VF of the PF with ifindex `pf_index`, sorted by VF number;
    /// empty for a link without VFs.
    pub fn pf_vfs_info(&mut self, pf_index: u32) -> Result<Vec<VfInfo>> {
        Ok(self.read_pf(pf_index)?.1)
    }

    /// VF `vf` of the PF with ifindex `pf_index`. Fails with
    /// [`NetlinkError::NoSuchVf`] when the PF has no such VF (or is no PF).
    pub fn pf_vf_info(&mut self, pf_index: u32, vf: u32) -> Result<VfInfo> {
        let (pf, num_vfs, vfs) = self
            .read_pf(pf_index)
            .map(|(l, v)| (l.name, l.num_vfs, v))?;
        vfs.into_iter()
            .find(|info| info.vf == vf)
            .ok_or(NetlinkError::NoSuchVf { pf, vf, num_vfs })
    }

    /// The PF named `name` and its VF `vf` as the PF reports it, in one request (`None` when
    /// the link reports no such VF: no PF, or a driver without VF info).
    pub fn pf_by_name_with_vf(
        &mut self,
        name: &str,
        vf: u32,
    ) -> Result<(super::LinkInfo, Option<VfInfo>)> {
        super::link_ops::check_name(name, super::link_ops::ALTNAME_MAX, "interface name")?;
        let req = super::link_ops::get_link_by_name_with(
            name,
            &[LinkExtentMask::Vf, LinkExtentMask::SkipStats],
        );
        let (link, vfs) = self
            .get_one(&req, pf_reply)
            .map_err(|e| e.context("get VF info", name))?;
        Ok((link, vfs.into_iter().find(|info| info.vf == vf)))
    }

    fn read_pf(&mut self, pf_index: u32) -> Result<(super::LinkInfo, Vec<VfInfo>)> {
        self.get_one(&pf_vf_info_request(pf_index), pf_reply)
            .map_err(|e| e.context("get VF info", format!("ifindex {pf_index}")))
    }

    /// The VF's administrative MAC (what the VF driver uses at its next
    /// probe; igb keeps the netdev's current MAC until a rebind).
    pub fn set_vf_mac(&mut self, pf_index: u32, vf: u32, mac: MacAddr) -> Result<()> {
        self.vf_op(
            pf_index,
            vf,
            VfSetting::Mac,
            &set_vf_mac_request(pf_index, vf, mac),
        )
    }

    /// Port VLAN (0 clears it) and priority. `vlan` must be 0-4095 and `qos`
    /// 0-7.
    pub fn set_vf_vlan(
        &mut self,
        pf_index: u32,
        vf: u32,
        vlan: u16,
        qos: u8,
        proto: VlanProto,
    ) -> Result<()> {
        if vlan > 4095 || qos > 7 {
            return Err(NetlinkError::InvalidArgument(format!(
                "VF {vf} vlan {vlan} qos {qos}: vlan must be 0-4095 and qos 0-7"
            )));
        }
        let req = set_vf_vlan_request(pf_index, vf, vlan, qos, proto);
        self.vf_op(pf_index, vf, VfSetting::Vlan, &req)
    }

    pub fn set_vf_spoofchk(&mut self, pf_index: u32, vf: u32, on: bool) -> Result<()> {
        let req = set_vf_spoofchk_request(pf_index, vf, on);
        self.vf_op(pf_index, vf, VfSetting::SpoofCheck, &req)
    }

    pub fn set_vf_trust(&mut self, pf_index: u32, vf: u32, on: bool) -> Result<()> {
        let req = set_vf_trust_request(pf_index, vf, on);
        self.vf_op(pf_index, vf, VfSetting::Trust, &req)
    }

    /// Minimum and maximum TX rate in Mb/s (0 = none), in one
    /// `IFLA_VF_RATE`. To tell which of the two a driver refuses, set them
    /// in separate calls (keeping the other at its current value).
    pub fn set_vf_rate(
        &mut self,
        pf_index: u32,
        vf: u32,
        min_tx_rate: u32,
        max_tx_rate: u32,
    ) -> Result<()> {
        if max_tx_rate != 0 && min_tx_rate > max_tx_rate {
            return Err(NetlinkError::InvalidArgument(format!(
                "VF {vf} min_tx_rate {min_tx_rate} is above max_tx_rate {max_tx_rate}"
            )));
        }
        let req = set_vf_rate_request(pf_index, vf, min_tx_rate, max_tx_rate);
        self.vf_op(pf_index, vf, rate_setting(min_tx_rate, max_tx_rate), &req)
    }

    pub fn set_vf_link_state(&mut self, pf_index: u32, vf: u32, state: VfLinkState) -> Result<()> {
        let req = set_vf_link_state_request(pf_index, vf, state);
        self.vf_op(pf_index, vf, VfSetting::LinkState, &req)
    }

    fn vf_op(&mut self, pf_index: u32, vf: u32, setting: VfSetting, req: &Request) -> Result<()> {
        match self.ack(req) {
            Ok(()) => Ok(()),
            Err(RawError::Kernel { errno, ext_ack }) => Err(NetlinkError::VfSetting {
                pf: self.link_label(pf_index),
                vf,
                error: VfSettingError {
                    setting,
                    errno,
                    ext_ack,
                },
            }),
            Err(RawError::Other(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::attrs::nlas;
    use netlink_packet_core::NetlinkBuffer;

    /// The single setting inside IFLA_VFINFO_LIST > IFLA_VF_INFO of a request.
    fn vf_setting(req: &Request) -> (u16, Vec<u8>) {
        let bytes = req.to_bytes(1);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.message_type(), 19); // RTM_SETLINK
        let payload = buf.payload();
        assert_eq!(&payload[4..8], &9u32.to_ne_bytes(), "addressed to the PF");
        let attrs = nlas(&payload[16..], "t").unwrap();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].0, 22); // IFLA_VFINFO_LIST
        let infos = nlas(attrs[0].1, "t").unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].0, 1); // IFLA_VF_INFO
        let settings = nlas(infos[0].1, "t").unwrap();
        assert_eq!(settings.len(), 1, "one knob per request");
        (settings[0].0, settings[0].1.to_vec())
    }

    fn u32s(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    #[test]
    fn mac_request() {
        let (kind, value) = vf_setting(&set_vf_mac_request(9, 3, MacAddr([2, 1, 2, 3, 4, 5])));
        assert_eq!(kind, 1);
        assert_eq!(value.len(), 36);
        assert_eq!(&value[..4], &3u32.to_ne_bytes());
        assert_eq!(&value[4..10], &[2, 1, 2, 3, 4, 5]);
        assert!(value[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn vlan_requests() {
        let (kind, value) = vf_setting(&set_vf_vlan_request(9, 2, 100, 5, VlanProto::Dot1Q));
        assert_eq!((kind, value), (2, u32s(&[2, 100, 5])));
        let (kind, value) = vf_setting(&set_vf_vlan_request(9, 2, 100, 5, VlanProto::Dot1Ad));
        assert_eq!(kind, 12); // IFLA_VF_VLAN_LIST
        let entries = nlas(&value, "t").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, 1); // IFLA_VF_VLAN_INFO
        let mut expected = u32s(&[2, 100, 5]);
        expected.extend_from_slice(&[0x88, 0xa8, 0, 0]);
        assert_eq!(entries[0].1, &expected[..]);
    }

    #[test]
    fn flag_and_rate_requests() {
        assert_eq!(
            vf_setting(&set_vf_spoofchk_request(9, 1, true)),
            (4, u32s(&[1, 1]))
        );
        assert_eq!(
            vf_setting(&set_vf_trust_request(9, 1, false)),
            (9, u32s(&[1, 0]))
        );
        assert_eq!(
            vf_setting(&set_vf_rate_request(9, 1, 10, 100)),
            (6, u32s(&[1, 10, 100]))
        );
        assert_eq!(
            vf_setting(&set_vf_link_state_request(9, 1, VfLinkState::Disable)),
            (5, u32s(&[1, 2]))
        );
    }

    #[test]
    fn rate_attribution() {
        assert_eq!(rate_setting(10, 0), VfSetting::MinTxRate);
        assert_eq!(rate_setting(0, 10), VfSetting::MaxTxRate);
        assert_eq!(rate_setting(5, 10), VfSetting::TxRates);
        assert_eq!(rate_setting(0, 0), VfSetting::TxRates);
    }

    #[test]
    fn vf_info_request_asks_for_one_link() {
        let req = pf_vf_info_request(9);
        assert!(!req.is_dump());
        let bytes = req.to_bytes(1);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.message_type(), 18); // RTM_GETLINK
        let payload = buf.payload();
        assert_eq!(&payload[4..8], &9u32.to_ne_bytes());
        let attrs = nlas(&payload[16..], "t").unwrap();
        // IFLA_EXT_MASK = RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS
        assert_eq!(attrs, vec![(29, &9u32.to_ne_bytes()[..])]);
    }
}
