//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//! `CNI_PATH`. Every mistake names its variable (error code 4).

use crate::netconf::{parse_mac, MacAddr};
use crate::spec::{CniError, Command, ErrorCode};
use std::path::PathBuf;

/// `CNI_ARGS` (`K=V;K=V`), with the keys we know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ignore_unknown: bool,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// `MAC=` (podman `--mac-address`): wins over `runtimeConfig.mac` and `mac`.
    pub mac: Option<MacAddr>,
    /// `IP=` (podman `--ip`): validated here, honoured by the IPAM plugin, which reads the same
    /// `CNI_ARGS`.
    pub ips: Vec<String>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let bad = |msg: String| CniError::new(ErrorCode::InvalidEnv, format!("CNI_ARGS: {msg}"));
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(bad(format!("{pair:?} is not KEY=VALUE")));
            };
            match key {
                "IgnoreUnknown" => {
                    args.ignore_unknown =
                        matches!(value.to_ascii_lowercase().as_str(), "1" | "true")
                }
                "K8S_POD_NAME" => args.pod_name = Some(value.to_string()),
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value.to_string()),
                "K8S_POD_INFRA_CONTAINER_ID" => {
                    args.pod_infra_container_id = Some(value.to_string())
                }
                "K8S_POD_UID" => args.pod_uid = Some(value.to_string()),
                "MAC" => {
                    args.mac = Some(
                        parse_mac("CNI_ARGS MAC", value)
                            .map_err(|e| CniError::new(ErrorCode::InvalidEnv, e.msg))?,
                    )
                }
                "IP" => {
                    for ip in value.split(',') {
                        let addr = ip.split_once('/').map_or(ip, |(a, _)| a);
                        if addr.parse::<std::net::IpAddr>().is_err() {
                            return Err(bad(format!("IP: {ip:?} is not an IP address")));
                        }
                        args.ips.push(ip.to_string());
                    }
                }
                other => unknown.push(other.to_string()),
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            return Err(bad(format!(
                "unknown key(s) {} (add IgnoreUnknown=1 to pass them through)",
                unknown.join(", ")
            )));
        }
        Ok(args)
    }

    /// Pod name and namespace, when both are given (Kubernetes runtimes).
    pub fn pod(&self) -> Option<(&str, &str)> {
        match (&self.pod_name, &self.pod_namespace) {
            (Some(n), Some(ns)) if !n.is_empty() && !ns.is_empty() => Some((n, ns)),
            _ => None,
        }
    }
}

/// The environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// `None` when empty or unset (allowed for DEL: containerd's second DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

fn invalid(var: &str, msg: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::InvalidEnv, format!("{var}: {msg}"))
}

/// Container IDs as the spec allows them: alphanumerics plus `_.-`, starting alphanumeric.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "CNI_CONTAINERID",
            format!("{id:?} must be alphanumeric (plus _ . -)"),
        ))
    }
}

impl CniEnv {
    /// Reads and checks the variables `command` needs, through `get` (the process environment
    /// in the binary, a map in tests).
    pub fn load(
        command: Command,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<CniEnv, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let require = |name: &str| -> Result<String, CniError> {
            var(name).ok_or_else(|| invalid(name, format!("is required for {command}")))
        };
        let (container_id, ifname) = if per_attachment {
            let id = require("CNI_CONTAINERID")?;
            check_container_id(&id)?;
            let ifname = require("CNI_IFNAME")?;
            sriov::names::validate_ifname(&ifname).map_err(|e| invalid("CNI_IFNAME", e))?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        let netns = match command {
            Command::Add | Command::Check => {
                let p = PathBuf::from(require("CNI_NETNS")?);
                if !p.is_absolute() {
                    return Err(invalid(
                        "CNI_NETNS",
                        format!("{} is not an absolute path", p.display()),
                    ));
                }
                Some(p)
            }
            _ => var("CNI_NETNS").map(PathBuf::from),
        };
        let args = CniArgs::parse(&var("CNI_ARGS").unwrap_or_default())?;
        let path = var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(command: Command, vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::load(command, |k| map.get(k).cloned())
    }

    #[test]
    fn podman_and_containerd_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAME=web;MAC=02:00:00:00:00:0A;IP=10.0.0.5;Foo=bar",
        )
        .unwrap();
        assert_eq!(a.pod_name.as_deref(), Some("web"));
        assert_eq!(a.pod(), None);
        assert_eq!(a.mac.unwrap().to_string(), "02:00:00:00:00:0a");
        assert_eq!(a.ips, ["10.0.0.5"]);
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u").unwrap();
        assert_eq!(a.pod(), Some(("p", "ns")));
    }

    #[test]
    fn bad_args_name_the_variable() {
        for (raw, want) in [
            ("Foo=bar", "CNI_ARGS: unknown key(s) Foo"),
            ("MAC=zz", "CNI_ARGS MAC"),
            ("IP=10.0.0.300", "CNI_ARGS: IP"),
            ("novalue", "CNI_ARGS: \"novalue\""),
        ] {
            let e = CniArgs::parse(raw).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnv);
            assert!(e.msg.contains(want), "{raw}: {}", e.msg);
        }
    }

    #[test]
    fn required_variables() {
        let base = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        let env = load(Command::Add, &base).unwrap();
        assert_eq!(
            env.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/x"))
        );
        let e = load(Command::Add, &base[..2]).unwrap_err();
        assert!(e.msg.starts_with("CNI_NETNS"), "{}", e.msg);
        // containerd's second DEL comes without a netns.
        let env = load(
            Command::Del,
            &[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "net1"),
                ("CNI_NETNS", ""),
            ],
        )
        .unwrap();
        assert_eq!(env.netns, None);
        let e = load(
            Command::Add,
            &[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "averyveryverylongname"),
                ("CNI_NETNS", "/x"),
            ],
        )
        .unwrap_err();
        assert!(e.msg.starts_with("CNI_IFNAME"), "{}", e.msg);
        let e = load(
            Command::Add,
            &[
                ("CNI_CONTAINERID", "../x"),
                ("CNI_IFNAME", "n"),
                ("CNI_NETNS", "/x"),
            ],
        )
        .unwrap_err();
        assert!(e.msg.starts_with("CNI_CONTAINERID"), "{}", e.msg);
        assert!(load(Command::Status, &[]).is_ok());
    }
}
