//! A DRA node for tests: a simulated node, the in-test API server, the real `sriov-node-state`
//! sidecar (claim service, slice publisher), kubelet's DRA side emulated, and the real daemon in
//! `--mode dra` (or `both`). The test plays the scheduler by writing each claim's
//! `status.allocation` ([`DraWorld::claim`]). Needs root.

use crate::apiserver::{ApiServer, Resource};
use crate::cdi_check::check_spec;
use crate::kubelet::dra::DraKubelet;
use crate::kubelet::{DaemonArgs, DaemonProcess};
use crate::sim::{self, SimNode, SimSpec};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NODE: &str = "worker-1";
pub const DRIVER: &str = "sriov.sriov-rs.io";
pub const WAIT: Duration = Duration::from_secs(15);
/// Two pools: `intel.com/net` (iavf VFs) and `intel.com/dpdk` (vfio-pci VFs).
pub const POOLS: &str = r#"{"resourceList": [
    {"resourceName": "net", "selectors": {"drivers": ["iavf"]}},
    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}}
]}"#;

/// The DRA device name of a PCI address.
pub fn dev(pci: &str) -> String {
    pci.replace([':', '.'], "-")
}

/// An allocation result of our driver on this node.
pub fn result(request: &str, pci: &str) -> Value {
    json!({"request": request, "driver": DRIVER, "pool": NODE, "device": dev(pci)})
}

/// An opaque config entry of our driver.
pub fn vf_config(source: &str, requests: &[&str], params: Value) -> Value {
    json!({"source": source, "requests": requests, "opaque": {"driver": DRIVER, "parameters": params}})
}

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How to start a [`DraWorld`].
pub struct WorldSpec {
    pub prefix: String,
    pub sim: fn(SimSpec) -> SimSpec,
    /// `SRIOV_DP_FAULT` for the daemon.
    pub fault: Option<String>,
    /// `dra` or `both`.
    pub mode: String,
}

impl WorldSpec {
    pub fn new(prefix: &str) -> WorldSpec {
        WorldSpec {
            prefix: prefix.into(),
            sim: |s| s.pfs(2).vfs(4).vfio(1),
            fault: None,
            mode: "dra".into(),
        }
    }
}

/// One test's world; fields drop in order (daemon first).
pub struct DraWorld {
    pub daemon: DaemonProcess,
    pub kubelet: DraKubelet,
    _sidecar: Sidecar,
    pub api: ApiServer,
    pub lab: SimNode,
    pub tmp: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
    /// Extra daemon arguments and environment (kept for [`DraWorld::restart_daemon`]).
    extra: (Vec<String>, Vec<(String, String)>),
}

impl DraWorld {
    pub fn start(spec: WorldSpec) -> DraWorld {
        DraWorld::start_with(spec, |_, _| (vec![], vec![]))
    }

