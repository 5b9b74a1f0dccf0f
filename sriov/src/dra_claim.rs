//! A DRA ResourceClaim's allocation as the node sees it, and the opaque `VfConfig` it carries;
//! values only, no I/O.
//!
//! The scheduler writes `status.allocation.devices`: `results[]` ({request, driver, pool,
//! device}) and `config[]` ({source: FromClass | FromClaim, requests, opaque: {driver,
//! parameters}}). For each of our results, the `VfConfig`s that apply (our driver, and the
//! result's request listed or no request listed) are merged field by field, class configs
//! first, claim configs over them, in their order: a field a later config leaves out keeps the
//! earlier value, so nothing is dropped (dra-driver-sriov's merge drops `addVhostMount` and
//! `netAttachDefNamespace`).
//!
//! `VfConfig` has dra-driver-sriov's fields (`driver`: "" or `vfio-pci`, `ifName`,
//! `netAttachDefName`, `netAttachDefNamespace`, `addVhostMount`) plus ours, named as in
//! sriov-cni NADs (`vlan`, `vlanQoS`, `mac`, `mtu`, `mtuLock`, `spoofchk`, `trust`). Its
//! `apiVersion` is dra-driver-sriov's (`sriovnetwork.k8snetworkplumbingwg.io/v1alpha1`) or
//! `<our driver>/v1alpha1`; an unknown field is an error naming it (as dra-driver-sriov's strict
//! decoder), and every value is checked, the error naming the config and the field.

use crate::names;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// dra-driver-sriov's API group for `VfConfig`.
pub const UPSTREAM_CONFIG_GROUP: &str = "sriovnetwork.k8snetworkplumbingwg.io";
pub const CONFIG_VERSION: &str = "v1alpha1";
pub const CONFIG_KIND: &str = "VfConfig";
/// The longest NetworkAttachmentDefinition `spec.config` a `netAttachDefName` brings in (the
/// sidecar refuses to hand over more, the daemon to take more).
pub const MAX_NAD_CONFIG: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("claim {claim}: {what}")]
    Malformed { claim: String, what: String },
    #[error("claim {claim}: {config}: field {field:?}: {why}")]
    Config {
        claim: String,
        /// `config[2] (FromClaim)`
        config: String,
        field: String,
        why: String,
    },
}

/// A claim as kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ClaimRef {
    /// `namespace/name`
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A claim UID becomes a file name: only what UIDs are made of (`[a-z0-9-]`, 1-64).
    pub fn check_uid(&self) -> Result<(), ClaimError> {
        let ok = !self.uid.is_empty()
            && self.uid.len() <= 64
            && self
                .uid
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(ClaimError::Malformed {
                claim: self.label(),
                what: format!("uid {:?} is not a Kubernetes UID", self.uid),
            })
        }
    }
}

/// A `VfConfig`, every field optional so that merging keeps what a later config leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VfConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// "" (keep the kernel driver) or `vfio-pci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_attach_def_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_attach_def_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_vhost_mount: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u32>,
    #[serde(default, rename = "vlanQoS", skip_serializing_if = "Option::is_none")]
    pub vlan_qos: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_lock: Option<bool>,
    /// `on` | `off`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoofchk: Option<String>,
    /// `on` | `off`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// The IPAM section of the CNI config the NRI attach runs (`{"type": "host-local", ...}`,
    /// as in a NAD): the pod interface's addresses and routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
}

macro_rules! merge_fields {
    ($base:ident, $over:ident, $($f:ident),*) => {
        $( if $over.$f.is_some() { $base.$f = $over.$f.clone(); } )*
    };
}

impl VfConfig {
    /// `over`'s fields replace ours where it has them; ours stay where it has none.
    pub fn merge(&mut self, over: &VfConfig) {
        merge_fields!(
            self,
            over,
            api_version,
            kind,
            driver,
            if_name,
            net_attach_def_name,
            net_attach_def_namespace,
            add_vhost_mount,
            vlan,
            vlan_qos,
            mac,
            mtu,
            mtu_lock,
            spoofchk,
            trust,
            ipam
        );
    }

    pub fn wants_vfio(&self) -> bool {
        self.driver.as_deref() == Some("vfio-pci")
    }

