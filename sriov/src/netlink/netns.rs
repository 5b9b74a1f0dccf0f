//! Network namespace handles.
//!
//! A [`Netns`] is an open file descriptor on a namespace (`/var/run/netns/X`,
//! `/proc/<pid>/ns/net`, ...). Work that must happen *inside* a namespace
//! runs on a short-lived thread that calls `setns(2)`: the namespace is a
//! per-thread attribute, so the caller's thread never changes namespace and
//! cannot be left in the wrong one by an error path.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::{fstat, Mode};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use super::error::{NetlinkError, Result};

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
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let fd =
            open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
                NetlinkError::Netns {
                    op: "open netns",
                    path: path.display().to_string(),
                    errno,
                }
            })?;
        let netns = Self {
            fd,
            path: Some(path.to_path_buf()),
        };
        netns.check_is_netns()?;
        Ok(netns)
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

    /// Run `f` on a new thread inside this namespace and return its result.
    /// The calling thread stays where it is. A panic in `f` is propagated.
    ///
    /// Only the network namespace changes: the mount namespace is shared,
    /// so `/sys/class/net` still shows the caller's namespace (use netlink,
    /// or `/proc/sys/net`, which follow the thread's network namespace).
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
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

    /// Refuse files that are not namespaces (a typo'd path, a directory, a
    /// CNI_NETNS that was unmounted and is now an empty file) when opening,
    /// with a clear error, rather than later inside `setns`.
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
    fn plain_files_are_not_netns() {
        for path in ["/", "/proc/self/status"] {
            let e = Netns::open(path).unwrap_err();
            assert_eq!(e.errno(), Some(Errno::EINVAL), "{path}");
        }
    }
}
