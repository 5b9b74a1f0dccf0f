//! Enforcing the CNI plugin's MTU locks (`mtuLock: true`): the CNI records each lock with the
//! VF's attachment in its state folder; the daemon keeps one [`MtuLockWatcher`] per lock, each a
//! netlink socket in the pod's netns subscribed to its link notifications, and waits on all of
//! them from its runtime (no thread per lock, nothing polled). A drift of the locked MTU is put
//! back within the notification latency, counted and logged.
//!
//! A watcher's socket keeps the pod's netns alive: watchers stop when their record disappears
//! or changes (the VF went to another pod), when the pod's netns or interface is gone (the
//! watcher says so), and when a resync finds the netns path naming another namespace.

use crate::daemon::Event;
use crate::metrics::{ErrorKind, Metrics};
use crate::supervise::{self, TaskError};
use sriov::mtu_lock::{LockEvent, MtuLockError, MtuLockWatcher};
use sriov::names::PciAddress;
use sriov::netlink::Netns;
use sriov::state::{scan_locks, MtuLock};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How a watcher ended: the reason it let go (the pod is gone), or an error.
#[derive(Debug)]
pub struct Ended {
    pub pci: PciAddress,
    pub generation: u64,
    pub outcome: Result<String, TaskError<MtuLockError>>,
}

enum State {
    Running {
        task: AbortHandle,
        /// The namespace watched, to notice the path naming another one.
        netns: Option<Netns>,
    },
    /// The pod is gone: not restarted for the same record.
    Released,
    /// Ended with an error: restarted at the next reconcile.
    Failed,
}

struct Lock {
    lock: MtuLock,
    generation: u64,
    state: State,
}

pub struct MtuLocks {
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    events: mpsc::UnboundedSender<Event>,
    locks: HashMap<PciAddress, Lock>,
    generation: u64,
}

impl MtuLocks {
    pub fn new(
        state_dir: &Path,
        metrics: Arc<Metrics>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        MtuLocks {
            state_dir: state_dir.to_path_buf(),
            metrics,
            events,
            locks: HashMap::new(),
            generation: 0,
        }
    }

    /// The folder whose changes call for [`Self::reconcile`].
    pub fn records_dir(&self) -> PathBuf {
        self.state_dir.join("vfs")
    }

