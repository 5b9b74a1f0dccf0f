//! The `sriov` binary at the protocol level, without root or a node: VERSION, error JSON on
//! stdout with a non-zero exit, logs never on stdout, STATUS against a tree without VFs.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sriov");

fn run(env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn error(env: &[(&str, &str)], stdin: &str) -> Value {
    let (code, stdout, _) = run(env, stdin);
    assert_ne!(code, 0, "{stdout}");
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the error JSON on stdout: {stdout:?}"
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn version_answers_every_spec_version() {
    for v in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let (code, out, _) = run(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": v}).to_string(),
        );
        assert_eq!(code, 0);
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["cniVersion"], v);
        assert_eq!(j["supportedVersions"].as_array().unwrap().len(), 7);
    }
    // Without stdin: the newest.
    let (code, out, _) = run(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(code, 0);
    assert!(out.contains("\"cniVersion\":\"1.1.0\""), "{out}");
}

#[test]
fn errors_are_spec_json_with_codes() {
    let e = error(&[], "{}");
    assert_eq!(e["code"], 4);
    assert!(e["msg"].as_str().unwrap().starts_with("CNI_COMMAND"), "{e}");
    let e = error(&[("CNI_COMMAND", "ADD")], "{not json");
    assert_eq!(e["code"], 6);
    let e = error(&[("CNI_COMMAND", "ADD")], r#"{"cniVersion":"0.0.9"}"#);
    assert_eq!(e["code"], 1);
    // Without cniVersion: 0.1.0, in which the error is printed.
    let e = error(
        &[("CNI_COMMAND", "ADD")],
        r#"{"name":"n","deviceID":"bad"}"#,
    );
    assert_eq!(
        (e["code"].as_u64(), e["cniVersion"].as_str()),
        (Some(7), Some("0.1.0"))
    );
    let e = error(
        &[("CNI_COMMAND", "ADD")],
        r#"{"cniVersion":"1.0.0","name":"n","deviceID":"../../x"}"#,
    );
    assert_eq!(
        (e["code"].as_u64(), e["cniVersion"].as_str()),
        (Some(7), Some("1.0.0"))
    );
    assert!(e["msg"].as_str().unwrap().contains("deviceID"), "{e}");
    let e = error(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "net1"),
        ],
        r#"{"cniVersion":"1.0.0","name":"n","deviceID":"0000:3b:02.0"}"#,
    );
    assert_eq!(e["code"], 4);
    assert!(e["msg"].as_str().unwrap().starts_with("CNI_NETNS"), "{e}");
    let e = error(
        &[("CNI_COMMAND", "GC")],
        r#"{"cniVersion":"1.0.0","name":"n"}"#,
    );
    assert_eq!(e["code"], 1);
}

/// Node-local settings in `dir` (sysfs, state and logs there); returns the env var naming them.
fn node_config(dir: &std::path::Path) -> (&'static str, String) {
    let file = dir.join("cni.json");
    let settings = json!({"sysfsRoot": dir.join("sys"), "stateDir": dir.join("state"),
                          "logDir": dir, "deviceInfoDir": dir.join("devinfo")});
    std::fs::write(&file, settings.to_string()).unwrap();
    ("SRIOV_CNI_NODE_CONFIG", file.display().to_string())
}

#[test]
fn status_needs_vfs_and_logs_stay_off_stdout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sys/bus/pci/devices")).unwrap();
    let log = dir.path().join("sriov.log");
    let (k, v) = node_config(dir.path());
    let conf = json!({"cniVersion": "1.1.0", "name": "n", "logFile": log, "logLevel": "debug"});
    let e = error(&[("CNI_COMMAND", "STATUS"), (k, &v)], &conf.to_string());
    assert_eq!(e["code"], 50);
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("STATUS"),
        "logged to logFile"
    );
    // A VF appears: ready.
    let devs = dir.path().join("sys/bus/pci/devices");
    std::fs::create_dir_all(devs.join("0000:3b:00.0")).unwrap();
    std::fs::create_dir_all(devs.join("0000:3b:02.0")).unwrap();
    std::os::unix::fs::symlink("../0000:3b:00.0", devs.join("0000:3b:02.0/physfn")).unwrap();
    let (code, out, err) = run(&[("CNI_COMMAND", "STATUS"), (k, &v)], &conf.to_string());
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
}

#[test]
fn del_without_anything_to_do_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (k, v) = node_config(dir.path());
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "deviceID": "0000:3b:02.0"});
    for netns in ["", "/var/run/netns/gone"] {
        let (code, out, err) = run(
            &[
                (k, &v),
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "net1"),
                ("CNI_NETNS", netns),
            ],
            &conf.to_string(),
        );
        assert_eq!((code, out.as_str()), (0, ""), "{err}");
    }
}
