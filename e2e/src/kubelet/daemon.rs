//! The real `sriov-device-plugin run` process, pointed at a simulated node and an emulated
//! kubelet folder. Killed on drop (also when a test fails), with its log printed then.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where the daemon looks.
#[derive(Debug, Clone)]
pub struct DaemonArgs {
    pub config: PathBuf,
    pub sysfs_root: PathBuf,
    pub kubelet_dir: PathBuf,
    pub devinfo_dir: PathBuf,
    pub dev_root: PathBuf,
    /// The node netns (the lab's), for link notifications.
    pub netns: Option<PathBuf>,
    pub metrics_address: Option<SocketAddr>,
    /// Any further flags.
    pub extra: Vec<String>,
}

impl DaemonArgs {
    /// The daemon on a simulated node, with `config`, its kubelet folder at `dir/kubelet` and
    /// its device-information files in `dir/devinfo`; no metrics, no further flags.
    pub fn on_lab(lab: &crate::sim::SimNode, dir: &Path, config: PathBuf) -> DaemonArgs {
        DaemonArgs {
            config,
            sysfs_root: lab.sysfs_root().to_path_buf(),
            kubelet_dir: dir.join("kubelet"),
            devinfo_dir: dir.join("devinfo"),
            dev_root: lab.paths().dev(),
            netns: Some(lab.netns_path().to_path_buf()),
            metrics_address: None,
            extra: Vec::new(),
        }
    }
}

/// A running daemon.
pub struct DaemonProcess {
    child: Option<Child>,
    log: PathBuf,
    /// When it was spawned.
    pub started: Instant,
}

impl DaemonProcess {
    /// Spawns `bin run ...`, logging (RUST_LOG, default debug for the daemon) to `log`.
    pub fn spawn(bin: &Path, args: &DaemonArgs, log: &Path) -> std::io::Result<DaemonProcess> {
        Self::spawn_command(Command::new(bin), args, log)
    }

    /// Like [`DaemonProcess::spawn`], with these environment variables (e.g. `SRIOV_DP_FAULT`).
    pub fn spawn_with_env(
        bin: &Path,
        args: &DaemonArgs,
        log: &Path,
        env: &[(&str, &str)],
    ) -> std::io::Result<DaemonProcess> {
        let mut cmd = Command::new(bin);
        cmd.envs(env.iter().copied());
        Self::spawn_command(cmd, args, log)
    }

    /// Like [`DaemonProcess::spawn`], with the daemon inside the network namespace `netns`
    /// (`nsenter --net`, which execs the daemon: the PID is the daemon's).
    pub fn spawn_in_netns(
        netns: &Path,
        bin: &Path,
        args: &DaemonArgs,
        log: &Path,
    ) -> std::io::Result<DaemonProcess> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display())).arg(bin);
        Self::spawn_command(cmd, args, log)
    }

    fn spawn_command(
        mut cmd: Command,
        args: &DaemonArgs,
        log: &Path,
    ) -> std::io::Result<DaemonProcess> {
        cmd.arg("run")
            .arg("--config")
            .arg(&args.config)
            .arg("--sysfs-root")
            .arg(&args.sysfs_root)
            .arg("--kubelet-dir")
            .arg(&args.kubelet_dir)
            .arg("--devinfo-dir")
            .arg(&args.devinfo_dir)
            .arg("--dev-root")
            .arg(&args.dev_root);
        if let Some(ns) = &args.netns {
            cmd.arg("--netns").arg(ns);
        }
        if let Some(addr) = args.metrics_address {
            cmd.arg("--metrics-address").arg(addr.to_string());
        }
        cmd.args(&args.extra);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,sriov_device_plugin=debug");
        }
        let file = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let started = Instant::now();
        let child = cmd.spawn()?;
        Ok(DaemonProcess {
            child: Some(child),
            log: log.to_path_buf(),
            started,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; SIGKILL after that (None).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- sriov-device-plugin log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}
