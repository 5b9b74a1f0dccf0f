//! A kubelet emulator: the parts of kubelet a device plugin talks to, over real Unix sockets.
//!
//! - `device-plugins/kubelet.sock` serves `Registration`; on `Register` the emulator dials the
//!   plugin's endpoint, calls `GetDevicePluginOptions` and keeps a `ListAndWatch` stream open,
//!   recording every device list, as kubelet's device manager does.
//! - In plugin-watcher mode it scans `plugins_registry/` instead, calls `GetInfo` on each new
//!   socket, connects the same way and answers with `NotifyRegistrationStatus`.
//! - `pod-resources/kubelet.sock` serves `PodResourcesLister` from the allocations made through
//!   [`KubeletEmulator::allocate_pod`].
//! - [`KubeletEmulator::restart`] does what a kubelet restart does to the folder: every socket
//!   in `device-plugins/` is removed and a new `kubelet.sock` appears.
//!
//! The emulator runs its own tokio runtime, so tests call it from plain `#[test]` functions.

mod daemon;
pub mod dra;
mod plugins;
mod pod_resources;
pub mod raw_h2;

use sriov_proto::deviceplugin::v1beta1 as dp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub use daemon::{DaemonArgs, DaemonProcess};
pub use plugins::RegistrationMode;

/// How long a single gRPC call to a plugin may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One `Register` call (or plugin-watcher registration) seen.
#[derive(Debug, Clone)]
pub struct Registration {
    pub at: Instant,
    pub resource: String,
    pub endpoint: PathBuf,
    pub version: String,
    pub options: Option<dp::DevicePluginOptions>,
}

/// What the emulator knows about one resource's plugin.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub endpoint: PathBuf,
    /// From `GetDevicePluginOptions`.
    pub options: Option<dp::DevicePluginOptions>,
    /// The last `ListAndWatch` list.
    pub devices: Vec<dp::Device>,
    /// Every list received, with its arrival time.
    pub updates: Vec<(Instant, Vec<dp::Device>)>,
    /// The `ListAndWatch` stream is open.
    pub connected: bool,
    pub(crate) client: Option<dp::device_plugin_client::DevicePluginClient<Channel>>,
}

impl Plugin {
    pub fn healthy(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.health == sriov_proto::HEALTHY)
            .count()
    }

    pub fn ids(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.id.clone()).collect()
    }
}

/// A container's devices, as the pod resources API reports them.
#[derive(Debug, Clone)]
pub struct PodAllocation {
    pub pod: String,
    pub namespace: String,
    pub container: String,
    pub resource: String,
    pub device_ids: Vec<String>,
}

/// Everything the emulator observed.
#[derive(Debug, Default)]
pub struct State {
    pub registrations: Vec<Registration>,
    pub plugins: BTreeMap<String, Plugin>,
    pub pods: Vec<PodAllocation>,
    pub restarts: Vec<Instant>,
    /// ListAndWatch tasks, aborted when the plugin re-registers or kubelet restarts.
    pub(crate) tasks: BTreeMap<String, JoinHandle<()>>,
}

/// State shared with the server tasks; every change bumps `version`.
pub(crate) struct Shared {
    state: Mutex<State>,
    version: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state and wakes up waiters.
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.version.send_modify(|v| *v += 1);
        out
    }
}

