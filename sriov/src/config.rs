//! The device plugin configuration: the upstream sriov-network-device-plugin `config.json`,
//! read unchanged, plus two extensions in the same file.
//!
//! ```json
//! {
//!   "resourceList": [{
//!     "resourceName": "intel_sriov_netdevice",
//!     "resourcePrefix": "intel.com",
//!     "selectors": {"vendors": ["8086"], "devices": ["154c"], "pfNames": ["ens1f0#0-3,7"]}
//!   }],
//!   "provisioning": [{"pfNames": ["ens1f0"], "numVfs": 8, "mtu": 9000}]
//! }
//! ```
//!
//! - Without `resourceList`, every SR-IOV-enabled PF becomes a pool of its own (zero config).
//! - `provisioning` (ours) sets the VF count and MTU of the PFs it selects.
//! - `allocationPolicy` (ours, per resource): `pack` (default) or `spread` across PFs.
//!
//! The file is walked key by key rather than derived, so that every mistake is reported with the
//! exact place (`resourceList[1] (dpdk).selectors[0].vendor`), unknown keys are never silently
//! ignored (a typo would otherwise widen a pool), and keys of upstream features we do not
//! implement yet are named.

use crate::names::{self, PciAddress};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("{at}: {msg}")]
    Invalid { at: String, msg: String },
}

/// A rejected value as the message shows it: compact JSON, cut after 60 characters.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// `msg` with the value that was given: `must be a string, not 7`.
fn wrong(at: &str, msg: &str, v: &Value) -> ConfigError {
    invalid(at, format!("{msg}, not {}", shown(v)))
}

pub(crate) fn invalid(at: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        at: at.to_string(),
        msg: msg.into(),
    }
}

/// How GetPreferredAllocation chooses among a pool's VFs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocationPolicy {
    /// Fill the fewest PFs (default).
    #[default]
    Pack,
    /// Spread VFs across PFs.
    Spread,
}

/// A set of VF indexes written like `0-3,7` after a `#`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfRanges(pub Vec<(u32, u32)>);

impl std::fmt::Display for VfRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(a, b)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if a == b {
                write!(f, "{sep}{a}")?;
            } else {
                write!(f, "{sep}{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl VfRanges {
    pub fn contains(&self, index: u32) -> bool {
        self.0.iter().any(|&(a, b)| a <= index && index <= b)
    }

    fn parse(s: &str, at: &str) -> Result<VfRanges, ConfigError> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let num = |p: &str| {
                p.trim()
                    .parse::<u32>()
                    .map_err(|_| invalid(at, format!("bad VF range {s:?}: expected e.g. 0-3,7")))
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(part)?;
                    (n, n)
                }
            };
            if a > b {
                return Err(invalid(at, format!("bad VF range {s:?}: {a} is above {b}")));
            }
            out.push((a, b));
        }
        Ok(VfRanges(out))
    }
}

/// A PF named by netdev (`pfNames`) or PCI address (`rootDevices`), optionally with VF ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PfRef<T> {
    pub pf: T,
    pub vfs: Option<VfRanges>,
}

/// What a pool holds (`deviceType`): VFs and NICs, PCI accelerators
/// ([`crate::accelerator`]) or auxiliary-bus network devices ([`crate::aux_device`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceType {
    #[default]
    NetDevice,
    Accelerator,
    AuxNetDevice,
}

impl DeviceType {
    pub const ALL: [DeviceType; 3] = [
        DeviceType::NetDevice,
        DeviceType::Accelerator,
        DeviceType::AuxNetDevice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::NetDevice => "netDevice",
            DeviceType::Accelerator => "accelerator",
            DeviceType::AuxNetDevice => "auxNetDevice",
        }
    }

    /// The selector keys upstream reads for this device type.
    fn selector_keys(self) -> &'static [&'static str] {
        match self {
            DeviceType::NetDevice => NET_SELECTOR_KEYS,
            DeviceType::Accelerator => crate::accelerator::SELECTOR_KEYS,
            DeviceType::AuxNetDevice => crate::aux_device::SELECTOR_KEYS,
        }
    }
}

