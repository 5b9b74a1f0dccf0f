//! The network configuration the runtime passes on stdin: every sriov-cni field with its
//! upstream meaning, plus ours (`mtu`, `mtuLock`, `resourceName`).
//!
//! Fields are read one by one from the JSON value so that each mistake names its field; fields
//! we do not know are left alone (runtimes and Multus add their own). The config is a tenant's:
//! host paths and folders are node-local settings ([`crate::node_config`]) and refused here.

use crate::spec::{CniError, CniVersion, ErrorCode};
use serde_json::{Map, Value};
use sriov::names::PciAddress;
use std::path::PathBuf;

pub use sriov::netlink::{MacAddr, VfLinkState as LinkState, VlanProto};

/// Multicast or all-zero MACs cannot be a VF's address.
pub fn is_unicast(mac: &MacAddr) -> bool {
    mac.0[0] & 1 == 0 && !mac.is_zero()
}

/// The parsed network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub cni_version_str: String,
    pub name: String,
    /// The VF, from `deviceID`, `runtimeConfig.deviceID` or top-level `pciBusID`.
    pub device_id: Option<PciAddress>,
    /// A scalable function instead of a VF: `deviceID` (or `runtimeConfig.deviceID`) names an
    /// auxiliary device (`mlx5_core.sf.4`, an auxNetDevice pool's device ID).
    pub aux_device: Option<String>,
    /// `None` = leave the VLAN alone; `Some(0)` clears it.
    pub vlan: Option<u16>,
    pub vlan_qos: Option<u8>,
    pub vlan_proto: Option<VlanProto>,
    /// From `mac` or `runtimeConfig.mac` (CNI_ARGS `MAC=` is applied by the caller).
    pub mac: Option<MacAddr>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<LinkState>,
    pub min_tx_rate: Option<u32>,
    pub max_tx_rate: Option<u32>,
    pub mtu: Option<u32>,
    pub mtu_lock: bool,
    /// The IPAM section, passed whole to the IPAM plugin's stdin (with the rest of the config).
    pub ipam: Option<Map<String, Value>>,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    /// A pool to take a VF from when no deviceID is given.
    pub resource_name: Option<String>,
    /// `claimName` (ours): the pod's DRA ResourceClaim whose prepared VF to take.
    pub claim_name: Option<String>,
    /// `runtimeConfig.CNIDeviceInfoFile` (Multus): checked against the node's device-info
    /// folder before ADD writes it.
    pub device_info_file: Option<PathBuf>,
    /// `prevResult` (CHECK, and DEL from some runtimes).
    pub prev_result: Option<Value>,
    /// The whole config as received, for IPAM delegation.
    pub raw: Map<String, Value>,
}

fn bad(field: &str, msg: impl std::fmt::Display) -> CniError {
    CniError::config(format!("{field}: {msg}"))
}

fn opt_str(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(&format!("{at}{key}"), "must be a string")),
    }
}

fn opt_uint(obj: &Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(bad(
                key,
                format!("must be an integer from 0 to {max}, got {v}"),
            )),
        },
    }
}

fn on_off(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match opt_str(obj, key, "")?.as_deref() {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(other) => Err(bad(
            key,
            format!("must be \"on\" or \"off\", got {other:?}"),
        )),
    }
}

/// Parses a MAC the way every source spells it (`mac`, `runtimeConfig.mac`, CNI_ARGS `MAC=`).
pub fn parse_mac(field: &str, s: &str) -> Result<MacAddr, CniError> {
    match s.parse::<MacAddr>() {
        Ok(m) if is_unicast(&m) => Ok(m),
        Ok(_) => Err(bad(field, format!("{s} is not a unicast MAC address"))),
        Err(_) => Err(bad(
            field,
            format!("{s:?} is not a MAC address such as 02:00:00:00:00:01"),
        )),
    }
}

fn parse_pci(field: &str, s: &str) -> Result<PciAddress, CniError> {
    PciAddress::parse(s).map_err(|e| bad(field, e))
}

