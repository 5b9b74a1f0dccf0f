//! Prometheus metrics and `/healthz`, served over plain HTTP/1.1 on `--metrics-address`.
//!
//! The numbers live in one mutex-guarded struct: every update is a map insert on a path that is
//! already taking a gRPC request or a kernel event, so contention is not a concern and no metrics
//! library is needed for a dozen series.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The main loop must have turned within this long for `/healthz` to say ok.
const STALL_LIMIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Numbers {
    /// pool → (healthy, unhealthy)
    pool_devices: BTreeMap<String, (u64, u64)>,
    allocations: BTreeMap<String, u64>,
    allocated_devices: BTreeMap<String, u64>,
    allocation_errors: BTreeMap<(String, &'static str), u64>,
    preferred_allocations: BTreeMap<String, u64>,
    registrations: BTreeMap<(String, &'static str), u64>,
    reconfigurations: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    config_valid: bool,
    discoveries: u64,
    last_discovery_seconds: f64,
    link_events: u64,
    mtu_lock_restores: u64,
    mtu_locks: u64,
    list_and_watch_updates: BTreeMap<String, u64>,
}

/// The daemon's metrics.
pub struct Metrics {
    numbers: Mutex<Numbers>,
    started: Instant,
    /// Milliseconds since `started` at the main loop's last turn.
    heartbeat_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            numbers: Mutex::new(Numbers {
                config_valid: true,
                ..Default::default()
            }),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Numbers> {
        // A panic while holding the lock leaves plain numbers behind: keep using them.
        self.numbers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_pool_devices(&self, pool: &str, healthy: u64, unhealthy: u64) {
        self.lock()
            .pool_devices
            .insert(pool.to_string(), (healthy, unhealthy));
    }

    pub fn remove_pool(&self, pool: &str) {
        self.lock().pool_devices.remove(pool);
    }

    pub fn allocation(&self, pool: &str, devices: u64) {
        let mut n = self.lock();
        *n.allocations.entry(pool.to_string()).or_default() += 1;
        *n.allocated_devices.entry(pool.to_string()).or_default() += devices;
    }

    pub fn allocation_error(&self, pool: &str, reason: &'static str) {
        *self
            .lock()
            .allocation_errors
            .entry((pool.to_string(), reason))
            .or_default() += 1;
    }

    pub fn preferred_allocation(&self, pool: &str) {
        *self
            .lock()
            .preferred_allocations
            .entry(pool.to_string())
            .or_default() += 1;
    }

    pub fn registration(&self, pool: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        *self
            .lock()
            .registrations
            .entry((pool.to_string(), result))
            .or_default() += 1;
    }

    /// `applied` or `rejected`.
    pub fn reconfiguration(&self, result: &'static str) {
        let mut n = self.lock();
        *n.reconfigurations.entry(result).or_default() += 1;
        n.config_valid = result != "rejected";
    }

    pub fn error(&self, kind: &'static str) {
        *self.lock().errors.entry(kind).or_default() += 1;
    }

    pub fn discovery(&self, took: Duration) {
        let mut n = self.lock();
        n.discoveries += 1;
        n.last_discovery_seconds = took.as_secs_f64();
    }

    pub fn link_event(&self) {
        self.lock().link_events += 1;
    }

    /// A pod changed a locked MTU and it was put back.
    pub fn mtu_lock_restore(&self) {
        self.lock().mtu_lock_restores += 1;
    }

    /// How many MTU locks are being enforced.
    pub fn set_mtu_locks(&self, n: u64) {
        self.lock().mtu_locks = n;
    }

    pub fn list_and_watch_update(&self, pool: &str) {
        *self
            .lock()
            .list_and_watch_updates
            .entry(pool.to_string())
            .or_default() += 1;
    }

    /// The main loop is alive.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
            < STALL_LIMIT.as_millis() as u64
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let n = self.lock();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let pool = |p: &str| format!("{{resource=\"{}\"}}", escape(p));
        family(
            "sriov_dp_pool_devices",
            "gauge",
            "Devices advertised per pool and health.",
            n.pool_devices
                .iter()
                .flat_map(|(p, (h, u))| {
                    [
                        (
                            format!("{{resource=\"{}\",health=\"healthy\"}}", escape(p)),
                            h.to_string(),
                        ),
                        (
                            format!("{{resource=\"{}\",health=\"unhealthy\"}}", escape(p)),
                            u.to_string(),
                        ),
                    ]
                })
                .collect(),
        );
        let per_pool =
            |m: &BTreeMap<String, u64>| m.iter().map(|(p, v)| (pool(p), v.to_string())).collect();
        family(
            "sriov_dp_allocations_total",
            "counter",
            "Containers given devices (Allocate).",
            per_pool(&n.allocations),
        );
        family(
            "sriov_dp_allocated_devices_total",
            "counter",
            "Devices handed out by Allocate.",
            per_pool(&n.allocated_devices),
        );
        family(
            "sriov_dp_allocation_errors_total",
            "counter",
            "Allocate calls refused, by reason.",
            n.allocation_errors
                .iter()
                .map(|((p, r), v)| {
                    (
                        format!("{{resource=\"{}\",reason=\"{r}\"}}", escape(p)),
                        v.to_string(),
                    )
                })
                .collect(),
        );
        family(
            "sriov_dp_preferred_allocations_total",
            "counter",
            "GetPreferredAllocation calls answered.",
            per_pool(&n.preferred_allocations),
        );
        family(
            "sriov_dp_list_and_watch_updates_total",
            "counter",
            "Device lists sent to kubelet.",
            per_pool(&n.list_and_watch_updates),
        );
        family(
            "sriov_dp_registrations_total",
            "counter",
            "Registrations with kubelet, by result.",
            n.registrations
                .iter()
                .map(|((p, r), v)| {
                    (
                        format!("{{resource=\"{}\",result=\"{r}\"}}", escape(p)),
                        v.to_string(),
                    )
                })
                .collect(),
        );
        family(
            "sriov_dp_reconfigurations_total",
            "counter",
            "Config file changes, by result (applied, rejected).",
            n.reconfigurations
                .iter()
                .map(|(r, v)| (format!("{{result=\"{r}\"}}"), v.to_string()))
                .collect(),
        );
        family(
            "sriov_dp_config_valid",
            "gauge",
            "1 when the last config read was valid; 0 while a refused one is on disk.",
            vec![(String::new(), u8::from(n.config_valid).to_string())],
        );
        family(
            "sriov_dp_errors_total",
            "counter",
            "Errors by kind.",
            n.errors
                .iter()
                .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v.to_string()))
                .collect(),
        );
        family(
            "sriov_dp_discoveries_total",
            "counter",
            "Device discoveries run.",
            vec![(String::new(), n.discoveries.to_string())],
        );
        family(
            "sriov_dp_last_discovery_seconds",
            "gauge",
            "Duration of the last discovery.",
            vec![(String::new(), n.last_discovery_seconds.to_string())],
        );
        family(
            "sriov_dp_link_events_total",
            "counter",
            "Link notifications received.",
            vec![(String::new(), n.link_events.to_string())],
        );
        family(
            "sriov_dp_mtu_lock_restores_total",
            "counter",
            "Locked pod MTUs changed inside the pod and restored.",
            vec![(String::new(), n.mtu_lock_restores.to_string())],
        );
        family(
            "sriov_dp_mtu_locks",
            "gauge",
            "MTU locks being enforced.",
            vec![(String::new(), n.mtu_locks.to_string())],
        );
        if let Some(rss) = resident_bytes() {
            family(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory.",
                vec![(String::new(), rss.to_string())],
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Resident set size from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4",
        ),
        "/healthz" if metrics.healthy() => text(StatusCode::OK, "ok\n", "text/plain"),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "main loop stalled\n",
            "text/plain",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
            "text/plain",
        ),
    };
    Ok(response)
}

/// Binds `addr` and serves until `stop` turns true. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(req, metrics.clone()));
                        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!("metrics connection: {e}");
                        }
                    });
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.set_pool_devices("intel.com/net", 3, 1);
        m.allocation("intel.com/net", 2);
        m.reconfiguration("rejected");
        m.registration("intel.com/net", true);
        let text = m.render();
        for line in [
            "sriov_dp_pool_devices{resource=\"intel.com/net\",health=\"healthy\"} 3",
            "sriov_dp_pool_devices{resource=\"intel.com/net\",health=\"unhealthy\"} 1",
            "sriov_dp_allocated_devices_total{resource=\"intel.com/net\"} 2",
            "sriov_dp_reconfigurations_total{result=\"rejected\"} 1",
            "sriov_dp_config_valid 0",
            "sriov_dp_registrations_total{resource=\"intel.com/net\",result=\"success\"} 1",
            "# TYPE sriov_dp_allocations_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.beat();
        assert!(m.healthy());
    }
}