/// One selector object of a pool; its keys intersect. Keys that do not apply to the pool's
/// [`DeviceType`] are refused at parse time, so they stay empty here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetDeviceSelector {
    pub vendors: Vec<u16>,
    pub devices: Vec<u16>,
    pub drivers: Vec<String>,
    pub pci_addresses: Vec<PciAddress>,
    pub acpi_indexes: Vec<u32>,
    pub pf_names: Vec<PfRef<String>>,
    pub root_devices: Vec<PfRef<PciAddress>>,
    pub link_types: Vec<String>,
    pub is_rdma: bool,
    pub need_vhost_net: bool,
    /// `ddpProfiles`: the DDP package name the device (or its PF) runs (see `crate::ddp`).
    pub ddp_profiles: Vec<String>,
    /// `pKeys`: the InfiniBand partition key at index 0 of port 1, as sysfs writes it
    /// (`0xffff`); only devices whose link type is `infiniband` have one.
    pub p_keys: Vec<String>,
    /// `auxTypes` (auxNetDevice pools): the middle part of `<driver>.<type>.<n>`.
    pub aux_types: Vec<String>,
    /// `vdpaType` (netDevice pools): only VFs with a vDPA device bound to that driver.
    pub vdpa_type: Option<crate::vdpa::VdpaType>,
}

/// `additionalInfo`: `*` or a PCI address → key/values.
pub type AdditionalInfo = BTreeMap<String, BTreeMap<String, String>>;

/// One entry of `resourceList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceConfig {
    pub resource_name: String,
    /// The entry's `resourcePrefix`, or the default prefix.
    pub resource_prefix: String,
    pub device_type: DeviceType,
    pub exclude_topology: bool,
    /// `additionalInfo`: `*` or a PCI address → extra key/values for the `_INFO` env. `None`
    /// when the key is absent (or `null`): then `_INFO` has no `extra` entry; when it is given,
    /// even as `{}`, every device gets one (`{}` when nothing applies), as upstream.
    pub additional_info: Option<AdditionalInfo>,
    /// A device goes to the first selector object that matches it.
    pub selectors: Vec<NetDeviceSelector>,
    pub allocation_policy: AllocationPolicy,
}

impl ResourceConfig {
    /// `intel.com/intel_sriov_netdevice`
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.resource_prefix, self.resource_name)
    }

    pub fn need_vhost_net(&self) -> bool {
        self.selectors.iter().any(|s| s.need_vhost_net)
    }

    pub fn is_rdma(&self) -> bool {
        self.selectors.iter().any(|s| s.is_rdma)
    }
}

/// One entry of `provisioning` (our extension): which PFs, and what to set on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PfProvisioning {
    pub pf_names: Vec<String>,
    pub pci_addresses: Vec<PciAddress>,
    pub vendors: Vec<u16>,
    pub devices: Vec<u16>,
    pub drivers: Vec<String>,
    pub num_vfs: Option<u32>,
    pub mtu: Option<u32>,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    /// `None` when the file has no `resourceList`: zero-config mode.
    pub resources: Option<Vec<ResourceConfig>>,
    pub provisioning: Vec<PfProvisioning>,
    /// Things we accepted but do not act on (e.g. pools of another device type), each named.
    pub warnings: Vec<String>,
}

const NET_SELECTOR_KEYS: &[&str] = &[
    "vendors",
    "devices",
    "drivers",
    "pciAddresses",
    "acpiIndexes",
    "pfNames",
    "rootDevices",
    "linkTypes",
    "isRdma",
    "needVhostNet",
    "ddpProfiles",
    "pKeys",
    "vdpaType",
];
const RESOURCE_KEYS: &[&str] = &[
    "isRdma",
    "needVhostNet",
    "resourceName",
    "resourcePrefix",
    "deviceType",
    "excludeTopology",
    "additionalInfo",
    "selectors",
    "allocationPolicy",
];
const PROVISIONING_KEYS: &[&str] = &[
    "pfNames",
    "pciAddresses",
    "vendors",
    "devices",
    "drivers",
    "numVfs",
    "mtu",
];

