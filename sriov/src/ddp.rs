//! DDP (Dynamic Device Personalization) package names for the `ddpProfiles` selector.
//!
//! Upstream (pkg/netdevice/pciNetDevice.go `GetDDPProfiles`, pkg/utils/netlink_provider.go,
//! pkg/utils/ddp.go) asks devlink `dev info` for `fw.app.name` of the VF, then of its PF, and
//! falls back to Intel's `ddptool -l -a -j -s <pci>` (the `DDPInventory.DDPpackage.name` of its
//! JSON; exit code 8 means "no profile"), which its image ships. Its devlink path passes the PCI
//! address as the bus name and the key as the device name, so the kernel never finds the
//! device and in practice only ddptool answers.
//!
//! Here the devlink query is made as meant, in one dump for the whole node
//! ([`crate::netlink::Devlink::info_all`]): ice PFs report the running package as
//! `fw.app.name`; a VF without a devlink instance of its own takes its PF's. ddptool (i40e /
//! X710, whose driver reports no package through devlink) runs only when the node-local setting
//! names the binary (`--ddptool PATH` of the daemon): a privileged daemon does not run programs
//! it was not told to.
//!
//! The seam: [`DdpSource`] answers both questions; [`NodeDdp`] is the node's (devlink, ddptool),
//! tests and the simulated node answer with their own. Nothing here runs unless a pool selects
//! by `ddpProfiles` ([`crate::pools::uses_ddp_profiles`]).

use crate::discovery::Node;
use crate::names::PciAddress;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The devlink key of the running DDP package.
pub const FW_APP_NAME: &str = "fw.app.name";
/// ddptool's exit code when the device runs no profile.
const DDPTOOL_NO_PROFILE: i32 = 8;

/// Where DDP package names come from.
pub trait DdpSource {
    /// `fw.app.name` of every PCI devlink instance that reports one.
    fn devlink_profiles(&mut self) -> Result<BTreeMap<PciAddress, String>, String>;
    /// The fallback for a device devlink has no answer for (upstream: ddptool); `Ok(None)` when
    /// there is none, or no fallback.
    fn fallback(&mut self, pci: &PciAddress) -> Result<Option<String>, String>;
}

/// The node's own sources: devlink over generic netlink, and ddptool when configured.
pub struct NodeDdp {
    pub ddptool: Option<PathBuf>,
}

impl DdpSource for NodeDdp {
    fn devlink_profiles(&mut self) -> Result<BTreeMap<PciAddress, String>, String> {
        let mut devlink = crate::netlink::Devlink::open().map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for info in devlink.info_all().map_err(|e| e.to_string())? {
            if info.bus != "pci" {
                continue;
            }
            let (Ok(pci), Some(name)) = (PciAddress::parse(&info.dev), info.version(FW_APP_NAME))
            else {
                continue;
            };
            if !name.is_empty() {
                out.insert(pci, name.to_string());
            }
        }
        Ok(out)
    }

    fn fallback(&mut self, pci: &PciAddress) -> Result<Option<String>, String> {
        let Some(tool) = &self.ddptool else {
            return Ok(None);
        };
        let out = std::process::Command::new(tool)
            .args(["-l", "-a", "-j", "-s", &pci.to_string()])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", tool.display()))?;
        if out.status.code() == Some(DDPTOOL_NO_PROFILE) {
            return Ok(None);
        }
        if !out.status.success() {
            return Err(format!("{} for {pci}: {}", tool.display(), out.status));
        }
        ddptool_profile(&out.stdout)
    }
}

/// The package name in ddptool's JSON (`{"DDPInventory": {"DDPpackage": {"name": ...}}}`);
/// an empty name is none.
pub fn ddptool_profile(stdout: &[u8]) -> Result<Option<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("ddptool output: {e}"))?;
    Ok(v.pointer("/DDPInventory/DDPpackage/name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string))
}

/// Records every pool candidate's DDP package in `node.selector_attrs`: a device's own devlink
/// answer, else its PF's, else the fallback for the device. Failures become warnings (the
/// devices then have no profile, so no `ddpProfiles` selector takes them).
pub fn read_profiles(node: &mut Node, source: &mut dyn DdpSource) {
    let devlink = match source.devlink_profiles() {
        Ok(m) => m,
        Err(e) => {
            node.warnings.push(format!(
                "devlink dev info: {e}; DDP profiles from the fallback only"
            ));
            BTreeMap::new()
        }
    };
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    for pf in &node.devices {
        let devices: Vec<PciAddress> = if pf.vfs.is_empty() {
            vec![pf.pci]
        } else {
            pf.vfs.iter().map(|v| v.pci).collect()
        };
        for pci in devices {
            let profile = devlink
                .get(&pci)
                .or_else(|| devlink.get(&pf.pci))
                .cloned()
                .map(|p| Ok(Some(p)))
                .unwrap_or_else(|| source.fallback(&pci));
            match profile {
                Ok(Some(p)) => found.push((pci, p)),
                Ok(None) => {}
                Err(e) => warnings.push(format!("DDP profile of {pci}: {e}")),
            }
        }
    }
    node.warnings.extend(warnings);
    for (pci, p) in found {
        node.selector_attrs.entry(pci).or_default().ddp_profile = Some(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddptool_json() {
        // The example output in upstream's pkg/utils/ddp.go.
        let out = br#"{"DDPInventory": {"device": "1572", "address": "0000:02:00.0",
            "name": "enp2s0f0", "display": "Intel(R) Ethernet Converged Network Adapter X710-4",
            "DDPpackage": {"track_id": "80000008", "version": "1.0.3.0",
                           "name": "GTPv1-C/U IPv4/IPv6 payload"}}}"#;
        assert_eq!(
            ddptool_profile(out).unwrap().as_deref(),
            Some("GTPv1-C/U IPv4/IPv6 payload")
        );
        assert_eq!(
            ddptool_profile(br#"{"DDPInventory": {"DDPpackage": {"name": ""}}}"#).unwrap(),
            None
        );
        assert!(ddptool_profile(b"not json").is_err());
    }
}
