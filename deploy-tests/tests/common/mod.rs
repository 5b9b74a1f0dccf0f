//! Shared by the chart and plain-manifest tests: YAML parsing into the k8s-openapi types, and
//! the checks that matter for the node daemon's deployment.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod helm;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Pod, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every object of a rendered stream, as parsed.
#[derive(Debug, Default)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub admission_policies: Vec<ValidatingAdmissionPolicy>,
    pub admission_policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    pub config_maps: Vec<ConfigMap>,
    pub daemon_sets: Vec<DaemonSet>,
    pub services: Vec<Service>,
    pub crds: Vec<CustomResourceDefinition>,
    pub pods: Vec<Pod>,
    pub device_classes: Vec<DeviceClass>,
    pub claim_templates: Vec<ResourceClaimTemplate>,
    /// Kinds without a k8s-openapi type (NetworkAttachmentDefinition, ServiceMonitor).
    pub dynamic: Vec<DynamicObject>,
}

impl Objects {
    pub fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        let mut add = |k: &str, n: usize| {
            if n > 0 {
                *kinds.entry(k.to_string()).or_default() += n;
            }
        };
        add("Namespace", self.namespaces.len());
        add("ServiceAccount", self.service_accounts.len());
        add("ClusterRole", self.cluster_roles.len());
        add("ClusterRoleBinding", self.cluster_role_bindings.len());
        add("ValidatingAdmissionPolicy", self.admission_policies.len());
        add(
            "ValidatingAdmissionPolicyBinding",
            self.admission_policy_bindings.len(),
        );
        add("ConfigMap", self.config_maps.len());
        add("DaemonSet", self.daemon_sets.len());
        add("Service", self.services.len());
        add("CustomResourceDefinition", self.crds.len());
        add("Pod", self.pods.len());
        add("DeviceClass", self.device_classes.len());
        add("ResourceClaimTemplate", self.claim_templates.len());
        for d in &self.dynamic {
            add(&d.types.as_ref().unwrap().kind, 1);
        }
        kinds
    }

    pub fn dynamic_of(&self, kind: &str) -> Vec<&DynamicObject> {
        self.dynamic
            .iter()
            .filter(|d| d.types.as_ref().is_some_and(|t| t.kind == kind))
            .collect()
    }

    pub fn daemon_set(&self, name: &str) -> &DaemonSet {
        self.daemon_sets
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no DaemonSet {name}"))
    }
}

/// Parses into `T` and checks that serializing `T` gives the same JSON back: a misspelled or
/// misplaced field (which serde would skip silently) fails here.
fn typed<T: DeserializeOwned + Serialize>(v: &Value, what: &str) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: {e}\n{v:#}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, v,
        "{what}: fields lost when parsing (misspelled or misplaced?)\nparsed back: {back:#}\nsource: {v:#}"
    );
    t
}

/// Parses a multi-document YAML stream (empty documents skipped).
pub fn parse_stream(yaml: &str, source: &str) -> Objects {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("{source}: bad YAML: {e}"));
    let mut objects = Objects::default();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{source}: object without kind: {doc}"));
        let what = format!("{source}: {kind} {}", doc["metadata"]["name"]);
        match (doc["apiVersion"].as_str().unwrap_or_default(), kind) {
            ("v1", "Namespace") => objects.namespaces.push(typed(&doc, &what)),
            ("v1", "ServiceAccount") => objects.service_accounts.push(typed(&doc, &what)),
            ("v1", "ConfigMap") => objects.config_maps.push(typed(&doc, &what)),
            ("v1", "Service") => objects.services.push(typed(&doc, &what)),
            ("v1", "Pod") => objects.pods.push(typed(&doc, &what)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                objects.cluster_roles.push(typed(&doc, &what))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                objects.cluster_role_bindings.push(typed(&doc, &what))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                objects.admission_policies.push(typed(&doc, &what))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                objects.admission_policy_bindings.push(typed(&doc, &what))
            }
            ("apps/v1", "DaemonSet") => objects.daemon_sets.push(typed(&doc, &what)),
            ("resource.k8s.io/v1", "DeviceClass") => {
                objects.device_classes.push(typed(&doc, &what))
            }
            ("resource.k8s.io/v1", "ResourceClaimTemplate") => {
                objects.claim_templates.push(typed(&doc, &what))
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                objects.crds.push(typed(&doc, &what))
            }
            ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")
            | ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                objects.dynamic.push(typed(&doc, &what))
            }
            (api, kind) => panic!("{source}: unexpected object {api} {kind}"),
        }
    }
    objects
}

