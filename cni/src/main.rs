//! `sriov`: the CNI plugin binary. Reads the command from the environment and the network
//! config from stdin; prints the result, or the spec's error JSON with a non-zero exit, on
//! stdout. Logs go to `logFile` or stderr. With `SRIOV_CNI_TIMINGS=1` in its environment it
//! reports on stderr how long it ran and how much of that was the kernel's netns moves.

use std::io::Read;

fn main() {
    let started = std::time::Instant::now();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    // One read for a usual network config.
    let mut stdin = Vec::with_capacity(16 * 1024);
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("sriov: cannot read stdin: {e}");
    }
    let (version, outcome) = sriov_cni::commands::run(&command, &stdin, |k| std::env::var(k).ok());
    if std::env::var_os("SRIOV_CNI_TIMINGS").is_some_and(|v| v == "1") {
        eprintln!(
            "sriov timings: main_us={} netns_move_us={}",
            started.elapsed().as_micros(),
            sriov::netlink::time_in_netns_moves().as_micros()
        );
    }
    match outcome {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", e.to_json(&version));
            std::process::exit(1);
        }
    }
}
