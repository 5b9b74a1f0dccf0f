//! `sriov-guest-check`: runs the QEMU lab's scenarios inside the guest (see
//! `sriov_e2e::guest_checks`). Not for hosts: it changes real VFs.

use clap::Parser;
use sriov_e2e::guest_checks;
use sriov_e2e::vm::GuestShape;

#[derive(Parser)]
#[command(about = "Checks sriov-rs against real igb VFs inside the QEMU lab guest")]
struct Cli {
    /// discovery, vf-settings, pods, vfio, provisioning or all
    scenario: String,
    /// What the guest was booted with.
    #[command(flatten)]
    guest: GuestShape,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = guest_checks::run(&cli.scenario, &cli.guest) {
        eprintln!("sriov-guest-check: FAILED: {e:#}");
        std::process::exit(1);
    }
    println!("sriov-guest-check {}: passed", cli.scenario);
}