pub fn parse_file(path: &Path) -> Objects {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_stream(&text, &path.display().to_string())
}

/// What a deployment of the daemon must look like; the rest is checked to be consistent.
#[derive(Debug, Clone)]
pub struct Expect {
    pub namespace: String,
    pub image: String,
    pub pull_policy: String,
    pub service_account: String,
    pub config_map: String,
    /// The ConfigMap key projected to /etc/sriov-rs/config.json (None: the whole map).
    pub config_key: Option<String>,
    /// Kubelet's root on the host.
    pub kubelet_dir: String,
    pub cni_bin_dir: String,
    pub resource_prefix: String,
    pub metrics_port: i32,
    /// The probe listener's port and the liveness stall limit.
    pub probe_port: i32,
    pub liveness_timeout: u32,
    pub log_format: String,
    /// The node-state sidecar is deployed.
    pub node_state: bool,
    /// The CNI plugin's node-local settings the init container writes (JSON).
    pub cni_settings: String,
}

/// Where the daemon writes the node state the sidecar publishes.
const NODE_STATE_FILE: &str = "/run/sriov-rs/daemon/node-state.json";

fn mount_target(spec_volumes: &[Volume], name: &str) -> String {
    let v = spec_volumes
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("volume {name} is mounted but not defined"));
    if let Some(h) = &v.host_path {
        format!("hostPath:{}:{}", h.path, h.type_.as_deref().unwrap_or(""))
    } else if let Some(c) = &v.config_map {
        format!("configMap:{}", c.name)
    } else if let Some(d) = &v.empty_dir {
        format!("emptyDir:{}", d.medium.as_deref().unwrap_or(""))
    } else if let Some(p) = &v.projected {
        let sources: Vec<String> = p
            .sources
            .iter()
            .flatten()
            .map(|s| {
                if let Some(t) = &s.service_account_token {
                    format!("token:{}", t.path)
                } else if let Some(c) = &s.config_map {
                    format!("configMap:{}", c.name)
                } else if let Some(d) = &s.downward_api {
                    let items = d.items.iter().flatten();
                    let paths: Vec<&str> = items.map(|i| i.path.as_str()).collect();
                    format!("downwardAPI:{}", paths.join("+"))
                } else {
                    panic!("volume {name}: unexpected projection {s:?}")
                }
            })
            .collect();
        format!("projected:{}", sources.join(","))
    } else {
        panic!("volume {name}: unexpected source {v:?}")
    }
}

/// The sidecar publishes the daemon's file with the pod's only token, unprivileged.
fn check_node_state_sidecar(
    containers: &[Container],
    volumes: &[Volume],
    e: &Expect,
    at: &dyn Fn(&str) -> String,
) {
    let c = container(containers, "node-state");
    assert_eq!(
        c.image.as_deref(),
        Some(e.image.as_str()),
        "{}",
        at("sidecar image")
    );
    assert_eq!(
        c.command.as_deref(),
        Some(&["/usr/local/bin/sriov-node-state".to_string()][..])
    );
    let args = c.args.clone().unwrap();
    let flags = flags(&args);
    assert_eq!(
        flags,
        BTreeMap::from([
            ("status-file", NODE_STATE_FILE),
            ("log-format", e.log_format.as_str())
        ]),
        "{}",
        at("sidecar flags")
    );
    let env = c.env.clone().unwrap();
    assert_eq!(env.len(), 1, "{}", at("sidecar env"));
    let field = env[0]
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (env[0].name.as_str(), field.field_path.as_str()),
        ("NODE_NAME", "spec.nodeName")
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true), "{}", at("sidecar unprivileged"));
    assert_eq!(sc.run_as_non_root, Some(true), "{}", at("sidecar non-root"));
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "{}",
        at("sidecar seccomp")
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let mounts: BTreeMap<String, (String, Option<bool>)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.mount_path.clone(),
                (mount_target(volumes, &m.name), m.read_only),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            (
                "/run/sriov-rs".to_string(),
                ("emptyDir:Memory".to_string(), Some(true))
            ),
            (
                "/var/run/secrets/kubernetes.io/serviceaccount".to_string(),
                (
                    "projected:token:token,configMap:kube-root-ca.crt,downwardAPI:namespace"
                        .to_string(),
                    Some(true)
                )
            ),
        ]),
        "{}",
        at("sidecar mounts")
    );
}

