//! `SriovNodeState` as a cluster gets it: the real daemon process on a simulated node writes its
//! node-state file, the real `sriov-node-state` sidecar publishes it. Around them: a kubelet
//! emulator (whose pod resources API reports an allocation) and an in-test HTTP server
//! standing in for the Kubernetes API server (there is none here), which answers as the API
//! server does and records what it was sent.

use serde_json::{json, Value};
use sriov_e2e::kubelet::{DaemonArgs, DaemonProcess, KubeletEmulator, RegistrationMode};
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = "worker-1";

#[derive(Default)]
struct Api {
    /// The SriovNodeState object as stored (None until created).
    object: Option<Value>,
    /// (method, path with query, content type, body)
    requests: Vec<(String, String, String, Value)>,
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

fn serve_connection(stream: TcpStream, api: Arc<Mutex<Api>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut len, mut ctype) = (0usize, String::new());
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => ctype = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut api = api.lock().unwrap();
        api.requests
            .push((method.clone(), path.clone(), ctype, body.clone()));
        let route = path.split('?').next().unwrap_or("");
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "uid": "0c4f-node-uid", "labels": {}}});
        let state_path = format!("/apis/sriov-rs.io/v1alpha1/sriovnodestates/{NODE}");
        let (code, out) = match (method.as_str(), route) {
            ("GET", r) if r == format!("/api/v1/nodes/{NODE}") => (200, node),
            ("PATCH", r) if r == format!("/api/v1/nodes/{NODE}") => (200, node),
            ("PATCH", r) if r == state_path => {
                api.object = Some(body.clone());
                (200, body)
            }
            // Like the API server: the status lands in the stored object, which is returned.
            ("PATCH", r) if r == format!("{state_path}/status") && api.object.is_some() => {
                let object = api.object.as_mut().unwrap();
                object["status"] = body["status"].clone();
                (200, object.clone())
            }
            _ => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404, "message": format!("{route} not found")}),
            ),
        };
        drop(api);
        respond(&mut stream, code, &out)?;
    }
}

fn start_api() -> (u16, Arc<Mutex<Api>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let api = Arc::new(Mutex::new(Api::default()));
    let shared = api.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let api = shared.clone();
            std::thread::spawn(move || serve_connection(stream, api));
        }
    });
    (port, api)
}

/// The newest status body the daemon applied.
fn last_status(api: &Mutex<Api>) -> Option<Value> {
    let api = api.lock().unwrap();
    api.requests
        .iter()
        .rev()
        .find(|(m, p, _, _)| m == "PATCH" && p.contains("/status?"))
        .map(|(_, _, _, b)| b["status"].clone())
}

