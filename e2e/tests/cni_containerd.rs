//! A real Kubernetes runtime: containerd 1.6 runs pod sandboxes through its CRI plugin (driven
//! by our CRI client as kubelet would), and its CNI calls reach `sriov` on a simulated node.
//!
//! Each test runs its own containerd (config, root, state, socket, runc root under one temp
//! folder) inside the node's netns (`nsenter --net`, which keeps the host's cgroup mounts),
//! with a pause image built here (a static busybox sleeping) and imported with `ctr`: no
//! registry is needed. The CNI bin folder holds Debian's plugins and, as `sriov`, a wrapper that
//! runs the real plugin and records each call's env and exit code. Needs root.

mod cni_common;

use cni_common::{install_test_deps, CniLab};
use serde_json::{json, Value};
use sriov_e2e::cri::{self, CriClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PAUSE_IMAGE: &str = "localhost/sriov-rs-test/pause:1";
/// Temp folders of our containerd instances; `gc` finds those of dead test processes by it.
const DIR_PREFIX: &str = "sriov-rs-containerd-";
/// The CRI namespace containerd keeps Kubernetes' containers and images in.
const K8S_NS: &str = "k8s.io";
/// containerd 1.6's shims put their sockets in `RUN_DIR/s`, whatever its config says.
const RUN_DIR: &str = "/run/containerd";
const SHIM_SOCKETS: &str = "/run/containerd/s";
/// Where libcni (in containerd) caches each attachment's result.
const CNI_RESULTS: &str = "/var/lib/cni/results";

/// One plugin call as the wrapper recorded it.
#[derive(Debug)]
struct PluginCall {
    command: String,
    container_id: String,
    ifname: String,
    netns: String,
    args: String,
    rc: i32,
}

/// A running pod sandbox.
#[derive(Debug)]
struct Pod {
    id: String,
    ip: String,
    netns: String,
}

/// A containerd instance on a simulated node; dropping it removes the sandboxes, stops
/// containerd and removes whatever it left (shims, containers, mounts, netns), then the lab.
struct Containerd {
    cri: Option<CriClient>,
    child: Option<Child>,
    sandboxes: Vec<String>,
    dir: PathBuf,
    /// Whether /run/containerd (the shims' socket folder) appeared with us.
    created_run_dir: bool,
    lab: CniLab,
}

impl Containerd {
    /// Starts containerd on a new lab (one PF, four VFs) whose only network has the plugin
    /// config `plugin(&lab)`.
    fn start(prefix: &str, plugin: impl FnOnce(&CniLab) -> Value) -> Containerd {
        install_test_deps();
        gc();
        let lab = CniLab::new(prefix, |s| s.pfs(1).vfs(4));
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .unwrap()
            .keep();
        let mut c = Containerd {
            cri: None,
            child: None,
            sandboxes: vec![],
            dir,
            created_run_dir: !Path::new(RUN_DIR).exists(),
            lab,
        };
        std::fs::write(c.dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        c.write_cni(plugin(&c.lab));
        c.write_config();
        let log = std::fs::File::create(c.dir.join("containerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", c.lab.node.netns_path().display()))
            .arg("containerd")
            .arg("--config")
            .arg(c.dir.join("config.toml"))
            // go-cni hands containerd's environment to the plugin: the node-local settings.
            .env("SRIOV_CNI_NODE_CONFIG", c.lab.node_config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        c.child = Some(child);
        match CriClient::connect(&c.socket(), Duration::from_secs(20)) {
            Ok(client) => c.cri = Some(client),
            Err(e) => panic!("{e}\ncontainerd log:\n{}", c.log()),
        }
        c.import_pause_image();
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn cri(&mut self) -> &mut CriClient {
        self.cri.as_mut().expect("connected")
    }

    /// The CNI folders: `bin` with Debian's plugins and the recording `sriov` wrapper, `net.d`
    /// with one conflist.
    fn write_cni(&self, plugin: Value) {
        let bin = self.dir.join("cni-bin");
        let netd = self.dir.join("net.d");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&netd).unwrap();
        // containerd 1.6 has one bin_dir, and it adds the loopback network to every pod.
        for p in ["loopback", "host-local", "static"] {
            std::os::unix::fs::symlink(Path::new(sriov_e2e::cni::CNI_PATH).join(p), bin.join(p))
                .unwrap();
        }
        let wrapper = bin.join("sriov");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n\
                 # Runs the real plugin (same env, stdin, stdout), then records the call.\n\
                 '{bin}'\n\
                 rc=$?\n\
                 printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' \"$CNI_COMMAND\" \"$CNI_CONTAINERID\" \
                 \"$CNI_IFNAME\" \"$CNI_NETNS\" \"$CNI_ARGS\" \"$rc\" >> '{log}'\n\
                 exit $rc\n",
                bin = self.lab.bin.display(),
                log = self.dir.join("calls.log").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut p = self.lab.conf("1.0.0", plugin);
        p.as_object_mut().unwrap().remove("cniVersion");
        p.as_object_mut().unwrap().remove("name");
        let conflist = json!({"cniVersion": "1.0.0", "name": "sriov-net", "plugins": [p]});
        std::fs::write(netd.join("10-sriov.conflist"), conflist.to_string()).unwrap();
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        std::fs::write(
            self.dir.join("config.toml"),
            format!(
                "version = 2\n\
                 root = \"{d}/root\"\n\
                 state = \"{d}/state\"\n\
                 [debug]\n  level = \"debug\"\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
                 [{cri}]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  restrict_oom_score_adj = true\n\
                 [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\
                 [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 [{cri}.containerd.runtimes.runc.options]\n  Root = \"{d}/runc\"\n\
                 [{cri}.cni]\n  bin_dir = \"{d}/cni-bin\"\n  conf_dir = \"{d}/net.d\"\n  max_conf_num = 1\n"
            ),
        )
        .unwrap();
    }

    /// Builds the pause image and imports it into the CRI namespace.
    fn import_pause_image(&self) {
        let tar = cri::pause_image_archive(&self.dir.join("image"), PAUSE_IMAGE)
            .unwrap_or_else(|e| panic!("{e}"));
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", K8S_NS, "images", "import", "--all-platforms"])
            .arg(&tar));
    }

    /// RunPodSandbox for pod `namespace/name`, then its IP and netns from PodSandboxStatus.
    fn run_pod(&mut self, name: &str, namespace: &str, uid: &str) -> Pod {
        let config = cri::pod_sandbox_config(name, namespace, uid, &self.dir.join("pod-logs"));
        let id = match self.cri().run_pod_sandbox(config) {
            Ok(id) => id,
            Err(e) => panic!(
                "RunPodSandbox {namespace}/{name}: {}\nplugin calls: {:#?}\ncontainerd log:\n{}",
                e.message(),
                self.calls(),
                self.log()
            ),
        };
        self.sandboxes.push(id.clone());
        let (status, info) = self
            .cri()
            .pod_sandbox_status(&id)
            .expect("PodSandboxStatus");
        assert_eq!(
            status.state,
            cri::runtime_v1::PodSandboxState::SandboxReady as i32,
            "{status:?}"
        );
        let meta = status.metadata.clone().unwrap_or_default();
        assert_eq!(
            (meta.name.as_str(), meta.namespace.as_str()),
            (name, namespace)
        );
        let ip = status.network.clone().unwrap_or_default().ip;
        let info: Value = serde_json::from_str(info.get("info").expect("verbose info")).unwrap();
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace in the sandbox info: {info}"))
            .to_string();
        Pod { id, ip, netns }
    }

    fn stop(&mut self, id: &str) {
        if let Err(e) = self.cri().stop_pod_sandbox(id) {
            panic!("StopPodSandbox: {}\n{}", e.message(), self.log());
        }
    }

    fn remove(&mut self, id: &str) {
        if let Err(e) = self.cri().remove_pod_sandbox(id) {
            panic!("RemovePodSandbox: {}\n{}", e.message(), self.log());
        }
        self.sandboxes.retain(|s| s != id);
    }

    /// The `sriov` calls so far (ADD, DEL, ... in order), of one sandbox.
    fn calls_of(&self, id: &str) -> Vec<PluginCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.container_id == id)
            .collect()
    }

    /// (command, CNI_NETNS, exit code) of one sandbox's calls.
    fn summary(&self, id: &str) -> Vec<(String, String, i32)> {
        self.calls_of(id)
            .into_iter()
            .map(|k| (k.command, k.netns, k.rc))
            .collect()
    }

    fn calls(&self) -> Vec<PluginCall> {
        calls_in(&self.dir)
    }
}

/// What containerd 1.6 calls for a pod: ADD; DEL at StopPodSandbox; DEL without a netns at
/// RemovePodSandbox (the netns is gone by then). All succeed.
fn containerd_sequence(netns: &str) -> Vec<(String, String, i32)> {
    vec![
        ("ADD".into(), netns.into(), 0),
        ("DEL".into(), netns.into(), 0),
        ("DEL".into(), String::new(), 0),
    ]
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kubelet's way first: containerd tears down the network, the shims and the mounts.
        if let Some(mut cri) = self.cri.take() {
            cri.remove_all(std::mem::take(&mut self.sandboxes));
        }
        if let Some(mut child) = self.child.take() {
            sriov_e2e::procs::terminate(&mut child, Duration::from_secs(5));
        }
        remove_instance(&self.dir);
        if self.created_run_dir {
            // Only empty folders go (remove_dir): never anything of another containerd.
            let _ = std::fs::remove_dir(SHIM_SOCKETS);
            let _ = std::fs::remove_dir(RUN_DIR);
        }
    }
}

/// Runs a command, panicking with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sha256sum` of `bytes`, in hex (never panics: used while dropping).
fn sha256_hex(bytes: &[u8]) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(bytes).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.split_whitespace().next()?.to_string())
}

