//! A small synchronous rtnetlink socket.
//!
//! One request at a time: send, then read until the kernel's ACK (plain
//! requests) or `NLMSG_DONE` (dumps). Replies are matched by sequence
//! number, so a reply left over from an abandoned request is skipped, not
//! mistaken for the current one. Kernel errors come back as errnos plus the
//! extended-ACK text when the kernel gives one.
//!
//! A socket subscribed to multicast groups ([`super::notify`]) also receives
//! notifications; those that arrive while a request is answered are kept for
//! [`NetlinkSocket::next_notification`], in order, never dropped.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

use super::attrs::{align4, i32_at, nlas, string, u32_at};
use super::error::{NetlinkError, RawError, Result};
use super::netns::Netns;

/// How often a dump that the kernel flags as interrupted (the table changed
/// while it was being read) is restarted before giving up with `EINTR`.
const DUMP_ATTEMPTS: usize = 5;

/// `NLMSGERR_ATTR_MSG`: the extended ACK's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;

/// Receives each reply message (type, payload) of an exchange.
type Handler<'a> = dyn FnMut(u16, &[u8]) -> Result<(), RawError> + 'a;

/// The outcome of the terminating message (ACK, error or DONE), or `None`
/// while the reply goes on.
type Terminated = Option<Result<(), RawError>>;

/// A request as a plain value: the message and its flags beyond
/// `NLM_F_REQUEST` (added always) and `NLM_F_ACK` (added for changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) message: RouteNetlinkMessage,
    pub(crate) flags: u16,
    /// A get of one object: its reply (or an error) ends the exchange, no ACK is asked for
    /// (which would cost another datagram).
    pub(crate) get: bool,
}

impl Request {
    /// A set or delete of one object.
    pub(crate) fn new(message: RouteNetlinkMessage) -> Self {
        Self {
            message,
            flags: 0,
            get: false,
        }
    }

    /// A get of one object.
    pub(crate) fn get(message: RouteNetlinkMessage) -> Self {
        Self {
            message,
            flags: 0,
            get: true,
        }
    }

    /// Create an object; fail with `EEXIST` if it already exists.
    pub(crate) fn create(message: RouteNetlinkMessage) -> Self {
        Self {
            message,
            flags: NLM_F_CREATE | NLM_F_EXCL,
            get: false,
        }
    }

    /// Dump every object of a kind.
    pub(crate) fn dump(message: RouteNetlinkMessage) -> Self {
        Self {
            message,
            flags: NLM_F_DUMP,
            get: false,
        }
    }

    pub(crate) fn is_dump(&self) -> bool {
        self.flags & NLM_F_DUMP == NLM_F_DUMP
    }

    /// The bytes sent to the kernel.
    pub(crate) fn to_bytes(&self, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        // Dumps are not ACKed by the kernel even when asked (they end with
        // NLMSG_DONE), and a get's reply is its answer: only changes ask for one.
        let ack = !self.is_dump() && !self.get;
        header.flags = NLM_F_REQUEST | self.flags | if ack { NLM_F_ACK } else { 0 };
        header.sequence_number = seq;
        let mut msg =
            NetlinkMessage::new(header, NetlinkPayload::InnerMessage(self.message.clone()));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }
}

/// A synchronous rtnetlink socket bound to the network namespace it was
/// created in (for its whole life, whatever the thread does later).
#[derive(Debug)]
pub struct NetlinkSocket {
    socket: Socket,
    /// Our netlink port id: replies to our requests carry it.
    port: u32,
    seq: u32,
    /// Receive buffer, reused between datagrams.
    buf: Vec<u8>,
    /// Its size ([`RECV_BUFFER`]; tests make it small to see datagrams cut short).
    room: usize,
    /// Subscribed to at least one multicast group.
    pub(super) subscribed: bool,
    /// Notifications (whole netlink messages) read while a request was being
    /// answered, oldest first.
    pub(super) queued: VecDeque<Vec<u8>>,
    /// The receive buffer overflowed (`ENOBUFS`) since the last
    /// [`NetlinkSocket::next_notification`]: notifications were lost.
    pub(super) overflowed: bool,
}

