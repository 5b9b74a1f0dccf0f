//! The `sriov-node-state` sidecar: follows the status file the node daemon writes
//! ([`crate::status_file`]) and publishes every new status through the [`Publisher`], which
//! coalesces and rate-limits the API writes; with a DRA devices file, it follows that one too
//! and keeps the node's ResourceSlices matching it ([`SlicePublisher`]).
//!
//! The file is re-read when inotify reports it replaced (the daemon renames a new file over
//! it) or lost events, and, as a backstop, every `resync`. A missing file means the daemon has
//! not written yet; an unreadable one keeps the last good status and is logged once per distinct
//! error.

use crate::dra::DraDevices;
use crate::publisher::{Publisher, PublisherConfig};
use crate::slice_publisher::SlicePublisher;
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
    /// The DRA devices file the daemon writes in DRA mode ([`DraDevices`]); `None`: no
    /// ResourceSlices are published.
    pub dra_devices_file: Option<PathBuf>,
    pub publisher: PublisherConfig,
    /// Backstop re-read of the file.
    pub resync: Duration,
    /// Serve the node-local claim service on this socket (the daemon's DRA mode).
    pub dra_claims_socket: Option<PathBuf>,
}

/// Runs until SIGTERM or SIGINT; fails only when a file's folder cannot be watched.
pub async fn run(client: kube::Client, opts: SidecarOptions) -> Result<()> {
    let (tx, rx) = watch::channel(None);
    tracing::info!(
        node = %opts.publisher.node_name,
        file = %opts.status_file.display(),
        "publishing SriovNodeState"
    );
    let mut publisher = tokio::spawn(crate::publisher::run(
        Publisher::new(client.clone(), opts.publisher.clone()),
        rx,
    ));
    let (dra_tx, dra_rx) = watch::channel(None);
    let mut slices = match &opts.dra_devices_file {
        Some(file) => {
            tracing::info!(file = %file.display(), "publishing the node's ResourceSlices");
            tokio::spawn(crate::publisher::run(
                SlicePublisher::new(client.clone(), opts.publisher.clone()),
                dra_rx,
            ))
        }
        None => tokio::spawn(std::future::pending()),
    };
    let mut claims = match &opts.dra_claims_socket {
        Some(path) => {
            let listener = bind_claims_socket(path)?;
            tracing::info!(socket = %path.display(), "serving the claim service");
            tokio::spawn(crate::claim_service::serve(listener, client.clone()))
        }
        None => tokio::spawn(std::future::pending()),
    };
    let follow_dra = async {
        match &opts.dra_devices_file {
            Some(file) => {
                follow::<DraDevices>(file, "DRA devices file", opts.resync, &dra_tx).await
            }
            None => std::future::pending().await,
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let result = tokio::select! {
        r = follow(&opts.status_file, "node status", opts.resync, &tx) => r,
        r = follow_dra => r,
        // They only end if they panicked: exit, so the kubelet restarts the container.
        r = &mut publisher => Err(anyhow::anyhow!("the publisher stopped: {r:?}")),
        r = &mut slices => Err(anyhow::anyhow!("the ResourceSlice publisher stopped: {r:?}")),
        r = &mut claims => Err(anyhow::anyhow!("the claim service stopped: {r:?}")),
        _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); Ok(()) }
    };
    publisher.abort();
    slices.abort();
    claims.abort();
    if let Some(path) = &opts.dra_claims_socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Binds the claim service's socket in its folder (created 0755 if missing; a stale socket of
/// an earlier run replaced). The socket is 0600: only our user (the daemon runs as root) may
/// connect.
fn bind_claims_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Feeds `tx` with every new value found in `path` (a JSON hand-over file holding a `what`).
async fn follow<T>(
    path: &Path,
    what: &'static str,
    resync: Duration,
    tx: &watch::Sender<Option<T>>,
) -> Result<()>
where
    T: serde::de::DeserializeOwned + PartialEq,
{
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
        match status_file::read_json::<T>(path, what) {
            Ok(Some(value)) => {
                last_problem = None;
                tx.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&value);
                    if changed {
                        *cur = Some(value);
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