/// A running server task with its stopper.
struct Server {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The emulator. Dropping it stops every server.
pub struct KubeletEmulator {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    mode: RegistrationMode,
    shared: Arc<Shared>,
    registration: Option<Server>,
    pod_resources: Option<Server>,
}

/// `device-plugins/` etc. under the emulated kubelet folder.
pub fn device_plugin_dir(kubelet_dir: &Path) -> PathBuf {
    kubelet_dir.join("device-plugins")
}

impl KubeletEmulator {
    /// Starts kubelet's servers in `kubelet_dir` (created if needed).
    pub fn start(kubelet_dir: &Path, mode: RegistrationMode) -> std::io::Result<KubeletEmulator> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("kubelet-emulator")
            .build()?;
        for sub in ["device-plugins", "pod-resources"] {
            std::fs::create_dir_all(kubelet_dir.join(sub))?;
        }
        if mode == RegistrationMode::PluginWatcher {
            std::fs::create_dir_all(kubelet_dir.join("plugins_registry"))?;
        }
        let (version, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            version,
        });
        let mut k = KubeletEmulator {
            rt,
            dir: kubelet_dir.to_path_buf(),
            mode,
            shared,
            registration: None,
            pod_resources: None,
        };
        k.start_registration()?;
        let pr = {
            let _guard = k.rt.enter();
            pod_resources::serve(
                &kubelet_dir.join("pod-resources/kubelet.sock"),
                k.shared.clone(),
            )?
        };
        k.pod_resources = Some(pr);
        Ok(k)
    }

    fn start_registration(&mut self) -> std::io::Result<()> {
        let _guard = self.rt.enter();
        self.registration = Some(plugins::serve(&self.dir, self.mode, self.shared.clone())?);
        Ok(())
    }

    pub fn kubelet_dir(&self) -> &Path {
        &self.dir
    }

    pub fn mode(&self) -> RegistrationMode {
        self.mode
    }

    /// Reads the state.
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.lock())
    }

    /// Waits until `check` returns Some, re-checking after every change; Err after `timeout`
    /// with the last state described.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> Result<T, String> {
        let mut changes = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        self.rt.block_on(async {
            loop {
                changes.borrow_and_update();
                if let Some(v) = check(&self.shared.lock()) {
                    return Ok(v);
                }
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => {}
                    _ => {
                        if let Some(v) = check(&self.shared.lock()) {
                            return Ok(v);
                        }
                        return Err(format!(
                            "timed out after {timeout:?}; kubelet state: {}",
                            self.describe()
                        ));
                    }
                }
            }
        })
    }

    /// A one-line summary of the plugins, for failure messages.
    pub fn describe(&self) -> String {
        let s = self.shared.lock();
        let plugins: Vec<String> = s
            .plugins
            .iter()
            .map(|(r, p)| {
                format!(
                    "{r}: {} devices ({} healthy), connected={}, updates={}",
                    p.devices.len(),
                    p.healthy(),
                    p.connected,
                    p.updates.len()
                )
            })
            .collect();
        format!(
            "registrations={} plugins=[{}]",
            s.registrations.len(),
            plugins.join("; ")
        )
    }

    /// Waits until `resource`'s plugin is connected and its device list satisfies `check`.
    pub fn wait_devices(
        &self,
        resource: &str,
        timeout: Duration,
        check: impl Fn(&[dp::Device]) -> bool,
    ) -> Result<Vec<dp::Device>, String> {
        self.wait_for(timeout, |s| {
            s.plugins
                .get(resource)
                .filter(|p| p.connected && !p.updates.is_empty() && check(&p.devices))
                .map(|p| p.devices.clone())
        })
        .map_err(|e| format!("{resource}: {e}"))
    }

    /// The plugin of `resource`, if registered.
    pub fn plugin(&self, resource: &str) -> Option<Plugin> {
        self.with_state(|s| s.plugins.get(resource).cloned())
    }

    fn client(
        &self,
        resource: &str,
    ) -> Result<dp::device_plugin_client::DevicePluginClient<Channel>, tonic::Status> {
        self.plugin(resource)
            .and_then(|p| p.client)
            .ok_or_else(|| tonic::Status::unavailable(format!("no plugin for {resource}")))
    }

    /// `GetPreferredAllocation` for one container.
    pub fn preferred_allocation(
        &self,
        resource: &str,
        available: &[String],
        must_include: &[String],
        size: i32,
    ) -> Result<Vec<String>, tonic::Status> {
        let mut client = self.client(resource)?;
        let request = dp::PreferredAllocationRequest {
            container_requests: vec![dp::ContainerPreferredAllocationRequest {
                available_device_i_ds: available.to_vec(),
                must_include_device_i_ds: must_include.to_vec(),
                allocation_size: size,
            }],
        };
        self.rt.block_on(async {
            let r = tokio::time::timeout(CALL_TIMEOUT, client.get_preferred_allocation(request))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("GetPreferredAllocation"))??;
            Ok(r.into_inner()
                .container_responses
                .into_iter()
                .next()
                .map(|c| c.device_i_ds)
                .unwrap_or_default())
        })
    }

    /// `Allocate` for one container.
    pub fn allocate(
        &self,
        resource: &str,
        ids: &[String],
    ) -> Result<dp::ContainerAllocateResponse, tonic::Status> {
        let mut client = self.client(resource)?;
        let request = dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: ids.to_vec(),
            }],
        };
        self.rt.block_on(async {
            let r = tokio::time::timeout(CALL_TIMEOUT, client.allocate(request))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("Allocate"))??;
            r.into_inner()
                .container_responses
                .into_iter()
                .next()
                .ok_or_else(|| tonic::Status::internal("Allocate answered no container"))
        })
    }

    /// `Allocate` for a pod's container; on success the pod resources API reports it.
    pub fn allocate_pod(
        &self,
        pod: &str,
        namespace: &str,
        container: &str,
        resource: &str,
        ids: &[String],
    ) -> Result<dp::ContainerAllocateResponse, tonic::Status> {
        let r = self.allocate(resource, ids)?;
        self.shared.update(|s| {
            s.pods.push(PodAllocation {
                pod: pod.into(),
                namespace: namespace.into(),
                container: container.into(),
                resource: resource.into(),
                device_ids: ids.to_vec(),
            })
        });
        Ok(r)
    }

    /// What kubelet does to the folder when it restarts: its servers go away, every socket in
    /// `device-plugins/` is removed, plugins are forgotten, and a new `kubelet.sock` appears.
    pub fn restart(&mut self) -> std::io::Result<Instant> {
        if let Some(server) = self.registration.take() {
            self.rt.block_on(server.stop());
        }
        self.shared.update(|s| {
            for (_, task) in std::mem::take(&mut s.tasks) {
                task.abort();
            }
            s.plugins.clear();
        });
        let dir = device_plugin_dir(&self.dir);
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if !path.is_dir() {
                std::fs::remove_file(&path)?;
            }
        }
        let at = Instant::now();
        self.shared.update(|s| s.restarts.push(at));
        self.start_registration()?;
        Ok(at)
    }

    /// Stops the registration server and removes `kubelet.sock` (kubelet is down).
    pub fn stop_registration(&mut self) {
        if let Some(server) = self.registration.take() {
            self.rt.block_on(server.stop());
        }
        let _ =
            std::fs::remove_file(device_plugin_dir(&self.dir).join(sriov_proto::KUBELET_SOCKET));
    }
}

impl Drop for KubeletEmulator {
    fn drop(&mut self) {
        let servers: Vec<Server> = self
            .registration
            .take()
            .into_iter()
            .chain(self.pod_resources.take())
            .collect();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut self.shared.lock().tasks)
            .into_values()
            .collect();
        self.rt.block_on(async {
            for t in tasks {
                t.abort();
            }
            for s in servers {
                s.stop().await;
            }
        });
    }
}
