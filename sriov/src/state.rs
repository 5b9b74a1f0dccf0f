//! The CNI plugin's per-VF records, and the per-VF lock.
//!
//! Layout under the state folder (node-local `stateDir`, default `/run/sriov-rs/cni`, owned
//! by root and writable by nobody else):
//!
//! - `vfs/<pci>.json` (folder 0700, files 0600): one [`VfRecord`] per VF handed to a pod: who owns
//!   it, everything the VF looked like before we touched it, what was attached, and the MTU lock.
//!   It is written atomically ([`crate::owned_dir`]) *before* the first change to the VF, so a
//!   kill at any later point leaves enough on disk to put the VF back. It is removed only once
//!   the VF is clean again.
//! - `locks/<pci>.lock` (folder 0700): `flock(2)`ed while one ADD/DEL/GC works on that VF. Lock
//!   files are never removed (removing a lock file races with a process that just opened it);
//!   there is at most one per VF the node ever had.
//!
//! The kernel drops a flock when its holder dies (kill -9 included), so a crashed ADD never
//! leaves a VF locked. Every file is opened relative to the folder's descriptor without following
//! symlinks: a symlink, a file of another owner or a non-regular file there is an error.

use crate::names::PciAddress;
use crate::netlink::{MacAddr, VfLinkState, VlanProto};
use crate::owned_dir::{Access, FileError, OwnedDir};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Where records were kept before they moved into memory (tmpfs): [`StateDir::adopt`] takes
/// those an older sriov-rs left for pods that still run.
pub const PREVIOUS_STATE_DIR: &str = "/var/lib/cni/sriov-rs";

