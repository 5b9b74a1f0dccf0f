//! The README's first command, `sriov-lab demo`, runs to the end and exits 0 (root).

#[test]
fn the_demo_passes() {
    let bin = sriov_e2e::workspace_binary("sriov-lab");
    // The demo builds the daemon and CNI binaries itself; build them here first so a failure
    // points at the build, not the demo.
    sriov_e2e::workspace_binary("sriov-device-plugin");
    sriov_e2e::workspace_binary("sriov");
    let out = std::process::Command::new(&bin)
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "kubelet sees intel.com/fast: 4 healthy devices",
        "reply from 10.56.0.2",
        "MTU back to 9000",
        "pod-a/net1 in",
        "\"code\":7",
        "daemon exited 0; device-info files left: 0",
        "demo finished: all steps passed",
    ] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
}
