//! The plugin's node-local settings: which sysfs, which folders, which sockets.
//!
//! A NetworkAttachmentDefinition is written by a namespace tenant and reaches us unchanged, so
//! nothing that names a host path may come from it. These settings live in a file the installer
//! writes on the node (`/etc/sriov-rs/cni.json`; the chart's init container, `deploy/`), whose
//! path only the plugin's environment can change (`SRIOV_CNI_NODE_CONFIG`: runtimes set the
//! environment, tenants cannot). A missing file means the defaults. The file and its folder must
//! belong to root and be writable by nobody else.
//!
//! A network config, its `args` or its `runtimeConfig` carrying one of these keys is refused
//! ([`refuse_node_keys`]).

use crate::spec::CniError;
use serde_json::{Map, Value};
use sriov::owned_dir::{Access, OwnedDir};
use std::path::{Component, Path, PathBuf};

/// Where the installer writes the node-local settings.
pub const DEFAULT_PATH: &str = "/etc/sriov-rs/cni.json";
/// The environment variable that names another file (tests, labs, benchmarks).
pub const PATH_ENV: &str = "SRIOV_CNI_NODE_CONFIG";

/// The node-local keys, with their defaults.
const KEYS: &[(&str, &str)] = &[
    ("sysfsRoot", "/sys"),
    ("stateDir", "/run/sriov-rs/cni"),
    ("poolConfig", "/etc/pcidp/config.json"),
    (
        "podResourcesSocket",
        "/var/lib/kubelet/pod-resources/kubelet.sock",
    ),
    ("deviceInfoDir", "/var/run/k8s.cni.cncf.io/devinfo"),
    ("logDir", "/var/log"),
    ("upstreamStateDir", "/var/lib/cni/sriov"),
    // The daemon's DRA state (`--dra-state-dir`): its records of prepared claims.
    ("draStateDir", sriov::dra_record::DEFAULT_DRA_STATE_DIR),
    // Not a path: MACs for attachments whose config names none; unset by default.
    ("macPrefix", ""),
];

/// The node-local settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where the settings came from (`None`: no file, defaults).
    pub source: Option<PathBuf>,
    /// `sysfsRoot`: sysfs (a lab's tree in tests).
    pub sysfs_root: PathBuf,
    /// `stateDir`: the per-VF records and locks.
    pub state_dir: PathBuf,
    /// `poolConfig`: the device plugin config naming the pools (`resourceName` without
    /// Kubernetes).
    pub pool_config: PathBuf,
    /// `podResourcesSocket`: kubelet's pod resources API.
    pub pod_resources_socket: PathBuf,
    /// `deviceInfoDir`: the device-information folder; `runtimeConfig.CNIDeviceInfoFile` must
    /// name a file in its `cni/` folder.
    pub device_info_dir: PathBuf,
    /// `logDir`: the only folder a network config's `logFile` may name a file in.
    pub log_dir: PathBuf,
    /// `upstreamStateDir`: upstream sriov-cni's data folder, whose attachments (made before the
    /// node switched) DEL, CHECK and GC take over ([`crate::upstream`]).
    pub upstream_state_dir: PathBuf,
    /// `draStateDir`: the node daemon's records of prepared DRA claims (a pod's DRA VF).
    pub dra_state_dir: PathBuf,
    /// `macPrefix`: attachments whose network config names no MAC get one from this prefix
    /// ([`sriov::platform_mac`]); `None`: their VF keeps its MAC.
    pub mac_prefix: Option<sriov::platform_mac::MacPrefix>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let d = |key: &str| {
            PathBuf::from(
                KEYS.iter()
                    .find(|(k, _)| *k == key)
                    .map_or("/", |(_, v)| *v),
            )
        };
        NodeConfig {
            source: None,
            sysfs_root: d("sysfsRoot"),
            state_dir: d("stateDir"),
            pool_config: d("poolConfig"),
            pod_resources_socket: d("podResourcesSocket"),
            device_info_dir: d("deviceInfoDir"),
            log_dir: d("logDir"),
            upstream_state_dir: d("upstreamStateDir"),
            dra_state_dir: d("draStateDir"),
            mac_prefix: None,
        }
    }
}