    /// Like [`DraWorld::start`]; `before_daemon` runs once the lab and the folders exist and
    /// gives extra daemon arguments and environment variables.
    pub fn start_with(
        spec: WorldSpec,
        before_daemon: impl FnOnce(&SimNode, &Path) -> (Vec<String>, Vec<(String, String)>),
    ) -> DraWorld {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (a simulated node)"
        );
        sim::gc().expect("gc of dead labs");
        let lab = SimNode::up(&(spec.sim)(SimSpec::new(sim::unique_name(&spec.prefix))))
            .unwrap_or_else(|e| panic!("lab up: {e}"));
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let api = rt.block_on(ApiServer::start()).unwrap();
        api.insert(Resource::Nodes, json!({"metadata": {"name": NODE}}));
        let addr = api.url().trim_start_matches("http://").parse().unwrap();
        let kubeconfig = crate::local::write_kubeconfig(tmp.path(), addr);
        let log = std::fs::File::create(tmp.path().join("sidecar.log")).unwrap();
        let sidecar = Command::new(crate::workspace_binary("sriov-node-state"))
            .arg("--status-file")
            .arg(tmp.path().join("daemon/node-state.json"))
            .arg("--dra-devices-file")
            .arg(tmp.path().join("daemon/dra-devices.json"))
            .arg("--dra-claims-socket")
            .arg(tmp.path().join("sidecar/claims.sock"))
            .args(["--min-interval-seconds", "1", "--resync-seconds", "1"])
            .env("KUBECONFIG", &kubeconfig)
            .env("NODE_NAME", NODE)
            .env("RUST_LOG", "debug")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let kubelet = DraKubelet::start(&tmp.path().join("kubelet")).unwrap();
        std::fs::write(tmp.path().join("config.json"), POOLS).unwrap();
        let extra = before_daemon(&lab, tmp.path());
        let daemon = spawn_daemon(&lab, tmp.path(), spec.fault.as_deref(), &spec.mode, &extra);
        let w = DraWorld {
            daemon,
            kubelet,
            _sidecar: Sidecar(sidecar),
            api,
            lab,
            tmp,
            _rt: rt,
            extra,
        };
        let socket = w.tmp.path().join("sidecar/claims.sock");
        w.wait("the sidecar's claim service", || {
            socket.exists().then_some(())
        });
        w.kubelet
            .wait_for("the driver's registration", WAIT, |s| {
                s.registrations
                    .iter()
                    .any(|r| r.driver == DRIVER)
                    .then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", w.daemon.log()));
        w
    }

    /// Replaces the daemon with a new one (`mode`, no fault) on the same folders.
    pub fn restart_daemon(&mut self, mode: &str) {
        self.daemon = spawn_daemon(&self.lab, self.tmp.path(), None, mode, &self.extra);
    }

    pub fn cdi_dir(&self) -> PathBuf {
        self.tmp.path().join("cdi")
    }

    /// The daemon's record of a claim.
    pub fn record(&self, uid: &str) -> Option<Value> {
        let p = self.tmp.path().join(format!("dra/claims/{uid}.json"));
        std::fs::read(p)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// A claim's CDI spec, checked against the CDI rules.
    pub fn cdi_spec(&self, uid: &str) -> Option<Value> {
        let p = self.cdi_dir().join(format!("{DRIVER}-vf_{uid}.json"));
        std::fs::read(p).ok().map(|b| {
            check_spec(&b).unwrap_or_else(|e| panic!("claim spec breaks the CDI rules: {e}"))
        })
    }

    /// Stores a claim in `default` allocated (by the "scheduler") to `results`, with `config`,
    /// reserved for `pods` (uid `uid-<pod>`); its uid.
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
        c["metadata"]["uid"].as_str().unwrap().to_string()
    }

    /// Polls `f` until it gives a value; panics with the daemon's log after [`WAIT`].
    pub fn wait<T>(&self, what: &str, f: impl Fn() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "never {what}\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn_daemon(
    lab: &SimNode,
    tmp: &Path,
    fault: Option<&str>,
    mode: &str,
    extra: &(Vec<String>, Vec<(String, String)>),
) -> DaemonProcess {
    let mut args = DaemonArgs::on_lab(lab, tmp, tmp.join("config.json"));
    args.extra = [
        format!("--mode={mode}"),
        "--registration=kubelet-socket".to_string(),
        format!("--node-name={NODE}"),
        format!(
            "--dra-claims-socket={}",
            tmp.join("sidecar/claims.sock").display()
        ),
        format!("--dra-state-dir={}", tmp.join("dra").display()),
        format!(
            "--dra-devices-file={}",
            tmp.join("daemon/dra-devices.json").display()
        ),
        format!("--cdi-dir={}", tmp.join("cdi").display()),
    ]
    .to_vec();
    args.extra.extend(extra.0.iter().cloned());
    let bin = crate::workspace_binary("sriov-device-plugin");
    let mut env: Vec<(&str, &str)> = fault.map(|f| ("SRIOV_DP_FAULT", f)).into_iter().collect();
    env.extend(extra.1.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    DaemonProcess::spawn_with_env(&bin, &args, &tmp.join("daemon.log"), &env).unwrap()
}