/// `--flag=value` arguments as a map (and the bare ones with an empty value).
fn flags(args: &[String]) -> BTreeMap<&str, &str> {
    args.iter()
        .map(|a| {
            let a = a
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("argument {a:?} is not --flag=value"));
            a.split_once('=').unwrap_or((a, ""))
        })
        .collect()
}

fn container<'a>(cs: &'a [Container], name: &str) -> &'a Container {
    cs.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The checks that matter for the node daemon.
pub fn check_daemon_set(ds: &DaemonSet, e: &Expect) {
    let name = ds.metadata.name.clone().unwrap();
    let at = |what: &str| format!("DaemonSet {name}: {what}");
    assert_eq!(
        ds.metadata.namespace.as_deref(),
        Some(e.namespace.as_str()),
        "{}",
        at("namespace")
    );
    let spec = &ds.spec;
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "{}",
            at("selector must match the pod labels")
        );
    }
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true), "{}", at("hostNetwork"));
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "{}",
        at("dnsPolicy")
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(e.service_account.as_str()),
        "{}",
        at("serviceAccountName")
    );
    assert_eq!(
        pod.containers.len(),
        1 + usize::from(e.node_state),
        "{}",
        at("the daemon, and the node-state sidecar when enabled")
    );
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "{}",
        at("no token in the privileged daemon")
    );
    let volumes = pod.volumes.clone().unwrap_or_default();

    // The daemon.
    let c = container(&pod.containers, "sriov-device-plugin");
    assert_eq!(
        c.image.as_deref(),
        Some(e.image.as_str()),
        "{}",
        at("image")
    );
    assert_eq!(
        c.image_pull_policy.as_deref(),
        Some(e.pull_policy.as_str()),
        "{}",
        at("pull policy")
    );
    assert_eq!(
        c.command.as_deref(),
        Some(&["/usr/local/bin/sriov-device-plugin".to_string()][..])
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true), "{}", at("privileged"));
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "run", "{}", at("subcommand"));
    let flags = flags(&args[1..]);
    let mut known: BTreeSet<&str> = [
        "config",
        "sysfs-root",
        "kubelet-dir",
        "resource-prefix",
        "metrics-address",
        "probe-address",
        "liveness-timeout-seconds",
        "log-format",
        "devinfo-dir",
    ]
    .into();
    if e.node_state {
        known.insert("node-state-file");
    }
    assert_eq!(
        flags.keys().copied().collect::<BTreeSet<_>>(),
        known,
        "{}",
        at("daemon flags")
    );
    assert_eq!(flags["config"], "/etc/sriov-rs/config.json");
    assert_eq!(flags["resource-prefix"], e.resource_prefix);
    assert_eq!(flags["log-format"], e.log_format);
    let metrics: std::net::SocketAddr = flags["metrics-address"].parse().expect("metrics address");
    assert_eq!(
        i32::from(metrics.port()),
        e.metrics_port,
        "{}",
        at("metrics port")
    );
    let probes: std::net::SocketAddr = flags["probe-address"].parse().expect("probe address");
    assert_eq!(
        i32::from(probes.port()),
        e.probe_port,
        "{}",
        at("probe port")
    );
    assert_eq!(
        flags["liveness-timeout-seconds"],
        e.liveness_timeout.to_string(),
        "{}",
        at("liveness timeout")
    );
    assert!(c.env.is_none(), "{}", at("the daemon needs no env"));

    // Probes on the daemon's probe listener: /healthz (liveness), /readyz (readiness).
    let ports = c.ports.clone().unwrap();
    let port_of = |name: &str| {
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}", at(name)))
            .container_port
    };
    assert_eq!(port_of("metrics"), e.metrics_port);
    assert_eq!(port_of("probes"), e.probe_port);
    for (kind, probe, path) in [
        ("liveness", &c.liveness_probe, "/healthz"),
        ("readiness", &c.readiness_probe, "/readyz"),
    ] {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{}", at(kind)));
        assert_eq!(http.path.as_deref(), Some(path), "{}", at(kind));
        let port = match &http.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(n) => {
                ports
                    .iter()
                    .find(|p| p.name.as_ref() == Some(n))
                    .unwrap()
                    .container_port
            }
        };
        assert_eq!(port, e.probe_port, "{}", at(kind));
    }

    // Every mount, where it comes from, and how.
    let kubelet = |sub: &str| format!("hostPath:{}/{sub}:", e.kubelet_dir);
    let expected: BTreeMap<String, String> = [
        ("/etc/sriov-rs", format!("configMap:{}", e.config_map)),
        (
            "/var/lib/kubelet/device-plugins",
            kubelet("device-plugins") + "Directory",
        ),
        (
            "/var/lib/kubelet/plugins_registry",
            kubelet("plugins_registry") + "DirectoryOrCreate",
        ),
        (
            "/var/lib/kubelet/pod-resources",
            kubelet("pod-resources") + "DirectoryOrCreate",
        ),
        (
            "/var/run/k8s.cni.cncf.io/devinfo/dp",
            "hostPath:/var/run/k8s.cni.cncf.io/devinfo/dp:DirectoryOrCreate".into(),
        ),
        ("/host/sys", "hostPath:/sys:Directory".into()),
        (
            "/var/run/netns",
            "hostPath:/var/run/netns:DirectoryOrCreate".into(),
        ),
        (
            "/run/sriov-rs/cni",
            format!(
                "hostPath:{}:DirectoryOrCreate",
                serde_json::from_str::<Value>(&e.cni_settings).unwrap()["stateDir"]
                    .as_str()
                    .unwrap_or("/run/sriov-rs/cni")
            ),
        ),
        ("/run/sriov-rs", "emptyDir:Memory".into()),
    ]
    .into_iter()
    .filter(|(k, _)| e.node_state || *k != "/run/sriov-rs")
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mounts = c.volume_mounts.clone().unwrap();
    let actual: BTreeMap<String, String> = mounts
        .iter()
        .map(|m| (m.mount_path.clone(), mount_target(&volumes, &m.name)))
        .collect();
    assert_eq!(actual, expected, "{}", at("daemon mounts"));
    let mount = |path: &str| mounts.iter().find(|m| m.mount_path == path).unwrap();
    assert_eq!(
        mount("/var/run/netns").mount_propagation.as_deref(),
        Some("HostToContainer"),
        "{}",
        at("netns propagation")
    );
    assert_eq!(mount("/etc/sriov-rs").read_only, Some(true));
    assert_eq!(
        mount("/var/lib/kubelet/pod-resources").read_only,
        Some(true)
    );
    for rw in [
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet/plugins_registry",
        "/host/sys",
        "/run/sriov-rs/cni",
    ] {
        assert_ne!(mount(rw).read_only, Some(true), "{}", at(rw));
    }
    assert!(
        mounts
            .iter()
            .all(|m| m.sub_path.is_none() && m.sub_path_expr.is_none()),
        "{}",
        at("subPath mounts miss ConfigMap updates")
    );
    // The daemon's path flags point into those mounts.
    assert_eq!(flags["sysfs-root"], "/host/sys");
    assert_eq!(flags["kubelet-dir"], "/var/lib/kubelet");
    assert_eq!(flags["devinfo-dir"], "/var/run/k8s.cni.cncf.io/devinfo/dp");
    if e.node_state {
        assert_eq!(flags["node-state-file"], NODE_STATE_FILE);
        check_node_state_sidecar(&pod.containers, &volumes, e, &at);
    }

    // The config volume and the key it projects.
    let config = volumes
        .iter()
        .find(|v| v.name == "config")
        .unwrap()
        .config_map
        .as_ref()
        .unwrap();
    match &e.config_key {
        None => assert!(config.items.is_none(), "{}", at("whole ConfigMap")),
        Some(key) => {
            let items = config.items.as_ref().unwrap();
            assert_eq!(items.len(), 1);
            assert_eq!(
                (items[0].key.as_str(), items[0].path.as_str()),
                (key.as_str(), "config.json")
            );
        }
    }

    // The init container installs the CNI plugin, unprivileged.
    let inits = pod.init_containers.clone().unwrap();
    assert_eq!(inits.len(), 1);
    let init = container(&inits, "install-cni");
    assert_eq!(
        init.image.as_deref(),
        Some(e.image.as_str()),
        "{}",
        at("init image")
    );
    assert_eq!(
        init.command
            .as_deref()
            .unwrap()
            .iter()
            .chain(init.args.as_deref().unwrap())
            .cloned()
            .collect::<Vec<_>>(),
        [
            "/usr/local/bin/sriov-install-cni".to_string(),
            "--from=/usr/local/bin/sriov".into(),
            "--to=/host/opt/cni/bin/sriov".into(),
            "--node-config=/host/etc/sriov-rs/cni.json".into(),
            format!("--node-settings={}", e.cni_settings),
        ],
        "{}",
        at("init command")
    );
    // The settings are ones the plugin accepts.
    let settings: Value = serde_json::from_str(&e.cni_settings).unwrap();
    sriov_cni::node_config::NodeConfig::parse(&settings)
        .unwrap_or_else(|err| panic!("{}: {err}", at("--node-settings")));
    let isc = init.security_context.as_ref().unwrap();
    assert_ne!(
        isc.privileged,
        Some(true),
        "{}",
        at("init container needs no privilege")
    );
    assert_eq!(isc.allow_privilege_escalation, Some(false));
    assert_eq!(
        isc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let init_mounts = init.volume_mounts.clone().unwrap();
    assert_eq!(init_mounts.len(), 2);
    assert_eq!(init_mounts[0].mount_path, "/host/opt/cni/bin");
    assert_eq!(
        mount_target(&volumes, &init_mounts[0].name),
        format!("hostPath:{}:DirectoryOrCreate", e.cni_bin_dir)
    );
    assert_eq!(init_mounts[1].mount_path, "/host/etc/sriov-rs");
    assert_eq!(
        mount_target(&volumes, &init_mounts[1].name),
        "hostPath:/etc/sriov-rs:DirectoryOrCreate"
    );
    // No volume defined for nothing.
    let used: BTreeSet<&str> = pod
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .chain(&init_mounts)
        .map(|m| m.name.as_str())
        .collect();
    let defined: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(used, defined, "{}", at("volumes"));
}

