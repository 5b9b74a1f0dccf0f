//! Container Device Interface (CDI) specs: built as values, checked against the specification's
//! rules, written atomically into a folder we own.
//!
//! A CDI spec (`{cdiVersion, kind: "vendor/class", devices: [{name, containerEdits}]}`) tells a
//! runtime (containerd 1.7+, CRI-O) what a device named `vendor/class=name` adds to a container.
//! The device plugin writes one spec per pool (upstream's `--use-cdi`: kind
//! `<resourcePrefix>/net-pci`, file `sriov-dp-<prefix>-net-pci-<resourceName>.yaml`, spec version
//! 0.5.0 unless told otherwise); the DRA driver writes one per prepared claim.
//!
//! [`Spec::validate`] encodes the rules of the CDI specification and of its reference library
//! (what containerd loads specs with): a known version not older than the fields used require,
//! the kind's vendor and class names, at least one device, unique device names in the allowed
//! characters, non-empty device edits, `NAME=VALUE` environment entries, absolute device paths,
//! device types and cgroup permissions. Nothing is written that fails them.
//!
//! The file content is JSON, whatever the extension: the reference library reads `.yaml` and
//! `.json` specs through the same YAML parser, and JSON is YAML.

use crate::owned_dir::{Access, FileError, OwnedDir};
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// Where runtimes look for specs written at run time.
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
/// The class of the device plugin's pool specs (upstream's `net-pci`).
pub const POOL_CLASS: &str = "net-pci";
/// Every pool spec file starts with this (upstream's prefix: its files are ours to replace).
pub const POOL_FILE_PREFIX: &str = "sriov-dp-";
/// Prefix of the CDI annotation keys runtimes read (`cdi.k8s.io/<plugin>_<device>`).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The CDI specification versions (`cdiVersion`), oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_4_0,
    V0_5_0,
    V0_6_0,
    V0_7_0,
    V0_8_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 8] = [
        Version::V0_3_0,
        Version::V0_4_0,
        Version::V0_5_0,
        Version::V0_6_0,
        Version::V0_7_0,
        Version::V0_8_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// What upstream's device plugin writes (its CDI library v0.5.x).
    pub const UPSTREAM: Version = Version::V0_5_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_4_0 => "0.4.0",
            Version::V0_5_0 => "0.5.0",
            Version::V0_6_0 => "0.6.0",
            Version::V0_7_0 => "0.7.0",
            Version::V0_8_0 => "0.8.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// `"1.0.0"` or `"v1.0.0"`.
    pub fn parse(s: &str) -> Result<Version, CdiError> {
        let bare = s.strip_prefix('v').unwrap_or(s);
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == bare)
            .ok_or_else(|| CdiError::Invalid {
                field: "cdiVersion".into(),
                value: s.to_string(),
                reason: format!(
                    "not a CDI specification version (known: {})",
                    Version::ALL.map(Version::as_str).join(", ")
                ),
            })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A value breaks a rule of the CDI specification.
    #[error("CDI spec: {field} {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("CDI spec {file}: {source}")]
    File {
        file: String,
        #[source]
        source: FileError,
    },
}

fn invalid(field: impl Into<String>, value: &str, reason: impl Into<String>) -> CdiError {
    CdiError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A device node a CDI device adds to the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// In the container.
    pub path: String,
    /// On the host, when it differs from `path` (needs spec 0.5.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`; none: the runtime reads it from the host's node.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    /// cgroup permissions (`rw`); none: `rwm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

/// What a device (or the whole spec) adds to a container's OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// `NAME=VALUE`
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.device_nodes.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

/// One CDI spec file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: Version,
    /// `vendor/class`
    pub kind: String,
    pub devices: Vec<Device>,
    /// Applied when any of the devices is requested.
    #[serde(skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// The reference parser's rule for vendor and class names: a letter first, a letter or digit
/// last, letters, digits, `_`, `-` and `.` between.
fn vendor_or_class_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return Some("must start with a letter");
    }
    if name.len() == 1 {
        return None;
    }
    if !name.ends_with(is_alnum) {
        return Some("must end with a letter or digit");
    }
    let inner = &name[1..name.len() - 1];
    (!inner
        .chars()
        .all(|c| is_alnum(c) || matches!(c, '_' | '-' | '.')))
    .then_some("only letters, digits, '_', '-' and '.' are allowed")
}

