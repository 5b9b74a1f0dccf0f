//! Running a CNI plugin the way a container runtime does it: inside the (simulated) node's
//! network namespace, with the CNI environment and the network config on stdin.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Where Debian's containernetworking-plugins (the IPAM plugins) live.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// One CNI command for one attachment.
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// `CNI_NETNS`: the pod's netns path (may be empty, as in containerd's second DEL).
    pub netns: &'a str,
}

/// Runs `plugin` inside `node_netns` (`nsenter --net`) with the CNI environment plus `env`,
/// `stdin` as the network config, and returns what it printed and its exit status.
pub fn run_in_node(
    plugin: &Path,
    node_netns: &Path,
    call: &Invocation,
    stdin: &[u8],
    env: &[(&str, &str)],
) -> io::Result<Output> {
    spawn_in_node(plugin, node_netns, call, stdin, env)?.wait_with_output()
}

/// Like [`run_in_node`], without waiting: the plugin is running (its config already written to
/// its stdin) when this returns. `nsenter` execs the plugin in its own process, so killing the
/// child kills the plugin.
pub fn spawn_in_node(
    plugin: &Path,
    node_netns: &Path,
    call: &Invocation,
    stdin: &[u8],
    env: &[(&str, &str)],
) -> io::Result<std::process::Child> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node_netns.display()))
        .arg(plugin)
        // A fault-injection switch in our own environment must not leak into the plugin.
        .env_remove("SRIOV_CNI_FAULT")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_NETNS", call.netns)
        .env("CNI_PATH", CNI_PATH)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that fails before reading its config closes stdin: not our error.
        let _ = input.write_all(stdin);
    }
    Ok(child)
}