/// The upstream device plugin's default resource prefix.
pub const DEFAULT_RESOURCE_PREFIX: &str = "intel.com";

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path, default_prefix: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, default_prefix)
    }

    /// Parses and validates a config; `default_prefix` applies to entries without
    /// `resourcePrefix`.
    pub fn parse(text: &str, default_prefix: &str) -> Result<Config, ConfigError> {
        names::validate_resource_prefix(default_prefix)
            .map_err(|e| invalid("--resource-prefix", e.to_string()))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let top = value
            .as_object()
            .ok_or_else(|| invalid("config", "must be a JSON object"))?;
        let top = canonical_keys(top, &["resourceList", "provisioning"], &[], "config")?;
        let mut config = Config::default();
        if let Some(list) = top.get("resourceList") {
            let list = list
                .as_array()
                .ok_or_else(|| wrong("resourceList", "must be a list", list))?;
            let mut resources = Vec::new();
            let mut seen = BTreeSet::new();
            for (i, entry) in list.iter().enumerate() {
                let at = format!("resourceList[{i}]");
                if let Some(res) = parse_resource(entry, &at, default_prefix, &mut config.warnings)?
                {
                    if !seen.insert(res.full_name()) {
                        return Err(invalid(
                            &at,
                            format!("resource {} is defined twice", res.full_name()),
                        ));
                    }
                    resources.push(res);
                }
            }
            config.resources = Some(resources);
        }
        if let Some(list) = top.get("provisioning") {
            let list = list
                .as_array()
                .ok_or_else(|| wrong("provisioning", "must be a list", list))?;
            for (i, entry) in list.iter().enumerate() {
                config
                    .provisioning
                    .push(parse_provisioning(entry, &format!("provisioning[{i}]"))?);
            }
        }
        Ok(config)
    }
}

/// Returns the object with its keys renamed to their canonical spelling.
///
/// Keys match case-insensitively, as Go's encoding/json does for the upstream plugin: configs in
/// the wild say `"IsRdma"` as often as `"isRdma"`. `ignored` keys are dropped without a word
/// (Go-internal fields that upstream tooling writes, such as `"SelectorObj": null`).
fn canonical_keys(
    obj: &Map<String, Value>,
    known: &[&str],
    ignored: &[&str],
    at: &str,
) -> Result<Map<String, Value>, ConfigError> {
    let mut out = Map::new();
    for (key, value) in obj {
        if ignored.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            if out.insert(k.to_string(), value.clone()).is_some() {
                return Err(invalid(
                    &format!("{at}.{key}"),
                    format!("{k:?} is given twice"),
                ));
            }
            continue;
        }
        let hint = known
            .iter()
            .find(|k| {
                k.trim_end_matches('s')
                    .eq_ignore_ascii_case(key.trim_end_matches('s'))
            })
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        return Err(invalid(
            &format!("{at}.{key}"),
            format!("unknown key{hint}"),
        ));
    }
    Ok(out)
}

