//! One `DevicePlugin` gRPC server per pool, on its own Unix socket, with a stopper.
//!
//! This is the gRPC edge: requests are checked and handed to [`crate::allocate`], whose errors
//! become `tonic::Status` here and nowhere else. In plugin-watcher mode the same server also
//! answers the kubelet's `GetInfo` / `NotifyRegistrationStatus`.

use crate::allocate::{self, AllocateError};
use crate::pool::PoolShared;
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
            AllocateError::Unhealthy { .. } | AllocateError::NoIommuGroup { .. } => {
                Status::failed_precondition(e.to_string())
            }
            AllocateError::DevInfo(_) => Status::internal(e.to_string()),
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
        let stop = self.stop.clone();
        let pool = self.pool.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<dp::ListAndWatchResponse> = None;
            let stop = stopped(stop);
            tokio::pin!(stop);
            loop {
                let response = snapshots.borrow_and_update().list_response();
                if last.as_ref() != Some(&response) {
                    if tx.send(Ok(response.clone())).await.is_err() {
                        return;
                    }
                    pool.ctx.metrics.list_and_watch_update(&pool.name);
                    last = Some(response);
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
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
        let snapshot = self.pool.current();
        let ctx = &self.pool.ctx;
        let name = &self.pool.name;
        let fail = |e: AllocateError| {
            ctx.metrics.allocation_error(name, e.reason());
            tracing::warn!(pool = %name, "Allocate refused: {e}");
            Status::from(e)
        };
        // Check every container before writing anything.
        let plans = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| allocate::plan(&snapshot, ctx, &c.devices_ids))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let mut container_responses = Vec::with_capacity(plans.len());
        for plan in plans {
            let files = allocate::write_devinfo(name, ctx, &plan).map_err(fail)?;
            self.pool.remember_files(files);
            ctx.metrics.allocation(name, plan.devinfo.len() as u64);
            tracing::info!(pool = %name, devices = %plan.envs.get(&sriov::devinfo::env_name(name)).map(String::as_str).unwrap_or(""), "allocated");
            container_responses.push(dp::ContainerAllocateResponse {
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
            });
        }
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
    pool: String,
    endpoint: String,
    metrics: Arc<crate::metrics::Metrics>,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for WatcherRegistration {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: sriov_proto::DEVICE_PLUGIN_TYPE.to_string(),
            name: self.pool.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![sriov_proto::DEVICE_PLUGIN_API_VERSION.to_string()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        self.metrics
            .registration(&self.pool, status.plugin_registered);
        if status.plugin_registered {
            tracing::info!(pool = %self.pool, "registered with kubelet (plugin watcher)");
        } else {
            tracing::error!(pool = %self.pool, "kubelet refused the registration: {}", status.error);
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// A running server of one pool on one socket.
pub struct PluginServer {
    socket: PathBuf,
    /// (device, inode) of the socket file we bound, so we never remove a successor's.
    identity: Option<(u64, u64)>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PluginServer {
    /// Binds `socket` (replacing a stale file) and serves the pool; with `watcher`, also the
    /// plugin-watcher `Registration` service.
    pub fn start(
        pool: Arc<PoolShared>,
        socket: PathBuf,
        watcher: bool,
    ) -> std::io::Result<PluginServer> {
        let listener = sriov_proto::bind_unix(&socket)?;
        let identity = std::fs::metadata(&socket).ok().map(|m| (m.dev(), m.ino()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let name = pool.name.clone();
        let registration = watcher.then(|| {
            reg::registration_server::RegistrationServer::new(WatcherRegistration {
                pool: name.clone(),
                endpoint: socket.display().to_string(),
                metrics: pool.ctx.metrics.clone(),
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
        let task = tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, stopped(stop_rx))
                .await
            {
                tracing::error!(pool = %name, "plugin server failed: {e}");
            }
        });
        Ok(PluginServer {
            socket,
            identity,
            stop: stop_tx,
            task,
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
            task.abort();
        }
    }
}
