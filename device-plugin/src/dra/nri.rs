//! NRI attach (`--nri`): the daemon as a containerd NRI plugin gives each pod the VFs its DRA
//! claims prepared, without Multus.
//!
//! On `RunPodSandbox` (the pod's network namespace exists, its containers have not started) the
//! pod's prepared VFs are found in the claim records by the pod's UID, and each one is attached
//! by running our CNI plugin (`--cni-plugin`, ADD) with a network config made from the device's
//! merged `VfConfig`: `deviceID` (the VF), `vlan`, `vlanQoS`, `mac`, `mtu`, `mtuLock`,
//! `spoofchk`, `trust`, `ipam`; the interface is `ifName`, else `net1`, `net2`... in the order
//! of the claims. That is the CNI's own code path, with its record written before anything
//! changes, its rollback and its IPAM, so a VF attached this way is given back exactly as one a
//! NAD attached. A failed ADD undoes the pod's earlier ADDs and fails the sandbox. Then the
//! interface (name, IPs, MAC) is written to each claim's `status.devices[].networkData` through
//! the sidecar's claim service.
//!
//! On `StopPodSandbox` (and again, idempotently, on `RemovePodSandbox`) the same attachments get
//! a CNI DEL, which restores the VF and releases its IPAM, and `networkData` is removed. VFs of
//! `driver: vfio-pci` configs have no netdev and are skipped.
//!
//! Every value that reaches the CNI's environment is checked first: the sandbox ID as a CNI
//! container ID, the pod's name and namespace without `;`, `=` or control characters.

use super::claims;
use super::Dra;
use serde_json::{json, Map, Value};
use sriov::dra_claim::ClaimRef;
use sriov::dra_record::PreparedDevice;
use sriov_proto::nri::api::PodSandbox;
use sriov_proto::nri::plugin::{self, PluginOptions, PodEvents, RuntimeInfo};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How the daemon runs the CNI plugin.
#[derive(Debug, Clone)]
pub struct CniRunner {
    /// Our CNI plugin's binary (`sriov`).
    pub plugin: PathBuf,
    /// `CNI_PATH`: where the IPAM plugins are.
    pub cni_path: String,
    /// The node's network namespace when it is not the daemon's own (`--netns`): the plugin
    /// runs there.
    pub node_netns: Option<PathBuf>,
}

/// The NRI plugin's settings (`--nri-*`).
#[derive(Debug, Clone)]
pub struct NriOptions {
    pub socket: PathBuf,
    pub name: String,
    pub index: String,
    pub cni: CniRunner,
}

/// One VF to attach to a pod.
#[derive(Debug, Clone, PartialEq)]
struct Attachment {
    claim: ClaimRef,
    device: PreparedDevice,
    ifname: String,
}

/// The pod's identity as the CNI sees it (`CNI_CONTAINERID`, `CNI_ARGS`).
struct PodIds<'a> {
    sandbox: &'a str,
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
}

impl<'a> PodIds<'a> {
    fn of(pod: &'a PodSandbox) -> Result<PodIds<'a>, String> {
        let sandbox = pod.id.as_str();
        let id_ok = !sandbox.is_empty()
            && sandbox.len() <= 256
            && sandbox
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !id_ok {
            return Err(format!(
                "pod sandbox ID {sandbox:?} is not a CNI container ID"
            ));
        }
        for (what, v) in [
            ("name", &pod.name),
            ("namespace", &pod.namespace),
            ("uid", &pod.uid),
        ] {
            if v.len() > 253 || v.chars().any(|c| c.is_control() || c == ';' || c == '=') {
                return Err(format!("pod {what} {v:?}: not a Kubernetes name"));
            }
        }
        Ok(PodIds {
            sandbox,
            name: &pod.name,
            namespace: &pod.namespace,
            uid: &pod.uid,
        })
    }

    fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.sandbox, self.uid
        )
    }
}

