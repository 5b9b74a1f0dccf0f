//! Attaching a scalable function's netdev to a pod, by its auxiliary device name (the device
//! plugin's device ID of an `auxNetDevice` pool, which Multus passes as `deviceID`), as a VF's
//! is attached but without PF-side settings: an SF has no VF entry on a PF.
//!
//! Crash safety as for VFs, in a smaller record: the netdev's name, MTU and MAC are saved
//! (`<stateDir>/aux/<name>.json`, under the SF's lock) before anything changes; a restore
//! finds the netdev in the pod under its pod name or back on the node under its own, and puts
//! it back as it was (down, as sriov-cni leaves a VF).

use crate::aux_device;
use crate::netlink::{MacAddr, NetlinkError, NetlinkSocket, Netns};
use crate::owned_dir::{Access, FileError, OwnedDir};
use crate::state::Owner;
use crate::sysfs::Sysfs;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SfError {
    #[error("{0}")]
    NotAnSf(String),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("state record {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("flock {path}: {errno}")]
    Lock { path: PathBuf, errno: nix::Error },
}

fn nl(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> SfError {
    let what = what.into();
    move |source| SfError::Netlink { what, source }
}

/// Where an SF is: its parent function and its netdev in this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfLocation {
    pub name: String,
    pub netdev: String,
}

/// Checks that `name` is an auxiliary device name of a scalable function (`<driver>.sf.<n>`).
pub fn check_name(name: &str) -> Result<(), SfError> {
    aux_device::validate_name(name).map_err(SfError::NotAnSf)?;
    if aux_device::aux_type_of(name) != Some("sf") {
        return Err(SfError::NotAnSf(format!(
            "{name} is not a scalable function (<driver>.sf.<n>)"
        )));
    }
    Ok(())
}

/// Finds the SF `name` (validated first: it becomes a path) and its netdev on the node.
pub fn locate(sysfs: &Sysfs, name: &str) -> Result<SfLocation, SfError> {
    check_name(name)?;
    let dir = aux_device::sysfs_dir(sysfs, name);
    if !sysfs.exists(&dir) {
        return Err(SfError::NotAnSf(format!(
            "no auxiliary device {name} on this node ({} is missing)",
            dir.display()
        )));
    }
    let netdev = crate::discovery::read_netdevs(sysfs, &dir, false, &Default::default())
        .ok()
        .and_then(|n| n.into_iter().next())
        .map(|n| n.name)
        .ok_or_else(|| {
            SfError::NotAnSf(format!(
                "{name} has no netdev in this network namespace ({}/net)",
                dir.display()
            ))
        })?;
    Ok(SfLocation {
        name: name.to_string(),
        netdev,
    })
}

/// The SF's netdev before the pod got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SfOriginal {
    pub netdev: String,
    pub mtu: u32,
    #[serde(default, with = "crate::state::opt_string")]
    pub mac: Option<MacAddr>,
}

/// One SF attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SfRecord {
    pub name: String,
    pub owner: Owner,
    pub original: SfOriginal,
    /// The CNI result, once attached.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// `<stateDir>/aux`: the SF records and locks (ours alone).
#[derive(Debug)]
pub struct SfState {
    dir: OwnedDir,
}

/// A held SF lock.
#[derive(Debug)]
pub struct SfLock {
    _flock: Flock<File>,
}

impl SfState {
    pub fn open(state_root: &Path) -> Result<SfState, SfError> {
        let top = OwnedDir::open(state_root, Access::Shared, true)?;
        Ok(SfState {
            dir: top.subdir("aux", Access::Private, true)?,
        })
    }

