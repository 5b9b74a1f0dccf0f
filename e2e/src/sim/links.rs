//! Real kernel objects of a lab: the node netns, its veth/bridge links (made
//! with one `ip -batch` so a thousand VFs take about a second), and the sysfs
//! mount that shows the netns's live netdevs.

use super::description::{
    bridge_name, peer_netdev, LabDescription, PfDescription, VfDescription, PLAIN_NIC_NETDEV,
};
use super::error::{Result, SimError};
use super::paths::NETNS_DIR;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::ffi::OsStr;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Finds a system tool even when PATH lacks the sbin folders (cargo test).
pub(crate) fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion; `stdin` is fed from a thread so a chatty
/// child cannot deadlock us. Returns the output whatever the exit status.
pub(crate) fn output(cmd: &mut Command, stdin: Option<String>) -> Result<Output> {
    let command = describe(cmd);
    let spawn_err = |source| SimError::Spawn {
        command: command.clone(),
        source,
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let feeder = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let out = child.wait_with_output().map_err(spawn_err)?;
    if let Some(feeder) = feeder {
        // A write error only means the child stopped reading; its status says why.
        let _ = feeder.join();
    }
    Ok(out)
}

/// Like [`output`] but a non-zero exit is an error carrying stderr.
pub(crate) fn run(cmd: &mut Command, stdin: Option<String>) -> Result<Output> {
    let out = output(cmd, stdin)?;
    if out.status.success() {
        return Ok(out);
    }
    Err(SimError::Command {
        command: describe(cmd),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `ip -n NETNS -batch -` (stops at the first failing line).
pub(crate) fn ip_batch(netns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(tool("ip"));
    cmd.args(["-n", netns, "-batch", "-"]);
    run(&mut cmd, Some(lines.join("\n") + "\n")).map(drop)
}

/// `ip -force -n NETNS -batch -`: every line is tried; failures are ignored
/// because teardown must succeed when parts are already gone.
pub(crate) fn ip_batch_best_effort(netns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(tool("ip"));
    cmd.args(["-force", "-n", netns, "-batch", "-"]);
    output(&mut cmd, Some(lines.join("\n") + "\n")).map(drop)
}

pub(crate) fn add_netns(name: &str) -> Result<()> {
    run(Command::new(tool("ip")).args(["netns", "add", name]), None).map(drop)
}

/// What `ip netns del` does, but quiet when the netns is half gone.
pub(crate) fn delete_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(SimError::sys("unmount netns", path.display())(e)),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(SimError::io("remove netns file", &path)(e))
        }
        _ => Ok(()),
    }
}

/// Names of all named network namespaces.
pub(crate) fn list_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Mounts the sysfs of the netns at `netns_path` on `target`. A sysfs mount
/// shows the netdevs of the mounting task's netns, so a short-lived thread
/// joins the netns (setns affects only the calling thread) and mounts.
pub(crate) fn mount_netsys(netns_path: &Path, target: &Path) -> Result<()> {
    let ns = netns_path.to_path_buf();
    let at = target.to_path_buf();
    std::thread::spawn(move || -> Result<()> {
        let file = std::fs::File::open(&ns).map_err(SimError::io("open netns", &ns))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(SimError::sys("setns", ns.display()))?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some("sysfs"), &at, Some("sysfs"), flags, None::<&str>)
            .map_err(SimError::sys("mount sysfs on", at.display()))
    })
    .join()
    .unwrap_or_else(|_| Err(SimError::InvalidSpec("netsys mount thread panicked".into())))
}

/// Mounts a private tmpfs for a lab's files. /run is not always a tmpfs (on
/// ext4, creating inodes right after deleting thousands crawls through
/// `recently_deleted`: a 1,024-VF tree took 13 s instead of 0.3 s), and a
/// mount makes `down` one unmount instead of thousands of unlinks.
pub(crate) fn mount_tmpfs(target: &Path) -> Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("sriov-lab"),
        target,
        Some("tmpfs"),
        flags,
        Some("mode=0755,size=256m"),
    )
    .map_err(SimError::sys("mount tmpfs on", target.display()))
}

