//! Emulates the kernel's handling of writes to `sriov_numvfs`.
//!
//! Why fanotify permission events and not inotify: the provisioning code writes
//! `0` and then `N` within microseconds. With inotify the two IN_CLOSE_WRITE
//! events may be merged and, either way, by the time the watcher reads the
//! file it already says `N`: the `0` is lost and `N` is refused as EBUSY.
//! Here each PF folder carries a FAN_OPEN_PERM | FAN_CLOSE_WRITE mark for its
//! children. A write is reported at close; the writer's next open of any file
//! in that folder waits for our permission, which is only given after the
//! events queued before it are applied. Each write is therefore seen with its
//! own value and applied before anyone can open a file of that PF again,
//! which is what the kernel's synchronous store looks like from outside.
//! (Listing the folder is not ordered: poll for `virtfn*` as real code does.)
//!
//! Differences from the kernel: a refused write still returns success to the
//! writer (the refusal is in the log, and the file is put back to the real
//! count before anyone can read it).
//!
//! Consequences for this thread and the code it calls: it must never open a
//! file inside a PF folder (it would wait for itself). Tree updates there are
//! symlink/unlink/rename only (see `sysfs_tree`), and `sriov_numvfs` itself is
//! fixed up through the event's own read-write fd, which raises no events.

use super::error::{Result, SimError};
use super::lab::{ensure_root, Lab};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags,
    Response,
};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the thread checks whether it should stop.
const STOP_POLL_MS: u16 = 50;

/// One write to a PF's `sriov_numvfs`, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NumVfsWrite {
    /// PCI address of the PF.
    pub pf: String,
    /// What was written, trimmed.
    pub raw: String,
    /// The number, if it parsed.
    pub value: Option<u32>,
    pub accepted: bool,
    /// Why it was refused (or what failed while applying it).
    pub error: Option<String>,
}

type Callback = Box<dyn Fn(&NumVfsWrite) + Send>;

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<NumVfsWrite>>,
    changed: Condvar,
    failure: Mutex<Option<String>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running emulator; stops (and releases its marks) when dropped.
