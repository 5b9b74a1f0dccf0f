//! Link operations: request builders (plain values) and the
//! [`NetlinkSocket`] methods that send them.
//!
//! Each operation is one primitive request; callers sequence them (a
//! rename needs the link down, a move loses the link's addresses...).

use std::os::fd::AsRawFd;

use netlink_packet_core::DefaultNla;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage, Prop,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::error::{NetlinkError, RawError, Result};
use super::link::{parse_link, LinkInfo, MacAddr};
use super::netns::Netns;
use super::socket::{NetlinkSocket, Request};

/// `RTM_NEWLINK`: the only message type link requests are answered with.
pub(crate) const RTM_NEWLINK: u16 = 16;

/// Longest interface name (`IFNAMSIZ - 1`).
const IFNAME_MAX: usize = 15;
/// Longest alternative name (`ALTIFNAMSIZ - 1`).
pub(crate) const ALTNAME_MAX: usize = 127;

pub(crate) fn link_message(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = attributes;
    msg
}

fn set_link(index: u32, attributes: Vec<LinkAttribute>) -> Request {
    Request::new(RouteNetlinkMessage::SetLink(link_message(
        index, attributes,
    )))
}

/// `RTM_GETLINK` for one link by index, with optional extra info
/// (`RTEXT_FILTER_*`).
pub(crate) fn get_link_request(index: u32, ext_mask: &[LinkExtentMask]) -> Request {
    let attrs = if ext_mask.is_empty() {
        vec![]
    } else {
        vec![LinkAttribute::ExtMask(ext_mask.to_vec())]
    };
    Request::get(RouteNetlinkMessage::GetLink(link_message(index, attrs)))
}

/// `IFLA_ALT_IFNAME`, which netlink-packet-route only knows inside
/// `IFLA_PROP_LIST`.
const IFLA_ALT_IFNAME: u16 = 53;

/// `RTM_GETLINK` by name. The kernel looks names up in one table holding
/// names and altnames, but `IFLA_IFNAME` is limited to 15 bytes: longer
/// (alt)names go in `IFLA_ALT_IFNAME`.
pub(crate) fn get_link_by_name_request(name: &str) -> Request {
    get_link_by_name_with(name, &[])
}

/// GETLINK by name, asking for the extensions in `ext_mask` (VF info, ...).
pub(crate) fn get_link_by_name_with(name: &str, ext_mask: &[LinkExtentMask]) -> Request {
    let attr = if name.len() <= IFNAME_MAX {
        LinkAttribute::IfName(name.to_string())
    } else {
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        LinkAttribute::Other(DefaultNla::new(IFLA_ALT_IFNAME, value))
    };
    let mut attrs = vec![attr];
    if !ext_mask.is_empty() {
        attrs.push(LinkAttribute::ExtMask(ext_mask.to_vec()));
    }
    Request::get(RouteNetlinkMessage::GetLink(link_message(0, attrs)))
}

/// Every link of the namespace, without their counters: nothing here reads them, and on a node
/// with a thousand VF netdevs the kernel's time filling and our time parsing a dump is mostly
/// theirs (`RTEXT_FILTER_SKIP_STATS`, Linux 4.20; older kernels ignore the bit).
pub(crate) fn dump_links_request() -> Request {
    Request::dump(RouteNetlinkMessage::GetLink(link_message(
        0,
        vec![LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])],
    )))
}

/// Change only the flags in `mask` to the values in `flags`.
pub(crate) fn set_flags_request(index: u32, flags: LinkFlags, mask: LinkFlags) -> Request {
    let mut msg = link_message(index, vec![]);
    msg.header.flags = flags;
    msg.header.change_mask = mask;
    Request::new(RouteNetlinkMessage::SetLink(msg))
}

pub(crate) fn set_mtu_request(index: u32, mtu: u32) -> Request {
    set_link(index, vec![LinkAttribute::Mtu(mtu)])
}

pub(crate) fn set_mac_request(index: u32, mac: MacAddr) -> Request {
    set_link(index, vec![LinkAttribute::Address(mac.0.to_vec())])
}

pub(crate) fn rename_request(index: u32, name: &str) -> Request {
    set_link(index, vec![LinkAttribute::IfName(name.to_string())])
}

