//! The Helm chart, rendered by the real helm: `helm lint`, then `helm template` with the default
//! values and with a values file that changes everything, every object parsed into its
//! k8s-openapi type and checked.

mod common;

use common::helm::helm_ok;
use common::{
    check_config_map, check_daemon_set, check_nad, check_rbac, parse_stream, Expect, Objects,
};
use std::collections::BTreeMap;

const CHART: &str = "charts/sriov-rs";
const FULL_VALUES: &str = "deploy-tests/fixtures/values-full.yaml";

fn kinds(list: &[(&str, usize)]) -> BTreeMap<String, usize> {
    list.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// What `helm template sriov-rs CHART --namespace sriov-rs` must render with default values.
fn default_expect() -> Expect {
    Expect {
        namespace: "sriov-rs".into(),
        image: "ghcr.io/sriov-rs/sriov-rs:0.1.0".into(),
        pull_policy: "IfNotPresent".into(),
        service_account: "sriov-rs".into(),
        config_map: "sriov-rs-config".into(),
        config_key: Some("config.json".into()),
        kubelet_dir: "/var/lib/kubelet".into(),
        cni_bin_dir: "/opt/cni/bin".into(),
        resource_prefix: "intel.com".into(),
        metrics_port: 9808,
        probe_port: 9809,
        liveness_timeout: 30,
        log_format: "json".into(),
        node_state: true,
        cni_settings: r#"{"podResourcesSocket":"/var/lib/kubelet/pod-resources/kubelet.sock"}"#
            .into(),
    }
}

#[test]
fn lint_passes_with_default_and_full_values() {
    let out = helm_ok(&["lint", "--strict", CHART]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm_ok(&["lint", "--strict", CHART, "-f", FULL_VALUES]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn default_values_render_the_daemon_set_and_least_privilege() {
    let yaml = helm_ok(&["template", "sriov-rs", CHART, "--namespace", "sriov-rs"]);
    let objs = parse_stream(&yaml, "helm template (defaults)");
    assert_eq!(
        objs.kinds(),
        kinds(&[
            ("ServiceAccount", 1),
            ("ClusterRole", 1),
            ("ClusterRoleBinding", 1),
            ("ValidatingAdmissionPolicy", 1),
            ("ValidatingAdmissionPolicyBinding", 1),
            ("ConfigMap", 1),
            ("DaemonSet", 1)
        ])
    );
    check_rbac(&objs, "sriov-rs", "sriov-rs", false);
    let ds = objs.daemon_set("sriov-rs");
    check_daemon_set(ds, &default_expect());
    let pod = ds.spec.template.spec.as_ref().unwrap();
    // No node affinity without per-node configs; every node, whatever its taints.
    assert!(pod.affinity.is_none());
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].operator.as_deref(),
        Some("Exists")
    );
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // Config changes are applied live: a checksum annotation would restart the pods instead.
    assert!(ds
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .is_none());

    let resources = check_config_map(&objs.config_maps[0], "intel.com");
    assert_eq!(
        resources,
        BTreeMap::from([(
            "config.json".to_string(),
            vec![
                "intel.com/sriov_netdevice".to_string(),
                "intel.com/sriov_dpdk".to_string()
            ]
        )])
    );
}

/// `helm template` with the default values but one `--set`.
fn template_with(set: &str) -> Objects {
    template_with_all(&["--set", set])
}

/// `helm template` with the default values but these options.
fn template_with_all(options: &[&str]) -> Objects {
    let mut args = vec!["template", "sriov-rs", CHART, "--namespace", "sriov-rs"];
    args.extend_from_slice(options);
    let yaml = helm_ok(&args);
    parse_stream(&yaml, &format!("helm template {}", options.join(" ")))
}

#[test]
fn without_the_node_state_sidecar_the_pod_has_no_api_access() {
    let objs = template_with("nodeState.enabled=false");
    let ds = objs.daemon_set("sriov-rs");
    check_daemon_set(
        ds,
        &Expect {
            node_state: false,
            ..default_expect()
        },
    );
    let volumes = ds.spec.template.spec.as_ref().unwrap().volumes.as_ref();
    assert!(volumes
        .unwrap()
        .iter()
        .all(|v| v.projected.is_none() && v.empty_dir.is_none()));
}

/// Metrics kept on the loopback: kubelet's probes (which come to the node's address) still
/// reach the probe listener, bound to every address.
#[test]
fn loopback_metrics_leave_the_probes_reachable() {
    let objs = template_with("metrics.bindAddress=127.0.0.1");
    let ds = objs.daemon_set("sriov-rs");
    check_daemon_set(ds, &default_expect());
    let args = ds.spec.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--metrics-address=127.0.0.1:9808".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--probe-address=0.0.0.0:9809".to_string()),
        "{args:?}"
    );
}

