//! RFC 3339 timestamps (UTC, seconds) for `creationTimestamp` and taints' `timeAdded`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `2026-08-20T10:11:12Z`.
pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_unix(secs)
}

/// Seconds since the epoch as RFC 3339 (days to civil date: Howard Hinnant's algorithm).
pub fn format_unix(secs: u64) -> String {
    sriov::dra_claim::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::format_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
