//! QEMU igb lab: real SR-IOV (Intel 82576 PFs with igbvf VFs) inside a throw-away TCG guest.
//!
//! [`run_vm`] boots a q35 guest with `pfs` emulated igb NICs (each with `vfs` VFs already
//! created), mounts the host's root file system read-only over 9p, chroots into it and runs a
//! command there: the host's freshly built binaries run unchanged in the guest, at the same
//! paths, in the caller's working directory. The command's exit status, stdout and stderr come
//! back through a second, writable 9p share.
//!
//! Everything the lab needs (QEMU 10 from bookworm-backports, a Debian kernel, busybox) is
//! installed on first use and cached in `$SRIOV_LAB_CACHE` (default `/var/cache/sriov-lab`);
//! see [`assets`]. The guest's NICs are attached to an isolated QEMU hub: nothing reaches any
//! network.
//!
//! ```no_run
//! use sriov_e2e::vm::{run_vm, VmSpec};
//! let spec = VmSpec { pfs: 2, vfs: 4, numa: true, ..VmSpec::default() };
//! let out = run_vm(&spec, &["/usr/sbin/ip".into(), "link".into()]).unwrap();
//! assert_eq!(out.status, 0, "{}", out.stderr);
//! ```

pub mod assets;
pub mod cli;
pub mod cpio;
pub mod guest;
pub mod initramfs;
pub mod qemu;
mod run;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use run::{run_vm, run_vm_with};

/// Debian guest kernel series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelSeries {
    /// `linux-image-6.12.*-amd64` from bookworm-backports (modules are `.ko.xz`).
    #[default]
    V6_12,
    /// `linux-image-6.1.*-amd64` from bookworm (plain `.ko` modules).
    V6_1,
}

impl KernelSeries {
    /// The series as written on the command line (`6.12`, `6.1`).
    pub fn as_str(self) -> &'static str {
        match self {
            KernelSeries::V6_12 => "6.12",
            KernelSeries::V6_1 => "6.1",
        }
    }
}

impl fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KernelSeries {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "6.12" => Ok(KernelSeries::V6_12),
            "6.1" => Ok(KernelSeries::V6_1),
            other => Err(format!(
                "unknown kernel series {other:?} (expected 6.12 or 6.1)"
            )),
        }
    }
}

/// The hardware of a lab guest, as `sriov-lab vm` boots it and `sriov-guest-check` expects it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct GuestShape {
    /// igb PFs, each on its own PCIe root port (1..=8).
    #[arg(long, default_value_t = 1)]
    pub pfs: u32,
    /// VFs created on every PF before the command starts (0..=7).
    #[arg(long, default_value_t = 4)]
    pub vfs: u32,
    /// Two NUMA nodes; every second PF sits on node 1.
    #[arg(long)]
    pub numa: bool,
    /// Emulated Intel vIOMMU (intel_iommu=on), for vfio-pci.
    #[arg(long)]
    pub iommu: bool,
}

/// The guest to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Number of igb PFs, each on its own PCIe root port (1..=8).
    pub pfs: u32,
    /// VFs created on every PF before the command starts (0..=7).
    pub vfs: u32,
    /// Two NUMA nodes; odd-numbered PFs (the second, fourth, ...) sit on a `pxb-pcie` host
    /// bridge of node 1, the others on `pcie.0` (whose devices report `numa_node` -1).
    pub numa: bool,
    /// An emulated Intel vIOMMU (`intel_iommu=on`), so VFs get IOMMU groups and vfio-pci
    /// works; the vfio modules are loaded.
    pub iommu: bool,
    /// Wall-clock limit for the whole guest run (boot, command, power-off).
    pub timeout: Duration,
    /// Guest kernel series.
    pub kernel: KernelSeries,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            pfs: 1,
            vfs: 4,
            numa: false,
            iommu: false,
            timeout: Duration::from_secs(180),
            kernel: KernelSeries::default(),
        }
    }
}