/// Decodes the octal escapes (`\040`) of a /proc/self/mountinfo path.
fn unescape_mount_path(raw: &str) -> PathBuf {
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok());
        match (bytes[i], octal.and_then(|d| u8::from_str_radix(d, 8).ok())) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything below `dir`; a busy mount is detached (lazy).
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    for point in mounts_under(dir) {
        match nix::mount::umount2(&point, MntFlags::empty()) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(nix::Error::EBUSY) => nix::mount::umount2(&point, MntFlags::MNT_DETACH)
                .map_err(SimError::sys("lazy unmount", point.display()))?,
            Err(e) => return Err(SimError::sys("unmount", point.display())(e)),
        }
    }
    Ok(())
}

/// veth pair + peer-side bridge port for every VF that has a netdev.
/// The peer cannot be enslaved or set up in the same `link add` (the kernel
/// answers ENOTCONN), so all pairs come first, then the port settings.
fn vf_lines(pf: &PfDescription, vfs: &[VfDescription], out: &mut Vec<String>) {
    let bridge = bridge_name(pf.index);
    // A virtio vDPA device's netdev is a port of the PF's switch as the VF's own is.
    let netdevs: Vec<&String> = vfs
        .iter()
        .flat_map(|vf| {
            vf.netdev
                .iter()
                .chain(vf.vdpa.iter().flat_map(|v| v.virtio_netdev.iter()))
        })
        .collect();
    for vf in &netdevs {
        out.push(format!(
            "link add {vf} type veth peer name {}",
            peer_netdev(vf)
        ));
    }
    for vf in &netdevs {
        out.push(format!("link set {} master {bridge} up", peer_netdev(vf)));
    }
}

/// Every link of a fresh lab. PF netdevs are up (carrier); VF netdevs stay
/// down, as a fresh VF is.
pub(crate) fn up_lines(desc: &LabDescription) -> Vec<String> {
    let mut out = Vec::new();
    for pf in &desc.pfs {
        let bridge = bridge_name(pf.index);
        let peer = peer_netdev(&pf.netdev);
        out.push(format!("link add {bridge} up type bridge"));
        out.push(format!("link add {} type veth peer name {peer}", pf.netdev));
        out.push(format!("link set {peer} master {bridge} up"));
        out.push(format!("link set {} up", pf.netdev));
        for sf in &pf.sfs {
            let peer = peer_netdev(&sf.netdev);
            out.push(format!("link add {} type veth peer name {peer}", sf.netdev));
            out.push(format!("link set {peer} master {bridge} up"));
        }
        vf_lines(pf, &pf.vfs, &mut out);
    }
    let peer = peer_netdev(PLAIN_NIC_NETDEV);
    out.push(format!(
        "link add {PLAIN_NIC_NETDEV} type veth peer name {peer}"
    ));
    out.push(format!("link set {peer} up"));
    out.push(format!("link set {PLAIN_NIC_NETDEV} up"));
    out
}

/// Links for VFs enabled after `up`.
pub(crate) fn add_vf_lines(pf: &PfDescription, vfs: &[VfDescription]) -> Vec<String> {
    let mut out = Vec::new();
    vf_lines(pf, vfs, &mut out);
    out
}

/// Deletes VF links through their bridge-side peers: the peer always stays in
/// the node netns, while the VF netdev may have moved into a pod's netns
/// (deleting either end of a veth removes both, wherever they are).
pub(crate) fn remove_vf_lines(pf: &PfDescription) -> Vec<String> {
    pf.vfs
        .iter()
        .flat_map(|vf| {
            vf.netdev
                .iter()
                .chain(vf.vdpa.iter().flat_map(|v| v.virtio_netdev.iter()))
        })
        .map(|vf| format!("link del {}", peer_netdev(vf)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mount_path(r"/run/a\040b"),
            PathBuf::from("/run/a b")
        );
        assert_eq!(unescape_mount_path(r"/x\\y"), PathBuf::from(r"/x\\y"));
    }
}