    /// Parses one config's `parameters`; `driver` is ours (its name is an accepted group).
    pub fn parse(
        parameters: &Value,
        driver: &str,
        claim: &str,
        at: &str,
    ) -> Result<VfConfig, ClaimError> {
        let err = |field: &str, why: String| ClaimError::Config {
            claim: claim.to_string(),
            config: at.to_string(),
            field: field.to_string(),
            why,
        };
        let c: VfConfig = serde_json::from_value(parameters.clone()).map_err(|e| {
            let text = e.to_string();
            // serde names the field in "unknown field `x`" and "invalid type ... for `x`"-less
            // messages: keep its words, they name the key.
            let field = text.split('`').nth(1).unwrap_or("parameters").to_string();
            err(&field, text)
        })?;
        let group_ok = |v: &str| {
            v.split_once('/').is_some_and(|(g, ver)| {
                (g == UPSTREAM_CONFIG_GROUP || g == driver) && ver == CONFIG_VERSION
            })
        };
        match c.api_version.as_deref() {
            Some(v) if group_ok(v) => {}
            Some(v) => {
                return Err(err(
                    "apiVersion",
                    format!("{v:?} is not {UPSTREAM_CONFIG_GROUP}/{CONFIG_VERSION} or {driver}/{CONFIG_VERSION}"),
                ))
            }
            None => return Err(err("apiVersion", "missing".into())),
        }
        if c.kind.as_deref() != Some(CONFIG_KIND) {
            return Err(err("kind", format!("{:?} is not {CONFIG_KIND}", c.kind)));
        }
        c.check().map_err(|(field, why)| err(field, why))?;
        Ok(c)
    }

    /// Every value in range; returns the field and why not.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(d) = &self.driver {
            if !d.is_empty() && d != "vfio-pci" {
                return Err((
                    "driver",
                    format!("{d:?}: only \"\" (the kernel driver) or \"vfio-pci\""),
                ));
            }
        }
        if let Some(n) = &self.if_name {
            names::validate_ifname(n).map_err(|e| ("ifName", e.to_string()))?;
        }
        if let Some(n) = &self.net_attach_def_name {
            if !is_dns_subdomain(n) {
                return Err(("netAttachDefName", format!("{n:?} is not a DNS subdomain")));
            }
        }
        if let Some(n) = &self.net_attach_def_namespace {
            if !is_dns_label(n) {
                return Err(("netAttachDefNamespace", format!("{n:?} is not a DNS label")));
            }
        }
        if let Some(v) = self.vlan {
            if v > 4094 {
                return Err(("vlan", format!("{v} is out of range 0-4094")));
            }
        }
        if let Some(q) = self.vlan_qos {
            if q > 7 {
                return Err(("vlanQoS", format!("{q} is out of range 0-7")));
            }
            if self.vlan.is_none_or(|v| v == 0) {
                return Err(("vlanQoS", "needs a non-zero vlan".into()));
            }
        }
        if let Some(m) = &self.mac {
            let parts: Vec<&str> = m.split(':').collect();
            let ok = parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err((
                    "mac",
                    format!("{m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                ));
            }
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(("mtu", format!("{mtu} is out of range 68-65535")));
            }
        }
        if self.mtu_lock == Some(true) && self.mtu.is_none() {
            return Err(("mtuLock", "needs mtu".into()));
        }
        if let Some(ipam) = &self.ipam {
            check_ipam(ipam).map_err(|why| ("ipam", why))?;
        }
        for (field, v) in [("spoofchk", &self.spoofchk), ("trust", &self.trust)] {
            if let Some(v) = v {
                if v != "on" && v != "off" {
                    return Err((field, format!("{v:?} is not \"on\" or \"off\"")));
                }
            }
        }
        Ok(())
    }
}

/// The longest `ipam` section accepted (serialized).
const MAX_IPAM_BYTES: usize = 16 * 1024;