/// The wrapper's records (lines it could not have written are skipped: used while dropping).
fn calls_in(dir: &Path) -> Vec<PluginCall> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [command, container_id, ifname, netns, args, rc] = f[..] else {
                return None;
            };
            Some(PluginCall {
                command: command.into(),
                container_id: container_id.into(),
                ifname: ifname.into(),
                netns: netns.into(),
                args: args.into(),
                rc: rc.parse().ok()?,
            })
        })
        .collect()
}

/// The value after `flag` in `args`.
fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// Removes what a containerd instance living in `dir` left behind: its daemon, containers,
/// shims, mounts under `dir`, the pod netns the plugin saw, and `dir` itself.
fn remove_instance(dir: &Path) {
    use nix::mount::{umount2, MntFlags};
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let needle = dir.display().to_string();
    // The daemon (its --config is in dir) first, so that it restarts nothing.
    for (pid, args) in sriov_e2e::procs::mentioning(&needle) {
        if args[0] == "containerd" {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let runc_root = dir.join("runc").join(K8S_NS);
    if runc_root.exists() {
        let list = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output();
        for id in list
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "-f", id])
                .output();
        }
    }
    // Shims carry `-namespace NS -id ID -address DIR/containerd.sock`; containerd 1.6 puts
    // their sockets in /run/containerd/s/, named by the SHA-256 of `ADDRESS/NS/ID`.
    for (pid, args) in sriov_e2e::procs::mentioning(&needle) {
        if !args[0].ends_with("containerd-shim-runc-v2") {
            continue;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        if let (Some(ns), Some(id), Some(address)) = (
            arg_after(&args, "-namespace"),
            arg_after(&args, "-id"),
            arg_after(&args, "-address"),
        ) {
            if let Some(hash) = sha256_hex(format!("{address}/{ns}/{id}").as_bytes()) {
                let _ = std::fs::remove_file(Path::new(SHIM_SOCKETS).join(hash));
            }
        }
    }
    let calls = calls_in(dir);
    // libcni's result cache (`<network>-<container>-<ifname>`, also loopback's), which a
    // completed DEL removes.
    for e in std::fs::read_dir(CNI_RESULTS)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if calls
            .iter()
            .any(|c| !c.container_id.is_empty() && name.contains(&format!("-{}-", c.container_id)))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut netns: Vec<String> = calls
        .into_iter()
        .map(|c| c.netns)
        .filter(|n| !n.is_empty())
        .collect();
    netns.sort();
    netns.dedup();
    for ns in netns {
        if Path::new(&ns).exists() {
            let _ = umount2(Path::new(&ns), MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&ns);
        }
    }
    // Overlay rootfs and /dev/shm of the sandboxes. The paths have no characters that
    // mountinfo escapes (temp name, hex IDs).
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = umount2(Path::new(&m), MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Instances of test processes that died without cleaning up (killed by a timeout).
fn gc() {
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            remove_instance(&e.path());
        }
    }
}

