//! inotify on the folders the daemon depends on: kubelet's socket folders, the config file's
//! folder and the sysfs PF folders.
//!
//! - Kubelet restarts by removing every socket in `device-plugins/` and creating a new
//!   `kubelet.sock`: both show up here at once, no polling.
//! - Kubernetes updates a mounted ConfigMap by swapping the `..data` symlink in the config's
//!   folder (a rename): watching the folder, not the file, sees it.
//! - On real sysfs, a write to `sriov_numvfs` by a user process is an IN_MODIFY; changes the
//!   kernel makes by itself are not announced (the daemon re-discovers on link events and on its
//!   resync tick for those). On a simulated tree every change is seen.

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsEvent {
    /// A `kubelet.sock` appeared (kubelet started or restarted).
    KubeletSocketCreated,
    /// A file was removed from a socket folder.
    SocketRemoved(PathBuf),
    /// Something changed in the config file's folder.
    ConfigFolderChanged,
    /// Something changed in a watched sysfs folder.
    SysfsChanged,
    /// A CNI attachment record was written or removed (MTU locks).
    CniStateChanged,
    /// Events were lost: re-check everything.
    Overflow,
    /// The reader stopped (its stream ended, or it panicked): the watcher must be started again.
    Failed(String),
}

#[derive(Debug, Clone)]
enum Kind {
    /// `device-plugins/` (holds kubelet.sock).
    KubeletSockets(PathBuf),
    /// `plugins_registry/`.
    RegistrySockets(PathBuf),
    Config,
    Sysfs,
    CniState,
}

/// The watcher; events go to the channel given to [`FsWatcher::start`]. Dropping it stops its
/// reader.
pub struct FsWatcher {
    watches: Watches,
    kinds: Arc<Mutex<HashMap<WatchDescriptor, Kind>>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for FsWatcher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn classify(kind: &Kind, mask: EventMask, name: Option<&OsString>) -> Option<FsEvent> {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Some(FsEvent::Overflow);
    }
    if mask.contains(EventMask::IGNORED) {
        return None;
    }
    match kind {
        Kind::KubeletSockets(dir) | Kind::RegistrySockets(dir) => {
            let name = name?;
            let created = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
            let removed = mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
            if created
                && matches!(kind, Kind::KubeletSockets(_))
                && name == sriov_proto::KUBELET_SOCKET
            {
                Some(FsEvent::KubeletSocketCreated)
            } else if removed {
                Some(FsEvent::SocketRemoved(dir.join(name)))
            } else {
                None
            }
        }
        Kind::Config => Some(FsEvent::ConfigFolderChanged),
        Kind::Sysfs => Some(FsEvent::SysfsChanged),
        Kind::CniState => Some(FsEvent::CniStateChanged),
    }
}

impl FsWatcher {
    /// Starts the inotify reader task (supervised: if it ends by itself, a last
    /// [`FsEvent::Failed`] says why); `wrap` turns an [`FsEvent`] into the daemon's event type.
    pub fn start<E: Send + 'static>(
        tx: mpsc::UnboundedSender<E>,
        wrap: impl Fn(FsEvent) -> E + Send + Sync + 'static,
    ) -> std::io::Result<FsWatcher> {
        let inotify = Inotify::init()?;
        let mut stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
        let watches = stream.watches();
        let kinds: Arc<Mutex<HashMap<WatchDescriptor, Kind>>> = Default::default();
        let reader_kinds = kinds.clone();
        let wrap = Arc::new(wrap);
        let (end_tx, end_wrap) = (tx.clone(), wrap.clone());
        let reader = crate::supervise::spawn(
            async move {
                while let Some(event) = stream.next().await {
                    let event = match event {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!("inotify: {e}");
                            if tx.send(wrap(FsEvent::Overflow)).is_err() {
                                return Ok(());
                            }
                            continue;
                        }
                    };
                    let kind = reader_kinds
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&event.wd)
                        .cloned();
                    let fs_event = match kind {
                        Some(kind) => classify(&kind, event.mask, event.name.as_ref()),
                        None if event.mask.contains(EventMask::Q_OVERFLOW) => {
                            Some(FsEvent::Overflow)
                        }
                        None => None,
                    };
                    if let Some(ev) = fs_event {
                        if tx.send(wrap(ev)).is_err() {
                            return Ok(());
                        }
                    }
                }
                Err("the inotify stream ended".to_string())
            },
            move |r| match r {
                Ok(()) => {}
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    let _ = end_tx.send(end_wrap(FsEvent::Failed(e.to_string())));
                }
            },
        );
        Ok(FsWatcher {
            watches,
            kinds,
            reader,
        })
    }

    fn add(&mut self, path: &Path, mask: WatchMask, kind: Kind) -> std::io::Result<()> {
        let wd = self.watches.add(path, mask)?;
        self.kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wd, kind);
        Ok(())
    }

    /// Watches kubelet's `device-plugins/` folder.
    pub fn watch_kubelet_sockets(&mut self, dir: &Path) -> std::io::Result<()> {
        let mask =
            WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::DELETE | WatchMask::MOVED_FROM;
        self.add(dir, mask, Kind::KubeletSockets(dir.to_path_buf()))
    }

    /// Watches kubelet's `plugins_registry/` folder (our sockets there may be removed).
    pub fn watch_registry_sockets(&mut self, dir: &Path) -> std::io::Result<()> {
        self.add(
            dir,
            WatchMask::DELETE | WatchMask::MOVED_FROM,
            Kind::RegistrySockets(dir.to_path_buf()),
        )
    }

    /// Watches the folder holding the config file.
    pub fn watch_config_folder(&mut self, dir: &Path) -> std::io::Result<()> {
        let mask = WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::ATTRIB;
        self.add(dir, mask, Kind::Config)
    }

    /// Watches the CNI plugin's attachment records (written atomically: a rename).
    pub fn watch_cni_state(&mut self, dir: &Path) -> std::io::Result<()> {
        let mask = WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::DELETE;
        self.add(dir, mask, Kind::CniState)
    }

    /// Watches a sysfs folder (a PF's, `bus/pci/devices`, a driver's). Watching a folder again
    /// is harmless (the kernel hands back the same watch), so callers simply re-add after every
    /// discovery, which also re-arms folders that were removed and recreated.
    pub fn watch_sysfs(&mut self, dir: &Path) -> std::io::Result<()> {
        let mask = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE;
        self.add(dir, mask, Kind::Sysfs)
    }
}
