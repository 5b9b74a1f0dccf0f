//! Link notifications: an rtnetlink socket subscribed to `RTNLGRP_LINK` in a given network
//! namespace, yielding a full snapshot first and then every link change.
//!
//! The kernel sends a notification for every change of a link's flags or carrier, within
//! microseconds, so the device plugin never polls `operstate`. When the socket's buffer overflows
//! (`ENOBUFS`: a burst such as a thousand VFs appearing at once) notifications were lost, so the
//! watcher dumps all links again and starts over from a new snapshot.
//!
//! The socket is blocking and meant for a thread of its own ([`spawn`]).

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::CloneFlags;
use std::io;
use std::path::{Path, PathBuf};

/// `RTNLGRP_LINK` from `<linux/rtnetlink.h>`.
const RTNLGRP_LINK: u32 = 1;
/// Receive buffer asked for; bursts beyond it cost a re-dump, not a lost state.
const RCVBUF: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LinkWatchError {
    #[error("cannot open network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("netlink {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A link as a notification or dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFF_UP.
    pub admin_up: bool,
    /// IFF_LOWER_UP (carrier).
    pub carrier: bool,
    pub oper_state: Option<String>,
}

impl Link {
    pub fn state(&self) -> crate::health::LinkState {
        crate::health::LinkState {
            admin_up: self.admin_up,
            carrier: self.carrier,
        }
    }
}

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkUpdate {
    /// Every link of the namespace (at start, and after notifications were lost).
    Snapshot(Vec<Link>),
    /// A link appeared or changed.
    Changed(Link),
    /// A link was deleted or left the namespace.
    Deleted(Link),
}

/// A subscribed rtnetlink socket.
pub struct LinkWatcher {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// Updates parsed but not handed out yet.
    pending: std::collections::VecDeque<LinkUpdate>,
    needs_dump: bool,
}

impl std::fmt::Debug for LinkWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWatcher")
            .field("seq", &self.seq)
            .finish()
    }
}

fn sock_err(op: &'static str) -> impl FnOnce(io::Error) -> LinkWatchError {
    move |source| LinkWatchError::Socket { op, source }
}

/// Creates a netlink socket inside the namespace at `path`: a short-lived thread enters it, so no
/// thread of the caller ever changes namespace. The socket stays bound to that namespace.
fn socket_in(path: &Path) -> Result<Socket, LinkWatchError> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|source| LinkWatchError::Netns {
            path: path.clone(),
            source,
        })?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|source| LinkWatchError::Setns { path, source })?;
        Socket::new(NETLINK_ROUTE).map_err(sock_err("socket"))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(LinkWatchError::Socket {
            op: "socket (thread panicked)",
            source: io::Error::other("panic"),
        })
    })
}

impl LinkWatcher {
    /// Subscribes to link notifications in the namespace at `netns` (None: the caller's).
    /// The first [`next_update`](Self::next_update) returns a [`LinkUpdate::Snapshot`].
    pub fn open(netns: Option<&Path>) -> Result<Self, LinkWatchError> {
        let mut socket = match netns {
            Some(p) => socket_in(p)?,
            None => Socket::new(NETLINK_ROUTE).map_err(sock_err("socket"))?,
        };
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(sock_err("bind"))?;
        // Best effort: without a bigger buffer, overflows only cost re-dumps.
        let _ = socket.set_rx_buf_sz(RCVBUF);
        socket
            .add_membership(RTNLGRP_LINK)
            .map_err(sock_err("subscribe to RTNLGRP_LINK"))?;
        Ok(LinkWatcher {
            socket,
            seq: 0,
            buf: vec![0; 256 * 1024],
            pending: Default::default(),
            needs_dump: true,
        })
    }