impl NodeConfig {
    /// Loads the file named by `SRIOV_CNI_NODE_CONFIG` (through `get_env`), else the default
    /// path; a missing file gives the defaults.
    pub fn load(get_env: impl Fn(&str) -> Option<String>) -> Result<NodeConfig, CniError> {
        let path = get_env(PATH_ENV)
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);
        let bad = |msg: String| CniError::config(format!("{} ({PATH_ENV}): {msg}", path.display()));
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(bad("not a file path".into()));
        };
        let text = match OwnedDir::open(dir, Access::Shared, false).and_then(|d| d.read(name)) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(NodeConfig::default()),
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => {
                return Ok(NodeConfig::default())
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let value: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let mut conf = NodeConfig::parse(&value).map_err(bad)?;
        conf.source = Some(path);
        Ok(conf)
    }

    /// Reads the settings object; every key must be known, every path absolute and the MAC
    /// prefix one of local unicast addresses.
    pub fn parse(value: &Value) -> Result<NodeConfig, String> {
        let Value::Object(obj) = value else {
            return Err("must be a JSON object".into());
        };
        let mut conf = NodeConfig::default();
        for (key, v) in obj {
            let Some(s) = v.as_str() else {
                return Err(format!("{key}: must be a string"));
            };
            if key == "macPrefix" {
                conf.mac_prefix = Some(s.parse().map_err(|e| format!("{key}: {e}"))?);
                continue;
            }
            let p = PathBuf::from(s);
            if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                return Err(format!(
                    "{key}: {s:?} must be an absolute path without '..'"
                ));
            }
            let slot = match key.as_str() {
                "sysfsRoot" => &mut conf.sysfs_root,
                "stateDir" => &mut conf.state_dir,
                "poolConfig" => &mut conf.pool_config,
                "podResourcesSocket" => &mut conf.pod_resources_socket,
                "deviceInfoDir" => &mut conf.device_info_dir,
                "logDir" => &mut conf.log_dir,
                "upstreamStateDir" => &mut conf.upstream_state_dir,
                "draStateDir" => &mut conf.dra_state_dir,
                other => {
                    return Err(format!(
                        "{other}: unknown key (known: {})",
                        KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    ))
                }
            };
            *slot = p;
        }
        Ok(conf)
    }

    /// The file these settings came from, for messages.
    pub fn describe(&self) -> String {
        self.source
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_PATH))
            .display()
            .to_string()
    }
}

