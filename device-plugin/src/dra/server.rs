//! The DRA gRPC edge: the plugin watcher's `Registration` on
//! `plugins_registry/<driver>-reg.sock`, and `DRAPlugin` v1 + v1beta1 and `DRAResourceHealth`
//! v1 on `plugins/<driver>/dra.sock`. A claim's error goes into its response's `error` (kubelet
//! retries it), never a gRPC failure of the whole call.

use super::Dra;
use crate::daemon::Event;
use prost::Message;
use sriov::dra_claim::ClaimRef;
use sriov_proto::dra::health::v1 as hv1;
use sriov_proto::dra::{v1, v1beta1};
use sriov_proto::pluginregistration as reg;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// What the DRA servers tell the main loop.
#[derive(Debug)]
pub enum DraEvent {
    /// Kubelet's answer to the registration.
    Registered { ok: bool, error: String },
    /// A server ended by itself.
    Ended { generation: u64, error: String },
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Clone)]
struct Service {
    dra: Arc<Dra>,
    events: mpsc::UnboundedSender<Event>,
    endpoint: String,
    stop: watch::Receiver<bool>,
}

impl Service {
    async fn prepare_one(&self, c: v1::Claim) -> v1::NodePrepareResourceResponse {
        let claim = ClaimRef {
            namespace: c.namespace,
            name: c.name,
            uid: c.uid,
        };
        let mut fetched = None;
        let result = async {
            claim.check_uid().map_err(|e| e.to_string())?;
            // Right after a start, kubelet may ask before the first discovery is in.
            let mut view = self.dra.view.clone();
            tokio::time::timeout(Duration::from_secs(10), view.wait_for(|v| v.ready))
                .await
                .map_err(|_| "the node's devices are not discovered yet".to_string())?
                .map_err(|_| "the daemon is stopping".to_string())?;
            let status = super::claims::fetch_status(&self.dra.claims_socket, &claim).await?;
            fetched = Some(status.clone());
            let dra = self.dra.clone();
            let claim2 = claim.clone();
            tokio::task::spawn_blocking(move || dra.prepare(&claim2, &status))
                .await
                .map_err(|e| format!("prepare ended: {e}"))?
        }
        .await;
        if let Some(status) = fetched {
            // The outcome on the claim, per device (`status.devices[].conditions`), through the
            // sidecar; kubelet's answer does not wait for it.
            let error = result.as_ref().err().map(String::as_str);
            let devices = super::claims::device_statuses(
                &status,
                &self.dra.driver,
                error,
                &super::claims::rfc3339_now(),
            );
            if !devices.is_empty() {
                let (socket, claim) = (self.dra.claims_socket.clone(), claim.clone());
                let metrics = self.dra.ctx.metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = super::claims::report(&socket, &claim, devices).await {
                        metrics.error(crate::metrics::ErrorKind::Dra);
                        tracing::warn!(claim = %claim.label(), "cannot report to the claim: {e}");
                    }
                });
            }
        }
        match result {
            Ok(devices) => v1::NodePrepareResourceResponse {
                devices: devices
                    .into_iter()
                    .map(|d| v1::Device {
                        request_names: vec![d.request],
                        pool_name: d.pool,
                        device_name: d.device,
                        cdi_device_ids: vec![d.cdi_device_id],
                        share_id: None,
                    })
                    .collect(),
                error: String::new(),
            },
            Err(error) => {
                self.dra.ctx.metrics.error(crate::metrics::ErrorKind::Dra);
                tracing::warn!(claim = %claim.label(), "NodePrepareResources: {error}");
                v1::NodePrepareResourceResponse {
                    devices: vec![],
                    error,
                }
            }
        }
    }

    async fn prepare(
        &self,
        req: v1::NodePrepareResourcesRequest,
    ) -> v1::NodePrepareResourcesResponse {
        let mut claims = std::collections::HashMap::new();
        for c in req.claims {
            let uid = c.uid.clone();
            claims.insert(uid, self.prepare_one(c).await);
        }
        v1::NodePrepareResourcesResponse { claims }
    }

    async fn unprepare(
        &self,
        req: v1::NodeUnprepareResourcesRequest,
    ) -> v1::NodeUnprepareResourcesResponse {
        let mut claims = std::collections::HashMap::new();
        for c in req.claims {
            let claim = ClaimRef {
                namespace: c.namespace,
                name: c.name,
                uid: c.uid,
            };
            let dra = self.dra.clone();
            let claim2 = claim.clone();
            let error = match tokio::task::spawn_blocking(move || dra.unprepare(&claim2)).await {
                Ok(Ok(())) => String::new(),
                Ok(Err(e)) => e,
                Err(e) => format!("unprepare ended: {e}"),
            };
            if !error.is_empty() {
                self.dra.ctx.metrics.error(crate::metrics::ErrorKind::Dra);
                tracing::warn!(claim = %claim.label(), "NodeUnprepareResources: {error}");
            }
            claims.insert(claim.uid, v1::NodeUnprepareResourceResponse { error });
        }
        v1::NodeUnprepareResourcesResponse { claims }
    }
}

