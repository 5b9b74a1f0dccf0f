//! Test-only fault injection: `SRIOV_CNI_FAULT=<step>` makes the plugin SIGKILL itself right
//! after that step, to prove that a DEL restores a VF from any point of an ADD.
//!
//! Compiled in only with debug assertions or the `fault-injection` cargo feature: a release
//! build without the feature ignores the variable entirely.

/// Kills the process when `SRIOV_CNI_FAULT` names `step`.
#[cfg(any(debug_assertions, feature = "fault-injection"))]
pub fn point(step: &str) {
    use std::sync::OnceLock;
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        std::env::var("SRIOV_CNI_FAULT")
            .ok()
            .filter(|s| !s.is_empty())
    });
    if fault.as_deref() == Some(step) {
        tracing::warn!("SRIOV_CNI_FAULT={step}: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
#[inline(always)]
pub fn point(_step: &str) {}

/// Whether this build honours `SRIOV_CNI_FAULT`.
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "fault-injection"));