#[test]
fn full_values_change_everything_they_name() {
    let yaml = helm_ok(&[
        "template",
        "rel",
        CHART,
        "--namespace",
        "net-system",
        "--include-crds",
        "-f",
        FULL_VALUES,
    ]);
    let objs = parse_stream(&yaml, "helm template (values-full)");
    assert_eq!(
        objs.kinds(),
        kinds(&[
            ("Namespace", 1),
            ("ServiceAccount", 1),
            ("ClusterRole", 1),
            ("ClusterRoleBinding", 1),
            ("ValidatingAdmissionPolicy", 1),
            ("ValidatingAdmissionPolicyBinding", 1),
            ("ConfigMap", 1),
            ("DaemonSet", 3),
            ("Service", 1),
            ("ServiceMonitor", 1),
            ("NetworkAttachmentDefinition", 2),
            ("CustomResourceDefinition", 1),
        ])
    );
    check_rbac(&objs, "net-system", "rel-sriov-rs", false);

    let ns = &objs.namespaces[0];
    assert_eq!(ns.metadata.name.as_deref(), Some("net-system"));
    assert_eq!(
        ns.metadata.labels.as_ref().unwrap()["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    // The CRD comes from crds/ and is the one generated from the Rust type.
    assert_eq!(
        objs.crds[0],
        <sriov_node_state::SriovNodeState as kube::CustomResourceExt>::crd()
    );

    // One config per node name, each accepted by the daemon.
    let resources = check_config_map(&objs.config_maps[0], "example.com");
    assert_eq!(resources["config.json"], ["acme.io/fast"]);
    assert_eq!(resources["worker-7"], ["example.com/worker7_only"]);
    assert!(resources["edge-1.example.com"].is_empty());

    let base = Expect {
        namespace: "net-system".into(),
        image: "registry.example.com/net/sriov-rs:9.9.9-test".into(),
        pull_policy: "Always".into(),
        service_account: "rel-sriov-rs".into(),
        config_map: "rel-sriov-rs-config".into(),
        config_key: Some("config.json".into()),
        kubelet_dir: "/var/lib/k0s/kubelet".into(),
        cni_bin_dir: "/usr/libexec/cni".into(),
        resource_prefix: "example.com".into(),
        metrics_port: 19808,
        probe_port: 19809,
        liveness_timeout: 60,
        log_format: "text".into(),
        node_state: true,
        cni_settings: r#"{"logDir":"/var/log/sriov-cni","podResourcesSocket":"/var/lib/k0s/kubelet/pod-resources/kubelet.sock","stateDir":"/var/lib/sriov-cni"}"#.into(),
    };
    // (DaemonSet, ConfigMap key, node affinity operator, nodes)
    let cases = [
        (
            "rel-sriov-rs",
            "config.json",
            "NotIn",
            vec!["edge-1.example.com", "worker-7"],
        ),
        ("rel-sriov-rs-worker-7", "worker-7", "In", vec!["worker-7"]),
        (
            "rel-sriov-rs-edge-1.example.com",
            "edge-1.example.com",
            "In",
            vec!["edge-1.example.com"],
        ),
    ];
    let mut selectors = Vec::new();
    for (name, key, op, nodes) in cases {
        let ds = objs.daemon_set(name);
        check_daemon_set(
            ds,
            &Expect {
                config_key: Some(key.into()),
                ..base.clone()
            },
        );
        let spec = &ds.spec;
        selectors.push(spec.selector.match_labels.clone().unwrap());
        let pod = spec.template.spec.as_ref().unwrap();
        let terms = &pod
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap();
        let terms = &terms
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1, "{name}");
        let field = &terms[0].match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (field.key.as_str(), field.operator.as_str()),
            ("metadata.name", op),
            "{name}"
        );
        assert_eq!(field.values.as_deref().unwrap(), nodes, "{name}");
        let args = pod.containers[0].args.clone().unwrap();
        assert!(
            args.contains(&"--metrics-address=[::]:19808".to_string())
                && args.contains(&"--probe-address=[::]:19809".to_string()),
            "IPv6 bracketed: {args:?}"
        );
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
        assert_eq!(pod.node_selector.as_ref().unwrap()["sriov"], "yes");
        let tol = &pod.tolerations.as_ref().unwrap()[0];
        assert_eq!(
            (tol.key.as_deref(), tol.value.as_deref()),
            (Some("dedicated"), Some("net"))
        );
        assert!(
            pod.priority_class_name.is_none(),
            "an empty priorityClassName is left out"
        );
        let meta = spec.template.metadata.as_ref().unwrap();
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "net");
        assert_eq!(
            meta.annotations.as_ref().unwrap()["example.com/team"],
            "net"
        );
        let limits = pod.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .clone()
            .unwrap();
        assert_eq!(limits["memory"].0, "512Mi");
        assert_eq!(limits["cpu"].0, "1");
    }
    // The DaemonSets never claim each other's pods.
    for (i, a) in selectors.iter().enumerate() {
        for b in &selectors[i + 1..] {
            assert_ne!(a.get("sriov-rs.io/config"), b.get("sriov-rs.io/config"));
        }
    }

    // Metrics: the Service selects the daemon's pods, the ServiceMonitor selects the Service.
    let svc = &objs.services[0];
    let svc_spec = svc.spec.as_ref().unwrap();
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"));
    let pod_labels = objs
        .daemon_set("rel-sriov-rs")
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in svc_spec.selector.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "Service selector {k}");
    }
    assert_eq!(svc_spec.ports.as_ref().unwrap()[0].port, 19808);
    let sm = objs.dynamic_of("ServiceMonitor")[0];
    assert_eq!(
        sm.metadata.labels.as_ref().unwrap()["release"],
        "prometheus"
    );
    for (k, v) in sm.data["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            svc.metadata
                .labels
                .as_ref()
                .unwrap()
                .get(k)
                .map(String::as_str),
            v.as_str(),
            "ServiceMonitor selector {k}"
        );
    }
    let endpoint = &sm.data["spec"]["endpoints"][0];
    assert_eq!(
        (endpoint["port"].as_str(), endpoint["path"].as_str()),
        (Some("metrics"), Some("/metrics"))
    );
    assert_eq!(endpoint["interval"], "15s");

    // NADs: defaults filled in, values kept, namespace defaulted to the release's.
    let nads = objs.dynamic_of("NetworkAttachmentDefinition");
    let (res, vlan) = check_nad(nads[0]);
    assert_eq!(res, "acme.io/fast");
    assert_eq!(nads[0].metadata.namespace.as_deref(), Some("apps"));
    assert_eq!(
        vlan,
        serde_json::json!({"cniVersion": "1.0.0", "name": "sriov-vlan100", "type": "sriov", "vlan": 100, "mtu": 9000,
            "mtuLock": true, "ipam": {"type": "host-local", "subnet": "10.56.100.0/24"}})
    );
    let (_, dpdk) = check_nad(nads[1]);
    assert_eq!(nads[1].metadata.namespace.as_deref(), Some("net-system"));
    assert_eq!(dpdk["cniVersion"], "1.1.0", "a value overrides the default");
    assert_eq!(dpdk["trust"], "on");
}

