//! A real containerd 1.7 with NRI enabled, for tests: Debian trixie's containerd and runc, run
//! from the cached trixie root (`e2e/scripts/install-trixie-containerd.sh`) in a chroot, inside
//! a network namespace the test made.
//!
//! Layout of one instance, all under a fresh temp folder `T` (`sriov-rs-nri-*`):
//! - `T/rootfs`: an overlay of the cached root (the cache is never written), with `/proc`,
//!   `/sys` and `/dev` of the host mounted in (runc needs the cgroup mounts);
//! - `T/shared`, also mounted at the same path inside the chroot: containerd's config, root,
//!   state, sockets (CRI, ttrpc, NRI) and the pods' netns files, so a path containerd reports is
//!   valid outside the chroot too. The two mounts are peers (shared propagation within their
//!   own group, which holds nothing else), so the netns bind mounts containerd makes inside are
//!   seen outside; nothing propagates to or from the rest of the host.
//!
//! Dropping the instance stops the sandboxes (CRI), containerd, its shims and containers, and
//! unmounts and removes everything under `T`; [`gc`] does the same for instances of test
//! processes that died (it checks `T/owner.pid`). Removal only runs once no mount is left
//! under `T`, so a failure to unmount never deletes through a mount into the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cri::{self, CriClient};

/// Temp folder prefix of instances (what [`gc`] looks for).
pub const DIR_PREFIX: &str = "sriov-rs-nri-";
/// The sandbox image every instance gets (built locally, see [`cri::pause_image_archive`]).
pub const PAUSE_IMAGE: &str = "localhost/sriov-rs-test/pause:1";
const K8S_NS: &str = "k8s.io";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs an install script of `e2e/scripts` (idempotent); returns what it printed.
pub fn install(script: &str) -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    run(&mut Command::new(path)).map(|s| s.trim().to_string())
}

fn mount(args: &[&str]) -> Result<(), String> {
    run(Command::new("mount").args(args)).map(drop)
}

/// A running containerd 1.7 with its CRI client.
pub struct Containerd17 {
    dir: PathBuf,
    child: Option<Child>,
    cri: Option<CriClient>,
    sandboxes: Vec<String>,
}

impl Containerd17 {
    /// Starts containerd in the network namespace at `netns` (a path), with the CNI network
    /// `cni_conflist` (a conflist whose plugins are among Debian's `loopback`, `bridge`,
    /// `host-local`), NRI on, and the pause image imported.
    pub fn start(netns: &Path, cni_conflist: &serde_json::Value) -> Result<Containerd17, String> {
        install("install-cni-test-deps.sh")?;
        let cache = install("install-trixie-containerd.sh")?;
        gc();
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            crate::sim::unique_name("c")
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| e.to_string())?;
        let mut c = Containerd17 {
            dir,
            child: None,
            cri: None,
            sandboxes: vec![],
        };
        c.prepare(Path::new(&cache), cni_conflist)?;
        c.launch(netns)?;
        Ok(c)
    }

    fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The NRI socket (the same path inside and outside the chroot).
    pub fn nri_socket(&self) -> PathBuf {
        self.shared().join("nri/nri.sock")
    }

    pub fn cri_socket(&self) -> PathBuf {
        self.shared().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn cri(&mut self) -> &mut CriClient {
        self.cri.as_mut().expect("connected at start")
    }

    /// RunPodSandbox, remembered for the cleanup.
    pub fn run_pod(&mut self, config: cri::runtime_v1::PodSandboxConfig) -> Result<String, String> {
        let id = self
            .cri()
            .run_pod_sandbox(config)
            .map_err(|e| format!("RunPodSandbox: {}", e.message()))?;
        self.sandboxes.push(id.clone());
        Ok(id)
    }

    pub fn stop_pod(&mut self, id: &str) -> Result<(), String> {
        self.cri()
            .stop_pod_sandbox(id)
            .map_err(|e| format!("StopPodSandbox: {}", e.message()))
    }

    pub fn remove_pod(&mut self, id: &str) -> Result<(), String> {
        self.cri()
            .remove_pod_sandbox(id)
            .map_err(|e| format!("RemovePodSandbox: {}", e.message()))?;
        self.sandboxes.retain(|s| s != id);
        Ok(())
    }

    /// The sandbox's network namespace path, from PodSandboxStatus' verbose info.
    pub fn pod_netns(&mut self, id: &str) -> Result<String, String> {
        let (_, info) = self
            .cri()
            .pod_sandbox_status(id)
            .map_err(|e| format!("PodSandboxStatus: {}", e.message()))?;
        let info: serde_json::Value =
            serde_json::from_str(info.get("info").map_or("{}", String::as_str))
                .map_err(|e| e.to_string())?;
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("no network namespace in the sandbox info: {info}"))
    }

    fn prepare(&self, cache: &Path, conflist: &serde_json::Value) -> Result<(), String> {
        let (t, shared, rootfs) = (&self.dir, self.shared(), self.rootfs());
        for d in [
            "upper",
            "work",
            "rootfs",
            "shared/nri",
            "shared/cni-bin",
            "shared/net.d",
        ] {
            std::fs::create_dir_all(t.join(d)).map_err(|e| format!("{d}: {e}"))?;
        }
        let s = |p: &Path| p.display().to_string();
        mount(&[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!(
                "lowerdir={},upperdir={},workdir={}",
                cache.display(),
                t.join("upper").display(),
                t.join("work").display()
            ),
            &s(&rootfs),
        ])?;
        mount(&["-t", "proc", "proc", &s(&rootfs.join("proc"))])?;
        mount(&["--rbind", "/sys", &s(&rootfs.join("sys"))])?;
        mount(&["--rbind", "/dev", &s(&rootfs.join("dev"))])?;
        // The CRI plugin copies these into each sandbox; a minbase root has neither (written
        // through the overlay: the cached root stays as it is).
        std::fs::write(
            rootfs.join("etc/hosts"),
            "127.0.0.1 localhost\n::1 localhost\n",
        )
        .map_err(|e| format!("/etc/hosts: {e}"))?;
        std::fs::write(rootfs.join("etc/resolv.conf"), "")
            .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
        let inside = rootfs.join(shared.strip_prefix("/").map_err(|e| e.to_string())?);
        std::fs::create_dir_all(&inside).map_err(|e| format!("{}: {e}", inside.display()))?;
        mount(&["--bind", &s(&shared), &s(&shared)])?;
        mount(&["--make-shared", &s(&shared)])?;
        mount(&["--bind", &s(&shared), &s(&inside)])?;
        for p in ["loopback", "bridge", "host-local"] {
            std::fs::copy(
                Path::new(crate::cni::CNI_PATH).join(p),
                shared.join("cni-bin").join(p),
            )
            .map_err(|e| format!("CNI plugin {p}: {e}"))?;
        }
        std::fs::write(shared.join("net.d/10-test.conflist"), conflist.to_string())
            .map_err(|e| e.to_string())?;
        let d = shared.display();
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             [debug]\n  level = \"debug\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
             [plugins.\"io.containerd.nri.v1.nri\"]\n  disable = false\n  disable_connections = false\n  \
             socket_path = \"{d}/nri/nri.sock\"\n  plugin_path = \"{d}/nri/plugins\"\n  plugin_config_path = \"{d}/nri/conf.d\"\n  \
             plugin_registration_timeout = \"5s\"\n  plugin_request_timeout = \"5s\"\n\
             [{cri}]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n\
             [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\
             [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.containerd.runtimes.runc.options]\n  Root = \"{d}/runc\"\n\
             [{cri}.cni]\n  bin_dir = \"{d}/cni-bin\"\n  conf_dir = \"{d}/net.d\"\n  max_conf_num = 1\n"
        );
        std::fs::write(shared.join("config.toml"), config).map_err(|e| e.to_string())
    }

    fn launch(&mut self, netns: &Path) -> Result<(), String> {
        let log =
            std::fs::File::create(self.dir.join("containerd.log")).map_err(|e| e.to_string())?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("chroot")
            .arg(self.rootfs())
            .arg("/usr/bin/containerd")
            .arg("--config")
            .arg(self.shared().join("config.toml"))
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("starting containerd: {e}"))?;
        self.child = Some(child);
        let client = CriClient::connect(&self.cri_socket(), Duration::from_secs(30))
            .map_err(|e| format!("{e}\ncontainerd log:\n{}", self.log()))?;
        self.cri = Some(client);
        let tar = cri::pause_image_archive(&self.shared().join("image"), PAUSE_IMAGE)?;
        run(Command::new("chroot")
            .arg(self.rootfs())
            .arg("ctr")
            .arg("--address")
            .arg(self.cri_socket())
            .args(["-n", K8S_NS, "images", "import", "--all-platforms"])
            .arg(&tar))?;
        Ok(())
    }
}