fn parse_resource(
    entry: &Value,
    at: &str,
    default_prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<ResourceConfig>, ConfigError> {
    let obj = entry
        .as_object()
        .ok_or_else(|| wrong(at, "must be an object", entry))?;
    let obj = &canonical_keys(obj, RESOURCE_KEYS, &["SelectorObj", "SelectorObjs"], at)?;
    let name =
        get_str(obj, "resourceName", at)?.ok_or_else(|| invalid(at, "resourceName is required"))?;
    names::validate_resource_name(&name).map_err(|e| invalid(at, e.to_string()))?;
    let at = format!("{at} ({name})");
    let device_type = match get_str(obj, "deviceType", &at)?.as_deref() {
        None | Some("netDevice") => DeviceType::NetDevice,
        Some("accelerator") => DeviceType::Accelerator,
        Some("auxNetDevice") => DeviceType::AuxNetDevice,
        Some(other) => {
            return Err(invalid(
                &format!("{at}.deviceType"),
                format!(
                    "unknown device type {other:?} (expected netDevice, accelerator or \
                     auxNetDevice)"
                ),
            ))
        }
    };
    for key in ["isRdma", "needVhostNet"] {
        if obj.contains_key(key) {
            warnings.push(format!(
                "{at}.{key}: belongs inside \"selectors\"; at this level it is ignored \
                 (as by the upstream plugin)"
            ));
        }
    }
    let prefix = get_str(obj, "resourcePrefix", &at)?.unwrap_or_else(|| default_prefix.into());
    names::validate_resource_prefix(&prefix)
        .map_err(|e| invalid(&format!("{at}.resourcePrefix"), e.to_string()))?;
    let selectors = match obj.get("selectors") {
        None => vec![check_selector(
            NetDeviceSelector::default(),
            device_type,
            &format!("{at}.selectors"),
        )?],
        Some(Value::Object(o)) => vec![parse_selector(
            o,
            device_type,
            &format!("{at}.selectors"),
            warnings,
        )?],
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let sat = format!("{at}.selectors[{i}]");
                let o = s
                    .as_object()
                    .ok_or_else(|| wrong(&sat, "must be an object", s))?;
                out.push(parse_selector(o, device_type, &sat, warnings)?);
            }
            if out.is_empty() {
                // Upstream (cmd/sriovdp/manager.go readConfig, factory.go parseObjectOrSlice)
                // skips such a resource with a warning and serves the others.
                warnings.push(format!(
                    "{at}.selectors: an empty list selects nothing; this resource is not served \
                     (as by the upstream plugin)"
                ));
                return Ok(None);
            }
            out
        }
        Some(other) => {
            return Err(wrong(
                &format!("{at}.selectors"),
                "must be an object or a list of objects",
                other,
            ))
        }
    };
    let additional_info = parse_additional_info(obj.get("additionalInfo"), &at)?;
    let allocation_policy = match get_str(obj, "allocationPolicy", &at)?.as_deref() {
        None | Some("pack") => AllocationPolicy::Pack,
        Some("spread") => AllocationPolicy::Spread,
        Some(other) => {
            return Err(invalid(
                &format!("{at}.allocationPolicy"),
                format!("{other:?} is not one of pack, spread"),
            ))
        }
    };
    Ok(Some(ResourceConfig {
        resource_name: name,
        resource_prefix: prefix,
        device_type,
        exclude_topology: get_bool(obj, "excludeTopology", &at)?.unwrap_or(false),
        additional_info,
        selectors,
        allocation_policy,
    }))
}