/// The network config of one attachment: the CNI's keys from the device's `VfConfig`.
fn net_conf(device: &PreparedDevice) -> Value {
    let c = &device.config;
    let mut conf = Map::new();
    conf.insert("cniVersion".into(), json!("1.0.0"));
    conf.insert("name".into(), json!("sriov-dra"));
    conf.insert("type".into(), json!("sriov"));
    conf.insert("deviceID".into(), json!(device.pci));
    let mut put = |key: &str, v: Option<Value>| {
        if let Some(v) = v {
            conf.insert(key.into(), v);
        }
    };
    put("vlan", c.vlan.map(|v| json!(v)));
    put("vlanQoS", c.vlan_qos.map(|v| json!(v)));
    put("mac", c.mac.as_ref().map(|v| json!(v)));
    put("mtu", c.mtu.map(|v| json!(v)));
    put("mtuLock", c.mtu_lock.map(|v| json!(v)));
    put("spoofchk", c.spoofchk.as_ref().map(|v| json!(v)));
    put("trust", c.trust.as_ref().map(|v| json!(v)));
    put("ipam", c.ipam.clone());
    Value::Object(conf)
}

/// The pod's attachments, in a stable order (claim name, request, device), interface names
/// given: `ifName`, else the first free `net<N>`.
fn plan(found: Vec<(ClaimRef, PreparedDevice)>) -> Vec<Attachment> {
    let mut found: Vec<_> = found
        .into_iter()
        .filter(|(_, d)| !d.config.wants_vfio())
        .collect();
    found.sort_by(|a, b| {
        (&a.0.namespace, &a.0.name, &a.1.request, &a.1.device).cmp(&(
            &b.0.namespace,
            &b.0.name,
            &b.1.request,
            &b.1.device,
        ))
    });
    let taken: Vec<String> = found
        .iter()
        .filter_map(|(_, d)| d.config.if_name.clone())
        .collect();
    let mut next = 1;
    found
        .into_iter()
        .map(|(claim, device)| {
            let ifname = match &device.config.if_name {
                Some(n) => n.clone(),
                None => loop {
                    let n = format!("net{next}");
                    next += 1;
                    if !taken.contains(&n) {
                        break n;
                    }
                },
            };
            Attachment {
                claim,
                device,
                ifname,
            }
        })
        .collect()
}

/// `status.devices[].networkData` from a CNI result: the interface's name, its IPs (CIDR) and
/// MAC.
fn network_data(result: &Value, ifname: &str) -> Value {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let index = interfaces.and_then(|l| {
        l.iter().position(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && i.get("sandbox").is_some_and(|s| s.as_str() != Some(""))
        })
    });
    let mac = index
        .and_then(|i| interfaces?.get(i)?.get("mac")?.as_str())
        .map(str::to_string);
    let ips: Vec<Value> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|ip| {
                    let at = ip.get("interface").and_then(Value::as_u64);
                    at.is_none() || at == index.map(|i| i as u64)
                })
                .filter_map(|ip| ip.get("address").cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut data = json!({"interfaceName": ifname});
    if !ips.is_empty() {
        data["ips"] = Value::Array(ips);
    }
    if let Some(mac) = mac {
        data["hardwareAddress"] = json!(mac);
    }
    data
}

impl CniRunner {
    /// Runs the plugin once, in the node's network namespace; its result (ADD) or `Null`.
    fn call(
        &self,
        command: &str,
        pod: &PodIds,
        netns: &str,
        a: &Attachment,
    ) -> Result<Value, String> {
        match &self.node_netns {
            None => self.exec(command, pod, netns, a),
            // A child starts in the network namespace of the thread that forks it.
            Some(node) => sriov::netlink::Netns::open(node)
                .and_then(|ns| ns.run_in(|| self.exec(command, pod, netns, a)))
                .map_err(|e| format!("the node's network namespace: {e}"))?,
        }
    }

