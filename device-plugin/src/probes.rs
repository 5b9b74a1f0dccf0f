//! What the liveness and readiness probes answer.
//!
//! - Liveness (`/healthz`): the main loop turned within the stall limit. The loop turns at
//!   least every [`Probes::heartbeat_interval`] (a heartbeat job of its own, whatever
//!   `--resync-seconds` says), so an idle node never looks stuck; only a loop that stopped
//!   turning (blocked, or waiting on something that never comes) fails.
//! - Readiness (`/readyz`): the first discovery was applied, and every configured pool is
//!   served (its gRPC server runs on its socket) and registered with kubelet. The main loop
//!   sets it after every turn; nothing about it depends on time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shared probe state.
pub struct Probes {
    started: Instant,
    /// Milliseconds since `started` at the main loop's last turn.
    heartbeat_ms: AtomicU64,
    stall_limit: Duration,
    readiness: Mutex<Result<(), String>>,
}

impl Probes {
    /// Liveness fails once the loop has not turned for `stall_limit`.
    pub fn new(stall_limit: Duration) -> Probes {
        Probes {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            stall_limit: stall_limit.max(Duration::from_millis(100)),
            readiness: Mutex::new(Err("starting".into())),
        }
    }

    /// How often the loop must turn at least: a sixth of the limit, at most 5 s.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.stall_limit / 6).min(Duration::from_secs(5))
    }

    /// The main loop is turning.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// `Err` with the reason when the loop looks stuck.
    pub fn live(&self) -> Result<(), String> {
        let now = self.started.elapsed().as_millis() as u64;
        let since =
            Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)));
        if since < self.stall_limit {
            Ok(())
        } else {
            Err(format!(
                "the main loop has not turned for {:.1} s (limit {} s)",
                since.as_secs_f64(),
                self.stall_limit.as_secs_f64()
            ))
        }
    }

    pub fn set_ready(&self, ready: Result<(), String>) {
        *self.readiness.lock().unwrap_or_else(|p| p.into_inner()) = ready;
    }

    /// `Err` with the reason while not ready.
    pub fn ready(&self) -> Result<(), String> {
        self.readiness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How one pool stands, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolReadiness {
    pub name: String,
    /// Its gRPC server runs on its socket.
    pub served: bool,
    /// Kubelet accepted its registration (since the server last started).
    pub registered: bool,
}

/// Ready when discovery ran once and every pool is served and registered; else the reasons.
pub fn readiness(discovered: bool, pools: &[PoolReadiness]) -> Result<(), String> {
    if !discovered {
        return Err("the first discovery has not completed".into());
    }
    let not: Vec<String> = pools
        .iter()
        .filter_map(|p| match (p.served, p.registered) {
            (true, true) => None,
            (false, _) => Some(format!("{} is not served", p.name)),
            (true, false) => Some(format!("{} is not registered with kubelet", p.name)),
        })
        .collect();
    if not.is_empty() {
        Ok(())
    } else {
        Err(not.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_pool_served_and_registered() {
        let pool = |name: &str, served, registered| PoolReadiness {
            name: name.into(),
            served,
            registered,
        };
        assert!(readiness(false, &[]).is_err());
        assert_eq!(readiness(true, &[]), Ok(()));
        assert_eq!(
            readiness(true, &[pool("a", true, true), pool("b", true, true)]),
            Ok(())
        );
        assert_eq!(
            readiness(true, &[pool("a", true, false), pool("b", false, false)]),
            Err("a is not registered with kubelet; b is not served".into())
        );
    }

    #[test]
    fn liveness_follows_the_heartbeat() {
        let p = Probes::new(Duration::from_millis(300));
        assert_eq!(p.heartbeat_interval(), Duration::from_millis(50));
        assert_eq!(
            Probes::new(Duration::from_secs(30)).heartbeat_interval(),
            Duration::from_secs(5)
        );
        p.beat();
        assert!(p.live().is_ok());
        std::thread::sleep(Duration::from_millis(350));
        assert!(p.live().unwrap_err().contains("has not turned"));
        p.beat();
        assert!(p.live().is_ok());
        assert!(p.ready().is_err());
        p.set_ready(Ok(()));
        assert!(p.ready().is_ok());
    }
}
