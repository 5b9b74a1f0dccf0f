//! The QEMU igb lab: boots guests with emulated Intel 82576 PFs and real igbvf VFs and runs
//! scripts from `e2e/vm/` (and, later, workspace test binaries) inside them.
//!
//! Needs root (QEMU, apt on first use). Each boot takes ~10-20 s under TCG, so every test
//! here checks as much as it can per boot.

use std::path::PathBuf;
use std::time::Duration;

use sriov_e2e::vm::{
    guest_test_command, in_guest, run_vm_with, KernelSeries, RunOptions, VmError, VmOutcome, VmSpec,
};

fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vm")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(spec: &VmSpec, cmd: &[String]) -> VmOutcome {
    run_opts(spec, cmd, &RunOptions::default())
}

fn run_opts(spec: &VmSpec, cmd: &[String], opts: &RunOptions) -> VmOutcome {
    let out = run_vm_with(spec, cmd, opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "--- guest stdout ---\n{}--- guest stderr ---\n{}--- took {:.1}s",
        out.stdout,
        out.stderr,
        out.elapsed.as_secs_f64()
    );
    out
}

/// 2 PFs x 4 VFs with NUMA: layout, `ip link` VF lines, netns in the chroot, and that the
/// command's stdout, stderr and a non-zero exit status come back.
#[test]
fn two_pfs_four_vfs_numa() {
    if in_guest() || !is_root() {
        eprintln!("skipped: the VM lab needs root");
        return;
    }
    let spec = VmSpec {
        pfs: 2,
        vfs: 4,
        numa: true,
        timeout: Duration::from_secs(300),
        ..VmSpec::default()
    };
    // A working directory under /tmp (which the guest covers with a tmpfs) stays visible.
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::write(cwd.path().join("host-marker"), "from-the-host\n").unwrap();
    let cmd = [
        script("check-harness.sh"),
        "2".into(),
        "4".into(),
        "1".into(),
    ];
    let opts = RunOptions {
        env: vec![
            ("CHECK_EXIT".into(), "3".into()),
            ("EXPECT_MARKER".into(), "from-the-host".into()),
        ],
        cwd: Some(cwd.path().to_path_buf()),
        ..RunOptions::default()
    };
    let out = run_opts(&spec, &cmd, &opts);
    let cwd_line = format!("ok: cwd={}", cwd.path().display());
    assert!(out.stdout.contains(&cwd_line), "{}", out.stdout);
    assert_eq!(out.status, 3, "checks failed: {}", out.stderr);
    assert!(out.stdout.contains("ok: pfs=2 vfs=8"), "{}", out.stdout);
    assert!(
        out.stdout.contains("ok: NUMA: 1 PF(s) on node 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("this line goes to stderr"),
        "{}",
        out.stderr
    );
    assert!(
        out.console.contains("2 PFs x 4 VFs ready"),
        "{}",
        out.console
    );
}

/// `--iommu`: a VF binds to vfio-pci and gets an IOMMU group and `/dev/vfio/N`. This test
/// also shows the pattern for scenarios written in Rust: outside the guest it boots a VM
/// that re-runs this very test executable (over 9p) with `--exact iommu_vfio_bind`; inside
/// the guest (`in_guest()`) it does the real work.
#[test]
fn iommu_vfio_bind() {
    if in_guest() {
        let out = std::process::Command::new(script("check-vfio.sh"))
            .output()
            .expect("run check-vfio.sh");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "check-vfio.sh failed");
        let groups = std::fs::read_dir("/dev/vfio").expect("/dev/vfio").count();
        assert!(groups >= 2, "/dev/vfio has {groups} entries");
        println!("guest side: /dev/vfio has {groups} entries");
        return;
    }
    if !is_root() {
        eprintln!("skipped: the VM lab needs root");
        return;
    }
    let spec = VmSpec {
        pfs: 1,
        vfs: 2,
        iommu: true,
        timeout: Duration::from_secs(300),
        ..VmSpec::default()
    };
    let cmd = guest_test_command("iommu_vfio_bind").expect("current_exe");
    let out = run(&spec, &cmd);
    assert_eq!(
        out.status, 0,
        "guest side failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("bound to vfio-pci"), "{}", out.stdout);
    assert!(
        out.stdout.contains("guest side: /dev/vfio has"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1 passed"), "{}", out.stdout);
}

/// A guest that outlives `timeout` is killed and the error says so.
#[test]
fn timeout_kills_the_guest() {
    if in_guest() || !is_root() {
        return;
    }
    let spec = VmSpec {
        vfs: 0,
        timeout: Duration::from_secs(3),
        ..VmSpec::default()
    };
    let started = std::time::Instant::now();
    let err = run_vm_with(
        &spec,
        &["/bin/sleep".into(), "600".into()],
        &RunOptions::default(),
    )
    .expect_err("the guest should time out");
    assert!(
        matches!(err, VmError::Timeout { .. }),
        "unexpected error: {err}"
    );
    assert!(
        err.to_string().contains("did not finish within 3s"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// The older Debian kernel (plain `.ko` modules) boots the same harness. Costs one more
/// kernel download, so it runs with `--ignored`.
#[test]
#[ignore = "downloads a second kernel; run with --ignored"]
fn kernel_6_1_harness() {
    if in_guest() || !is_root() {
        eprintln!("skipped: the VM lab needs root");
        return;
    }
    let spec = VmSpec {
        pfs: 1,
        vfs: 3,
        kernel: KernelSeries::V6_1,
        timeout: Duration::from_secs(300),
        ..VmSpec::default()
    };
    let cmd = [
        script("check-harness.sh"),
        "1".into(),
        "3".into(),
        "0".into(),
    ];
    let out = run(&spec, &cmd);
    assert_eq!(out.status, 0, "checks failed: {}", out.stderr);
    assert!(out.console.contains("kernel 6.1."), "{}", out.console);
}
