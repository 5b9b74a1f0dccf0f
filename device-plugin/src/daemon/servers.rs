//! Pool servers and their registration: start, restart after a kubelet restart or a failure,
//! stop; and what readiness says about them.

use super::*;
use crate::options::socket_name;
use crate::plugin_server::PluginServer;
use crate::probes::{readiness, PoolReadiness};
use crate::supervise;
use std::path::Path;

impl PoolRuntime {
    pub(super) fn current(&self) -> Arc<PoolSnapshot> {
        self.tx.borrow().clone()
    }

    /// Replaces the snapshot when it differs; ListAndWatch streams wake up on it.
    pub(super) fn publish(&self, snapshot: PoolSnapshot, metrics: &Metrics) {
        let (healthy, unhealthy) = snapshot.counts();
        metrics.set_pool_devices(&self.shared.name, healthy, unhealthy);
        if **self.tx.borrow() != snapshot {
            self.tx.send_replace(Arc::new(snapshot));
            self.sync_cdi();
        }
    }

    /// `--use-cdi`: the pool's spec follows its snapshot. A failure is counted and logged; the
    /// next Allocate of the pool tries again (and fails if it cannot).
    pub(super) fn sync_cdi(&self) {
        if let Err(e) = crate::cdi::sync(&self.shared, &[]) {
            self.shared.ctx.metrics.error(ErrorKind::Cdi);
            tracing::error!(pool = %self.shared.name, "{e}");
        }
    }

    pub(super) fn uses_pf(&self, netdev: &str) -> bool {
        self.tx
            .borrow()
            .devices
            .iter()
            .any(|t| t.device.pf_name.as_deref() == Some(netdev))
    }

    /// Its server runs on its socket.
    fn served(&self) -> bool {
        self.server
            .as_ref()
            .is_some_and(|s| !s.is_finished() && s.socket_present())
    }
}