/// RBAC: exactly what the daemon does with the API server (with `dra`, the DRA driver's part
/// too).
pub fn check_rbac(objs: &Objects, namespace: &str, service_account: &str, dra: bool) {
    assert_eq!(objs.service_accounts.len(), 1);
    let sa = &objs.service_accounts[0];
    assert_eq!(sa.metadata.name.as_deref(), Some(service_account));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(namespace));
    assert_eq!(objs.cluster_roles.len(), 1, "one ClusterRole");
    let role = &objs.cluster_roles[0];
    let granted = granted_rules(role);
    let dra_rules = [
        "resource.k8s.io/resourceslices:list",
        "resource.k8s.io/resourceslices:create",
        "resource.k8s.io/resourceslices:update",
        "resource.k8s.io/resourceslices:delete",
        "resource.k8s.io/resourceclaims:get",
        "resource.k8s.io/resourceclaims/status:patch",
    ];
    let expected: BTreeSet<String> = [
        "/nodes:get",
        "/nodes:patch",
        "sriov-rs.io/sriovnodestates:create",
        "sriov-rs.io/sriovnodestates:patch",
        "sriov-rs.io/sriovnodestates/status:patch",
    ]
    .into_iter()
    .chain(dra_rules.into_iter().filter(|_| dra))
    .map(String::from)
    .collect();
    assert_eq!(granted, expected, "ClusterRole rules");
    assert_eq!(objs.cluster_role_bindings.len(), 1);
    let b = &objs.cluster_role_bindings[0];
    assert_eq!(
        (b.role_ref.kind.as_str(), b.role_ref.name.as_str()),
        ("ClusterRole", role.metadata.name.as_deref().unwrap())
    );
    let subjects = b.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, service_account);
    assert_eq!(subjects[0].namespace.as_deref(), Some(namespace));
    check_own_node_policy(objs, namespace, service_account);
    let dra_policy = objs.admission_policies.iter().find(|p| {
        p.metadata
            .name
            .as_deref()
            .unwrap()
            .ends_with("-own-node-dra")
    });
    assert_eq!(
        dra_policy.is_some(),
        dra,
        "the DRA policy exactly in DRA mode"
    );
    if let Some(p) = dra_policy {
        check_own_node_dra_policy(objs, p, namespace, service_account);
    }
}

