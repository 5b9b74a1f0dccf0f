//! Links as plain values ([`LinkInfo`], [`MacAddr`], [`OperState`]) and the
//! parser turning an `RTM_NEWLINK` payload into them.
//!
//! The parser reads only the attributes it needs, one by one, so a new or
//! odd attribute from a newer kernel cannot make a whole link unreadable.

use std::fmt;
use std::str::FromStr;

use super::attrs::{nlas, string, u32_at, u32_value, u8_value};
use super::error::{NetlinkError, RawError};

// Attribute numbers from <linux/if_link.h>.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NUM_VF: u16 = 21;
pub(crate) const IFLA_VFINFO_LIST: u16 = 22;
const IFLA_PROMISCUITY: u16 = 30;
const IFLA_CARRIER: u16 = 33;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_PROP_LIST: u16 = 52;
const IFLA_ALT_IFNAME: u16 = 53;
const IFLA_PERM_ADDRESS: u16 = 54;
const IFLA_PARENT_DEV_NAME: u16 = 56;
const IFLA_PARENT_DEV_BUS_NAME: u16 = 57;
const IFLA_INFO_KIND: u16 = 1;

const IFF_UP: u32 = 1 << 0;
const IFF_RUNNING: u32 = 1 << 6;
const IFF_PROMISC: u32 = 1 << 8;

/// `sizeof(struct ifinfomsg)`.
pub(crate) const IFINFOMSG_LEN: usize = 16;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `00:00:00:00:00:00`, which PF drivers report for a VF without an
    /// administrative MAC.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The first six bytes of `bytes`, if it has exactly six or is a
    /// zero-padded longer field (`IFLA_VF_MAC` is 32 bytes).
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.get(..6)?.try_into().ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetlinkError;

    /// `aa:bb:cc:dd:ee:ff` (or with `-`), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetlinkError::InvalidArgument(format!("invalid MAC address {s:?}"));
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OperState {
    #[default]
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
    Other(u8),
}

