//! The node-local record of prepared DRA claims: one file per claim (`<uid>.json`) in a folder
//! the daemon owns (`/run/sriov-rs/dra/claims`), written atomically before anything changes and
//! after every step, so that a prepare or unprepare cut short by a kill is finished or undone
//! from it, and so that the CNI can find the VF a pod's claim was given.
//!
//! A record goes `Preparing` (written before any device is touched, with each device's driver
//! as it was) → `Prepared` (drivers bound, CDI spec written) → `Unpreparing` (written before
//! anything is undone) → removed.

use crate::dra_claim::{ClaimRef, Consumer, VfConfig};
use crate::owned_dir::{Access, FileError, OwnedDir};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the daemon keeps DRA state by default.
pub const DEFAULT_DRA_STATE_DIR: &str = "/run/sriov-rs/dra";
/// The claims folder inside it.
pub const CLAIMS_DIR: &str = "claims";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Preparing,
    Prepared,
    Unpreparing,
}

/// One device of a prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    pub request: String,
    pub pool: String,
    /// The DRA device name (`0000-3b-02-1`).
    pub device: String,
    /// Its PCI address.
    pub pci: String,
    /// The device plugin pool it is in (`intel.com/sriov_net`): what a NAD's `resourceName`
    /// names.
    pub resource_name: String,
    /// The driver bound before prepare (restored at unprepare when prepare changed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_driver: Option<String>,
    /// Its `driver_override` before prepare (`""`: none), put back at unprepare when prepare
    /// bound another driver (binding leaves the override set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_driver_override: Option<String>,
    pub config: VfConfig,
    pub cdi_device_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    pub claim: ClaimRef,
    pub phase: Phase,
    pub devices: Vec<PreparedDevice>,
    /// The pods the claim is reserved for, as last seen.
    #[serde(default)]
    pub pods: Vec<Consumer>,
    /// The claim's CDI spec file (in the CDI folder).
    pub cdi_file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("DRA claim records: {0}")]
    File(#[from] FileError),
    #[error("DRA claim record {file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The records folder.
#[derive(Debug)]
pub struct Records {
    dir: OwnedDir,
}

fn file_name(uid: &str) -> String {
    format!("{uid}.json")
}

impl Records {
    /// Opens `<state_dir>/claims` (ours alone), creating it when `create` is set.
    pub fn open(state_dir: &Path, create: bool) -> Result<Records, RecordError> {
        let top = OwnedDir::open(state_dir, Access::Private, create)?;
        let dir = top.subdir(CLAIMS_DIR, Access::Private, create)?;
        Ok(Records { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes (replaces) the record of its claim; the claim's UID must have been checked
    /// ([`ClaimRef::check_uid`]).
    pub fn write(&self, record: &ClaimRecord) -> Result<(), RecordError> {
        let file = file_name(&record.claim.uid);
        let body = serde_json::to_vec(record).map_err(|source| RecordError::Parse {
            file: file.clone(),
            source,
        })?;
        self.dir.write_atomic(&file, &body, 0o600)?;
        Ok(())
    }

    pub fn read(&self, uid: &str) -> Result<Option<ClaimRecord>, RecordError> {
        let file = file_name(uid);
        match self.dir.read(&file)? {
            None => Ok(None),
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|source| RecordError::Parse { file, source }),
        }
    }

    pub fn remove(&self, uid: &str) -> Result<bool, RecordError> {
        Ok(self.dir.remove(&file_name(uid))?)
    }

    /// Every record (stale temporary files of dead writers removed first). An unreadable
    /// record is returned as an error in its place, so one bad file hides no other.
    pub fn all(&self) -> Result<Vec<Result<ClaimRecord, RecordError>>, RecordError> {
        self.dir.remove_stale_temps()?;
        let mut out = Vec::new();
        for name in self.dir.names()? {
            let Some(uid) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match self.read(uid) {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    /// The prepared device a pod was given: among the claims reserved for pod `pod_uid`, the
    /// devices whose pool is `resource` (a NAD's `resourceName`) or whose claim is named
    /// `claim`; with neither, any device of the pod. In claim then device order.
    pub fn devices_for_pod(
        &self,
        pod_uid: &str,
        resource: Option<&str>,
        claim: Option<&str>,
    ) -> Result<Vec<(ClaimRef, PreparedDevice)>, RecordError> {
        let mut out = Vec::new();
        for r in self.all()?.into_iter().flatten() {
            if r.phase != Phase::Prepared || !r.pods.iter().any(|p| p.uid == pod_uid) {
                continue;
            }
            if claim.is_some_and(|c| c != r.claim.name) {
                continue;
            }
            for d in &r.devices {
                if resource.is_none_or(|want| want == d.resource_name) {
                    out.push((r.claim.clone(), d.clone()));
                }
            }
        }
        Ok(out)
    }
}
