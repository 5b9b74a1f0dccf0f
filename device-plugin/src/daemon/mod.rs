//! The daemon: one task owns all state and reacts to events (link notifications, inotify,
//! finished work, signals); pool servers only read the snapshots it publishes.
//!
//! Nothing here exits on a transient error. Every piece of work the loop starts (discovery,
//! provisioning, node-state writes, registrations, pool servers, the link watcher, MTU lock
//! watchers) reports how it ended, panics included ([`crate::supervise`]); a failure is
//! counted (`sriov_dp_errors_total{kind}`), logged, shown as the node's `lastError`, and
//! retried with backoff by the loop's [`Scheduler`].

use crate::fswatch::{FsEvent, FsWatcher};
use crate::metrics::{ErrorKind, Metrics};
use crate::options::{Options, RegistrationMode};
use crate::pool::{Context, PoolShared, PoolSnapshot};
use crate::probes::Probes;
use crate::scheduler::Scheduler;
use crate::supervise::TaskError;
use sriov::config::{Config, ConfigError};
use sriov::discovery::{DiscoveryError, Node, UplinkError};
use sriov::health::Links;
use sriov::linkwatch::{LinkUpdate, LinkWatchError};
use sriov::names::PciAddress;
use sriov::sysfs::Sysfs;
use sriov_node_state::SriovNodeStateStatus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

mod config;
mod dra;
mod jobs;
mod links;
mod node;
mod problems;
mod servers;

use config::ConfigFile;
use problems::Problems;

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
    #[error("DRA: {0}")]
    Dra(String),
    #[error("cannot use the CDI folder: {0}")]
    Cdi(#[source] sriov::cdi::CdiError),
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
/// Wait after a change before writing the node-state file: kubelet's updates go out first, and
/// a burst of link events is one write.
const NODE_STATE_DEBOUNCE: Duration = Duration::from_millis(100);

/// What the main loop reacts to.
pub enum Event {
    Link(LinkUpdate),
    /// The link watcher ended (its socket failed, or it panicked).
    LinkWatchEnded(Result<(), TaskError<LinkWatchError>>),
    Fs(FsEvent),
    Uevent(crate::uevent::Uevent),
    Discovered(Box<Result<Discovered, TaskError<DiscoveryError>>>),
    /// Provisioning ended: `Failed` lists what could not be set.
    Provisioned(Result<(), TaskError<Vec<String>>>),
    /// A node-state write ended: the status now in the file, or why not.
    NodeStateWritten(Result<Box<SriovNodeStateStatus>, TaskError<String>>),
    /// A registration of `pool` ended (through kubelet.sock, or the plugin watcher's status).
    Registered {
        pool: String,
        generation: u64,
        result: Result<(), TaskError<String>>,
    },
    /// A pool's gRPC server ended by itself.
    ServerEnded {
        pool: String,
        generation: u64,
        error: String,
    },
    /// Allocate found a device of `pool` gone from sysfs.
    DeviceGone {
        pool: String,
        pci: PciAddress,
    },
    MtuLock(crate::mtu_locks::Ended),
    /// The uevent listener stopped.
    UeventEnded(String),
    /// A metrics (`metrics: true`) or probe listener stopped.
    HttpEnded {
        metrics: bool,
        why: String,
    },
    /// From the DRA servers.
    Dra(crate::dra::server::DraEvent),
}

pub struct Discovered {
    node: Node,
    uplinks: Result<Vec<String>, UplinkError>,
    took: Duration,
}

/// What the loop schedules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    /// Makes the loop turn (and so beat) at least this often, whatever the resync interval.
    Heartbeat,
    /// The backstop re-check of sockets, config, sysfs and MTU locks.
    Resync,
    Config,
    Discovery,
    Provisioning,
    LinkWatch,
    NodeState,
    MtuLocks,
    /// Restart the inotify watcher.
    FsWatch,
    /// Restart the uevent listener.
    Uevent,
    /// Restart the metrics (`true`) or probe listener.
    Http(bool),
    StartServer(String),
    Register(String),
    /// (Re)start the DRA servers.
    DraServer,
    /// Write the DRA devices file.
    DraDevices,
}