/// The admission policy that confines the sidecar's account to its own node: bound with Deny,
/// matching exactly that account, covering every object its RBAC rules allow, and (its CEL
/// evaluated here against admission requests as the API server builds them) admitting a change
/// to the token's own node only.
pub fn check_own_node_policy(objs: &Objects, namespace: &str, service_account: &str) {
    let policies: Vec<_> = objs
        .admission_policies
        .iter()
        .filter(|p| p.metadata.name.as_deref().unwrap().ends_with("-own-node"))
        .collect();
    assert_eq!(policies.len(), 1, "one own-node ValidatingAdmissionPolicy");
    let policy = policies[0];
    let name = policy.metadata.name.clone().unwrap();
    assert_eq!(
        objs.admission_policies.len(),
        objs.admission_policy_bindings.len()
    );
    let binding = &objs
        .admission_policy_bindings
        .iter()
        .find(|b| b.spec.policy_name == name)
        .expect("the policy's binding")
        .spec;
    assert_eq!(binding.policy_name, name);
    assert_eq!(binding.validation_actions, ["Deny"]);
    assert!(
        binding.match_resources.is_none(),
        "the binding narrows nothing"
    );
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let covered = covered_requests(spec);
    for needed in [
        "/nodes:UPDATE",
        "sriov-rs.io/sriovnodestates:CREATE",
        "sriov-rs.io/sriovnodestates:UPDATE",
        "sriov-rs.io/sriovnodestates/status:UPDATE",
    ] {
        assert!(
            covered.contains(needed),
            "the policy misses {needed}: {covered:?}"
        );
    }
    let user = format!("system:serviceaccount:{namespace}:{service_account}");
    let request = |username: &str, object: &str, node: Option<&str>| {
        let mut info =
            serde_json::json!({"username": username, "groups": ["system:serviceaccounts"]});
        if let Some(n) = node {
            info["extra"] = serde_json::json!({
                "authentication.kubernetes.io/node-name": [n],
                "authentication.kubernetes.io/pod-name": ["sriov-rs-abcde"],
            });
        }
        serde_json::json!({"name": object, "operation": "UPDATE", "userInfo": info})
    };
    let eval = |expr: &str, req: &Value| -> bool {
        let program = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut ctx = cel::Context::default();
        ctx.add_variable("request", req.clone()).unwrap();
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => b,
            other => panic!("{expr}: {other:?}"),
        }
    };
    let conditions = spec.match_conditions.as_deref().unwrap();
    assert_eq!(conditions.len(), 1);
    let applies = |req: &Value| eval(&conditions[0].expression, req);
    assert!(applies(&request(&user, "node-a", Some("node-a"))));
    assert!(!applies(&request(
        "system:node:node-a",
        "node-a",
        Some("node-a")
    )));
    assert!(!applies(&request(
        &format!("system:serviceaccount:{namespace}:other"),
        "node-b",
        None
    )));
    let validations = spec.validations.as_deref().unwrap();
    assert_eq!(validations.len(), 1);
    assert_eq!(validations[0].reason.as_deref(), Some("Forbidden"));
    let admitted = |req: &Value| eval(&validations[0].expression, req);
    assert!(
        admitted(&request(&user, "node-a", Some("node-a"))),
        "its own node"
    );
    assert!(
        !admitted(&request(&user, "node-b", Some("node-a"))),
        "a stolen token on another node"
    );
    assert!(
        !admitted(&request(&user, "node-a", None)),
        "a token without a node"
    );
    assert!(
        !admitted(&request(&user, "", Some("node-a"))),
        "a generated name"
    );
}

