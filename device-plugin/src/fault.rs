//! Test-only fault injection: `SRIOV_DP_FAULT=<point>[,<point>...]` makes the daemon misbehave
//! at that point, to prove it recovers (or, for a stall, that its liveness probe says so).
//!
//! Compiled in only with debug assertions: a release build ignores the variable entirely.
//!
//! - `discovery-panic-once`: the first discovery panics;
//! - `provisioning-panic-once`: the first provisioning run panics;
//! - `node-state-panic-once`: the first node-state write panics;
//! - `stall-on-config-change`: the main loop stops turning when the config file changes.

/// Whether `point` is asked for; `once` points answer true only the first time.
#[cfg(debug_assertions)]
pub fn hit(point: &str) -> bool {
    use std::collections::BTreeSet;
    use std::sync::{Mutex, OnceLock};
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    static USED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let points = POINTS.get_or_init(|| {
        std::env::var("SRIOV_DP_FAULT")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    if !points.iter().any(|p| p == point) {
        return false;
    }
    if point.ends_with("-once") {
        let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
        if !used.insert(point.to_string()) {
            return false;
        }
    }
    tracing::warn!("SRIOV_DP_FAULT={point}");
    true
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: &str) -> bool {
    false
}

/// Panics when `point` is hit.
pub fn panic_at(point: &str) {
    if hit(point) {
        panic!("fault injected at {point}");
    }
}