struct PoolRuntime {
    shared: Arc<PoolShared>,
    tx: watch::Sender<Arc<PoolSnapshot>>,
    socket: PathBuf,
    server: Option<crate::plugin_server::PluginServer>,
    server_generation: u64,
    registration: Option<AbortHandle>,
    /// The registration whose outcome counts (older ones are superseded).
    reg_generation: u64,
    registered: bool,
    /// Served as a device plugin (`--mode device-plugin | both`).
    dp: bool,
}

/// The daemon's state, owned by the main loop.
pub struct Daemon {
    opts: Options,
    mode: RegistrationMode,
    ctx: Arc<Context>,
    probes: Arc<Probes>,
    config: Config,
    config_file: ConfigFile,
    node: Node,
    /// A discovery was applied (readiness).
    discovered: bool,
    /// The uplinks, or why they are unknown (then every netdev stays out of the pools).
    uplinks: Result<Vec<String>, String>,
    links: Links,
    /// Last known netdev of each PF, so a PF whose netdev vanished is still judged by it.
    pf_names: BTreeMap<PciAddress, String>,
    pools: BTreeMap<String, PoolRuntime>,
    tx: mpsc::UnboundedSender<Event>,
    fs: Option<FsWatcher>,
    sched: Scheduler<Job>,
    /// What goes wrong now, shown as the node's `lastError`.
    problems: Problems,
    /// Publishes SriovNodeState when running in a cluster.
    node_state: Option<crate::node_state::NodeState>,
    mtu_locks: crate::mtu_locks::MtuLocks,
    /// Source of server and registration generations.
    generation: u64,
    /// Test-only: the loop stops turning (`SRIOV_DP_FAULT=stall-on-config-change`).
    stalled: bool,
    /// Stops the metrics and probe listeners.
    http_stop: watch::Sender<bool>,
    /// The DRA kubelet plugin (`--mode dra | both`).
    dra: Option<dra::DraRuntime>,
}

