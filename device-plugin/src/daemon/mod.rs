//! The daemon: one task owns all state and reacts to events (link notifications, inotify,
//! finished discoveries, signals); pool servers only read the snapshots it publishes.
//!
//! Nothing here exits on a transient error: a socket that cannot be bound, a registration that
//! fails, a discovery that finds garbage are logged, counted, and retried on the next event or
//! resync tick.

use crate::fswatch::{FsEvent, FsWatcher};
use crate::metrics::{self, Metrics};
use crate::options::{socket_name, Options, RegistrationMode};
use crate::plugin_server::PluginServer;
use crate::pool::{Context, PoolShared, PoolSnapshot};
use crate::registration;
use sriov::config::{Config, ConfigError};
use sriov::discovery::{DiscoveryError, Node};
use sriov::health::{refresh_links, track_pool, LinkState, Links, TrackedDevice};
use sriov::linkwatch::{LinkUpdate, LinkWatcher};
use sriov::names::PciAddress;
use sriov::pools::{self, Pool};
use sriov::provision::{self, WaitPolicy};
use sriov::sysfs::Sysfs;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

mod node;
mod servers;

use node::discover;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid config {path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("cannot create {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start: {what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Wait after a sysfs or link event before discovering, so a burst is one discovery.
const DISCOVERY_DEBOUNCE: Duration = Duration::from_millis(30);
/// Wait after a config folder event: a ConfigMap update is several renames.
const CONFIG_DEBOUNCE: Duration = Duration::from_millis(50);
/// Retry delay for a failed link watcher.
const LINKWATCH_RETRY: Duration = Duration::from_secs(1);
/// Wait after a change before writing the node-state file: kubelet's updates go out first, and
/// a burst of link events is one write.
const NODE_STATE_DEBOUNCE: Duration = Duration::from_millis(100);

/// What the main loop reacts to.
pub enum Event {
    Link(Result<LinkUpdate, String>),
    Fs(FsEvent),
    Discovered(Box<Result<Discovered, DiscoveryError>>),
    Provisioned,
    Uevent(crate::uevent::Uevent),
}

pub struct Discovered {
    node: Node,
    default_routes: Vec<String>,
    took: Duration,
}

struct PoolRuntime {
    shared: Arc<PoolShared>,
    tx: watch::Sender<Arc<PoolSnapshot>>,
    socket: PathBuf,
    server: Option<PluginServer>,
    registration: Option<JoinHandle<()>>,
}

/// The daemon's state, owned by the main loop.
pub struct Daemon {
    opts: Options,
    mode: RegistrationMode,
    ctx: Arc<Context>,
    config: Config,
    /// Text of the running config; None while running the zero config for a missing file.
    config_text: Option<String>,
    rejected_text: Option<String>,
    node: Node,
    default_routes: Vec<String>,
    links: Links,
    /// Last known netdev of each PF, so a PF whose netdev vanished is still judged by it.
    pf_names: BTreeMap<PciAddress, String>,
    pools: BTreeMap<String, PoolRuntime>,
    tx: mpsc::UnboundedSender<Event>,
    fs: Option<FsWatcher>,
    discovery_due: Option<Instant>,
    discovery_running: bool,
    discovery_again: bool,
    config_due: Option<Instant>,
    linkwatch_due: Option<Instant>,
    node_state_due: Option<Instant>,
    provisioning_running: bool,
    provisioning_again: bool,
    /// The last error worth showing in the cluster (rejected config, failed discovery).
    last_error: Option<String>,
    /// Publishes SriovNodeState when running in a cluster.
    node_state: Option<crate::node_state::NodeState>,
    mtu_locks: crate::mtu_locks::MtuLocks,
}

/// Loads the config at start: a missing file is the zero config.
fn load_initial_config(opts: &Options) -> Result<(Config, Option<String>), DaemonError> {
    let err = |source| DaemonError::Config {
        path: opts.config.clone(),
        source,
    };
    match std::fs::read_to_string(&opts.config) {
        Ok(text) => Ok((
            Config::parse(&text, &opts.resource_prefix).map_err(err)?,
            Some(text),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "config {} does not exist: serving one pool per SR-IOV PF until it appears",
                opts.config.display()
            );
            Ok((
                Config::parse("{}", &opts.resource_prefix).map_err(err)?,
                None,
            ))
        }
        Err(source) => Err(err(ConfigError::Read {
            path: opts.config.display().to_string(),
            source,
        })),
    }
}

impl Daemon {
    fn new(opts: Options, tx: mpsc::UnboundedSender<Event>) -> Result<Daemon, DaemonError> {
        let (config, config_text) = load_initial_config(&opts)?;
        for w in &config.warnings {
            tracing::warn!("config: {w}");
        }
        let ctx = Arc::new(Context {
            sysfs: Sysfs::new(&opts.sysfs_root),
            dev_root: opts.dev_root.clone(),
            devinfo_dir: opts.devinfo_dir.clone(),
            metrics: Arc::new(Metrics::default()),
        });
        let mtu_locks = crate::mtu_locks::MtuLocks::new(&opts.cni_state_dir, ctx.metrics.clone());
        Ok(Daemon {
            mode: opts.effective_registration(),
            opts,
            ctx,
            config,
            config_text,
            rejected_text: None,
            node: Node::default(),
            default_routes: Vec::new(),
            links: Links::default(),
            pf_names: BTreeMap::new(),
            pools: BTreeMap::new(),
            tx,
            fs: None,
            discovery_due: None,
            discovery_running: false,
            discovery_again: false,
            config_due: None,
            linkwatch_due: None,
            node_state_due: None,
            provisioning_running: false,
            provisioning_again: false,
            last_error: None,
            node_state: None,
            mtu_locks,
        })
    }

    fn start_fs_watcher(&mut self) -> Result<(), DaemonError> {
        let mut fs =
            FsWatcher::start(self.tx.clone(), Event::Fs).map_err(|source| DaemonError::Start {
                what: "inotify",
                source,
            })?;
        let dp_dir = self.opts.device_plugin_dir();
        fs.watch_kubelet_sockets(&dp_dir)
            .map_err(|source| DaemonError::Start {
                what: "watching the device plugin folder",
                source,
            })?;
        if self.mode == RegistrationMode::PluginWatcher {
            let dir = self.opts.plugins_registry_dir();
            fs.watch_registry_sockets(&dir)
                .map_err(|source| DaemonError::Start {
                    what: "watching the plugins_registry folder",
                    source,
                })?;
        }
        match self.opts.config.parent() {
            Some(dir) if dir.is_dir() => {
                if let Err(e) = fs.watch_config_folder(dir) {
                    tracing::error!(
                        "cannot watch {}: {e}; config changes are seen on resync only",
                        dir.display()
                    );
                }
            }
            _ => tracing::warn!(
                "the config's folder does not exist; config changes are seen on resync only"
            ),
        }
        self.fs = Some(fs);
        Ok(())
    }

    fn start_link_watcher(&mut self) {
        let tx = self.tx.clone();
        let started = LinkWatcher::open(self.opts.netns.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|w| {
                sriov::linkwatch::spawn(w, move |u| {
                    tx.send(Event::Link(u.map_err(|e| e.to_string()))).is_ok()
                })
                .map_err(|e| e.to_string())
            });
        if let Err(e) = started {
            tracing::error!(
                "link notifications unavailable ({e}); health follows sysfs at discovery, retrying"
            );
            self.ctx.metrics.error("linkwatch");
            self.linkwatch_due = Some(Instant::now() + LINKWATCH_RETRY);
        }
    }

    fn refresh_health(&mut self, netdev: Option<&str>) {
        for rt in self.pools.values() {
            if netdev.is_some_and(|n| !rt.uses_pf(n)) {
                continue;
            }
            let mut snapshot = (*rt.current()).clone();
            if refresh_links(&mut snapshot.devices, &self.links) {
                for t in &snapshot.devices {
                    if let sriov::health::Health::Unhealthy(why) = &t.health {
                        tracing::debug!(pool = %rt.shared.name, device = %t.device.pci, "unhealthy: {why}");
                    }
                }
                let (healthy, unhealthy) = snapshot.counts();
                tracing::info!(pool = %rt.shared.name, healthy, unhealthy, "device health changed");
                rt.publish(snapshot, &self.ctx.metrics);
            }
        }
    }

    fn on_link(&mut self, update: Result<LinkUpdate, String>) {
        match update {
            Ok(LinkUpdate::Snapshot(links)) => {
                let mut l = Links::complete(links.iter().map(|l| (l.name.clone(), l.state())));
                std::mem::swap(&mut l, &mut self.links);
                // Keep the sysfs states gathered so far.
                let fallback: Vec<(String, LinkState)> = self
                    .node
                    .devices
                    .iter()
                    .filter_map(|pf| {
                        pf.netdevs
                            .first()
                            .map(|n| (n.name.clone(), LinkState::from_sysfs(n)))
                    })
                    .collect();
                self.links.set_fallback(fallback);
                tracing::debug!(links = links.len(), "link snapshot");
                self.refresh_health(None);
            }
            Ok(LinkUpdate::Changed(link)) => {
                self.ctx.metrics.link_event();
                let known = self.links.get(&link.name).is_some();
                if self.links.set(&link.name, link.state()) {
                    self.refresh_health(Some(&link.name));
                }
                if !known {
                    // A new netdev: possibly new VFs or a PF driver coming back.
                    self.schedule_discovery(DISCOVERY_DEBOUNCE);
                }
            }
            Ok(LinkUpdate::Deleted(link)) => {
                self.ctx.metrics.link_event();
                if self.links.remove(&link.name) {
                    self.refresh_health(Some(&link.name));
                }
                self.schedule_discovery(DISCOVERY_DEBOUNCE);
            }
            Err(e) => {
                self.ctx.metrics.error("linkwatch");
                tracing::error!("link notifications stopped: {e}; restarting them");
                self.links = Links::partial([]);
                self.linkwatch_due = Some(Instant::now() + LINKWATCH_RETRY);
                self.schedule_discovery(Duration::ZERO);
            }
        }
    }

    /// Re-reads the config file; applies it when it changed and is valid.
    fn check_config(&mut self) {
        self.config_due = None;
        let path = &self.opts.config;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.config_text.is_some() && self.rejected_text.as_deref() != Some("") {
                    tracing::warn!(
                        "config {} disappeared; keeping the running config",
                        path.display()
                    );
                    self.rejected_text = Some(String::new());
                }
                return;
            }
            Err(e) => {
                self.ctx.metrics.error("config_read");
                tracing::error!(
                    "cannot read config {}: {e}; keeping the running config",
                    path.display()
                );
                return;
            }
        };
        if self.config_text.as_ref() == Some(&text) || self.rejected_text.as_ref() == Some(&text) {
            return;
        }
        match Config::parse(&text, &self.opts.resource_prefix) {
            Err(e) => {
                self.ctx.metrics.reconfiguration("rejected");
                tracing::error!(
                    "refusing the new config {}: {e}; the running config stays",
                    path.display()
                );
                self.last_error = Some(format!("config {} refused: {e}", path.display()));
                self.rejected_text = Some(text);
            }
            Ok(config) => {
                for w in &config.warnings {
                    tracing::warn!("config: {w}");
                }
                self.ctx.metrics.reconfiguration("applied");
                tracing::info!("config {} changed: applying it", path.display());
                self.config = config;
                self.config_text = Some(text);
                self.rejected_text = None;
                self.last_error = None;
                self.start_discovery();
                self.start_provisioning();
            }
        }
    }

    /// The backstop: sockets, config and sysfs re-checked even if no event said so.
    async fn resync(&mut self) {
        let stale: Vec<String> = self
            .pools
            .iter()
            .filter(|(_, rt)| Self::server_needs_restart(rt))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.restart_server(&name).await;
        }
        self.check_config();
        self.schedule_discovery(Duration::ZERO);
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Link(u) => self.on_link(u),
            Event::Fs(FsEvent::KubeletSocketCreated) => self.on_kubelet_socket().await,
            Event::Fs(FsEvent::SocketRemoved(path)) => self.on_socket_removed(&path).await,
            Event::Fs(FsEvent::ConfigFolderChanged) => {
                let at = Instant::now() + CONFIG_DEBOUNCE;
                self.config_due = Some(self.config_due.map_or(at, |d| d.min(at)));
            }
            Event::Fs(FsEvent::SysfsChanged) => self.schedule_discovery(DISCOVERY_DEBOUNCE),
            Event::Fs(FsEvent::CniStateChanged) => self.mtu_locks.reconcile(),
            Event::Uevent(e) => {
                tracing::debug!(action = %e.action, subsystem = %e.subsystem, devpath = %e.devpath, "uevent");
                self.schedule_discovery(DISCOVERY_DEBOUNCE);
            }
            Event::Fs(FsEvent::Overflow) => self.resync().await,
            Event::Discovered(result) => {
                self.discovery_running = false;
                self.apply_discovery(*result).await;
                if std::mem::take(&mut self.discovery_again) {
                    self.start_discovery();
                }
            }
            Event::Provisioned => {
                self.provisioning_running = false;
                self.schedule_discovery(Duration::ZERO);
                if std::mem::take(&mut self.provisioning_again) {
                    self.start_provisioning();
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.discovery_due,
            self.config_due,
            self.linkwatch_due,
            self.node_state_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs what is due; returns whether any of it may have changed the node's state.
    fn on_timers(&mut self) -> bool {
        let now = Instant::now();
        let mut changed = false;
        if self.config_due.is_some_and(|t| t <= now) {
            self.check_config();
            changed = true;
        }
        if self.discovery_due.is_some_and(|t| t <= now) {
            self.start_discovery();
            changed = true;
        }
        if self.linkwatch_due.is_some_and(|t| t <= now) {
            self.linkwatch_due = None;
            self.start_link_watcher();
            changed = true;
        }
        if self.node_state_due.is_some_and(|t| t <= now) {
            self.node_state_due = None;
            self.publish_node_state();
        }
        changed
    }

    /// Writes the node-state file soon (once for a burst of changes).
    fn node_state_soon(&mut self) {
        if self.node_state.is_some() && self.node_state_due.is_none() {
            self.node_state_due = Some(Instant::now() + NODE_STATE_DEBOUNCE);
        }
    }

    /// Writes the current state to the node-state file, if there is one.
    fn publish_node_state(&mut self) {
        if let Some(ns) = &mut self.node_state {
            let snapshots: Vec<_> = self.pools.values().map(|rt| rt.shared.current()).collect();
            let links = &self.links;
            let new_failure = ns.update(
                &self.node,
                snapshots.iter().map(|s| &**s),
                self.config.resources.is_none(),
                self.last_error.clone(),
                &|name| links.get(name).map(|l| l.admin_up && l.carrier),
            );
            if new_failure {
                self.ctx.metrics.error("node_state");
            }
        }
    }

    /// Enforces the MTU locks recorded now, and watches for new ones (the state folder may only
    /// appear with the first CNI ADD: retried on every resync).
    fn check_mtu_locks(&mut self) {
        let dir = self.mtu_locks.records_dir();
        // The CNI creates it at its first ADD; creating it first lets the watch start now.
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
            {
                tracing::debug!("cannot create {}: {e}", dir.display());
            }
        }
        if let Some(fs) = &mut self.fs {
            if dir.is_dir() {
                if let Err(e) = fs.watch_cni_state(&dir) {
                    tracing::debug!("cannot watch {}: {e}", dir.display());
                }
            }
        }
        self.mtu_locks.reconcile();
    }

    async fn shutdown(&mut self) {
        self.mtu_locks.stop();
        let pools = std::mem::take(&mut self.pools);
        for (name, rt) in pools {
            tracing::info!(pool = %name, "stopping");
            self.stop_pool(rt).await;
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; then deregisters (removes its sockets), removes its
/// device-information files and returns.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut d = Daemon::new(opts, tx)?;
    let socket_dir = d.opts.socket_dir(d.mode);
    for dir in [d.opts.device_plugin_dir(), socket_dir] {
        std::fs::create_dir_all(&dir).map_err(|source| DaemonError::Folder {
            path: dir.clone(),
            source,
        })?;
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| DaemonError::Start {
        what: "SIGTERM handler",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Start {
        what: "SIGINT handler",
        source,
    })?;
    d.start_fs_watcher()?;
    d.start_link_watcher();
    d.check_mtu_locks();
    let uevents = d.tx.clone();
    if let Err(e) = crate::uevent::spawn(move |e| uevents.send(Event::Uevent(e)).is_ok()) {
        tracing::warn!(
            "kernel uevents unavailable ({e}); kernel-made sysfs changes are seen on resync only"
        );
    }

    let (sysfs, config, netns) = (d.ctx.sysfs.clone(), d.config.clone(), d.opts.netns.clone());
    let first = tokio::task::spawn_blocking(move || discover(&sysfs, &config, netns.as_deref()))
        .await
        .unwrap_or_else(|e| Err(DiscoveryError::NoPciBus(format!("discovery panicked: {e}"))));
    d.apply_discovery(first).await;
    d.start_provisioning();
    tracing::info!(
        pools = d.pools.len(),
        mode = ?d.mode,
        took = ?started.elapsed(),
        "sriov-device-plugin running"
    );

    d.node_state = d
        .opts
        .node_state_file
        .clone()
        .map(|file| crate::node_state::NodeState::new(file, &d.opts.kubelet_dir));
    if let Some(ns) = &mut d.node_state {
        ns.refresh_allocations().await;
    }
    d.publish_node_state();

    let (stop_metrics, stop_rx) = watch::channel(false);
    if let Some(addr) = d.opts.metrics_address {
        match metrics::serve(addr, d.ctx.metrics.clone(), stop_rx).await {
            Ok(bound) => tracing::info!("metrics on http://{bound}/metrics"),
            Err(e) => {
                d.ctx.metrics.error("metrics");
                tracing::error!("cannot serve metrics on {addr}: {e}");
            }
        }
    }

    let mut tick = tokio::time::interval(d.opts.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        d.ctx.metrics.beat();
        let deadline = d
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let changed = tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break }
            event = rx.recv() => match event {
                Some(e) => { d.handle(e).await; true }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => d.on_timers(),
            _ = tick.tick() => {
                d.resync().await;
                d.check_mtu_locks();
                if let Some(ns) = &mut d.node_state {
                    ns.refresh_allocations().await;
                }
                true
            }
        };
        if changed {
            d.node_state_soon();
        }
    }
    d.shutdown().await;
    let _ = stop_metrics.send(true);
    tracing::info!("stopped");
    Ok(())
}
