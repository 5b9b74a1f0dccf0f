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
//! When a `VfConfig` names a NetworkAttachmentDefinition (`netAttachDefName`, in
//! `netAttachDefNamespace`, else the claim's namespace), its `spec.config`, read through the
//! sidecar's claim service (the daemon holds no API credentials), is the base of that config:
//! a single plugin config of `type: sriov`, or a conflist whose only plugin is `sriov` (its
//! `cniVersion` and `name` from the list; a chain with other plugins is refused, as the attach
//! would not run them). `deviceID`, `resourceName` and `claimName` are the claim's to decide
//! and dropped from it; the `VfConfig`'s fields override the NAD's. The NAD is hostile input:
//! at most [`MAX_NAD_CONFIG`] bytes, and everything in it goes to our CNI, which refuses
//! node-local keys and checks every field. A missing NAD or a config that is not one of the
//! above fails the sandbox before any VF is touched, naming the NAD.
//!
//! On `StopPodSandbox` (and again, idempotently, on `RemovePodSandbox`) the same attachments get
//! a CNI DEL, which restores the VF and releases its IPAM, and `networkData` is removed. The DEL
//! gets the config the ADD got (as CNI requires, so IPAM releases what it gave even when the NAD
//! changed or went away): it is kept in `<dra-state-dir>/nri/<sandbox>@<ifname>.json`, written
//! before the ADD, removed after the DEL at `RemovePodSandbox` (or at the runtime's next
//! `Synchronize` when the sandbox went while the daemon was away). VFs of `driver: vfio-pci`
//! configs have no netdev and are skipped.
//!
//! Every value that reaches the CNI's environment is checked first: the sandbox ID as a CNI
//! container ID, the pod's name and namespace without `;`, `=` or control characters.

use super::claims;
use super::Dra;
use serde_json::{json, Map, Value};
use sriov::dra_claim::ClaimRef;
use sriov::dra_record::PreparedDevice;
use sriov::owned_dir::{Access, OwnedDir};
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

pub use sriov::dra_claim::MAX_NAD_CONFIG;

