//! The hand-over between the node daemon and the `sriov-node-state` sidecar: the daemon writes
//! the node's [`SriovNodeStateStatus`] as JSON to a file in a folder both containers mount (an
//! `emptyDir`); the sidecar follows the file and publishes it.
//!
//! Writes are atomic (a temporary file in the same folder, then `rename`), so a reader sees the
//! previous status or the new one, never half of one. The daemon writes only when the status
//! changed.

use crate::status::SriovNodeStateStatus;
use std::io::Write;
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

/// Replaces `path` with `status` atomically (the folder must exist). The file is world-readable
/// (0644): the sidecar runs as another user.
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
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().ok_or_else(|| StatusFileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    // Ours alone (the process id), created fresh (O_EXCL: never through a symlink left there).
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let body = serde_json::to_vec(value).map_err(|source| StatusFileError::Parse {
        path: path.to_path_buf(),
        what,
        source,
    })?;
    // A previous process with our id (containers restart as pid 1) may have died mid-write.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&tmp)(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    let written = file
        .write_all(&body)
        .and_then(|()| file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644)));
    drop(file);
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(path)(e)
        })
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
        let stale = dir
            .path()
            .join(format!(".node-state.json.{}.tmp", std::process::id()));
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
        assert!(write(
            &dir.path().join("no/such/dir/x.json"),
            &SriovNodeStateStatus::default()
        )
        .is_err());
    }
}
