//! Prometheus metrics, as the text exposition format (0.0.4), written by hand.
//!
//! Every family is exported from the start, with each pool and each known label value at 0, so
//! `rate()` and `increase()` see the first increment. The numbers live in one mutex-guarded
//! struct: every update is a map lookup on a path that is already taking a gRPC request or a
//! kernel event, so contention is not a concern. No metrics library: `prometheus-client` would
//! add its encoder and registry (and pre-populating label values is as much work with it), and
//! the daemon's resident memory, mostly its own code pages, has little room under 10 MiB.

use crate::allocate::AllocateError;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// What `sriov_dp_errors_total{kind}` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The config file could not be read.
    ConfigRead,
    /// A discovery failed or panicked.
    Discovery,
    /// The uplinks (default-route netdevs) could not be determined.
    Uplink,
    /// Setting VF counts or PF MTUs failed or panicked.
    Provisioning,
    /// The node-state file could not be written.
    NodeState,
    /// Link notifications failed (the watcher restarts).
    Linkwatch,
    /// A netlink message could not be parsed.
    NetlinkParse,
    /// A pool socket could not be bound.
    Socket,
    /// A pool's gRPC server ended by itself.
    Server,
    /// A registration task failed or panicked.
    Registration,
    /// The metrics or probe listener could not be bound.
    Metrics,
    /// Accepting a metrics or probe connection failed.
    MetricsAccept,
    /// An MTU lock watcher failed.
    MtuLock,
    /// A device-information file could not be removed.
    Devinfo,
    /// The inotify watcher stopped (it restarts).
    Inotify,
    /// The kernel uevent listener stopped (it restarts).
    Uevent,
    /// A CDI spec could not be written or removed.
    Cdi,
    /// The DRA kubelet plugin: its server, registration, devices file or a claim's preparation.
    Dra,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::ConfigRead,
        ErrorKind::Discovery,
        ErrorKind::Uplink,
        ErrorKind::Provisioning,
        ErrorKind::NodeState,
        ErrorKind::Linkwatch,
        ErrorKind::NetlinkParse,
        ErrorKind::Socket,
        ErrorKind::Server,
        ErrorKind::Registration,
        ErrorKind::Metrics,
        ErrorKind::MetricsAccept,
        ErrorKind::MtuLock,
        ErrorKind::Devinfo,
        ErrorKind::Inotify,
        ErrorKind::Uevent,
        ErrorKind::Cdi,
        ErrorKind::Dra,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConfigRead => "config_read",
            ErrorKind::Discovery => "discovery",
            ErrorKind::Uplink => "uplink",
            ErrorKind::Provisioning => "provisioning",
            ErrorKind::NodeState => "node_state",
            ErrorKind::Linkwatch => "linkwatch",
            ErrorKind::NetlinkParse => "netlink_parse",
            ErrorKind::Socket => "socket",
            ErrorKind::Server => "server",
            ErrorKind::Registration => "registration",
            ErrorKind::Metrics => "metrics",
            ErrorKind::MetricsAccept => "metrics_accept",
            ErrorKind::MtuLock => "mtu_lock",
            ErrorKind::Devinfo => "devinfo",
            ErrorKind::Inotify => "inotify",
            ErrorKind::Uevent => "uevent",
            ErrorKind::Cdi => "cdi",
            ErrorKind::Dra => "dra",
        }
    }
}

/// The numbers of one pool.
#[derive(Debug, Clone)]
struct PoolNumbers {
    healthy: u64,
    unhealthy: u64,
    allocations: u64,
    allocated_devices: u64,
    allocation_errors: BTreeMap<&'static str, u64>,
    preferred_allocations: u64,
    list_and_watch_updates: u64,
    registrations: [u64; 2],
}

impl Default for PoolNumbers {
    fn default() -> Self {
        PoolNumbers {
            healthy: 0,
            unhealthy: 0,
            allocations: 0,
            allocated_devices: 0,
            allocation_errors: AllocateError::REASONS.iter().map(|r| (*r, 0)).collect(),
            preferred_allocations: 0,
            list_and_watch_updates: 0,
            registrations: [0; 2],
        }
    }
}

struct Numbers {
    pools: BTreeMap<String, PoolNumbers>,
    /// applied, rejected
    reconfigurations: [u64; 2],
    errors: BTreeMap<ErrorKind, u64>,
    config_valid: bool,
    discoveries: u64,
    last_discovery_seconds: f64,
    link_events: u64,
    mtu_lock_restores: u64,
    mtu_locks: u64,
}

