//! Logs go to `logFile` (appended) or stderr, never stdout (stdout carries the result). Levels as
//! sriov-cni spells them: `panic`, `error`, `warning`, `info`, `debug`.
//!
//! `logFile` comes from the network config, so from a tenant: it is honoured only when it names a
//! regular file directly inside the node-local log folder (`logDir`, default `/var/log`), opened
//! relative to that folder without following symlinks and without creating folders; anything
//! else is ignored with one warning on stderr. Every line is written through
//! [`sriov::logging::Escaping`]: no logged value can add a line.

use sriov::logging::Escaping;
use sriov::owned_dir::{Access, OwnedDir};
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use tracing::level_filters::LevelFilter;

/// A value for a message or a log line, with its control characters escaped.
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    sriov::logging::escape(s)
}

fn level(name: Option<&str>) -> LevelFilter {
    match name.map(str::to_ascii_lowercase).as_deref() {
        Some("panic" | "error") => LevelFilter::ERROR,
        Some("warning" | "warn") => LevelFilter::WARN,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        Some("none" | "off") => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    }
}

/// Opens `log_file` if it names a file directly in `log_dir`; otherwise says why.
pub fn open_log_file(log_file: &Path, log_dir: &Path) -> Result<File, String> {
    let name = log_file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| sriov::names::is_plain_file_name(n));
    let (Some(name), Some(parent)) = (name, log_file.parent()) else {
        return Err("not a file name".into());
    };
    if !log_file.is_absolute() || parent != log_dir {
        return Err(format!(
            "only files directly in the node's log folder {} are written",
            log_dir.display()
        ));
    }
    OwnedDir::open(log_dir, Access::Host, false)
        .and_then(|dir| dir.open_append(name))
        .map_err(|e| e.to_string())
}

/// Installs the logger. A log file that cannot be used falls back to stderr (with one warning
/// there): logging must never fail a CNI call.
pub fn init(log_level: Option<&str>, log_file: Option<&Path>, log_dir: &Path) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level(log_level))
        .with_ansi(false)
        .with_target(false);
    let file = log_file.and_then(|p| match open_log_file(p, log_dir) {
        Ok(f) => Some(f),
        Err(why) => {
            eprintln!(
                "sriov: ignoring logFile {}: {}; logging to stderr",
                escaped(&p.to_string_lossy()),
                escaped(&why)
            );
            None
        }
    });
    let _ = match file {
        Some(f) => builder.with_writer(Escaping(Mutex::new(f))).try_init(),
        None => builder.with_writer(Escaping(std::io::stderr)).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_only_directly_in_the_log_folder() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path();
        std::fs::create_dir(logs.join("sub")).unwrap();
        let victim = logs.join("victim");
        std::fs::write(&victim, "").unwrap();
        std::os::unix::fs::symlink(&victim, logs.join("link.log")).unwrap();
        for (file, why) in [
            (
                Path::new("relative.log").to_path_buf(),
                "only files directly",
            ),
            (logs.join("sub/x.log"), "only files directly"),
            (logs.join("sub/../x.log"), "only files directly"),
            (
                Path::new("/etc/cron.d/x").to_path_buf(),
                "only files directly",
            ),
            (logs.join("link.log"), "symlink"),
            (logs.join("sub"), "directory"),
        ] {
            let e = open_log_file(&file, logs).unwrap_err();
            assert!(e.contains(why), "{}: {e}", file.display());
        }
        assert!(!logs.join("sub/x.log").exists() && !logs.join("x.log").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"");
        assert!(open_log_file(&logs.join("sriov.log"), logs).is_ok());
        assert!(logs.join("sriov.log").is_file());
    }

    #[test]
    fn levels() {
        assert_eq!(level(Some("debug")), LevelFilter::DEBUG);
        assert_eq!(level(Some("warning")), LevelFilter::WARN);
        assert_eq!(level(Some("panic")), LevelFilter::ERROR);
        assert_eq!(level(None), LevelFilter::INFO);
    }
}