/// An object whose `type` names a plugin file (no path): the CNI execs it from its CNI_PATH.
fn check_ipam(ipam: &Value) -> Result<(), String> {
    let Value::Object(obj) = ipam else {
        return Err("must be an object (a CNI ipam section)".into());
    };
    let Some(Value::String(t)) = obj.get("type") else {
        return Err("needs \"type\", the IPAM plugin's name".into());
    };
    let plain = !t.is_empty()
        && t.len() <= 64
        && !t.starts_with('.')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !plain {
        return Err(format!("type {t:?} is not a plugin name"));
    }
    if ipam.to_string().len() > MAX_IPAM_BYTES {
        return Err(format!("longer than {MAX_IPAM_BYTES} bytes"));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// One allocated device of ours, with its merged config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocatedDevice {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub config: VfConfig,
}

/// The pods a claim is reserved for (`status.reservedFor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Consumer {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

/// What a claim gives this node's driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimAllocation {
    pub devices: Vec<AllocatedDevice>,
    /// Pods among the consumers.
    pub pods: Vec<Consumer>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Our devices of a claim's `status` (`allocation` and `reservedFor`), configs merged and
/// checked. `pool` is the pool our devices must be in (the node's).
pub fn allocation(
    claim: &ClaimRef,
    status: &Value,
    driver: &str,
    pool: &str,
) -> Result<ClaimAllocation, ClaimError> {
    let label = claim.label();
    let malformed = |what: String| ClaimError::Malformed {
        claim: label.clone(),
        what,
    };
    let alloc = status
        .get("allocation")
        .filter(|a| !a.is_null())
        .ok_or_else(|| malformed("not allocated (no status.allocation)".into()))?;
    let results = alloc
        .pointer("/devices/results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let configs = alloc
        .pointer("/devices/config")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Our configs, class ones first (the API lists them first; sorted to be sure, stable).
    let mut ours: Vec<(usize, bool, Vec<String>, VfConfig)> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let Some(opaque) = c.get("opaque") else {
            continue;
        };
        if str_at(opaque, "driver") != Some(driver) {
            continue;
        }
        let source = str_at(c, "source").unwrap_or("");
        let from_class = match source {
            "FromClass" => true,
            "FromClaim" => false,
            other => {
                return Err(malformed(format!(
                    "config[{i}]: source {other:?} is not FromClass or FromClaim"
                )))
            }
        };
        let at = format!("config[{i}] ({source})");
        let params = opaque
            .get("parameters")
            .ok_or_else(|| malformed(format!("{at}: no opaque.parameters")))?;
        let cfg = VfConfig::parse(params, driver, &label, &at)?;
        let requests = c
            .get("requests")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        ours.push((i, from_class, requests, cfg));
    }
    ours.sort_by_key(|(i, from_class, _, _)| (!*from_class, *i));
    let mut devices = Vec::new();
    for (i, r) in results.iter().enumerate() {
        if str_at(r, "driver") != Some(driver) {
            continue;
        }
        let field = |k: &str| {
            str_at(r, k)
                .map(String::from)
                .ok_or_else(|| malformed(format!("results[{i}]: no {k}")))
        };
        let (request, rpool, device) = (field("request")?, field("pool")?, field("device")?);
        if rpool != pool {
            return Err(malformed(format!(
                "results[{i}]: device {device} is in pool {rpool:?}, not this node's ({pool:?})"
            )));
        }
        // A subrequest (`req/sub`) is configured by its request's name too.
        let parent = request.split('/').next().unwrap_or(&request).to_string();
        let mut config = VfConfig::default();
        for (_, _, reqs, cfg) in &ours {
            if reqs.is_empty() || reqs.iter().any(|q| *q == request || *q == parent) {
                config.merge(cfg);
            }
        }
        config.check().map_err(|(field, why)| ClaimError::Config {
            claim: label.clone(),
            config: format!("merged config of {request}"),
            field: field.into(),
            why,
        })?;
        devices.push(AllocatedDevice {
            request,
            pool: rpool,
            device,
            config,
        });
    }
    let pods = status
        .get("reservedFor")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|c| str_at(c, "resource") == Some("pods"))
                .filter_map(|c| serde_json::from_value(c.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(ClaimAllocation { devices, pods })
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-12-02T06:30:00Z`), as Kubernetes writes
/// times (a condition's `lastTransitionTime`).
pub fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim() -> ClaimRef {
        ClaimRef {
            namespace: "ns".into(),
            name: "c".into(),
            uid: "0b1f-aa".into(),
        }
    }

    fn opaque(source: &str, requests: &[&str], params: Value) -> Value {
        json!({"source": source, "requests": requests,
               "opaque": {"driver": "sriov.sriov-rs.io", "parameters": params}})
    }

    #[test]
    fn class_then_claim_every_field_kept() {
        let status = json!({"allocation": {"devices": {
            "results": [
                {"request": "vf", "driver": "sriov.sriov-rs.io", "pool": "node1", "device": "0000-3b-02-0"},
                {"request": "gpu", "driver": "gpu.example.com", "pool": "node1", "device": "g0"}
            ],
            "config": [
                opaque("FromClaim", &["vf"], json!({"apiVersion": "sriov.sriov-rs.io/v1alpha1", "kind": "VfConfig", "ifName": "net1", "vlan": 10,
                    "ipam": {"type": "static", "addresses": [{"address": "10.1.0.5/24"}]}})),
                opaque("FromClass", &[], json!({"apiVersion": "sriovnetwork.k8snetworkplumbingwg.io/v1alpha1", "kind": "VfConfig",
                    "addVhostMount": true, "netAttachDefNamespace": "infra", "ifName": "eth9", "mtu": 9000})),
                {"source": "FromClaim", "opaque": {"driver": "gpu.example.com", "parameters": {"x": 1}}}
            ]}},
            "reservedFor": [{"resource": "pods", "name": "p1", "uid": "u1"}, {"resource": "pods", "name": "p2", "uid": "u2"}]});
        let a = allocation(&claim(), &status, "sriov.sriov-rs.io", "node1").unwrap();
        assert_eq!(a.devices.len(), 1);
        let c = &a.devices[0].config;
        assert_eq!(c.if_name.as_deref(), Some("net1"), "claim over class");
        assert_eq!(c.add_vhost_mount, Some(true), "class field kept");
        assert_eq!(c.net_attach_def_namespace.as_deref(), Some("infra"));
        assert_eq!((c.vlan, c.mtu), (Some(10), Some(9000)));
        assert_eq!(c.ipam.as_ref().unwrap()["type"], "static");
        assert_eq!(
            a.pods.iter().map(|p| p.uid.as_str()).collect::<Vec<_>>(),
            ["u1", "u2"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let status = |params: Value| {
            json!({"allocation": {"devices": {
                "results": [{"request": "vf", "driver": "sriov.sriov-rs.io", "pool": "node1", "device": "d"}],
                "config": [opaque("FromClaim", &[], params)]}}})
        };
        let field_of = |params: Value| match allocation(
            &claim(),
            &status(params),
            "sriov.sriov-rs.io",
            "node1",
        ) {
            Err(ClaimError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = |extra: Value| {
            let mut v = json!({"apiVersion": "sriov.sriov-rs.io/v1alpha1", "kind": "VfConfig"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        assert_eq!(field_of(base(json!({"vlan": 5000}))), "vlan");
        assert_eq!(field_of(base(json!({"vlanQos": 1}))), "vlanQos");
        assert_eq!(field_of(base(json!({"driver": "igb_uio"}))), "driver");
        assert_eq!(field_of(base(json!({"mac": "zz"}))), "mac");
        assert_eq!(field_of(base(json!({"mtuLock": true}))), "mtuLock");
        assert_eq!(field_of(base(json!({"ifName": "a/b"}))), "ifName");
        assert_eq!(field_of(base(json!({"ipam": "static"}))), "ipam");
        assert_eq!(field_of(base(json!({"ipam": {"subnet": "x"}}))), "ipam");
        assert_eq!(
            field_of(base(json!({"ipam": {"type": "../../usr/bin/x"}}))),
            "ipam"
        );
        let big = "a".repeat(20_000);
        assert_eq!(
            field_of(base(json!({"ipam": {"type": "static", "x": big}}))),
            "ipam"
        );
        assert_eq!(
            field_of(json!({"apiVersion": "x/v1", "kind": "VfConfig"})),
            "apiVersion"
        );
        // Another node's pool is refused.
        let wrong = json!({"allocation": {"devices": {"results": [
            {"request": "vf", "driver": "sriov.sriov-rs.io", "pool": "node2", "device": "d"}]}}});
        assert!(allocation(&claim(), &wrong, "sriov.sriov-rs.io", "node1").is_err());
        assert!(ClaimRef {
            uid: "../x".into(),
            ..claim()
        }
        .check_uid()
        .is_err());
    }
}
