//! The `sriov-install-cni` helper, run as the init container runs it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn install(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sriov-install-cni"))
        .args(args)
        .output()
        .expect("run sriov-install-cni")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn installs_a_copy_with_mode_0755_and_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sriov");
    fs::write(&src, b"\x7fELF pretend plugin").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).unwrap();
    let target_dir = tmp.path().join("host/opt/cni/bin");
    let target = target_dir.join("sriov");
    let out = install(&[
        "--from",
        src.to_str().unwrap(),
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&target).unwrap(), b"\x7fELF pretend plugin");
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(names(&target_dir), ["sriov"]);
}

#[test]
fn replaces_a_binary_that_is_running_and_cleans_stale_temp_files() {
    // Overwriting a running executable in place fails with ETXTBSY; a rename does not.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let target = dir.join("sriov");
    fs::copy("/bin/sleep", &target).unwrap();
    // Another test thread's fork can hold the copy's write descriptor for a moment (until its
    // child execs), and exec then fails with ETXTBSY: retry that, nothing else.
    let mut tries = 0;
    let mut running = loop {
        match Command::new(&target).arg("30").spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.expect("run the old binary"),
        }
    };
    fs::write(dir.join(".sriov.tmp-1-123"), b"left by a killed installer").unwrap();
    fs::write(dir.join("bridge"), b"another plugin").unwrap();
    let src = dir.join("new-sriov");
    fs::write(&src, b"new version").unwrap();
    let out = install(&[
        &format!("--from={}", src.display()),
        "--to",
        target.to_str().unwrap(),
    ]);
    running.kill().unwrap();
    running.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&target).unwrap(), b"new version");
    assert_eq!(names(dir), ["bridge", "new-sriov", "sriov"]);
}

#[test]
fn fails_cleanly_and_keeps_the_old_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("sriov");
    fs::write(&target, b"old").unwrap();
    let out = install(&[
        "--from",
        "/nonexistent/sriov",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sriov"));
    assert_eq!(fs::read(&target).unwrap(), b"old");
    assert_eq!(names(tmp.path()), ["sriov"]);

    // A directory is not a binary.
    let out = install(&[
        "--from",
        tmp.path().to_str().unwrap(),
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(names(tmp.path()), ["sriov"]);

    for args in [
        &["--from", "x"][..],
        &["--to", "y"],
        &["--from"],
        &["--bogus", "1"],
    ] {
        let out = install(args);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage"),
            "{args:?}"
        );
    }
}

#[test]
fn writes_the_plugins_node_settings_checked_as_the_plugin_checks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sriov");
    fs::write(&src, b"plugin").unwrap();
    let to = tmp.path().join("bin/sriov");
    let settings = tmp.path().join("etc/sriov-rs/cni.json");
    let run = |json: &str| {
        install(&[
            &format!("--from={}", src.display()),
            &format!("--to={}", to.display()),
            &format!("--node-config={}", settings.display()),
            &format!("--node-settings={json}"),
        ])
    };
    let out = run(r#"{"logDir": "/var/log/sriov-cni", "stateDir": "/var/lib/sriov-cni"}"#);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: serde_json::Value = serde_json::from_slice(&fs::read(&settings).unwrap()).unwrap();
    assert_eq!(written["logDir"], "/var/log/sriov-cni");
    assert_eq!(
        fs::metadata(&settings).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(names(settings.parent().unwrap()), ["cni.json"]);
    // What the plugin would refuse is refused here, and nothing is written or installed.
    fs::remove_file(&to).unwrap();
    for (bad, want) in [
        (r#"{"statedir": "/x"}"#, "statedir: unknown key"),
        (r#"{"stateDir": "relative"}"#, "must be an absolute path"),
        ("not json", "not valid JSON"),
    ] {
        let out = run(bad);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{bad}: {err}");
        assert!(!to.exists(), "{bad}: installed anyway");
        assert_eq!(
            written,
            serde_json::from_slice::<serde_json::Value>(&fs::read(&settings).unwrap()).unwrap()
        );
    }
    // A symlink where the file goes is refused, never followed.
    let victim = tmp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    fs::remove_file(&settings).unwrap();
    std::os::unix::fs::symlink(&victim, &settings).unwrap();
    let out = run("{}");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
}
