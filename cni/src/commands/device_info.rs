//! The device-information file Multus names in `runtimeConfig.CNIDeviceInfoFile`.
//!
//! Multus usually writes it itself (copying the device plugin's file); when it is missing, ADD
//! writes it and DEL removes it again. The path comes from the network config's runtime part, so
//! it is held to the place the device-information spec gives it: a plain file name in the
//! node's device-information folder's `cni/` folder (`/var/run/k8s.cni.cncf.io/devinfo/cni/`).
//! Anything else is refused (code 7) before the VF is touched, and nothing is written.

use super::Ctx;
use crate::spec::{CniError, ErrorCode};
use sriov::owned_dir::{Access, FileError, OwnedDir};
use sriov::state::VfRecord;
use sriov::vf_attach::VfLocation;
use std::path::{Path, PathBuf};

const FIELD: &str = "runtimeConfig.CNIDeviceInfoFile";

/// The folder CNI device-information files go in.
fn cni_dir(ctx: &Ctx) -> PathBuf {
    ctx.node.device_info_dir.join("cni")
}

/// A file name as Multus makes them (`<namespace>-<network>-<container>_<ifname>`): letters,
/// digits, `.`, `_`, `-`, not starting with a dot (our temporary files do).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Where ADD will write the file, checked.
pub(crate) struct Target {
    dir: OwnedDir,
    name: String,
    pub path: PathBuf,
    /// The file does not exist yet: ADD writes it (and the record says so, for DEL).
    pub ours: bool,
}

/// Checks `runtimeConfig.CNIDeviceInfoFile` (code 7 when it points anywhere else) and opens its
/// folder.
pub(crate) fn target(ctx: &Ctx) -> Result<Option<Target>, CniError> {
    let Some(path) = ctx.conf.device_info_file.as_deref() else {
        return Ok(None);
    };
    let dir = cni_dir(ctx);
    let name = path.file_name().and_then(|n| n.to_str());
    let shown = crate::logging::escaped(&path.to_string_lossy()).into_owned();
    let name = match name {
        Some(n) if path.parent() == Some(dir.as_path()) && valid_name(n) => n.to_string(),
        _ => {
            return Err(CniError::config(format!(
            "{FIELD}: {shown} is not a file name (letters, digits, '.', '_', '-') directly in {}",
            dir.display()
        )))
        }
    };
    let io = |e: FileError| CniError::new(ErrorCode::Io, format!("{FIELD}: {e}"));
    let folder = OwnedDir::open(&ctx.node.device_info_dir, Access::Shared, true)
        .and_then(|top| top.subdir("cni", Access::Shared, true))
        .map_err(io)?;
    let ours = !folder.has_file(&name).map_err(io)?;
    Ok(Some(Target {
        dir: folder,
        path: path.to_path_buf(),
        name,
        ours,
    }))
}

/// Writes the file (only when it did not exist at [`target`]).
pub(crate) fn write(target: &Target, loc: &VfLocation) -> Result<(), CniError> {
    if !target.ours {
        return Ok(());
    }
    let dev = sriov::devinfo::AllocatedDevice::plain(loc.pci, loc.pf_pci, loc.driver.clone());
    let text = serde_json::to_vec(&sriov::devinfo::file_json(&dev))
        .map_err(|e| CniError::new(ErrorCode::Io, format!("{FIELD}: {e}")))?;
    target
        .dir
        .write_atomic(&target.name, &text, 0o644)
        .map_err(|e| CniError::new(ErrorCode::Io, format!("{FIELD}: {e}")))
}

/// Removes the file the record says we wrote. A recorded path outside the folder (a record of an
/// older version, or a changed node setting) is left alone with a warning.
pub(crate) fn remove(ctx: &Ctx, record: &VfRecord) -> Result<(), FileError> {
    let recorded = record.device_info_file.as_deref().or(record
        .attached
        .as_ref()
        .and_then(|a| a.device_info_file.as_deref()));
    let Some(path) = recorded else {
        return Ok(());
    };
    let dir = cni_dir(ctx);
    let name = path.file_name().and_then(|n| n.to_str());
    match name {
        Some(n) if path.parent() == Some(Path::new(&dir)) && valid_name(n) => {
            match OwnedDir::open(&dir, Access::Shared, false) {
                // Also what a writer killed between its temporary file and the rename left.
                Ok(folder) => folder
                    .remove(n)
                    .and_then(|_| folder.remove_stale_temps_of(n))
                    .map(|_| ()),
                Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => Ok(()),
                Err(e) => Err(e),
            }
        }
        _ => {
            tracing::warn!(
                "VF {}: not removing device-information file {}: it is not in {}",
                record.pci,
                path.display(),
                dir.display()
            );
            Ok(())
        }
    }
}