impl Drop for Containerd17 {
    fn drop(&mut self) {
        if let Some(mut cri) = self.cri.take() {
            cri.remove_all(std::mem::take(&mut self.sandboxes));
        }
        if let Some(mut child) = self.child.take() {
            crate::procs::terminate(&mut child, Duration::from_secs(5));
        }
        if let Err(e) = remove_instance(&self.dir) {
            eprintln!("containerd 1.7 instance {}: {e}", self.dir.display());
        }
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut m: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    m.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    m.dedup();
    m
}

/// Stops what an instance in `dir` left running and removes its mounts and files.
fn remove_instance(dir: &Path) -> Result<(), String> {
    use nix::mount::{umount2, MntFlags};
    use nix::sys::signal::{kill, Signal};
    let needle = dir.display().to_string();
    // containerd first (it would restart shims), then shims and the sandboxes' processes.
    for round in 0..2 {
        for (pid, args) in crate::procs::mentioning(&needle) {
            let is_daemon = args
                .iter()
                .any(|a| a.ends_with("/containerd") || a == "containerd");
            if round == 1 || is_daemon {
                let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sandbox processes run in runc's cgroups and chroot; runc's state says which.
    let runc_root = dir.join("shared/runc").join(K8S_NS);
    if runc_root.exists() {
        let list = Command::new("chroot")
            .arg(dir.join("rootfs"))
            .arg("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output();
        let ids = list
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("chroot")
                .arg(dir.join("rootfs"))
                .arg("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "-f", id])
                .output();
        }
    }
    // The peer mounts must not propagate an unmount anywhere else: make them private first.
    for m in mounts_under(dir) {
        let _ = Command::new("mount")
            .arg("--make-rprivate")
            .arg(&m)
            .output();
    }
    for _ in 0..3 {
        for m in mounts_under(dir) {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        if mounts_under(dir).is_empty() {
            break;
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        return Err(format!("mounts left, folder kept: {left:?}"));
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))
}

/// Removes instances whose test process died.
pub fn gc() {
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if !e.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(e.path().join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            if let Err(err) = remove_instance(&e.path()) {
                eprintln!("gc {}: {err}", e.path().display());
            }
        }
    }
}
