//! `sriov`: the CNI plugin binary. Reads the command from the environment and the network
//! config from stdin; prints a result or the spec's error JSON on stdout.

use sriov_cni::spec::{self, CniError, Command, ErrorCode};
use std::io::Read;

fn main() {
    let mut stdin = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let outcome = match Command::parse(&command) {
        Ok(Command::Version) => {
            let _ = std::io::stdin().read_to_end(&mut stdin);
            let version = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "1.1.0".into());
            Ok(spec::version_json(&version))
        }
        Ok(_) => Err(CniError::new(
            ErrorCode::NotAvailable,
            "this build of sriov-rs implements only VERSION; ADD, DEL, CHECK, STATUS and GC are not implemented yet",
        )),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(out) => println!("{out}"),
        Err(e) => {
            println!("{}", e.to_json("1.1.0"));
            std::process::exit(1);
        }
    }
}
