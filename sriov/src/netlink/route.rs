//! Routes: add and delete (the CNI's IPAM results), list (the node's uplinks:
//! every interface carrying a default route).

use std::net::IpAddr;

use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::attrs::{align4, nlas, u32_value};
use super::error::{NetlinkError, RawError, Result};
use super::socket::{NetlinkSocket, Request};

const RTM_NEWROUTE: u16 = 24;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTA_NH_ID: u16 = 30;
/// `sizeof(struct rtnexthop)`: len (u16), flags, hops, ifindex (i32).
const RTNEXTHOP_LEN: usize = 8;
/// `sizeof(struct rtmsg)`.
const RTMSG_LEN: usize = 12;
/// `RT_TABLE_MAIN`.
pub const MAIN_TABLE: u32 = 254;

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteInfo {
    /// `true` for IPv6 (useful for default routes, which have no `dst`).
    pub ipv6: bool,
    /// Destination network; `None` for a default route.
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Routing table (254 = main, 255 = local).
    pub table: u32,
    /// `RTPROT_*` (2 kernel, 3 boot, 4 static...).
    pub protocol: u8,
    /// `RT_SCOPE_*` (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// `RTN_*` (1 unicast, 2 local, 3 broadcast...).
    pub route_type: u8,
    /// Metric.
    pub priority: Option<u32>,
    /// The output interfaces of a multipath route's next hops
    /// (`RTA_MULTIPATH`), which then has no `oif` of its own.
    pub multipath_oifs: Vec<u32>,
    /// `RTA_NH_ID`: the route goes through a nexthop object (kernel 5.3+),
    /// whose interface is not in the route.
    pub nexthop_id: Option<u32>,
}

impl RouteInfo {
    /// A default route (no destination prefix) of type unicast.
    pub fn is_default_unicast(&self) -> bool {
        self.route_type == 1 && self.dst.is_none_or(|(_, len)| len == 0)
    }

    /// Every output interface the route names: its own and its next hops'.
    pub fn oifs(&self) -> impl Iterator<Item = u32> + '_ {
        self.oif
            .into_iter()
            .chain(self.multipath_oifs.iter().copied())
    }
}

/// The output interfaces of `RTA_MULTIPATH`: a run of `struct rtnexthop`,
/// each followed by its own attributes (`rtnh_len` covers both).
fn multipath_oifs(mut value: &[u8]) -> Result<Vec<u32>, NetlinkError> {
    let mut out = Vec::new();
    while value.len() >= RTNEXTHOP_LEN {
        let len = usize::from(u16::from_ne_bytes([value[0], value[1]]));
        if len < RTNEXTHOP_LEN || len > value.len() {
            return Err(NetlinkError::Decode {
                what: "RTA_MULTIPATH",
                reason: format!("next hop of {len} bytes in {} left", value.len()),
            });
        }
        if let Some(index) = u32_value(&value[4..8]).filter(|&i| i != 0) {
            out.push(index);
        }
        value = value.get(align4(len)..).unwrap_or_default();
    }
    Ok(out)
}

/// The family of a route from its destination and gateway, which must agree.
fn route_family(dst: Option<(IpAddr, u8)>, gateway: Option<IpAddr>) -> Result<AddressFamily> {
    let v6 = match (dst, gateway) {
        (Some((d, _)), Some(g)) if d.is_ipv6() != g.is_ipv6() => {
            return Err(NetlinkError::InvalidArgument(format!(
                "route to {d} via {g} mixes IPv4 and IPv6"
            )))
        }
        (Some((d, _)), _) => d.is_ipv6(),
        (None, Some(g)) => g.is_ipv6(),
        (None, None) => {
            return Err(NetlinkError::InvalidArgument(
                "a route needs a destination or a gateway (a default route needs the gateway for its family)"
                    .into(),
            ))
        }
    };
    if let Some((d, len)) = dst {
        let max = if v6 { 128 } else { 32 };
        if len > max {
            return Err(NetlinkError::InvalidArgument(format!(
                "prefix length {len} for {d} (at most {max})"
            )));
        }
    }
    Ok(if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    })
}

