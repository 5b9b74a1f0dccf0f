//! One `DevicePlugin` gRPC server per pool, on its own Unix socket, with a stopper.
//!
//! This is the gRPC edge: requests are checked and handed to [`crate::allocate`], whose errors
//! become `tonic::Status` here and nowhere else. In plugin-watcher mode the same server also
//! answers the kubelet's `GetInfo` / `NotifyRegistrationStatus`.

use crate::allocate::{self, AllocateError};
use crate::daemon::Event;
use crate::pool::PoolShared;
use sriov::devinfo::DevInfoError;
use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::pluginregistration as reg;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

impl From<AllocateError> for Status {
    fn from(e: AllocateError) -> Status {
        match e {
            AllocateError::UnknownDevice { .. } | AllocateError::Empty => {
                Status::invalid_argument(e.to_string())
            }
            AllocateError::Unhealthy { .. }
            | AllocateError::NoIommuGroup { .. }
            | AllocateError::Resolve(DevInfoError::Gone { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            AllocateError::Resolve(_) | AllocateError::Write(_) | AllocateError::Cdi(_) => {
                Status::internal(e.to_string())
            }
        }
    }
}

/// Resolves when the stopper says stop (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The `DevicePlugin` service of one pool.
struct PluginService {
    pool: Arc<PoolShared>,
    stop: watch::Receiver<bool>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl dp::device_plugin_server::DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let mut snapshots = self.pool.snapshot.clone();
        let mut prepared = self.pool.ctx.dra_prepared.subscribe();
        let stop = self.stop.clone();
        let pool = self.pool.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<dp::ListAndWatchResponse> = None;
            let stop = stopped(stop);
            tokio::pin!(stop);
            loop {
                let response = snapshots
                    .borrow_and_update()
                    .list_response(&prepared.borrow_and_update());
                if last.as_ref() != Some(&response) {
                    if tx.send(Ok(response.clone())).await.is_err() {
                        return;
                    }
                    pool.ctx.metrics.list_and_watch_update(&pool.name);
                    last = Some(response);
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    changed = prepared.changed() => if changed.is_err() { return },
                    _ = &mut stop => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        let snapshot = self.pool.current();
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| dp::ContainerPreferredAllocationResponse {
                device_i_ds: allocate::preferred(
                    &snapshot,
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    usize::try_from(c.allocation_size).unwrap_or(0),
                ),
            })
            .collect();
        self.pool.ctx.metrics.preferred_allocation(&self.pool.name);
        Ok(Response::new(dp::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<dp::AllocateRequest>,
    ) -> Result<Response<dp::AllocateResponse>, Status> {
        let ctx = &self.pool.ctx;
        let name = &self.pool.name;
        let containers: Vec<Vec<String>> = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| c.devices_ids)
            .collect();
        let use_cdi = ctx.cdi.is_some();
        let snapshot = self.pool.current();
        let allocations = allocate::allocate(&self.pool, &containers).map_err(|e| {
            ctx.metrics.allocation_error(name, e.reason());
            tracing::warn!(pool = %name, "Allocate refused: {e}");
            if let Some(pci) = e.gone() {
                // Rediscover: the device shows as Unhealthy in the next ListAndWatch list.
                let _ = ctx.events.send(Event::DeviceGone {
                    pool: name.clone(),
                    pci,
                });
            }
            Status::from(e)
        })?;
        let container_responses = allocations
            .into_iter()
            .zip(&containers)
            .map(|(plan, ids)| {
                ctx.metrics.allocation(name, plan.devinfo.len() as u64);
                tracing::info!(pool = %name, devices = %plan.envs.get(&sriov::devinfo::env_name(name)).map(String::as_str).unwrap_or(""), "allocated");
                let mut response = dp::ContainerAllocateResponse {
                    envs: plan.envs.into_iter().collect(),
                    mounts: vec![],
                    devices: plan
                        .devices
                        .into_iter()
                        .map(|n| dp::DeviceSpec {
                            container_path: n.container_path,
                            host_path: n.host_path.display().to_string(),
                            permissions: n.permissions.to_string(),
                        })
                        .collect(),
                    annotations: Default::default(),
                    cdi_devices: vec![],
                };
                if use_cdi {
                    // As upstream: the runtime takes the device nodes from the CDI spec.
                    let (annotations, names, problem) = crate::cdi::allocation(&snapshot, ids);
                    if let Some(e) = problem {
                        tracing::warn!(pool = %name, "no CDI annotation (cdi_devices only): {e}");
                    }
                    response.devices.clear();
                    response.annotations = annotations.into_iter().collect();
                    response.cdi_devices = names
                        .into_iter()
                        .map(|name| dp::CdiDevice { name })
                        .collect();
                }
                response
            })
            .collect();
        Ok(Response::new(dp::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}

/// Options every pool advertises.
pub fn plugin_options() -> dp::DevicePluginOptions {
    dp::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// The plugin-watcher `Registration` service of one pool.
struct WatcherRegistration {
    pool: Arc<PoolShared>,
    endpoint: String,
    generation: u64,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for WatcherRegistration {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: sriov_proto::DEVICE_PLUGIN_TYPE.to_string(),
            name: self.pool.name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![sriov_proto::DEVICE_PLUGIN_API_VERSION.to_string()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let pool = &self.pool.name;
        self.pool
            .ctx
            .metrics
            .registration(pool, status.plugin_registered);
        if status.plugin_registered {
            tracing::info!(pool = %pool, "registered with kubelet (plugin watcher)");
        } else {
            tracing::error!(pool = %pool, "kubelet refused the registration: {}", status.error);
        }
        let _ = self.pool.ctx.events.send(Event::Registered {
            pool: pool.clone(),
            generation: self.generation,
            result: if status.plugin_registered {
                Ok(())
            } else {
                Err(crate::supervise::TaskError::Failed(status.error))
            },
        });
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// A running server of one pool on one socket.
pub struct PluginServer {
    socket: PathBuf,
    /// (device, inode) of the socket file we bound, so we never remove a successor's.
    identity: Option<(u64, u64)>,
    stop: watch::Sender<bool>,
    /// The supervisor of the serving task: ends when it does.
    task: JoinHandle<()>,
    serving: tokio::task::AbortHandle,
}

impl PluginServer {
    /// Binds `socket` (replacing a stale file) and serves the pool; with `watcher`, also the
    /// plugin-watcher `Registration` service. If serving ends by itself (an error, a panic), the
    /// main loop hears of it ([`Event::ServerEnded`] with `generation`).
    pub fn start(
        pool: Arc<PoolShared>,
        socket: PathBuf,
        watcher: bool,
        generation: u64,
    ) -> std::io::Result<PluginServer> {
        let listener = sriov_proto::bind_unix(&socket)?;
        let identity = std::fs::metadata(&socket).ok().map(|m| (m.dev(), m.ino()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let name = pool.name.clone();
        let events = pool.ctx.events.clone();
        let registration = watcher.then(|| {
            reg::registration_server::RegistrationServer::new(WatcherRegistration {
                pool: pool.clone(),
                endpoint: socket.display().to_string(),
                generation,
            })
        });
        let service = dp::device_plugin_server::DevicePluginServer::new(PluginService {
            pool,
            stop: stop_rx.clone(),
        });
        let router = tonic::transport::Server::builder()
            .add_service(service)
            .add_optional_service(registration);
        let incoming = sriov_proto::serve_unix_incoming(listener);
        let stopping = stop_rx.clone();
        let serve = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, stopped(stop_rx))
                .await
        });
        let serving = serve.abort_handle();
        let task = tokio::spawn(async move {
            let error = match serve.await {
                Ok(Ok(())) => "it stopped".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => {
                    format!(
                        "panicked: {}",
                        crate::supervise::panic_message(&*e.into_panic())
                    )
                }
                Err(_) => "cancelled".to_string(),
            };
            if !*stopping.borrow() {
                let _ = events.send(Event::ServerEnded {
                    pool: name,
                    generation,
                    error,
                });
            }
        });
        Ok(PluginServer {
            socket,
            identity,
            stop: stop_tx,
            task,
            serving,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether our socket file is still in place (kubelet removes it when it restarts).
    pub fn socket_present(&self) -> bool {
        let now = std::fs::metadata(&self.socket)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        now.is_some() && now == self.identity
    }

    /// Whether the server task ended by itself (it failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops serving: ends the ListAndWatch streams, removes our socket file, and gives the
    /// server a moment to close its connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if self.socket_present() {
            if let Err(e) = std::fs::remove_file(&self.socket) {
                tracing::warn!("cannot remove {}: {e}", self.socket.display());
            }
        }
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_millis(500), &mut task)
            .await
            .is_err()
        {
            self.serving.abort();
        }
    }
}
