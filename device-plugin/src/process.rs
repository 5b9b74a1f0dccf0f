//! The standard `process_*` metrics from `/proc/self`, with the kernel's real page size and
//! clock tick (64 KiB pages on some arm64 kernels: assuming 4 KiB reads 16 times too low).

use nix::unistd::{sysconf, SysconfVar};

/// What `/proc/self` says now; `None` for what could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

fn sysconf_u64(var: SysconfVar) -> Option<u64> {
    sysconf(var)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
}

/// The kernel's page size in bytes.
pub fn page_size() -> Option<u64> {
    sysconf_u64(SysconfVar::PAGE_SIZE)
}

/// Parses `/proc/self/stat` (fields after the command name), `/proc/stat`'s `btime` and the
/// `Max open files` soft limit of `/proc/self/limits`.
pub fn parse(
    stat: &str,
    proc_stat: &str,
    limits: &str,
    page_size: u64,
    clock_ticks: u64,
) -> ProcessStats {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Field N of proc(5) is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = clock_ticks.max(1) as f64;
    let boot = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    ProcessStats {
        resident_bytes: field(24).map(|pages| pages * page_size),
        virtual_bytes: field(23),
        cpu_seconds: field(14)
            .zip(field(15))
            .map(|(u, s)| (u + s) as f64 / ticks),
        start_time_seconds: boot
            .zip(field(22))
            .map(|(b, start)| b as f64 + start as f64 / ticks),
        open_fds: None,
        max_fds,
    }
}

/// This process's numbers now.
pub fn read() -> ProcessStats {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut stats = match (page_size(), sysconf_u64(SysconfVar::CLK_TCK)) {
        (Some(page), Some(ticks)) => parse(
            &read("/proc/self/stat"),
            &read("/proc/stat"),
            &read("/proc/self/limits"),
            page,
            ticks,
        ),
        _ => ProcessStats::default(),
    };
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (sriov-device-p) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 3 0 12345 20480000 2300 18446744073709551615";

    #[test]
    fn parses_proc_with_the_given_page_size() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        let s = parse(STAT, "cpu 1 2 3\nbtime 1700000000\n", limits, 65536, 100);
        assert_eq!(s.resident_bytes, Some(2300 * 65536));
        assert_eq!(s.virtual_bytes, Some(20480000));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.start_time_seconds, Some(1700000123.45));
        assert_eq!(s.max_fds, Some(1048576));
        assert_eq!(parse("garbage", "", "", 4096, 100), ProcessStats::default());
    }

    #[test]
    fn reads_this_process() {
        let s = read();
        let page = page_size().unwrap();
        assert!(page.is_power_of_two() && page >= 4096);
        let rss = s.resident_bytes.unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        // Both read at nearly the same time: within a few MiB of each other.
        assert!(rss.abs_diff(kib * 1024) < 8 << 20, "{rss} vs {kib} KiB");
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.cpu_seconds.is_some() && s.start_time_seconds.is_some());
    }
}
