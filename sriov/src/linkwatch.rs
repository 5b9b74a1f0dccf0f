//! Link notifications in a network namespace: the library's [`NetlinkSocket`] subscribed to
//! [`Group::Link`], yielding a full snapshot first and then every link change, parsed by the
//! one tolerant link parser ([`LinkInfo`]).
//!
//! The kernel sends a notification for every change of a link's flags or carrier, within
//! microseconds, so the device plugin never polls `operstate`. When the socket's buffer
//! overflows (`ENOBUFS`: a burst such as a thousand VFs appearing at once) notifications were
//! lost, so the watcher dumps all links again and starts over from a new snapshot. A message
//! that cannot be parsed is handed on as [`LinkUpdate::Unparsed`], for the caller to count and
//! log; the links that did parse are still reported.
//!
//! The socket is blocking: [`LinkWatcher::next_update`] is for a thread of its own (the daemon
//! runs it as a supervised blocking job).

use crate::netlink::{Group, LinkInfo, NetlinkError, NetlinkSocket, Netns, Notification};
use std::collections::VecDeque;
use std::path::Path;

/// Receive buffer asked for; bursts beyond it cost a re-dump, not a lost state.
const RCVBUF: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LinkWatchError {
    #[error("link notifications: {0}")]
    Netlink(#[from] NetlinkError),
}

/// What the watcher reports.
#[derive(Debug)]
pub enum LinkUpdate {
    /// Every link of the namespace (at start, and after notifications were lost).
    Snapshot(Vec<LinkInfo>),
    /// A link appeared or changed.
    Changed(LinkInfo),
    /// A link was deleted or left the namespace.
    Deleted(LinkInfo),
    /// A message the parser refused (the reason says why); what it said is unknown.
    Unparsed(NetlinkError),
}

/// A subscribed socket and the updates parsed but not handed out yet.
#[derive(Debug)]
pub struct LinkWatcher {
    socket: NetlinkSocket,
    pending: VecDeque<LinkUpdate>,
    needs_dump: bool,
}

impl LinkWatcher {
    /// Subscribes to link notifications in the namespace at `netns` (None: the caller's).
    /// The first [`next_update`](Self::next_update) returns a [`LinkUpdate::Snapshot`].
    pub fn open(netns: Option<&Path>) -> Result<Self, LinkWatchError> {
        let mut socket = match netns {
            Some(p) => NetlinkSocket::new_in(&Netns::open(p)?)?,
            None => NetlinkSocket::new()?,
        };
        // Best effort: without a bigger buffer, overflows only cost re-dumps.
        if let Err(e) = socket.set_receive_buffer(RCVBUF) {
            tracing::debug!("linkwatch: {e}");
        }
        socket.subscribe(Group::Link)?;
        Ok(LinkWatcher {
            socket,
            pending: VecDeque::new(),
            needs_dump: true,
        })
    }

    /// The next update; blocks until there is one.
    pub fn next_update(&mut self) -> Result<LinkUpdate, LinkWatchError> {
        loop {
            if self.needs_dump {
                self.pending.clear();
                let (links, unparsed) = self.socket.links_lossy()?;
                self.needs_dump = false;
                self.pending
                    .extend(unparsed.into_iter().map(LinkUpdate::Unparsed));
                return Ok(LinkUpdate::Snapshot(links));
            }
            if let Some(u) = self.pending.pop_front() {
                return Ok(u);
            }
            match self.socket.next_notification()? {
                Notification::NewLink(l) => return Ok(LinkUpdate::Changed(l)),
                Notification::DelLink(l) => return Ok(LinkUpdate::Deleted(l)),
                Notification::Unparsed { error, .. } => return Ok(LinkUpdate::Unparsed(error)),
                Notification::Overflow => self.needs_dump = true,
                Notification::Other(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Needs CAP_SYS_ADMIN (a network namespace of its own): the suite runs as root.
    #[test]
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
        let state = |l: &LinkInfo| crate::health::LinkState::from_link(l);
        let wait = |w: &mut LinkWatcher, f: &dyn Fn(&LinkUpdate) -> bool| loop {
            if f(&w.next_update().unwrap()) {
                break;
            }
        };
        wait(
            &mut w,
            &|u| matches!(u, LinkUpdate::Changed(l) if l.name == "v0" && state(l).admin_up && state(l).carrier),
        );
        assert!(ip(&["-n", &ns.0, "link", "set", "v1", "down"]));
        wait(
            &mut w,
            &|u| matches!(u, LinkUpdate::Changed(l) if l.name == "v0" && state(l).admin_up && !state(l).carrier),
        );
        assert!(ip(&["-n", &ns.0, "link", "set", "v0", "mtu", "1400"]));
        wait(
            &mut w,
            &|u| matches!(u, LinkUpdate::Changed(l) if l.name == "v0" && l.mtu == 1400),
        );
        assert!(ip(&["-n", &ns.0, "link", "del", "v0"]));
        wait(
            &mut w,
            &|u| matches!(u, LinkUpdate::Deleted(l) if l.name == "v0"),
        );
    }
}