fn route_message(
    dst: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    oif: u32,
    delete: bool,
) -> Result<RouteMessage> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = route_family(dst, gateway)?;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.kind = RouteType::Unicast;
    if delete {
        // Match whatever protocol and scope the route was added with.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
    } else {
        // As iproute2: "boot", and link scope for routes without a gateway.
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
    }
    if let Some((d, len)) = dst {
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(d.into()));
    }
    if let Some(g) = gateway {
        msg.attributes.push(RouteAttribute::Gateway(g.into()));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    Ok(msg)
}

pub(crate) fn add_route_request(
    dst: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    oif: u32,
) -> Result<Request> {
    Ok(Request::create(RouteNetlinkMessage::NewRoute(
        route_message(dst, gateway, oif, false)?,
    )))
}

pub(crate) fn del_route_request(
    dst: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    oif: u32,
) -> Result<Request> {
    Ok(Request::new(RouteNetlinkMessage::DelRoute(route_message(
        dst, gateway, oif, true,
    )?)))
}

pub(crate) fn dump_routes_request() -> Request {
    Request::dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))
}

/// Decode an `RTM_NEWROUTE` payload. Multipath routes come back without a
/// gateway; only their next hops' interfaces are decoded.
pub(crate) fn parse_route(payload: &[u8]) -> Result<RouteInfo, NetlinkError> {
    const WHAT: &str = "route message";
    let h = payload
        .get(..RTMSG_LEN)
        .ok_or_else(|| NetlinkError::Decode {
            what: WHAT,
            reason: format!("{} bytes, shorter than rtmsg", payload.len()),
        })?;
    let family = i32::from(h[0]);
    let ip = |value: &[u8]| -> Option<IpAddr> {
        match (family, value.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(value).ok()?)),
            (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(value).ok()?)),
            _ => None,
        }
    };
    let mut route = RouteInfo {
        ipv6: family == libc::AF_INET6,
        dst: None,
        gateway: None,
        oif: None,
        table: u32::from(h[4]),
        protocol: h[5],
        scope: h[6],
        route_type: h[7],
        priority: None,
        multipath_oifs: Vec::new(),
        nexthop_id: None,
    };
    let dst_len = h[1];
    for (kind, value) in nlas(&payload[RTMSG_LEN..], WHAT)? {
        match kind {
            RTA_DST => route.dst = ip(value).map(|d| (d, dst_len)),
            RTA_GATEWAY => route.gateway = ip(value),
            RTA_OIF => route.oif = u32_value(value),
            RTA_PRIORITY => route.priority = u32_value(value),
            RTA_MULTIPATH => route.multipath_oifs = multipath_oifs(value)?,
            RTA_NH_ID => route.nexthop_id = u32_value(value),
            // Tables above 255 only fit here.
            RTA_TABLE => route.table = u32_value(value).unwrap_or(route.table),
            _ => {}
        }
    }
    Ok(route)
}

impl NetlinkSocket {
    /// Add a route to the main table: `dst` `None` is the default route of
    /// the gateway's family. Fails with `EEXIST` when it exists already.
    pub fn add_route(
        &mut self,
        dst: Option<(IpAddr, u8)>,
        gateway: Option<IpAddr>,
        oif: u32,
    ) -> Result<()> {
        let req = add_route_request(dst, gateway, oif)?;
        self.link_op(oif, format!("add route {}", describe(dst, gateway)), &req)
    }

    /// Delete a route of the main table (`ESRCH` when there is none).
    pub fn del_route(
        &mut self,
        dst: Option<(IpAddr, u8)>,
        gateway: Option<IpAddr>,
        oif: u32,
    ) -> Result<()> {
        let req = del_route_request(dst, gateway, oif)?;
        self.link_op(
            oif,
            format!("delete route {}", describe(dst, gateway)),
            &req,
        )
    }

    /// Every route of every table, IPv4 and IPv6 (filter on `table`,
    /// e.g. [`MAIN_TABLE`]).
    pub fn routes(&mut self) -> Result<Vec<RouteInfo>> {
        self.dump(&dump_routes_request(), |kind, payload| {
            if kind != RTM_NEWROUTE {
                return Ok(None);
            }
            Ok(Some(parse_route(payload).map_err(RawError::from)?))
        })
        .map_err(|e| e.context("dump routes", "this netns"))
    }
}

