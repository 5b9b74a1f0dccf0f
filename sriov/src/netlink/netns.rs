//! Network namespace handles.
//!
//! A [`Netns`] is an open file descriptor on a namespace (`/var/run/netns/X`,
//! `/proc/<pid>/ns/net`, ...). Work that must happen *inside* a namespace
//! ([`Netns::run_in`]) runs, in a multi-threaded process (the daemon), on a
//! short-lived thread that calls `setns(2)`: the namespace is a per-thread
//! attribute, so the caller's thread never changes namespace and cannot be
//! left in the wrong one by an error path.
//!
//! A single-threaded process (the CNI plugin) instead enters the namespace on
//! its only thread and returns right after (also on a panic): starting a
//! thread costs up to 1.5 ms on a VM (the new thread lands on an idle vCPU
//! that must be woken), which is most of what a CNI call spends outside the
//! kernel. No other thread can observe the switch; a failed return aborts the
//! process, which the CNI's state records make as safe as a `kill -9`. One
//! difference shows: inside `f`, `/proc/self/net` is the target namespace's
//! here and the caller's on the helper thread (`/proc/thread-self/net` is
//! right in both).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::{fstat, Mode};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use super::error::{NetlinkError, Result};

/// Whether this process had exactly one thread when first asked (`/proc/self/stat`, field 20).
///
/// Asked once: a process that starts with one thread (the CNI plugin) may enter namespaces on it
/// for good, since a thread started later never sees the switch (namespaces are per thread);
/// a process with several threads from the start (the daemon's runtime) never does.
fn is_single_threaded() -> bool {
    static SINGLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SINGLE.get_or_init(|| {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return false;
        };
        // The command name (field 2) is in parentheses and may contain spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(17))
            .is_some_and(|n| n == "1")
    })
}

/// An opened network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    /// Where it was opened from, for error messages.
    path: Option<PathBuf>,
}

