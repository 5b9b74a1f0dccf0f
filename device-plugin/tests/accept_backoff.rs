//! The metrics and probe listeners back off when accept fails. A test binary of its own: it
//! lowers this process's file descriptor limit, which would disturb tests running beside it.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use sriov_device_plugin::http::{serve, Endpoints};
use sriov_device_plugin::metrics::{ErrorKind, Metrics};
use sriov_device_plugin::probes::Probes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// With no file descriptor left, accept fails at once, again and again, while the connection
/// waits in the backlog: the loop must wait between attempts instead of spinning a core.
#[tokio::test]
async fn accept_errors_back_off() {
    let metrics = Arc::new(Metrics::default());
    let e = Endpoints {
        metrics: metrics.clone(),
        probes: Arc::new(Probes::new(Duration::from_secs(30))),
        serve_metrics: true,
    };
    let (stop_tx, stop) = watch::channel(false);
    let addr = serve("127.0.0.1:0".parse().unwrap(), e, stop, |_| {})
        .await
        .unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    // No descriptor free for the accepted socket: every number below the limit is taken.
    let lowest_free = (0u64..)
        .find(|n| !std::path::Path::new(&format!("/proc/self/fd/{n}")).exists())
        .unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free, hard).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let failures = metrics.errors(ErrorKind::MetricsAccept);
    // Once descriptors are back, the waiting connection is served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drop(client);
    let _ = stop_tx.send(true);
    // 300 ms of 10, 20, 40, 80, 160 ms waits: a handful of attempts, not thousands.
    assert!((1..=10).contains(&failures), "{failures} accept attempts");
}
