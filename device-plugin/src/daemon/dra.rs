//! The DRA side of the main loop (`--mode dra | both`): the view the DRA services read, their
//! servers (restarted with backoff when they end or their sockets vanish), the DRA devices file.

use super::*;
use crate::dra::devices_file::DevicesFile;
use crate::dra::server::{DraEvent, DraServer};
use crate::dra::{Dra, DraView};
use crate::options::DraOptions;
use std::path::Path;

/// Wait after a change before writing the DRA devices file (a burst is one write).
const DRA_DEVICES_DEBOUNCE: Duration = Duration::from_millis(50);

pub(super) struct DraRuntime {
    dra: Arc<Dra>,
    view: watch::Sender<Arc<DraView>>,
    server: Option<DraServer>,
    generation: u64,
    registered: bool,
    devices_file: DevicesFile,
    dra_socket: PathBuf,
    reg_socket: PathBuf,
    nri: Option<crate::dra::nri::NriOptions>,
    nri_task: Option<tokio::task::JoinHandle<()>>,
}

impl DraRuntime {
    pub(super) fn new(
        opts: &DraOptions,
        cdi_dir: &Path,
        cdi_version: sriov::cdi::Version,
        kubelet_dir: &Path,
        ctx: Arc<Context>,
    ) -> Result<DraRuntime, DaemonError> {
        let records = sriov::dra_record::Records::open(&opts.state_dir, true)
            .map_err(|e| DaemonError::Dra(e.to_string()))?;
        let cdi = sriov::cdi::SpecDir::open(cdi_dir).map_err(DaemonError::Cdi)?;
        let (view, rx) = watch::channel(Arc::new(DraView::default()));
        let dra = Arc::new(Dra {
            driver: opts.driver.clone(),
            node_name: opts.node_name.clone(),
            claims_socket: opts.claims_socket.clone(),
            records,
            cdi,
            cdi_version,
            ctx,
            view: rx,
            lock: std::sync::Mutex::new(()),
        });
        Ok(DraRuntime {
            dra,
            view,
            server: None,
            generation: 0,
            registered: false,
            devices_file: DevicesFile::new(
                opts.devices_file.clone(),
                opts.driver.clone(),
                opts.taints,
            ),
            dra_socket: kubelet_dir
                .join("plugins")
                .join(&opts.driver)
                .join(sriov_proto::dra::DRA_SOCKET),
            reg_socket: kubelet_dir
                .join("plugins_registry")
                .join(sriov_proto::dra::registration_socket_name(&opts.driver)),
            nri: opts.nri.clone(),
            nri_task: None,
        })
    }

    pub(super) fn reg_socket(&self) -> &Path {
        &self.reg_socket
    }

    /// Served and registered (readiness).
    pub(super) fn ready(&self) -> bool {
        self.registered
            && self
                .server
                .as_ref()
                .is_some_and(|s| !s.is_finished() && s.sockets_present())
    }
}

impl Daemon {
    /// At start: unfinished preparations undone, then the servers.
    pub(super) async fn start_dra(&mut self) {
        let Some(rt) = &self.dra else { return };
        let dra = rt.dra.clone();
        let undone = tokio::task::spawn_blocking(move || dra.recover())
            .await
            .unwrap_or(0);
        if undone > 0 {
            tracing::warn!(
                undone,
                "DRA: claim preparations a kill cut short were undone"
            );
        }
        self.start_dra_server().await;
        let Some(rt) = &mut self.dra else { return };
        if let Some(nri) = rt.nri.clone() {
            tracing::info!(socket = %nri.socket.display(), "attaching prepared VFs as an NRI plugin");
            let attach = Arc::new(crate::dra::nri::NriAttach::new(
                rt.dra.clone(),
                nri.cni.clone(),
            ));
            rt.nri_task = Some(tokio::spawn(crate::dra::nri::serve(nri, attach)));
        }
    }

