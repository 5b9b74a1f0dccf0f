//! `sriov-lab`: build and drive simulated SR-IOV nodes (see `sriov_e2e::sim`).
//! Thin: parse, call the library, print JSON.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use sriov_e2e::sim::{self, Lab, Model, SimSpec};
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sriov-lab",
    version,
    about = "Simulated SR-IOV nodes for sriov-rs tests (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab (replacing one of the same name) and print its description as JSON.
    Up(UpArgs),
    /// Remove a lab: mounts, node and pod netns, folder. Succeeds if already gone.
    Down {
        #[arg(long)]
        name: String,
    },
    /// Write N to a PF's sriov_numvfs the way the kernel handles it; prints the PF as JSON.
    SetVfs {
        #[arg(long)]
        name: String,
        /// PF netdev (ens1f0) or PCI address (0000:3b:00.0).
        #[arg(long)]
        pf: String,
        /// Number of VFs (0 disables SR-IOV; changing non-zero to non-zero needs 0 first).
        n: u32,
    },
    /// Emulate the kernel on writes to sriov_numvfs until SIGINT/SIGTERM;
    /// prints one JSON line per write.
    Kernel {
        #[arg(long)]
        name: String,
    },
    /// Remove every lab whose owner process is dead, and orphaned sriovlab-* netns.
    Gc,
    // ---- QEMU igb VM lab: subcommands `Vm` and `Demo` are added here by the VM work. ----
    /// Boot a QEMU guest with emulated igb (82576) PFs and real igbvf VFs and run COMMAND
    /// there, chrooted into this host's root (read-only), in the current directory. Exits
    /// with COMMAND's status (124: guest timed out, 125: lab failure). Needs root.
    Vm(VmArgs),
    /// The demo: build a simulated node, show its adapters and pools, provision VFs from a
    /// config through the emulated kernel, show the result, tear down. Needs root.
    Demo {
        /// Leave the lab up at the end (remove it with `sriov-lab down`).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Lab name: ^[a-z0-9][a-z0-9-]{0,23}$.
    #[arg(long)]
    name: String,
    /// SR-IOV PFs.
    #[arg(long, default_value_t = 2)]
    pfs: u32,
    /// VFs enabled per PF (0 = SR-IOV disabled).
    #[arg(long, default_value_t = 4)]
    vfs: u32,
    /// sriov_totalvfs of every PF [default: max(vfs, 8)].
    #[arg(long)]
    total_vfs: Option<u32>,
    /// PFs of the first half on NUMA node 0, the others on node 1 (else -1).
    #[arg(long)]
    numa: bool,
    /// Bind the last K VFs of every PF to vfio-pci.
    #[arg(long, default_value_t = 0, value_name = "K")]
    vfio: u32,
    /// Bind the K VFs before those to igb_uio.
    #[arg(long, default_value_t = 0, value_name = "K")]
    uio: u32,
    /// vfio groups without an IOMMU (vfio-noiommu, /dev/vfio/noiommu-N).
    #[arg(long)]
    noiommu: bool,
    /// RDMA devices for the kernel VFs of Mellanox PFs.
    #[arg(long)]
    rdma: bool,
    /// intel (X710), mellanox (ConnectX-5) or mixed (alternating per PF).
    #[arg(long, default_value = "intel")]
    model: Model,
    /// No kernel links: static net/ files instead (huge trees, benchmarks).
    #[arg(long)]
    no_links: bool,
    /// Let `gc` remove the lab once this process is dead [default: kept until `down`].
    #[arg(long)]
    owner_pid: Option<u32>,
}

#[derive(Args)]
struct VmArgs {
    #[command(flatten)]
    guest: sriov_e2e::vm::GuestShape,
    /// Seconds before the guest is killed.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Guest kernel: 6.12 (bookworm-backports) or 6.1 (bookworm).
    #[arg(long, default_value = "6.12")]
    kernel: sriov_e2e::vm::KernelSeries,
    /// Command (and its arguments) to run in the guest.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl VmArgs {
    fn spec(&self) -> sriov_e2e::vm::VmSpec {
        sriov_e2e::vm::VmSpec {
            pfs: self.guest.pfs,
            vfs: self.guest.vfs,
            numa: self.guest.numa,
            iommu: self.guest.iommu,
            timeout: std::time::Duration::from_secs(self.timeout),
            kernel: self.kernel,
        }
    }
}

impl UpArgs {
    fn spec(&self) -> SimSpec {
        SimSpec {
            name: self.name.clone(),
            pfs: self.pfs,
            vfs: self.vfs,
            total_vfs: self.total_vfs,
            numa: self.numa,
            vfio: self.vfio,
            uio: self.uio,
            noiommu: self.noiommu,
            rdma: self.rdma,
            model: self.model,
            links: !self.no_links,
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn kernel(name: &str) -> Result<()> {
    // Block the signals before the emulator thread starts (it inherits the
    // mask), then wait for them here: no handler, no unsafe.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("block SIGINT/SIGTERM")?;
    let lab = Lab::open(name)?;
    // Reports go to pipes a caller may close early: write errors are ignored
    // (println! would panic) so the emulator keeps serving the lab.
    let emulator = lab.emulate_kernel_with(|write| {
        if let Ok(line) = serde_json::to_string(write) {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    })?;
    let _ = writeln!(
        std::io::stderr(),
        "sriov-lab: emulating the kernel for lab {name:?}; stop with SIGINT/SIGTERM"
    );
    let signal = signals.wait().context("wait for SIGINT/SIGTERM")?;
    if let Some(failure) = emulator.failure() {
        anyhow::bail!("kernel emulator stopped: {failure}");
    }
    drop(emulator);
    let _ = writeln!(
        std::io::stderr(),
        "sriov-lab: {signal}, kernel emulator stopped"
    );
    Ok(())
}

fn exec(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => {
            let lab = Lab::create(&args.spec(), args.owner_pid)?;
            print_json(lab.description())
        }
        Command::Down { name } => Ok(sim::down(&name)?),
        Command::SetVfs { name, pf, n } => {
            let mut lab = Lab::open(&name)?;
            lab.set_vfs(&pf, n)?;
            print_json(&lab.description().pf(&pf))
        }
        Command::Kernel { name } => kernel(&name),
        Command::Gc => print_json(&sim::gc()?),
        Command::Vm(args) => {
            std::process::exit(sriov_e2e::vm::cli::run(&args.spec(), &args.command))
        }
        Command::Demo { keep } => sriov_e2e::demo::run(keep),
    }
}

fn main() -> ExitCode {
    match exec(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sriov-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
