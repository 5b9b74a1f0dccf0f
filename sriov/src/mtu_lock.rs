//! MTU lock enforcement (`mtuLock: true`): the CNI records the lock in its state folder
//! ([`crate::state::MtuLock`]); the node daemon finds the locks with [`scan_locks`] and keeps one
//! [`MtuLockWatcher`] per lock, which restores the pinned MTU whenever the pod changes it.
//!
//! A watcher is the library's [`NetlinkSocket`] inside the pod's netns, subscribed to link
//! notifications: a change of the locked link's MTU (or its departure, or lost notifications)
//! arrives as a notification within microseconds and is acted on at once; nothing is polled.
//! The watcher owns no thread: the daemon waits for its socket to become readable (it is a file
//! descriptor, [`AsFd`]) together with everything else, and calls
//! [`MtuLockWatcher::on_readable`]; [`MtuLockWatcher::wait`] does the same for one watcher on
//! the caller's thread.
//!
//! A netlink socket keeps its namespace alive. So that a watcher never keeps a dead pod's netns
//! (and its VF) around, it reports [`LockEvent::Gone`] as soon as the netns path no longer names
//! the same namespace or the interface left; the daemon must then drop the watcher (and also
//! drops it when the lock record disappears, and when a resync finds the netns gone).

pub use crate::state::scan_locks;

use crate::names::PciAddress;
use crate::netlink::{Group, LinkInfo, NetlinkError, NetlinkSocket, Netns, Notification};
use crate::state::MtuLock;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MtuLockError {
    #[error("MTU lock of VF {pci} ({ifname} in {netns}): {source}")]
    Netlink {
        pci: PciAddress,
        ifname: String,
        netns: String,
        #[source]
        source: Box<NetlinkError>,
    },
    #[error("MTU lock of VF {pci}: waiting for notifications: {source}")]
    Wait {
        pci: PciAddress,
        #[source]
        source: std::io::Error,
    },
}

/// One restore, for the daemon's metric and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuRestore {
    pub pci: PciAddress,
    pub netns: PathBuf,
    pub ifname: String,
    /// The MTU found.
    pub found: u32,
    /// The locked MTU put back.
    pub restored: u32,
}

/// What one look at the locked link found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEvent {
    /// The MTU was as locked.
    Unchanged,
    /// The MTU had drifted and was put back.
    Restored(MtuRestore),
    /// The pod's netns or the interface is gone: drop the watcher.
    Gone(String),
}

/// What the notifications read by [`MtuLockWatcher::on_readable`] led to.
#[derive(Debug, Default)]
pub struct Woken {
    /// The outcome of looking at the link, when a notification called for it.
    pub event: Option<LockEvent>,
    /// Notifications the parser refused (the link was looked at anyway).
    pub unparsed: Vec<NetlinkError>,
}

/// Enforces one MTU lock.
pub struct MtuLockWatcher {
    pci: PciAddress,
    lock: MtuLock,
    netns: Netns,
    socket: NetlinkSocket,
    /// The locked link's index, once found.
    index: Option<u32>,
}

impl std::fmt::Debug for MtuLockWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtuLockWatcher")
            .field("pci", &self.pci)
            .field("lock", &self.lock)
            .finish()
    }
}

impl AsFd for MtuLockWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for MtuLockWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_fd().as_raw_fd()
    }
}

impl MtuLockWatcher {
    /// Opens the pod's netns and subscribes to its link notifications.
    pub fn open(pci: PciAddress, lock: MtuLock) -> Result<Self, MtuLockError> {
        let nl_err = |source| MtuLockError::Netlink {
            pci,
            ifname: lock.ifname.clone(),
            netns: lock.netns.display().to_string(),
            source: Box::new(source),
        };
        let netns = Netns::open(&lock.netns).map_err(nl_err)?;
        let mut socket = NetlinkSocket::new_in(&netns).map_err(nl_err)?;
        socket.subscribe(Group::Link).map_err(nl_err)?;
        Ok(MtuLockWatcher {
            pci,
            index: lock.ifindex,
            lock,
            netns,
            socket,
        })
    }