impl AsFd for NetlinkSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl NetlinkSocket {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        Self::configure(Self::open_bound()?)
    }

    /// A socket inside `netns`. Only the `socket(2)` and `bind(2)` calls run inside it
    /// ([`Netns::run_in`]: a helper thread, or this thread when it is the process's only one);
    /// the rest, which allocates, stays outside, so a helper thread stays cheap.
    pub fn new_in(netns: &Netns) -> Result<Self> {
        Self::configure(netns.run_in(Self::open_bound)??)
    }

    fn open_bound() -> Result<(Socket, u32)> {
        let socket_err = |op| move |source| NetlinkError::Socket { op, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(socket_err("open"))?;
        let addr = socket.bind_auto().map_err(socket_err("bind"))?;
        Ok((socket, addr.port_number()))
    }

    fn configure((socket, port): (Socket, u32)) -> Result<Self> {
        // CAP_ACK: error replies carry only our request's header, not the
        // whole request back. EXT_ACK: the kernel explains refusals
        // ("Invalid MTU", "Name already in use"...). STRICT_CHK: the kernel
        // filters dumps by the header fields we set (addresses by ifindex).
        // All exist since 4.20; without them we only lose comfort.
        for (name, result) in [
            ("NETLINK_CAP_ACK", socket.set_cap_ack(true)),
            ("NETLINK_EXT_ACK", socket.set_ext_ack(true)),
            (
                "NETLINK_GET_STRICT_CHK",
                socket.set_netlink_get_strict_chk(true),
            ),
        ] {
            if let Err(e) = result {
                tracing::debug!("netlink: cannot set {name}: {e}");
            }
        }
        Ok(Self {
            socket,
            port,
            seq: 0,
            buf: Vec::new(),
            room: RECV_BUFFER,
            subscribed: false,
            queued: VecDeque::new(),
            overflowed: false,
        })
    }

    /// The underlying socket, for the notification side ([`super::notify`]).
    pub(super) fn raw(&self) -> &Socket {
        &self.socket
    }

    pub(super) fn port(&self) -> u32 {
        self.port
    }

    /// Send a plain request and wait for its ACK.
    pub(crate) fn ack(&mut self, req: &Request) -> Result<(), RawError> {
        self.exchange(req, &mut |_, _| Ok(())).map(|_| ())
    }

    /// Send a get request and return the one reply `parse` accepts
    /// (`Ok(None)` skips a message).
    pub(crate) fn get_one<T>(
        &mut self,
        req: &Request,
        mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, RawError>,
    ) -> Result<T, RawError> {
        let mut found = None;
        self.exchange(req, &mut |kind, payload| {
            if found.is_none() {
                found = parse(kind, payload)?;
            }
            Ok(())
        })?;
        found.ok_or_else(|| RawError::protocol("the kernel acknowledged but sent no reply"))
    }

    /// Run a dump, restarting it when the kernel says it was interrupted.
    pub(crate) fn dump<T>(
        &mut self,
        req: &Request,
        mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, RawError>,
    ) -> Result<Vec<T>, RawError> {
        for attempt in 1..=DUMP_ATTEMPTS {
            let mut items = Vec::new();
            let interrupted = match self.exchange(req, &mut |kind, payload| {
                items.extend(parse(kind, payload)?);
                Ok(())
            }) {
                // A subscribed socket overflowed: replies of this dump may be lost too.
                Err(e) if self.subscribed && is_overflow(&e) && attempt < DUMP_ATTEMPTS => true,
                other => other?,
            };
            if !interrupted {
                return Ok(items);
            }
            tracing::debug!("netlink: dump interrupted (attempt {attempt}), restarting");
        }
        Err(RawError::Kernel {
            errno: Errno::EINTR,
            ext_ack: Some("dump kept changing while being read".into()),
        })
    }

    /// Send `req`, feed each reply message to `on_message` until the
    /// terminating ACK/error/DONE. Returns whether the kernel flagged the
    /// dump as interrupted.
    fn exchange(&mut self, req: &Request, on_message: &mut Handler<'_>) -> Result<bool, RawError> {
        match self.exchange_once(req, on_message) {
            // The buffer has grown to the datagram's size: a get or a dump can simply be asked
            // again (a change's ACK is never that large).
            Err(e) if is_truncated(&e) && (req.get || req.is_dump()) => {
                self.exchange_once(req, on_message)
            }
            other => other,
        }
    }

    fn exchange_once(
        &mut self,
        req: &Request,
        on_message: &mut Handler<'_>,
    ) -> Result<bool, RawError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let bytes = req.to_bytes(seq);
        self.send(&bytes)?;

        let mut interrupted = false;
        // A parse error does not stop reading: the rest of the reply must be
        // drained, or the kernel keeps the dump open and refuses the next one.
        let mut first_err: Option<RawError> = None;
        loop {
            let datagram = self.recv_datagram(0)?;
            let keep = self.subscribed.then_some((self.port, &mut self.queued));
            let outcome = process_datagram(
                &datagram,
                seq,
                req.get,
                &mut interrupted,
                &mut |kind, payload| {
                    if first_err.is_none() {
                        if let Err(e) = on_message(kind, payload) {
                            first_err = Some(e);
                        }
                    }
                },
                keep,
            );
            self.buf = datagram;
            if let Some(result) = outcome? {
                result?;
                return match first_err {
                    Some(e) => Err(e),
                    None => Ok(interrupted),
                };
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), RawError> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.socket.send_to(bytes, &kernel, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(NetlinkError::Socket { op: "send", source }.into()),
            }
        }
    }

    /// One whole datagram, in one `recv` into a buffer large enough for any reply but the
    /// largest VF lists. A datagram larger than the buffer is cut by the kernel (`MSG_TRUNC`
    /// tells its real size): the buffer grows to it and a truncation error says to ask again
    /// ([`NetlinkSocket::exchange`] does, for gets and dumps). `flags` may add `MSG_DONTWAIT`.
    /// On a subscribed socket an overflow (`ENOBUFS`) is remembered for the notification side.
    pub(super) fn recv_datagram(&mut self, flags: libc::c_int) -> Result<Vec<u8>, RawError> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            buf.clear();
            if buf.capacity() < self.room {
                buf.reserve(self.room);
            }
            let room = buf.capacity();
            match self.socket.recv(&mut buf, flags | libc::MSG_TRUNC) {
                Ok(n) if n <= room => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(n) => {
                    buf.clear();
                    buf.reserve(n);
                    self.room = self.room.max(n);
                    self.buf = buf;
                    return Err(RawError::decode(
                        TRUNCATED,
                        format!("{n} bytes, more than the {room}-byte buffer"),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => break Err(source),
            }
        };
        self.buf = buf;
        result.map_err(|source| {
            if self.subscribed && source.raw_os_error() == Some(libc::ENOBUFS) {
                self.overflowed = true;
            }
            NetlinkError::Socket { op: "recv", source }.into()
        })
    }
}

