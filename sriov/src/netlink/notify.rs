//! Notifications on the one [`NetlinkSocket`]: subscribe it to rtnetlink
//! multicast groups and read what the kernel announces, parsed by the same
//! tolerant link parser as every reply.
//!
//! - Notifications read while a request is being answered are queued by the
//!   socket and handed out here first, in order.
//! - `ENOBUFS` means the receive buffer overflowed and notifications were
//!   lost: the socket reports [`Notification::Overflow`] once, drops what it
//!   had queued (it may be older than what was lost), and the caller re-reads
//!   the state it follows (a dump). Notifications that arrive during that
//!   dump are queued and handed out after it, so applying them converges on
//!   the kernel's state.
//! - A message that does not parse is a [`Notification::Unparsed`] with the
//!   reason, for the caller to count and log: never dropped in silence.

use std::io;

use netlink_packet_core::{NetlinkBuffer, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP};

use super::error::{NetlinkError, RawError, Result};
use super::link::{parse_link, LinkInfo};
use super::link_ops::{dump_links_request, RTM_NEWLINK};
use super::socket::{is_overflow, is_truncated, NetlinkSocket};

const RTM_DELLINK: u16 = 17;

/// An rtnetlink multicast group (`RTNLGRP_*` in `<linux/rtnetlink.h>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `RTNLGRP_LINK`: links appearing, changing (flags, carrier, MTU, name)
    /// and leaving the namespace.
    Link,
}

impl Group {
    fn id(self) -> u32 {
        match self {
            Group::Link => 1,
        }
    }
}

/// One thing the kernel announced.
#[derive(Debug)]
pub enum Notification {
    /// `RTM_NEWLINK`: a link appeared or changed.
    NewLink(LinkInfo),
    /// `RTM_DELLINK`: a link was deleted or left the namespace.
    DelLink(LinkInfo),
    /// Notifications were lost: re-read the state.
    Overflow,
    /// A message that could not be parsed.
    Unparsed { kind: u16, error: NetlinkError },
    /// A message of another type (of another subscribed group).
    Other(u16),
}

impl NetlinkSocket {
    /// Receive the notifications of `group` from now on.
    pub fn subscribe(&mut self, group: Group) -> Result<()> {
        self.raw()
            .add_membership(group.id())
            .map_err(|source| NetlinkError::Socket {
                op: "subscribe",
                source,
            })?;
        self.subscribed = true;
        Ok(())
    }

    /// Ask for a receive buffer of `bytes` (capped by `net.core.rmem_max`):
    /// a burst beyond it costs a re-read of the state, not a wrong state.
    pub fn set_receive_buffer(&self, bytes: usize) -> Result<()> {
        self.raw()
            .set_rx_buf_sz(bytes)
            .map_err(|source| NetlinkError::Socket {
                op: "set receive buffer",
                source,
            })
    }

    /// The next notification; blocks until there is one.
    pub fn next_notification(&mut self) -> Result<Notification> {
        loop {
            if let Some(n) = self.read_notification(0)? {
                return Ok(n);
            }
        }
    }

    /// The next notification if one is there, without blocking.
    pub fn try_next_notification(&mut self) -> Result<Option<Notification>> {
        self.read_notification(libc::MSG_DONTWAIT)
    }

