//! Running the `sriov` CNI plugin against a simulated node: the plugin runs inside the node's
//! netns (`nsenter --net=...`), exactly as a runtime would exec it, with its node-local settings
//! (`SRIOV_CNI_NODE_CONFIG`) naming the lab's sysfs tree and temp folders for its state,
//! device-information files and logs.

#![allow(dead_code)]

use serde_json::{json, Value};
use sriov_e2e::cni::{run_in_node, spawn_in_node, Invocation};
use sriov_e2e::sim::{self, SimNode, SimSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// Installs containernetworking-plugins (static, host-local, host-device) and podman if absent.
pub fn install_test_deps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-cni-test-deps.sh");
        let out = Command::new(&script)
            .output()
            .expect("run install-cni-test-deps.sh");
        assert!(
            out.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// One plugin invocation's outcome.
#[derive(Debug)]
pub struct Call {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Call {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "plugin failed: {self:#?}");
        self
    }
    /// Asserts an error JSON with `code` whose message contains `want`.
    pub fn err(&self, code: u64, want: &str) -> Value {
        assert_ne!(self.code, Some(0), "expected an error: {self:#?}");
        let j = self.json();
        assert_eq!(j["code"], code, "wrong code: {j}");
        let msg = j["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "message {msg:?} lacks {want:?}");
        j
    }
}

/// A simulated node plus the plugin's folders.
pub struct CniLab {
    pub node: SimNode,
    pub bin: PathBuf,
    pub state: tempfile::TempDir,
    pub ipam_dir: tempfile::TempDir,
    /// Holds `cni.json` (the node-local settings), `devinfo/` and `logs/`.
    pub node_dir: tempfile::TempDir,
}

impl CniLab {
    pub fn new(prefix: &str, spec: impl FnOnce(SimSpec) -> SimSpec) -> CniLab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the CNI simulated-node tests need root"
        );
        install_test_deps();
        sim::gc().expect("gc of dead labs");
        let bin = sriov_e2e::workspace_binary("sriov");
        let node = SimNode::up(&spec(SimSpec::new(sim::unique_name(prefix)))).expect("lab up");
        let lab = CniLab {
            node,
            bin,
            state: tempfile::tempdir().unwrap(),
            ipam_dir: tempfile::tempdir().unwrap(),
            node_dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(lab.log_dir()).unwrap();
        lab.set_node_config(json!({}));
        lab
    }

    /// The plugin's node-local settings file.
    pub fn node_config(&self) -> PathBuf {
        self.node_dir.path().join("cni.json")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.node_dir.path().join("logs")
    }

    pub fn device_info_dir(&self) -> PathBuf {
        self.node_dir.path().join("devinfo")
    }

    /// Writes the node-local settings: the lab's sysfs and folders, plus `extra`'s keys.
    pub fn set_node_config(&self, extra: Value) {
        let mut c = json!({
            "sysfsRoot": self.node.sysfs_root(),
            "stateDir": self.state.path(),
            "deviceInfoDir": self.device_info_dir(),
            "logDir": self.log_dir(),
        });
        for (k, v) in extra.as_object().expect("extra must be an object") {
            c[k] = v.clone();
        }
        std::fs::write(self.node_config(), c.to_string()).unwrap();
    }

    /// A new pod netns; returns its path.
    pub fn pod(&self, suffix: &str) -> String {
        let name = self.node.create_pod_netns(suffix).expect("pod netns");
        format!("/var/run/netns/{name}")
    }

    /// The node's name for a pod netns path.
    pub fn ns_name(path: &str) -> &str {
        path.rsplit('/').next().unwrap()
    }

    /// `{cniVersion, name, type}` plus `extra`'s keys.
    pub fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": "sriov-net",
            "type": "sriov",
        });
        for (k, v) in extra.as_object().expect("extra must be an object") {
            c[k] = v.clone();
        }
        c
    }

    pub fn host_local(&self, subnet: &str) -> Value {
        json!({"type": "host-local", "subnet": subnet, "dataDir": self.ipam_dir.path()})
    }

    pub fn call(&self, cmd: &str, cid: &str, ifname: &str, netns: &str, conf: &Value) -> Call {
        self.call_env(cmd, cid, ifname, netns, conf.to_string().as_bytes(), &[])
    }

    pub fn call_env(
        &self,
        cmd: &str,
        cid: &str,
        ifname: &str,
        netns: &str,
        stdin: &[u8],
        env: &[(&str, &str)],
    ) -> Call {
        let call = Invocation {
            command: cmd,
            container_id: cid,
            ifname,
            netns,
        };
        let node_config = self.node_config().display().to_string();
        let mut full_env = vec![("SRIOV_CNI_NODE_CONFIG", node_config.as_str())];
        full_env.extend(env.iter().copied());
        let out = run_in_node(&self.bin, self.node.netns_path(), &call, stdin, &full_env)
            .expect("spawn plugin");
        Call::from(out)
    }

    /// Starts one plugin call without waiting for it (to kill it at a random time).
    pub fn spawn(
        &self,
        cmd: &str,
        cid: &str,
        ifname: &str,
        netns: &str,
        conf: &Value,
    ) -> std::process::Child {
        let call = Invocation {
            command: cmd,
            container_id: cid,
            ifname,
            netns,
        };
        let node_config = self.node_config().display().to_string();
        spawn_in_node(
            &self.bin,
            self.node.netns_path(),
            &call,
            conf.to_string().as_bytes(),
            &[("SRIOV_CNI_NODE_CONFIG", node_config.as_str())],
        )
        .expect("spawn plugin")
    }

    /// `ip -j -d link show` of the node (or of netns `ns`), by name.
    pub fn links_in(ns: &str) -> Vec<Value> {
        let out = Command::new("ip")
            .args(["-n", ns, "-j", "-d", "link", "show"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn node_link(&self, name: &str) -> Option<Value> {
        Self::links_in(&self.node.netns_name())
            .into_iter()
            .find(|l| l["ifname"] == name)
    }

    pub fn pod_link(pod: &str, name: &str) -> Option<Value> {
        Self::links_in(Self::ns_name(pod))
            .into_iter()
            .find(|l| l["ifname"] == name)
    }

    /// What must be identical before ADD and after DEL.
    pub fn fingerprint(&self, name: &str) -> Value {
        let l = self
            .node_link(name)
            .unwrap_or_else(|| panic!("{name} is not on the node"));
        // `ip` shows NO-CARRIER for an up link the kernel has not marked running yet, which
        // lags behind LOWER_UP (linkwatch): not state a restore sets, and it comes and goes.
        let flags: Vec<&Value> = l["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| *f != "NO-CARRIER")
            .collect();
        json!({
            "ifname": l["ifname"], "ifindex": l["ifindex"], "address": l["address"], "mtu": l["mtu"],
            "flags": flags, "promiscuity": l["promiscuity"], "altnames": l.get("altnames"),
        })
    }

    /// Everything in the plugin's state folder but the lock files: records and temporary files.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = self.records();
        let devinfo = self.device_info_dir().join("cni");
        for f in std::fs::read_dir(devinfo).into_iter().flatten() {
            out.push(format!(
                "devinfo/{}",
                f.unwrap().file_name().to_string_lossy()
            ));
        }
        out
    }

    /// State records left, temporary files included (lock files do not count).
    pub fn records(&self) -> Vec<String> {
        match std::fs::read_dir(self.state.path().join("vfs")) {
            Ok(d) => d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Neither our state nor host-local holds anything any more.
    pub fn assert_nothing_held(&self) {
        assert!(
            self.records().is_empty(),
            "state records left: {:?}",
            self.records()
        );
        assert!(
            self.reservations().is_empty(),
            "IPs left: {:?}",
            self.reservations()
        );
    }

    /// IP reservations host-local holds (files named after IPs).
    pub fn reservations(&self) -> Vec<String> {
        let mut out = vec![];
        for net in std::fs::read_dir(self.ipam_dir.path())
            .into_iter()
            .flatten()
        {
            for f in std::fs::read_dir(net.unwrap().path()).into_iter().flatten() {
                let name = f.unwrap().file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Runs `ip -n NS ARGS`, panicking on failure.
    pub fn ip(ns: &str, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(ns)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn vf_pci(&self, pf: u32, vf: u32) -> String {
        sim::vf_pci(pf, vf)
    }
}

impl From<std::process::Output> for Call {
    fn from(out: std::process::Output) -> Call {
        use std::os::unix::process::ExitStatusExt;
        Call {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