    fn request_dump(&mut self) -> Result<u32, LinkWatchError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
        );
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.socket
            .send_to(&bytes, &SocketAddr::new(0, 0), 0)
            .map_err(sock_err("send link dump"))?;
        Ok(self.seq)
    }

    /// Reads one datagram into `self.buf`; `Ok(None)` on overflow (notifications were lost).
    fn recv(&mut self) -> Result<Option<usize>, LinkWatchError> {
        loop {
            let mut slice = &mut self.buf[..];
            match self.socket.recv(&mut slice, 0) {
                Ok(n) => return Ok(Some(n.min(self.buf.len()))),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(sock_err("receive")(e)),
            }
        }
    }

    /// Dumps every link. Notifications that arrive during the dump are queued after it.
    fn dump(&mut self) -> Result<Vec<Link>, LinkWatchError> {
        'again: loop {
            let seq = self.request_dump()?;
            let mut links = Vec::new();
            loop {
                let Some(n) = self.recv()? else {
                    // Overflow during the dump: its replies may be lost too.
                    continue 'again;
                };
                for (header, msg) in parse(&self.buf[..n]) {
                    if header.sequence_number != seq {
                        if let Some(u) = msg.and_then(update_of) {
                            self.pending.push_back(u);
                        }
                        continue;
                    }
                    if header.flags & NLM_F_DUMP_INTR != 0 {
                        continue 'again;
                    }
                    match msg {
                        Some(Parsed::Done) => return Ok(links),
                        Some(Parsed::Error(code)) => {
                            return Err(sock_err("link dump")(io::Error::from_raw_os_error(-code)))
                        }
                        Some(Parsed::Route(RouteNetlinkMessage::NewLink(m))) => {
                            links.extend(link_of(&m))
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// The next update; blocks until there is one.
    pub fn next_update(&mut self) -> Result<LinkUpdate, LinkWatchError> {
        loop {
            if self.needs_dump {
                self.pending.clear();
                let links = self.dump()?;
                self.needs_dump = false;
                return Ok(LinkUpdate::Snapshot(links));
            }
            if let Some(u) = self.pending.pop_front() {
                return Ok(u);
            }
            match self.recv()? {
                None => self.needs_dump = true,
                Some(n) => {
                    let updates: Vec<LinkUpdate> = parse(&self.buf[..n])
                        .into_iter()
                        .filter_map(|(_, m)| m.and_then(update_of))
                        .collect();
                    self.pending.extend(updates);
                }
            }
        }
    }
}

/// Runs a watcher on a thread of its own, handing every update to `on_update` until it returns
/// false or the socket fails (the error is handed over too). The thread notices a `false` only
/// at the next update.
pub fn spawn(
    mut watcher: LinkWatcher,
    mut on_update: impl FnMut(Result<LinkUpdate, LinkWatchError>) -> bool + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("linkwatch".into())
        .spawn(move || loop {
            let update = watcher.next_update();
            let failed = update.is_err();
            if !on_update(update) || failed {
                return;
            }
        })
}

enum Parsed {
    Route(RouteNetlinkMessage),
    Done,
    Error(i32),
}

/// The messages of a datagram; a message that does not parse is skipped (`None`), never fatal:
/// one odd link must not blind the watcher to the others.
fn parse(mut bytes: &[u8]) -> Vec<(NetlinkHeader, Option<Parsed>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(buf) = NetlinkBuffer::new_checked(bytes) else {
            break;
        };
        let len = buf.length() as usize;
        if len == 0 || len > bytes.len() {
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            Ok(msg) => {
                let (header, payload) = msg.into_parts();
                let parsed = match payload {
                    NetlinkPayload::InnerMessage(m) => Some(Parsed::Route(m)),
                    NetlinkPayload::Done(_) => Some(Parsed::Done),
                    NetlinkPayload::Error(e) => e.code.map(|c| Parsed::Error(c.get())),
                    _ => None,
                };
                out.push((header, parsed));
            }
            Err(e) => {
                tracing::debug!("linkwatch: skipping a message that does not parse: {e}");
            }
        }
        let advance = (len + 3) & !3;
        bytes = bytes.get(advance..).unwrap_or(&[]);
    }
    out
}

fn update_of(p: Parsed) -> Option<LinkUpdate> {
    match p {
        Parsed::Route(RouteNetlinkMessage::NewLink(m)) => link_of(&m).map(LinkUpdate::Changed),
        Parsed::Route(RouteNetlinkMessage::DelLink(m)) => link_of(&m).map(LinkUpdate::Deleted),
        _ => None,
    }
}

fn link_of(m: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut oper_state = None;
    let mut carrier_attr = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::OperState(s) => oper_state = Some(oper_state_name(*s)),
            LinkAttribute::Carrier(c) => carrier_attr = Some(*c != 0),
            _ => {}
        }
    }
    let flags = m.header.flags;
    Some(Link {
        index: m.header.index,
        name: name?,
        admin_up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp) || carrier_attr == Some(true),
        oper_state,
    })
}

