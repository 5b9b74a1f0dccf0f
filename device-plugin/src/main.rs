//! `sriov-device-plugin`: the sriov-rs node daemon.
//!
//! Subcommands parse their flags here and call into the `sriov` library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sriov::config::{Config, DEFAULT_RESOURCE_PREFIX};
use sriov::discovery::{default_route_interfaces, Node};
use sriov::pools;
use sriov::report::StatusReport;
use sriov::sysfs::Sysfs;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sriov-device-plugin", version, about = "SR-IOV VF pools for kubelet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status {
            sysfs_root,
            config,
            resource_prefix,
            json,
        } => status(sysfs_root, config, &resource_prefix, json),
    };
    if let Err(e) = result {
        eprintln!("sriov-device-plugin: {e:#}");
        std::process::exit(1);
    }
}

fn status(sysfs_root: PathBuf, config: Option<PathBuf>, prefix: &str, json: bool) -> Result<()> {
    let config = match config {
        Some(path) => Config::load(&path, prefix)?,
        None => Config::parse("{}", prefix)?,
    };
    let sysfs = Sysfs::new(&sysfs_root);
    let node = Node::discover(&sysfs, &pools::discovery_options(&config))
        .with_context(|| format!("discovering devices under {}", sysfs_root.display()))?;
    // Only this network namespace's default route matters; a missing /proc/net is no default route.
    let default_routes = default_route_interfaces("/proc/net/route".as_ref()).unwrap_or_default();
    let pools = pools::assign(&config, &node, prefix, &default_routes);
    let report = StatusReport::build(
        &sysfs_root.display().to_string(),
        &node,
        &pools,
        &config.warnings,
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(())
}