/// One VF to attach to a pod.
#[derive(Debug, Clone, PartialEq)]
struct Attachment {
    claim: ClaimRef,
    device: PreparedDevice,
    ifname: String,
    /// The network config its CNI calls get (filled before they run).
    conf: Value,
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

/// The plugin config a NAD's `spec.config` gives the attach (`nad` names it in errors): a
/// single `sriov` config, or a conflist whose only plugin is `sriov`, with the list's
/// `cniVersion` and `name`.
fn nad_base(nad: &str, config: &str) -> Result<Map<String, Value>, String> {
    let err = |why: String| format!("NetworkAttachmentDefinition {nad}: {why}");
    if config.len() > MAX_NAD_CONFIG {
        return Err(err(format!(
            "spec.config is longer than {MAX_NAD_CONFIG} bytes"
        )));
    }
    let v: Value =
        serde_json::from_str(config).map_err(|e| err(format!("spec.config is not JSON: {e}")))?;
    let Value::Object(mut top) = v else {
        return Err(err("spec.config is not a JSON object".into()));
    };
    let mut plugin = match top.remove("plugins") {
        None => top,
        Some(Value::Array(plugins)) => {
            let types: Vec<String> = plugins
                .iter()
                .map(|p| match p.get("type") {
                    Some(Value::String(t)) => t.clone(),
                    _ => "(no type)".into(),
                })
                .collect();
            let [Value::Object(only)] = plugins.as_slice() else {
                return Err(err(format!(
                    "its conflist has the plugins {types:?}: the NRI attach runs only the sriov plugin, so a conflist must hold just that one"
                )));
            };
            let mut plugin = only.clone();
            for key in ["cniVersion", "name"] {
                if let Some(v) = top.get(key) {
                    plugin.insert(key.into(), v.clone());
                }
            }
            plugin
        }
        Some(_) => return Err(err("\"plugins\" is not a list".into())),
    };
    match plugin.get("type") {
        Some(Value::String(t)) if t == "sriov" => {}
        other => {
            return Err(err(format!(
                "its plugin type is {}, not \"sriov\"",
                other.map_or("missing".to_string(), Value::to_string)
            )))
        }
    }
    // The claim decides which VF.
    for key in ["deviceID", "resourceName", "claimName"] {
        plugin.remove(key);
    }
    Ok(plugin)
}

/// The network config of one attachment: the NAD's config (`base`) if the `VfConfig` names one,
/// with the CNI's keys from the device's `VfConfig` over it.
fn net_conf(device: &PreparedDevice, base: Option<Map<String, Value>>) -> Value {
    let c = &device.config;
    let mut conf = base.unwrap_or_default();
    conf.entry("cniVersion").or_insert_with(|| json!("1.0.0"));
    conf.entry("name").or_insert_with(|| json!("sriov-dra"));
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

/// The network config the NRI attach gives the CNI for `device` of `claim`: the NAD its
/// `VfConfig` names (`netAttachDefNamespace`, else the claim's namespace), read now through the
/// claim service on `socket`, under the `VfConfig`; without a NAD the `VfConfig` alone. An error
/// names the claim and the NAD.
pub async fn attach_config(
    socket: &std::path::Path,
    claim: &ClaimRef,
    device: &PreparedDevice,
) -> Result<Value, String> {
    let c = &device.config;
    let Some(name) = &c.net_attach_def_name else {
        return Ok(net_conf(device, None));
    };
    let namespace = c
        .net_attach_def_namespace
        .as_ref()
        .unwrap_or(&claim.namespace);
    let label = format!("{namespace}/{name}");
    let why = |e: String| format!("netAttachDefName of claim {}: {e}", claim.label());
    let config = claims::fetch_nad(socket, namespace, name)
        .await
        .map_err(|e| {
            if e.contains(&label) {
                why(e)
            } else {
                why(format!("NetworkAttachmentDefinition {label}: {e}"))
            }
        })?;
    let base = nad_base(&label, &config).map_err(why)?;
    Ok(net_conf(device, Some(base)))
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
                conf: Value::Null,
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
        let conf = a.conf.to_string();
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
    /// `<dra-state-dir>/nri`: each attachment's config from its ADD until its last DEL.
    confs: Option<OwnedDir>,
}

/// The file keeping an attachment's config: `<sandbox>@<ifname>.json` (both checked names; a
/// sandbox ID holds no `@`, so the sandbox of a file is the part before the first one).
fn conf_file(sandbox: &str, a: &Attachment) -> String {
    format!("{sandbox}@{}.json", a.ifname)
}

/// The sandbox a kept config belongs to (`None`: not one of ours).
fn conf_sandbox(file: &str) -> Option<&str> {
    file.strip_suffix(".json")?.split_once('@').map(|(s, _)| s)
}

/// The kept configs of sandboxes the runtime no longer has (removed while the daemon was away:
/// no RemovePodSandbox will come for them).
fn stale_confs(files: Vec<String>, live: &std::collections::HashSet<&str>) -> Vec<String> {
    files
        .into_iter()
        .filter(|f| conf_sandbox(f).is_some_and(|s| !live.contains(s)))
        .collect()
}

impl NriAttach {
    pub fn new(dra: Arc<Dra>, cni: CniRunner) -> NriAttach {
        let confs = dra
            .records
            .path()
            .parent()
            .ok_or_else(|| "the DRA state folder has no parent".to_string())
            .and_then(|top| {
                OwnedDir::open(top, Access::Private, true)
                    .and_then(|d| d.subdir("nri", Access::Private, true))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| {
                tracing::error!(
                    "NRI: cannot keep the attachments' configs ({e}): a DEL gets a config built again"
                )
            })
            .ok();
        NriAttach {
            dra,
            cni,
            reports: tokio::sync::Mutex::new(()),
            confs,
        }
    }

    /// Each attachment's config ([`attach_config`]); the first that cannot be had is the error.
    async fn build_confs(&self, plan: &mut [Attachment]) -> Result<(), String> {
        for a in plan.iter_mut() {
            a.conf = attach_config(&self.dra.claims_socket, &a.claim, &a.device).await?;
        }
        Ok(())
    }

    /// The configs the pod's ADDs got, where kept; the others built again (a NAD that cannot
    /// be read any more leaves the `VfConfig` alone: the DEL still gives the VF back).
    async fn kept_confs(&self, sandbox: &str, plan: &mut [Attachment]) {
        for a in plan.iter_mut() {
            let kept = self.confs.as_ref().and_then(|d| {
                let bytes = d.read(&conf_file(sandbox, a)).ok()??;
                serde_json::from_slice::<Value>(&bytes).ok()
            });
            a.conf = match kept {
                Some(c) => c,
                None => {
                    let mut one = [a.clone()];
                    match self.build_confs(&mut one).await {
                        Ok(()) => one[0].conf.clone(),
                        Err(e) => {
                            tracing::warn!(vf = %a.device.pci, "NRI: DEL without the NAD's config: {e}");
                            net_conf(&a.device, None)
                        }
                    }
                }
            };
        }
    }

    /// Keeps each attachment's config for its DELs.
    fn keep_confs(&self, sandbox: &str, plan: &[Attachment]) -> Result<(), String> {
        let Some(dir) = &self.confs else {
            return Ok(());
        };
        for a in plan {
            dir.write_atomic(&conf_file(sandbox, a), a.conf.to_string().as_bytes(), 0o600)
                .map_err(|e| format!("keeping the CNI config of VF {}: {e}", a.device.pci))?;
        }
        Ok(())
    }

    /// Every config kept for this sandbox.
    fn forget_sandbox(&self, pod: &PodSandbox) {
        let (Some(dir), Ok(ids)) = (&self.confs, PodIds::of(pod)) else {
            return;
        };
        for name in dir.names().unwrap_or_default() {
            if conf_sandbox(&name) == Some(ids.sandbox) {
                let _ = dir.remove(&name);
            }
        }
    }

    fn forget_confs(&self, sandbox: &str, plan: &[Attachment]) {
        if let Some(dir) = &self.confs {
            for a in plan {
                if let Err(e) = dir.remove(&conf_file(sandbox, a)) {
                    tracing::warn!(vf = %a.device.pci, "NRI: removing a kept CNI config: {e}");
                }
            }
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

    async fn synchronize(&self, pods: Vec<PodSandbox>) -> Result<(), String> {
        let Some(dir) = &self.confs else {
            return Ok(());
        };
        let live: std::collections::HashSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        for name in stale_confs(dir.names().unwrap_or_default(), &live) {
            match dir.remove(&name) {
                Ok(_) => tracing::info!(
                    file = %name,
                    "NRI: removed the kept CNI config of a sandbox the runtime no longer has"
                ),
                Err(e) => {
                    tracing::warn!(file = %name, "NRI: removing a stale kept CNI config: {e}")
                }
            }
        }
        Ok(())
    }

    async fn run_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        let mut plan = self.attachments(&pod)?;
        if plan.is_empty() {
            return Ok(());
        }
        let netns = pod
            .network_namespace()
            .ok_or("the pod has DRA VFs to attach but no network namespace (host network?)")?
            .to_string();
        // Nothing is touched before every config is had and kept.
        let sandbox = PodIds::of(&pod)?.sandbox.to_string();
        let prepared = match self.build_confs(&mut plan).await {
            Ok(()) => self.keep_confs(&sandbox, &plan),
            Err(e) => Err(e),
        };
        if let Err(e) = prepared {
            self.forget_confs(&sandbox, &plan);
            tracing::error!(pod = %pod.name, namespace = %pod.namespace, "NRI: {e}");
            return Err(format!("sriov-rs: {e}"));
        }
        let all = plan.clone();
        let results = self.run_cni("ADD", &pod, netns.clone(), plan).await;
        if let Some((a, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
            // Undo the ones that went in, newest first.
            let attached: Vec<Attachment> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(a, _)| a.clone())
                .rev()
                .collect();
            let mut undone = true;
            for (b, undo) in self.run_cni("DEL", &pod, netns, attached).await {
                if let Err(u) = undo {
                    undone = false;
                    tracing::error!(vf = %b.device.pci, "NRI: rollback: {u}");
                }
            }
            if undone {
                self.forget_confs(&sandbox, &all);
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
        self.detach(&pod, false).await
    }

    async fn remove_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        // A DEL is idempotent: this one finishes what a failed stop left.
        self.detach(&pod, true).await
    }
}

impl NriAttach {
    /// DEL for each of the pod's attachments with the config its ADD got; `last` (the sandbox
    /// is removed): the kept configs go once their DEL succeeded.
    async fn detach(&self, pod: &PodSandbox, last: bool) -> Result<(), String> {
        let mut plan = self.attachments(pod)?;
        if plan.is_empty() {
            if last {
                // The claims were unprepared before the sandbox went: nothing to DEL any more.
                self.forget_sandbox(pod);
            }
            return Ok(());
        }
        let sandbox = PodIds::of(pod)?.sandbox.to_string();
        self.kept_confs(&sandbox, &mut plan).await;
        let netns = pod.network_namespace().unwrap_or("").to_string();
        let results = self.run_cni("DEL", pod, netns, plan).await;
        if last {
            let gone: Vec<Attachment> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(a, _)| a.clone())
                .collect();
            self.forget_confs(&sandbox, &gone);
        }
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
        let c = net_conf(&d, None);
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

    /// A NAD's config is the base: its ipam and keys stay unless the VfConfig sets them, the
    /// claim's VF replaces any device the NAD names.
    #[test]
    fn a_nad_config_under_the_vf_config() {
        let nad = r#"{"cniVersion": "0.4.0", "name": "net-a", "type": "sriov", "vlan": 100,
            "spoofchk": "off", "deviceID": "0000:99:00.1", "resourceName": "intel.com/x",
            "ipam": {"type": "host-local", "subnet": "10.9.0.0/24"}}"#;
        let base = nad_base("apps/net-a", nad).unwrap();
        let (_, mut d) = found("a", "d1", VfConfig::default());
        d.config = VfConfig {
            vlan: Some(20),
            mtu: Some(1400),
            ..Default::default()
        };
        let c = net_conf(&d, Some(base));
        assert_eq!(
            c,
            json!({"cniVersion": "0.4.0", "name": "net-a", "type": "sriov", "vlan": 20,
                   "mtu": 1400, "spoofchk": "off", "deviceID": "0000:3b:02.0",
                   "ipam": {"type": "host-local", "subnet": "10.9.0.0/24"}})
        );
        // The VfConfig's ipam replaces the NAD's whole.
        d.config.ipam = Some(json!({"type": "static"}));
        let c = net_conf(&d, Some(nad_base("apps/net-a", nad).unwrap()));
        assert_eq!(c["ipam"], json!({"type": "static"}));

        // A conflist of just sriov: the list's version and name.
        let list = r#"{"cniVersion": "1.0.0", "name": "chain", "plugins": [{"type": "sriov", "vlan": 7}]}"#;
        let b = nad_base("apps/chain", list).unwrap();
        assert_eq!(b["name"], "chain");
        assert_eq!(b["cniVersion"], "1.0.0");
        assert_eq!(b["vlan"], 7);
    }

    #[test]
    fn bad_nad_configs_are_refused_naming_the_nad() {
        for (config, why) in [
            ("{", "spec.config is not JSON"),
            ("[1]", "not a JSON object"),
            (
                r#"{"type": "macvlan"}"#,
                "its plugin type is \"macvlan\", not \"sriov\"",
            ),
            (r#"{"name": "x"}"#, "its plugin type is missing"),
            (
                r#"{"plugins": [{"type": "sriov"}, {"type": "tuning"}]}"#,
                "[\"sriov\", \"tuning\"]: the NRI attach runs only the sriov plugin",
            ),
            (
                r#"{"plugins": {"type": "sriov"}}"#,
                "\"plugins\" is not a list",
            ),
        ] {
            let e = nad_base("apps/net-a", config).unwrap_err();
            assert!(
                e.starts_with("NetworkAttachmentDefinition apps/net-a: ") && e.contains(why),
                "{config}: {e}"
            );
        }
        let long = format!(
            r#"{{"type": "sriov", "x": "{}"}}"#,
            "a".repeat(MAX_NAD_CONFIG)
        );
        assert!(nad_base("apps/big", &long)
            .unwrap_err()
            .contains("longer than 65536 bytes"));
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
    fn kept_configs_of_gone_sandboxes_are_stale() {
        let live: std::collections::HashSet<&str> = ["abc", "abc_def"].into_iter().collect();
        let files = [
            "abc@net1.json",
            "abc_def@net1.json",
            "abc_d@net1.json",
            "gone@sriov1.json",
            "other.tmp",
            "x.json",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            stale_confs(files, &live),
            ["abc_d@net1.json", "gone@sriov1.json"]
        );
        assert_eq!(conf_sandbox("abc_def@net_1.json"), Some("abc_def"));
        assert_eq!(conf_sandbox("abc_def_net1.json"), None);
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
