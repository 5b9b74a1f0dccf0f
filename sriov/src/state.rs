//! Crash-safe per-VF records of the CNI plugin, and the per-VF lock.
//!
//! Layout under the state folder (`stateDir`, default `/var/lib/cni/sriov-rs`):
//!
//! - `vfs/<pci>.json`: one [`VfRecord`] per VF handed to a pod: who owns it, everything the VF
//!   looked like before we touched it, what was attached, and the MTU lock. It is written
//!   atomically (temp file, `fsync`, `rename`, `fsync` of the folder) *before* the first change to
//!   the VF, so a crash at any later point leaves enough on disk to put the VF back. It is removed
//!   only once the VF is clean again.
//! - `locks/<pci>.lock`: `flock(2)`ed while one ADD/DEL/GC works on that VF. Lock files are never
//!   removed (removing a lock file races with a process that just opened it); there is at most one
//!   per VF the node ever had.
//!
//! The kernel drops a flock when its holder dies (kill -9 included), so a crashed ADD never
//! leaves a VF locked.

use crate::names::PciAddress;
use crate::netlink::{MacAddr, VfLinkState, VlanProto};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Version of the record format, bumped on incompatible changes.
pub const RECORD_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
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

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

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
    /// The device-information file we wrote (removed at DEL).
    #[serde(default)]
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

/// The plugin's state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn records_dir(&self) -> PathBuf {
        self.root.join("vfs")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// `vfs/<pci>.json`
    pub fn record_path(&self, pci: &PciAddress) -> PathBuf {
        self.records_dir().join(format!("{pci}.json"))
    }

    /// Creates the folders (mode 0700) if needed.
    pub fn ensure(&self) -> Result<()> {
        for dir in [self.records_dir(), self.locks_dir()] {
            if !dir.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(io_err("create folder", &dir))?;
            }
        }
        Ok(())
    }

    /// STATUS: the folders exist (or can be made) and a file can be written, synced and removed.
    pub fn check_usable(&self) -> Result<()> {
        self.ensure()?;
        let probe = self
            .records_dir()
            .join(format!(".status-{}", std::process::id()));
        let mut f = File::create(&probe).map_err(io_err("create", &probe))?;
        f.write_all(b"ok").map_err(io_err("write", &probe))?;
        f.sync_all().map_err(io_err("fsync", &probe))?;
        fs::remove_file(&probe).map_err(io_err("remove", &probe))
    }

    fn open_lock_file(&self, pci: &PciAddress) -> Result<File> {
        let path = self.locks_dir().join(format!("{pci}.lock"));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
        };
        match open() {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure()?;
                open().map_err(io_err("open lock", &path))
            }
            Err(e) => Err(io_err("open lock", &path)(e)),
        }
    }

    /// Waits for and takes the VF's lock.
    pub fn lock_vf(&self, pci: PciAddress) -> Result<VfLock> {
        let file = self.open_lock_file(&pci)?;
        let path = self.locks_dir().join(format!("{pci}.lock"));
        let flock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("flock", &path)(io::Error::from(e)))?;
        Ok(VfLock { pci, _flock: flock })
    }

    /// Takes the VF's lock if nobody holds it.
    pub fn try_lock_vf(&self, pci: PciAddress) -> Result<Option<VfLock>> {
        let file = self.open_lock_file(&pci)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(Some(VfLock { pci, _flock: flock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => {
                let path = self.locks_dir().join(format!("{pci}.lock"));
                Err(io_err("flock", &path)(io::Error::from(e)))
            }
        }
    }

    /// The VF's record, if it has one.
    pub fn load(&self, pci: &PciAddress) -> Result<Option<VfRecord>> {
        read_record(&self.record_path(pci))
    }

    /// Writes the record under the VF's lock. `durable`: fsync file and folder before returning
    /// (required before changing the VF; updates that only add information may skip it).
    pub fn save(&self, lock: &VfLock, record: &VfRecord, durable: bool) -> Result<()> {
        debug_assert_eq!(lock.pci, record.pci);
        self.ensure()?;
        let path = self.record_path(&record.pci);
        let tmp = self.records_dir().join(format!(".{}.json.tmp", record.pci));
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| io_err("encode", &path)(io::Error::other(e)))?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(&text).map_err(io_err("write", &tmp))?;
        if durable {
            f.sync_all().map_err(io_err("fsync", &tmp))?;
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        if durable {
            let dir = self.records_dir();
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync folder", &dir))?;
        }
        Ok(())
    }

    /// Drops the record (the VF is clean). A missing record is fine.
    pub fn remove(&self, lock: &VfLock) -> Result<()> {
        let path = self.record_path(&lock.pci);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every record, in PCI order. Unreadable records are returned as errors, not skipped.
    pub fn records(&self) -> Result<Vec<Result<VfRecord>>> {
        let dir = self.records_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && p.file_name()
                        .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        Ok(paths
            .iter()
            .filter_map(|p| read_record(p).transpose())
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
}

fn read_record(path: &Path) -> Result<Option<VfRecord>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let record: VfRecord = serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if record.format != RECORD_FORMAT {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "format {} (this build reads {RECORD_FORMAT})",
                record.format
            ),
        });
    }
    Ok(Some(record))
}

/// Every MTU lock recorded in `state_dir`, with its VF (for the node daemon).
pub fn scan_locks(state_dir: &Path) -> Result<Vec<(PciAddress, MtuLock)>> {
    Ok(StateDir::new(state_dir)
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

mod opt_string {
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
        }
    }

    #[test]
    fn save_load_find_remove() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.check_usable().unwrap();
        let r = record("0000:3b:02.0", "c1");
        let lock = state.lock_vf(r.pci).unwrap();
        assert!(state.load(&r.pci).unwrap().is_none());
        state.save(&lock, &r, true).unwrap();
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
            fs::read_dir(dir.path().join("state/vfs")).unwrap().count(),
            0
        );
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
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
        let state = StateDir::new(dir.path());
        state.ensure().unwrap();
        let pci = PciAddress::parse("0000:3b:02.3").unwrap();
        fs::write(state.record_path(&pci), "{").unwrap();
        let e = state.load(&pci).unwrap_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
        assert_eq!(state.records().unwrap().len(), 1);
        assert!(state.records().unwrap()[0].is_err());
    }
}
