//! One daemon test's world: a simulated node, a kubelet emulator, a config folder updated as
//! Kubernetes updates a mounted ConfigMap, and the real `sriov-device-plugin run` process.

#![allow(dead_code)]

pub use serde_json::Value;
use sriov_e2e::kubelet::{DaemonArgs, DaemonProcess, KubeletEmulator, RegistrationMode};
use sriov_e2e::sim::{self, vf_pci, SimNode, SimSpec};
use sriov_proto::deviceplugin::v1beta1 as dp;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(10);
/// One pool, `intel.com/net`, of the VFs bound to iavf.
pub const IAVF_POOL: &str =
    r#"{"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}"#;

/// One test's world. Fields drop in order: daemon, kubelet, lab, temp folder.
pub struct Env {
    pub daemon: DaemonProcess,
    _kernel: Option<sim::KernelEmulator>,
    pub kubelet: KubeletEmulator,
    pub lab: SimNode,
    pub tmp: tempfile::TempDir,
    pub config_version: u32,
    pub metrics: SocketAddr,
}

/// Writes the config as Kubernetes updates a mounted ConfigMap: a new timestamped folder, then
/// an atomic rename of the `..data` symlink; `config.json` is a symlink through `..data`.
pub fn write_configmap(dir: &Path, version: u32, text: &str) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("config.json"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("config.json");
    if std::fs::symlink_metadata(&link).is_err() {
        symlink("..data/config.json", &link).unwrap();
    }
}

/// How a test's daemon runs, beyond its node and config.
#[derive(Default)]
pub struct Run {
    pub watcher: bool,
    /// Answer `sriov_numvfs` writes (the daemon's provisioning) as the kernel.
    pub emulate_kernel: bool,
    /// Inside the node's netns (no metrics server: the lab's loopback is down).
    pub in_netns: bool,
    pub extra: Vec<String>,
    pub env: Vec<(&'static str, &'static str)>,
    /// Write `<tmp>/node-state.json`.
    pub node_state: bool,
    /// `--netns` (default: the lab's node netns).
    pub netns: Option<PathBuf>,
}

impl Run {
    pub fn mode(&self) -> RegistrationMode {
        if self.watcher {
            RegistrationMode::PluginWatcher
        } else {
            RegistrationMode::KubeletSocket
        }
    }
}

impl Env {
    pub fn new(prefix: &str, spec: SimSpec, config: &str, mode: RegistrationMode) -> Env {
        let run = Run {
            watcher: mode == RegistrationMode::PluginWatcher,
            ..Run::default()
        };
        Env::start(prefix, spec, config, run)
    }

    /// `emulate_kernel`: answer `sriov_numvfs` writes (the daemon's provisioning) as the kernel.
    pub fn with_kernel(prefix: &str, spec: SimSpec, config: &str, emulate_kernel: bool) -> Env {
        let run = Run {
            emulate_kernel,
            ..Run::default()
        };
        Env::start(prefix, spec, config, run)
    }

    /// The daemon runs inside the node's netns, with `extra` flags and no metrics server (the
    /// lab's loopback is down). Its uevent socket hears what is sent in that netns, plus the
    /// kernel's uevents of devices without a netns (PCI, block, ...).
    pub fn in_node_netns(prefix: &str, spec: SimSpec, config: &str, extra: &[&str]) -> Env {
        let run = Run {
            in_netns: true,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..Run::default()
        };
        Env::start(prefix, spec, config, run)
    }

