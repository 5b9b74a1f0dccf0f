//! Local stand-ins the tests and benchmarks share: a loopback address nobody listens on, a
//! kubeconfig pointing a Kubernetes client at a test server, and the node-state sidecar set up
//! to use it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A loopback address with a port nobody listens on right now.
pub fn unused_local_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("its address")
}

/// Writes `dir/kubeconfig`: one cluster at `http://<server>`, no credentials; returns its path.
pub fn write_kubeconfig(dir: &Path, server: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://{server}\n\
             users:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n"
        ),
    )
    .expect("write the kubeconfig");
    path
}

/// The `sriov-node-state` sidecar at `bin` as the tests run it: publishing `status_file` as
/// `node`'s to the API server of `kubeconfig` (never a real cluster's), checking every second,
/// logging at debug level to `log`. Callers add their own options (`--dra-*`) and spawn it.
pub fn sidecar_command(
    bin: &Path,
    status_file: &Path,
    kubeconfig: &Path,
    node: &str,
    log: std::fs::File,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--status-file")
        .arg(status_file)
        .args(["--min-interval-seconds", "1", "--resync-seconds", "1"])
        .env("KUBECONFIG", kubeconfig)
        .env("NODE_NAME", node)
        .env("RUST_LOG", "debug")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}