/// v1beta1 and v1 messages are the same on the wire (only the package differs).
fn convert<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice()).map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for Service {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        Ok(Response::new(self.prepare(request.into_inner()).await))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        Ok(Response::new(self.unprepare(request.into_inner()).await))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for Service {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let r = self.prepare(convert(&request.into_inner())?).await;
        Ok(Response::new(convert(&r)?))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let r = self.unprepare(convert(&request.into_inner())?).await;
        Ok(Response::new(convert(&r)?))
    }
}

type HealthStream =
    Pin<Box<dyn Stream<Item = Result<hv1::NodeWatchResourcesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl hv1::dra_resource_health_server::DraResourceHealth for Service {
    type NodeWatchResourcesStream = HealthStream;

    /// The full list first, then the full list again whenever a device's health changes, and
    /// every [`super::HEALTH_RESEND`] anyway: kubelet takes a device whose last update is older
    /// than its `health_check_timeout_seconds` for Unknown.
    async fn node_watch_resources(
        &self,
        _: Request<hv1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        let dra = self.dra.clone();
        let mut view = dra.view.clone();
        let stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<Vec<(String, i32, String)>> = None;
            let stop = stopped(stop);
            tokio::pin!(stop);
            let mut resend = false;
            loop {
                let current = view.borrow_and_update().clone();
                let devices = dra.health(&current, unix_now());
                let key: Vec<(String, i32, String)> = devices
                    .iter()
                    .map(|d| {
                        (
                            d.device
                                .as_ref()
                                .map(|i| i.device_name.clone())
                                .unwrap_or_default(),
                            d.health,
                            d.message.clone(),
                        )
                    })
                    .collect();
                if resend || last.as_ref() != Some(&key) {
                    if tx
                        .send(Ok(hv1::NodeWatchResourcesResponse { devices }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = Some(key);
                }
                resend = false;
                tokio::select! {
                    changed = view.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(super::HEALTH_RESEND) => resend = true,
                    _ = &mut stop => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Service {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: sriov_proto::dra::DRA_PLUGIN_TYPE.to_string(),
            name: self.dra.driver.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: sriov_proto::dra::SUPPORTED_VERSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let s = request.into_inner();
        if s.plugin_registered {
            tracing::info!(driver = %self.dra.driver, "registered with kubelet as a DRA driver");
        } else {
            tracing::error!(driver = %self.dra.driver, "kubelet refused the DRA registration: {}", s.error);
        }
        let _ = self.events.send(Event::Dra(DraEvent::Registered {
            ok: s.plugin_registered,
            error: s.error,
        }));
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// The two running servers.
pub struct DraServer {
    sockets: [PathBuf; 2],
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DraServer {
    /// Binds `dra_socket` and `reg_socket` (the latter last: kubelet finds it and dials the
    /// former at once) and serves them; an end by itself is reported as [`DraEvent::Ended`].
    pub fn start(
        dra: Arc<Dra>,
        dra_socket: PathBuf,
        reg_socket: PathBuf,
        events: mpsc::UnboundedSender<Event>,
        generation: u64,
    ) -> std::io::Result<DraServer> {
        if let Some(dir) = dra_socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Some(dir) = reg_socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let service = Service {
            dra,
            events: events.clone(),
            endpoint: dra_socket.display().to_string(),
            stop: stop_rx.clone(),
        };
        let dra_listener = sriov_proto::bind_unix(&dra_socket)?;
        let reg_listener = sriov_proto::bind_unix(&reg_socket)?;
        let main = tonic::transport::Server::builder()
            .add_service(v1::dra_plugin_server::DraPluginServer::new(service.clone()))
            .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(
                service.clone(),
            ))
            .add_service(
                hv1::dra_resource_health_server::DraResourceHealthServer::new(service.clone()),
            )
            .serve_with_incoming_shutdown(
                sriov_proto::serve_unix_incoming(dra_listener),
                stopped(stop_rx.clone()),
            );
        let registration = tonic::transport::Server::builder()
            .add_service(reg::registration_server::RegistrationServer::new(service))
            .serve_with_incoming_shutdown(
                sriov_proto::serve_unix_incoming(reg_listener),
                stopped(stop_rx.clone()),
            );
        let stopping = stop_rx;
        let task = tokio::spawn(async move {
            let error = tokio::select! {
                r = main => format!("the DRA service ended: {r:?}"),
                r = registration => format!("the DRA registration service ended: {r:?}"),
            };
            if !*stopping.borrow() {
                let _ = events.send(Event::Dra(DraEvent::Ended { generation, error }));
            }
        });
        Ok(DraServer {
            sockets: [reg_socket, dra_socket],
            stop: stop_tx,
            task,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Whether both socket files are still there.
    pub fn sockets_present(&self) -> bool {
        self.sockets.iter().all(|s| s.exists())
    }

    /// Stops serving and removes the sockets (the registration one first: kubelet deregisters).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
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
