//! A small blocking client of the Kubernetes Container Runtime Interface (CRI), for tests that
//! drive a container runtime (containerd) the way kubelet does: pod sandboxes only. Plus the
//! sandbox ("pause") image such a runtime needs, built locally since no registry is reachable.
//!
//! The bindings are `sriov_proto::cri::runtime::v1` (feature `cri`), a subset of the real
//! `runtime.v1` API with the same field names and numbers.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

pub use sriov_proto::cri::runtime::v1 as runtime_v1;

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

    /// Kubelet's way to clean up: stops and removes each sandbox (the runtime tears down its
    /// network, shim and mounts), ignoring errors, at most 20 s a call.
    pub fn remove_all(&mut self, ids: Vec<String>) {
        self.set_timeout(Duration::from_secs(20));
        for id in ids {
            let _ = self.stop_pod_sandbox(&id);
            let _ = self.remove_pod_sandbox(&id);
        }
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

/// Builds a pause image named `name` as an OCI image layout archive in `work` (created) and
/// returns the archive's path, for `ctr images import`. One layer: a static busybox
/// (`/bin/busybox`, from busybox-static) whose entrypoint sleeps forever. Uses `tar` and
/// `sha256sum`.
pub fn pause_image_archive(work: &Path, name: &str) -> Result<PathBuf, String> {
    let io = |what: &str, e: std::io::Error| format!("pause image: {what}: {e}");
    let rootfs = work.join("rootfs");
    let layout = work.join("oci");
    for sub in ["bin", "dev", "proc", "sys", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).map_err(|e| io("rootfs", e))?;
    }
    std::fs::create_dir_all(layout.join("blobs/sha256")).map_err(|e| io("layout", e))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).map_err(|e| io("/bin/busybox", e))?;
    let layer_tar = work.join("layer.tar");
    tar(&rootfs, &layer_tar)?;
    let layer = blob(
        &layout,
        &std::fs::read(&layer_tar).map_err(|e| io("layer", e))?,
    )?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    // busybox runs the applet named by argv[1] when argv[0] is `busybox`.
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.0]},
    });
    let config = blob(&layout, config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    });
    let manifest = blob(&layout, manifest.to_string().as_bytes())?;
    // containerd names the image after `io.containerd.image.name`.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.0, "size": manifest.1,
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).map_err(|e| io("index", e))?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(|e| io("oci-layout", e))?;
    let archive = work.join("pause.tar");
    tar(&layout, &archive)?;
    Ok(archive)
}

/// `tar -cf archive -C dir .`, owned by root.
fn tar(dir: &Path, archive: &Path) -> Result<(), String> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(archive)
        .arg(".")
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Stores `bytes` as a blob of the OCI layout; returns its digest and size.
fn blob(layout: &Path, bytes: &[u8]) -> Result<(String, usize), String> {
    let hex = sha256_hex(bytes)?;
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes)
        .map_err(|e| format!("blob {hex}: {e}"))?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

/// SHA-256 of `bytes` in hex, by `sha256sum`.
fn sha256_hex(bytes: &[u8]) -> Result<String, String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(bytes)
            .map_err(|e| format!("sha256sum: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(hex) if out.status.success() && hex.len() == 64 => Ok(hex.to_string()),
        _ => Err(format!("sha256sum printed {text:?}")),
    }
}