    fn exec(
        &self,
        command: &str,
        pod: &PodIds,
        netns: &str,
        a: &Attachment,
    ) -> Result<Value, String> {
        let conf = net_conf(&a.device).to_string();
        let mut cmd = Command::new(&self.plugin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.sandbox)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_ARGS", pod.cni_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.plugin.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that fails before reading its config closes stdin: its output says why.
            let _ = stdin.write_all(conf.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("running {}: {e}", self.plugin.display()))?;
        let what = format!("CNI {command} of VF {} as {}", a.device.pci, a.ifname);
        if !out.status.success() {
            // The CNI's error JSON: its msg and details, else its stderr.
            let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let msg = match (err.get("msg").and_then(Value::as_str), err.get("details")) {
                (Some(m), Some(Value::String(d))) if !d.is_empty() => format!("{m}: {d}"),
                (Some(m), _) => m.to_string(),
                (None, _) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            };
            return Err(format!("{what}: {msg}"));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{what}: unreadable result: {e}"))
    }
}

/// The NRI plugin's event handler.
pub struct NriAttach {
    dra: Arc<Dra>,
    cni: CniRunner,
    /// One claim status report at a time (each rewrites all of a claim's device entries).
    reports: tokio::sync::Mutex<()>,
}

impl NriAttach {
    pub fn new(dra: Arc<Dra>, cni: CniRunner) -> NriAttach {
        NriAttach {
            dra,
            cni,
            reports: tokio::sync::Mutex::new(()),
        }
    }

    fn attachments(&self, pod: &PodSandbox) -> Result<Vec<Attachment>, String> {
        let found = self
            .dra
            .records
            .devices_for_pod(&pod.uid, None, None)
            .map_err(|e| e.to_string())?;
        Ok(plan(found))
    }

    /// Runs `command` for each attachment on a blocking thread, in order; stops at the first
    /// failed ADD (DELs go on and collect errors).
    async fn run_cni(
        &self,
        command: &'static str,
        pod: &PodSandbox,
        netns: String,
        plan: Vec<Attachment>,
    ) -> Vec<(Attachment, Result<Value, String>)> {
        let cni = self.cni.clone();
        let pod = pod.clone();
        tokio::task::spawn_blocking(move || {
            let ids = match PodIds::of(&pod) {
                Ok(ids) => ids,
                Err(e) => return plan.into_iter().map(|a| (a, Err(e.clone()))).collect(),
            };
            let mut out = Vec::new();
            for a in plan {
                let r = cni.call(command, &ids, &netns, &a);
                let failed = r.is_err();
                out.push((a, r));
                if failed && command == "ADD" {
                    break;
                }
            }
            out
        })
        .await
        .unwrap_or_default()
    }

    /// Writes (or, with `None`, removes) each attachment's `networkData` in its claim's status,
    /// keeping every other field of our device entries as the claim has it.
    async fn report(&self, done: &[(Attachment, Option<Value>)]) {
        let _one = self.reports.lock().await;
        let mut claims: Vec<&ClaimRef> = done.iter().map(|(a, _)| &a.claim).collect();
        claims.dedup();
        for claim in claims {
            if let Err(e) = self.report_claim(claim, done).await {
                tracing::warn!(
                    claim = %claim.label(),
                    "networkData not written to the claim's status: {e}"
                );
            }
        }
    }

