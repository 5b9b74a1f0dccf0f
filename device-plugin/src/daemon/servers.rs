//! Pool servers and their registration: start, restart after a kubelet restart, stop.

use super::*;

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
        }
    }

    pub(super) fn uses_pf(&self, netdev: &str) -> bool {
        self.tx
            .borrow()
            .devices
            .iter()
            .any(|t| t.device.pf_name.as_deref() == Some(netdev))
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
            ctx: self.ctx.clone(),
        });
        let mut rt = PoolRuntime {
            shared,
            tx,
            socket,
            server: None,
            registration: None,
        };
        tracing::info!(pool = %name, healthy, unhealthy, socket = %rt.socket.display(), "pool started");
        self.start_server(&mut rt);
        self.register(&mut rt);
        self.pools.insert(name, rt);
    }

    pub(super) fn start_server(&self, rt: &mut PoolRuntime) {
        match PluginServer::start(
            rt.shared.clone(),
            rt.socket.clone(),
            self.mode == RegistrationMode::PluginWatcher,
        ) {
            Ok(s) => rt.server = Some(s),
            Err(e) => {
                self.ctx.metrics.error("socket");
                tracing::error!(pool = %rt.shared.name, "cannot serve on {}: {e}; retrying on resync", rt.socket.display());
            }
        }
    }

    /// (Re-)registers with kubelet.sock; in plugin-watcher mode kubelet finds the socket itself.
    pub(super) fn register(&self, rt: &mut PoolRuntime) {
        if self.mode != RegistrationMode::KubeletSocket || rt.server.is_none() {
            return;
        }
        if let Some(old) = rt.registration.take() {
            old.abort();
        }
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
        rt.registration = Some(registration::spawn(
            kubelet,
            endpoint,
            rt.shared.name.clone(),
            self.ctx.metrics.clone(),
        ));
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
        rt.server
            .as_ref()
            .is_none_or(|s| s.is_finished() || !s.socket_present())
    }

    pub(super) async fn stop_pool(&self, mut rt: PoolRuntime) {
        if let Some(r) = rt.registration.take() {
            r.abort();
        }
        if let Some(s) = rt.server.take() {
            s.stop().await;
        }
        rt.shared.remove_files();
        self.ctx.metrics.remove_pool(&rt.shared.name);
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
}
