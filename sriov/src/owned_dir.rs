//! Folders this node's programs own, and the one way they create files in them.
//!
//! The CNI plugin and the daemon run as root while parts of their input come from tenants, so no
//! file is ever opened by a path a tenant could have bent. Every file is created *relative to an
//! open folder* ([`OwnedDir`]) whose owner and mode were checked once it was open (so a folder
//! swapped for a symlink afterwards changes nothing), with `O_NOFOLLOW` (a symlink planted where a
//! file will be is refused, never followed) and `O_NONBLOCK` (a FIFO planted there cannot make us
//! hang). Writes are atomic: an exclusive temporary file with an unpredictable name, then
//! `renameat`; a reader never sees half a file and nobody can pre-create the temporary file.
//!
//! Nothing is `fsync`ed. Every file written here describes kernel objects of the current boot (a
//! VF's state, an allocation, a pod's device): the page cache keeps them across a killed process,
//! and after a power loss the node reboots with fresh VFs and no pod namespaces, so there is
//! nothing a lost write could have restored.
//!
//! A process killed between creating its temporary file and renaming it leaves the temporary
//! file behind; its name carries the writer's PID, and [`OwnedDir::remove_stale_temps`] removes
//! those whose writer is gone.

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a folder or file was refused or could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Something in a folder we own that we will not use: a symlink, a file of another owner or
    /// of the wrong type, a folder others may write to.
    #[error("{path}: refused: {reason}")]
    Refused { path: PathBuf, reason: String },
}

impl FileError {
    /// The OS error behind it, if any (`ENOENT` for a missing folder, ...).
    pub fn errno(&self) -> Option<Errno> {
        match self {
            FileError::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            FileError::Refused { .. } => None,
        }
    }
}

pub type Result<T, E = FileError> = std::result::Result<T, E>;

/// Who may look into a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Ours alone (0700): the CNI's records and locks.
    Private,
    /// Readable by all, writable only by us (0755): device-info files, the node-state file.
    Shared,
    /// A folder of the host's (`/var/log`): ours, not writable by everyone. Some distributions
    /// make `/var/log` group-writable (`root:syslog 0775`); the files opened there are checked
    /// one by one instead (regular, ours, a single link).
    Host,
}

impl Access {
    fn create_mode(self) -> Mode {
        Mode::from_bits_truncate(match self {
            Access::Private => 0o700,
            Access::Shared | Access::Host => 0o755,
        })
    }