/// Each key of the ConfigMap is a config the daemon accepts; returns key -> resource names.
pub fn check_config_map(cm: &ConfigMap, prefix: &str) -> BTreeMap<String, Vec<String>> {
    let data = cm.data.as_ref().expect("ConfigMap data");
    assert!(
        data.contains_key("config.json"),
        "config.json is the default key"
    );
    data.iter()
        .map(|(key, text)| {
            let config = sriov::config::Config::parse(text, prefix)
                .unwrap_or_else(|e| panic!("ConfigMap key {key}: the daemon refuses it: {e}"));
            assert!(config.warnings.is_empty(), "{key}: {:?}", config.warnings);
            let names = config
                .resources
                .unwrap_or_default()
                .iter()
                .map(|r| r.full_name())
                .collect();
            (key.clone(), names)
        })
        .collect()
}

/// A NetworkAttachmentDefinition for our plugin; returns its resource name and parsed config.
pub fn check_nad(nad: &DynamicObject) -> (String, Value) {
    let name = nad.metadata.name.clone().unwrap();
    let resource = nad
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("k8s.v1.cni.cncf.io/resourceName"))
        .unwrap_or_else(|| panic!("NAD {name}: no resourceName annotation"))
        .clone();
    let text = nad.data["spec"]["config"]
        .as_str()
        .unwrap_or_else(|| panic!("NAD {name}: spec.config"));
    let config: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("NAD {name}: config JSON: {e}"));
    assert_eq!(config["type"], "sriov", "NAD {name}");
    assert_eq!(
        config["name"],
        name.as_str(),
        "NAD {name}: CNI network name"
    );
    assert!(config["cniVersion"].is_string(), "NAD {name}");
    (resource, config)
}