impl Netns {
    /// Open the namespace bound at `path` (e.g. `/var/run/netns/X`, a CNI
    /// `CNI_NETNS`, `/proc/<pid>/ns/net`).
    /// The path is looked at before it is opened for real (`O_PATH`): a device node or FIFO
    /// named by mistake (or on purpose) is refused without the side effects of opening it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let err = |op: &'static str| {
            move |errno| NetlinkError::Netns {
                op,
                path: path.display().to_string(),
                errno,
            }
        };
        let probe = open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(err("open netns"))?;
        let probe = Self {
            fd: probe,
            path: Some(path.to_path_buf()),
        };
        probe.check_is_netns()?;
        // The namespace file itself, reopened through the probe (same file, no second lookup).
        let fd = open(
            format!("/proc/self/fd/{}", probe.fd.as_raw_fd()).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err("open netns"))?;
        Ok(Self {
            fd,
            path: Some(path.to_path_buf()),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self> {
        // thread-self, not self: another thread of this process may have
        // entered a different namespace.
        Self::open("/proc/thread-self/ns/net")
    }

    /// Wrap an already opened namespace descriptor (e.g. from `pidfd` work).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd, path: None }
    }

    /// The path it was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// True when both handles refer to the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &Netns) -> Result<bool> {
        Ok(self.id()? == other.id()?)
    }

    /// Run `f` inside this namespace and return its result: on a new thread, or
    /// on the calling thread when it is the process's only one (see the module
    /// docs); the calling thread ends up where it was. A panic in `f` is
    /// propagated.
    ///
    /// Only the network namespace changes: the mount namespace is shared,
    /// so `/sys/class/net` still shows the caller's namespace (use netlink,
    /// or `/proc/sys/net`, which follow the thread's network namespace).
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        if is_single_threaded() {
            // Without a handle on where we are, we could not come back: use a thread then.
            if let Ok(home) = Self::current() {
                return self.run_on_this_thread(home, f);
            }
        }
        let fd = self.fd.as_fd();
        let outcome = std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("sriov-netns".into())
                .spawn_scoped(scope, move || {
                    setns(fd, CloneFlags::CLONE_NEWNET)?;
                    Ok::<T, Errno>(f())
                })
                .map_err(|e| NetlinkError::Netns {
                    op: "spawn a thread for netns",
                    path: self.to_string(),
                    errno: e
                        .raw_os_error()
                        .map(Errno::from_raw)
                        .unwrap_or(Errno::EAGAIN),
                })?;
            match handle.join() {
                Ok(result) => Ok(result),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })?;
        outcome.map_err(|errno| NetlinkError::Netns {
            op: "enter netns",
            path: self.to_string(),
            errno,
        })
    }

    /// [`Netns::run_in`] for a single-threaded process: enter, run `f`, return (also when `f`
    /// panics).
    fn run_on_this_thread<T>(&self, home: Netns, f: impl FnOnce() -> T) -> Result<T> {
        /// Returns the thread to `home` when dropped.
        struct Return<'a> {
            home: Netns,
            from: &'a Netns,
        }
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Err(errno) = setns(self.home.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                    // Going on in the wrong namespace could change the wrong links; the kernel
                    // refusing a namespace we hold open leaves nothing sensible to do.
                    eprintln!(
                        "sriov: cannot return from {} to the original network namespace: {errno}",
                        self.from
                    );
                    std::process::abort();
                }
            }
        }
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| NetlinkError::Netns {
            op: "enter netns",
            path: self.to_string(),
            errno,
        })?;
        let _return = Return { home, from: self };
        Ok(f())
    }

    /// The `(device, inode)` pair identifying the namespace.
    fn id(&self) -> Result<(u64, u64)> {
        let st = fstat(&self.fd).map_err(|errno| NetlinkError::Netns {
            op: "stat netns",
            path: self.to_string(),
            errno,
        })?;
        // The casts only widen: the field types differ between targets.
        #[allow(clippy::unnecessary_cast)]
        Ok((st.st_dev as u64, st.st_ino as u64))
    }

    /// Refuse files that are not network namespaces (a typo'd path, a directory, a
    /// CNI_NETNS that was unmounted and is now an empty file, another kind of namespace such as
    /// `/proc/self/ns/mnt`) when opening, with a clear error, rather than later inside `setns`.
    fn check_is_netns(&self) -> Result<()> {
        let fs = fstatfs(&self.fd).map_err(|errno| NetlinkError::Netns {
            op: "stat netns",
            path: self.to_string(),
            errno,
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetlinkError::Netns {
                op: "not a namespace file:",
                path: self.to_string(),
                errno: Errno::EINVAL,
            });
        }
        // A namespace file opened through /proc/PID/ns reads as "<type>:[<inode>]" through
        // /proc/self/fd; one bind-mounted elsewhere (/run/netns/X) reads as that path, and its
        // type shows only when it is entered (`setns` refuses another type with EINVAL).
        let kind = std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
            .map(|k| k.to_string_lossy().into_owned())
            .unwrap_or_default();
        let typed = kind
            .split_once(":[")
            .filter(|(t, rest)| !t.contains('/') && rest.ends_with(']'));
        if typed.is_some_and(|(t, _)| t != "net") {
            return Err(NetlinkError::Netns {
                op: "not a network namespace:",
                path: self.to_string(),
                errno: Errno::EINVAL,
            });
        }
        Ok(())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}", p.display()),
            None => write!(f, "netns fd {}", self.fd.as_raw_fd()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_this_thread_enters_and_returns_even_on_panic() {
        std::thread::spawn(|| {
            let home = Netns::current().unwrap();
            // A namespace of this thread's own; needs CAP_SYS_ADMIN (the suite runs as root).
            if nix::sched::unshare(CloneFlags::CLONE_NEWNET).is_err() {
                eprintln!("skipped: not root");
                return;
            }
            let other = Netns::current().unwrap();
            setns(home.fd.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
            assert!(!home.same_as(&other).unwrap());
            let inside = other
                .run_on_this_thread(Netns::current().unwrap(), || Netns::current().unwrap())
                .unwrap();
            assert!(inside.same_as(&other).unwrap());
            assert!(Netns::current().unwrap().same_as(&home).unwrap());
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                other.run_on_this_thread(Netns::current().unwrap(), || panic!("inside"))
            }));
            assert!(panicked.is_err());
            assert!(Netns::current().unwrap().same_as(&home).unwrap());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn single_threaded_is_read_from_proc() {
        // The test harness runs tests on threads of their own: never single-threaded here.
        assert!(!is_single_threaded());
    }

    #[test]
    fn current_netns_is_same_as_itself() {
        let a = Netns::current().unwrap();
        let b = Netns::current().unwrap();
        assert!(a.same_as(&b).unwrap());
        assert_eq!(a.to_string(), "/proc/thread-self/ns/net");
    }

    #[test]
    fn run_in_current_returns_value() {
        let ns = Netns::current().unwrap();
        let borrowed = String::from("borrowed");
        let n = ns.run_in(|| borrowed.len()).unwrap();
        assert_eq!(n, 8);
    }

    #[test]
    fn open_missing_path_is_typed() {
        let e = Netns::open("/nonexistent/netns").unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOENT));
        assert!(e.to_string().starts_with("open netns /nonexistent/netns:"));
    }

    #[test]
    fn plain_files_and_other_namespaces_are_not_netns() {
        for path in ["/", "/proc/self/status", "/proc/self/ns/mnt", "/dev/null"] {
            let e = Netns::open(path).unwrap_err();
            assert_eq!(e.errno(), Some(Errno::EINVAL), "{path}");
        }
    }
}