    pub(super) async fn start_dra_server(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        let Some(rt) = &mut self.dra else { return };
        if let Some(old) = rt.server.take() {
            old.stop().await;
        }
        rt.registered = false;
        rt.generation = generation;
        match DraServer::start(
            rt.dra.clone(),
            rt.dra_socket.clone(),
            rt.reg_socket.clone(),
            self.tx.clone(),
            generation,
        ) {
            Ok(s) => {
                tracing::info!(driver = %rt.dra.driver, socket = %rt.dra_socket.display(), "serving DRA");
                rt.server = Some(s);
                self.sched.finish(&Job::DraServer, true);
                self.problems.clear("dra server");
            }
            Err(e) => {
                self.ctx.metrics.error(ErrorKind::Dra);
                let retry = self.sched.finish(&Job::DraServer, false);
                let why = format!("cannot serve DRA on {}: {e}", rt.dra_socket.display());
                tracing::error!("{why}; retrying in {:?}", retry.unwrap_or_default());
                self.problems.set("dra server", why);
            }
        }
    }

    pub(super) fn on_dra_event(&mut self, e: DraEvent) {
        let Some(rt) = &mut self.dra else { return };
        match e {
            DraEvent::Registered { ok, error } => {
                rt.registered = ok;
                if ok {
                    self.problems.clear("dra registration");
                } else {
                    self.problems.set(
                        "dra registration",
                        format!("kubelet refused the DRA registration: {error}"),
                    );
                }
            }
            DraEvent::Ended { generation, error } if generation == rt.generation => {
                rt.server = None;
                rt.registered = false;
                self.ctx.metrics.error(ErrorKind::Dra);
                let retry = self.sched.finish(&Job::DraServer, false);
                tracing::error!("{error}; restarting in {:?}", retry.unwrap_or_default());
                self.problems.set("dra server", error);
            }
            DraEvent::Ended { .. } => {}
        }
    }

    /// Restarts the DRA servers when a socket of theirs is gone (kubelet cleaned its folders).
    pub(super) async fn check_dra_sockets(&mut self) {
        let stale = self.dra.as_ref().is_some_and(|rt| {
            rt.server
                .as_ref()
                .is_none_or(|s| s.is_finished() || !s.sockets_present())
        });
        if stale {
            tracing::info!("DRA sockets gone: serving again");
            self.start_dra_server().await;
        }
    }

    /// Publishes the pools to the DRA services (health streams wake up when they changed) and
    /// schedules the devices file.
    pub(super) fn dra_publish(&mut self) {
        let Some(rt) = &self.dra else { return };
        let view = DraView {
            ready: self.discovered,
            pools: self.pools.values().map(|p| p.shared.current()).collect(),
        };
        rt.view.send_if_modified(|v| {
            if **v != view {
                *v = Arc::new(view);
                true
            } else {
                false
            }
        });
        // Also when the pools are the same: attributes (MTU, driver) come from discovery too;
        // the job writes only what differs from the file.
        if self.sched.failures(&Job::DraDevices) == 0 {
            self.sched.schedule(Job::DraDevices, DRA_DEVICES_DEBOUNCE);
        }
    }

    pub(super) fn write_dra_devices(&mut self) {
        let Some(rt) = &mut self.dra else { return };
        let snapshots: Vec<_> = self.pools.values().map(|p| p.shared.current()).collect();
        match rt
            .devices_file
            .sync(&self.node, snapshots.iter().map(|s| &**s))
        {
            Ok(false) => {}
            Ok(true) => {
                self.sched.finish(&Job::DraDevices, true);
                self.problems.clear("dra devices");
            }
            Err(e) => {
                self.ctx.metrics.error(ErrorKind::Dra);
                let retry = self.sched.finish(&Job::DraDevices, false);
                tracing::error!(
                    "DRA devices file: {e}; retrying in {:?}",
                    retry.unwrap_or_default()
                );
                self.problems
                    .set("dra devices", format!("DRA devices file: {e}"));
            }
        }
    }

    pub(super) async fn stop_dra(&mut self) {
        if let Some(rt) = &mut self.dra {
            if let Some(s) = rt.server.take() {
                s.stop().await;
            }
            if let Some(t) = rt.nri_task.take() {
                t.abort();
            }
        }
    }

    pub(super) fn dra_ready(&self) -> Option<bool> {
        self.dra.as_ref().map(DraRuntime::ready)
    }
}