static MOVE_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long this process has spent in [`NetlinkSocket::move_to_netns`] (the kernel's move of a
/// netdev between namespaces), so a caller can tell its own time from the kernel's.
pub fn time_in_netns_moves() -> std::time::Duration {
    std::time::Duration::from_nanos(MOVE_NANOS.load(std::sync::atomic::Ordering::Relaxed))
}

pub(crate) fn move_to_netns_request(index: u32, netns: &Netns, name: Option<&str>) -> Request {
    let mut attrs = vec![LinkAttribute::NetNsFd(netns.as_raw_fd())];
    // With a name, the kernel names the link in the target namespace as part of the move (or
    // takes it under this name at once when its own name is taken there).
    attrs.extend(name.map(|n| LinkAttribute::IfName(n.to_string())));
    set_link(index, attrs)
}

pub(crate) fn set_master_request(index: u32, master: Option<u32>) -> Request {
    // IFLA_MASTER 0 releases the link from its master.
    set_link(index, vec![LinkAttribute::Controller(master.unwrap_or(0))])
}

pub(crate) fn altname_request(index: u32, altname: &str, add: bool) -> Request {
    let msg = link_message(
        index,
        vec![LinkAttribute::PropList(vec![Prop::AltIfName(
            altname.to_string(),
        )])],
    );
    Request::new(if add {
        RouteNetlinkMessage::NewLinkProp(msg)
    } else {
        RouteNetlinkMessage::DelLinkProp(msg)
    })
}

pub(crate) fn create_veth_request(
    name: &str,
    peer_name: &str,
    peer_netns: Option<&Netns>,
) -> Request {
    let mut peer_attrs = vec![LinkAttribute::IfName(peer_name.to_string())];
    if let Some(ns) = peer_netns {
        peer_attrs.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    }
    let peer = link_message(0, peer_attrs);
    Request::create(RouteNetlinkMessage::NewLink(link_message(
        0,
        vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::Veth),
                NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ],
    )))
}

pub(crate) fn create_bridge_request(name: &str) -> Request {
    Request::create(RouteNetlinkMessage::NewLink(link_message(
        0,
        vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Bridge)]),
        ],
    )))
}

pub(crate) fn delete_link_request(index: u32) -> Request {
    Request::new(RouteNetlinkMessage::DelLink(link_message(index, vec![])))
}

/// Refuse names the kernel would refuse with a confusing errno (a too
/// long `IFLA_IFNAME` fails policy validation with ERANGE).
pub(crate) fn check_name(name: &str, max: usize, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(NetlinkError::InvalidArgument(format!(
            "{what} {name:?}: must be 1-{max} bytes without '/', ':' or whitespace"
        )))
    }
}

/// An interface name to give a link: [`check_name`], and no '%' (the kernel reads a name with
/// '%' as a pattern and picks a name of its own from it).
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    check_name(name, IFNAME_MAX, "interface name")?;
    if name.contains('%') {
        return Err(NetlinkError::InvalidArgument(format!(
            "interface name {name:?}: '%' would make the kernel pick the name"
        )));
    }
    Ok(())
}

/// Parse the `RTM_NEWLINK` replies of a link request.
pub(crate) fn link_reply(kind: u16, payload: &[u8]) -> Result<Option<LinkInfo>, RawError> {
    if kind != RTM_NEWLINK {
        return Ok(None);
    }
    parse_link(payload).map(|parsed| Some(parsed.info))
}