    pub fn lock(&self) -> &MtuLock {
        &self.lock
    }

    pub fn pci(&self) -> PciAddress {
        self.pci
    }

    fn netlink_err(&self, source: NetlinkError) -> MtuLockError {
        MtuLockError::Netlink {
            pci: self.pci,
            ifname: self.lock.ifname.clone(),
            netns: self.lock.netns.display().to_string(),
            source: Box::new(source),
        }
    }

    fn find(&mut self) -> Option<LinkInfo> {
        if let Some(index) = self.index {
            if let Ok(l) = self.socket.link_by_index(index) {
                if l.name == self.lock.ifname {
                    return Some(l);
                }
            }
        }
        self.socket.link_by_name(&self.lock.ifname).ok()
    }

    /// Whether a notified link is the locked one.
    fn is_locked_link(&self, l: &LinkInfo) -> bool {
        Some(l.index) == self.index || l.name == self.lock.ifname
    }

    /// Whether the lock's netns path still names the namespace we watch.
    fn netns_alive(&self) -> bool {
        Netns::open(&self.lock.netns)
            .and_then(|n| n.same_as(&self.netns))
            .unwrap_or(false)
    }

    /// Looks at the link now and restores its MTU if it drifted.
    pub fn enforce(&mut self) -> Result<LockEvent, MtuLockError> {
        if !self.netns_alive() {
            return Ok(LockEvent::Gone(format!(
                "{} is gone",
                self.lock.netns.display()
            )));
        }
        let Some(link) = self.find() else {
            return Ok(LockEvent::Gone(format!(
                "{} left {}",
                self.lock.ifname,
                self.lock.netns.display()
            )));
        };
        self.index = Some(link.index);
        if link.mtu == self.lock.mtu {
            return Ok(LockEvent::Unchanged);
        }
        self.socket
            .set_mtu(link.index, self.lock.mtu)
            .map_err(|e| self.netlink_err(e))?;
        Ok(LockEvent::Restored(MtuRestore {
            pci: self.pci,
            netns: self.lock.netns.clone(),
            ifname: self.lock.ifname.clone(),
            found: link.mtu,
            restored: self.lock.mtu,
        }))
    }

    /// Reads every notification waiting on the socket, without blocking; looks at the link
    /// (and restores its MTU) when one of them may concern the lock: the locked link changed
    /// its MTU or left, notifications were lost, or one did not parse.
    pub fn on_readable(&mut self) -> Result<Woken, MtuLockError> {
        let mut woken = Woken::default();
        let mut look = false;
        while let Some(n) = self
            .socket
            .try_next_notification()
            .map_err(|e| self.netlink_err(e))?
        {
            match n {
                Notification::NewLink(l) if self.is_locked_link(&l) => {
                    look |= l.mtu != self.lock.mtu || l.name != self.lock.ifname
                }
                Notification::DelLink(l) if self.is_locked_link(&l) => look = true,
                Notification::Overflow => look = true,
                Notification::Unparsed { error, .. } => {
                    woken.unparsed.push(error);
                    look = true;
                }
                _ => {}
            }
        }
        if look {
            woken.event = Some(self.enforce()?);
        }
        Ok(woken)
    }

    /// Waits up to `timeout` for a notification in the pod, then handles what arrived
    /// ([`Self::on_readable`]): `Unchanged` when nothing concerned the lock.
    pub fn wait(&mut self, timeout: Duration) -> Result<LockEvent, MtuLockError> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => {
                return Err(MtuLockError::Wait {
                    pci: self.pci,
                    source: errno.into(),
                })
            }
        }
        Ok(self.on_readable()?.event.unwrap_or(LockEvent::Unchanged))
    }
}