    fn read_notification(&mut self, flags: libc::c_int) -> Result<Option<Notification>> {
        loop {
            if std::mem::take(&mut self.overflowed) {
                self.queued.clear();
                return Ok(Some(Notification::Overflow));
            }
            if let Some(msg) = self.queued.pop_front() {
                match parse_notification(&msg) {
                    Some(n) => return Ok(Some(n)),
                    None => continue,
                }
            }
            match self.recv_datagram(flags) {
                Ok(datagram) => {
                    if let Err(error) = self.queue_datagram(&datagram) {
                        return Ok(Some(Notification::Unparsed { kind: 0, error }));
                    }
                }
                Err(e) if is_overflow(&e) => continue,
                // Cut short by the buffer (which has grown since): lost, and said so.
                Err(e) if is_truncated(&e) => {
                    return Ok(Some(Notification::Unparsed {
                        kind: 0,
                        error: e.context("receive notifications", "this netns"),
                    }))
                }
                Err(RawError::Other(NetlinkError::Socket { source, .. }))
                    if source.kind() == io::ErrorKind::WouldBlock =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.context("receive notifications", "this netns")),
            }
        }
    }

    /// Queue the messages of a datagram that are notifications (stale replies
    /// to our own abandoned requests are skipped). A datagram whose framing
    /// is broken is reported as such (its remaining bytes cannot be split).
    fn queue_datagram(&mut self, datagram: &[u8]) -> Result<(), NetlinkError> {
        let mut offset = 0;
        while offset < datagram.len() {
            let msg = NetlinkBuffer::new_checked(&datagram[offset..]).map_err(|e| {
                NetlinkError::Decode {
                    what: "netlink notification",
                    reason: e.to_string(),
                }
            })?;
            let len = msg.length() as usize;
            let stale_reply = msg.port_number() == self.port() && msg.sequence_number() != 0;
            if !stale_reply {
                self.queued.push_back(
                    datagram[offset..offset + len.min(datagram.len() - offset)].to_vec(),
                );
            }
            offset += super::attrs::align4(len);
        }
        Ok(())
    }

    /// Every link of the namespace; links whose message does not parse are
    /// returned apart, with the reason, instead of failing the whole dump.
    pub fn links_lossy(&mut self) -> Result<(Vec<LinkInfo>, Vec<NetlinkError>)> {
        let items = self
            .dump(&dump_links_request(), |kind, payload| {
                if kind != RTM_NEWLINK {
                    return Ok(None);
                }
                Ok(Some(
                    parse_link(payload)
                        .map(|p| p.info)
                        .map_err(|e| e.context("parse link", "a link dump")),
                ))
            })
            .map_err(|e| e.context("dump links", "this netns"))?;
        let (ok, bad): (Vec<_>, Vec<_>) = items.into_iter().partition(|r| r.is_ok());
        Ok((
            ok.into_iter().filter_map(|r| r.ok()).collect(),
            bad.into_iter().filter_map(|r| r.err()).collect(),
        ))
    }
}

/// One whole netlink message as a notification; `None` for protocol
/// messages that belong to no notification (a stale ACK or DONE).
fn parse_notification(msg: &[u8]) -> Option<Notification> {
    let buf = match NetlinkBuffer::new_checked(msg) {
        Ok(b) => b,
        Err(e) => {
            return Some(Notification::Unparsed {
                kind: 0,
                error: NetlinkError::Decode {
                    what: "netlink notification",
                    reason: e.to_string(),
                },
            })
        }
    };
    let kind = buf.message_type();
    let link = |wrap: fn(LinkInfo) -> Notification| match parse_link(buf.payload()) {
        Ok(p) => wrap(p.info),
        Err(e) => Notification::Unparsed {
            kind,
            error: e.context("parse link notification", "this netns"),
        },
    };
    Some(match kind {
        NLMSG_NOOP | NLMSG_ERROR | NLMSG_DONE => return None,
        RTM_NEWLINK => link(Notification::NewLink),
        RTM_DELLINK => link(Notification::DelLink),
        other => Notification::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::link::tests::{ifinfomsg, nla};

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn links_and_garbage_become_notifications() {
        let mut p = ifinfomsg(4, 1);
        p.extend(nla(3, b"ens1f0\0"));
        p.extend(nla(4, &9000u32.to_ne_bytes()));
        match parse_notification(&message(RTM_NEWLINK, &p)) {
            Some(Notification::NewLink(l)) => {
                assert_eq!(
                    (l.index, l.name.as_str(), l.mtu, l.up),
                    (4, "ens1f0", 9000, true)
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_notification(&message(RTM_DELLINK, &p)),
            Some(Notification::DelLink(_))
        ));
        // A link without a name, a truncated one: reported with the reason.
        for bad in [ifinfomsg(4, 1), vec![0; 8]] {
            match parse_notification(&message(RTM_NEWLINK, &bad)) {
                Some(Notification::Unparsed { kind, error }) => {
                    assert_eq!(kind, RTM_NEWLINK);
                    assert!(error.to_string().contains("link"), "{error}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            parse_notification(&message(24, &[0; 12])),
            Some(Notification::Other(24))
        ));
        assert!(parse_notification(&message(NLMSG_DONE, &[0; 4])).is_none());
        assert!(matches!(
            parse_notification(&[1, 2, 3]),
            Some(Notification::Unparsed { kind: 0, .. })
        ));
    }
}