fn parse_selector(
    obj: &Map<String, Value>,
    device_type: DeviceType,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<NetDeviceSelector, ConfigError> {
    let keys = device_type.selector_keys();
    for key in obj.keys() {
        let applies = keys.iter().any(|k| k.eq_ignore_ascii_case(key));
        // A selector of another device type.
        if let Some(k) = DeviceType::ALL
            .iter()
            .flat_map(|t| t.selector_keys())
            .find(|k| !applies && k.eq_ignore_ascii_case(key))
        {
            if device_type != DeviceType::NetDevice {
                return Err(invalid(
                    &format!("{at}.{key}"),
                    format!(
                        "{k:?} is not a selector of deviceType {:?} (its selectors: {})",
                        device_type.as_str(),
                        keys.join(", ")
                    ),
                ));
            }
        }
    }
    let obj = &canonical_keys(obj, keys, &[], at)?;
    let mut s = NetDeviceSelector {
        vendors: parse_ids(obj, "vendors", at)?,
        devices: parse_ids(obj, "devices", at)?,
        drivers: get_list(obj, "drivers", at)?,
        link_types: get_list(obj, "linkTypes", at)?
            .into_iter()
            .map(|l| l.to_ascii_lowercase())
            .collect(),
        is_rdma: get_bool(obj, "isRdma", at)?.unwrap_or(false),
        need_vhost_net: get_bool(obj, "needVhostNet", at)?.unwrap_or(false),
        ddp_profiles: get_list(obj, "ddpProfiles", at)?,
        p_keys: get_list(obj, "pKeys", at)?,
        aux_types: get_list(obj, "auxTypes", at)?,
        ..Default::default()
    };
    if let Some(t) = get_str(obj, "vdpaType", at)? {
        s.vdpa_type = Some(crate::vdpa::VdpaType::parse(&t).ok_or_else(|| {
            invalid(
                &format!("{at}.vdpaType"),
                format!("{t:?} is not one of virtio, vhost"),
            )
        })?);
    }
    for a in get_list(obj, "pciAddresses", at)? {
        s.pci_addresses.push(
            PciAddress::parse(&a)
                .map_err(|e| invalid(&format!("{at}.pciAddresses"), e.to_string()))?,
        );
    }
    for a in get_list(obj, "acpiIndexes", at)? {
        s.acpi_indexes.push(a.parse().map_err(|_| {
            invalid(
                &format!("{at}.acpiIndexes"),
                format!("{a:?} is not a number"),
            )
        })?);
    }
    for p in get_list(obj, "pfNames", at)? {
        let sat = format!("{at}.pfNames");
        let (name, ranges) = split_ranges(&p, &sat)?;
        names::validate_ifname(name).map_err(|e| invalid(&sat, e.to_string()))?;
        s.pf_names.push(PfRef {
            pf: name.to_string(),
            vfs: ranges,
        });
    }
    for p in get_list(obj, "rootDevices", at)? {
        let sat = format!("{at}.rootDevices");
        let (addr, ranges) = split_ranges(&p, &sat)?;
        s.root_devices.push(PfRef {
            pf: PciAddress::parse(addr).map_err(|e| invalid(&sat, e.to_string()))?,
            vfs: ranges,
        });
    }
    warn_repeated_pfs(&s.pf_names, &format!("{at}.pfNames"), warnings);
    warn_repeated_pfs(&s.root_devices, &format!("{at}.rootDevices"), warnings);
    check_selector(s, device_type, at)
}

/// What upstream's `ValidConfig` of each device provider refuses.
fn check_selector(
    s: NetDeviceSelector,
    device_type: DeviceType,
    at: &str,
) -> Result<NetDeviceSelector, ConfigError> {
    match device_type {
        // pkg/netdevice/netDeviceProvider.go ValidConfig: vdpaType and isRdma exclude each other.
        DeviceType::NetDevice if s.is_rdma && s.vdpa_type.is_some() => Err(invalid(
            at,
            "vdpaType and isRdma exclude each other (as upstream)",
        )),
        DeviceType::AuxNetDevice => crate::aux_device::check_selector(&s, at).map(|()| s),
        _ => Ok(s),
    }
}

/// Upstream (pkg/resources/deviceSelectors.go, `getItem`) uses only the first entry naming a
/// PF (compared case-insensitively); the later ones are dead, which is worth a warning.
fn warn_repeated_pfs<T: std::fmt::Display>(
    refs: &[PfRef<T>],
    at: &str,
    warnings: &mut Vec<String>,
) {
    for (i, r) in refs.iter().enumerate() {
        let name = r.pf.to_string();
        if let Some(first) = refs[..i]
            .iter()
            .find(|f| crate::pools::equal_fold(&f.pf.to_string(), &name))
        {
            warnings.push(format!(
                "{at}[{i}]: {name} is already named by an earlier entry; as upstream, only the \
                 first one counts ({}{})",
                first.pf,
                first
                    .vfs
                    .as_ref()
                    .map(|v| format!("#{v}"))
                    .unwrap_or_default()
            ));
        }
    }
}

fn split_ranges<'a>(s: &'a str, at: &str) -> Result<(&'a str, Option<VfRanges>), ConfigError> {
    match s.split_once('#') {
        None => Ok((s, None)),
        Some((name, ranges)) => Ok((name, Some(VfRanges::parse(ranges, at)?))),
    }
}