impl VmSpec {
    /// Rejects layouts the emulated hardware cannot provide.
    pub fn validate(&self) -> Result<(), VmError> {
        if !(1..=8).contains(&self.pfs) {
            return Err(VmError::Spec(format!(
                "pfs must be 1..=8, got {}",
                self.pfs
            )));
        }
        if self.vfs > 7 {
            return Err(VmError::Spec(format!(
                "the emulated 82576 supports at most 7 VFs per PF, got {}",
                self.vfs
            )));
        }
        if self.timeout.is_zero() {
            return Err(VmError::Spec("timeout must be positive".into()));
        }
        Ok(())
    }
}

/// Extra knobs for [`run_vm_with`].
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Environment variables set for the command (on top of `PATH`, `HOME`, `SRIOV_LAB_VM=1`,
    /// `SRIOV_LAB_RESULTS` and the caller's `RUST_LOG`/`RUST_BACKTRACE`, if set).
    pub env: Vec<(String, String)>,
    /// Working directory of the command; default: the caller's current directory.
    pub cwd: Option<PathBuf>,
    /// Copy the command's stdout/stderr to this process's stdout/stderr while it runs.
    pub stream_output: bool,
    /// Copy the guest console to this process's stderr (prefixed with `vm| `) while it runs.
    pub stream_console: bool,
    /// Keep the run folder (console log, results share) instead of deleting it.
    pub keep_run_dir: bool,
}

/// What came back from the guest.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// The command's exit status (128+N when killed by signal N, 127 when not found).
    pub status: i32,
    /// The command's stdout.
    pub stdout: String,
    /// The command's stderr.
    pub stderr: String,
    /// The whole guest serial console.
    pub console: String,
    /// Wall time from QEMU start to its exit.
    pub elapsed: Duration,
    /// The run folder when [`RunOptions::keep_run_dir`] was set.
    pub run_dir: Option<PathBuf>,
}

impl VmOutcome {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Why the guest could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The spec is out of range.
    #[error("invalid VM spec: {0}")]
    Spec(String),
    /// Installing or preparing QEMU, the kernel, busybox or the initramfs failed.
    #[error("sriov-lab setup failed: {0}")]
    Setup(String),
    /// The guest did not finish in time; the console's last lines are included.
    #[error(
        "guest did not finish within {}s and was killed; last console lines:\n{console_tail}\n\
         command stdout (tail):\n{stdout_tail}\ncommand stderr (tail):\n{stderr_tail}",
        timeout.as_secs()
    )]
    Timeout {
        timeout: Duration,
        console_tail: String,
        stdout_tail: String,
        stderr_tail: String,
    },
    /// The guest stopped without reporting the command's exit status (boot failure, panic).
    #[error("guest failed: {reason}; last console lines:\n{console_tail}")]
    Guest {
        reason: String,
        console_tail: String,
    },
    /// A host-side I/O error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl VmError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
        let context = context.into();
        move |source| VmError::Io { context, source }
    }
}

/// Environment variable set to `1` for commands running inside the guest.
pub const IN_GUEST_ENV: &str = "SRIOV_LAB_VM";

/// True inside an `sriov-lab vm` guest (the command's environment has `SRIOV_LAB_VM=1`).
pub fn in_guest() -> bool {
    std::env::var(IN_GUEST_ENV).is_ok_and(|v| v == "1")
}

/// The command that re-runs one test of the current test executable (`current_exe()`)
/// inside a guest: `<exe> --exact <test> --nocapture --test-threads=1`.
///
/// Pattern for VM scenarios: the test calls `run_vm(&spec, &guest_test_command("name"))`
/// when [`in_guest`] is false and does the real work when it is true.
pub fn guest_test_command(test: &str) -> std::io::Result<Vec<String>> {
    let exe = std::env::current_exe()?;
    Ok(vec![
        exe.to_string_lossy().into_owned(),
        "--exact".into(),
        test.into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ])
}

/// Last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Progress line on stderr.
pub(crate) fn progress(msg: impl fmt::Display) {
    eprintln!("sriov-lab: {msg}");
}
