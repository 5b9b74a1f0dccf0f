//! Kubelet's side of plugin registration and the device plugin connection.

use super::{Plugin, Registration, Server, Shared, CALL_TIMEOUT};
use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::pluginregistration as reg;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// How plugins reach the emulated kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    /// `Register` on `device-plugins/kubelet.sock`.
    KubeletSocket,
    /// Sockets in `plugins_registry/`, found by scanning.
    PluginWatcher,
}

/// How often `plugins_registry/` is scanned (kubelet uses inotify; a test scan is enough).
const WATCHER_SCAN: Duration = Duration::from_millis(10);

struct RegistrationService {
    dir: PathBuf,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl dp::registration_server::Registration for RegistrationService {
    async fn register(
        &self,
        request: Request<dp::RegisterRequest>,
    ) -> Result<Response<dp::Empty>, Status> {
        let req = request.into_inner();
        if req.version != sriov_proto::DEVICE_PLUGIN_API_VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported version {:?}",
                req.version
            )));
        }
        if req.endpoint.contains('/') || req.endpoint.is_empty() {
            return Err(Status::invalid_argument(
                "endpoint must be a file name in device-plugins/",
            ));
        }
        let endpoint = self.dir.join(&req.endpoint);
        self.shared.update(|s| {
            s.registrations.push(Registration {
                at: Instant::now(),
                resource: req.resource_name.clone(),
                endpoint: endpoint.clone(),
                version: req.version.clone(),
                options: req.options,
            })
        });
        // Kubelet answers Register at once and connects in the background.
        spawn_connection(self.shared.clone(), req.resource_name, endpoint);
        Ok(Response::new(dp::Empty {}))
    }
}

/// Starts the kubelet side: `kubelet.sock`, or the `plugins_registry/` scanner.
pub(super) fn serve(
    kubelet_dir: &Path,
    mode: RegistrationMode,
    shared: Arc<Shared>,
) -> std::io::Result<Server> {
    let (stop, stop_rx) = watch::channel(false);
    let task = match mode {
        RegistrationMode::KubeletSocket => {
            let dir = super::device_plugin_dir(kubelet_dir);
            let listener = sriov_proto::bind_unix(dir.join(sriov_proto::KUBELET_SOCKET))?;
            let service = dp::registration_server::RegistrationServer::new(RegistrationService {
                dir,
                shared,
            });
            let mut stop_rx = stop_rx;
            tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        sriov_proto::serve_unix_incoming(listener),
                        async move {
                            let _ = stop_rx.wait_for(|s| *s).await;
                        },
                    )
                    .await;
            })
        }
        RegistrationMode::PluginWatcher => tokio::spawn(scan_registry(
            kubelet_dir.join("plugins_registry"),
            shared,
            stop_rx,
        )),
    };
    Ok(Server { stop, task })
}

/// Connects to a plugin as kubelet's device manager does, replacing an earlier connection of
/// the same resource.
pub(super) fn spawn_connection(shared: Arc<Shared>, resource: String, endpoint: PathBuf) {
    let task_resource = resource.clone();
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        let resource = task_resource;
        let shared = task_shared;
        if let Err(e) = run_connection(&shared, &resource, &endpoint).await {
            debug_log(&format!("kubelet emulator: {resource}: {e}"));
        }
        shared.update(|s| {
            if let Some(p) = s.plugins.get_mut(&resource) {
                if p.endpoint == endpoint {
                    p.connected = false;
                }
            }
        });
    });
    shared.update(|s| {
        if let Some(old) = s.tasks.insert(resource.clone(), task) {
            old.abort();
        }
        if let Some(p) = s.plugins.get_mut(&resource) {
            p.connected = false;
        }
    });
}

fn debug_log(msg: &str) {
    if std::env::var_os("KUBELET_EMULATOR_DEBUG").is_some() {
        eprintln!("{msg}");
    }
}

async fn run_connection(shared: &Shared, resource: &str, endpoint: &Path) -> Result<(), String> {
    let channel = tokio::time::timeout(CALL_TIMEOUT, sriov_proto::connect_unix(endpoint))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect {}: {e}", endpoint.display()))?;
    let mut client = dp::device_plugin_client::DevicePluginClient::new(channel);
    let options =
        tokio::time::timeout(CALL_TIMEOUT, client.get_device_plugin_options(dp::Empty {}))
            .await
            .map_err(|_| "GetDevicePluginOptions timed out".to_string())?
            .map_err(|e| format!("GetDevicePluginOptions: {e}"))?
            .into_inner();
    let mut stream = client
        .list_and_watch(dp::Empty {})
        .await
        .map_err(|e| format!("ListAndWatch: {e}"))?
        .into_inner();
    shared.update(|s| {
        s.plugins.insert(
            resource.to_string(),
            Plugin {
                endpoint: endpoint.to_path_buf(),
                options: Some(options),
                devices: Vec::new(),
                updates: Vec::new(),
                connected: true,
                client: Some(client),
            },
        )
    });
    loop {
        match stream.message().await {
            Ok(Some(list)) => {
                let at = Instant::now();
                shared.update(|s| {
                    if let Some(p) = s.plugins.get_mut(resource) {
                        p.devices = list.devices.clone();
                        p.updates.push((at, list.devices));
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("ListAndWatch stream: {e}")),
        }
    }
}

/// Plugin watcher: every new socket in `dir` gets `GetInfo`, a connection to its endpoint and
/// `NotifyRegistrationStatus`.
async fn scan_registry(dir: PathBuf, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        let now: BTreeSet<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| !p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        for path in now.difference(&seen) {
            let (shared, path) = (shared.clone(), path.clone());
            tokio::spawn(async move {
                if let Err(e) = watcher_register(shared, &path).await {
                    debug_log(&format!(
                        "kubelet emulator: plugin watcher {}: {e}",
                        path.display()
                    ));
                }
            });
        }
        seen = now;
        tokio::select! {
            _ = tokio::time::sleep(WATCHER_SCAN) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn watcher_register(shared: Arc<Shared>, socket: &Path) -> Result<(), String> {
    let channel = tokio::time::timeout(CALL_TIMEOUT, sriov_proto::connect_unix(socket))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = reg::registration_client::RegistrationClient::new(channel);
    let info = client
        .get_info(reg::InfoRequest {})
        .await
        .map_err(|e| format!("GetInfo: {e}"))?
        .into_inner();
    let problem = if info.r#type != sriov_proto::DEVICE_PLUGIN_TYPE {
        Some(format!(
            "type {:?} is not {}",
            info.r#type,
            sriov_proto::DEVICE_PLUGIN_TYPE
        ))
    } else if !info
        .supported_versions
        .iter()
        .any(|v| v == sriov_proto::DEVICE_PLUGIN_API_VERSION)
    {
        Some(format!(
            "no supported version in {:?}",
            info.supported_versions
        ))
    } else {
        None
    };
    let endpoint = if info.endpoint.is_empty() {
        socket.to_path_buf()
    } else {
        PathBuf::from(&info.endpoint)
    };
    if problem.is_none() {
        shared.update(|s| {
            s.registrations.push(Registration {
                at: Instant::now(),
                resource: info.name.clone(),
                endpoint: endpoint.clone(),
                version: sriov_proto::DEVICE_PLUGIN_API_VERSION.to_string(),
                options: None,
            })
        });
        spawn_connection(shared.clone(), info.name.clone(), endpoint);
    }
    client
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: problem.is_none(),
            error: problem.clone().unwrap_or_default(),
        })
        .await
        .map_err(|e| format!("NotifyRegistrationStatus: {e}"))?;
    problem.map_or(Ok(()), Err)
}