    /// Waits for and takes the lock of SF `name` (a validated name).
    pub fn lock(&self, name: &str) -> Result<SfLock, SfError> {
        let file = self.dir.open_lock(&format!("{name}.lock"))?;
        let flock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| SfError::Lock {
                path: self.dir.path().join(format!("{name}.lock")),
                errno,
            })?;
        Ok(SfLock { _flock: flock })
    }

    pub fn load(&self, name: &str) -> Result<Option<SfRecord>, SfError> {
        let file = format!("{name}.json");
        let Some(bytes) = self.dir.read(&file)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SfError::Corrupt {
                path: self.dir.path().join(&file),
                reason: e.to_string(),
            })
    }

    pub fn save(&self, _lock: &SfLock, record: &SfRecord) -> Result<(), SfError> {
        let text = serde_json::to_vec(record).map_err(|e| SfError::Corrupt {
            path: self.dir.path().join(&record.name),
            reason: e.to_string(),
        })?;
        Ok(self
            .dir
            .write_atomic(&format!("{}.json", record.name), &text, 0o600)?)
    }

    pub fn remove(&self, _lock: &SfLock, name: &str) -> Result<(), SfError> {
        self.dir.remove(&format!("{name}.json"))?;
        Ok(())
    }

    /// Every SF record (unreadable ones as errors).
    pub fn records(&self) -> Result<Vec<Result<SfRecord, SfError>>, SfError> {
        let mut out = Vec::new();
        for file in self.dir.names()? {
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if aux_device::validate_name(name).is_err() {
                continue;
            }
            match self.load(name) {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    /// The record of the attachment (`container_id`, `ifname`), if any.
    pub fn find_owned(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<SfRecord>, SfError> {
        for file in self.dir.names()? {
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if aux_device::validate_name(name).is_err() {
                continue;
            }
            if let Some(r) = self.load(name)? {
                if r.owner.is(container_id, ifname) {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }
}

/// What the pod's interface gets.
#[derive(Debug, Clone)]
pub struct SfPodSettings {
    pub ifname: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
}

/// The netdev's state now (for the record), from the host side.
pub fn snapshot(host: &mut NetlinkSocket, loc: &SfLocation) -> Result<SfOriginal, SfError> {
    let link = host
        .link_by_name(&loc.netdev)
        .map_err(nl(format!("read {}", loc.netdev)))?;
    Ok(SfOriginal {
        netdev: link.name,
        mtu: link.mtu,
        mac: link.mac,
    })
}

/// Moves the SF's netdev into the pod under `pod.ifname` and sets its MAC and MTU (not up:
/// the caller adds addresses first). Returns the pod-side index.
pub fn attach(
    host: &mut NetlinkSocket,
    loc: &SfLocation,
    pod: &SfPodSettings,
    pod_ns: &Netns,
    pod_sock: &mut NetlinkSocket,
) -> Result<u32, SfError> {
    let link = host
        .link_by_name(&loc.netdev)
        .map_err(nl(format!("read {}", loc.netdev)))?;
    if link.up {
        host.set_down(link.index)
            .map_err(nl(format!("set {} down", loc.netdev)))?;
    }
    host.move_to_netns_as(link.index, pod_ns, &pod.ifname)
        .map_err(nl(format!(
            "move {} into the pod as {}",
            loc.netdev, pod.ifname
        )))?;
    let index = pod_sock
        .link_by_name(&pod.ifname)
        .map_err(nl(format!("find {} in the pod", pod.ifname)))?
        .index;
    if let Some(mac) = pod.mac {
        pod_sock
            .set_mac(index, mac)
            .map_err(nl(format!("set the MAC of {} to {mac}", pod.ifname)))?;
    }
    if let Some(mtu) = pod.mtu {
        pod_sock
            .set_mtu(index, mtu)
            .map_err(nl(format!("set the MTU of {} to {mtu}", pod.ifname)))?;
    }
    Ok(index)
}

/// Puts the SF's netdev back as the record says, wherever it is: in the pod under the record's
/// pod name (`pod` when the pod's namespace is still there), or on the node under its own name.
/// A netdev found nowhere is an error (it may still be on its way back from a dying namespace).
pub fn restore(
    host: &mut NetlinkSocket,
    record: &SfRecord,
    pod: Option<(&Netns, &mut NetlinkSocket)>,
) -> Result<(), SfError> {
    let orig = &record.original;
    if let Some((_, sock)) = pod {
        match sock.link_by_name(&record.owner.ifname) {
            Ok(link) => {
                let host_ns = Netns::current().map_err(nl("open the node's namespace"))?;
                let _ = sock.set_down(link.index);
                sock.move_to_netns_as(link.index, &host_ns, &orig.netdev)
                    .map_err(nl(format!(
                        "move {} back to the node as {}",
                        record.owner.ifname, orig.netdev
                    )))?;
            }
            Err(e) if e.is_no_device() => {}
            Err(e) => return Err(nl(format!("find {} in the pod", record.owner.ifname))(e)),
        }
    }
    let link = host.link_by_name(&orig.netdev).map_err(nl(format!(
        "find {} on the node (not in the pod either)",
        orig.netdev
    )))?;
    if link.up {
        host.set_down(link.index)
            .map_err(nl(format!("set {} down", orig.netdev)))?;
    }
    if link.mtu != orig.mtu {
        host.set_mtu(link.index, orig.mtu)
            .map_err(nl(format!("restore the MTU of {}", orig.netdev)))?;
    }
    if let Some(mac) = orig.mac {
        if link.mac != Some(mac) {
            host.set_mac(link.index, mac)
                .map_err(nl(format!("restore the MAC of {}", orig.netdev)))?;
        }
    }
    Ok(())
}
