//! Local stand-ins the tests and benchmarks share: a loopback address nobody listens on, and a
//! kubeconfig pointing a Kubernetes client at a test server.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

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