/// `dra.mode=both` with CDI: the daemon serves DRA too (its flags, the node name, the kubelet
/// plugins folder, the CDI folder, the prepared claims on the host), the sidecar publishes the
/// slices and serves the claim service on a socket in a volume of its own, the CNI's settings
/// name the claims folder, the ClusterRole grants exactly the DRA driver's API calls, a policy
/// confines them to the node (its CEL evaluated), and the DeviceClasses select our driver.
#[test]
fn dra_mode_serves_the_driver_with_node_confined_rbac_and_device_classes() {
    let objs = template_with_all(&[
        "--set",
        "dra.mode=both",
        "--set",
        "cdi.enabled=true",
        "--set-json",
        r#"dra.deviceClasses=[{"name":"sriov-vf"},{"name":"sriov-dpdk","resourceName":"intel.com/sriov_dpdk","config":{"driver":"vfio-pci","vlan":100}}]"#,
    ]);
    assert_eq!(
        objs.kinds(),
        kinds(&[
            ("ServiceAccount", 1),
            ("ClusterRole", 1),
            ("ClusterRoleBinding", 1),
            ("ValidatingAdmissionPolicy", 2),
            ("ValidatingAdmissionPolicyBinding", 2),
            ("ConfigMap", 1),
            ("DaemonSet", 1),
            ("DeviceClass", 2),
        ])
    );
    check_rbac(&objs, "sriov-rs", "sriov-rs", true);

    let spec = objs
        .daemon_set("sriov-rs")
        .spec
        .template
        .spec
        .as_ref()
        .unwrap();
    let daemon = &spec.containers[0];
    let sidecar = spec
        .containers
        .iter()
        .find(|c| c.name == "node-state")
        .unwrap();
    let args = daemon.args.clone().unwrap();
    for want in [
        "--mode=both",
        "--dra-driver-name=sriov.sriov-rs.io",
        "--dra-state-dir=/run/sriov-rs/dra",
        "--dra-devices-file=/run/sriov-rs/daemon/dra-devices.json",
        "--dra-claims-socket=/run/sriov-rs/node-state/claims.sock",
        "--use-cdi",
        "--cdi-dir=/var/run/cdi",
        "--cdi-spec-version=0.5.0",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "daemon misses {want}: {args:?}"
        );
    }
    let node_env = daemon
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "NODE_NAME");
    assert_eq!(
        node_env
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
    let sargs = sidecar.args.clone().unwrap();
    for want in [
        "--dra-devices-file=/run/sriov-rs/daemon/dra-devices.json",
        "--dra-claims-socket=/run/sriov-rs/node-state/claims.sock",
    ] {
        assert!(
            sargs.iter().any(|a| a == want),
            "sidecar misses {want}: {sargs:?}"
        );
    }
    // Where each container sees which volume, and whether it may write there.
    let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<(String, String, bool)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.clone(),
                    m.mount_path.clone(),
                    m.read_only == Some(true),
                )
            })
            .collect()
    };
    let host_path = |name: &str| {
        let v = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap();
        v.host_path.as_ref().map(|h| h.path.clone())
    };
    let dm = mounts(daemon);
    for (name, path, host) in [
        (
            "kubelet-plugins",
            "/var/lib/kubelet/plugins",
            Some("/var/lib/kubelet/plugins"),
        ),
        ("dra-state", "/run/sriov-rs/dra", Some("/run/sriov-rs/dra")),
        ("cdi", "/var/run/cdi", Some("/var/run/cdi")),
        ("dra-claims", "/run/sriov-rs/node-state", None),
    ] {
        assert!(
            dm.contains(&(name.to_string(), path.to_string(), false)),
            "daemon mounts {name} at {path}: {dm:?}"
        );
        assert_eq!(host_path(name).as_deref(), host, "{name}");
    }
    let sm = mounts(sidecar);
    assert!(
        sm.contains(&(
            "dra-claims".into(),
            "/run/sriov-rs/node-state".into(),
            false
        )),
        "the sidecar creates its socket in its own writable volume: {sm:?}"
    );
    assert!(
        sm.contains(&("node-state".into(), "/run/sriov-rs".into(), true)),
        "and still only reads the daemon's files: {sm:?}"
    );
    let claims = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "dra-claims")
        .unwrap();
    assert!(
        claims.empty_dir.is_some(),
        "the claim socket never reaches the host"
    );
    // The CNI reads the prepared claims where the daemon writes them.
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let settings = init
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--node-settings="))
        .unwrap();
    let settings: serde_json::Value = serde_json::from_str(settings).unwrap();
    assert_eq!(settings["draStateDir"], "/run/sriov-rs/dra");

    let classes: BTreeMap<&str, &k8s_openapi::api::resource::v1::DeviceClass> = objs
        .device_classes
        .iter()
        .map(|c| (c.metadata.name.as_deref().unwrap(), c))
        .collect();
    let cel = |name: &str| -> Vec<String> {
        classes[name]
            .spec
            .as_ref()
            .unwrap()
            .selectors
            .iter()
            .flatten()
            .map(|s| s.cel.as_ref().unwrap().expression.clone())
            .collect()
    };
    assert_eq!(cel("sriov-vf"), [r#"device.driver == "sriov.sriov-rs.io""#]);
    assert_eq!(
        cel("sriov-dpdk"),
        [
            r#"device.driver == "sriov.sriov-rs.io""#,
            r#"device.attributes["k8s.cni.cncf.io"].resourceName == "intel.com/sriov_dpdk""#
        ]
    );
    assert!(classes["sriov-vf"].spec.as_ref().unwrap().config.is_none());
    let config = classes["sriov-dpdk"]
        .spec
        .as_ref()
        .unwrap()
        .config
        .as_ref()
        .unwrap();
    let opaque = config[0].opaque.as_ref().unwrap();
    assert_eq!(opaque.driver, "sriov.sriov-rs.io");
    assert_eq!(
        opaque.parameters.0,
        serde_json::json!({"apiVersion": "sriov.sriov-rs.io/v1alpha1", "kind": "VfConfig",
                           "driver": "vfio-pci", "vlan": 100})
    );
    // Each selector evaluates as the scheduler would on one of our devices.
    let device = |resource: &str| {
        serde_json::json!({"driver": "sriov.sriov-rs.io", "attributes": {
            "k8s.cni.cncf.io": {"resourceName": resource, "deviceID": "0000:3b:02.1"}}})
    };
    let selects = |class: &str, dev: serde_json::Value| {
        cel(class).iter().all(|expr| {
            let program = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let mut ctx = cel::Context::default();
            ctx.add_variable("device", dev.clone()).unwrap();
            matches!(program.execute(&ctx), Ok(cel::Value::Bool(true)))
        })
    };
    assert!(selects("sriov-dpdk", device("intel.com/sriov_dpdk")));
    assert!(!selects("sriov-dpdk", device("intel.com/sriov_netdevice")));
    assert!(selects("sriov-vf", device("intel.com/sriov_netdevice")));
    let mut other = device("intel.com/sriov_dpdk");
    other["driver"] = "gpu.example.com".into();
    assert!(!selects("sriov-vf", other));
}

/// `helm template --set set` fails, saying `message`.
fn assert_refused(set: &str, message: &str) {
    let out = std::process::Command::new(common::helm::helm())
        .args(["template", "sriov-rs", CHART, "--set", set])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{set} renders");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(message), "{set}: {err}");
}

#[test]
fn dra_mode_needs_the_sidecar_and_a_known_mode() {
    for (set, message) in [
        (
            "dra.mode=dra,nodeState.enabled=false",
            "needs nodeState.enabled",
        ),
        (
            "dra.mode=drab",
            "must be device-plugin, dra or both, not \"drab\"",
        ),
    ] {
        assert_refused(set, message);
    }
    // The default is the device plugin alone: no DRA object, flag or mount.
    let objs = template_with("cdi.enabled=false");
    assert!(objs.device_classes.is_empty());
    let yaml = helm_ok(&["template", "sriov-rs", CHART]);
    assert!(!yaml.contains("--mode=") && !yaml.contains("resource.k8s.io"));
}

/// `dra.nodeModes`: one node moves to DRA while the others stay device plugins. That node gets
/// a DaemonSet of its own (reading the shared config.json, as it has no nodeConfigs entry) with
/// the DRA flags; the main one skips it and has none; the DRA RBAC is rendered for it.
#[test]
fn one_node_can_serve_dra_while_the_others_stay_device_plugins() {
    let objs = template_with_all(&["--set-json", r#"dra.nodeModes={"worker-7":"both"}"#]);
    assert_eq!(objs.daemon_sets.len(), 2);
    check_rbac(&objs, "sriov-rs", "sriov-rs", true);
    let pod = |name: &str| objs.daemon_set(name).spec.template.spec.clone().unwrap();
    let (main, worker) = (pod("sriov-rs"), pod("sriov-rs-worker-7"));
    let args = |p: &k8s_openapi::api::core::v1::PodSpec| p.containers[0].args.clone().unwrap();
    assert!(args(&worker).contains(&"--mode=both".to_string()));
    assert!(!args(&main)
        .iter()
        .any(|a| a.starts_with("--mode") || a.starts_with("--dra")));
    let affinity = |p: &k8s_openapi::api::core::v1::PodSpec| {
        let term = &p
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        let f = &term.match_fields.as_ref().unwrap()[0];
        (f.operator.clone(), f.values.clone().unwrap())
    };
    assert_eq!(
        affinity(&main),
        ("NotIn".to_string(), vec!["worker-7".to_string()])
    );
    assert_eq!(
        affinity(&worker),
        ("In".to_string(), vec!["worker-7".to_string()])
    );
    let config_key = |p: &k8s_openapi::api::core::v1::PodSpec| {
        let v = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "config")
            .unwrap();
        v.config_map.as_ref().unwrap().items.as_ref().unwrap()[0]
            .key
            .clone()
    };
    assert_eq!(config_key(&worker), "config.json");
    assert_eq!(config_key(&main), "config.json");
}

/// A container's mount: (volume, mount path, read-only).
type Mount = (String, String, bool);

/// The daemon's container as (volume, mount path, read-only) triples.
fn mounts_of(c: &k8s_openapi::api::core::v1::Container) -> Vec<Mount> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.clone(),
                m.mount_path.clone(),
                m.read_only == Some(true),
            )
        })
        .collect()
}