impl From<u8> for OperState {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::NotPresent,
            2 => Self::Down,
            3 => Self::LowerLayerDown,
            4 => Self::Testing,
            5 => Self::Dormant,
            6 => Self::Up,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for OperState {
    /// As `ip link` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("UNKNOWN"),
            Self::NotPresent => f.write_str("NOTPRESENT"),
            Self::Down => f.write_str("DOWN"),
            Self::LowerLayerDown => f.write_str("LOWERLAYERDOWN"),
            Self::Testing => f.write_str("TESTING"),
            Self::Dormant => f.write_str("DORMANT"),
            Self::Up => f.write_str("UP"),
            Self::Other(v) => write!(f, "OPERSTATE({v})"),
        }
    }
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Current MAC (`None` for links without a 6-byte address).
    pub mac: Option<MacAddr>,
    /// Permanent (burned-in) MAC, when the driver reports one.
    pub perm_mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFF_RUNNING`: up and with carrier.
    pub running: bool,
    /// `IFF_PROMISC` as set by the user (see also `promiscuity`).
    pub promisc: bool,
    /// All `IFF_*` flags.
    pub flags: u32,
    pub operstate: OperState,
    pub carrier: Option<bool>,
    /// Promiscuity counter: user requests plus in-kernel users (bridges...).
    pub promiscuity: u32,
    /// Alternative names (kernel 5.5+; udev adds them for long names).
    pub altnames: Vec<String>,
    /// `IFLA_INFO_KIND`: "veth", "bridge", ...; `None` for physical NICs.
    pub kind: Option<String>,
    /// ifindex of the bridge/bond this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: the peer or lower link's ifindex (in `link_netnsid`'s
    /// namespace when that is set).
    pub link: Option<u32>,
    pub link_netnsid: Option<i32>,
    /// `IFLA_NUM_VF`, only reported when VF info was asked for.
    pub num_vfs: Option<u32>,
    /// `IFLA_PARENT_DEV_NAME`: the bus device, e.g. a VF's PCI address
    /// `0000:01:10.0` (readable even after the netdev left the root netns,
    /// where sysfs no longer shows it).
    pub parent_dev: Option<String>,
    /// `IFLA_PARENT_DEV_BUS_NAME`, e.g. `pci`.
    pub parent_bus: Option<String>,
}

/// A parsed `RTM_NEWLINK`: the link and, when present, the raw value of its
/// `IFLA_VFINFO_LIST` (decoded by [`super::vf::parse_vfinfo_list`]).
pub(crate) struct ParsedLink<'a> {
    pub(crate) info: LinkInfo,
    pub(crate) vfinfo_list: Option<&'a [u8]>,
}

/// Decode an `RTM_NEWLINK` payload (`struct ifinfomsg` + attributes).
pub(crate) fn parse_link(payload: &[u8]) -> Result<ParsedLink<'_>, RawError> {
    const WHAT: &str = "link message";
    if payload.len() < IFINFOMSG_LEN {
        return Err(RawError::decode(
            WHAT,
            format!("{} bytes, shorter than ifinfomsg", payload.len()),
        ));
    }
    let index = u32_at(payload, 4).unwrap_or_default();
    let flags = u32_at(payload, 8).unwrap_or_default();
    let mut info = LinkInfo {
        index,
        flags,
        up: flags & IFF_UP != 0,
        running: flags & IFF_RUNNING != 0,
        promisc: flags & IFF_PROMISC != 0,
        ..LinkInfo::default()
    };
    let mut vfinfo_list = None;
    for (kind, value) in nlas(&payload[IFINFOMSG_LEN..], WHAT)? {
        match kind {
            IFLA_IFNAME => info.name = string(value),
            IFLA_ADDRESS if value.len() == 6 => info.mac = MacAddr::from_slice(value),
            IFLA_PERM_ADDRESS if value.len() == 6 => {
                info.perm_mac = MacAddr::from_slice(value).filter(|m| !m.is_zero())
            }
            IFLA_MTU => info.mtu = u32_value(value).unwrap_or_default(),
            IFLA_LINK => info.link = u32_value(value),
            IFLA_MASTER => info.master = u32_value(value).filter(|&m| m != 0),
            IFLA_OPERSTATE => {
                info.operstate = u8_value(value).map(OperState::from).unwrap_or_default()
            }
            IFLA_CARRIER => info.carrier = u8_value(value).map(|c| c != 0),
            IFLA_PROMISCUITY => info.promiscuity = u32_value(value).unwrap_or_default(),
            IFLA_LINK_NETNSID => info.link_netnsid = u32_value(value).map(|v| v as i32),
            IFLA_NUM_VF => info.num_vfs = u32_value(value),
            IFLA_VFINFO_LIST => vfinfo_list = Some(value),
            IFLA_PARENT_DEV_NAME => info.parent_dev = Some(string(value)),
            IFLA_PARENT_DEV_BUS_NAME => info.parent_bus = Some(string(value)),
            IFLA_PROP_LIST => {
                for (prop, name) in nlas(value, "IFLA_PROP_LIST")? {
                    if prop == IFLA_ALT_IFNAME {
                        info.altnames.push(string(name));
                    }
                }
            }
            IFLA_LINKINFO => {
                for (attr, v) in nlas(value, "IFLA_LINKINFO")? {
                    if attr == IFLA_INFO_KIND {
                        info.kind = Some(string(v));
                    }
                }
            }
            _ => {}
        }
    }
    if info.name.is_empty() {
        return Err(RawError::decode(
            WHAT,
            format!("link {index} has no IFLA_IFNAME"),
        ));
    }
    Ok(ParsedLink { info, vfinfo_list })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The payload (the rtnetlink message after the netlink header) a request sends.
    pub(crate) fn payload(req: &crate::netlink::socket::Request) -> Vec<u8> {
        let bytes = req.to_bytes(1);
        netlink_packet_core::NetlinkBuffer::new_checked(&bytes[..])
            .unwrap()
            .payload()
            .to_vec()
    }

    /// One attribute, padded.
    pub(crate) fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    pub(crate) fn ifinfomsg(index: u32, flags: u32) -> Vec<u8> {
        let mut out = vec![0u8, 0, 1, 0]; // AF_UNSPEC, pad, ARPHRD_ETHER
        out.extend_from_slice(&index.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out
    }

    #[test]
    fn mac_round_trip() {
        let mac: MacAddr = "02:AB:cd:00:11:ff".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:11:ff");
        assert_eq!("02-ab-cd-00-11-ff".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "2:ab:cd:00:11:ff",
            "zz:ab:cd:00:11:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::default().is_zero());
    }

    #[test]
    fn parses_a_veth_link() {
        let mut p = ifinfomsg(7, IFF_UP | IFF_RUNNING | IFF_PROMISC);
        p.extend(nla(IFLA_IFNAME, b"veth0\0"));
        p.extend(nla(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]));
        p.extend(nla(IFLA_MTU, &1500u32.to_ne_bytes()));
        p.extend(nla(IFLA_OPERSTATE, &[6]));
        p.extend(nla(IFLA_CARRIER, &[1]));
        p.extend(nla(IFLA_PROMISCUITY, &1u32.to_ne_bytes()));
        p.extend(nla(IFLA_MASTER, &3u32.to_ne_bytes()));
        p.extend(nla(IFLA_LINK, &8u32.to_ne_bytes()));
        let mut props = nla(IFLA_ALT_IFNAME, b"alt-one\0");
        props.extend(nla(IFLA_ALT_IFNAME, b"alt-two\0"));
        p.extend(nla(IFLA_PROP_LIST | 0x8000, &props));
        p.extend(nla(IFLA_LINKINFO, &nla(IFLA_INFO_KIND, b"veth\0")));
        p.extend(nla(IFLA_PARENT_DEV_NAME, b"0000:01:10.0\0"));
        p.extend(nla(999, b"future attribute"));
        let parsed = parse_link(&p).unwrap();
        assert!(parsed.vfinfo_list.is_none());
        let l = parsed.info;
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "veth0");
        assert_eq!(l.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(l.mtu, 1500);
        assert!(l.up && l.running && l.promisc);
        assert_eq!(l.operstate, OperState::Up);
        assert_eq!(l.carrier, Some(true));
        assert_eq!(l.promiscuity, 1);
        assert_eq!(l.master, Some(3));
        assert_eq!(l.link, Some(8));
        assert_eq!(l.altnames, vec!["alt-one", "alt-two"]);
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert_eq!(l.parent_dev.as_deref(), Some("0000:01:10.0"));
        assert_eq!(l.num_vfs, None);
    }

    #[test]
    fn truncated_link_messages_are_errors() {
        assert!(parse_link(&[0; 8]).is_err());
        let mut p = ifinfomsg(1, 0);
        p.extend(nla(IFLA_IFNAME, b"lo\0"));
        p.truncate(p.len() - 2);
        // the last attribute's length now runs past the buffer
        assert!(parse_link(&p).is_err());
        // no name
        assert!(parse_link(&ifinfomsg(1, 0)).is_err());
        // odd-sized known attributes are ignored, not trusted
        let mut p = ifinfomsg(1, 0);
        p.extend(nla(IFLA_IFNAME, b"x\0"));
        p.extend(nla(IFLA_MTU, &[1]));
        p.extend(nla(IFLA_ADDRESS, &[1, 2, 3]));
        let l = parse_link(&p).unwrap().info;
        assert_eq!((l.mtu, l.mac), (0, None));
    }
}
