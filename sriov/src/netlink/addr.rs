//! IP addresses on links (for the CNI's IPAM results).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::attrs::{nlas, string};
use super::error::{NetlinkError, RawError, Result};
use super::socket::{NetlinkSocket, Request};

const RTM_NEWADDR: u16 = 20;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
/// `sizeof(struct ifaddrmsg)`.
const IFADDRMSG_LEN: usize = 8;

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressInfo {
    pub index: u32,
    /// The local address (`IFA_LOCAL`, else `IFA_ADDRESS`).
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `IFA_LABEL` (IPv4 only), e.g. `eth0` or `eth0:1`.
    pub label: Option<String>,
    /// `RT_SCOPE_*`: 0 universe, 253 link, 254 host.
    pub scope: u8,
}

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn check_prefix(ip: &IpAddr, prefix_len: u8) -> Result<()> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(NetlinkError::InvalidArgument(format!(
            "prefix length {prefix_len} for {ip} (at most {max})"
        )));
    }
    Ok(())
}

fn address_message(index: u32, ip: IpAddr, prefix_len: u8, with_broadcast: bool) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(&ip);
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    // As iproute2 and the Go netlink library do: IFA_LOCAL is the address,
    // IFA_ADDRESS the same (it would be the peer on point-to-point links).
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    if let (true, IpAddr::V4(v4)) = (with_broadcast, ip) {
        // The Go CNI plugins set the broadcast address for IPv4 prefixes
        // that have one; without it the kernel leaves it 0.0.0.0.
        if prefix_len < 31 {
            let host_mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let brd = Ipv4Addr::from(u32::from(v4) | host_mask);
            msg.attributes.push(AddressAttribute::Broadcast(brd));
        }
    }
    msg
}

pub(crate) fn add_address_request(index: u32, ip: IpAddr, prefix_len: u8) -> Request {
    Request::create(RouteNetlinkMessage::NewAddress(address_message(
        index, ip, prefix_len, true,
    )))
}

pub(crate) fn del_address_request(index: u32, ip: IpAddr, prefix_len: u8) -> Request {
    Request::new(RouteNetlinkMessage::DelAddress(address_message(
        index, ip, prefix_len, false,
    )))
}

/// A dump of all addresses; with strict checking the kernel filters by
/// `index` itself (we filter again, for kernels without it).
pub(crate) fn dump_addresses_request(index: u32) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    Request::dump(RouteNetlinkMessage::GetAddress(msg))
}

/// Decode an `RTM_NEWADDR` payload.
pub(crate) fn parse_address(payload: &[u8]) -> Result<AddressInfo, NetlinkError> {
    const WHAT: &str = "address message";
    let header = payload
        .get(..IFADDRMSG_LEN)
        .ok_or_else(|| NetlinkError::Decode {
            what: WHAT,
            reason: format!("{} bytes, shorter than ifaddrmsg", payload.len()),
        })?;
    let (family, prefix_len, scope) = (header[0], header[1], header[3]);
    let index = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
    let ip = |value: &[u8]| -> Option<IpAddr> {
        match (family as i32, value.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(value).ok()?)),
            (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(value).ok()?)),
            _ => None,
        }
    };
    let (mut local, mut address, mut label) = (None, None, None);
    for (kind, value) in nlas(&payload[IFADDRMSG_LEN..], WHAT)? {
        match kind {
            IFA_LOCAL => local = ip(value),
            IFA_ADDRESS => address = ip(value),
            IFA_LABEL => label = Some(string(value)),
            _ => {}
        }
    }
    let address = local.or(address).ok_or_else(|| NetlinkError::Decode {
        what: WHAT,
        reason: format!("address on ifindex {index} without IFA_LOCAL/IFA_ADDRESS"),
    })?;
    Ok(AddressInfo {
        index,
        address,
        prefix_len,
        label,
        scope,
    })
}

impl NetlinkSocket {
    /// Add `ip/prefix_len` to link `index` (IPv4 gets its broadcast
    /// address). Fails with `EEXIST` if it is already there.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix_len: u8) -> Result<()> {
        check_prefix(&ip, prefix_len)?;
        let req = add_address_request(index, ip, prefix_len);
        self.link_op(index, format!("add address {ip}/{prefix_len}"), &req)
    }

    /// Remove `ip/prefix_len` from link `index` (`EADDRNOTAVAIL` if absent).
    pub fn del_address(&mut self, index: u32, ip: IpAddr, prefix_len: u8) -> Result<()> {
        check_prefix(&ip, prefix_len)?;
        let req = del_address_request(index, ip, prefix_len);
        self.link_op(index, format!("delete address {ip}/{prefix_len}"), &req)
    }

    /// The addresses of link `index`, IPv4 and IPv6.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<AddressInfo>> {
        let found = self
            .dump(&dump_addresses_request(index), |kind, payload| {
                if kind != RTM_NEWADDR {
                    return Ok(None);
                }
                Ok(Some(parse_address(payload).map_err(RawError::from)?))
            })
            .map_err(|e| e.context("list addresses", format!("ifindex {index}")))?;
        Ok(found.into_iter().filter(|a| a.index == index).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::link::tests::payload;

    #[test]
    fn add_ipv4_sets_local_address_and_broadcast() {
        let p = payload(&add_address_request(5, "10.1.2.3".parse().unwrap(), 24));
        assert_eq!(&p[..4], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(&p[4..8], &5u32.to_ne_bytes());
        let attrs = nlas(&p[8..], "t").unwrap();
        assert_eq!(
            attrs,
            vec![
                (IFA_LOCAL, &[10, 1, 2, 3][..]),
                (IFA_ADDRESS, &[10, 1, 2, 3][..]),
                (4, &[10, 1, 2, 255][..])
            ]
        );
        // a /32 has no broadcast address
        let p = payload(&add_address_request(5, "10.1.2.3".parse().unwrap(), 32));
        assert_eq!(nlas(&p[8..], "t").unwrap().len(), 2);
    }

    #[test]
    fn add_ipv6() {
        let p = payload(&add_address_request(5, "fd00::1".parse().unwrap(), 64));
        assert_eq!(&p[..2], &[libc::AF_INET6 as u8, 64]);
        assert_eq!(nlas(&p[8..], "t").unwrap().len(), 2);
    }

    #[test]
    fn prefix_checks() {
        assert!(check_prefix(&"10.0.0.1".parse().unwrap(), 33).is_err());
        assert!(check_prefix(&"fd00::1".parse().unwrap(), 128).is_ok());
        assert!(check_prefix(&"fd00::1".parse().unwrap(), 129).is_err());
    }

    #[test]
    fn parse_reply() {
        let mut p = vec![libc::AF_INET as u8, 24, 0x80, 0];
        p.extend_from_slice(&5u32.to_ne_bytes());
        p.extend(crate::netlink::link::tests::nla(
            IFA_ADDRESS,
            &[10, 0, 0, 9],
        ));
        p.extend(crate::netlink::link::tests::nla(IFA_LOCAL, &[10, 0, 0, 1]));
        p.extend(crate::netlink::link::tests::nla(IFA_LABEL, b"eth0\0"));
        let a = parse_address(&p).unwrap();
        assert_eq!(a.address, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (a.index, a.prefix_len, a.label.as_deref()),
            (5, 24, Some("eth0"))
        );
        assert!(parse_address(&p[..6]).is_err());
        assert!(parse_address(&p[..8]).is_err()); // no address at all
    }
}