/// Version of the record format, bumped on incompatible changes.
pub const RECORD_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state folder: {0}")]
    File(#[from] FileError),
    #[error("state folder {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state record {path} is unreadable ({reason}); fix or remove it by hand")]
    Corrupt { path: PathBuf, reason: String },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Who holds the VF: one CNI attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The network (`name` of the netconf): GC of one network never touches another's VFs.
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS` at ADD.
    pub netns: Option<PathBuf>,
}

impl Owner {
    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

/// The VF's netdev before the pod got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetdevState {
    pub name: String,
    pub ifindex: u32,
    #[serde(with = "opt_string")]
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    pub promisc: bool,
    pub altnames: Vec<String>,
}

/// The VF's settings as its PF reported them (`IFLA_VFINFO_LIST`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PfSideState {
    #[serde(with = "as_string")]
    pub mac: MacAddr,
    pub vlan: u16,
    pub qos: u8,
    #[serde(with = "as_string")]
    pub vlan_proto: VlanProto,
    pub spoof_check: Option<bool>,
    pub trust: Option<bool>,
    pub min_tx_rate: u32,
    pub max_tx_rate: u32,
    #[serde(with = "opt_string")]
    pub link_state: Option<VfLinkState>,
}

/// The VF's PF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PfRef {
    pub pci: PciAddress,
    /// Its netdev (`None`: the PF has none, so no PF-side settings are possible).
    pub name: Option<String>,
    pub ifindex: Option<u32>,
    pub driver: Option<String>,
}

/// Everything needed to put the VF back as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalState {
    pub pf: PfRef,
    pub vf_index: u32,
    /// The VF's driver (`vfio-pci` etc. for DPDK VFs, which have no netdev).
    pub driver: Option<String>,
    /// `None` for VFs bound to a userspace driver.
    pub netdev: Option<NetdevState>,
    /// `None` when the PF does not report per-VF settings (e.g. a veth stand-in).
    pub pf_side: Option<PfSideState>,
}

/// What the pod got, written once ADD succeeded (a record without it is an ADD in progress or
/// one that crashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// ifindex of the VF netdev inside the pod.
    pub pod_ifindex: Option<u32>,
    /// The host-side ifindex after a VF driver rebind (igb: admin MAC), if one happened.
    pub rebound_ifindex: Option<u32>,
    /// The CNI result printed, for CHECK and for a repeated ADD.
    pub result: Option<serde_json::Value>,
    /// The device-information file we wrote, as records before `VfRecord::device_info_file`
    /// kept it (read for their DEL; never written now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info_file: Option<PathBuf>,
}

/// An MTU pinned for the pod's lifetime (`mtuLock`); the node daemon restores changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtuLock {
    /// The pod's network namespace.
    pub netns: PathBuf,
    pub ifname: String,
    pub ifindex: Option<u32>,
    pub mtu: u32,
}

/// One VF handed to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfRecord {
    pub format: u32,
    pub pci: PciAddress,
    pub owner: Owner,
    pub original: OriginalState,
    /// Whether an IPAM plugin was called (GC must release its allocation).
    pub ipam: bool,
    pub attached: Option<Attached>,
    pub mtu_lock: Option<MtuLock>,
    /// Set by a DEL that could not find the VF's netdev (its netns was gone): the VF is not
    /// clean yet, but nobody owns it any more; the next ADD or GC finishes the restore.
    #[serde(default)]
    pub orphaned: bool,
    /// The device-information file ADD writes, recorded before it is written so that a release
    /// from any point removes it.
    #[serde(default)]
    pub device_info_file: Option<PathBuf>,
    /// The MAC given from the node's prefix (`macPrefix`) because the config named none: taken
    /// on this node until the record goes.
    #[serde(default, with = "opt_string")]
    pub assigned_mac: Option<MacAddr>,
    /// Made from upstream sriov-cni's record of an attachment it made: only what sriov-cni saved
    /// is restored (not the netdev's altnames, promiscuity or link state; its MTU only when
    /// captured, i.e. not 0).
    #[serde(default)]
    pub upstream: bool,
}

/// The held lock of one VF; dropping it releases the lock.
#[derive(Debug)]
pub struct VfLock {
    pci: PciAddress,
    _flock: Flock<File>,
}

impl VfLock {
    pub fn pci(&self) -> PciAddress {
        self.pci
    }
}

/// A held node-wide lock ([`StateDir::lock_named`]).
#[derive(Debug)]
pub struct NamedLock {
    _flock: Flock<File>,
}

/// The plugin's state folder, open.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    records: OwnedDir,
    locks: OwnedDir,
    /// `macs/<mac>` naming the VF whose record holds that platform MAC: an index, so choosing
    /// a MAC costs a lookup, not a read of every record (the record stays the truth). `None` in
    /// a folder opened for reading only.
    macs: Option<OwnedDir>,
}

fn record_name(pci: &PciAddress) -> String {
    format!("{pci}.json")
}

impl StateDir {
    /// Opens the state folder, creating it and its `vfs/` and `locks/` folders if needed.
    pub fn open(root: &Path) -> Result<StateDir> {
        let top = OwnedDir::open(root, Access::Shared, true)?;
        Ok(StateDir {
            root: root.to_path_buf(),
            records: top.subdir("vfs", Access::Private, true)?,
            locks: top.subdir("locks", Access::Private, true)?,
            macs: Some(top.subdir("macs", Access::Private, true)?),
        })
    }

    /// Opens an existing state folder for reading (the daemon, the status view); `None` when
    /// the plugin never ran on this node.
    pub fn open_existing(root: &Path) -> Result<Option<StateDir>> {
        let top = match OwnedDir::open(root, Access::Shared, false) {
            Ok(d) => d,
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let sub = |name| match top.subdir(name, Access::Private, false) {
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => Ok(None),
            other => other.map(Some),
        };
        match (sub("vfs")?, sub("locks")?) {
            (Some(records), Some(locks)) => Ok(Some(StateDir {
                root: root.to_path_buf(),
                records,
                locks,
                // Only a writer needs it (and folders of older versions have none).
                macs: sub("macs")?,
            })),
            _ => Ok(None),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `vfs/<pci>.json`
    pub fn record_path(&self, pci: &PciAddress) -> PathBuf {
        self.records.path().join(record_name(pci))
    }

    /// STATUS: a record can be written and removed.
    pub fn check_usable(&self) -> Result<()> {
        let probe = format!(".status-{}", std::process::id());
        self.records.write_atomic(&probe, b"ok", 0o600)?;
        self.records.remove(&probe)?;
        Ok(())
    }

    /// Moves the records of another state folder (an older sriov-rs's, [`PREVIOUS_STATE_DIR`])
    /// into this one, each under its VF's lock in both: pods that were running when the node was
    /// upgraded keep their VFs, and their DEL finds the record. A record already here wins;
    /// unreadable ones stay where they are. Returns how many moved (0 at once when `other` does
    /// not exist).
    pub fn adopt(&self, other: &Path) -> Result<usize> {
        if other == self.root {
            return Ok(0);
        }
        let Some(old) = StateDir::open_existing(other)? else {
            return Ok(0);
        };
        let mut moved = 0;
        for record in old.records()? {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("not adopting a record of {}: {e}", other.display());
                    continue;
                }
            };
            let here = self.lock_vf(record.pci)?;
            let _there = old.lock_vf(record.pci)?;
            // Re-read under the locks: a DEL of the old version may have finished meanwhile.
            let Some(current) = old.load(&record.pci)? else {
                continue;
            };
            if self.load(&record.pci)?.is_none() {
                self.save(&here, &current)?;
                moved += 1;
            }
            old.records.remove(&record_name(&record.pci))?;
        }
        Ok(moved)
    }

    /// Removes temporary record files left by killed writers.
    pub fn remove_stale_temps(&self) -> Result<usize> {
        Ok(self.records.remove_stale_temps()?)
    }

    /// Waits for and takes the VF's lock.
    pub fn lock_vf(&self, pci: PciAddress) -> Result<VfLock> {
        self.flock(pci, FlockArg::LockExclusive)?
            .ok_or_else(|| unreachable_would_block(&self.locks, pci))
    }

    /// Waits for and takes a node-wide lock of the plugin's (`name` a plain word), e.g. while a
    /// MAC is chosen from the node's prefix; held until dropped.
    pub fn lock_named(&self, name: &str) -> Result<NamedLock> {
        let path = self.locks.path().join(format!("{name}.lock"));
        let file = self.locks.open_lock(&format!("{name}.lock"))?;
        let flock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| StateError::Io {
                op: "flock",
                path,
                source: io::Error::from(e),
            })?;
        Ok(NamedLock { _flock: flock })
    }

    /// Whether another VF's live record holds the platform MAC `mac` (under the platform-MAC
    /// lock). An index entry whose record no longer holds it is stale and does not count.
    pub fn mac_taken(&self, mac: &MacAddr, by_other_than: &PciAddress) -> Result<bool> {
        let Some(text) = self
            .macs
            .as_ref()
            .map(|m| m.read(&mac.to_string()))
            .transpose()?
            .flatten()
        else {
            return Ok(false);
        };
        let Ok(pci) = PciAddress::parse(String::from_utf8_lossy(&text).trim()) else {
            return Ok(false);
        };
        if pci == *by_other_than {
            return Ok(false);
        }
        Ok(self
            .load(&pci)
            .ok()
            .flatten()
            .is_some_and(|r| r.assigned_mac.as_ref() == Some(mac)))
    }

    /// Records in the index that `pci`'s record holds `mac` (before the record says so).
    pub fn claim_mac(&self, mac: &MacAddr, pci: &PciAddress) -> Result<()> {
        if let Some(macs) = &self.macs {
            macs.write_atomic(&mac.to_string(), pci.to_string().as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// Drops `mac` from the index if `pci` holds it there (after its record went).
    pub fn release_mac(&self, mac: &MacAddr, pci: &PciAddress) -> Result<()> {
        let (name, Some(macs)) = (mac.to_string(), &self.macs) else {
            return Ok(());
        };
        if let Some(text) = macs.read(&name)? {
            if String::from_utf8_lossy(&text).trim() == pci.to_string() {
                macs.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Takes the VF's lock if nobody holds it.
    pub fn try_lock_vf(&self, pci: PciAddress) -> Result<Option<VfLock>> {
        self.flock(pci, FlockArg::LockExclusiveNonblock)
    }

    fn flock(&self, pci: PciAddress, how: FlockArg) -> Result<Option<VfLock>> {
        let name = format!("{pci}.lock");
        let file = self.locks.open_lock(&name)?;
        match Flock::lock(file, how) {
            Ok(flock) => Ok(Some(VfLock { pci, _flock: flock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(StateError::Io {
                op: "flock",
                path: self.locks.path().join(name),
                source: io::Error::from(e),
            }),
        }
    }

    /// The VF's record, if it has one.
    pub fn load(&self, pci: &PciAddress) -> Result<Option<VfRecord>> {
        self.read_record(&record_name(pci))
    }

    /// Writes the record under the VF's lock.
    pub fn save(&self, lock: &VfLock, record: &VfRecord) -> Result<()> {
        debug_assert_eq!(lock.pci, record.pci);
        let text = serde_json::to_vec_pretty(record).map_err(|e| StateError::Io {
            op: "encode",
            path: self.record_path(&record.pci),
            source: io::Error::other(e),
        })?;
        Ok(self
            .records
            .write_atomic(&record_name(&record.pci), &text, 0o600)?)
    }

    /// Drops the record (the VF is clean). A missing record is fine.
    pub fn remove(&self, lock: &VfLock) -> Result<()> {
        self.records.remove(&record_name(&lock.pci))?;
        Ok(())
    }

    /// Every record, in PCI order. Unreadable records are returned as errors, not skipped.
    pub fn records(&self) -> Result<Vec<Result<VfRecord>>> {
        Ok(self
            .records
            .names()?
            .iter()
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .filter_map(|n| self.read_record(n).transpose())
            .collect())
    }

    /// The record owned by this attachment, if any.
    pub fn find_owned(&self, container_id: &str, ifname: &str) -> Result<Option<VfRecord>> {
        Ok(self
            .records()?
            .into_iter()
            .filter_map(|r| r.ok())
            .find(|r| r.owner.is(container_id, ifname)))
    }

    fn read_record(&self, name: &str) -> Result<Option<VfRecord>> {
        let Some(text) = self.records.read(name)? else {
            return Ok(None);
        };
        let path = self.records.path().join(name);
        let record: VfRecord = serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if record.format != RECORD_FORMAT {
            return Err(StateError::Corrupt {
                path,
                reason: format!(
                    "format {} (this build reads {RECORD_FORMAT})",
                    record.format
                ),
            });
        }
        Ok(Some(record))
    }
}

/// A blocking flock never answers EWOULDBLOCK; should a kernel do so, say which lock.
fn unreachable_would_block(locks: &OwnedDir, pci: PciAddress) -> StateError {
    StateError::Io {
        op: "flock",
        path: locks.path().join(format!("{pci}.lock")),
        source: io::Error::from(nix::errno::Errno::EWOULDBLOCK),
    }
}

/// Every MTU lock recorded in `state_dir`, with its VF (for the node daemon).
pub fn scan_locks(state_dir: &Path) -> Result<Vec<(PciAddress, MtuLock)>> {
    let Some(state) = StateDir::open_existing(state_dir)? else {
        return Ok(Vec::new());
    };
    Ok(state
        .records()?
        .into_iter()
        .filter_map(|r| r.ok())
        .filter_map(|r| r.mtu_lock.map(|l| (r.pci, l)))
        .collect())
}

/// Serde through `Display` / `FromStr`.
mod as_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

pub(crate) mod opt_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        match Option::<String>::deserialize(d)? {
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pci: &str, cid: &str) -> VfRecord {
        VfRecord {
            format: RECORD_FORMAT,
            pci: PciAddress::parse(pci).unwrap(),
            owner: Owner {
                network: "net".into(),
                container_id: cid.into(),
                ifname: "net1".into(),
                netns: Some("/run/netns/x".into()),
            },
            original: OriginalState {
                pf: PfRef {
                    pci: PciAddress::parse("0000:3b:00.0").unwrap(),
                    name: Some("ens1f0".into()),
                    ifindex: Some(3),
                    driver: Some("i40e".into()),
                },
                vf_index: 0,
                driver: Some("iavf".into()),
                netdev: Some(NetdevState {
                    name: "ens1f0v0".into(),
                    ifindex: 7,
                    mac: Some("02:00:00:00:00:01".parse().unwrap()),
                    mtu: 1500,
                    up: true,
                    promisc: false,
                    altnames: vec!["enp59s0f0v0".into()],
                }),
                pf_side: Some(PfSideState {
                    mac: MacAddr::default(),
                    vlan: 0,
                    qos: 0,
                    vlan_proto: VlanProto::Dot1Ad,
                    spoof_check: Some(true),
                    trust: None,
                    min_tx_rate: 0,
                    max_tx_rate: 0,
                    link_state: Some(VfLinkState::Auto),
                }),
            },
            ipam: true,
            attached: None,
            mtu_lock: Some(MtuLock {
                netns: "/run/netns/x".into(),
                ifname: "net1".into(),
                ifindex: Some(9),
                mtu: 9000,
            }),
            orphaned: false,
            device_info_file: None,
            assigned_mac: None,
            upstream: false,
        }
    }

    #[test]
    fn save_load_find_remove() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        state.check_usable().unwrap();
        let r = record("0000:3b:02.0", "c1");
        let lock = state.lock_vf(r.pci).unwrap();
        assert!(state.load(&r.pci).unwrap().is_none());
        state.save(&lock, &r).unwrap();
        assert_eq!(state.load(&r.pci).unwrap().as_ref(), Some(&r));
        assert_eq!(state.find_owned("c1", "net1").unwrap().as_ref(), Some(&r));
        assert!(state.find_owned("c1", "net2").unwrap().is_none());
        let locks = scan_locks(state.root()).unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].1.mtu, 9000);
        state.remove(&lock).unwrap();
        state.remove(&lock).unwrap();
        assert!(state.records().unwrap().is_empty());
        // Only the lock file stays.
        assert_eq!(
            std::fs::read_dir(dir.path().join("state/vfs"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let pci = PciAddress::parse("0000:3b:02.1").unwrap();
        let held = state.lock_vf(pci).unwrap();
        assert!(state.try_lock_vf(pci).unwrap().is_none());
        let other = PciAddress::parse("0000:3b:02.2").unwrap();
        assert!(state.try_lock_vf(other).unwrap().is_some());
        drop(held);
        assert!(state.try_lock_vf(pci).unwrap().is_some());
    }

    #[test]
    fn corrupt_records_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let pci = PciAddress::parse("0000:3b:02.3").unwrap();
        std::fs::write(state.record_path(&pci), "{").unwrap();
        let e = state.load(&pci).unwrap_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
        assert_eq!(state.records().unwrap().len(), 1);
        assert!(state.records().unwrap()[0].is_err());
    }

    #[test]
    fn planted_symlinks_are_refused_and_their_targets_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let r = record("0000:3b:02.4", "c1");
        std::os::unix::fs::symlink(&victim, state.record_path(&r.pci)).unwrap();
        let lock = state.lock_vf(r.pci).unwrap();
        let e = state.save(&lock, &r).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(state.load(&r.pci).is_err());
        // A dangling lock link: the target is not created.
        let pci = PciAddress::parse("0000:3b:02.5").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("created"),
            dir.path().join("state/locks/0000:3b:02.5.lock"),
        )
        .unwrap();
        assert!(state.lock_vf(pci).is_err());
        assert!(!dir.path().join("created").exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // Stale temporary records of a killed writer go.
        std::fs::write(
            dir.path()
                .join("state/vfs/.0000:3b:02.4.json.999999999.0123456789abcdef.tmp"),
            "{}",
        )
        .unwrap();
        assert_eq!(state.remove_stale_temps().unwrap(), 1);
    }

    #[test]
    fn records_of_the_previous_folder_are_adopted_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = StateDir::open(&dir.path().join("old")).unwrap();
        let new = StateDir::open(&dir.path().join("new")).unwrap();
        let (a, b) = (record("0000:3b:02.0", "c1"), record("0000:3b:02.1", "c2"));
        for r in [&a, &b] {
            old.save(&old.lock_vf(r.pci).unwrap(), r).unwrap();
        }
        // A record already in the new folder wins.
        let mut newer = b.clone();
        newer.owner.container_id = "c3".into();
        new.save(&new.lock_vf(b.pci).unwrap(), &newer).unwrap();
        assert_eq!(new.adopt(old.root()).unwrap(), 1);
        assert_eq!(new.load(&a.pci).unwrap().as_ref(), Some(&a));
        assert_eq!(new.load(&b.pci).unwrap().unwrap().owner.container_id, "c3");
        assert!(old.records().unwrap().is_empty());
        assert_eq!(new.adopt(old.root()).unwrap(), 0);
        assert_eq!(new.adopt(&dir.path().join("none")).unwrap(), 0);
    }
}