/// Refuses a network config that carries a node-local key at its top level, in
/// `runtimeConfig` or anywhere in `args` (Multus passes a pod annotation's `cni-args` there):
/// code 7, naming the key and where it belongs.
pub fn refuse_node_keys(obj: &Map<String, Value>) -> Result<(), CniError> {
    fn find(obj: &Map<String, Value>, at: &str, depth: usize) -> Option<String> {
        for (key, value) in obj {
            if KEYS.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
                return Some(format!("{at}{key}"));
            }
            if let (Value::Object(inner), true) = (value, depth > 0) {
                if let Some(found) = find(inner, &format!("{at}{key}."), depth - 1) {
                    return Some(found);
                }
            }
        }
        None
    }
    let found = find(obj, "", 0)
        .or_else(|| match obj.get("runtimeConfig") {
            Some(Value::Object(rc)) => find(rc, "runtimeConfig.", 0),
            _ => None,
        })
        .or_else(|| match obj.get("args") {
            Some(Value::Object(args)) => find(args, "args.", 3),
            _ => None,
        });
    match found {
        None => Ok(()),
        Some(key) => Err(CniError::config(format!(
            "{}: a node-local setting, never taken from a network config; set it in {DEFAULT_PATH} on the node",
            crate::logging::escaped(&key)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_overrides() {
        let d = NodeConfig::default();
        assert_eq!(d.sysfs_root, PathBuf::from("/sys"));
        assert_eq!(d.log_dir, PathBuf::from("/var/log"));
        let c = NodeConfig::parse(&json!({"sysfsRoot": "/run/lab/sys", "stateDir": "/s",
                                          "macPrefix": "0a:58:56"}))
        .unwrap();
        assert_eq!(c.mac_prefix.unwrap().to_string(), "0a:58:56");
        assert_eq!(c.sysfs_root, PathBuf::from("/run/lab/sys"));
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert_eq!(c.pool_config, d.pool_config);
        for (bad, want) in [
            (
                json!({"stateDir": "rel"}),
                "stateDir: \"rel\" must be an absolute",
            ),
            (json!({"stateDir": "/a/../b"}), "without '..'"),
            (json!({"stateDir": 1}), "stateDir: must be a string"),
            (json!({"statedir": "/x"}), "statedir: unknown key"),
            (
                json!({"macPrefix": "00:50:56"}),
                "macPrefix: 00:50:56 is not locally administered",
            ),
            (json!([]), "must be a JSON object"),
        ] {
            let e = NodeConfig::parse(&bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn the_file_comes_from_the_environment_only_and_must_be_roots() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cni.json");
        let env = |p: &Path| {
            let p = p.display().to_string();
            move |k: &str| (k == PATH_ENV).then(|| p.clone())
        };
        assert_eq!(
            NodeConfig::load(env(&file)).unwrap(),
            NodeConfig::default(),
            "missing file: defaults"
        );
        std::fs::write(&file, r#"{"stateDir": "/run/x"}"#).unwrap();
        let c = NodeConfig::load(env(&file)).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/run/x"));
        assert_eq!(c.source.as_deref(), Some(file.as_path()));
        std::fs::write(&file, r#"{"stateDir": 5}"#).unwrap();
        let e = NodeConfig::load(env(&file)).unwrap_err();
        assert_eq!(e.code, crate::spec::ErrorCode::InvalidConfig);
        assert!(
            e.msg.contains("cni.json (SRIOV_CNI_NODE_CONFIG): stateDir"),
            "{e}"
        );
        // A symlink in place of the file is refused.
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &file).unwrap();
        let e = NodeConfig::load(env(&file)).unwrap_err();
        assert!(e.msg.contains("symlink"), "{e}");
    }

    #[test]
    fn node_keys_in_a_network_config_are_refused_wherever_they_are() {
        for (conf, key) in [
            (json!({"stateDir": "/tmp"}), "stateDir"),
            (json!({"SysfsRoot": "/tmp"}), "SysfsRoot"),
            (
                json!({"runtimeConfig": {"poolConfig": "/etc/shadow"}}),
                "runtimeConfig.poolConfig",
            ),
            (json!({"args": {"cni": {"logDir": "/"}}}), "args.cni.logDir"),
            (
                json!({"args": {"podResourcesSocket": "/x"}}),
                "args.podResourcesSocket",
            ),
            (
                json!({"runtimeConfig": {"deviceInfoDir": "/etc"}}),
                "runtimeConfig.deviceInfoDir",
            ),
        ] {
            let e = refuse_node_keys(conf.as_object().unwrap()).unwrap_err();
            assert_eq!(e.code, crate::spec::ErrorCode::InvalidConfig);
            assert!(
                e.msg.starts_with(&format!("{key}: a node-local setting")),
                "{conf}: {e}"
            );
            assert!(e.msg.contains(DEFAULT_PATH), "{e}");
        }
        assert!(refuse_node_keys(
            json!({"cniVersion": "1.0.0", "args": {"cni": {"ips": ["10.0.0.1"]}}, "logFile": "/var/log/x"})
                .as_object()
                .unwrap()
        )
        .is_ok());
    }
}