/// A `deviceID`: a VF's PCI address, or an auxiliary device's name (validated: it reaches
/// sysfs paths and the state folder).
fn parse_device(
    field: &str,
    s: &str,
    pci: &mut Option<PciAddress>,
    aux: &mut Option<String>,
) -> Result<(), CniError> {
    match PciAddress::parse(s) {
        Ok(p) => *pci = Some(p),
        Err(_) if sriov::aux_device::validate_name(s).is_ok() => *aux = Some(s.to_string()),
        Err(e) => {
            return Err(bad(
                field,
                format!("{e}; nor is it an auxiliary device name such as \"mlx5_core.sf.4\""),
            ))
        }
    }
    Ok(())
}

/// The keys that set a VF through its PF: an auxiliary device (a scalable function) has no
/// VF entry on a PF, so they cannot apply and are refused rather than ignored.
const PF_SIDE_KEYS: &[&str] = &[
    "vlan",
    "vlanQoS",
    "vlanProto",
    "spoofchk",
    "trust",
    "link_state",
    "min_tx_rate",
    "max_tx_rate",
];

impl NetConf {
    /// Parses stdin. JSON errors are decode failures (6); wrong values are invalid config (7).
    /// A missing `cniVersion` is 0.1.0.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        NetConf::parse_for(stdin, false)
    }

    /// Like [`NetConf::parse`]; with `any_version` (DEL), a version we do not speak is read as the
    /// newest: a DEL must not fail on it (the runtime would retry the sandbox's teardown forever)
    /// and prints nothing on success.
    pub fn parse_for(stdin: &[u8], any_version: bool) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                format!("network config is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                ErrorCode::Decode,
                "network config must be a JSON object",
            ));
        };
        crate::node_config::refuse_node_keys(&obj)?;
        let version_str = opt_str(&obj, "cniVersion", "")?
            .unwrap_or_else(|| crate::spec::IMPLIED_VERSION.to_string());
        let cni_version = match CniVersion::parse(&version_str) {
            Err(_) if any_version => CniVersion::V110,
            other => other?,
        };
        let name = opt_str(&obj, "name", "")?.unwrap_or_default();
        let empty = Map::new();
        let rc = match obj.get("runtimeConfig") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(o)) => o,
            Some(_) => return Err(bad("runtimeConfig", "must be an object")),
        };

        // Multus puts the VF in runtimeConfig.deviceID (capability) and/or deviceID / pciBusID.
        let (mut device_id, mut aux_device) = (None, None);
        match (
            opt_str(rc, "deviceID", "runtimeConfig.")?,
            opt_str(&obj, "deviceID", "")?,
            opt_str(&obj, "pciBusID", "")?,
        ) {
            (Some(d), _, _) => parse_device(
                "runtimeConfig.deviceID",
                &d,
                &mut device_id,
                &mut aux_device,
            )?,
            (None, Some(d), _) => parse_device("deviceID", &d, &mut device_id, &mut aux_device)?,
            (None, None, Some(d)) => device_id = Some(parse_pci("pciBusID", &d)?),
            (None, None, None) => {}
        };

        let vlan = opt_uint(&obj, "vlan", 4094)?.map(|v| v as u16);
        let vlan_qos = opt_uint(&obj, "vlanQoS", 7)?.map(|v| v as u8);
        let vlan_proto =
            match opt_str(&obj, "vlanProto", "")? {
                None => None,
                Some(p) => Some(p.parse::<VlanProto>().map_err(|_| {
                    bad("vlanProto", format!("must be 802.1q or 802.1ad, got {p:?}"))
                })?),
            };
        if vlan.is_none() && (vlan_qos.is_some_and(|q| q != 0) || vlan_proto.is_some()) {
            return Err(bad("vlanQoS/vlanProto", "need vlan to be set"));
        }
        if vlan == Some(0)
            && (vlan_qos.is_some_and(|q| q != 0) || vlan_proto == Some(VlanProto::Dot1Ad))
        {
            return Err(bad(
                "vlan",
                "0 clears the VLAN: vlanQoS and 802.1ad need a VLAN id",
            ));
        }

        let mac = match (
            opt_str(rc, "mac", "runtimeConfig.")?,
            opt_str(&obj, "mac", "")?,
        ) {
            (Some(m), _) => Some(parse_mac("runtimeConfig.mac", &m)?),
            (None, Some(m)) => Some(parse_mac("mac", &m)?),
            (None, None) => None,
        };
        let link_state = match opt_str(&obj, "link_state", "")?.as_deref() {
            None => None,
            Some("auto") => Some(LinkState::Auto),
            Some("enable") => Some(LinkState::Enable),
            Some("disable") => Some(LinkState::Disable),
            Some(other) => {
                return Err(bad(
                    "link_state",
                    format!("must be auto, enable or disable, got {other:?}"),
                ))
            }
        };
        let min_tx_rate = opt_uint(&obj, "min_tx_rate", u32::MAX as u64)?.map(|v| v as u32);
        let max_tx_rate = opt_uint(&obj, "max_tx_rate", u32::MAX as u64)?.map(|v| v as u32);
        if let (Some(min), Some(max)) = (min_tx_rate, max_tx_rate) {
            if max != 0 && min > max {
                return Err(bad(
                    "min_tx_rate",
                    format!("{min} is above max_tx_rate {max}"),
                ));
            }
        }
        let mtu = opt_uint(&obj, "mtu", 65535)?.map(|v| v as u32);
        if mtu.is_some_and(|m| m < 68) {
            return Err(bad("mtu", "must be at least 68"));
        }
        let mtu_lock = match obj.get("mtuLock") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("mtuLock", "must be true or false")),
        };
        if mtu_lock && mtu.is_none() {
            return Err(bad("mtuLock", "needs mtu"));
        }
        let ipam = match obj.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) if o.is_empty() => None,
            Some(Value::Object(o)) => {
                match o.get("type").and_then(Value::as_str) {
                    Some(t) if sriov::names::is_plain_file_name(t) => {}
                    _ => {
                        return Err(bad(
                            "ipam.type",
                            "must name an IPAM plugin (a plain file name)",
                        ))
                    }
                }
                Some(o.clone())
            }
            Some(_) => return Err(bad("ipam", "must be an object")),
        };
        if let Some(aux) = &aux_device {
            for key in PF_SIDE_KEYS {
                if obj.get(*key).is_some_and(|v| !v.is_null()) {
                    return Err(bad(
                        key,
                        format!(
                            "{aux} is an auxiliary device (a scalable function): it has no \
                             PF-side VF settings"
                        ),
                    ));
                }
            }
            if mtu_lock {
                return Err(bad(
                    "mtuLock",
                    format!("not supported for the auxiliary device {aux}"),
                ));
            }
        }
        let resource_name = opt_str(&obj, "resourceName", "")?;
        let claim_name = opt_str(&obj, "claimName", "")?;
        let device_info_file =
            opt_str(rc, "CNIDeviceInfoFile", "runtimeConfig.")?.map(PathBuf::from);
        Ok(NetConf {
            cni_version,
            cni_version_str: version_str,
            name,
            device_id,
            aux_device,
            vlan,
            vlan_qos,
            vlan_proto,
            mac,
            spoofchk: on_off(&obj, "spoofchk")?,
            trust: on_off(&obj, "trust")?,
            link_state,
            min_tx_rate,
            max_tx_rate,
            mtu,
            mtu_lock,
            ipam,
            log_level: opt_str(&obj, "logLevel", "")?,
            log_file: opt_str(&obj, "logFile", "")?.map(PathBuf::from),
            resource_name,
            claim_name,
            device_info_file,
            prev_result: obj.get("prevResult").cloned().filter(|v| !v.is_null()),
            raw: obj,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn upstream_nad_fields() {
        let c = parse(
            r#"{"cniVersion":"0.3.1","name":"sriov-net","type":"sriov","deviceID":"0000:3b:02.1",
                "vlan":100,"vlanQoS":3,"vlanProto":"802.1Q","mac":"02:00:00:00:00:AA","spoofchk":"off",
                "trust":"on","link_state":"enable","min_tx_rate":100,"max_tx_rate":1000,
                "ipam":{"type":"host-local","subnet":"10.56.217.0/24"},"logLevel":"debug","logFile":"/tmp/x.log"}"#,
        )
        .unwrap();
        assert_eq!(c.device_id.unwrap().to_string(), "0000:3b:02.1");
        assert_eq!(
            (c.vlan, c.vlan_qos, c.vlan_proto),
            (Some(100), Some(3), Some(VlanProto::Dot1Q))
        );
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:aa");
        assert_eq!((c.spoofchk, c.trust), (Some(false), Some(true)));
        assert_eq!(c.link_state, Some(LinkState::Enable));
        assert_eq!((c.min_tx_rate, c.max_tx_rate), (Some(100), Some(1000)));
        assert!(c.ipam.is_some());
        assert_eq!(c.log_file, Some(PathBuf::from("/tmp/x.log")));
    }

    #[test]
    fn a_missing_version_is_0_1_0_and_del_takes_any() {
        assert_eq!(
            parse(r#"{"name":"x"}"#).unwrap().cni_version,
            CniVersion::V010
        );
        assert_eq!(
            parse(r#"{"cniVersion":"0.2.0"}"#).unwrap().cni_version,
            CniVersion::V020
        );
        assert!(parse(r#"{"cniVersion":"9.9.9"}"#).is_err());
        let c = NetConf::parse_for(br#"{"cniVersion":"9.9.9"}"#, true).unwrap();
        assert_eq!(c.cni_version, CniVersion::V110);
    }

    #[test]
    fn runtime_config_wins_and_pci_bus_id() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","deviceID":"0000:3b:02.1","runtimeConfig":{"deviceID":"0000:3b:02.2","mac":"02:00:00:00:00:01"},"mac":"02:00:00:00:00:02"}"#,
        )
        .unwrap();
        assert_eq!(c.device_id.unwrap().to_string(), "0000:3b:02.2");
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:01");
        let c = parse(r#"{"cniVersion":"1.0.0","pciBusID":"0000:3b:02.3"}"#).unwrap();
        assert_eq!(c.device_id.unwrap().to_string(), "0000:3b:02.3");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                r#"{"cniVersion":"1.0.0","deviceID":"../../x"}"#,
                ErrorCode::InvalidConfig,
                "deviceID: invalid PCI address",
            ),
            (
                r#"{"cniVersion":"9.9.9"}"#,
                ErrorCode::IncompatibleVersion,
                "9.9.9",
            ),
            (
                r#"{"cniVersion":"1.0.0","vlan":4095}"#,
                ErrorCode::InvalidConfig,
                "vlan: must be an integer from 0 to 4094",
            ),
            (
                r#"{"cniVersion":"1.0.0","vlan":"10"}"#,
                ErrorCode::InvalidConfig,
                "vlan: must be an integer",
            ),
            (
                r#"{"cniVersion":"1.0.0","vlanQoS":2}"#,
                ErrorCode::InvalidConfig,
                "need vlan",
            ),
            (
                r#"{"cniVersion":"1.0.0","vlan":5,"vlanProto":"qinq"}"#,
                ErrorCode::InvalidConfig,
                "vlanProto",
            ),
            (
                r#"{"cniVersion":"1.0.0","mac":"zz"}"#,
                ErrorCode::InvalidConfig,
                "mac: \"zz\" is not a MAC",
            ),
            (
                r#"{"cniVersion":"1.0.0","mac":"01:00:5e:00:00:01"}"#,
                ErrorCode::InvalidConfig,
                "not a unicast",
            ),
            (
                r#"{"cniVersion":"1.0.0","spoofchk":"yes"}"#,
                ErrorCode::InvalidConfig,
                "spoofchk: must be \"on\" or \"off\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","link_state":"up"}"#,
                ErrorCode::InvalidConfig,
                "link_state",
            ),
            (
                r#"{"cniVersion":"1.0.0","min_tx_rate":10,"max_tx_rate":5}"#,
                ErrorCode::InvalidConfig,
                "min_tx_rate: 10 is above",
            ),
            (
                r#"{"cniVersion":"1.0.0","mtuLock":true}"#,
                ErrorCode::InvalidConfig,
                "mtuLock: needs mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","mtu":20}"#,
                ErrorCode::InvalidConfig,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","ipam":{"type":"../bin/sh"}}"#,
                ErrorCode::InvalidConfig,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","stateDir":"/tmp"}"#,
                ErrorCode::InvalidConfig,
                "stateDir: a node-local setting",
            ),
            (
                r#"{"cniVersion":"1.0.0","sysfsRoot":"/tmp/crafted"}"#,
                ErrorCode::InvalidConfig,
                "sysfsRoot: a node-local setting",
            ),
            (r#"{"cniVersion":"#, ErrorCode::Decode, "not valid JSON"),
            (r#"[1]"#, ErrorCode::Decode, "must be a JSON object"),
        ];
        for (text, code, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, code, "{text}: {e}");
            assert!(
                e.msg.contains(want),
                "{text}\n got:  {}\n want: {want}",
                e.msg
            );
        }
    }
}
