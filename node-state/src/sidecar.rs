//! The `sriov-node-state` sidecar: follows the status file the node daemon writes
//! ([`crate::status_file`]) and publishes every new status through the [`Publisher`], which
//! coalesces and rate-limits the API writes.
//!
//! The file is re-read when inotify reports it replaced (the daemon renames a new file over
//! it) or lost events, and, as a backstop, every `resync`. A missing file means the daemon has
//! not written yet; an unreadable one keeps the last good status and is logged once per distinct
//! error.

use crate::publisher::{Publisher, PublisherConfig};
use crate::status::SriovNodeStateStatus;
use crate::status_file;
use anyhow::{Context, Result};
use inotify::{Inotify, WatchMask};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// What the sidecar is told on its command line.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// The file the daemon writes (`--node-state-file` of `sriov-device-plugin run`).
    pub status_file: PathBuf,
    pub publisher: PublisherConfig,
    /// Backstop re-read of the file.
    pub resync: Duration,
}

/// Runs until SIGTERM or SIGINT; fails only when the file's folder cannot be watched.
pub async fn run(client: kube::Client, opts: SidecarOptions) -> Result<()> {
    let (tx, rx) = watch::channel(None);
    tracing::info!(
        node = %opts.publisher.node_name,
        file = %opts.status_file.display(),
        "publishing SriovNodeState"
    );
    let mut publisher = tokio::spawn(crate::publisher::run(
        Publisher::new(client, opts.publisher.clone()),
        rx,
    ));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let result = tokio::select! {
        r = follow(&opts.status_file, opts.resync, &tx) => r,
        // It only ends if it panicked: exit, so the kubelet restarts the container.
        r = &mut publisher => Err(anyhow::anyhow!("the publisher stopped: {r:?}")),
        _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); Ok(()) }
    };
    publisher.abort();
    result
}

/// Feeds `tx` with every new status found in `path`.
async fn follow(
    path: &Path,
    resync: Duration,
    tx: &watch::Sender<Option<SriovNodeStateStatus>>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?
        .to_owned();
    let inotify = Inotify::init().context("inotify")?;
    // The daemon makes the file's folder (its own, inside the shared volume) on its first write:
    // until then there is nothing to watch.
    let mut said = false;
    loop {
        match inotify.watches().add(
            dir,
            WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::CREATE,
        ) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !said {
                    tracing::info!(folder = %dir.display(), "waiting for the daemon to create it");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("watching {}", dir.display())),
        }
    }
    let mut events = inotify
        .into_event_stream(vec![0u8; 4096])
        .context("inotify")?;
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_problem: Option<String> = None;
    loop {
        match status_file::read(path) {
            Ok(Some(status)) => {
                last_problem = None;
                tx.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&status);
                    if changed {
                        *cur = Some(status);
                    }
                    changed
                });
            }
            Ok(None) => {
                if last_problem.is_none() {
                    // The usual start: the sidecar is up before the daemon's first write.
                    tracing::info!(file = %path.display(), "waiting for the daemon to write it");
                    last_problem = Some(String::new());
                }
            }
            Err(e) => report(&mut last_problem, e.to_string(), path),
        }
        // Wait for our file to be replaced, or for the backstop tick.
        loop {
            tokio::select! {
                _ = tick.tick() => break,
                event = events.next() => match event {
                    Some(Ok(e)) if e.name.as_deref() == Some(name.as_os_str()) => break,
                    // Overflow (events lost) or the folder went away: look now.
                    Some(Ok(e)) if e.name.is_none() => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("inotify: {e}; re-reading in a second");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                    None => anyhow::bail!("inotify stream ended"),
                },
            }
        }
    }
}

/// Logs a problem with the file once, not at every re-read.
fn report(last: &mut Option<String>, problem: String, path: &Path) {
    if last.as_deref() != Some(problem.as_str()) {
        tracing::warn!(file = %path.display(), "{problem}");
        *last = Some(problem);
    }
}
