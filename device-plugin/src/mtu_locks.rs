//! Enforcing the CNI plugin's MTU locks (`mtuLock: true`): the CNI records each lock with the
//! VF's attachment in its state folder; the daemon runs one watcher per lock, which restores the
//! pod interface's MTU whenever it drifts (link notifications inside the pod's netns, so within
//! milliseconds), counts each restore and logs it.
//!
//! A watcher holds a socket in the pod's netns, which keeps that netns alive: watchers stop when
//! their record disappears or changes (the VF went to another pod), and end by themselves when
//! the pod's netns or interface is gone.

use crate::metrics::Metrics;
use sriov::mtu_lock::{LockEvent, MtuLockWatcher};
use sriov::names::PciAddress;
use sriov::state::{scan_locks, MtuLock};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Running {
    lock: MtuLock,
    stop: Arc<AtomicBool>,
    /// Set by the thread when it ended (pod gone, or an error).
    done: Arc<AtomicBool>,
}

pub struct MtuLocks {
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    running: HashMap<PciAddress, Running>,
}

impl MtuLocks {
    pub fn new(state_dir: &Path, metrics: Arc<Metrics>) -> Self {
        MtuLocks {
            state_dir: state_dir.to_path_buf(),
            metrics,
            running: HashMap::new(),
        }
    }

    /// The folder whose changes call for [`Self::reconcile`].
    pub fn records_dir(&self) -> PathBuf {
        self.state_dir.join("vfs")
    }

    /// Starts watchers for new locks and stops those whose record is gone or changed. A watcher
    /// that ended because its pod is gone is not restarted for the same record.
    pub fn reconcile(&mut self) {
        let wanted: HashMap<PciAddress, MtuLock> = match scan_locks(&self.state_dir) {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                tracing::warn!("cannot read MTU locks in {}: {e}", self.state_dir.display());
                return;
            }
        };
        self.running.retain(|pci, r| {
            let keep = wanted.get(pci) == Some(&r.lock);
            if !keep {
                r.stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for (pci, lock) in wanted {
            if self.running.contains_key(&pci) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicBool::new(false));
            let (t_stop, t_done, t_lock, metrics) = (
                stop.clone(),
                done.clone(),
                lock.clone(),
                self.metrics.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("mtu-lock-{pci}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    watch(pci, t_lock, &t_stop, &metrics);
                    t_done.store(true, Ordering::Relaxed);
                });
            match spawned {
                Ok(_) => {
                    tracing::info!(vf = %pci, netns = %lock.netns.display(), ifname = %lock.ifname, mtu = lock.mtu, "enforcing MTU lock");
                    self.running.insert(pci, Running { lock, stop, done });
                }
                Err(e) => tracing::error!(vf = %pci, "cannot start the MTU lock watcher: {e}"),
            }
        }
        let active = self
            .running
            .values()
            .filter(|r| !r.done.load(Ordering::Relaxed))
            .count();
        self.metrics.set_mtu_locks(active as u64);
    }

    /// Stops every watcher.
    pub fn stop(&mut self) {
        for r in self.running.values() {
            r.stop.store(true, Ordering::Relaxed);
        }
        self.running.clear();
    }
}

fn watch(pci: PciAddress, lock: MtuLock, stop: &AtomicBool, metrics: &Metrics) {
    let mut watcher = match MtuLockWatcher::open(pci, lock) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(vf = %pci, "MTU lock not enforced: {e}");
            return;
        }
    };
    let result = watcher.run(stop, |r| {
        metrics.mtu_lock_restore();
        tracing::warn!(
            vf = %r.pci, netns = %r.netns.display(), ifname = %r.ifname,
            "the pod changed its locked MTU to {}; restored {}", r.found, r.restored
        );
    });
    match result {
        Ok(LockEvent::Gone(why)) => tracing::info!(vf = %pci, "MTU lock released: {why}"),
        Ok(_) => {}
        Err(e) => tracing::warn!(vf = %pci, "MTU lock watcher stopped: {e}"),
    }
}
