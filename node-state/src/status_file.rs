//! The hand-over between the node daemon and the `sriov-node-state` sidecar: the daemon writes
//! the node's [`SriovNodeStateStatus`] as JSON to a file in a folder both containers mount (an
//! `emptyDir`); the sidecar follows the file and publishes it.
//!
//! Writes go through [`sriov::owned_dir`]: atomic (a reader sees the previous status or the new
//! one, never half of one), without following symlinks, into a folder the daemon owns and nobody
//! else may write to. The shared `emptyDir` itself is world-writable (kubelet makes it 0777), so
//! the file lives in a folder of its own inside it, which the daemon creates. The daemon writes
//! only when the status changed.

use crate::status::SriovNodeStateStatus;
use std::path::{Path, PathBuf};

/// Reading or writing the status file failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    File(#[from] sriov::owned_dir::FileError),
    #[error("{path}: not a {what}: {source}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StatusFileError + '_ {
    move |source| StatusFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` with `status` atomically; its folder is created (0755) if needed and must be
/// ours. The file is world-readable (0644): the sidecar runs as another user.
pub fn write(path: &Path, status: &SriovNodeStateStatus) -> Result<(), StatusFileError> {
    write_json(path, status, NODE_STATUS)
}

/// The status in `path`; `None` while the file does not exist.
pub fn read(path: &Path) -> Result<Option<SriovNodeStateStatus>, StatusFileError> {
    read_json(path, NODE_STATUS)
}

const NODE_STATUS: &str = "node status";

/// [`write`] for any hand-over file (e.g. the DRA devices, [`crate::dra::DraDevices`]); `what`
/// names its content in errors.
pub fn write_json<T: serde::Serialize>(
    path: &Path,
    value: &T,
    what: &'static str,
) -> Result<(), StatusFileError> {
    let body = serde_json::to_vec(value).map_err(|source| StatusFileError::Parse {
        path: path.to_path_buf(),
        what,
        source,
    })?;
    write_bytes(path, &body)
}

/// [`write_json`] for a body already serialized.
pub fn write_bytes(path: &Path, body: &[u8]) -> Result<(), StatusFileError> {
    use sriov::owned_dir::{Access, OwnedDir};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(StatusFileError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        });
    };
    let folder = OwnedDir::open(dir, Access::Shared, true)?;
    // A previous daemon (containers restart as pid 1) may have died mid-write.
    let _ = folder.remove_stale_temps();
    folder.write_atomic(name, body, 0o644)?;
    Ok(())
}

/// [`read`] for any hand-over file.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>, StatusFileError> {
    let body = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|source| StatusFileError::Parse {
            path: path.to_path_buf(),
            what,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PoolStatus;

    #[test]
    fn round_trip_and_missing_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-state.json");
        assert!(read(&path).unwrap().is_none());
        let status = SriovNodeStateStatus {
            pools: vec![PoolStatus {
                name: "intel.com/a".into(),
                vfs: 4,
                healthy: 3,
                allocated: 1,
            }],
            last_error: Some("config refused".into()),
            ..Default::default()
        };
        write(&path, &status).unwrap();
        assert_eq!(read(&path).unwrap(), Some(status));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "readable by the sidecar's user");
        // A temporary file left by a dead writer with our process id is replaced.
        let stale = dir.path().join(format!(
            ".node-state.json.{}.0123456789abcdef.tmp",
            std::process::id()
        ));
        std::fs::write(&stale, "half").unwrap();
        write(&path, &SriovNodeStateStatus::default()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(SriovNodeStateStatus::default()));
        // Only the file itself is left: the temporary one was renamed over it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node-state.json")]);
        std::fs::write(&path, "{\"pools\": 7}").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("not a node status"), "{err}");
        // Its own folder is made inside a shared one; a folder others may write to is refused
        // (an emptyDir is 0777), and so is a symlink where the file goes.
        let own = dir.path().join("daemon/node-state.json");
        write(&own, &SriovNodeStateStatus::default()).unwrap();
        std::fs::set_permissions(dir.path().join("daemon"), PermissionsExt::from_mode(0o777))
            .unwrap();
        let err = write(&own, &SriovNodeStateStatus::default()).unwrap_err();
        assert!(err.to_string().contains("lets others write"), "{err}");
        std::fs::set_permissions(dir.path().join("daemon"), PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::remove_file(&own).unwrap();
        std::os::unix::fs::symlink(&path, &own).unwrap();
        let err = write(&own, &SriovNodeStateStatus::default()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }
}