fn parse_provisioning(entry: &Value, at: &str) -> Result<PfProvisioning, ConfigError> {
    let obj = entry
        .as_object()
        .ok_or_else(|| wrong(at, "must be an object", entry))?;
    let obj = &canonical_keys(obj, PROVISIONING_KEYS, &[], at)?;
    let mut p = PfProvisioning {
        pf_names: get_list(obj, "pfNames", at)?,
        vendors: parse_ids(obj, "vendors", at)?,
        devices: parse_ids(obj, "devices", at)?,
        drivers: get_list(obj, "drivers", at)?,
        num_vfs: get_u32(obj, "numVfs", at)?,
        mtu: get_u32(obj, "mtu", at)?,
        ..Default::default()
    };
    for n in &p.pf_names {
        names::validate_ifname(n).map_err(|e| invalid(&format!("{at}.pfNames"), e.to_string()))?;
    }
    for a in get_list(obj, "pciAddresses", at)? {
        p.pci_addresses.push(
            PciAddress::parse(&a)
                .map_err(|e| invalid(&format!("{at}.pciAddresses"), e.to_string()))?,
        );
    }
    if p.pf_names.is_empty()
        && p.pci_addresses.is_empty()
        && p.vendors.is_empty()
        && p.devices.is_empty()
        && p.drivers.is_empty()
    {
        return Err(invalid(
            at,
            "names no PF: give pfNames, pciAddresses, vendors, devices or drivers",
        ));
    }
    if p.num_vfs.is_none() && p.mtu.is_none() {
        return Err(invalid(at, "sets nothing: give numVfs and/or mtu"));
    }
    if let Some(mtu) = p.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(
                &format!("{at}.mtu"),
                format!("{mtu}: valid MTUs are 68-65535"),
            ));
        }
    }
    Ok(p)
}

fn parse_additional_info(
    v: Option<&Value>,
    at: &str,
) -> Result<Option<AdditionalInfo>, ConfigError> {
    let mut out = BTreeMap::new();
    // Go decodes an absent or null map as nil: no `extra` entry at all.
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let at = format!("{at}.additionalInfo");
    let obj = v
        .as_object()
        .ok_or_else(|| wrong(&at, "must be an object", v))?;
    for (key, inner) in obj {
        if key != "*" {
            PciAddress::parse(key).map_err(|e| invalid(&at, format!("key: {e} (or \"*\")")))?;
        }
        let inner = inner.as_object().ok_or_else(|| {
            wrong(
                &format!("{at}.{key}"),
                "must be an object of strings",
                inner,
            )
        })?;
        let mut m = BTreeMap::new();
        for (k, v) in inner {
            let s = v
                .as_str()
                .ok_or_else(|| wrong(&format!("{at}.{key}.{k}"), "must be a string", v))?;
            m.insert(k.clone(), s.to_string());
        }
        out.insert(key.clone(), m);
    }
    Ok(Some(out))
}

fn get_str(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, ConfigError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(wrong(&format!("{at}.{key}"), "must be a string", v)),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<bool>, ConfigError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong(&format!("{at}.{key}"), "must be true or false", v)),
    }
}

fn get_u32(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u32>, ConfigError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| wrong(&format!("{at}.{key}"), "must be a non-negative integer", v)),
    }
}

fn get_list(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Vec<String>, ConfigError> {
    match obj.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong(&format!("{at}.{key}"), "must be a list of strings", i))
            })
            .collect(),
        Some(v) => Err(wrong(
            &format!("{at}.{key}"),
            "must be a list of strings",
            v,
        )),
    }
}

/// Vendor and device IDs are hex strings (`"8086"`, `"0x154c"`).
fn parse_ids(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Vec<u16>, ConfigError> {
    get_list(obj, key, at)?
        .into_iter()
        .map(|s| {
            let digits = s.trim_start_matches("0x");
            if digits.is_empty() || digits.len() > 4 {
                return Err(invalid(
                    &format!("{at}.{key}"),
                    format!("{s:?} is not a hex PCI ID such as \"8086\""),
                ));
            }
            u16::from_str_radix(digits, 16).map_err(|_| {
                invalid(
                    &format!("{at}.{key}"),
                    format!("{s:?} is not a hex PCI ID such as \"8086\""),
                )
            })
        })
        .collect()
}