impl Daemon {
    fn new(opts: Options, tx: mpsc::UnboundedSender<Event>) -> Result<Daemon, DaemonError> {
        let (config, config_file) = config::load_initial(&opts)?;
        for w in &config.warnings {
            tracing::warn!("config: {w}");
        }
        let cdi = match &opts.cdi {
            Some(c) => Some(crate::cdi::CdiSettings {
                dir: sriov::cdi::SpecDir::open(&c.dir).map_err(DaemonError::Cdi)?,
                version: c.version,
            }),
            None => None,
        };
        let ctx = Arc::new(Context {
            sysfs: Sysfs::new(&opts.sysfs_root),
            dev_root: opts.dev_root.clone(),
            devinfo_dir: opts.devinfo_dir.clone(),
            metrics: Arc::new(Metrics::default()),
            events: tx.clone(),
            cdi,
            dra_prepared: watch::channel(Default::default()).0,
        });
        let mtu_locks =
            crate::mtu_locks::MtuLocks::new(&opts.cni_state_dir, ctx.metrics.clone(), tx.clone());
        let dra = match &opts.dra {
            Some(d) if opts.mode.dra() => Some(dra::DraRuntime::new(
                d,
                &opts.cdi_dir,
                opts.cdi_version,
                &opts.kubelet_dir,
                ctx.clone(),
            )?),
            _ => None,
        };
        Ok(Daemon {
            mode: opts.effective_registration(),
            probes: Arc::new(Probes::new(opts.liveness_timeout)),
            opts,
            ctx,
            config,
            config_file,
            node: Node::default(),
            discovered: false,
            uplinks: Ok(Vec::new()),
            links: Links::default(),
            pf_names: BTreeMap::new(),
            pools: BTreeMap::new(),
            tx,
            fs: None,
            sched: Scheduler::default(),
            problems: Problems::default(),
            node_state: None,
            mtu_locks,
            generation: 0,
            stalled: false,
            http_stop: watch::channel(false).0,
            dra,
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
        if self.mode == RegistrationMode::PluginWatcher || self.dra.is_some() {
            let dir = self.opts.plugins_registry_dir();
            std::fs::create_dir_all(&dir).map_err(|source| DaemonError::Start {
                what: "creating the plugins_registry folder",
                source,
            })?;
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

    /// Handles one event; returns whether the node's state may have changed.
    async fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Link(u) => self.on_link(u),
            Event::LinkWatchEnded(r) => self.on_link_watch_ended(r),
            Event::Fs(FsEvent::KubeletSocketCreated) => self.on_kubelet_socket().await,
            Event::Fs(FsEvent::SocketRemoved(path)) => self.on_socket_removed(&path).await,
            Event::Fs(FsEvent::ConfigFolderChanged) => {
                self.sched.schedule(Job::Config, CONFIG_DEBOUNCE);
                return false;
            }
            Event::Fs(FsEvent::SysfsChanged) => {
                self.sched.schedule(Job::Discovery, DISCOVERY_DEBOUNCE)
            }
            Event::Fs(FsEvent::CniStateChanged) => {
                self.sched.schedule(Job::MtuLocks, Duration::ZERO)
            }
            Event::Fs(FsEvent::Overflow) => self.sched.schedule(Job::Resync, Duration::ZERO),
            Event::Fs(FsEvent::Failed(why)) => {
                self.restart_failed(Job::FsWatch, ErrorKind::Inotify, "inotify", &why)
            }
            Event::UeventEnded(why) => {
                self.restart_failed(Job::Uevent, ErrorKind::Uevent, "uevents", &why)
            }
            Event::HttpEnded { metrics, why } => {
                self.restart_failed(Job::Http(metrics), ErrorKind::Metrics, "http", &why)
            }
            Event::Uevent(e) => {
                tracing::debug!(action = %e.action, subsystem = %e.subsystem, devpath = %e.devpath, "uevent");
                self.sched.schedule(Job::Discovery, DISCOVERY_DEBOUNCE);
            }
            Event::Discovered(result) => self.on_discovered(*result).await,
            Event::Provisioned(result) => self.on_provisioned(result),
            Event::NodeStateWritten(result) => {
                self.on_node_state_written(result);
                return false;
            }
            Event::Registered {
                pool,
                generation,
                result,
            } => self.on_registered(&pool, generation, result),
            Event::ServerEnded {
                pool,
                generation,
                error,
            } => self.on_server_ended(&pool, generation, &error),
            Event::DeviceGone { pool, pci } => {
                tracing::warn!(pool = %pool, device = %pci, "Allocate found the device gone: rediscovering");
                self.sched.schedule(Job::Discovery, Duration::ZERO);
            }
            Event::Dra(e) => self.on_dra_event(e),
            Event::MtuLock(ended) => {
                if self.mtu_locks.ended(ended) {
                    self.sched.finish(&Job::MtuLocks, false);
                }
            }
        }
        true
    }

    /// Runs every job that is due; returns whether any may have changed the node's state.
    async fn run_due(&mut self) -> bool {
        let mut changed = false;
        while let Some(job) = self.sched.pop_due() {
            changed |= self.run(job).await;
        }
        changed
    }

    async fn shutdown(&mut self) {
        self.mtu_locks.stop();
        self.stop_dra().await;
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
    // A local file: retried soon, so the node's status catches up quickly once it can be.
    d.sched.set_backoff(
        Job::NodeState,
        crate::scheduler::Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(2),
        },
    );
    d.sched.schedule(Job::Discovery, Duration::ZERO);
    d.sched.schedule(Job::LinkWatch, Duration::ZERO);
    d.sched
        .schedule(Job::Heartbeat, d.probes.heartbeat_interval());
    d.sched.schedule(Job::Resync, d.opts.resync_interval);
    d.check_mtu_locks();
    d.start_uevents();
    d.node_state = d
        .opts
        .node_state_file
        .clone()
        .map(|file| crate::node_state::NodeState::new(file, &d.opts.kubelet_dir));
    for metrics in [true, false] {
        d.start_listener(metrics).await;
    }
    d.start_dra().await;

    let mut first = true;
    loop {
        d.probes.beat();
        d.publish_readiness();
        if first && d.discovered {
            first = false;
            tracing::info!(pools = d.pools.len(), mode = ?d.mode, took = ?started.elapsed(), "sriov-device-plugin running");
        }
        if d.stalled {
            tracing::warn!("stalled on purpose (SRIOV_DP_FAULT)");
            std::future::pending::<()>().await;
        }
        let deadline = d
            .sched
            .next_deadline()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let changed = tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break }
            event = rx.recv() => match event {
                Some(e) => d.handle(e).await,
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => d.run_due().await,
        };
        if changed {
            d.node_state_soon();
            d.dra_publish();
        }
    }
    d.shutdown().await;
    let _ = d.http_stop.send(true);
    tracing::info!("stopped");
    Ok(())
}

impl Daemon {
    /// The metrics (`metrics: true`) or probe listener, if configured; a failed bind is logged,
    /// counted and retried, not fatal.
    async fn start_listener(&mut self, metrics: bool) {
        let (addr, what) = if metrics {
            (self.opts.metrics_address, "metrics")
        } else {
            (self.opts.probe_address, "probes")
        };
        let Some(addr) = addr else { return };
        let endpoints = crate::http::Endpoints {
            metrics: self.ctx.metrics.clone(),
            probes: self.probes.clone(),
            serve_metrics: metrics,
        };
        let tx = self.tx.clone();
        let on_end = move |why| {
            let _ = tx.send(Event::HttpEnded { metrics, why });
        };
        match crate::http::serve(addr, endpoints, self.http_stop.subscribe(), on_end).await {
            Ok(bound) => {
                tracing::info!("{what} on http://{bound}");
                self.sched.finish(&Job::Http(metrics), true);
                self.problems.clear(&format!("http {what}"));
            }
            Err(e) => self.restart_failed(
                Job::Http(metrics),
                ErrorKind::Metrics,
                &format!("http {what}"),
                &format!("cannot serve {what} on {addr}: {e}"),
            ),
        }
    }