/// The receive buffer's size: any reply but a GETLINK of a PF with hundreds of VFs fits.
const RECV_BUFFER: usize = 128 * 1024;

/// What a datagram cut short by a too small buffer is reported as.
const TRUNCATED: &str = "truncated netlink datagram";

/// Whether an error is a datagram cut short by the buffer (which has grown since).
pub(super) fn is_truncated(e: &RawError) -> bool {
    matches!(e, RawError::Other(NetlinkError::Decode { what, .. }) if *what == TRUNCATED)
}

/// Whether a socket error is the receive buffer's overflow.
pub(super) fn is_overflow(e: &RawError) -> bool {
    matches!(e, RawError::Other(NetlinkError::Socket { source, .. }) if source.raw_os_error() == Some(libc::ENOBUFS))
}

/// Whether a message that is not the reply being read is a notification to
/// keep (rather than a stale reply to one of our earlier requests, which
/// carries our port and that request's sequence number).
fn is_notification(msg_port: u32, msg_seq: u32, our_port: u32) -> bool {
    msg_port != our_port || msg_seq == 0
}

/// Walk the messages of one datagram. Returns `Some(result)` once the
/// terminating message for `seq` is seen.
///
/// With `keep` (our port and a queue), messages that belong to no request of
/// ours (notifications) are queued instead of skipped.
fn process_datagram(
    datagram: &[u8],
    seq: u32,
    reply_ends: bool,
    interrupted: &mut bool,
    on_message: &mut dyn FnMut(u16, &[u8]),
    mut keep: Option<(u32, &mut VecDeque<Vec<u8>>)>,
) -> Result<Terminated, RawError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let msg = NetlinkBuffer::new_checked(&datagram[offset..])
            .map_err(|e| RawError::decode("netlink message", e))?;
        let start = offset;
        offset += align4(msg.length() as usize);
        if msg.sequence_number() != seq {
            match keep.as_mut() {
                Some((port, queue))
                    if is_notification(msg.port_number(), msg.sequence_number(), *port) =>
                {
                    let end = (start + msg.length() as usize).min(datagram.len());
                    queue.push_back(datagram[start..end].to_vec());
                }
                _ => tracing::debug!(
                    "netlink: skipping message with sequence {} (expecting {seq})",
                    msg.sequence_number()
                ),
            }
            continue;
        }
        let payload = msg.payload();
        match msg.message_type() {
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => {
                return Ok(Some(Err(RawError::protocol(
                    "the kernel reported an overrun",
                ))))
            }
            NLMSG_ERROR => return Ok(Some(parse_error(msg.flags(), payload))),
            NLMSG_DONE => return Ok(Some(parse_done(msg.flags(), payload))),
            kind => {
                if msg.flags() & NLM_F_DUMP_INTR != 0 {
                    *interrupted = true;
                }
                on_message(kind, payload);
                // A get's one reply is the whole answer.
                if reply_ends && msg.flags() & NLM_F_MULTIPART == 0 {
                    return Ok(Some(Ok(())));
                }
            }
        }
    }
    Ok(None)
}