impl NetlinkSocket {
    /// The link named `name` (or carrying `name` as an altname).
    /// Fails with `ENODEV` when there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<LinkInfo> {
        check_name(name, ALTNAME_MAX, "interface name")?;
        self.get_one(&get_link_by_name_request(name), link_reply)
            .map_err(|e| e.context("get link", name))
    }

    /// The link with ifindex `index`. Fails with `ENODEV` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<LinkInfo> {
        self.get_one(&get_link_request(index, &[]), link_reply)
            .map_err(|e| e.context("get link", format!("ifindex {index}")))
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        self.dump(&dump_links_request(), link_reply)
            .map_err(|e| e.context("dump links", "this netns"))
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let req = set_flags_request(index, LinkFlags::Up, LinkFlags::Up);
        self.link_op(index, "set up".into(), &req)
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        let req = set_flags_request(index, LinkFlags::empty(), LinkFlags::Up);
        self.link_op(index, "set down".into(), &req)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.link_op(
            index,
            format!("set mtu {mtu}"),
            &set_mtu_request(index, mtu),
        )
    }

    pub fn set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        self.link_op(
            index,
            format!("set mac {mac}"),
            &set_mac_request(index, mac),
        )
    }

    /// Rename a link; `EEXIST` when the name is another link's name or
    /// altname. Bring the link down first: older kernels refuse to rename a
    /// running link (`EBUSY`; 6.18 allows it for veth), and udev or other
    /// watchers may already hold the old name.
    pub fn rename(&mut self, index: u32, new_name: &str) -> Result<()> {
        check_ifname(new_name)?;
        self.link_op(
            index,
            format!("rename to {new_name}"),
            &rename_request(index, new_name),
        )
    }

    /// Turn the user's promiscuous-mode request on or off (`IFF_PROMISC`;
    /// the kernel keeps its own count for bridges and the like).
    pub fn set_promiscuity(&mut self, index: u32, on: bool) -> Result<()> {
        let flags = if on {
            LinkFlags::Promisc
        } else {
            LinkFlags::empty()
        };
        let req = set_flags_request(index, flags, LinkFlags::Promisc);
        let op = format!("set promisc {}", if on { "on" } else { "off" });
        self.link_op(index, op, &req)
    }

    /// Move a link into `netns` (`IFLA_NET_NS_FD`). Its index may change
    /// there when taken; look it up again through a socket in `netns`.
    /// Moves the link into `netns`. The time the kernel takes (most of a CNI ADD or DEL) adds
    /// up in [`time_in_netns_moves`].
    pub fn move_to_netns(&mut self, index: u32, netns: &Netns) -> Result<()> {
        self.move_link(index, netns, None)
    }

    /// Moves the link into `netns` and names it `name` there, in one request: one rename fewer
    /// than a rename before or after the move, and no moment in which the link carries a name
    /// it should not. On an error the link may have moved but kept its name (the kernel renames
    /// after the move), which the caller must look for.
    pub fn move_to_netns_as(&mut self, index: u32, netns: &Netns, name: &str) -> Result<()> {
        check_ifname(name)?;
        self.move_link(index, netns, Some(name))
    }

    fn move_link(&mut self, index: u32, netns: &Netns, name: Option<&str>) -> Result<()> {
        let start = std::time::Instant::now();
        let what = match name {
            Some(n) => format!("move to netns {netns} as {n}"),
            None => format!("move to netns {netns}"),
        };
        let r = self.link_op(index, what, &move_to_netns_request(index, netns, name));
        let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        MOVE_NANOS.fetch_add(took, std::sync::atomic::Ordering::Relaxed);
        r
    }

    pub fn add_altname(&mut self, index: u32, altname: &str) -> Result<()> {
        check_name(altname, ALTNAME_MAX, "altname")?;
        let req = altname_request(index, altname, true);
        self.link_op(index, format!("add altname {altname}"), &req)
    }

    pub fn del_altname(&mut self, index: u32, altname: &str) -> Result<()> {
        check_name(altname, ALTNAME_MAX, "altname")?;
        let req = altname_request(index, altname, false);
        self.link_op(index, format!("delete altname {altname}"), &req)
    }

    /// Create a veth pair, the peer optionally straight into another
    /// namespace. Returns the ifindex of `name` (the end in this namespace).
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: Option<&Netns>,
    ) -> Result<u32> {
        check_name(name, IFNAME_MAX, "interface name")?;
        check_name(peer_name, IFNAME_MAX, "interface name")?;
        let mut op = format!("create veth (peer {peer_name}");
        if let Some(ns) = peer_netns {
            op.push_str(&format!(" in {ns}"));
        }
        op.push(')');
        self.ack(&create_veth_request(name, peer_name, peer_netns))
            .map_err(|e| e.context(op, name))?;
        Ok(self.link_by_name(name)?.index)
    }

    /// Create a bridge; returns its ifindex.
    pub fn create_bridge(&mut self, name: &str) -> Result<u32> {
        check_name(name, IFNAME_MAX, "interface name")?;
        self.ack(&create_bridge_request(name))
            .map_err(|e| e.context("create bridge", name))?;
        Ok(self.link_by_name(name)?.index)
    }

    /// Enslave a link to a bridge/bond (`Some(master)`), or release it.
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> Result<()> {
        let op = match master {
            Some(m) => format!("set master {}", self.link_label(m)),
            None => "release from master".to_string(),
        };
        self.link_op(index, op, &set_master_request(index, master))
    }

    /// Delete a link (for a veth, both ends go).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.link_op(index, "delete link".into(), &delete_link_request(index))
    }

    /// Send a request about link `index`; on failure name the link.
    pub(crate) fn link_op(&mut self, index: u32, op: String, req: &Request) -> Result<()> {
        self.ack(req).map_err(|e| {
            let label = self.link_label(index);
            e.context(op, label)
        })
    }

    /// The link's name for error messages, or `ifindex N` when it cannot be
    /// looked up (only called on error paths: costs one request).
    pub(crate) fn link_label(&mut self, index: u32) -> String {
        match self.get_one(&get_link_request(index, &[]), link_reply) {
            Ok(link) => link.name,
            Err(_) => format!("ifindex {index}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkBuffer;

    /// The RTM payload (ifinfomsg + attributes) of a request.
    fn payload(req: &Request) -> (u16, Vec<u8>) {
        let bytes = req.to_bytes(1);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        (buf.message_type(), buf.payload().to_vec())
    }

    fn attrs(p: &[u8]) -> Vec<(u16, Vec<u8>)> {
        super::super::attrs::nlas(&p[16..], "test")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect()
    }

    #[test]
    fn set_mtu_message() {
        let (kind, p) = payload(&set_mtu_request(7, 9000));
        assert_eq!(kind, 19); // RTM_SETLINK
        assert_eq!(&p[4..8], &7u32.to_ne_bytes());
        assert_eq!(attrs(&p), vec![(4, 9000u32.to_ne_bytes().to_vec())]);
        // header fields other than the index are zero (strict checking)
        assert_eq!(&p[0..4], &[0, 0, 0, 0]);
        assert_eq!(&p[8..16], &[0; 8]);
    }

    #[test]
    fn flag_messages_set_the_change_mask() {
        let (_, p) = payload(&set_flags_request(3, LinkFlags::empty(), LinkFlags::Up));
        assert_eq!(&p[8..12], &0u32.to_ne_bytes());
        assert_eq!(&p[12..16], &1u32.to_ne_bytes());
        let (_, p) = payload(&set_flags_request(
            3,
            LinkFlags::Promisc,
            LinkFlags::Promisc,
        ));
        assert_eq!(&p[8..12], &0x100u32.to_ne_bytes());
        assert_eq!(&p[12..16], &0x100u32.to_ne_bytes());
    }

    #[test]
    fn get_by_name_and_rename_messages() {
        let (kind, p) = payload(&get_link_by_name_request("eth0"));
        assert_eq!(kind, 18); // RTM_GETLINK
        assert_eq!(attrs(&p), vec![(3, b"eth0\0".to_vec())]);
        let (_, p) = payload(&get_link_by_name_request("enp0s20f0u1u2v12"));
        assert_eq!(attrs(&p), vec![(53, b"enp0s20f0u1u2v12\0".to_vec())]);
        let (_, p) = payload(&rename_request(5, "net1"));
        assert_eq!(attrs(&p), vec![(3, b"net1\0".to_vec())]);
    }

    #[test]
    fn altname_messages() {
        let (kind, p) = payload(&altname_request(5, "a-very-long-alternative-name", true));
        assert_eq!(kind, 108); // RTM_NEWLINKPROP
        let a = attrs(&p);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 52); // IFLA_PROP_LIST
        let inner = super::super::attrs::nlas(&a[0].1, "test").unwrap();
        assert_eq!(inner, vec![(53, &b"a-very-long-alternative-name\0"[..])]);
        let (kind, _) = payload(&altname_request(5, "x", false));
        assert_eq!(kind, 109); // RTM_DELLINKPROP
    }

    #[test]
    fn veth_message_nests_the_peer() {
        let req = create_veth_request("a0", "b0", None);
        assert_eq!(
            req.flags,
            netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL
        );
        let (kind, p) = payload(&req);
        assert_eq!(kind, 16); // RTM_NEWLINK
        let a = attrs(&p);
        assert_eq!(a[0], (3, b"a0\0".to_vec()));
        assert_eq!(a[1].0, 18); // IFLA_LINKINFO
        let info = super::super::attrs::nlas(&a[1].1, "test").unwrap();
        assert_eq!(info[0], (1, &b"veth\0"[..]));
        let data = super::super::attrs::nlas(info[1].1, "test").unwrap();
        assert_eq!(data[0].0, 1); // VETH_INFO_PEER: ifinfomsg + attributes
        let peer_attrs = super::super::attrs::nlas(&data[0].1[16..], "test").unwrap();
        assert_eq!(peer_attrs, vec![(3, &b"b0\0"[..])]);
    }

    #[test]
    fn ext_mask_for_vf_info() {
        let req = get_link_request(4, &[LinkExtentMask::Vf, LinkExtentMask::SkipStats]);
        let (_, p) = payload(&req);
        assert_eq!(attrs(&p), vec![(29, (1u32 | 8).to_ne_bytes().to_vec())]);
    }

    #[test]
    fn master_none_sends_zero() {
        let (_, p) = payload(&set_master_request(4, None));
        assert_eq!(attrs(&p), vec![(10, 0u32.to_ne_bytes().to_vec())]);
    }

    #[test]
    fn name_checks() {
        assert!(check_name("eth0", IFNAME_MAX, "n").is_ok());
        assert!(check_name("0123456789abcde", IFNAME_MAX, "n").is_ok());
        for bad in ["", "0123456789abcdef", "a/b", "a b", "a:b", ".", ".."] {
            assert!(check_name(bad, IFNAME_MAX, "n").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dump_request_skips_the_counters() {
        let req = dump_links_request();
        assert!(req.is_dump());
        let RouteNetlinkMessage::GetLink(msg) = &req.message else {
            panic!("not a GetLink");
        };
        assert_eq!(
            msg.attributes,
            [LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])]
        );
    }
}