    /// Listens to kernel uevents on a thread of its own; restarted with backoff if it stops.
    fn start_uevents(&mut self) {
        let (events, ended) = (self.tx.clone(), self.tx.clone());
        match crate::uevent::spawn(
            move |e| events.send(Event::Uevent(e)).is_ok(),
            move |why| {
                let _ = ended.send(Event::UeventEnded(why));
            },
        ) {
            Ok(()) => self.problems.clear("uevents"),
            Err(e) => self.restart_failed(
                Job::Uevent,
                ErrorKind::Uevent,
                "uevents",
                &format!("kernel uevents unavailable ({e}); kernel-made sysfs changes are seen on resync only"),
            ),
        }
    }

    /// The inotify watcher again (a new one: the old reader stopped), with every watch.
    fn restart_fs_watcher(&mut self) {
        self.fs = None;
        match self.start_fs_watcher() {
            Ok(()) => {
                self.sched.finish(&Job::FsWatch, true);
                self.problems.clear("inotify");
                self.watch_sysfs();
                self.check_mtu_locks();
                // Changes were missed meanwhile.
                self.sched.schedule(Job::Resync, Duration::ZERO);
            }
            Err(e) => {
                self.restart_failed(Job::FsWatch, ErrorKind::Inotify, "inotify", &e.to_string())
            }
        }
    }

    /// Something long-running stopped (or would not start): counted, logged, shown, and `job`
    /// retried with backoff.
    fn restart_failed(&mut self, job: Job, kind: ErrorKind, what: &str, why: &str) {
        self.ctx.metrics.error(kind);
        let retry = self.sched.finish(&job, false).unwrap_or_default();
        tracing::error!("{why}; retrying in {retry:?}");
        self.problems.set(what, why.to_string());
    }

    /// Writes the node-state file soon (once for a burst of changes); a failing write keeps
    /// its backoff.
    fn node_state_soon(&mut self) {
        if self.node_state.is_some() && self.sched.failures(&Job::NodeState) == 0 {
            self.sched.schedule(Job::NodeState, NODE_STATE_DEBOUNCE);
        }
    }
}
