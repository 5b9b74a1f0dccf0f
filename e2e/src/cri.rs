//! A small blocking client of the Kubernetes Container Runtime Interface (CRI), for tests that
//! drive a container runtime (containerd) the way kubelet does: pod sandboxes only.
//!
//! The bindings come from `e2e/proto/cri/runtime/v1/api.proto`, a subset of the real
//! `runtime.v1` API with the same field names and numbers.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

/// CRI `runtime.v1` messages and `runtime_service_client` (the subset we use).
pub mod runtime_v1 {
    tonic::include_proto!("runtime.v1");
}

use runtime_v1 as cri;
use runtime_v1::runtime_service_client::RuntimeServiceClient;

/// How long one call may take by default: RunPodSandbox starts a shim, runc and the CNI
/// plugins.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a CRI runtime service on a Unix socket, with its own tokio runtime.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// Connects to `socket`, retrying until the runtime answers `Version` or `timeout` passes
    /// (a freshly started containerd creates its socket before the CRI service is up).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<CriClient, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = rt.block_on(async {
                let channel = sriov_proto::connect_unix(socket)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let mut client = RuntimeServiceClient::new(channel);
                tokio::time::timeout(
                    Duration::from_secs(5),
                    client.version(cri::VersionRequest {
                        version: "v1".into(),
                    }),
                )
                .await
                .map_err(|_| "Version timed out".to_string())?
                .map_err(|s| format!("Version: {}", s.message()))?;
                Ok::<_, String>(client)
            });
            match attempt {
                Ok(client) => {
                    return Ok(CriClient {
                        rt,
                        client,
                        timeout: CALL_TIMEOUT,
                    })
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("CRI at {}: {e}", socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Limits each later call to `timeout` (e.g. shorter while cleaning up after a failure).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn call<T, F>(
        &mut self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        self.rt.block_on(async {
            tokio::time::timeout(self.timeout, f(client))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded(format!("{what} timed out")))?
                .map(tonic::Response::into_inner)
        })
    }

    pub fn version(&mut self) -> Result<cri::VersionResponse, tonic::Status> {
        self.call("Version", |mut c| async move {
            c.version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// Runs a pod sandbox with the default runtime handler; returns its ID.
    pub fn run_pod_sandbox(
        &mut self,
        config: cri::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// The sandbox's status and (verbose) the runtime's debug info: JSON documents by key.
    pub fn pod_sandbox_status(
        &mut self,
        id: &str,
    ) -> Result<(cri::PodSandboxStatus, HashMap<String, String>), tonic::Status> {
        let id = id.to_string();
        let r = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })?;
        let status = r
            .status
            .ok_or_else(|| tonic::Status::internal("PodSandboxStatus without a status"))?;
        Ok((status, r.info))
    }

    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }
}

/// What kubelet sends for a pod `namespace/name` with `uid` on the pod network (no ports, no
/// DNS, no sysctls), logs in `log_directory`.
pub fn pod_sandbox_config(
    name: &str,
    namespace: &str,
    uid: &str,
    log_directory: &Path,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        labels: HashMap::from([
            ("io.kubernetes.pod.name".into(), name.into()),
            ("io.kubernetes.pod.namespace".into(), namespace.into()),
            ("io.kubernetes.pod.uid".into(), uid.into()),
        ]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    target_id: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
