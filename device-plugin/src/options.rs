//! What `sriov-device-plugin run` is told on its command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How pools make themselves known to kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegistrationMode {
    /// The plugin watcher when `<kubelet-dir>/plugins_registry` exists, else `kubelet.sock`.
    #[default]
    Auto,
    /// `Register` on `<kubelet-dir>/device-plugins/kubelet.sock`.
    KubeletSocket,
    /// A socket in `<kubelet-dir>/plugins_registry` serving `GetInfo`.
    PluginWatcher,
}

/// Everything the daemon needs to know from outside.
#[derive(Debug, Clone)]
pub struct Options {
    /// The device plugin config (upstream `config.json`); missing at start = zero config.
    pub config: PathBuf,
    pub sysfs_root: PathBuf,
    /// Holds `device-plugins/`, `plugins_registry/`, `pod-resources/`.
    pub kubelet_dir: PathBuf,
    pub resource_prefix: String,
    /// `/metrics` (and the probes) here.
    pub metrics_address: Option<SocketAddr>,
    /// `/healthz` and `/readyz` here, whatever the metrics address.
    pub probe_address: Option<SocketAddr>,
    /// `/healthz` fails once the main loop has not turned for this long.
    pub liveness_timeout: Duration,
    /// Where device-information files go.
    pub devinfo_dir: PathBuf,
    /// Root of the device nodes (`/dev`) whose host paths Allocate returns.
    pub dev_root: PathBuf,
    /// Network namespace holding the PF netdevs (None: the daemon's own).
    pub netns: Option<PathBuf>,
    pub registration: RegistrationMode,
    /// Backstop re-check of sockets, sysfs and config, for changes no event announced.
    pub resync_interval: Duration,
    /// The CNI plugin's state folder (`stateDir`), where MTU locks are recorded.
    pub cni_state_dir: PathBuf,
    /// Where the node state for the `sriov-node-state` sidecar is written (none = not at all).
    pub node_state_file: Option<PathBuf>,
    /// ddptool, the fallback for DDP profiles devlink does not report (none = not run).
    pub ddptool: Option<PathBuf>,
    /// `--use-cdi`: one CDI spec per pool in this folder, in this spec version.
    pub cdi: Option<CdiOptions>,
    /// Where CDI specs go (`--cdi-dir`): the pools' with `--use-cdi`, the DRA claims' always.
    pub cdi_dir: PathBuf,
    /// The CDI spec version written.
    pub cdi_version: sriov::cdi::Version,
    /// What the daemon serves.
    pub mode: Mode,
    /// The DRA driver's settings (`--mode dra | both`).
    pub dra: Option<DraOptions>,
}

/// What the daemon serves to kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A device plugin per pool (as upstream).
    #[default]
    DevicePlugin,
    /// A DRA kubelet plugin for the node's pools.
    Dra,
    /// Both, for the same pools.
    Both,
}

impl Mode {
    pub fn device_plugin(self) -> bool {
        self != Mode::Dra
    }

    pub fn dra(self) -> bool {
        self != Mode::DevicePlugin
    }
}

/// The DRA driver.
#[derive(Debug, Clone)]
pub struct DraOptions {
    /// The driver name (a DNS subdomain): `spec.driver` of the slices, the socket names.
    pub driver: String,
    /// This node's name: its DRA pool's name.
    pub node_name: String,
    /// The sidecar's claim service.
    pub claims_socket: PathBuf,
    /// Records of prepared claims (`<state_dir>/claims`).
    pub state_dir: PathBuf,
    /// The DRA devices file the sidecar publishes.
    pub devices_file: PathBuf,
    /// Unhealthy devices carry a NoSchedule taint in the slices.
    pub taints: bool,
    /// Attach the pods' prepared VFs as a containerd NRI plugin (`--nri`).
    pub nri: Option<crate::dra::nri::NriOptions>,
}

#[derive(Debug, Clone)]
pub struct CdiOptions {
    pub dir: PathBuf,
    pub version: sriov::cdi::Version,
}

impl Options {
    pub fn device_plugin_dir(&self) -> PathBuf {
        self.kubelet_dir.join("device-plugins")
    }

    pub fn plugins_registry_dir(&self) -> PathBuf {
        self.kubelet_dir.join("plugins_registry")
    }

    pub fn kubelet_socket(&self) -> PathBuf {
        self.device_plugin_dir().join(sriov_proto::KUBELET_SOCKET)
    }

    /// The mode in force: `Auto` resolved by looking at the kubelet folder.
    pub fn effective_registration(&self) -> RegistrationMode {
        match self.registration {
            RegistrationMode::Auto if self.plugins_registry_dir().is_dir() => {
                RegistrationMode::PluginWatcher
            }
            RegistrationMode::Auto => RegistrationMode::KubeletSocket,
            other => other,
        }
    }

    /// The folder where pool sockets live in `mode`.
    pub fn socket_dir(&self, mode: RegistrationMode) -> PathBuf {
        match mode {
            RegistrationMode::PluginWatcher => self.plugins_registry_dir(),
            _ => self.device_plugin_dir(),
        }
    }
}

/// `intel.com_sriov_net.sock`: the socket file of a pool (prefix and name are validated names).
pub fn socket_name(prefix: &str, name: &str) -> String {
    format!("{prefix}_{name}.sock")
}

/// Whether `path` is inside `dir` (both as given, no resolution).
pub fn is_in(path: &Path, dir: &Path) -> bool {
    path.parent() == Some(dir)
}
