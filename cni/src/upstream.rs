//! Attachments made by upstream sriov-cni (v2.x) before the node switched to this plugin.
//!
//! Pods that were running when the node switched still hold VFs that sriov-cni set up; their
//! DEL (and CHECK, GC) arrives here. sriov-cni keeps, under its data folder (node-local
//! `upstreamStateDir`, default `/var/lib/cni/sriov`):
//!
//! - `<CNI_CONTAINERID>-<CNI_IFNAME>`: the network config it was given, merged with its own
//!   fields: `Master` (the PF's netdev), `VFID`, `MAC`, `MTU` and `OrigVfState` (the VF as it
//!   was: `HostIFName`, `EffectiveMAC`, `AdminMAC`, `Vlan`, `VlanQoS`, `VlanProto` as the
//!   ethertype, `SpoofChk`, `Trust`, `MinTxRate`, `MaxTxRate`, `LinkState` 0/1/2, `MTU`). Written
//!   at the end of a successful ADD, removed by a successful DEL.
//! - `pci/<pci address>`: the pod's netns path while the VF is allocated.
//!
//! [`UpstreamAttachment::record`] turns such a cache into one of our records, so that the one
//! release path restores the VF; afterwards the two files go, as sriov-cni's own DEL would remove
//! them. Only what sriov-cni saved is restored: it keeps no altnames, promiscuity or link state of
//! the netdev, and leaves the VF down on the node, so those are left as they are.

use crate::spec::CniError;
use serde_json::{Map, Value};
use sriov::names::PciAddress;
use sriov::netlink::{MacAddr, VfLinkState, VlanProto};
use sriov::owned_dir::{Access, FileError, OwnedDir};
use sriov::state::{NetdevState, OriginalState, Owner, PfRef, PfSideState, VfRecord};
use std::path::{Path, PathBuf};

/// sriov-cni's data folder, when it exists on this node.
pub struct UpstreamState {
    dir: OwnedDir,
    /// `pci/`, when present.
    pci: Option<OwnedDir>,
}

/// One attachment sriov-cni made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAttachment {
    /// The cache file's name (`<container id>-<ifname>`).
    pub file: String,
    /// The network (`name`).
    pub network: String,
    pub device: PciAddress,
    /// The PF's netdev (`Master`).
    pub master: String,
    pub vf_id: u32,
    /// Whether the network config had an IPAM section.
    pub ipam: bool,
    pub orig: OrigVfState,
}

/// sriov-cni's `OrigVfState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrigVfState {
    /// `HostIFName`: empty for a DPDK VF.
    pub host_ifname: String,
    pub effective_mac: Option<MacAddr>,
    pub admin_mac: MacAddr,
    pub vlan: u16,
    pub qos: u8,
    pub vlan_proto: VlanProto,
    pub spoof_check: bool,
    pub trust: bool,
    pub min_tx_rate: u32,
    pub max_tx_rate: u32,
    pub link_state: VfLinkState,
    /// 0: not captured.
    pub mtu: u32,
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn uint(obj: &Map<String, Value>, key: &str, max: u64) -> Result<u64, String> {
    match field(obj, key) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{key}: {v} is not an integer from 0 to {max}")),
    }
}

fn mac(obj: &Map<String, Value>, key: &str) -> Result<Option<MacAddr>, String> {
    match field(obj, key).and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<MacAddr>()
            .map(Some)
            .map_err(|_| format!("{key}: {s:?} is not a MAC address")),
    }
}

impl OrigVfState {
    fn parse(obj: &Map<String, Value>) -> Result<OrigVfState, String> {
        // Go's encoding/json leaves absent fields zero: so do we.
        let proto = match uint(obj, "VlanProto", 0xffff)? {
            0 | 0x8100 => VlanProto::Dot1Q,
            0x88a8 => VlanProto::Dot1Ad,
            other => return Err(format!("VlanProto: unknown ethertype {other:#x}")),
        };
        let link_state = match uint(obj, "LinkState", 2)? {
            0 => VfLinkState::Auto,
            1 => VfLinkState::Enable,
            _ => VfLinkState::Disable,
        };
        let host_ifname = field(obj, "HostIFName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !host_ifname.is_empty() {
            sriov::names::validate_ifname(&host_ifname).map_err(|e| format!("HostIFName: {e}"))?;
        }
        Ok(OrigVfState {
            host_ifname,
            effective_mac: mac(obj, "EffectiveMAC")?,
            admin_mac: mac(obj, "AdminMAC")?.unwrap_or_default(),
            vlan: uint(obj, "Vlan", 4094)? as u16,
            qos: uint(obj, "VlanQoS", 7)? as u8,
            vlan_proto: proto,
            spoof_check: field(obj, "SpoofChk")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            trust: field(obj, "Trust")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            min_tx_rate: uint(obj, "MinTxRate", u32::MAX as u64)? as u32,
            max_tx_rate: uint(obj, "MaxTxRate", u32::MAX as u64)? as u32,
            link_state,
            mtu: uint(obj, "MTU", 65535)? as u32,
        })
    }
}