    async fn report_claim(
        &self,
        claim: &ClaimRef,
        done: &[(Attachment, Option<Value>)],
    ) -> Result<(), String> {
        let socket = &self.dra.claims_socket;
        let status = claims::fetch_status(socket, claim).await?;
        let record = self
            .dra
            .records
            .read(&claim.uid)
            .map_err(|e| e.to_string())?
            .ok_or("the claim is no longer prepared")?;
        let existing = status
            .get("devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let driver = &self.dra.driver;
        let prepared = claims::device_statuses(&status, driver, None, &claims::rfc3339_now());
        let entries: Vec<Value> = record
            .devices
            .iter()
            .map(|d| {
                let same = |e: &&Value| {
                    e.get("driver").and_then(Value::as_str) == Some(driver)
                        && e.get("pool").and_then(Value::as_str) == Some(&d.pool)
                        && e.get("device").and_then(Value::as_str) == Some(&d.device)
                };
                let mut entry = existing
                    .iter()
                    .find(same)
                    .or_else(|| prepared.iter().find(same))
                    .cloned()
                    .unwrap_or_else(
                        || json!({"driver": driver, "pool": d.pool, "device": d.device}),
                    );
                let ours = done
                    .iter()
                    .find(|(a, _)| a.claim.uid == claim.uid && a.device.device == d.device);
                if let (Some((_, data)), Some(obj)) = (ours, entry.as_object_mut()) {
                    match data {
                        Some(data) => obj.insert("networkData".into(), data.clone()),
                        None => obj.remove("networkData"),
                    };
                }
                entry
            })
            .collect();
        claims::report(socket, claim, entries).await
    }
}

#[tonic::async_trait]
impl PodEvents for NriAttach {
    async fn configured(&self, runtime: RuntimeInfo) {
        tracing::info!(
            runtime = %runtime.runtime_name,
            version = %runtime.runtime_version,
            "NRI: registered with the runtime"
        );
    }

    async fn run_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        let plan = self.attachments(&pod)?;
        if plan.is_empty() {
            return Ok(());
        }
        let netns = pod
            .network_namespace()
            .ok_or("the pod has DRA VFs to attach but no network namespace (host network?)")?
            .to_string();
        let results = self.run_cni("ADD", &pod, netns.clone(), plan).await;
        if let Some((a, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
            // Undo the ones that went in, newest first.
            let attached: Vec<Attachment> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(a, _)| a.clone())
                .rev()
                .collect();
            for (b, undo) in self.run_cni("DEL", &pod, netns, attached).await {
                if let Err(u) = undo {
                    tracing::error!(vf = %b.device.pci, "NRI: rollback: {u}");
                }
            }
            tracing::error!(pod = %pod.name, namespace = %pod.namespace, vf = %a.device.pci, "NRI: {e}");
            return Err(format!("sriov-rs: {e}"));
        }
        let done: Vec<(Attachment, Option<Value>)> = results
            .into_iter()
            .map(|(a, r)| {
                let data = network_data(r.as_ref().unwrap_or(&Value::Null), &a.ifname);
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, vf = %a.device.pci,
                    ifname = %a.ifname, claim = %a.claim.label(), "NRI: VF attached");
                (a, Some(data))
            })
            .collect();
        self.report(&done).await;
        Ok(())
    }

    async fn stop_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        self.detach(&pod).await
    }

    async fn remove_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        // A DEL is idempotent: this one finishes what a failed stop left.
        self.detach(&pod).await
    }
}

impl NriAttach {
    async fn detach(&self, pod: &PodSandbox) -> Result<(), String> {
        let plan = self.attachments(pod)?;
        if plan.is_empty() {
            return Ok(());
        }
        let netns = pod.network_namespace().unwrap_or("").to_string();
        let results = self.run_cni("DEL", pod, netns, plan).await;
        let errors: Vec<String> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().err().cloned())
            .collect();
        let done: Vec<(Attachment, Option<Value>)> = results
            .into_iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(a, _)| {
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, vf = %a.device.pci,
                    ifname = %a.ifname, claim = %a.claim.label(), "NRI: VF given back");
                (a, None)
            })
            .collect();
        self.report(&done).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("sriov-rs: {}", errors.join("; ")))
        }
    }
}

