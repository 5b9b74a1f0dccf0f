//! A rooted view of sysfs that counts what it reads.
//!
//! Every sysfs access of the project goes through [`Sysfs`], so the root can be a simulated tree
//! (tests, the lab, the demo) and benchmarks can report how many files a discovery touched.

use crate::names::PciAddress;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A failed sysfs access, with the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("unexpected content in {path}: {content:?} (expected {expected})")]
    Malformed {
        path: PathBuf,
        content: String,
        expected: &'static str,
    },
}

impl SysfsError {
    /// True when the file simply does not exist (an optional attribute).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SysfsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

pub type Result<T, E = SysfsError> = std::result::Result<T, E>;

/// Longest attribute we read; real sysfs attributes are at most a page.
const MAX_ATTR_LEN: u64 = 4096;

/// A folder's entries, sorted, each with where it points when it is a symlink.
pub type LinkEntries = Vec<(String, Option<PathBuf>)>;

/// A folder of the tree held open ([`Sysfs::open_dir`]); `path` names it in errors.
#[derive(Debug)]
pub struct OpenDir {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl OpenDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A sysfs tree rooted at `root` (normally `/sys`).
#[derive(Debug)]
pub struct Sysfs {
    root: PathBuf,
    reads: AtomicU64,
}

impl Clone for Sysfs {
    fn clone(&self) -> Self {
        Sysfs::new(self.root.clone())
    }
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new("/sys")
    }
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs {
            root: root.into(),
            reads: AtomicU64::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many files, links and folders were read so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// `<root>/bus/pci/devices`
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    /// `<root>/bus/pci/devices/<addr>`: the address is a validated [`PciAddress`], so the path
    /// cannot leave the tree.
    pub fn pci_device(&self, addr: &PciAddress) -> PathBuf {
        self.pci_devices_dir().join(addr.to_string())
    }

    /// Reads an attribute, trimmed of its trailing newline.
    pub fn read(&self, path: &Path) -> Result<String> {
        use io::Read;
        self.count();
        let io_err = |source| SysfsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = fs::File::open(path).map_err(io_err)?;
        let mut buf = String::new();
        file.take(MAX_ATTR_LEN)
            .read_to_string(&mut buf)
            .map_err(io_err)?;
        Ok(buf.trim_end_matches(['\n', '\0', ' ']).to_string())
    }

    /// Reads an optional attribute: `None` when it does not exist.
    pub fn read_opt(&self, path: &Path) -> Result<Option<String>> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a decimal integer attribute.
    pub fn read_int<T: std::str::FromStr>(&self, path: &Path) -> Result<T> {
        let s = self.read(path)?;
        s.trim().parse().map_err(|_| SysfsError::Malformed {
            path: path.to_path_buf(),
            content: s,
            expected: "a decimal number",
        })
    }

    /// Reads a hexadecimal attribute such as `0x8086`.
    pub fn read_hex(&self, path: &Path) -> Result<u32> {
        let s = self.read(path)?;
        let digits = s.trim().trim_start_matches("0x");
        if digits.is_empty() || digits.len() > 8 {
            return Err(SysfsError::Malformed {
                path: path.to_path_buf(),
                content: s,
                expected: "a hexadecimal number such as 0x8086",
            });
        }
        u32::from_str_radix(digits, 16).map_err(|_| SysfsError::Malformed {
            path: path.to_path_buf(),
            content: s.clone(),
            expected: "a hexadecimal number such as 0x8086",
        })
    }

    /// The file name a symlink points to (`driver` -> `.../drivers/iavf` gives `iavf`);
    /// `None` when the link does not exist.
    pub fn link_name(&self, path: &Path) -> Result<Option<String>> {
        self.link_name_at(nix::fcntl::AT_FDCWD, path.as_os_str(), path)
    }

    /// Where the symlink `path` points, resolved against its folder without following any link
    /// on the way (sysfs links are relative: `../../devices/...`); `None` when it is no link.
    pub fn link_target(&self, path: &Path) -> Result<Option<PathBuf>> {
        self.count();
        let target = match fs::read_link(path) {
            Ok(t) => t,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
                ) =>
            {
                return Ok(None)
            }
            Err(source) => {
                return Err(SysfsError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut out = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        for part in target.components() {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::Normal(p) => out.push(p),
                std::path::Component::RootDir => out = PathBuf::from("/"),
                _ => {}
            }
        }
        Ok(Some(out))
    }

    /// The device folder the netdev `ifname`'s `class/net` entry sits under: the kernel links
    /// `class/net/IFNAME` to `<device folder>/net/IFNAME`, the folder the netdev's `device` link
    /// names. `None` when there is no such entry or it is not in a device's `net/` folder
    /// (virtual netdevs live under `devices/virtual/net`).
    pub fn netdev_device_dir(&self, ifname: &str) -> Result<Option<PathBuf>> {
        let Some(entry) = self.link_target(&self.root.join("class/net").join(ifname))? else {
            return Ok(None);
        };
        let net = entry
            .parent()
            .filter(|p| p.file_name() == Some("net".as_ref()));
        Ok(net.and_then(Path::parent).map(Path::to_path_buf))
    }

    /// Entry names of a folder, sorted; `None` when it does not exist.
    pub fn list(&self, path: &Path) -> Result<Option<Vec<String>>> {
        Ok(self
            .list_entries(path)?
            .map(|entries| entries.into_iter().map(|(name, _)| name).collect()))
    }

    /// Entries of a folder with whether each is a symlink, sorted; `None` when it does not exist.
    pub fn list_entries(&self, path: &Path) -> Result<Option<Vec<(String, bool)>>> {
        self.count();
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SysfsError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|source| SysfsError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            // d_type from getdents: no extra syscall.
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            out.push((entry.file_name().to_string_lossy().into_owned(), is_link));
        }
        out.sort();
        Ok(Some(out))
    }

    /// Holds the folder `path` open, so that names under it are looked up from there instead of
    /// walking the whole path again (a discovery pass reads three names under each of a PF's
    /// `virtfnN` links).
    pub fn open_dir(&self, path: &Path) -> Result<OpenDir> {
        use nix::fcntl::{open, OFlag};
        self.count();
        let fd = open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| SysfsError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(OpenDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// [`Sysfs::link_name`] of `rel` under an open folder.
    pub fn link_name_in(&self, dir: &OpenDir, rel: &str) -> Result<Option<String>> {
        self.link_name_at(&dir.fd, rel.as_ref(), &dir.path.join(rel))
    }

    fn link_name_at(
        &self,
        at: impl std::os::fd::AsFd,
        rel: &std::ffi::OsStr,
        shown: &Path,
    ) -> Result<Option<String>> {
        self.count();
        match nix::fcntl::readlinkat(at, rel) {
            Ok(target) => Ok(Path::new(&target)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(SysfsError::Io {
                path: shown.to_path_buf(),
                source: e.into(),
            }),
        }
    }

    /// [`Sysfs::exists`] of `rel` under an open folder.
    pub fn exists_in(&self, dir: &OpenDir, rel: &str) -> bool {
        self.exists_at(&dir.fd, rel.as_ref())
    }

    fn exists_at(&self, at: impl std::os::fd::AsFd, rel: &std::ffi::OsStr) -> bool {
        self.count();
        nix::sys::stat::fstatat(at, rel, nix::fcntl::AtFlags::empty()).is_ok()
    }

    /// Entries of a folder, sorted, each with where it points when it is a symlink (read
    /// relative to the open folder: one name to look up, not the whole path again); `None`
    /// when the folder does not exist.
    pub fn list_link_targets(&self, path: &Path) -> Result<Option<LinkEntries>> {
        self.list_link_targets_at(nix::fcntl::AT_FDCWD, path.as_os_str(), path)
    }

    /// [`Sysfs::list_link_targets`] of `rel` under an open folder.
    pub fn list_link_targets_in(&self, dir: &OpenDir, rel: &str) -> Result<Option<LinkEntries>> {
        self.list_link_targets_at(&dir.fd, rel.as_ref(), &dir.path.join(rel))
    }

    fn list_link_targets_at(
        &self,
        at: impl std::os::fd::AsFd,
        rel: &std::ffi::OsStr,
        shown: &Path,
    ) -> Result<Option<LinkEntries>> {
        use nix::dir::{Dir, Type};
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        use std::os::unix::ffi::OsStrExt;
        self.count();
        let err = |errno: nix::errno::Errno| SysfsError::Io {
            path: shown.to_path_buf(),
            source: errno.into(),
        };
        let mut dir = match Dir::openat(
            at,
            rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let mut links = Vec::new();
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = std::ffi::OsStr::from_bytes(name).to_os_string();
            // d_type from getdents: no extra syscall.
            if entry.file_type() == Some(Type::Symlink) {
                links.push(name);
            } else {
                out.push((name.to_string_lossy().into_owned(), None));
            }
        }
        for name in links {
            self.count();
            let target = match nix::fcntl::readlinkat(&dir, name.as_os_str()) {
                Ok(t) => Some(PathBuf::from(t)),
                // Replaced by something else, or removed, since the listing.
                Err(nix::errno::Errno::EINVAL) => None,
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(err(e)),
            };
            out.push((name.to_string_lossy().into_owned(), target));
        }
        out.sort();
        Ok(Some(out))
    }

    /// Whether a path exists (following links; a dangling link does not exist).
    pub fn exists(&self, path: &Path) -> bool {
        self.exists_at(nix::fcntl::AT_FDCWD, path.as_os_str())
    }

    /// Writes an attribute (as `echo VALUE > path`).
    pub fn write(&self, path: &Path, value: &str) -> Result<()> {
        use io::Write;
        let err = |source| SysfsError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(err)?;
        f.write_all(value.as_bytes()).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Sysfs::new(dir.path());
        fs::write(dir.path().join("vendor"), "0x8086\n").unwrap();
        fs::write(dir.path().join("numa"), "-1\n").unwrap();
        fs::write(dir.path().join("garbage"), "0xzz\n").unwrap();
        assert_eq!(sys.read_hex(&dir.path().join("vendor")).unwrap(), 0x8086);
        assert_eq!(sys.read_int::<i32>(&dir.path().join("numa")).unwrap(), -1);
        let e = sys.read_hex(&dir.path().join("garbage")).unwrap_err();
        assert!(e.to_string().contains("garbage"), "{e}");
        assert!(sys.read_opt(&dir.path().join("missing")).unwrap().is_none());
        assert!(sys
            .link_name(&dir.path().join("missing"))
            .unwrap()
            .is_none());
        assert_eq!(sys.reads(), 5);
    }
}
