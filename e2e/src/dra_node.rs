//! A node serving DRA, everything real but the cluster: the daemon (`sriov-device-plugin run
//! --mode dra|both`), the `sriov-node-state` sidecar (its claim service and slice publisher)
//! against the in-process API server emulator, and kubelet's DRA side emulated
//! ([`DraKubelet`]). The caller plays the scheduler: [`DraNode::claim`] stores a claim with its
//! `status.allocation`. On a simulated node ([`DraNodeSpec::on_lab`]: the DRA driver tests, the
//! prepare benchmark) or on the machine's own sysfs ([`DraNodeSpec::on_host`]: the QEMU guest).

use crate::apiserver::{ApiServer, Resource};
use crate::kubelet::dra::DraKubelet;
use crate::kubelet::{DaemonArgs, DaemonProcess};
use crate::sim::SimNode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The node's name (the claims' pool).
pub const NODE: &str = "worker-1";
/// The daemon's default DRA driver name.
pub const DRIVER: &str = "sriov.sriov-rs.io";
/// How long the waits here wait.
pub const WAIT: Duration = Duration::from_secs(15);

/// What to start, and where.
#[derive(Debug, Clone)]
pub struct DraNodeSpec {
    /// The work folder (kubelet, sidecar and daemon folders, state, CDI specs); created, left
    /// for the caller to remove.
    pub dir: PathBuf,
    /// The daemon's `config.json`.
    pub pools: String,
    pub daemon_bin: PathBuf,
    pub sidecar: SidecarMode,
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    /// The node's netns (a simulated node's), for link notifications.
    pub netns: Option<PathBuf>,
    /// `dra` or `both`.
    pub mode: String,
    /// How long to wait for the claim service and the registration at start.
    pub start_timeout: Duration,
    /// More daemon arguments and environment variables (e.g. `--nri`).
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl DraNodeSpec {
    /// On a simulated node; the workspace's binaries (built if needed).
    pub fn on_lab(lab: &SimNode, dir: &Path, pools: &str) -> DraNodeSpec {
        let daemon = crate::workspace_binary("sriov-device-plugin");
        let bins = daemon.parent().expect("a binary's folder");
        DraNodeSpec::on_lab_with(lab, bins, dir, pools)
    }

    /// On a simulated node, with the binaries found in `bins`.
    pub fn on_lab_with(lab: &SimNode, bins: &Path, dir: &Path, pools: &str) -> DraNodeSpec {
        DraNodeSpec {
            dir: dir.to_path_buf(),
            pools: pools.to_string(),
            daemon_bin: bins.join("sriov-device-plugin"),
            sidecar: SidecarMode::Process(bins.join("sriov-node-state")),
            sysfs_root: lab.sysfs_root().to_path_buf(),
            dev_root: lab.paths().dev(),
            netns: Some(lab.netns_path().to_path_buf()),
            mode: "dra".into(),
            start_timeout: WAIT,
            extra_args: vec![],
            env: vec![],
        }
    }

    /// On this machine's `/sys` and `/dev`, with the daemon found in `bins` and the sidecar's
    /// code run in this process.
    pub fn on_host(bins: &Path, dir: &Path, pools: &str) -> DraNodeSpec {
        DraNodeSpec {
            dir: dir.to_path_buf(),
            pools: pools.to_string(),
            daemon_bin: bins.join("sriov-device-plugin"),
            sidecar: SidecarMode::InProcess,
            sysfs_root: "/sys".into(),
            dev_root: "/dev".into(),
            netns: None,
            mode: "dra".into(),
            start_timeout: WAIT,
            extra_args: vec![],
            env: vec![],
        }
    }

    pub fn cdi_dir(&self) -> PathBuf {
        self.dir.join("cdi")
    }

    pub fn claims_socket(&self) -> PathBuf {
        self.dir.join("sidecar/claims.sock")
    }

    /// The daemon's arguments: kubelet folder `kubelet/`, state `dra/`, specs `cdi/`.
    pub fn daemon_args(&self) -> DaemonArgs {
        let d = &self.dir;
        DaemonArgs {
            config: d.join("config.json"),
            sysfs_root: self.sysfs_root.clone(),
            kubelet_dir: d.join("kubelet"),
            devinfo_dir: d.join("devinfo"),
            dev_root: self.dev_root.clone(),
            netns: self.netns.clone(),
            metrics_address: None,
            extra: vec![
                format!("--mode={}", self.mode),
                "--registration=kubelet-socket".to_string(),
                format!("--node-name={NODE}"),
                format!("--dra-claims-socket={}", self.claims_socket().display()),
                format!("--dra-state-dir={}", d.join("dra").display()),
                format!(
                    "--dra-devices-file={}",
                    d.join("daemon/dra-devices.json").display()
                ),
                format!("--cdi-dir={}", self.cdi_dir().display()),
            ]
            .into_iter()
            .chain(self.extra_args.iter().cloned())
            .collect(),
        }
    }

    /// Starts the daemon (`SRIOV_DP_FAULT=fault` when given), logging to `daemon.log`.
    pub fn spawn_daemon(&self, fault: Option<&str>) -> Result<DaemonProcess, String> {
        let mut env: Vec<(&str, &str)> = fault.map(|f| ("SRIOV_DP_FAULT", f)).into_iter().collect();
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        DaemonProcess::spawn_with_env(
            &self.daemon_bin,
            &self.daemon_args(),
            &self.dir.join("daemon.log"),
            &env,
        )
        .map_err(|e| format!("starting {}: {e}", self.daemon_bin.display()))
    }
}

/// How the sidecar runs.
#[derive(Debug, Clone)]
pub enum SidecarMode {
    /// The `sriov-node-state` binary at this path, as deployed.
    Process(PathBuf),
    /// Its code ([`sriov_node_state::sidecar::run`]) on this process's runtime, with a client
    /// of the API server emulator: no second process to start, which under the QEMU lab's TCG
    /// takes seconds. It then handles this process's SIGTERM and SIGINT.
    InProcess,
}

/// The sidecar process, killed when dropped.
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The running node; dropping it stops everything (daemon first).
pub struct DraNode {
    pub daemon: DaemonProcess,
    pub kubelet: DraKubelet,
    _sidecar: Option<Sidecar>,
    pub api: ApiServer,
    pub spec: DraNodeSpec,
    _rt: tokio::runtime::Runtime,
}

impl DraNode {
    /// Starts the API server (with this node's Node), the sidecar, kubelet's DRA side and the
    /// daemon; returns once the claim service listens and the driver is registered.
    pub fn start(spec: DraNodeSpec, fault: Option<&str>) -> Result<DraNode, String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir_all(&spec.dir).map_err(|e| io("the work folder", e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| io("a runtime", e))?;
        let api = rt
            .block_on(ApiServer::start())
            .map_err(|e| io("the API server", e))?;
        api.insert(Resource::Nodes, json!({"metadata": {"name": NODE}}));
        let addr = api
            .url()
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| format!("the API server's address: {e}"))?;
        let sidecar = match &spec.sidecar {
            SidecarMode::Process(bin) => {
                let kubeconfig = crate::local::write_kubeconfig(&spec.dir, addr);
                let log = std::fs::File::create(spec.dir.join("sidecar.log"))
                    .map_err(|e| io("the sidecar log", e))?;
                let child = crate::local::sidecar_command(
                    bin,
                    &spec.dir.join("daemon/node-state.json"),
                    &kubeconfig,
                    NODE,
                    log,
                )
                .arg("--dra-devices-file")
                .arg(spec.dir.join("daemon/dra-devices.json"))
                .arg("--dra-claims-socket")
                .arg(spec.claims_socket())
                .spawn()
                .map_err(|e| format!("starting {}: {e}", bin.display()))?;
                Some(Sidecar(child))
            }
            SidecarMode::InProcess => {
                let mut publisher = sriov_node_state::PublisherConfig::new(NODE);
                publisher.min_interval = Duration::from_secs(1);
                let opts = sriov_node_state::sidecar::SidecarOptions {
                    status_file: spec.dir.join("daemon/node-state.json"),
                    dra_devices_file: Some(spec.dir.join("daemon/dra-devices.json")),
                    publisher,
                    resync: Duration::from_secs(1),
                    dra_claims_socket: Some(spec.claims_socket()),
                };
                let client = {
                    let _in_rt = rt.enter();
                    api.client()
                };
                rt.spawn(async move {
                    if let Err(e) = sriov_node_state::sidecar::run(client, opts).await {
                        eprintln!("the sidecar (in process) stopped: {e:#}");
                    }
                });
                None
            }
        };
        let kubelet =
            DraKubelet::start(&spec.dir.join("kubelet")).map_err(|e| io("kubelet (DRA)", e))?;
        std::fs::write(spec.dir.join("config.json"), &spec.pools)
            .map_err(|e| io("config.json", e))?;
        let daemon = spec.spawn_daemon(fault)?;
        let node = DraNode {
            daemon,
            kubelet,
            _sidecar: sidecar,
            api,
            spec,
            _rt: rt,
        };
        let socket = node.spec.claims_socket();
        let timeout = node.spec.start_timeout;
        node.wait("the sidecar's claim service", timeout, || {
            socket.exists().then_some(())
        })
        .map_err(|e| format!("{e}\n--- sidecar log\n{}", node.sidecar_log()))?;
        node.kubelet
            .wait_for("the driver's registration", timeout, |s| {
                s.registrations
                    .iter()
                    .any(|r| r.driver == DRIVER)
                    .then_some(())
            })
            .map_err(|e| format!("{e}\n{}", node.daemon.log()))?;
        Ok(node)
    }