/// The daemon's metrics.
pub struct Metrics {
    numbers: Mutex<Numbers>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            numbers: Mutex::new(Numbers {
                pools: BTreeMap::new(),
                reconfigurations: [0; 2],
                errors: ErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
                config_valid: true,
                discoveries: 0,
                last_discovery_seconds: 0.0,
                link_events: 0,
                mtu_lock_restores: 0,
                mtu_locks: 0,
            }),
        }
    }
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Numbers> {
        // A panic while holding the lock leaves plain numbers behind: keep using them.
        self.numbers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pool<R>(&self, pool: &str, f: impl FnOnce(&mut PoolNumbers) -> R) -> R {
        let mut n = self.lock();
        let entry = match n.pools.get_mut(pool) {
            Some(p) => p,
            None => n.pools.entry(pool.to_string()).or_default(),
        };
        f(entry)
    }

    /// A pool's series, every one at 0 (or its device counts).
    pub fn set_pool_devices(&self, pool: &str, healthy: u64, unhealthy: u64) {
        self.pool(pool, |p| {
            p.healthy = healthy;
            p.unhealthy = unhealthy;
        });
    }

    /// A removed pool's series go.
    pub fn remove_pool(&self, pool: &str) {
        self.lock().pools.remove(pool);
    }

    pub fn allocation(&self, pool: &str, devices: u64) {
        self.pool(pool, |p| {
            p.allocations += 1;
            p.allocated_devices += devices;
        });
    }

    pub fn allocation_error(&self, pool: &str, reason: &'static str) {
        self.pool(pool, |p| {
            *p.allocation_errors.entry(reason).or_default() += 1
        });
    }

    pub fn preferred_allocation(&self, pool: &str) {
        self.pool(pool, |p| p.preferred_allocations += 1);
    }

    pub fn registration(&self, pool: &str, ok: bool) {
        self.pool(pool, |p| p.registrations[usize::from(!ok)] += 1);
    }

    pub fn list_and_watch_update(&self, pool: &str) {
        self.pool(pool, |p| p.list_and_watch_updates += 1);
    }

    /// A config file change: applied, or rejected (which also sets `config_valid` to 0).
    pub fn reconfiguration(&self, applied: bool) {
        let mut n = self.lock();
        n.reconfigurations[usize::from(!applied)] += 1;
        n.config_valid = applied;
    }

    /// The file holds the running config again (a refused one was reverted).
    pub fn config_valid(&self) {
        self.lock().config_valid = true;
    }

    pub fn error(&self, kind: ErrorKind) {
        *self.lock().errors.entry(kind).or_default() += 1;
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.lock().errors.get(&kind).copied().unwrap_or(0)
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let n = self.lock();
        let mut out = String::with_capacity(8 * 1024);
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let per_pool = |f: &dyn Fn(&PoolNumbers) -> u64| -> Vec<(String, String)> {
            n.pools
                .iter()
                .map(|(p, v)| (format!("{{resource=\"{}\"}}", escape(p)), f(v).to_string()))
                .collect()
        };
        let per_pool_label = |label: &str, f: &dyn Fn(&PoolNumbers) -> Vec<(&'static str, u64)>| {
            n.pools
                .iter()
                .flat_map(|(p, v)| {
                    f(v).into_iter().map(move |(l, x)| {
                        (
                            format!("{{resource=\"{}\",{label}=\"{l}\"}}", escape(p)),
                            x.to_string(),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        let single = |v: String| vec![(String::new(), v)];
        family(
            "sriov_dp_build_info",
            "gauge",
            "The running daemon's version (always 1).",
            vec![(
                format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
                "1".into(),
            )],
        );
        family(
            "sriov_dp_pool_devices",
            "gauge",
            "Devices advertised per pool and health.",
            per_pool_label("health", &|p| {
                vec![("healthy", p.healthy), ("unhealthy", p.unhealthy)]
            }),
        );
        family(
            "sriov_dp_allocations_total",
            "counter",
            "Containers given devices (Allocate).",
            per_pool(&|p| p.allocations),
        );
        family(
            "sriov_dp_allocated_devices_total",
            "counter",
            "Devices handed out by Allocate.",
            per_pool(&|p| p.allocated_devices),
        );
        family(
            "sriov_dp_allocation_errors_total",
            "counter",
            "Allocate calls refused, by reason.",
            per_pool_label("reason", &|p| {
                p.allocation_errors.iter().map(|(r, v)| (*r, *v)).collect()
            }),
        );
        family(
            "sriov_dp_preferred_allocations_total",
            "counter",
            "GetPreferredAllocation calls answered.",
            per_pool(&|p| p.preferred_allocations),
        );
        family(
            "sriov_dp_list_and_watch_updates_total",
            "counter",
            "Device lists sent to kubelet.",
            per_pool(&|p| p.list_and_watch_updates),
        );
        family(
            "sriov_dp_registrations_total",
            "counter",
            "Registrations with kubelet, by result.",
            per_pool_label("result", &|p| {
                vec![
                    ("success", p.registrations[0]),
                    ("failure", p.registrations[1]),
                ]
            }),
        );
        family(
            "sriov_dp_reconfigurations_total",
            "counter",
            "Config file changes, by result (applied, rejected).",
            vec![
                (
                    "{result=\"applied\"}".into(),
                    n.reconfigurations[0].to_string(),
                ),
                (
                    "{result=\"rejected\"}".into(),
                    n.reconfigurations[1].to_string(),
                ),
            ],
        );
        family(
            "sriov_dp_config_valid",
            "gauge",
            "1 when the config file holds the running config; 0 while a refused one is on disk.",
            single(u8::from(n.config_valid).to_string()),
        );
        family(
            "sriov_dp_errors_total",
            "counter",
            "Errors by kind.",
            n.errors
                .iter()
                .map(|(k, v)| (format!("{{kind=\"{}\"}}", k.as_str()), v.to_string()))
                .collect(),
        );
        family(
            "sriov_dp_discoveries_total",
            "counter",
            "Device discoveries run.",
            single(n.discoveries.to_string()),
        );
        family(
            "sriov_dp_last_discovery_seconds",
            "gauge",
            "Duration of the last discovery.",
            single(n.last_discovery_seconds.to_string()),
        );
        family(
            "sriov_dp_link_events_total",
            "counter",
            "Link notifications received.",
            single(n.link_events.to_string()),
        );
        family(
            "sriov_dp_mtu_lock_restores_total",
            "counter",
            "Locked pod MTUs changed inside the pod and restored.",
            single(n.mtu_lock_restores.to_string()),
        );
        family(
            "sriov_dp_mtu_locks",
            "gauge",
            "MTU locks being enforced.",
            single(n.mtu_locks.to_string()),
        );
        drop(n);
        let p = crate::process::read();
        for (name, kind, help, value) in [
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                p.resident_bytes.map(|v| v.to_string()),
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                p.virtual_bytes.map(|v| v.to_string()),
            ),
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent in seconds.",
                p.cpu_seconds.map(|v| v.to_string()),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch in seconds.",
                p.start_time_seconds.map(|v| v.to_string()),
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                p.open_fds.map(|v| v.to_string()),
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                p.max_fds.map(|v| v.to_string()),
            ),
        ] {
            if let Some(v) = value {
                family(name, kind, help, single(v));
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.set_pool_devices("intel.com/net", 3, 1);
        m.allocation("intel.com/net", 2);
        m.reconfiguration(false);
        m.registration("intel.com/net", true);
        m.error(ErrorKind::Uplink);
        let text = m.render();
        for line in [
            "sriov_dp_pool_devices{resource=\"intel.com/net\",health=\"healthy\"} 3",
            "sriov_dp_pool_devices{resource=\"intel.com/net\",health=\"unhealthy\"} 1",
            "sriov_dp_allocated_devices_total{resource=\"intel.com/net\"} 2",
            "sriov_dp_reconfigurations_total{result=\"rejected\"} 1",
            "sriov_dp_config_valid 0",
            "sriov_dp_registrations_total{resource=\"intel.com/net\",result=\"success\"} 1",
            "sriov_dp_errors_total{kind=\"uplink\"} 1",
            "# TYPE sriov_dp_allocations_total counter",
        ] {
            assert!(sample(&text, line), "missing {line:?} in\n{text}");
        }
        m.config_valid();
        assert!(sample(&m.render(), "sriov_dp_config_valid 1"));
    }

    /// Every family has samples from the start, each pool and label value at 0: `rate()` sees
    /// the first increment.
    #[test]
    fn every_family_is_at_zero_from_the_start() {
        let m = Metrics::default();
        m.set_pool_devices("intel.com/net", 0, 0);
        let text = m.render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert!(families.len() >= 22, "{families:?}");
        for f in &families {
            assert!(
                text.lines().any(|l| l.starts_with(f)
                    && !l.starts_with('#')
                    && l[f.len()..].starts_with(['{', ' '])),
                "family {f} has no sample:\n{text}"
            );
        }
        let zero = |line: String| assert!(sample(&text, &line), "missing {line:?} in\n{text}");
        for kind in ErrorKind::ALL {
            zero(format!(
                "sriov_dp_errors_total{{kind=\"{}\"}} 0",
                kind.as_str()
            ));
        }
        for reason in AllocateError::REASONS {
            zero(format!(
                "sriov_dp_allocation_errors_total{{resource=\"intel.com/net\",reason=\"{reason}\"}} 0"
            ));
        }
        for f in [
            "allocations_total",
            "allocated_devices_total",
            "preferred_allocations_total",
            "list_and_watch_updates_total",
        ] {
            zero(format!("sriov_dp_{f}{{resource=\"intel.com/net\"}} 0"));
        }
        for r in ["success", "failure"] {
            zero(format!(
                "sriov_dp_registrations_total{{resource=\"intel.com/net\",result=\"{r}\"}} 0"
            ));
        }
        for r in ["applied", "rejected"] {
            zero(format!(
                "sriov_dp_reconfigurations_total{{result=\"{r}\"}} 0"
            ));
        }
        zero(format!(
            "sriov_dp_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ));
        m.remove_pool("intel.com/net");
        assert!(!m.render().contains("intel.com/net"));
    }
}
