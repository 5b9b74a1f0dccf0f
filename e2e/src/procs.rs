//! Processes tests start (runtimes, daemons) and those they leave behind when killed.

use std::process::Child;
use std::time::{Duration, Instant};

/// Processes (other than this one) with an argument that mentions `needle`: pid and arguments.
pub fn mentioning(needle: &str) -> Vec<(i32, Vec<String>)> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (pid != me && args.iter().any(|a| a.contains(needle))).then_some((pid, args))
        })
        .collect()
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaped.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
