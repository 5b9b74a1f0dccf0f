//! `sriov-guest-check`: runs the QEMU lab's scenarios inside the guest (see
//! `sriov_e2e::guest_checks`). Not for hosts: it changes real VFs.

use clap::Parser;
use sriov_e2e::guest_checks::{self, Expect};

#[derive(Parser)]
#[command(about = "Checks sriov-rs against real igb VFs inside the QEMU lab guest")]
struct Cli {
    /// discovery, vf-settings, pods, vfio, provisioning or all
    scenario: String,
    /// How many igb PFs the guest has.
    #[arg(long, default_value_t = 1)]
    pfs: u32,
    /// How many VFs each PF was booted with.
    #[arg(long, default_value_t = 4)]
    vfs: u32,
    /// The guest has two NUMA nodes, the second PF on node 1.
    #[arg(long)]
    numa: bool,
    /// The guest has a vIOMMU (vfio-pci works).
    #[arg(long)]
    iommu: bool,
}

fn main() {
    let cli = Cli::parse();
    let expect = Expect {
        pfs: cli.pfs,
        vfs: cli.vfs,
        numa: cli.numa,
        iommu: cli.iommu,
    };
    if let Err(e) = guest_checks::run(&cli.scenario, &expect) {
        eprintln!("sriov-guest-check: FAILED: {e:#}");
        std::process::exit(1);
    }
    println!("sriov-guest-check {}: passed", cli.scenario);
}