    /// Mode bits that must be clear.
    fn forbidden(self) -> u32 {
        match self {
            Access::Private => 0o077,
            Access::Shared => 0o022,
            Access::Host => 0o002,
        }
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> FileError + 'a {
    move |errno| FileError::Io {
        op,
        path: path.to_path_buf(),
        source: io::Error::from(errno),
    }
}

fn refused(path: &Path, reason: impl Into<String>) -> FileError {
    FileError::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn type_name(st: &FileStat) -> &'static str {
    match file_type(st) {
        SFlag::S_IFDIR => "a folder",
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "a regular file",
    }
}

/// Refuses what we did not create: not ours, or (for files) not a single-linked regular file.
fn check_file(path: &Path, st: &FileStat) -> Result<()> {
    if file_type(st) != SFlag::S_IFREG {
        return Err(refused(
            path,
            format!("it is {}, not a regular file", type_name(st)),
        ));
    }
    if st.st_uid != euid() {
        return Err(refused(path, format!("it is owned by uid {}", st.st_uid)));
    }
    // A hard link to a file elsewhere (made before we looked) would let a write land there.
    if st.st_nlink > 1 {
        return Err(refused(path, format!("it has {} hard links", st.st_nlink)));
    }
    Ok(())
}

/// `.NAME.PID.RANDOM.tmp`
fn temp_name(name: &str) -> String {
    let random = RandomState::new().hash_one((name, std::process::id()));
    format!(".{name}.{}.{random:016x}.tmp", std::process::id())
}

#[cfg(test)]
/// The writer's PID of a temporary file name made by [`temp_name`].
#[cfg(test)]
fn temp_writer(file: &str) -> Option<u32> {
    temp_of(file).map(|(_, pid)| pid)
}

/// The file a temporary file was for, and its writer's PID.
fn temp_of(file: &str) -> Option<(&str, u32)> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, random) = rest.rsplit_once('.')?;
    if random.len() != 16 || !random.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let (name, pid) = rest.rsplit_once('.')?;
    Some((name, pid.parse().ok()?))
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// An open folder we own.
#[derive(Debug)]
pub struct OwnedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OwnedDir {
    /// Opens `path` (a node-local setting, so its parents are trusted), creating it and any
    /// missing parents when `create` is set. The folder itself must not be a symlink, must belong
    /// to us and must not be open to others beyond `access`.
    pub fn open(path: &Path, access: Access, create: bool) -> Result<OwnedDir> {
        if !path.is_absolute() {
            return Err(refused(path, "not an absolute path"));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| FileError::Io {
                        op: "create folder",
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                match nix::unistd::mkdir(path, access.create_mode()) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_at("create folder", path)(e)),
                }
                nix::fcntl::open(path, flags, Mode::empty())
            }
            other => other,
        }
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => refused(path, "not a folder (a symlink or a file)"),
            e => io_at("open folder", path)(e),
        })?;
        let dir = OwnedDir {
            fd,
            path: path.to_path_buf(),
        };
        dir.check(access)?;
        Ok(dir)
    }

    /// The folder `name` inside this one, created (with `access`'s mode) when `create` is set.
    pub fn subdir(&self, name: &str, access: Access, create: bool) -> Result<OwnedDir> {
        let path = self.join(name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = || openat(self.fd.as_fd(), name, flags, Mode::empty());
        let fd = match open() {
            Err(Errno::ENOENT) if create => {
                match mkdirat(self.fd.as_fd(), name, access.create_mode()) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_at("create folder", &path)(e)),
                }
                open()
            }
            other => other,
        }
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => refused(&path, "not a folder (a symlink or a file)"),
            e => io_at("open folder", &path)(e),
        })?;
        let dir = OwnedDir { fd, path };
        dir.check(access)?;
        Ok(dir)
    }

    fn check(&self, access: Access) -> Result<()> {
        let st = fstat(&self.fd).map_err(io_at("stat folder", &self.path))?;
        if st.st_uid != euid() {
            return Err(refused(
                &self.path,
                format!(
                    "the folder is owned by uid {}, not by us (uid {})",
                    st.st_uid,
                    euid()
                ),
            ));
        }
        let mode = st.st_mode & 0o7777;
        if mode & access.forbidden() != 0 {
            return Err(refused(
                &self.path,
                format!(
                    "the folder's mode {mode:04o} lets others {}",
                    if access == Access::Private {
                        "in"
                    } else {
                        "write"
                    }
                ),
            ));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`, for messages; refuses names that are not plain file names.
    fn join(&self, name: &str) -> Result<PathBuf> {
        if !crate::names::is_plain_file_name(name) {
            return Err(refused(
                &self.path.join(name),
                "not a plain file name (no '/', '.' or '..')",
            ));
        }
        Ok(self.path.join(name))
    }

    /// What sits at `name` (without following a symlink there), if anything.
    fn lstat(&self, name: &str) -> Result<Option<FileStat>> {
        let path = self.join(name)?;
        match fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io_at("stat", &path)(e)),
        }
    }

    /// Whether a regular file of ours is at `name`; anything else there is an error.
    pub fn has_file(&self, name: &str) -> Result<bool> {
        match self.lstat(name)? {
            None => Ok(false),
            Some(st) => check_file(&self.join(name)?, &st).map(|()| true),
        }
    }

    /// Opens an existing file of ours at `name` with `flags` (plus no-follow, non-blocking).
    fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> Result<Option<File>> {
        let path = self.join(name)?;
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(self.fd.as_fd(), name, flags, Mode::from_bits_truncate(mode)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(refused(&path, "it is a symlink")),
            Err(e) => return Err(io_at("open", &path)(e)),
        };
        let st = fstat(&fd).map_err(io_at("stat", &path))?;
        check_file(&path, &st)?;
        Ok(Some(File::from(fd)))
    }

    /// The content of the regular file `name`, `None` if there is none.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut f) = self.open_file(name, OFlag::O_RDONLY, 0)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|source| FileError::Io {
            op: "read",
            path: self.path.join(name),
            source,
        })?;
        Ok(Some(out))
    }

    /// Replaces `name` with `content` atomically (mode `mode`). A symlink or anything but a
    /// regular file of ours at `name` is refused and left alone.
    pub fn write_atomic(&self, name: &str, content: &[u8], mode: u32) -> Result<()> {
        let path = self.join(name)?;
        if let Some(st) = self.lstat(name)? {
            check_file(&path, &st)?;
        }
        let (tmp, mut file) = self.create_temp(name, mode)?;
        let written = file
            .write_all(content)
            .map_err(|source| FileError::Io {
                op: "write",
                path: self.path.join(&tmp),
                source,
            })
            .and_then(|()| {
                renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), name)
                    .map_err(io_at("rename into place", &path))
            });
        if written.is_err() {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// A new temporary file for `name`, created exclusively (never an existing one).
    fn create_temp(&self, name: &str, mode: u32) -> Result<(String, File)> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut last = Errno::EEXIST;
        for _ in 0..8 {
            let tmp = temp_name(name);
            match openat(
                self.fd.as_fd(),
                tmp.as_str(),
                flags,
                Mode::from_bits_truncate(mode),
            ) {
                Ok(fd) => {
                    let file = File::from(fd);
                    // Explicit, so the umask does not decide.
                    file.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|source| FileError::Io {
                            op: "chmod",
                            path: self.path.join(&tmp),
                            source,
                        })?;
                    return Ok((tmp, file));
                }
                Err(Errno::EEXIST) => last = Errno::EEXIST,
                Err(e) => return Err(io_at("create", &self.path.join(&tmp))(e)),
            }
        }
        Err(io_at("create a temporary file", &self.path.join(name))(
            last,
        ))
    }

    /// Removes the file `name`; `Ok(false)` if there was none. Symlinks are removed (not
    /// followed); folders are refused.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let path = self.join(name)?;
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(io_at("remove", &path)(e)),
        }
    }

    /// Opens (creating, mode 0600) the lock file `name`, for `flock`.
    pub fn open_lock(&self, name: &str) -> Result<File> {
        self.open_file(name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?
            .ok_or_else(|| io_at("open lock", &self.path.join(name))(Errno::ENOENT))
    }

    /// Opens the file `name` for appending, creating it (mode 0640) if it does not exist.
    pub fn open_append(&self, name: &str) -> Result<File> {
        self.open_file(
            name,
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
            0o640,
        )?
        .ok_or_else(|| io_at("open", &self.path.join(name))(Errno::ENOENT))
    }

    /// Names in the folder (temporary files included), sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut dir = nix::dir::Dir::openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_at("list", &self.path))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io_at("list", &self.path))?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." {
                out.push(name.into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes temporary files whose writer is gone (killed between create and rename), and
    /// those of this process (none is in flight while the caller runs this). Returns how many.
    pub fn remove_stale_temps(&self) -> Result<usize> {
        self.remove_stale_temps_where(|_| true)
    }

    /// [`OwnedDir::remove_stale_temps`] for the temporary files of `name` only (a folder shared
    /// with other writers).
    pub fn remove_stale_temps_of(&self, name: &str) -> Result<usize> {
        self.remove_stale_temps_where(|of| of == name)
    }

    fn remove_stale_temps_where(&self, wanted: impl Fn(&str) -> bool) -> Result<usize> {
        let mut removed = 0;
        for file in self.names()? {
            let Some((of, pid)) = temp_of(&file) else {
                continue;
            };
            let stale = pid == std::process::id() || !process_alive(pid);
            if wanted(of) && stale && self.remove(&file)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_only() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn temp_names_carry_the_writer() {
        let t = temp_name("0000:3b:02.0.json");
        assert!(t.starts_with(".0000:3b:02.0.json."), "{t}");
        assert_eq!(temp_writer(&t), Some(std::process::id()));
        assert_ne!(temp_name("x"), temp_name("x"), "unpredictable");
        for other in [
            "x.json",
            ".x.json",
            ".x.12.zz.tmp",
            ".x.12.tmp",
            ".x.json.tmp",
        ] {
            assert_eq!(temp_writer(other), None, "{other}");
        }
    }

    #[test]
    fn writes_reads_replaces_and_removes() {
        let top = tempfile::tempdir().unwrap();
        let dir = OwnedDir::open(&top.path().join("a/b"), Access::Shared, true).unwrap();
        assert_eq!(
            std::fs::metadata(top.path().join("a/b"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        let sub = dir.subdir("vfs", Access::Private, true).unwrap();
        assert_eq!(sub.read("r.json").unwrap(), None);
        sub.write_atomic("r.json", b"one", 0o600).unwrap();
        sub.write_atomic("r.json", b"two", 0o600).unwrap();
        assert_eq!(sub.read("r.json").unwrap().as_deref(), Some(&b"two"[..]));
        assert!(sub.has_file("r.json").unwrap());
        assert_eq!(sub.names().unwrap(), ["r.json"], "no temporary file left");
        let mode = std::fs::metadata(sub.path().join("r.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(sub.remove("r.json").unwrap());
        assert!(!sub.remove("r.json").unwrap());
        assert!(sub.write_atomic("../x", b"", 0o600).is_err());
        assert!(sub.read("a/b").is_err());
    }

    #[test]
    fn symlinks_fifos_and_hard_links_are_refused_never_followed() {
        let top = tempfile::tempdir().unwrap();
        let dir = OwnedDir::open(top.path(), Access::Shared, false).unwrap();
        let victim = top.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        symlink(&victim, top.path().join("link")).unwrap();
        for r in [
            dir.read("link").map(|_| ()),
            dir.write_atomic("link", b"evil", 0o600),
            dir.open_lock("link").map(|_| ()),
            dir.open_append("link").map(|_| ()),
        ] {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("symlink"), "{e}");
        }
        // A dangling link is not created through either.
        symlink(top.path().join("made"), top.path().join("dangling")).unwrap();
        assert!(dir.open_lock("dangling").is_err());
        assert!(!top.path().join("made").exists());
        nix::unistd::mkfifo(&top.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        // Opening it to write fails at once (ENXIO: no reader), to read it is refused: no hang.
        assert!(dir.open_append("fifo").is_err());
        let e = dir.read("fifo").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        std::fs::hard_link(&victim, top.path().join("hard")).unwrap();
        let e = dir.write_atomic("hard", b"evil", 0o600).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // A folder that is a symlink is refused too.
        symlink(top.path(), top.path().join("dirlink")).unwrap();
        let e = dir.subdir("dirlink", Access::Shared, false).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
        let e = OwnedDir::open(&top.path().join("dirlink"), Access::Shared, false).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
    }

    #[test]
    fn loose_or_foreign_folders_are_refused() {
        let top = tempfile::tempdir().unwrap();
        let loose = top.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = OwnedDir::open(&loose, Access::Shared, false).unwrap_err();
        assert!(e.to_string().contains("lets others write"), "{e}");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(OwnedDir::open(&loose, Access::Shared, false).is_ok());
        let e = OwnedDir::open(&loose, Access::Private, false).unwrap_err();
        assert!(e.to_string().contains("lets others in"), "{e}");
        if root_only() {
            let nobody = nix::unistd::Uid::from_raw(65534);
            nix::unistd::chown(&loose, Some(nobody), None).unwrap();
            let e = OwnedDir::open(&loose, Access::Shared, false).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            let dir = OwnedDir::open(top.path(), Access::Shared, false).unwrap();
            std::fs::write(top.path().join("theirs"), "x").unwrap();
            nix::unistd::chown(&top.path().join("theirs"), Some(nobody), None).unwrap();
            let e = dir.read("theirs").unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn stale_temporary_files_are_removed_live_ones_kept() {
        let top = tempfile::tempdir().unwrap();
        let dir = OwnedDir::open(top.path(), Access::Shared, false).unwrap();
        // A writer that died (a finished child), this process, and a live one (our parent).
        let dead = std::process::Command::new("true")
            .spawn()
            .and_then(|mut c| c.wait().map(|_| c.id()))
            .unwrap();
        let live = nix::unistd::getppid().as_raw() as u32;
        for pid in [dead, std::process::id(), live] {
            std::fs::write(
                top.path()
                    .join(format!(".r.json.{pid}.0123456789abcdef.tmp")),
                "",
            )
            .unwrap();
        }
        std::fs::write(top.path().join("r.json"), "").unwrap();
        let other = format!(".other.json.{dead}.0123456789abcdef.tmp");
        std::fs::write(top.path().join(&other), "").unwrap();
        assert_eq!(dir.remove_stale_temps_of("r.json").unwrap(), 2);
        assert!(
            dir.has_file(&other).unwrap(),
            "another file's temporary file is kept"
        );
        dir.remove(&other).unwrap();
        assert_eq!(dir.remove_stale_temps().unwrap(), 0);
        assert_eq!(
            dir.names().unwrap(),
            [
                format!(".r.json.{live}.0123456789abcdef.tmp"),
                "r.json".into()
            ]
        );
    }
}