pub struct KernelEmulator {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelEmulator {
    /// Marks every PF folder of lab `name` and starts the thread. Writes made
    /// after this returns are seen.
    pub(crate) fn start(name: &str, on_write: Option<Callback>) -> Result<Self> {
        ensure_root()?;
        let lab = Lab::open(name)?;
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDWR | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE,
        )
        .map_err(SimError::sys("fanotify_init for lab", name))?;
        let mask =
            MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_CLOSE_WRITE | MaskFlags::FAN_EVENT_ON_CHILD;
        for pf in &lab.description().pfs {
            let dir = lab.paths().pci_dir(&pf.pci);
            let handle = std::fs::File::open(&dir).map_err(SimError::io("open PF folder", &dir))?;
            fan.mark(MarkFlags::FAN_MARK_ADD, mask, &handle, None::<&Path>)
                .map_err(SimError::sys("fanotify_mark", dir.display()))?;
        }
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            fan,
            lab,
            shared: shared.clone(),
            on_write,
        };
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sriov-lab-kernel-{name}"))
            .spawn(move || worker.run(&stop_flag))
            .map_err(|source| SimError::Spawn {
                command: "kernel emulator thread".into(),
                source,
            })?;
        Ok(KernelEmulator {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// `(pf_pci, value, accepted)` for every write that held a number.
    pub fn writes(&self) -> Vec<(String, u32, bool)> {
        locked(&self.shared.log)
            .iter()
            .filter_map(|w| w.value.map(|v| (w.pf.clone(), v, w.accepted)))
            .collect()
    }

    /// Every write with its raw text and refusal reason.
    pub fn write_log(&self) -> Vec<NumVfsWrite> {
        locked(&self.shared.log).clone()
    }

    /// Waits until at least `count` writes were handled or `timeout` passed;
    /// returns the log either way.
    pub fn wait_for_writes(&self, count: usize, timeout: Duration) -> Vec<NumVfsWrite> {
        let deadline = Instant::now() + timeout;
        let mut log = locked(&self.shared.log);
        while log.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            log = self
                .shared
                .changed
                .wait_timeout(log, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        log.clone()
    }

    /// Why the thread stopped on its own, if it did.
    pub fn failure(&self) -> Option<String> {
        locked(&self.shared.failure).clone()
    }

    /// True while the thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for KernelEmulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Worker {
    fan: Fanotify,
    lab: Lab,
    shared: Arc<Shared>,
    on_write: Option<Callback>,
}

impl Worker {
    fn run(mut self, stop: &AtomicBool) {
        if let Err(e) = self.event_loop(stop) {
            *locked(&self.shared.failure) = Some(e.to_string());
        }
        // Dropping the fanotify group lets any opener still waiting through.
    }

    fn event_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(self.fan.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, STOP_POLL_MS) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(SimError::sys("poll fanotify of lab", self.lab.name())(e)),
            }
            let events = match self.fan.read_events() {
                Ok(events) => events,
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    return Err(SimError::sys(
                        "read fanotify events of lab",
                        self.lab.name(),
                    )(e))
                }
            };
            // In order: a write queued before an open is applied before that
            // open is allowed.
            for event in &events {
                self.handle(event);
            }
        }
        Ok(())
    }

    fn handle(&mut self, event: &FanotifyEvent) {
        let Some(fd) = event.fd() else { return };
        let mask = event.mask();
        if mask.contains(MaskFlags::FAN_CLOSE_WRITE) {
            self.on_close_write(fd);
        }
        if mask.contains(MaskFlags::FAN_OPEN_PERM) {
            // Nothing sensible can be done if the answer fails: the group's
            // fd closing later lets the opener through anyway.
            let _ = self
                .fan
                .write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW));
        }
    }

    fn on_close_write(&mut self, fd: BorrowedFd<'_>) {
        let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            return;
        };
        // A file replaced by rename while a writer still had it shows as
        // "... (deleted)"; the value the writer wrote is still what counts.
        let path = path
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string();
        let path = Path::new(&path);
        if path.file_name().is_none_or(|n| n != "sriov_numvfs") {
            return;
        }
        let Some(pf) = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return;
        };
        // The event's fd is our own read-write handle on the very inode the
        // writer used; it raises no events, so the file is fixed up in place
        // (a rename would leave openers that already looked the path up
        // reading a stale inode).
        let Ok(mut file) = fd.try_clone_to_owned().map(File::from) else {
            return;
        };
        let mut raw = String::new();
        let read = file.read_to_string(&mut raw);
        let raw = raw.trim().to_string();
        if read.is_err() || raw.is_empty() {
            // Opened for writing but nothing written: the kernel sees no store.
            self.restore(&pf, &file);
            return;
        }
        let value = parse_u32(&raw);
        let outcome = match value {
            Some(n) => self.lab.change_vfs(&pf, n).map(|_| rewrite(&file, n)),
            None => Err(SimError::NumVfsInvalid {
                pf: pf.clone(),
                raw: raw.clone(),
            }),
        };
        if outcome.is_err() {
            self.restore(&pf, &file);
        }
        let write = NumVfsWrite {
            pf,
            raw,
            value,
            accepted: outcome.is_ok(),
            error: outcome.err().map(|e| e.to_string()),
        };
        if let Some(callback) = &self.on_write {
            callback(&write);
        }
        locked(&self.shared.log).push(write);
        self.shared.changed.notify_all();
    }

    /// Puts back the real VF count, as the kernel's file would still show it.
    fn restore(&mut self, pf: &str, file: &File) {
        if let Ok(desc) = self.lab.refresh() {
            if let Some(num) = desc.pf(pf).map(|p| p.num_vfs) {
                rewrite(file, num);
            }
        }
    }
}

/// Replaces the content of `sriov_numvfs` through our own handle. A failure
/// only leaves the writer's text in the file; the lab state is already right.
fn rewrite(file: &File, n: u32) {
    let _ = file.set_len(0);
    let _ = file.write_all_at(format!("{n}\n").as_bytes(), 0);
}

/// The kernel parses with kstrtou16(.., 0, ..): decimal, `0x` hex or `0` octal.
fn parse_u32(raw: &str) -> Option<u32> {
    if let Some(hex) = raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if raw.len() > 1 && raw.starts_with('0') {
        u32::from_str_radix(&raw[1..], 8).ok()
    } else {
        raw.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_u32;

    #[test]
    fn parses_like_kstrtou16() {
        assert_eq!(parse_u32("6"), Some(6));
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("0x10"), Some(16));
        assert_eq!(parse_u32("010"), Some(8));
        assert_eq!(parse_u32("six"), None);
        assert_eq!(parse_u32("-1"), None);
    }
}
