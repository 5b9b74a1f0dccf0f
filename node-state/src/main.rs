//! `sriov-node-state`: the sidecar that publishes the node daemon's status file as this node's
//! `SriovNodeState` (see [`sriov_node_state::sidecar`]).

use anyhow::{Context, Result};
use clap::Parser;
use sriov::logging::LogFormat;
use sriov_node_state::sidecar::{self, SidecarOptions};
use sriov_node_state::PublisherConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sriov-node-state",
    version,
    about = "Publishes the node daemon's status as the node's SriovNodeState"
)]
struct Args {
    /// The status file the daemon writes (its --node-state-file).
    #[arg(long, default_value = "/run/sriov-rs/daemon/node-state.json")]
    status_file: PathBuf,
    /// The DRA devices file the daemon writes in DRA mode: publish it as the node's
    /// ResourceSlices (off without it).
    #[arg(long)]
    dra_devices_file: Option<PathBuf>,
    /// Serve the node-local claim service here: the daemon (DRA mode, its
    /// --dra-claims-socket) asks it for the claims kubelet wants prepared.
    #[arg(long)]
    dra_claims_socket: Option<PathBuf>,
    /// This node's name (the object's name; the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// At least this many seconds between two updates of the object.
    #[arg(long, default_value_t = 10)]
    min_interval_seconds: u64,
    /// Seconds between backstop re-reads of the status file.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormatArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() {
    let args = Args::parse();
    sriov::logging::init(
        "sriov-node-state",
        match args.log_format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        },
    );
    if let Err(e) = run(args) {
        eprintln!("sriov-node-state: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    sriov::names::validate_node_name(&args.node_name)?;
    let mut publisher = PublisherConfig::new(args.node_name);
    publisher.min_interval = Duration::from_secs(args.min_interval_seconds);
    let opts = SidecarOptions {
        status_file: args.status_file,
        dra_devices_file: args.dra_devices_file,
        publisher,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        dra_claims_socket: args.dra_claims_socket,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes client (in-cluster config or KUBECONFIG)")?;
        sidecar::run(client, opts).await
    })
}