fn wait_status(api: &Mutex<Api>, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = last_status(api).filter(|s| ok(s)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no status with {what}; last: {:?}",
            last_status(api)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sidecar process, killed when dropped (also when the test fails).
struct Sidecar(Child);

impl Sidecar {
    fn spawn(kubeconfig: &Path, status_file: &Path, node: &str, log: &Path) -> Sidecar {
        let log = std::fs::File::create(log).unwrap();
        let child = sriov_e2e::local::sidecar_command(
            &sriov_e2e::workspace_binary("sriov-node-state"),
            status_file,
            kubeconfig,
            node,
            log,
        )
        .spawn()
        .unwrap();
        Sidecar(child)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubelet emulator and the daemon (zero config) on `lab`, writing the node state to `file`.
fn start_daemon(
    lab: &SimNode,
    tmp: &Path,
    file: &Path,
    extra: &[&str],
) -> (KubeletEmulator, DaemonProcess) {
    let kubelet_dir = tmp.join("kubelet");
    let kubelet = KubeletEmulator::start(&kubelet_dir, RegistrationMode::KubeletSocket).unwrap();
    let mut flags = vec!["--node-state-file".to_string(), file.display().to_string()];
    flags.extend(extra.iter().map(|s| s.to_string()));
    let args = DaemonArgs {
        config: tmp.join("missing-config.json"),
        sysfs_root: lab.sysfs_root().to_path_buf(),
        kubelet_dir,
        devinfo_dir: tmp.join("devinfo"),
        dev_root: lab.paths().dev(),
        netns: Some(lab.netns_path().to_path_buf()),
        metrics_address: None,
        extra: flags,
    };
    let bin = sriov_e2e::workspace_binary("sriov-device-plugin");
    let daemon = DaemonProcess::spawn(&bin, &args, &tmp.join("daemon.log")).unwrap();
    (kubelet, daemon)
}

#[test]
fn daemon_and_sidecar_publish_node_state() {
    let lab = SimNode::up(&SimSpec::new(unique_name("nstate")).pfs(2).vfs(4)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (port, api) = start_api();
    let kubeconfig = sriov_e2e::local::write_kubeconfig(tmp.path(), ([127, 0, 0, 1], port).into());
    let status_file = tmp.path().join("node-state.json");
    let _sidecar = Sidecar::spawn(
        &kubeconfig,
        &status_file,
        NODE,
        &tmp.path().join("sidecar.log"),
    );

    let (kubelet, mut daemon) =
        start_daemon(&lab, tmp.path(), &status_file, &["--resync-seconds", "1"]);

    // First publish: the object (owned by the node), its status, the node label.
    let status = wait_status(&api, "two pools", |s| {
        s["pools"].as_array().is_some_and(|p| p.len() == 2)
    });
    assert_eq!(
        status["pools"][0],
        json!({"name": "intel.com/ens1f0", "vfs": 4, "healthy": 4, "allocated": 0})
    );
    assert_eq!(status["summary"]["adapters"], "eno1,ens1f0,ens2f0");
    let pf = &status["pfs"][1];
    assert_eq!(
        (
            pf["name"].as_str(),
            pf["sriov"].as_str(),
            pf["vfsEnabled"].as_u64()
        ),
        (Some("ens1f0"), Some("Enabled"), Some(4))
    );
    // The label follows the status in the same publish.
    let deadline = Instant::now() + Duration::from_secs(10);
    let is_label = |(m, p, _, _): &(String, String, String, Value)| {
        m == "PATCH" && p.starts_with(&format!("/api/v1/nodes/{NODE}"))
    };
    while !api.lock().unwrap().requests.iter().any(is_label) {
        assert!(Instant::now() < deadline, "no node label patch");
        std::thread::sleep(Duration::from_millis(50));
    }
    {
        let api = api.lock().unwrap();
        let label = api.requests.iter().find(|r| is_label(r)).unwrap();
        assert_eq!(label.2, "application/merge-patch+json");
        assert_eq!(
            label.3["metadata"]["labels"]["feature.node.kubernetes.io/network-sriov.capable"],
            "true"
        );
        let apply = api
            .requests
            .iter()
            .find(|(m, p, _, _)| m == "PATCH" && p.contains("/status?"))
            .unwrap();
        assert_eq!(apply.2, "application/apply-patch+yaml");
        assert!(apply.1.contains("fieldManager=sriov-rs"), "{}", apply.1);
    }

    // A pod gets a VF: kubelet's pod resources API reports it; the next update says so.
    kubelet
        .wait_devices("intel.com/ens1f0", Duration::from_secs(10), |d| {
            d.len() == 4
        })
        .unwrap();
    kubelet
        .allocate_pod(
            "pod-a",
            "default",
            "app",
            "intel.com/ens1f0",
            &["0000:3b:02.0".into()],
        )
        .unwrap();
    let status = wait_status(&api, "an allocation", |s| s["pools"][0]["allocated"] == 1);
    assert_eq!(status["summary"]["allocated"], 1);
    let n = api.lock().unwrap().requests.len();
    daemon.terminate(Duration::from_secs(5));
    assert!(n < 20, "too many API requests for two changes: {n}");

    // A damaged file is not published (the last good status stays); the next good one is.
    std::fs::write(&status_file, "{\"pools\": 7").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        api.lock().unwrap().requests.len(),
        n,
        "a damaged file was published"
    );
    let mut next = status.clone();
    next["lastError"] = json!("config /etc/sriov-rs/config.json refused: test");
    std::fs::write(&status_file, next.to_string()).unwrap();
    wait_status(&api, "the new last error", |s| {
        s["lastError"] == next["lastError"]
    });
    let log = std::fs::read_to_string(tmp.path().join("sidecar.log")).unwrap();
    assert!(log.contains("not a node status"), "{log}");
}

#[test]
fn sidecar_refuses_a_bad_node_name() {
    let out = Command::new(sriov_e2e::workspace_binary("sriov-node-state"))
        .args(["--node-name", "../../nodes/x"])
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid node name \"../../nodes/x\""), "{err}");
}

#[test]
fn an_unwritable_node_state_file_is_reported_once_and_retried() {
    let lab = SimNode::up(&SimSpec::new(unique_name("nsfail")).pfs(1).vfs(2)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The folder lets others write (as an emptyDir's root does): refused until it is the
    // daemon's alone.
    let dir = tmp.path().join("run-sriov-rs");
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = dir.join("node-state.json");
    let (kubelet, mut daemon) = start_daemon(&lab, tmp.path(), &file, &[]);
    kubelet
        .wait_devices("intel.com/ens1f0", Duration::from_secs(10), |d| {
            d.len() == 2
        })
        .unwrap();
    // Changes keep coming (PF link flaps), each one a failed write.
    for state in ["down", "up", "down", "up"] {
        let out = lab.ip(&["link", "set", "ens1f0", state]).unwrap();
        assert!(out.status.success());
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = daemon.log();
    assert_eq!(
        log.matches("node state not written").count(),
        1,
        "one warning for one error:\n{log}"
    );
    assert!(log.contains("lets others write"), "{log}");
    assert!(!file.exists());
    // Once the folder is the daemon's alone, the next change is written.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = lab.ip(&["link", "set", "ens1f0", "down"]).unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "never written:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(status["pfs"][1]["link"], "down", "{status}");
    assert!(daemon.log().contains("node state written again"));
    daemon.terminate(Duration::from_secs(5));
}