/// The DRA policy: bound with Deny, matching only the sidecar's account, and (its CEL evaluated
/// against admission requests as the API server builds them) admitting ResourceSlice writes for
/// the token's own node only and claim status writes only for claims allocated on that node.
pub fn check_own_node_dra_policy(
    objs: &Objects,
    policy: &ValidatingAdmissionPolicy,
    namespace: &str,
    service_account: &str,
) {
    let name = policy.metadata.name.clone().unwrap();
    let binding = &objs
        .admission_policy_bindings
        .iter()
        .find(|b| b.spec.policy_name == name)
        .expect("the DRA policy's binding")
        .spec;
    assert_eq!(binding.validation_actions, ["Deny"]);
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let covered = covered_requests(spec);
    for needed in [
        "resource.k8s.io/resourceslices:CREATE",
        "resource.k8s.io/resourceslices:UPDATE",
        "resource.k8s.io/resourceslices:DELETE",
        "resource.k8s.io/resourceclaims/status:UPDATE",
    ] {
        assert!(covered.contains(needed), "the DRA policy misses {needed}");
    }
    let user = format!("system:serviceaccount:{namespace}:{service_account}");
    let eval = |expr: &str, vars: &[(&str, Value)]| -> cel::Value {
        let program = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut ctx = cel::Context::default();
        for (k, v) in vars {
            ctx.add_variable(*k, v.clone()).unwrap();
        }
        program
            .execute(&ctx)
            .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
    };
    let conditions = spec.match_conditions.as_deref().unwrap();
    assert_eq!(conditions.len(), 1);
    let variables = spec.variables.as_deref().unwrap_or_default();
    let validations = spec.validations.as_deref().unwrap();
    // An admission request: the resource, the acting token's node, the old and new objects.
    let request = |resource: &str, sub: &str, op: &str, node: Option<&str>| {
        let mut info = serde_json::json!({"username": &user, "groups": ["system:serviceaccounts"]});
        if let Some(n) = node {
            info["extra"] = serde_json::json!({"authentication.kubernetes.io/node-name": [n]});
        }
        serde_json::json!({
            "resource": {"group": "resource.k8s.io", "version": "v1", "resource": resource},
            "subResource": sub, "operation": op, "userInfo": info, "name": "x",
        })
    };
    let admitted = |req: Value, object: Value, old: Value| -> bool {
        let base = [("request", req), ("object", object), ("oldObject", old)];
        match eval(&conditions[0].expression, &base) {
            cel::Value::Bool(true) => {}
            other => panic!("the policy must apply to the sidecar: {other:?}"),
        }
        let mut vars = serde_json::Map::new();
        for v in variables {
            let with: Vec<(&str, Value)> = base
                .iter()
                .cloned()
                .chain([("variables", Value::Object(vars.clone()))])
                .collect();
            let value = match eval(&v.expression, &with) {
                cel::Value::String(s) => Value::String(s.to_string()),
                cel::Value::Bool(b) => Value::Bool(b),
                other => panic!("variable {}: {other:?}", v.name),
            };
            vars.insert(v.name.clone(), value);
        }
        let with: Vec<(&str, Value)> = base
            .into_iter()
            .chain([("variables", Value::Object(vars))])
            .collect();
        validations.iter().all(|v| {
            assert_eq!(v.reason.as_deref(), Some("Forbidden"));
            matches!(eval(&v.expression, &with), cel::Value::Bool(true))
        })
    };
    let slice = |node: &str| serde_json::json!({"spec": {"nodeName": node, "driver": "d"}});
    let null = Value::Null;
    let slices = |op: &str, node: Option<&str>| request("resourceslices", "", op, node);
    assert!(admitted(
        slices("CREATE", Some("node-a")),
        slice("node-a"),
        null.clone()
    ));
    assert!(admitted(
        slices("UPDATE", Some("node-a")),
        slice("node-a"),
        slice("node-a")
    ));
    assert!(admitted(
        slices("DELETE", Some("node-a")),
        null.clone(),
        slice("node-a")
    ));
    assert!(
        !admitted(
            slices("CREATE", Some("node-a")),
            slice("node-b"),
            null.clone()
        ),
        "another node's slice"
    );
    assert!(
        !admitted(
            slices("UPDATE", Some("node-a")),
            slice("node-a"),
            slice("node-b")
        ),
        "taking over another node's slice"
    );
    assert!(
        !admitted(
            slices("DELETE", Some("node-a")),
            null.clone(),
            slice("node-b")
        ),
        "deleting another node's slice"
    );
    assert!(
        !admitted(slices("CREATE", None), slice("node-a"), null.clone()),
        "a token without a node"
    );
    assert!(
        !admitted(
            slices("CREATE", Some("node-a")),
            serde_json::json!({"spec": {"allNodes": true}}),
            null.clone()
        ),
        "a slice for all nodes"
    );
    let claim = |node: &str| {
        serde_json::json!({"status": {"allocation": {"nodeSelector": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        ]}}}})
    };
    let status = |node: Option<&str>| request("resourceclaims", "status", "UPDATE", node);
    assert!(admitted(
        status(Some("node-a")),
        claim("node-a"),
        claim("node-a")
    ));
    assert!(
        !admitted(status(Some("node-a")), claim("node-b"), claim("node-b")),
        "a claim allocated elsewhere"
    );
    assert!(
        !admitted(
            status(Some("node-a")),
            serde_json::json!({"status": {}}),
            serde_json::json!({"status": {}})
        ),
        "an unallocated claim"
    );
    assert!(
        !admitted(status(None), claim("node-a"), claim("node-a")),
        "a token without a node"
    );
}

/// What a ClusterRole grants, as `group/resource:verb` (no resource names, no URLs).
pub fn granted_rules(role: &ClusterRole) -> BTreeSet<String> {
    let mut granted = BTreeSet::new();
    for r in role.rules.as_ref().unwrap() {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
        for g in r.api_groups.as_ref().unwrap() {
            for res in r.resources.as_ref().unwrap() {
                for v in &r.verbs {
                    granted.insert(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    granted
}

/// The requests an admission policy's match constraints cover, as `group/resource:OPERATION`.
fn covered_requests(
    spec: &k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicySpec,
) -> BTreeSet<String> {
    let mut covered = BTreeSet::new();
    for rule in spec
        .match_constraints
        .as_ref()
        .unwrap()
        .resource_rules
        .iter()
        .flatten()
    {
        for op in rule.operations.iter().flatten() {
            for g in rule.api_groups.iter().flatten() {
                for r in rule.resources.iter().flatten() {
                    covered.insert(format!("{g}/{r}:{op}"));
                }
            }
        }
    }
    covered
}
