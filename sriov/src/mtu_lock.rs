//! MTU lock enforcement (`mtuLock: true`): the CNI records the lock in its state folder
//! ([`crate::state::MtuLock`]); the node daemon finds the locks with [`scan_locks`] and drives
//! one [`MtuLockWatcher`] per lock, which restores the pinned MTU whenever the pod changes it.
//!
//! The watcher subscribes to link notifications (`RTNLGRP_LINK`) inside the pod's netns; every
//! notification (or an overflow, which means some were lost) is only a wake-up: the watcher then
//! reads the locked link and restores its MTU if it drifted. A change is therefore undone within
//! the notification latency (microseconds), far under a second.
//!
//! A netlink socket keeps its namespace alive. So that a watcher never keeps a dead pod's netns
//! (and its VF) around, [`MtuLockWatcher::wait`] reports [`LockEvent::Gone`] as soon as the
//! netns path no longer names the same namespace or the interface left; the daemon must then
//! drop the watcher (and should also drop it when the lock record disappears).

pub use crate::state::scan_locks;

use crate::names::PciAddress;
use crate::netlink::{LinkInfo, NetlinkError, NetlinkSocket, Netns};
use crate::state::MtuLock;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `RTNLGRP_LINK` from `<linux/rtnetlink.h>`.
const RTNLGRP_LINK: u32 = 1;

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
    #[error("MTU lock of VF {pci}: notification socket: {source}")]
    Socket {
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

/// Enforces one MTU lock.
pub struct MtuLockWatcher {
    pci: PciAddress,
    lock: MtuLock,
    netns: Netns,
    sock: NetlinkSocket,
    events: Socket,
    buf: Vec<u8>,
}

impl std::fmt::Debug for MtuLockWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtuLockWatcher")
            .field("pci", &self.pci)
            .field("lock", &self.lock)
            .finish()
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
        let sock = NetlinkSocket::new_in(&netns).map_err(nl_err)?;
        let events = netns
            .run_in(|| -> std::io::Result<Socket> {
                let mut s = Socket::new(NETLINK_ROUTE)?;
                s.bind(&SocketAddr::new(0, 0))?;
                let _ = s.set_rx_buf_sz(1 << 20);
                s.add_membership(RTNLGRP_LINK)?;
                s.set_non_blocking(true)?;
                Ok(s)
            })
            .map_err(nl_err)?
            .map_err(|source| MtuLockError::Socket { pci, source })?;
        Ok(MtuLockWatcher {
            pci,
            lock,
            netns,
            sock,
            events,
            buf: vec![0; 64 * 1024],
        })
    }

    pub fn lock(&self) -> &MtuLock {
        &self.lock
    }

    pub fn pci(&self) -> PciAddress {
        self.pci
    }

    fn find(&mut self) -> Option<LinkInfo> {
        if let Some(index) = self.lock.ifindex {
            if let Ok(l) = self.sock.link_by_index(index) {
                if l.name == self.lock.ifname {
                    return Some(l);
                }
            }
        }
        self.sock.link_by_name(&self.lock.ifname).ok()
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
        if link.mtu == self.lock.mtu {
            return Ok(LockEvent::Unchanged);
        }
        self.sock
            .set_mtu(link.index, self.lock.mtu)
            .map_err(|source| MtuLockError::Netlink {
                pci: self.pci,
                ifname: self.lock.ifname.clone(),
                netns: self.lock.netns.display().to_string(),
                source: Box::new(source),
            })?;
        Ok(LockEvent::Restored(MtuRestore {
            pci: self.pci,
            netns: self.lock.netns.clone(),
            ifname: self.lock.ifname.clone(),
            found: link.mtu,
            restored: self.lock.mtu,
        }))
    }

    /// Waits up to `timeout` for a link notification in the pod, then [`Self::enforce`]s.
    pub fn wait(&mut self, timeout: Duration) -> Result<LockEvent, MtuLockError> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.events.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(MtuLockError::Socket {
                    pci: self.pci,
                    source: e.into(),
                })
            }
        }
        // Drain: the content does not matter, and an overflow (ENOBUFS) only means some
        // notifications were lost, which the check below covers.
        loop {
            let mut slice = &mut self.buf[..];
            match self.events.recv(&mut slice, 0) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(MtuLockError::Socket {
                        pci: self.pci,
                        source,
                    })
                }
            }
        }
        self.enforce()
    }

    /// Enforces until `stop` is set or the pod is gone, calling `on_restore` for every restore.
    /// `stop` is looked at every 200 ms.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut on_restore: impl FnMut(&MtuRestore),
    ) -> Result<LockEvent, MtuLockError> {
        let mut event = self.enforce()?;
        loop {
            match &event {
                LockEvent::Gone(_) => return Ok(event),
                LockEvent::Restored(r) => on_restore(r),
                LockEvent::Unchanged => {}
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(LockEvent::Unchanged);
            }
            event = self.wait(Duration::from_millis(200))?;
        }
    }
}
