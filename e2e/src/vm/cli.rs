//! The logic behind `sriov-lab vm` (its argument parsing lives in the binary).

use super::{run_vm_with, RunOptions, VmError, VmSpec};

/// Exit status when the guest timed out (as with coreutils' `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when the lab itself failed (setup, boot, guest crash).
pub const EXIT_LAB_FAILURE: i32 = 125;

/// Boots the guest, streams the console (prefixed `vm| `) to stderr and the command's
/// stdout/stderr to ours, and returns the process exit status: the command's, or
/// [`EXIT_TIMEOUT`] / [`EXIT_LAB_FAILURE`] after printing why.
pub fn run(spec: &VmSpec, command: &[String]) -> i32 {
    let opts = RunOptions {
        stream_output: true,
        stream_console: true,
        ..RunOptions::default()
    };
    match run_vm_with(spec, command, &opts) {
        Ok(out) => out.status,
        Err(e) => {
            eprintln!("sriov-lab vm: {e}");
            match e {
                VmError::Timeout { .. } => EXIT_TIMEOUT,
                _ => EXIT_LAB_FAILURE,
            }
        }
    }
}