/// `ip -4 -j addr` of `ifname` in the netns at `netns`: `ADDR/PREFIX` each.
fn addresses(netns: &str, ifname: &str) -> Vec<String> {
    let out = run(Command::new("ip").args([
        "-n",
        CniLab::ns_name(netns),
        "-4",
        "-j",
        "addr",
        "show",
        "dev",
        ifname,
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The VF is back on the node as it was, and neither our state nor IPAM holds anything.
fn assert_back_and_clean(lab: &CniLab, vf: &str, before: &Value) {
    assert_eq!(&lab.fingerprint(vf), before, "{vf} back and clean");
    lab.assert_nothing_held();
}

/// The VF is the pod's eth0 with its IP and MTU, and gone from the node.
fn assert_attached(c: &Containerd, pod: &Pod, vf: &str, mac: &Value) {
    assert!(
        pod.netns.starts_with("/var/run/netns/cni-"),
        "containerd's netns: {}",
        pod.netns
    );
    let eth0 = CniLab::pod_link(&pod.netns, "eth0").unwrap_or_else(|| {
        panic!(
            "no eth0 in {}: {:?}",
            pod.netns,
            CniLab::links_in(CniLab::ns_name(&pod.netns))
        )
    });
    assert_eq!(eth0["mtu"], 1400, "{eth0}");
    assert_eq!(&eth0["address"], mac, "eth0 is the VF: {eth0}");
    assert!(pod.ip.starts_with("10.97.0."), "sandbox IP {:?}", pod.ip);
    assert_eq!(
        addresses(&pod.netns, "eth0"),
        vec![format!("{}/24", pod.ip)]
    );
    assert!(c.lab.node_link(vf).is_none(), "{vf} still on the node");
    assert_eq!(c.lab.records().len(), 1, "{:?}", c.lab.records());
}

#[test]
fn containerd_cri_pods_get_a_vf_and_give_it_back() {
    let vf = "ens1f0v1";
    let mut c = Containerd::start("cni-containerd", |lab| {
        json!({"type": "sriov", "deviceID": lab.vf_pci(0, 1), "mtu": 1400,
               "ipam": lab.host_local("10.97.0.0/24")})
    });
    let version = c.cri().version().expect("Version");
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    let before = c.lab.fingerprint(vf);
    let mac = before["address"].clone();

    let a = c.run_pod("web-a", "sriov-test", "uid-a");
    assert_attached(&c, &a, vf, &mac);
    let add = &c.calls_of(&a.id)[0];
    assert_eq!(
        (add.command.as_str(), add.ifname.as_str(), add.rc),
        ("ADD", "eth0", 0)
    );
    assert_eq!(add.netns, a.netns);
    for arg in [
        "K8S_POD_NAMESPACE=sriov-test",
        "K8S_POD_NAME=web-a",
        "K8S_POD_UID=uid-a",
        &format!("K8S_POD_INFRA_CONTAINER_ID={}", a.id),
    ] {
        assert!(
            add.args.split(';').any(|a| a == arg),
            "CNI_ARGS {:?} lacks {arg}",
            add.args
        );
    }

    // StopPodSandbox: the first DEL, with the netns; the VF is back at once.
    c.stop(&a.id);
    assert_back_and_clean(&c.lab, vf, &before);
    assert!(!Path::new(&a.netns).exists(), "{} left", a.netns);

    // A new pod gets the VF while the old one still waits for RemovePodSandbox (kubelet
    // removes sandboxes late), whose DEL without a netns must leave the new owner alone.
    let b = c.run_pod("web-b", "sriov-test", "uid-b");
    assert_attached(&c, &b, vf, &mac);
    c.remove(&a.id);
    assert_eq!(c.summary(&a.id), containerd_sequence(&a.netns));
    assert_attached(&c, &b, vf, &mac);

    c.stop(&b.id);
    c.remove(&b.id);
    assert_eq!(c.summary(&b.id), containerd_sequence(&b.netns));
    assert!(c.calls().iter().all(|k| k.rc == 0), "{:#?}", c.calls());
    assert_back_and_clean(&c.lab, vf, &before);
    assert!(!Path::new(&b.netns).exists(), "{} left", b.netns);
    let cached: Vec<String> = std::fs::read_dir(CNI_RESULTS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&a.id) || n.contains(&b.id))
        .collect();
    assert!(cached.is_empty(), "libcni results left: {cached:?}");
}
