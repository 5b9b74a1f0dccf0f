//! Logs go to `logFile` (appended) or stderr, never stdout (stdout carries the result). Levels as
//! sriov-cni spells them: `panic`, `error`, `warning`, `info`, `debug`.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;
use tracing::level_filters::LevelFilter;

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

/// Installs the logger. A log file that cannot be opened falls back to stderr (with a note
/// there): logging must never fail a CNI call.
pub fn init(log_level: Option<&str>, log_file: Option<&Path>) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level(log_level))
        .with_ansi(false)
        .with_target(false);
    let file = log_file.and_then(
        |p| match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "sriov: cannot open logFile {}: {e}; logging to stderr",
                    p.display()
                );
                None
            }
        },
    );
    let _ = match file {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(Some("debug")), LevelFilter::DEBUG);
        assert_eq!(level(Some("warning")), LevelFilter::WARN);
        assert_eq!(level(Some("panic")), LevelFilter::ERROR);
        assert_eq!(level(None), LevelFilter::INFO);
    }
}