    pub fn start(prefix: &str, spec: SimSpec, config: &str, run: Run) -> Env {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the device plugin tests need root (they build a simulated node)"
        );
        sim::gc().expect("gc of dead labs");
        let bin = sriov_e2e::workspace_binary("sriov-device-plugin");
        let spec = SimSpec {
            name: sim::unique_name(prefix),
            ..spec
        };
        let lab = SimNode::up(&spec).unwrap_or_else(|e| panic!("lab up: {e}"));
        let kernel = run
            .emulate_kernel
            .then(|| lab.emulate_kernel().expect("kernel emulator"));
        let tmp = tempfile::tempdir().unwrap();
        let kubelet_dir = tmp.path().join("kubelet");
        let kubelet = KubeletEmulator::start(&kubelet_dir, run.mode()).expect("kubelet emulator");
        let config_dir = tmp.path().join("pcidp");
        write_configmap(&config_dir, 1, config);
        let metrics = sriov_e2e::local::unused_local_addr();
        let args = DaemonArgs {
            config: config_dir.join("config.json"),
            sysfs_root: lab.sysfs_root().to_path_buf(),
            kubelet_dir,
            devinfo_dir: tmp.path().join("devinfo"),
            dev_root: lab.paths().dev(),
            netns: Some(
                run.netns
                    .clone()
                    .unwrap_or_else(|| lab.netns_path().to_path_buf()),
            ),
            metrics_address: (!run.in_netns).then_some(metrics),
            extra: run.extra.clone(),
        };
        let mut args = args;
        if run.node_state {
            args.extra.push(format!(
                "--node-state-file={}",
                tmp.path().join("node-state.json").display()
            ));
        }
        let log = tmp.path().join("daemon.log");
        let daemon = if run.in_netns {
            DaemonProcess::spawn_in_netns(lab.netns_path(), &bin, &args, &log)
        } else {
            DaemonProcess::spawn_with_env(&bin, &args, &log, &run.env)
        }
        .expect("spawn daemon");
        Env {
            daemon,
            _kernel: kernel,
            kubelet,
            lab,
            tmp,
            config_version: 1,
            metrics,
        }
    }

    pub fn set_config(&mut self, text: &str) {
        self.config_version += 1;
        write_configmap(&self.tmp.path().join("pcidp"), self.config_version, text);
    }

    pub fn devinfo_dir(&self) -> PathBuf {
        self.tmp.path().join("devinfo")
    }

    pub fn wait_devices(
        &self,
        resource: &str,
        check: impl Fn(&[dp::Device]) -> bool,
    ) -> Vec<dp::Device> {
        self.kubelet
            .wait_devices(resource, WAIT, check)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn ip(&self, args: &[&str]) {
        let out = self.lab.ip(args).expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn http_get(&self, path: &str) -> String {
        http_get(self.metrics, path)
    }

    /// The value of the one metric sample written `name` (with its labels).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.http_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until `/metrics` has `name` at `want` or more.
    pub fn wait_metric(&self, name: &str, want: f64) {
        self.wait_metric_is(name, |v| v >= want, &format!("{want} or more"));
    }

    /// Waits until `/metrics` has `name` at a value `check` accepts.
    pub fn wait_metric_is(&self, name: &str, check: impl Fn(f64) -> bool, want: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.metric(name).is_some_and(&check) {
            assert!(
                Instant::now() < deadline,
                "{name} never reached {want}:\n{}",
                self.http_get("/metrics")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn node_state(&self) -> Option<Value> {
        let text = std::fs::read(self.tmp.path().join("node-state.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Waits until the node-state file says what `check` wants.
    pub fn wait_node_state(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.node_state().filter(|v| check(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the node state never showed {what}: {:?}",
                self.node_state()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET path` on `addr`: the whole response (status line, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    {
        let mut s = TcpStream::connect(addr).expect("connect to the daemon's http listener");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Env {
    /// Waits until the daemon logs `text`.
    pub fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.daemon.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the daemon never logged {text:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn ids(devices: &[dp::Device]) -> Vec<String> {
    devices.iter().map(|d| d.id.clone()).collect()
}

pub fn all_healthy(d: &[dp::Device]) -> bool {
    d.iter().all(|d| d.health == sriov_proto::HEALTHY)
}

pub fn vf(pf: u32, k: u32) -> String {
    vf_pci(pf, k)
}