impl Daemon {
    pub(super) fn start_pool(&mut self, name: String, snapshot: PoolSnapshot) {
        let socket = self.opts.socket_dir(self.mode).join(socket_name(
            &snapshot.config.resource_prefix,
            &snapshot.config.resource_name,
        ));
        let (healthy, unhealthy) = snapshot.counts();
        self.ctx.metrics.set_pool_devices(&name, healthy, unhealthy);
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        let shared = Arc::new(PoolShared {
            name: name.clone(),
            snapshot: rx,
            devinfo_files: Default::default(),
            cdi_spec: Default::default(),
            ctx: self.ctx.clone(),
        });
        let mut rt = PoolRuntime {
            shared,
            tx,
            socket,
            server: None,
            server_generation: 0,
            registration: None,
            reg_generation: 0,
            registered: false,
            dp: self.opts.mode.device_plugin(),
        };
        tracing::info!(pool = %name, healthy, unhealthy, socket = %rt.socket.display(), "pool started");
        rt.sync_cdi();
        self.start_server(&mut rt);
        self.register(&mut rt);
        self.pools.insert(name, rt);
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn start_server(&mut self, rt: &mut PoolRuntime) {
        if !rt.dp {
            return;
        }
        let generation = self.next_generation();
        let watcher = self.mode == RegistrationMode::PluginWatcher;
        let name = rt.shared.name.clone();
        rt.registered = false;
        match PluginServer::start(rt.shared.clone(), rt.socket.clone(), watcher, generation) {
            Ok(s) => {
                rt.server = Some(s);
                rt.server_generation = generation;
                if watcher {
                    // Kubelet's NotifyRegistrationStatus on this server says.
                    rt.reg_generation = generation;
                }
                self.sched.finish(&Job::StartServer(name.clone()), true);
                self.problems.clear(&format!("server {name}"));
            }
            Err(e) => {
                self.ctx.metrics.error(ErrorKind::Socket);
                let retry = self.sched.finish(&Job::StartServer(name.clone()), false);
                tracing::error!(pool = %name, "cannot serve on {}: {e}; retrying in {:?}", rt.socket.display(), retry.unwrap_or_default());
                self.problems.set(
                    format!("server {name}"),
                    format!("pool {name}: cannot serve on {}: {e}", rt.socket.display()),
                );
            }
        }
    }

    /// (Re-)registers with kubelet.sock, as a supervised task; in plugin-watcher mode kubelet
    /// finds the socket itself.
    fn register(&mut self, rt: &mut PoolRuntime) {
        if !rt.dp || self.mode != RegistrationMode::KubeletSocket || rt.server.is_none() {
            return;
        }
        if let Some(old) = rt.registration.take() {
            old.abort();
        }
        rt.registered = false;
        let kubelet = self.opts.kubelet_socket();
        if !kubelet.exists() {
            tracing::info!(pool = %rt.shared.name, "waiting for {} to register", kubelet.display());
            return;
        }
        let endpoint = rt
            .socket
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let generation = self.next_generation();
        rt.reg_generation = generation;
        let (pool, tx) = (rt.shared.name.clone(), self.tx.clone());
        rt.registration = Some(supervise::spawn(
            crate::registration::register(
                kubelet,
                endpoint,
                pool.clone(),
                self.ctx.metrics.clone(),
            ),
            move |r| {
                let _ = tx.send(Event::Registered {
                    pool,
                    generation,
                    result: r.map(|_| ()).map_err(|e| match e {
                        TaskError::Failed(never) => match never {},
                        TaskError::Panicked(m) => TaskError::Panicked(m),
                        TaskError::Cancelled => TaskError::Cancelled,
                    }),
                });
            },
        ));
    }

    pub(super) fn on_registered(
        &mut self,
        pool: &str,
        generation: u64,
        result: Result<(), TaskError<String>>,
    ) {
        let Some(rt) = self.pools.get_mut(pool) else {
            return;
        };
        if rt.reg_generation != generation {
            return;
        }
        let job = Job::Register(pool.to_string());
        match result {
            Ok(()) => {
                rt.registered = true;
                rt.registration = None;
                self.sched.finish(&job, true);
                self.problems.clear(&format!("registration {pool}"));
            }
            Err(TaskError::Cancelled) => {}
            // Kubelet's decision (plugin watcher): it tries again itself.
            Err(TaskError::Failed(e)) => {
                rt.registered = false;
                self.problems.set(
                    format!("registration {pool}"),
                    format!("kubelet refused the registration of {pool}: {e}"),
                );
            }
            Err(e) => {
                rt.registered = false;
                rt.registration = None;
                self.ctx.metrics.error(ErrorKind::Registration);
                let retry = self.sched.finish(&job, false);
                tracing::error!(pool = %pool, "registration task {e}; retrying in {:?}", retry.unwrap_or_default());
                self.problems.set(
                    format!("registration {pool}"),
                    format!("registration of {pool}: {e}"),
                );
            }
        }
    }

    pub(super) fn on_server_ended(&mut self, pool: &str, generation: u64, error: &str) {
        let Some(rt) = self.pools.get_mut(pool) else {
            return;
        };
        if rt.server_generation != generation {
            return;
        }
        rt.server = None;
        rt.registered = false;
        if let Some(r) = rt.registration.take() {
            r.abort();
        }
        self.ctx.metrics.error(ErrorKind::Server);
        let retry = self
            .sched
            .finish(&Job::StartServer(pool.to_string()), false);
        tracing::error!(pool = %pool, "plugin server ended: {error}; restarting in {:?}", retry.unwrap_or_default());
        self.problems.set(
            format!("server {pool}"),
            format!("pool {pool}: plugin server ended: {error}"),
        );
    }

    /// A scheduled retry of a pool's server or registration.
    pub(super) async fn retry_pool(&mut self, job: Job) {
        match job {
            Job::StartServer(name)
                if self
                    .pools
                    .get(&name)
                    .is_some_and(Self::server_needs_restart) =>
            {
                self.restart_server(&name).await;
            }
            Job::Register(name) => {
                if let Some(mut rt) = self.pools.remove(&name) {
                    if !rt.registered {
                        self.register(&mut rt);
                    }
                    self.pools.insert(name, rt);
                }
            }
            _ => {}
        }
    }

    /// Restarts the server of a pool whose socket is gone or whose server died.
    pub(super) async fn restart_server(&mut self, name: &str) {
        let Some(mut rt) = self.pools.remove(name) else {
            return;
        };
        if let Some(old) = rt.server.take() {
            old.stop().await;
        }
        tracing::info!(pool = %name, socket = %rt.socket.display(), "socket recreated");
        self.start_server(&mut rt);
        self.register(&mut rt);
        self.pools.insert(name.to_string(), rt);
    }

    pub(super) fn server_needs_restart(rt: &PoolRuntime) -> bool {
        rt.dp && !rt.served()
    }

    pub(super) async fn stop_pool(&mut self, mut rt: PoolRuntime) {
        if let Some(r) = rt.registration.take() {
            r.abort();
        }
        if let Some(s) = rt.server.take() {
            s.stop().await;
        }
        rt.shared.remove_files();
        if let Err(e) = crate::cdi::remove(&rt.shared) {
            self.ctx.metrics.error(ErrorKind::Cdi);
            tracing::warn!(pool = %rt.shared.name, "{e}");
        }
        let name = &rt.shared.name;
        self.ctx.metrics.remove_pool(name);
        for job in [Job::StartServer(name.clone()), Job::Register(name.clone())] {
            self.sched.forget(&job);
        }
        self.problems.clear(&format!("server {name}"));
        self.problems.clear(&format!("registration {name}"));
    }

    pub(super) async fn on_kubelet_socket(&mut self) {
        tracing::info!(
            "kubelet.sock appeared: re-registering {} pools",
            self.pools.len()
        );
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in names {
            let restart = self
                .pools
                .get(&name)
                .is_some_and(Self::server_needs_restart);
            if restart {
                self.restart_server(&name).await;
            } else if let Some(mut rt) = self.pools.remove(&name) {
                self.register(&mut rt);
                self.pools.insert(name, rt);
            }
        }
    }

    pub(super) async fn on_socket_removed(&mut self, path: &Path) {
        if self.dra.as_ref().is_some_and(|d| d.reg_socket() == path) {
            self.check_dra_sockets().await;
            return;
        }
        let name = self
            .pools
            .iter()
            .find(|(_, rt)| rt.socket == path)
            .map(|(n, _)| n.clone());
        if let Some(name) = name {
            if self
                .pools
                .get(&name)
                .is_some_and(Self::server_needs_restart)
            {
                self.restart_server(&name).await;
            }
        }
    }

    /// Tells the readiness probe how the pools stand.
    pub(super) fn publish_readiness(&self) {
        let mut pools: Vec<PoolReadiness> = self
            .pools
            .iter()
            .filter(|(_, rt)| rt.dp)
            .map(|(name, rt)| PoolReadiness {
                name: name.clone(),
                served: rt.served(),
                registered: rt.registered,
            })
            .collect();
        if let Some(ready) = self.dra_ready() {
            pools.push(PoolReadiness {
                name: "the DRA driver".into(),
                served: ready,
                registered: ready,
            });
        }
        self.probes.set_ready(readiness(self.discovered, &pools));
    }
}
