//! `sriov-device-plugin`: the sriov-rs node daemon.
//!
//! Subcommands parse their flags here and call into the `sriov` library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sriov::config::{Config, DEFAULT_RESOURCE_PREFIX};
use sriov::report::StatusReport;
use sriov::sysfs::Sysfs;
use sriov_device_plugin::options::Mode;
use sriov_device_plugin::{LogFormat, Options, RegistrationMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sriov-device-plugin",
    version,
    about = "SR-IOV VF pools for kubelet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon: one kubelet device plugin per pool.
    Run(Box<RunArgs>),
    /// Show the node's network PCI devices, their SR-IOV state and the pools.
    Status {
        /// Root of the sysfs tree to read.
        #[arg(long, default_value = "/sys")]
        sysfs_root: PathBuf,
        /// Device plugin config (upstream config.json format); none = one pool per SR-IOV PF.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Prefix for resources that do not set resourcePrefix.
        #[arg(long, default_value = DEFAULT_RESOURCE_PREFIX)]
        resource_prefix: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The CNI plugin's state folder: shows which pod holds each VF.
        #[arg(long, default_value = "/run/sriov-rs/cni")]
        cni_state_dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RegistrationArg {
    /// plugins_registry/ when kubelet has it, else kubelet.sock.
    Auto,
    /// Register through device-plugins/kubelet.sock.
    KubeletSocket,
    /// Serve GetInfo from a socket in plugins_registry/.
    PluginWatcher,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Device plugin config (upstream config.json format); watched for changes. Missing = one pool
    /// per SR-IOV PF until it appears.
    #[arg(long, default_value = "/etc/pcidp/config.json")]
    config: PathBuf,
    /// Root of the sysfs tree to read.
    #[arg(long, default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Kubelet's folder: holds device-plugins/, plugins_registry/, pod-resources/.
    #[arg(long, default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// Prefix for resources that do not set resourcePrefix.
    #[arg(long, default_value = DEFAULT_RESOURCE_PREFIX)]
    resource_prefix: String,
    /// Serve /metrics (and /healthz, /readyz) on this address (e.g. 0.0.0.0:9808); none = off.
    #[arg(long)]
    metrics_address: Option<SocketAddr>,
    /// Serve the probes /healthz (liveness) and /readyz (readiness) on this address (e.g.
    /// 0.0.0.0:9809), whatever the metrics address; none = off.
    #[arg(long)]
    probe_address: Option<SocketAddr>,
    /// /healthz fails once the main loop has not turned for this many seconds (it turns at least
    /// every sixth of it and every 5 s, whatever --resync-seconds says).
    #[arg(long, default_value_t = 30)]
    liveness_timeout_seconds: u64,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormatArg,
    /// Where device-information files are written.
    #[arg(long, default_value = sriov::devinfo::DEFAULT_DEVINFO_DIR)]
    devinfo_dir: PathBuf,
    /// Root of the device nodes on the host (host paths of /dev/vfio/N, /dev/vhost-net, ...).
    #[arg(long, default_value = "/dev")]
    dev_root: PathBuf,
    /// Network namespace holding the PF netdevs, watched for link events (default: our own).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// How to register with kubelet.
    #[arg(long, value_enum, default_value = "auto")]
    registration: RegistrationArg,
    /// Seconds between backstop re-checks of sockets, config and sysfs.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// The CNI plugin's state folder (its `stateDir`): MTU locks recorded there are enforced.
    #[arg(long, default_value = "/run/sriov-rs/cni")]
    cni_state_dir: PathBuf,
    /// Write the node's adapters, pools and allocations here, as JSON, whenever they change:
    /// the sriov-node-state sidecar publishes the file as the node's SriovNodeState.
    #[arg(long)]
    node_state_file: Option<PathBuf>,
    /// Intel's ddptool: asked for the DDP package of devices devlink reports none for (i40e),
    /// when a pool selects by ddpProfiles [default: not run].
    #[arg(long)]
    ddptool: Option<PathBuf>,
    /// Write a CDI spec per pool and have Allocate return CDI devices (the `cdi.k8s.io/`
    /// annotation and `cdi_devices`) instead of device specs, as upstream's --use-cdi.
    #[arg(long)]
    use_cdi: bool,
    /// Where CDI specs are written (the runtime's dynamic CDI folder).
    #[arg(long, default_value = sriov::cdi::DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
    /// The CDI specification version written: 0.5.0 as upstream, or a newer one (0.6.0-0.8.0,
    /// 1.0.0, 1.1.0) for runtimes that want it.
    #[arg(long, default_value = "0.5.0", value_parser = parse_cdi_version)]
    cdi_spec_version: sriov::cdi::Version,
    /// What to serve to kubelet: a device plugin per pool, a DRA kubelet plugin, or both.
    #[arg(long, value_enum, default_value = "device-plugin")]
    mode: ModeArg,
    /// The DRA driver name (DRA mode).
    #[arg(long, default_value = sriov_node_state::dra::DEFAULT_DRIVER)]
    dra_driver_name: String,
    /// This node's name, the name of its DRA pool (DRA mode; the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The sidecar's node-local claim service (its --dra-claims-socket).
    #[arg(long, default_value = "/run/sriov-rs/node-state/claims.sock")]
    dra_claims_socket: PathBuf,
    /// Where prepared claims are recorded (DRA mode).
    #[arg(long, default_value = sriov::dra_record::DEFAULT_DRA_STATE_DIR)]
    dra_state_dir: PathBuf,
    /// The DRA devices file for the sidecar (its --dra-devices-file).
    #[arg(long, default_value = "/run/sriov-rs/daemon/dra-devices.json")]
    dra_devices_file: PathBuf,
    /// Unhealthy devices carry a NoSchedule device taint in the ResourceSlices (clusters with
    /// DRADeviceTaints).
    #[arg(long)]
    dra_taints: bool,
    /// Also be a containerd NRI plugin that attaches each pod's prepared DRA VFs to its network
    /// namespace (through the CNI plugin, --cni-plugin) and writes networkData to the claims.
    #[arg(long)]
    nri: bool,
    /// The runtime's NRI socket.
    #[arg(long, default_value = sriov_proto::nri::DEFAULT_SOCKET_PATH)]
    nri_socket: PathBuf,
    /// The NRI plugin's index (two digits: plugins are called in ascending order).
    #[arg(long, default_value = "50")]
    nri_plugin_index: String,
    /// The CNI plugin the NRI attach runs (ours, `sriov`).
    #[arg(long, default_value = "/opt/cni/bin/sriov")]
    cni_plugin: PathBuf,
    /// CNI_PATH for the NRI attach's CNI calls (where the IPAM plugins are).
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    DevicePlugin,
    Dra,
    Both,
}

fn parse_cdi_version(s: &str) -> Result<sriov::cdi::Version, String> {
    let v = sriov::cdi::Version::parse(s).map_err(|e| e.to_string())?;
    if v < sriov::cdi::Version::V0_5_0 {
        return Err(format!(
            "{s}: device names that start with a digit (PCI addresses) and host paths need CDI 0.5.0 or newer"
        ));
    }
    Ok(v)
}

fn run(args: RunArgs) -> Result<()> {
    let format = match args.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    sriov::logging::init("sriov-device-plugin", format);
    let opts = Options {
        config: args.config,
        sysfs_root: args.sysfs_root,
        kubelet_dir: args.kubelet_dir,
        resource_prefix: args.resource_prefix,
        metrics_address: args.metrics_address,
        probe_address: args.probe_address,
        liveness_timeout: Duration::from_secs(args.liveness_timeout_seconds.max(1)),
        devinfo_dir: args.devinfo_dir,
        dev_root: args.dev_root,
        netns: args.netns,
        registration: match args.registration {
            RegistrationArg::Auto => RegistrationMode::Auto,
            RegistrationArg::KubeletSocket => RegistrationMode::KubeletSocket,
            RegistrationArg::PluginWatcher => RegistrationMode::PluginWatcher,
        },
        resync_interval: Duration::from_secs(args.resync_seconds.max(1)),
        cni_state_dir: args.cni_state_dir,
        node_state_file: args.node_state_file,
        ddptool: args.ddptool,
        cdi: args
            .use_cdi
            .then(|| sriov_device_plugin::options::CdiOptions {
                dir: args.cdi_dir.clone(),
                version: args.cdi_spec_version,
            }),
        cdi_dir: args.cdi_dir,
        cdi_version: args.cdi_spec_version,
        mode: match args.mode {
            ModeArg::DevicePlugin => Mode::DevicePlugin,
            ModeArg::Dra => Mode::Dra,
            ModeArg::Both => Mode::Both,
        },
        dra: None,
    };
    let mut opts = opts;
    if opts.mode.dra() {
        let node_name = args
            .node_name
            .context("--mode dra/both needs --node-name (or NODE_NAME): the node's DRA pool is named after it")?;
        sriov::names::validate_node_name(&node_name)?;
        sriov::names::validate_resource_prefix(&args.dra_driver_name)
            .context("--dra-driver-name must be a DNS subdomain")?;
        if args.nri {
            sriov_proto::nri::validate_plugin_index(&args.nri_plugin_index)
                .map_err(|e| anyhow::anyhow!("--nri-plugin-index: {e}"))?;
        }
        opts.dra = Some(sriov_device_plugin::options::DraOptions {
            driver: args.dra_driver_name,
            node_name,
            claims_socket: args.dra_claims_socket,
            state_dir: args.dra_state_dir,
            devices_file: args.dra_devices_file,
            taints: args.dra_taints,
            nri: args.nri.then(|| sriov_device_plugin::dra::nri::NriOptions {
                socket: args.nri_socket,
                name: "sriov-rs".into(),
                index: args.nri_plugin_index,
                cni: sriov_device_plugin::dra::nri::CniRunner {
                    plugin: args.cni_plugin,
                    cni_path: args.cni_bin_dir,
                    node_netns: opts.netns.clone(),
                },
            }),
        });
    } else if args.nri {
        anyhow::bail!("--nri attaches DRA-prepared VFs: it needs --mode dra or both");
    }
    // One thread runs every task: the daemon does little work per event, and fewer threads means
    // fewer malloc arenas and stacks (the idle daemon stays under 10 MiB resident). Discovery and
    // provisioning run on blocking threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(sriov_device_plugin::run(opts));
    // The link watcher's blocking thread sits in recv() until a notification comes: exit
    // without waiting for it (dropping the runtime would).
    runtime.shutdown_background();
    result?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Status {
            sysfs_root,
            config,
            resource_prefix,
            json,
            cni_state_dir,
        } => status(sysfs_root, config, &resource_prefix, json, &cni_state_dir),
    };
    if let Err(e) = result {
        eprintln!("sriov-device-plugin: {e:#}");
        std::process::exit(1);
    }
}

fn status(
    sysfs_root: PathBuf,
    config: Option<PathBuf>,
    prefix: &str,
    json: bool,
    cni_state_dir: &std::path::Path,
) -> Result<()> {
    let config = match config {
        Some(path) => Config::load(&path, prefix)?,
        None => Config::parse("{}", prefix)?,
    };
    let report = StatusReport::collect(
        &Sysfs::new(&sysfs_root),
        &config,
        prefix,
        Some(cni_state_dir),
    )
    .with_context(|| format!("discovering devices under {}", sysfs_root.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(())
}
