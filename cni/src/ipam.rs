//! IPAM delegation: run the plugin named by `ipam.type` from `CNI_PATH` with our environment
//! (command and attachment possibly overridden) and the whole network config on stdin.

use crate::env::CniEnv;
use crate::result::IpamResult;
use crate::spec::{CniError, ErrorCode};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// One call of the IPAM plugin.
pub struct IpamCall<'a> {
    pub plugin: &'a str,
    pub env: &'a CniEnv,
    /// The network config as received (stdin of the plugin).
    pub config: &'a [u8],
}

fn ipam_err(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::Ipam, msg)
}

impl IpamCall<'_> {
    /// The plugin's path in `CNI_PATH`.
    pub fn find(&self) -> Result<PathBuf, CniError> {
        self.env
            .path
            .iter()
            .map(|d| d.join(self.plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidEnv,
                    format!(
                        "CNI_PATH: IPAM plugin {:?} (ipam.type) not found in {}",
                        self.plugin,
                        if self.env.path.is_empty() {
                            "an empty CNI_PATH".to_string()
                        } else {
                            self.env
                                .path
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(":")
                        }
                    ),
                )
            })
    }

    /// Runs `command` (`ADD`, `DEL`, `CHECK`) for `container_id`/`ifname`/`netns`.
    pub fn run(
        &self,
        command: &str,
        container_id: &str,
        ifname: &str,
        netns: Option<&std::path::Path>,
    ) -> Result<Value, CniError> {
        let exe = self.find()?;
        let mut cmd = Command::new(&exe);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env(
                "CNI_NETNS",
                netns.map(|p| p.as_os_str()).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            ipam_err(format!(
                "ipam {}: cannot run {}: {e}",
                self.plugin,
                exe.display()
            ))
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading stdin closes the pipe; its exit status says
            // what happened.
            let _ = stdin.write_all(self.config);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| ipam_err(format!("ipam {}: {e}", self.plugin)))?;
        let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
        };
        if !out.status.success() {
            let msg = stdout
                .get("msg")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    format!("exited with {} ({})", out.status, stderr.trim())
                });
            let mut e = ipam_err(format!("ipam {} {command}: {msg}", self.plugin));
            if let Some(d) = stdout
                .get("details")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                e = e.with_details(d);
            }
            return Err(e);
        }
        Ok(stdout)
    }

    pub fn add(&self) -> Result<IpamResult, CniError> {
        let env = self.env;
        let v = self.run("ADD", &env.container_id, &env.ifname, env.netns.as_deref())?;
        IpamResult::parse(&v)
    }
}