/// `NLMSG_ERROR`: an `int` error (0 = ACK), the request's header (or the
/// whole request without CAP_ACK), then extended-ACK attributes.
fn parse_error(flags: u16, payload: &[u8]) -> Result<(), RawError> {
    let code = i32_at(payload, 0)
        .ok_or_else(|| RawError::decode("netlink error message", "shorter than 4 bytes"))?;
    if code == 0 {
        return Ok(());
    }
    let ext_ack = if flags & NLM_F_ACK_TLVS == 0 {
        None
    } else if flags & NLM_F_CAPPED != 0 {
        ext_ack_message(payload.get(4 + NLMSG_HDRLEN..))
    } else {
        u32_at(payload, 4)
            .and_then(|orig_len| ext_ack_message(payload.get(4 + align4(orig_len as usize)..)))
    };
    Err(RawError::Kernel {
        errno: Errno::from_raw(code.checked_abs().unwrap_or(i32::MAX)),
        ext_ack,
    })
}

/// `NLMSG_DONE` carries the dump's final status (an `int`) on recent kernels.
fn parse_done(flags: u16, payload: &[u8]) -> Result<(), RawError> {
    match i32_at(payload, 0) {
        Some(code) if code < 0 => Err(RawError::Kernel {
            errno: Errno::from_raw(code.checked_abs().unwrap_or(i32::MAX)),
            ext_ack: if flags & NLM_F_ACK_TLVS != 0 {
                ext_ack_message(payload.get(4..))
            } else {
                None
            },
        }),
        _ => Ok(()),
    }
}