    /// Starts watchers for new locks (and for failed ones again), stops those whose record is
    /// gone or changed or whose netns path now names another namespace. A watcher released
    /// because its pod is gone is not restarted for the same record. Returns false when the
    /// records could not be read.
    pub fn reconcile(&mut self) -> bool {
        let wanted: HashMap<PciAddress, MtuLock> = match scan_locks(&self.state_dir) {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                tracing::warn!("cannot read MTU locks in {}: {e}", self.state_dir.display());
                return false;
            }
        };
        self.locks.retain(|pci, l| {
            let keep = wanted.get(pci) == Some(&l.lock);
            let moved = match &l.state {
                State::Running { netns: Some(ns), .. } => !Netns::open(&l.lock.netns)
                    .and_then(|now| now.same_as(ns))
                    .unwrap_or(false),
                _ => false,
            };
            if let State::Running { task, .. } = &l.state {
                if !keep || moved {
                    task.abort();
                    if moved {
                        tracing::info!(vf = %pci, "MTU lock released: {} is gone", l.lock.netns.display());
                    }
                }
            }
            if keep && moved {
                l.state = State::Released;
            }
            keep
        });
        for (pci, lock) in wanted {
            match self.locks.get(&pci).map(|l| &l.state) {
                Some(State::Running { .. } | State::Released) => continue,
                Some(State::Failed) | None => {}
            }
            self.generation += 1;
            let generation = self.generation;
            let state = self.start(pci, lock.clone(), generation);
            self.locks.insert(
                pci,
                Lock {
                    lock,
                    generation,
                    state,
                },
            );
        }
        self.update_gauge();
        true
    }

    fn start(&self, pci: PciAddress, lock: MtuLock, generation: u64) -> State {
        tracing::info!(vf = %pci, netns = %lock.netns.display(), ifname = %lock.ifname, mtu = lock.mtu, "enforcing MTU lock");
        let netns = Netns::open(&lock.netns).ok();
        let events = self.events.clone();
        let task = supervise::spawn(watch(pci, lock, self.metrics.clone()), move |outcome| {
            let _ = events.send(Event::MtuLock(Ended {
                pci,
                generation,
                outcome,
            }));
        });
        State::Running { task, netns }
    }

    /// A watcher ended; returns whether it failed (the caller retries [`Self::reconcile`] with
    /// backoff).
    pub fn ended(&mut self, ended: Ended) -> bool {
        let Some(l) = self.locks.get_mut(&ended.pci) else {
            return false;
        };
        if l.generation != ended.generation {
            return false;
        }
        let failed = match ended.outcome {
            Ok(why) => {
                tracing::info!(vf = %ended.pci, "MTU lock released: {why}");
                l.state = State::Released;
                false
            }
            Err(e) if e.is_cancelled() => false,
            Err(e) => {
                self.metrics.error(ErrorKind::MtuLock);
                tracing::warn!(vf = %ended.pci, "MTU lock watcher stopped: {e}; retrying");
                l.state = State::Failed;
                true
            }
        };
        self.update_gauge();
        failed
    }

    fn update_gauge(&self) {
        let active = self
            .locks
            .values()
            .filter(|l| matches!(l.state, State::Running { .. }))
            .count();
        self.metrics.set_mtu_locks(active as u64);
    }

    /// Stops every watcher.
    pub fn stop(&mut self) {
        for l in self.locks.values() {
            if let State::Running { task, .. } = &l.state {
                task.abort();
            }
        }
        self.locks.clear();
    }
}

/// Enforces one lock until the pod is gone (`Ok` with the reason) or an error.
async fn watch(
    pci: PciAddress,
    lock: MtuLock,
    metrics: Arc<Metrics>,
) -> Result<String, MtuLockError> {
    let mut watcher = MtuLockWatcher::open(pci, lock)?;
    let first = watcher.enforce()?;
    if let Some(why) = on_event(first, &metrics) {
        return Ok(why);
    }
    let wait_err = |source| MtuLockError::Wait { pci, source };
    // tokio deprecates the safe constructor because a caller could close the descriptor while
    // it is registered; here the AsyncFd owns the watcher, which owns the socket, so the
    // descriptor lives exactly as long as its registration. (The replacement is `unsafe`,
    // which this workspace forbids.)
    #[allow(deprecated)]
    let mut fd = AsyncFd::with_interest(watcher, Interest::READABLE).map_err(wait_err)?;
    loop {
        let mut guard = fd.readable_mut().await.map_err(wait_err)?;
        // Reads until the socket would block: only then may readiness be cleared.
        let woken = guard.get_inner_mut().on_readable()?;
        guard.clear_ready();
        for e in &woken.unparsed {
            metrics.error(ErrorKind::NetlinkParse);
            tracing::warn!(vf = %pci, "MTU lock: a notification did not parse: {e}");
        }
        if let Some(why) = woken.event.and_then(|e| on_event(e, &metrics)) {
            return Ok(why);
        }
    }
}

/// Counts and logs a restore; returns the reason when the pod is gone.
fn on_event(event: LockEvent, metrics: &Metrics) -> Option<String> {
    match event {
        LockEvent::Gone(why) => Some(why),
        LockEvent::Restored(r) => {
            metrics.mtu_lock_restore();
            tracing::warn!(
                vf = %r.pci, netns = %r.netns.display(), ifname = %r.ifname,
                "the pod changed its locked MTU to {}; restored {}", r.found, r.restored
            );
            None
        }
        LockEvent::Unchanged => None,
    }
}