    /// The sidecar's log so far (a process's).
    pub fn sidecar_log(&self) -> String {
        match self.spec.sidecar {
            SidecarMode::Process(_) => {
                std::fs::read_to_string(self.spec.dir.join("sidecar.log")).unwrap_or_default()
            }
            SidecarMode::InProcess => "(the sidecar runs in this process: no log)".into(),
        }
    }

    pub fn cdi_dir(&self) -> PathBuf {
        self.spec.cdi_dir()
    }

    /// The claim's record in the daemon's state folder.
    pub fn record(&self, uid: &str) -> Option<Value> {
        let p = self.spec.dir.join(format!("dra/claims/{uid}.json"));
        let bytes = std::fs::read(p).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The claim's CDI spec file.
    pub fn cdi_spec_path(&self, uid: &str) -> PathBuf {
        self.cdi_dir().join(format!("{DRIVER}-vf_{uid}.json"))
    }

    /// Stores a claim in `default` allocated (by the "scheduler") to `results`, with `config`,
    /// reserved for `pods`; returns its uid.
    pub fn claim(&self, name: &str, results: Value, config: Value, pods: &[&str]) -> String {
        let reserved: Vec<Value> = pods
            .iter()
            .map(|p| json!({"resource": "pods", "name": p, "uid": format!("uid-{p}")}))
            .collect();
        let c = self.api.insert(
            Resource::ResourceClaims,
            json!({"metadata": {"name": name, "namespace": "default"},
                   "spec": {"devices": {"requests": [{"name": "vf", "exactly": {"deviceClassName": "sriov"}}]}},
                   "status": {"allocation": {"devices": {"results": results, "config": config}},
                              "reservedFor": reserved}}),
        );
        c["metadata"]["uid"]
            .as_str()
            .expect("a stored claim has a uid")
            .to_string()
    }

    /// The claim's `status.devices[]` condition `Ready` for `device`: (status, reason).
    pub fn ready_condition(&self, name: &str, device: &str) -> Option<(String, String)> {
        let c = self.api.get(Resource::ResourceClaims, "default", name)?;
        let d = c["status"]["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == device && d["driver"] == DRIVER)?;
        let cond = d["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?;
        Some((
            cond["status"].as_str()?.to_string(),
            cond["reason"].as_str()?.to_string(),
        ))
    }

    /// Waits until `f` gives a value; the error says what never came, with the daemon's log.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn() -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!("never {what}\n{}", self.daemon.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A DRA device name: the PCI address with `:` and `.` as `-`.
pub fn dev(pci: &str) -> String {
    pci.replace([':', '.'], "-")
}

/// One entry of `status.allocation.devices.results`: `device` (a PCI address) of this node's
/// pool for `request`.
pub fn result(request: &str, pci: &str) -> Value {
    json!({"request": request, "driver": DRIVER, "pool": NODE, "device": dev(pci)})
}

/// One entry of `status.allocation.devices.config`: an opaque config of ours.
pub fn vf_config(source: &str, requests: &[&str], params: Value) -> Value {
    json!({"source": source, "requests": requests, "opaque": {"driver": DRIVER, "parameters": params}})
}

/// `driver: vfio-pci` for every request, from the claim.
pub fn vfio_config() -> Value {
    vf_config(
        "FromClaim",
        &[],
        json!({"apiVersion": format!("{DRIVER}/v1alpha1"), "kind": "VfConfig", "driver": "vfio-pci"}),
    )
}