fn ext_ack_message(tlvs: Option<&[u8]>) -> Option<String> {
    let attrs = nlas(tlvs?, "extended ACK").ok()?;
    attrs
        .into_iter()
        .find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)
        .map(|(_, value)| string(value).trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkMessage;

    /// A netlink message: header + payload, padded.
    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    fn error_payload(code: i32, ext_ack: Option<&str>) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]); // the capped request header
        if let Some(msg) = ext_ack {
            let value_len = msg.len() + 1;
            p.extend_from_slice(&((4 + value_len) as u16).to_ne_bytes());
            p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            p.extend_from_slice(msg.as_bytes());
            p.push(0);
            p.resize(align4(p.len()), 0);
        }
        p
    }

    fn run(datagram: &[u8], seq: u32) -> (Vec<u16>, bool, Terminated) {
        let mut seen = Vec::new();
        let mut interrupted = false;
        let outcome = process_datagram(
            datagram,
            seq,
            false,
            &mut interrupted,
            &mut |kind, _| seen.push(kind),
            None,
        )
        .unwrap();
        (seen, interrupted, outcome)
    }

    #[test]
    fn a_reply_larger_than_the_buffer_is_asked_for_again() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for a netns of its own");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut sock = NetlinkSocket::new().unwrap();
            sock.buf = Vec::new();
            sock.room = 64;
            let lo = sock.link_by_name("lo").unwrap();
            assert_eq!(lo.name, "lo");
            assert!(sock.room > 64, "the buffer grew to the reply");
            // A dump too.
            sock.room = 64;
            sock.buf = Vec::new();
            assert_eq!(sock.links().unwrap().len(), 1);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn request_flags() {
        let set = Request::new(RouteNetlinkMessage::SetLink(LinkMessage::default()));
        let bytes = set.to_bytes(7);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(buf.sequence_number(), 7);
        assert_eq!(buf.length() as usize, bytes.len());
        // A get's reply is its answer: no ACK asked for.
        let get = Request::get(RouteNetlinkMessage::GetLink(LinkMessage::default()));
        let bytes = get.to_bytes(6);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.flags(), NLM_F_REQUEST);

        let dump = Request::dump(RouteNetlinkMessage::GetLink(LinkMessage::default()));
        let bytes = dump.to_bytes(8);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_DUMP);

        let create = Request::create(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        let bytes = create.to_bytes(9);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            buf.flags(),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
    }

    #[test]
    fn ack_ends_the_exchange() {
        let d = message(NLMSG_ERROR, NLM_F_CAPPED, 3, &error_payload(0, None));
        let (seen, _, outcome) = run(&d, 3);
        assert!(seen.is_empty());
        assert!(matches!(outcome, Some(Ok(()))));
    }

    #[test]
    fn error_with_ext_ack() {
        let d = message(
            NLMSG_ERROR,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            3,
            &error_payload(-(Errno::EEXIST as i32), Some("Name already in use")),
        );
        let (_, _, outcome) = run(&d, 3);
        match outcome {
            Some(Err(RawError::Kernel { errno, ext_ack })) => {
                assert_eq!(errno, Errno::EEXIST);
                assert_eq!(ext_ack.as_deref(), Some("Name already in use"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stale_sequence_numbers_are_skipped() {
        let mut d = message(16, 0, 2, &[0; 16]); // RTM_NEWLINK of an older request
        d.extend(message(16, NLM_F_DUMP_INTR, 5, &[0; 16]));
        d.extend(message(NLMSG_DONE, 0, 5, &0i32.to_ne_bytes()));
        let (seen, interrupted, outcome) = run(&d, 5);
        assert_eq!(seen, vec![16]);
        assert!(interrupted);
        assert!(matches!(outcome, Some(Ok(()))));
    }

    #[test]
    fn notifications_during_a_request_are_kept_stale_replies_are_not() {
        let with_port = |mut m: Vec<u8>, port: u32| {
            m[12..16].copy_from_slice(&port.to_ne_bytes());
            m
        };
        let mut d = with_port(message(16, 0, 0, &[1; 16]), 0); // kernel notification
        d.extend(with_port(message(16, 0, 2, &[2; 16]), 77)); // stale reply of ours
        d.extend(with_port(message(16, 0, 9, &[3; 16]), 1234)); // caused by another socket
        d.extend(with_port(
            message(NLMSG_DONE, 0, 5, &0i32.to_ne_bytes()),
            77,
        ));
        let mut queue = VecDeque::new();
        let mut interrupted = false;
        let outcome = process_datagram(
            &d,
            5,
            false,
            &mut interrupted,
            &mut |_, _| {},
            Some((77, &mut queue)),
        )
        .unwrap();
        assert!(matches!(outcome, Some(Ok(()))));
        let payloads: Vec<u8> = queue.iter().map(|m| m[NLMSG_HDRLEN]).collect();
        assert_eq!(payloads, [1, 3]);
    }

    #[test]
    fn done_with_error_code() {
        let d = message(NLMSG_DONE, 0, 1, &(-(Errno::EMSGSIZE as i32)).to_ne_bytes());
        let (_, _, outcome) = run(&d, 1);
        assert!(matches!(
            outcome,
            Some(Err(RawError::Kernel {
                errno: Errno::EMSGSIZE,
                ..
            }))
        ));
    }

    #[test]
    fn multipart_without_terminator_wants_more() {
        let d = message(16, 2, 1, &[0; 16]);
        let (seen, _, outcome) = run(&d, 1);
        assert_eq!(seen, vec![16]);
        assert!(outcome.is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut interrupted = false;
        for bad in [
            &[1u8, 2, 3][..],
            &[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[4, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(
                process_datagram(bad, 0, false, &mut interrupted, &mut |_, _| {}, None).is_err()
            );
        }
        // a truncated error payload
        let d = message(NLMSG_ERROR, 0, 1, &[1, 2]);
        let (_, _, outcome) = run(&d, 1);
        assert!(matches!(
            outcome,
            Some(Err(RawError::Other(NetlinkError::Decode { .. })))
        ));
        // ext-ack flags with nonsense after the code
        let d = message(
            NLMSG_ERROR,
            NLM_F_ACK_TLVS,
            1,
            &[0xea, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        let (_, _, outcome) = run(&d, 1);
        assert!(matches!(
            outcome,
            Some(Err(RawError::Kernel { ext_ack: None, .. }))
        ));
    }
}
