//! Kubelet's DRA side, emulated: the plugin watcher finds `<driver>-reg.sock` in
//! `plugins_registry/`, calls `GetInfo` (type `DRAPlugin`, a supported version among
//! `v1.DRAPlugin` / `v1beta1.DRAPlugin`), answers `NotifyRegistrationStatus`, then opens
//! `NodeWatchResources` on the endpoint as kubelet 1.34+ does and keeps every update; tests call
//! `NodePrepareResources` / `NodeUnprepareResources` as kubelet does when a pod with claims is
//! admitted or removed.

use super::CALL_TIMEOUT;
use sriov_proto::dra::health::v1 as hv1;
use sriov_proto::dra::{v1, v1beta1};
use sriov_proto::pluginregistration as reg;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One DRA registration kubelet accepted.
#[derive(Debug, Clone)]
pub struct DraRegistration {
    pub at: Instant,
    pub driver: String,
    pub endpoint: PathBuf,
    pub versions: Vec<String>,
}

#[derive(Debug, Default)]
pub struct DraState {
    pub registrations: Vec<DraRegistration>,
    /// Refused registrations: socket and why.
    pub refused: Vec<(PathBuf, String)>,
    /// Every NodeWatchResources message, in order.
    pub health: Vec<(Instant, Vec<hv1::DeviceHealth>)>,
    /// The health stream is open.
    pub watching: bool,
}

struct Shared {
    state: Mutex<DraState>,
    version: watch::Sender<u64>,
}

impl Shared {
    fn update<T>(&self, f: impl FnOnce(&mut DraState) -> T) -> T {
        let out = f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.version.send_modify(|v| *v += 1);
        out
    }
}

/// The emulated DRA kubelet; dropping it stops it.
pub struct DraKubelet {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

/// A claim as kubelet names it.
pub fn claim(namespace: &str, name: &str, uid: &str) -> v1::Claim {
    v1::Claim {
        namespace: namespace.into(),
        uid: uid.into(),
        name: name.into(),
    }
}

impl DraKubelet {
    /// Watches `<kubelet_dir>/plugins_registry` (created if needed).
    pub fn start(kubelet_dir: &Path) -> std::io::Result<DraKubelet> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("dra-kubelet")
            .build()?;
        let dir = kubelet_dir.join("plugins_registry");
        std::fs::create_dir_all(&dir)?;
        let (version, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(DraState::default()),
            version,
        });
        let (stop, stop_rx) = watch::channel(false);
        rt.spawn(scan(dir, shared.clone(), stop_rx));
        Ok(DraKubelet { rt, shared, stop })
    }

    pub fn with_state<T>(&self, f: impl FnOnce(&DraState) -> T) -> T {
        f(&self.shared.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until `check` says yes (or fails with what the state was).
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&DraState) -> Option<T>,
    ) -> Result<T, String> {
        let mut rx = self.shared.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.with_state(&check) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "kubelet (DRA) never saw {what}: {:?}",
                    self.with_state(|s| format!("{s:?}"))
                ));
            }
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(left, rx.changed()).await });
        }
    }

    /// The endpoint of `driver`'s last registration.
    pub fn endpoint(&self, driver: &str) -> Option<PathBuf> {
        self.with_state(|s| {
            s.registrations
                .iter()
                .rev()
                .find(|r| r.driver == driver)
                .map(|r| r.endpoint.clone())
        })
    }

    async fn channel(endpoint: &Path) -> Result<tonic::transport::Channel, tonic::Status> {
        tokio::time::timeout(CALL_TIMEOUT, sriov_proto::connect_unix(endpoint))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("connect"))?
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    }

    /// `NodePrepareResources` (v1) on `driver`'s endpoint, with `timeout`.
    pub fn prepare_with_timeout(
        &self,
        driver: &str,
        claims: Vec<v1::Claim>,
        timeout: Duration,
    ) -> Result<v1::NodePrepareResourcesResponse, tonic::Status> {
        let endpoint = self
            .endpoint(driver)
            .ok_or_else(|| tonic::Status::not_found(format!("{driver} is not registered")))?;
        self.rt.block_on(async {
            let mut c =
                v1::dra_plugin_client::DraPluginClient::new(Self::channel(&endpoint).await?);
            let r = tokio::time::timeout(
                timeout,
                c.node_prepare_resources(v1::NodePrepareResourcesRequest { claims }),
            )
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("NodePrepareResources"))??;
            Ok(r.into_inner())
        })
    }

    pub fn prepare(
        &self,
        driver: &str,
        claims: Vec<v1::Claim>,
    ) -> Result<v1::NodePrepareResourcesResponse, tonic::Status> {
        self.prepare_with_timeout(driver, claims, Duration::from_secs(20))
    }

    /// `NodePrepareResources` through the v1beta1 service (kubelets before 1.34).
    pub fn prepare_v1beta1(
        &self,
        driver: &str,
        claims: Vec<v1beta1::Claim>,
    ) -> Result<v1beta1::NodePrepareResourcesResponse, tonic::Status> {
        let endpoint = self
            .endpoint(driver)
            .ok_or_else(|| tonic::Status::not_found(format!("{driver} is not registered")))?;
        self.rt.block_on(async {
            let mut c =
                v1beta1::dra_plugin_client::DraPluginClient::new(Self::channel(&endpoint).await?);
            Ok(
                c.node_prepare_resources(v1beta1::NodePrepareResourcesRequest { claims })
                    .await?
                    .into_inner(),
            )
        })
    }

    pub fn unprepare(
        &self,
        driver: &str,
        claims: Vec<v1::Claim>,
    ) -> Result<v1::NodeUnprepareResourcesResponse, tonic::Status> {
        let endpoint = self
            .endpoint(driver)
            .ok_or_else(|| tonic::Status::not_found(format!("{driver} is not registered")))?;
        self.rt.block_on(async {
            let mut c =
                v1::dra_plugin_client::DraPluginClient::new(Self::channel(&endpoint).await?);
            Ok(
                c.node_unprepare_resources(v1::NodeUnprepareResourcesRequest { claims })
                    .await?
                    .into_inner(),
            )
        })
    }

    /// The last health message's devices: name → (health, message).
    pub fn last_health(&self) -> Option<Vec<(String, i32, String)>> {
        self.with_state(DraState::last_health)
    }

    /// One connection to `driver`'s endpoint, kept for many calls as kubelet keeps it.
    pub fn connect(&self, driver: &str) -> Result<DraConnection<'_>, tonic::Status> {
        let endpoint = self
            .endpoint(driver)
            .ok_or_else(|| tonic::Status::not_found(format!("{driver} is not registered")))?;
        let channel = self.rt.block_on(Self::channel(&endpoint))?;
        Ok(DraConnection {
            kubelet: self,
            client: v1::dra_plugin_client::DraPluginClient::new(channel),
        })
    }
}