/// Serves the runtime's NRI socket until the daemon stops: registers, and connects again with
/// backoff (250 ms doubling to 30 s) whenever the runtime is not there or goes away.
pub async fn serve(opts: NriOptions, attach: Arc<NriAttach>) {
    let mut plugin_opts = PluginOptions::new(opts.name.clone(), opts.index.clone());
    plugin_opts.socket = opts.socket.clone();
    let mut wait = Duration::from_millis(250);
    loop {
        let started = std::time::Instant::now();
        let events: Arc<dyn PodEvents> = attach.clone();
        let ended = plugin::run(&plugin_opts, events).await;
        if started.elapsed() > Duration::from_secs(30) {
            wait = Duration::from_millis(250);
        }
        match ended {
            Err(plugin::NriError::Options(e)) => {
                tracing::error!("NRI: {e}; not serving NRI");
                return;
            }
            Err(e) => tracing::warn!("NRI: {e}; connecting again in {wait:?}"),
            Ok(()) => tracing::info!("NRI: the runtime ended the connection"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sriov::dra_claim::VfConfig;

    fn found(claim: &str, device: &str, config: VfConfig) -> (ClaimRef, PreparedDevice) {
        (
            ClaimRef {
                namespace: "default".into(),
                name: claim.into(),
                uid: format!("uid-{claim}"),
            },
            PreparedDevice {
                request: "vf".into(),
                pool: "node1".into(),
                device: device.into(),
                pci: "0000:3b:02.0".into(),
                resource_name: "intel.com/net".into(),
                original_driver: None,
                original_driver_override: None,
                config,
                cdi_device_id: String::new(),
            },
        )
    }

    #[test]
    fn plans_names_interfaces_and_skips_vfio() {
        let named = VfConfig {
            if_name: Some("net1".into()),
            ..Default::default()
        };
        let vfio = VfConfig {
            driver: Some("vfio-pci".into()),
            ..Default::default()
        };
        let p = plan(vec![
            found("b", "d2", VfConfig::default()),
            found("a", "d1", VfConfig::default()),
            found("c", "d3", named),
            found("a", "d0", vfio),
        ]);
        let names: Vec<(&str, &str)> = p
            .iter()
            .map(|a| (a.device.device.as_str(), a.ifname.as_str()))
            .collect();
        assert_eq!(names, [("d1", "net2"), ("d2", "net3"), ("d3", "net1")]);
    }

    #[test]
    fn net_conf_carries_the_vf_config() {
        let (_, mut d) = found("a", "d1", VfConfig::default());
        d.config = VfConfig {
            vlan: Some(10),
            mtu: Some(1400),
            mtu_lock: Some(true),
            mac: Some("02:00:00:00:00:01".into()),
            ipam: Some(json!({"type": "static"})),
            ..Default::default()
        };
        let c = net_conf(&d);
        assert_eq!(c["deviceID"], "0000:3b:02.0");
        assert_eq!(c["type"], "sriov");
        assert_eq!(
            (c["vlan"].clone(), c["mtu"].clone()),
            (json!(10), json!(1400))
        );
        assert_eq!(c["mtuLock"], true);
        assert_eq!(c["ipam"]["type"], "static");
        assert!(c.get("trust").is_none());
    }

    #[test]
    fn network_data_from_a_result() {
        let r = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.1.0.5/24", "interface": 0}]});
        assert_eq!(
            network_data(&r, "net1"),
            json!({"interfaceName": "net1", "ips": ["10.1.0.5/24"], "hardwareAddress": "02:00:00:00:00:01"})
        );
        assert_eq!(
            network_data(&Value::Null, "net1"),
            json!({"interfaceName": "net1"})
        );
    }

    #[test]
    fn pod_ids_are_checked() {
        let mut pod = PodSandbox {
            id: "abc123".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u-1".into(),
            ..Default::default()
        };
        assert_eq!(
            PodIds::of(&pod).unwrap().cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"
        );
        pod.name = "web;K8S_POD_UID=x".into();
        assert!(PodIds::of(&pod).is_err());
        pod.name = "web".into();
        pod.id = "../x".into();
        assert!(PodIds::of(&pod).is_err());
    }
}