/// The specification's rule for device names: a letter or digit at both ends, letters, digits,
/// `_`, `-`, `.` and `:` between (a PCI address is a valid name).
pub fn device_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if !name.starts_with(is_alnum) || !name.ends_with(is_alnum) {
        return Some("must start and end with a letter or digit");
    }
    (!name
        .chars()
        .all(|c| is_alnum(c) || matches!(c, '_' | '-' | '.' | ':')))
    .then_some("only letters, digits, '_', '-', '.' and ':' are allowed")
}

/// A DNS subdomain (the specification's rule for the kind's vendor part).
fn dns_subdomain_problem(name: &str) -> Option<&'static str> {
    if name.len() > 253 {
        return Some("longer than 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| is_alnum(c) || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (!name.split('.').all(label_ok)).then_some("must be a DNS subdomain (such as vendor.com)")
}

impl ContainerEdits {
    fn validate(&self, at: &str) -> Result<(), CdiError> {
        for (i, e) in self.env.iter().enumerate() {
            if e.find('=').is_none_or(|p| p == 0) {
                return Err(invalid(
                    format!("{at}.env[{i}]"),
                    e,
                    "must be NAME=VALUE with a non-empty NAME",
                ));
            }
        }
        for (i, n) in self.device_nodes.iter().enumerate() {
            let field = format!("{at}.deviceNodes[{i}]");
            if !n.path.starts_with('/') {
                return Err(invalid(
                    format!("{field}.path"),
                    &n.path,
                    "must be absolute",
                ));
            }
            if let Some(h) = &n.host_path {
                if !h.starts_with('/') {
                    return Err(invalid(format!("{field}.hostPath"), h, "must be absolute"));
                }
            }
            if let Some(t) = &n.node_type {
                if !matches!(t.as_str(), "b" | "c" | "u" | "p") {
                    return Err(invalid(format!("{field}.type"), t, "must be b, c, u or p"));
                }
            }
            if let Some(p) = &n.permissions {
                if p != "none" && (p.is_empty() || !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')))
                {
                    return Err(invalid(
                        format!("{field}.permissions"),
                        p,
                        "must be made of r, w and m (or be \"none\")",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Spec {
    /// The oldest specification version that has every field this spec uses.
    pub fn minimum_version(&self) -> Version {
        let host_path = |e: &ContainerEdits| e.device_nodes.iter().any(|n| n.host_path.is_some());
        let class_dot = self
            .kind
            .split_once('/')
            .is_some_and(|(_, c)| c.contains('.'));
        if class_dot {
            return Version::V0_6_0;
        }
        let digit_name = self
            .devices
            .iter()
            .any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()));
        if digit_name
            || host_path(&self.container_edits)
            || self.devices.iter().any(|d| host_path(&d.container_edits))
        {
            return Version::V0_5_0;
        }
        Version::V0_3_0
    }

    /// Checks the spec against the CDI specification's rules; the error names the field.
    pub fn validate(&self) -> Result<(), CdiError> {
        let min = self.minimum_version();
        if self.cdi_version < min {
            return Err(invalid(
                "cdiVersion",
                self.cdi_version.as_str(),
                format!("the fields used need at least {min}"),
            ));
        }
        let (vendor, class) = self
            .kind
            .split_once('/')
            .ok_or_else(|| invalid("kind", &self.kind, "must be vendor/class"))?;
        if let Some(why) = dns_subdomain_problem(vendor).or_else(|| vendor_or_class_problem(vendor))
        {
            return Err(invalid("kind (vendor)", vendor, why));
        }
        if class.len() > 63 {
            return Err(invalid("kind (class)", class, "longer than 63 characters"));
        }
        if let Some(why) = vendor_or_class_problem(class) {
            return Err(invalid("kind (class)", class, why));
        }
        if self.devices.is_empty() {
            return Err(invalid("devices", "[]", "a spec needs at least one device"));
        }
        self.container_edits.validate("containerEdits")?;
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let at = format!("devices[{i}]");
            if let Some(why) = device_name_problem(&d.name) {
                return Err(invalid(format!("{at}.name"), &d.name, why));
            }
            if !seen.insert(d.name.as_str()) {
                return Err(invalid(format!("{at}.name"), &d.name, "used twice"));
            }
            if d.container_edits.is_empty() {
                return Err(invalid(
                    format!("{at}.containerEdits"),
                    "{}",
                    "a device's edits must not be empty",
                ));
            }
            d.container_edits
                .validate(&format!("{at}.containerEdits"))?;
        }
        Ok(())
    }

    /// The file content (JSON), after [`Spec::validate`].
    pub fn to_json(&self) -> Result<Vec<u8>, CdiError> {
        self.validate()?;
        serde_json::to_vec_pretty(self).map_err(|e| invalid("spec", &self.kind, e.to_string()))
    }

    /// `vendor/class=name` of each device, in order.
    pub fn qualified_names(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| qualified_name(&self.kind, &d.name))
            .collect()
    }
}

/// `vendor/class=name`: how a container asks for a CDI device.
pub fn qualified_name(kind: &str, device: &str) -> String {
    format!("{kind}={device}")
}

/// `<prefix>/net-pci`
pub fn pool_kind(prefix: &str) -> String {
    format!("{prefix}/{POOL_CLASS}")
}

/// `sriov-dp-intel.com-net-pci-sriov_net.yaml`: the name upstream's CDI library gives a pool's
/// spec (`sriov-dp-` + `<vendor>-<class>` + `-<resourceName>`, and `.yaml` because the name has
/// no `.json`/`.yaml` extension).
pub fn pool_file_name(prefix: &str, resource_name: &str) -> String {
    format!("{POOL_FILE_PREFIX}{prefix}-{POOL_CLASS}-{resource_name}.yaml")
}

/// The annotation key runtimes read CDI devices from, `cdi.k8s.io/<plugin>_<device>` (`/` in
/// `device` becomes `_`), checked as the reference library does (at most 63 characters after the
/// prefix, alphanumeric at both ends, `_`, `-`, `.` between).
pub fn annotation_key(plugin: &str, device: &str) -> Result<String, CdiError> {
    let name = format!("{plugin}_{}", device.replace('/', "_"));
    let field = "annotation key";
    if plugin.is_empty() || device.is_empty() {
        return Err(invalid(field, &name, "plugin and device must not be empty"));
    }
    if name.len() > 63 {
        return Err(invalid(field, &name, "longer than 63 characters"));
    }
    if !name.starts_with(is_alnum) || !name.ends_with(is_alnum) {
        return Err(invalid(
            field,
            &name,
            "must start and end with a letter or digit",
        ));
    }
    if !name
        .chars()
        .all(|c| is_alnum(c) || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid(
            field,
            &name,
            "only letters, digits, '_', '-' and '.'",
        ));
    }
    Ok(format!("{ANNOTATION_PREFIX}{name}"))
}

/// A folder of CDI specs we own (`/var/run/cdi`), and the one way specs are written there.
#[derive(Debug)]
pub struct SpecDir {
    dir: OwnedDir,
}

impl SpecDir {
    /// Opens (creating) the folder: readable by all (runtimes), writable only by us.
    pub fn open(path: &Path) -> Result<SpecDir, CdiError> {
        let dir = OwnedDir::open(path, Access::Shared, true).map_err(|source| CdiError::File {
            file: path.display().to_string(),
            source,
        })?;
        Ok(SpecDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file_error(&self, file: &str) -> impl FnOnce(FileError) -> CdiError + '_ {
        let file = self.dir.path().join(file).display().to_string();
        move |source| CdiError::File { file, source }
    }

    /// Validates `spec` and replaces `file` with it atomically (mode 0644).
    pub fn write(&self, file: &str, spec: &Spec) -> Result<(), CdiError> {
        let content = spec.to_json()?;
        self.dir
            .write_atomic(file, &content, 0o644)
            .map_err(self.file_error(file))
    }

    /// Removes `file`; `Ok(false)` if it was not there.
    pub fn remove(&self, file: &str) -> Result<bool, CdiError> {
        self.dir.remove(file).map_err(self.file_error(file))
    }

    /// The spec files whose names start with `prefix`, sorted.
    pub fn files_with_prefix(&self, prefix: &str) -> Result<Vec<String>, CdiError> {
        self.dir
            .remove_stale_temps()
            .map_err(self.file_error("."))?;
        Ok(self
            .dir
            .names()
            .map_err(self.file_error("."))?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// The content of `file`, if it exists.
    pub fn read(&self, file: &str) -> Result<Option<Vec<u8>>, CdiError> {
        self.dir.read(file).map_err(self.file_error(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, names: &[&str]) -> Spec {
        Spec {
            cdi_version: Version::V0_5_0,
            kind: kind.into(),
            devices: names
                .iter()
                .map(|n| Device {
                    name: n.to_string(),
                    container_edits: ContainerEdits {
                        env: vec![format!("X={n}")],
                        device_nodes: vec![],
                    },
                })
                .collect(),
            container_edits: ContainerEdits::default(),
        }
    }

    fn field_of(e: CdiError) -> String {
        match e {
            CdiError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn rules_name_the_field() {
        assert!(spec("intel.com/net-pci", &["0000:3b:02.0"])
            .validate()
            .is_ok());
        let mut s = spec("intel.com/net-pci", &["0000:3b:02.0"]);
        s.cdi_version = Version::V0_4_0;
        assert_eq!(field_of(s.validate().unwrap_err()), "cdiVersion");
        assert_eq!(
            field_of(spec("intel.com", &["a"]).validate().unwrap_err()),
            "kind"
        );
        assert_eq!(
            field_of(spec("-x.com/net", &["a"]).validate().unwrap_err()),
            "kind (vendor)"
        );
        assert_eq!(
            field_of(spec("x.com/net/pci", &["a"]).validate().unwrap_err()),
            "kind (class)"
        );
        assert_eq!(
            field_of(spec("x.com/net", &[]).validate().unwrap_err()),
            "devices"
        );
        assert_eq!(
            field_of(spec("x.com/net", &["a", "a"]).validate().unwrap_err()),
            "devices[1].name"
        );
        assert_eq!(
            field_of(spec("x.com/net", &["a/b"]).validate().unwrap_err()),
            "devices[0].name"
        );
        let mut s = spec("x.com/net", &["a"]);
        s.devices[0].container_edits.env = vec![];
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            "devices[0].containerEdits"
        );
        s.devices[0].container_edits.env = vec!["=x".into()];
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            "devices[0].containerEdits.env[0]"
        );
        s.devices[0].container_edits.env = vec!["A=".into()];
        s.devices[0].container_edits.device_nodes = vec![DeviceNode {
            path: "/dev/vfio/1".into(),
            host_path: None,
            node_type: None,
            permissions: Some("rwx".into()),
        }];
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            "devices[0].containerEdits.deviceNodes[0].permissions"
        );
        // A class with a dot needs 0.6.0.
        let mut s = spec("x.com/net.pci", &["a"]);
        assert_eq!(field_of(s.validate().unwrap_err()), "cdiVersion");
        s.cdi_version = Version::V1_0_0;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn names_and_annotations_as_upstream() {
        assert_eq!(
            pool_file_name("intel.com", "sriov_net"),
            "sriov-dp-intel.com-net-pci-sriov_net.yaml"
        );
        assert_eq!(
            annotation_key("intel.com", POOL_CLASS).unwrap(),
            "cdi.k8s.io/intel.com_net-pci"
        );
        assert!(annotation_key(&"a".repeat(60), POOL_CLASS).is_err());
        assert_eq!(Version::parse("v1.1.0").unwrap(), Version::V1_1_0);
        assert!(Version::parse("2.0.0").is_err());
    }
}