/// A kept connection to a DRA driver ([`DraKubelet::connect`]).
pub struct DraConnection<'a> {
    kubelet: &'a DraKubelet,
    client: v1::dra_plugin_client::DraPluginClient<tonic::transport::Channel>,
}

impl DraConnection<'_> {
    /// `NodePrepareResources` (v1).
    pub fn prepare(
        &mut self,
        claims: Vec<v1::Claim>,
    ) -> Result<v1::NodePrepareResourcesResponse, tonic::Status> {
        let c = &mut self.client;
        self.kubelet.rt.block_on(async {
            Ok(
                c.node_prepare_resources(v1::NodePrepareResourcesRequest { claims })
                    .await?
                    .into_inner(),
            )
        })
    }

    /// `NodeUnprepareResources` (v1).
    pub fn unprepare(
        &mut self,
        claims: Vec<v1::Claim>,
    ) -> Result<v1::NodeUnprepareResourcesResponse, tonic::Status> {
        let c = &mut self.client;
        self.kubelet.rt.block_on(async {
            Ok(
                c.node_unprepare_resources(v1::NodeUnprepareResourcesRequest { claims })
                    .await?
                    .into_inner(),
            )
        })
    }
}

impl DraState {
    /// The last health message's devices: (name, health, message).
    pub fn last_health(&self) -> Option<Vec<(String, i32, String)>> {
        self.health.last().map(|(_, devs)| {
            devs.iter()
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
                .collect()
        })
    }
}

impl Drop for DraKubelet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn scan(dir: PathBuf, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // By inode and change time too: a socket removed and bound again between two scans is a
    // new one (its inode number may well be the old one's).
    let mut seen: BTreeSet<(PathBuf, (u64, i64, i64))> = BTreeSet::new();
    loop {
        let now: BTreeSet<(PathBuf, (u64, i64, i64))> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with("-reg.sock"))
                    .filter_map(|p| {
                        use std::os::unix::fs::MetadataExt;
                        let m = std::fs::metadata(&p).ok()?;
                        Some((p, (m.ino(), m.ctime(), m.ctime_nsec())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (path, _) in now.difference(&seen) {
            let (shared, path, stop) = (shared.clone(), path.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = register(shared.clone(), &path, stop).await {
                    shared.update(|s| s.refused.push((path.clone(), e)));
                }
            });
        }
        seen = now;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn register(
    shared: Arc<Shared>,
    socket: &Path,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
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
    let problem = if info.r#type != sriov_proto::dra::DRA_PLUGIN_TYPE {
        Some(format!("type {:?} is not DRAPlugin", info.r#type))
    } else if !info
        .supported_versions
        .iter()
        .any(|v| sriov_proto::dra::SUPPORTED_VERSIONS.contains(&v.as_str()))
    {
        Some(format!(
            "no supported version in {:?}",
            info.supported_versions
        ))
    } else if !info.endpoint.starts_with('/') {
        Some(format!(
            "endpoint {:?} is not an absolute path",
            info.endpoint
        ))
    } else {
        None
    };
    client
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: problem.is_none(),
            error: problem.clone().unwrap_or_default(),
        })
        .await
        .map_err(|e| format!("NotifyRegistrationStatus: {e}"))?;
    if let Some(p) = problem {
        return Err(p);
    }
    let endpoint = PathBuf::from(&info.endpoint);
    shared.update(|s| {
        s.registrations.push(DraRegistration {
            at: Instant::now(),
            driver: info.name.clone(),
            endpoint: endpoint.clone(),
            versions: info.supported_versions.clone(),
        })
    });
    // Kubelet 1.34+ watches health on the endpoint when the plugin serves it.
    let channel = tokio::time::timeout(CALL_TIMEOUT, sriov_proto::connect_unix(&endpoint))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect {}: {e}", endpoint.display()))?;
    let mut health = hv1::dra_resource_health_client::DraResourceHealthClient::new(channel);
    let mut stream = health
        .node_watch_resources(hv1::NodeWatchResourcesRequest {})
        .await
        .map_err(|e| format!("NodeWatchResources: {e}"))?
        .into_inner();
    shared.update(|s| s.watching = true);
    let mut stop = stop;
    let end = loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(m)) => shared.update(|s| s.health.push((Instant::now(), m.devices))),
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("NodeWatchResources stream: {e}")),
            },
            _ = stop.wait_for(|s| *s) => break Ok(()),
        }
    };
    shared.update(|s| s.watching = false);
    end
}