impl UpstreamAttachment {
    /// Parses a cache file's content.
    pub fn parse(file: &str, text: &[u8]) -> Result<UpstreamAttachment, String> {
        let value: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let obj = value.as_object().ok_or("not a JSON object")?;
        let device = field(obj, "deviceID")
            .and_then(Value::as_str)
            .ok_or("deviceID: missing")
            .and_then(|s| PciAddress::parse(s).map_err(|_| "deviceID: not a PCI address"))?;
        let master = field(obj, "Master")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !master.is_empty() {
            sriov::names::validate_ifname(&master).map_err(|e| format!("Master: {e}"))?;
        }
        let orig = match field(obj, "OrigVfState") {
            Some(Value::Object(o)) => {
                OrigVfState::parse(o).map_err(|e| format!("OrigVfState.{e}"))?
            }
            _ => return Err("OrigVfState: missing".into()),
        };
        Ok(UpstreamAttachment {
            file: file.to_string(),
            network: field(obj, "name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            device,
            master,
            vf_id: uint(obj, "VFID", u32::MAX as u64)? as u32,
            ipam: field(obj, "ipam")
                .and_then(Value::as_object)
                .is_some_and(|i| i.get("type").and_then(Value::as_str).is_some()),
            orig,
        })
    }

    /// Our record of this attachment, for the release path. `pf_pci` and `pf_ifindex` are read
    /// from the node now; `driver` is the VF's current driver (sriov-cni does not store its DPDK
    /// mode: it is recognised from the driver).
    pub fn record(
        &self,
        owner: Owner,
        pf_pci: PciAddress,
        pf_ifindex: Option<u32>,
        pf_driver: Option<String>,
        driver: Option<String>,
    ) -> VfRecord {
        let o = &self.orig;
        let netdev = (!o.host_ifname.is_empty()).then(|| NetdevState {
            name: o.host_ifname.clone(),
            // Unknown to sriov-cni: the VF is found by its PCI parent instead.
            ifindex: 0,
            mac: o.effective_mac,
            mtu: o.mtu,
            // sriov-cni's DEL leaves the VF down on the node.
            up: false,
            promisc: false,
            altnames: Vec::new(),
        });
        VfRecord {
            format: sriov::state::RECORD_FORMAT,
            pci: self.device,
            owner,
            original: OriginalState {
                pf: PfRef {
                    pci: pf_pci,
                    name: (!self.master.is_empty()).then(|| self.master.clone()),
                    ifindex: pf_ifindex,
                    driver: pf_driver,
                },
                vf_index: self.vf_id,
                driver,
                netdev,
                pf_side: Some(PfSideState {
                    mac: o.admin_mac,
                    vlan: o.vlan,
                    qos: o.qos,
                    vlan_proto: o.vlan_proto,
                    spoof_check: Some(o.spoof_check),
                    trust: Some(o.trust),
                    min_tx_rate: o.min_tx_rate,
                    max_tx_rate: o.max_tx_rate,
                    link_state: Some(o.link_state),
                }),
            },
            ipam: self.ipam,
            attached: None,
            mtu_lock: None,
            orphaned: false,
            device_info_file: None,
            assigned_mac: None,
            upstream: true,
        }
    }
}

fn io(e: FileError) -> CniError {
    CniError::new(crate::spec::ErrorCode::Io, format!("upstreamStateDir: {e}"))
}

impl UpstreamState {
    /// sriov-cni's data folder at `dir`, if there is one.
    pub fn open(dir: &Path) -> Result<Option<UpstreamState>, CniError> {
        let top = match OwnedDir::open(dir, Access::Shared, false) {
            Ok(d) => d,
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let pci = match top.subdir("pci", Access::Shared, false) {
            Ok(d) => Some(d),
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => None,
            Err(e) => return Err(io(e)),
        };
        Ok(Some(UpstreamState { dir: top, pci }))
    }

    /// The cache of attachment (`container_id`, `ifname`), if sriov-cni made it.
    pub fn attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<UpstreamAttachment>, CniError> {
        self.load(&format!("{container_id}-{ifname}"))
    }

    fn load(&self, file: &str) -> Result<Option<UpstreamAttachment>, CniError> {
        let Some(text) = self.dir.read(file).map_err(io)? else {
            return Ok(None);
        };
        UpstreamAttachment::parse(file, &text)
            .map(Some)
            .map_err(|e| {
                CniError::new(
                    crate::spec::ErrorCode::Io,
                    format!(
                        "upstreamStateDir: sriov-cni's record {}/{file} is unreadable: {e}",
                        self.dir.path().display()
                    ),
                )
            })
    }

    /// Every attachment sriov-cni left (GC); unreadable caches are skipped with a warning.
    pub fn attachments(&self) -> Result<Vec<UpstreamAttachment>, CniError> {
        let mut out = Vec::new();
        for name in self.dir.names().map_err(io)? {
            if name == "pci" || name.starts_with('.') {
                continue;
            }
            match self.load(&name) {
                Ok(Some(a)) => out.push(a),
                Ok(None) => {}
                Err(e) => tracing::warn!("GC: {e}"),
            }
        }
        Ok(out)
    }

    /// The netns path sriov-cni recorded for the VF, if it holds it.
    pub fn allocation(&self, pci: &PciAddress) -> Result<Option<PathBuf>, CniError> {
        let Some(dir) = &self.pci else {
            return Ok(None);
        };
        Ok(dir
            .read(&pci.to_string())
            .map_err(io)?
            .map(|t| PathBuf::from(String::from_utf8_lossy(&t).trim())))
    }

    /// Removes the attachment's cache and the VF's allocation file, as sriov-cni's DEL does.
    pub fn remove(&self, attachment: &UpstreamAttachment) -> Result<(), FileError> {
        if let Some(dir) = &self.pci {
            dir.remove(&attachment.device.to_string())?;
        }
        self.dir.remove(&attachment.file).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache as sriov-cni v2.10 writes it (its NetConf marshalled: the network config's keys
    /// merged with the Go fields that have no json tag).
    pub(crate) fn cache() -> String {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "sriov-net", "type": "sriov",
            "ipam": {"type": "host-local", "subnet": "10.56.217.0/24"},
            "deviceID": "0000:3b:02.1", "vlan": 100, "vlanQoS": 0, "vlanProto": "802.1q",
            "spoofchk": "off", "trust": "on",
            "OrigVfState": {"HostIFName": "ens1f0v1", "SpoofChk": true, "Trust": false,
                "AdminMAC": "00:00:00:00:00:00", "EffectiveMAC": "02:11:22:33:44:55",
                "Vlan": 0, "VlanQoS": 0, "VlanProto": 33024, "MinTxRate": 0, "MaxTxRate": 0,
                "LinkState": 0, "MTU": 1500},
            "Master": "ens1f0", "MAC": "", "MTU": null, "VFID": 1,
            "runtimeConfig": {}
        })
        .to_string()
    }

    #[test]
    fn parses_sriov_cnis_cache() {
        let a = UpstreamAttachment::parse("c1-net1", cache().as_bytes()).unwrap();
        assert_eq!(a.device.to_string(), "0000:3b:02.1");
        assert_eq!((a.master.as_str(), a.vf_id, a.ipam), ("ens1f0", 1, true));
        assert_eq!(a.network, "sriov-net");
        assert_eq!(a.orig.host_ifname, "ens1f0v1");
        assert_eq!(
            a.orig.effective_mac.unwrap().to_string(),
            "02:11:22:33:44:55"
        );
        assert!(a.orig.admin_mac.is_zero());
        assert_eq!(a.orig.vlan_proto, VlanProto::Dot1Q);
        assert_eq!((a.orig.spoof_check, a.orig.trust), (true, false));
        assert_eq!(a.orig.mtu, 1500);
    }

    #[test]
    fn a_dpdk_cache_and_bad_ones() {
        let mut v: Value = serde_json::from_str(&cache()).unwrap();
        v["OrigVfState"]["HostIFName"] = "".into();
        v["OrigVfState"]["VlanProto"] = 34984.into();
        let a = UpstreamAttachment::parse("c-n", v.to_string().as_bytes()).unwrap();
        assert!(a.orig.host_ifname.is_empty());
        assert_eq!(a.orig.vlan_proto, VlanProto::Dot1Ad);
        let r = a.record(
            Owner {
                network: a.network.clone(),
                container_id: "c".into(),
                ifname: "n".into(),
                netns: None,
            },
            PciAddress::parse("0000:3b:00.0").unwrap(),
            Some(4),
            None,
            Some("vfio-pci".into()),
        );
        assert!(
            r.original.netdev.is_none(),
            "a DPDK VF has no netdev to restore"
        );
        for (edit, want) in [
            (serde_json::json!({"deviceID": "../x"}), "deviceID"),
            (
                serde_json::json!({"OrigVfState": null}),
                "OrigVfState: missing",
            ),
            (serde_json::json!({"Master": "a/b"}), "Master"),
        ] {
            let mut v: Value = serde_json::from_str(&cache()).unwrap();
            for (k, x) in edit.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = UpstreamAttachment::parse("c-n", v.to_string().as_bytes()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let mut v: Value = serde_json::from_str(&cache()).unwrap();
        v["OrigVfState"]["HostIFName"] = "../../etc".into();
        assert!(UpstreamAttachment::parse("c-n", v.to_string().as_bytes()).is_err());
    }
}