fn oper_state_name(s: State) -> String {
    match s {
        State::Up => "up".into(),
        State::Down => "down".into(),
        State::LowerLayerDown => "lowerlayerdown".into(),
        State::Dormant => "dormant".into(),
        State::NotPresent => "notpresent".into(),
        State::Testing => "testing".into(),
        State::Unknown => "unknown".into(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_notification() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running;
        m.attributes.push(LinkAttribute::IfName("ens1f0".into()));
        m.attributes.push(LinkAttribute::OperState(State::Up));
        let mut header = NetlinkHeader::default();
        header.sequence_number = 0;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)),
        );
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        // Two messages in one datagram.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let parsed = parse(&two);
        assert_eq!(parsed.len(), 2);
        let update = parsed
            .into_iter()
            .next()
            .and_then(|(_, p)| p)
            .and_then(update_of);
        assert_eq!(
            update,
            Some(LinkUpdate::Changed(Link {
                index: 7,
                name: "ens1f0".into(),
                admin_up: true,
                carrier: true,
                oper_state: Some("up".into()),
            }))
        );
    }

    /// Needs CAP_SYS_ADMIN (a network namespace of its own).
    #[test]
    #[ignore = "needs root"]
    fn sees_a_link_go_down() {
        struct Ns(String);
        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let ns = Ns(format!("lw-test-{}", std::process::id()));
        assert!(ip(&["netns", "add", &ns.0]));
        let path = PathBuf::from("/var/run/netns").join(&ns.0);
        let mut w = LinkWatcher::open(Some(&path)).unwrap();
        let LinkUpdate::Snapshot(links) = w.next_update().unwrap() else {
            panic!("no snapshot")
        };
        assert!(links.iter().any(|l| l.name == "lo"));
        assert!(!links.iter().any(|l| l.name == "v0"));
        assert!(ip(&[
            "-n", &ns.0, "link", "add", "v0", "type", "veth", "peer", "name", "v1"
        ]));
        assert!(ip(&["-n", &ns.0, "link", "set", "v1", "up"]));
        assert!(ip(&["-n", &ns.0, "link", "set", "v0", "up"]));
        let wait = |w: &mut LinkWatcher, f: &dyn Fn(&LinkUpdate) -> bool| loop {
            if f(&w.next_update().unwrap()) {
                break;
            }
        };
        wait(
            &mut w,
            &|u| matches!(u, LinkUpdate::Changed(l) if l.name == "v0" && l.admin_up && l.carrier),
        );
        assert!(ip(&["-n", &ns.0, "link", "set", "v1", "down"]));
        wait(
            &mut w,
            &|u| matches!(u, LinkUpdate::Changed(l) if l.name == "v0" && l.admin_up && !l.carrier),
        );
        assert!(ip(&["-n", &ns.0, "link", "del", "v0"]));
        wait(
            &mut w,
            &|u| matches!(u, LinkUpdate::Deleted(l) if l.name == "v0"),
        );
    }
}