/// A volume's host path, if it is one.
fn host_path_of(pod: &k8s_openapi::api::core::v1::PodSpec, name: &str) -> Option<String> {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .and_then(|v| v.host_path.as_ref())
        .map(|h| h.path.clone())
}

/// The NRI part of a rendered daemon container: its flags, `SRIOV_CNI_NODE_CONFIG`, and the
/// mounts that exist only for it.
fn nri_parts(
    pod: &k8s_openapi::api::core::v1::PodSpec,
) -> (Vec<String>, Option<String>, Vec<Mount>) {
    let daemon = &pod.containers[0];
    let args: Vec<String> = daemon
        .args
        .iter()
        .flatten()
        .filter(|a| a.starts_with("--nri") || a.starts_with("--cni-"))
        .cloned()
        .collect();
    let env = daemon
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SRIOV_CNI_NODE_CONFIG")
        .and_then(|e| e.value.clone());
    let mounts = mounts_of(daemon)
        .into_iter()
        .filter(|(name, _, _)| {
            ["nri-socket", "cni-bin", "cni-settings", "cni-lib"].contains(&name.as_str())
                || name.starts_with("nri-host-")
        })
        .collect();
    (args, env, mounts)
}

/// `dra.nri.enabled`: the daemon gets the NRI flags, runs the CNI plugin the init container
/// installed with the node-local settings it wrote (both mounted read-only where the init
/// container writes them), sees the runtime's NRI socket folder and /var/lib/cni, and every host
/// folder the CNI's settings name at the same path (here a moved logDir and stateDir; the
/// defaults are covered by mounts the daemon already has). The sidecar may then read
/// NetworkAttachmentDefinitions, and only then.
#[test]
fn dra_nri_attach_runs_the_cni_as_the_runtime_would() {
    let objs = template_with_all(&[
        "--set",
        "dra.mode=dra,dra.nri.enabled=true,dra.nri.pluginIndex=07,dra.nri.socketDir=/run/containerd/nri",
        "--set",
        "cniSettings.logDir=/var/log/sriov-cni,cniSettings.stateDir=/var/lib/sriov-cni",
    ]);
    check_rbac_nri(&objs, true);
    let pod = objs
        .daemon_set("sriov-rs")
        .spec
        .template
        .spec
        .clone()
        .unwrap();
    let (args, env, mounts) = nri_parts(&pod);
    assert_eq!(
        args,
        [
            "--nri",
            "--nri-socket=/var/run/nri/nri.sock",
            "--nri-plugin-index=07",
            "--cni-plugin=/host/opt/cni/bin/sriov",
            "--cni-bin-dir=/host/opt/cni/bin",
        ]
    );
    assert_eq!(env.as_deref(), Some("/host/etc/sriov-rs/cni.json"));
    let want = |n: &str, p: &str, ro: bool| (n.to_string(), p.to_string(), ro);
    assert_eq!(
        mounts,
        [
            want("nri-socket", "/var/run/nri", false),
            want("cni-bin", "/host/opt/cni/bin", true),
            want("cni-settings", "/host/etc/sriov-rs", true),
            want("cni-lib", "/var/lib/cni", false),
            want("nri-host-0", "/var/lib/sriov-cni", false),
            want("nri-host-1", "/var/log/sriov-cni", false),
        ]
    );
    for (volume, host) in [
        ("nri-socket", "/run/containerd/nri"),
        ("cni-bin", "/opt/cni/bin"),
        ("cni-settings", "/etc/sriov-rs"),
        ("cni-lib", "/var/lib/cni"),
        ("nri-host-0", "/var/lib/sriov-cni"),
        ("nri-host-1", "/var/log/sriov-cni"),
        // The daemon's own view of the CNI's records follows stateDir too.
        ("cni-state", "/var/lib/sriov-cni"),
    ] {
        assert_eq!(
            host_path_of(&pod, volume).as_deref(),
            Some(host),
            "{volume}"
        );
    }
    // The file SRIOV_CNI_NODE_CONFIG names is the one the init container writes, with the
    // paths just mounted.
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let init_args = init.args.clone().unwrap();
    assert!(init_args.contains(&"--node-config=/host/etc/sriov-rs/cni.json".to_string()));
    assert!(init_args.contains(&"--to=/host/opt/cni/bin/sriov".to_string()));
    let settings: serde_json::Value = serde_json::from_str(
        init_args
            .iter()
            .find_map(|a| a.strip_prefix("--node-settings="))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(settings["draStateDir"], "/run/sriov-rs/dra");
    assert_eq!(settings["stateDir"], "/var/lib/sriov-cni");
    assert_eq!(settings["logDir"], "/var/log/sriov-cni");
    // The prepared claims the CNI reads: where the daemon writes them, at the same path.
    assert!(mounts_of(&pod.containers[0]).contains(&want("dra-state", "/run/sriov-rs/dra", false)));

    // Default CNI settings: nothing beyond the fixed NRI mounts (stateDir, draStateDir, /sys
    // and upstreamStateDir under /var/lib/cni are already where the CNI looks), apart from
    // logDir /var/log.
    let objs = template_with("dra.mode=both,dra.nri.enabled=true");
    let pod = objs
        .daemon_set("sriov-rs")
        .spec
        .template
        .spec
        .clone()
        .unwrap();
    let (args, _, mounts) = nri_parts(&pod);
    assert!(args.contains(&"--nri-plugin-index=50".to_string()));
    assert_eq!(mounts.len(), 5, "{mounts:?}");
    assert_eq!(mounts[4], want("nri-host-0", "/var/log", false));
    assert_eq!(
        host_path_of(&pod, "nri-socket").as_deref(),
        Some("/var/run/nri")
    );

    // Off (the default), or on a node left in device-plugin mode: none of it.
    for objs in [
        template_with("dra.mode=both"),
        template_with_all(&[
            "--set",
            "dra.nri.enabled=true",
            "--set-json",
            r#"dra.nodeModes={"worker-7":"dra"}"#,
        ]),
    ] {
        for ds in &objs.daemon_sets {
            let pod = ds.spec.template.spec.clone().unwrap();
            let on = ds.metadata.name.as_deref() == Some("sriov-rs-worker-7");
            let (args, env, mounts) = nri_parts(&pod);
            assert_eq!(!args.is_empty(), on, "{:?}: {args:?}", ds.metadata.name);
            assert_eq!(env.is_some(), on);
            // Without NRI the daemon never sees the CNI's binaries or settings.
            assert_eq!(!mounts.is_empty(), on, "{mounts:?}");
            assert_eq!(host_path_of(&pod, "nri-socket").is_some(), on);
        }
    }
    check_rbac_nri(&template_with("dra.mode=both"), false);
}

/// The sidecar's ClusterRole has `get` on NetworkAttachmentDefinitions exactly with NRI (the
/// attach reads the NAD a VfConfig names), and nothing else more than the DRA rules.
fn check_rbac_nri(objs: &Objects, nri: bool) {
    let granted = common::granted_rules(&objs.cluster_roles[0]);
    let nad: Vec<&String> = granted
        .iter()
        .filter(|r| r.starts_with("k8s.cni.cncf.io/"))
        .collect();
    if nri {
        assert_eq!(nad, ["k8s.cni.cncf.io/network-attachment-definitions:get"]);
    } else {
        assert!(nad.is_empty(), "{nad:?}");
    }
}

#[test]
fn dra_nri_needs_dra_mode_and_checked_values() {
    for (set, message) in [
        (
            "dra.nri.enabled=true",
            "dra.nri.enabled attaches DRA-prepared VFs: it needs dra.mode (or a dra.nodeModes entry) dra or both",
        ),
        (
            "dra.mode=dra,dra.nri.enabled=true,dra.nri.pluginIndex=5",
            "dra.nri.pluginIndex \"5\": must be two digits",
        ),
        (
            "dra.mode=dra,dra.nri.enabled=true,dra.nri.socketDir=run/nri",
            "dra.nri.socketDir \"run/nri\": must be an absolute path",
        ),
        (
            "dra.mode=dra,dra.nri.enabled=true,cniSettings.logDir=/var/../etc",
            "cniSettings.logDir \"/var/../etc\": must be an absolute path without '..'",
        ),
        (
            "dra.mode=dra,dra.nri.enabled=true,cniSettings.logDir=/var/run/nri",
            "cniSettings.logDir \"/var/run/nri\": with dra.nri.enabled the daemon's container must see it at that path",
        ),
    ] {
        assert_refused(set, message);
    }
}