fn describe(dst: Option<(IpAddr, u8)>, gateway: Option<IpAddr>) -> String {
    let mut s = match dst {
        Some((d, len)) => format!("{d}/{len}"),
        None => "default".to_string(),
    };
    if let Some(g) = gateway {
        s.push_str(&format!(" via {g}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::link::tests::nla;
    use crate::netlink::link::tests::payload;

    #[test]
    fn default_route_via_gateway() {
        let req = add_route_request(None, Some("10.0.0.1".parse().unwrap()), 4).unwrap();
        let p = payload(&req);
        // family, dst_len, src_len, tos, table, protocol, scope, type
        assert_eq!(&p[..8], &[libc::AF_INET as u8, 0, 0, 0, 254, 3, 0, 1]);
        let attrs = nlas(&p[RTMSG_LEN..], "t").unwrap();
        assert_eq!(
            attrs,
            vec![
                (RTA_GATEWAY, &[10, 0, 0, 1][..]),
                (RTA_OIF, &4u32.to_ne_bytes()[..])
            ]
        );
    }

    #[test]
    fn link_route_without_gateway() {
        let req = add_route_request(Some(("fd00:1::".parse().unwrap(), 64)), None, 4).unwrap();
        let p = payload(&req);
        assert_eq!(&p[..8], &[libc::AF_INET6 as u8, 64, 0, 0, 254, 3, 253, 1]);
        assert_eq!(nlas(&p[RTMSG_LEN..], "t").unwrap()[0].0, RTA_DST);
        let del = del_route_request(Some(("fd00:1::".parse().unwrap(), 64)), None, 4).unwrap();
        assert_eq!(&payload(&del)[4..8], &[254, 0, 255, 1]);
    }

    #[test]
    fn invalid_routes() {
        assert!(add_route_request(None, None, 1).is_err());
        assert!(add_route_request(
            Some(("10.0.0.0".parse().unwrap(), 8)),
            Some("fd00::1".parse().unwrap()),
            1
        )
        .is_err());
        assert!(add_route_request(Some(("10.0.0.0".parse().unwrap(), 33)), None, 1).is_err());
    }

    #[test]
    fn parse_reply() {
        let mut p = vec![libc::AF_INET as u8, 24, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0];
        p.extend(nla(RTA_TABLE, &254u32.to_ne_bytes()));
        p.extend(nla(RTA_DST, &[10, 1, 0, 0]));
        p.extend(nla(RTA_GATEWAY, &[10, 0, 0, 1]));
        p.extend(nla(RTA_OIF, &3u32.to_ne_bytes()));
        p.extend(nla(RTA_PRIORITY, &100u32.to_ne_bytes()));
        let r = parse_route(&p).unwrap();
        assert_eq!(r.dst, Some(("10.1.0.0".parse().unwrap(), 24)));
        assert_eq!(r.gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            (r.oif, r.table, r.protocol, r.priority, r.ipv6),
            (Some(3), 254, 4, Some(100), false)
        );
        assert!(parse_route(&p[..10]).is_err());
        assert!(parse_route(&p[..p.len() - 2]).is_err());
        assert!(!r.is_default_unicast());
    }

    #[test]
    fn multipath_default_route() {
        let hop = |ifindex: u32, attrs: &[u8]| {
            let mut h = ((RTNEXTHOP_LEN + attrs.len()) as u16)
                .to_ne_bytes()
                .to_vec();
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&ifindex.to_ne_bytes());
            h.extend_from_slice(attrs);
            h
        };
        let mut hops = hop(3, &nla(RTA_GATEWAY, &[10, 0, 0, 1]));
        hops.extend(hop(5, &[]));
        let mut p = vec![libc::AF_INET as u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        p.extend(nla(RTA_MULTIPATH, &hops));
        let r = parse_route(&p).unwrap();
        assert!(r.is_default_unicast());
        assert_eq!(r.oifs().collect::<Vec<_>>(), [3, 5]);
        // A next hop claiming more bytes than there are.
        let mut bad = vec![libc::AF_INET as u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        bad.extend(nla(RTA_MULTIPATH, &[40, 0, 0, 0, 3, 0, 0, 0]));
        assert!(parse_route(&bad).is_err());
        // Through a nexthop object: no interface in the route itself.
        let mut nh = vec![libc::AF_INET6 as u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        nh.extend(nla(RTA_NH_ID, &7u32.to_ne_bytes()));
        let r = parse_route(&nh).unwrap();
        assert_eq!((r.nexthop_id, r.oifs().count(), r.ipv6), (Some(7), 0, true));
    }
}
