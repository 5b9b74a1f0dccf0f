//! STATUS: ready only when the state folder is usable and the node's VFs can be found.

use super::Ctx;
use crate::spec::{CniError, ErrorCode};
use serde_json::Value;

pub fn status(ctx: &Ctx) -> Result<Value, CniError> {
    ctx.state
        .check_usable()
        .map_err(|e| CniError::new(ErrorCode::NotAvailable, format!("stateDir: {e}")))?;
    let sysfs = &ctx.sysfs;
    let found = match ctx.conf.device_id {
        Some(pci) => sysfs.exists(&sysfs.pci_device(&pci).join("physfn")),
        None => sysfs
            .list(&sysfs.pci_devices_dir())
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .any(|d| sysfs.exists(&sysfs.pci_devices_dir().join(d).join("physfn"))),
    };
    if !found {
        return Err(CniError::new(
            ErrorCode::NotAvailable,
            format!(
                "sysfsRoot: no SR-IOV VF{} under {}",
                ctx.conf
                    .device_id
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default(),
                sysfs.pci_devices_dir().display()
            ),
        ));
    }
    Ok(Value::Null)
}
