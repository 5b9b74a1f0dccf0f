//! The QEMU lab scenarios (issue: real SR-IOV in CI): discovery, VF settings through the PF,
//! two pods on VLANs, vfio-pci binding, the daemon (device plugin, and DRA prepare binding a
//! VF to vfio-pci) and provisioning, all with the library's own code
//! against real igb/igbvf in one guest (2 PFs x 4 VFs, NUMA, vIOMMU).

use sriov_e2e::vm::{run_vm, VmSpec};
use std::time::Duration;

#[test]
fn igb_scenarios_in_one_guest() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("the QEMU lab tests need root");
    }
    let bin = sriov_e2e::workspace_binary("sriov-guest-check");
    // Run inside the guest from the same folder.
    sriov_e2e::workspace_binary("sriov-device-plugin");
    let spec = VmSpec {
        pfs: 2,
        vfs: 4,
        numa: true,
        iommu: true,
        timeout: Duration::from_secs(240),
        ..VmSpec::default()
    };
    let cmd: Vec<String> = [
        bin.to_str().unwrap(),
        "all",
        "--pfs",
        "2",
        "--vfs",
        "4",
        "--numa",
        "--iommu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_vm(&spec, &cmd).unwrap_or_else(|e| panic!("VM lab failed: {e}"));
    let tail: Vec<&str> = out.console.lines().rev().take(40).collect();
    assert_eq!(
        out.status,
        0,
        "guest checks failed\n--- stdout\n{}\n--- stderr\n{}\n--- console tail\n{}",
        out.stdout,
        out.stderr,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    for s in [
        "discovery",
        "vf-settings",
        "pods",
        "vfio",
        "daemon",
        "dra",
        "provisioning",
    ] {
        assert!(
            out.stdout.contains(&format!("== scenario {s}: ok")),
            "scenario {s} did not run:\n{}",
            out.stdout
        );
    }
}
