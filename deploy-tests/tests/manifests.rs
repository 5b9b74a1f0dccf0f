//! The plain manifests in deploy/: parsed into their k8s-openapi types and held to the same
//! checks as the chart, plus the examples against the ConfigMap they rely on.

mod common;

use common::{
    check_config_map, check_daemon_set, check_nad, check_rbac, parse_file, repo_root, Expect,
    Objects,
};
use std::collections::BTreeSet;

fn load(rel: &str) -> Objects {
    parse_file(&repo_root().join(rel))
}

fn merge(parts: Vec<Objects>) -> Objects {
    let mut all = Objects::default();
    for p in parts {
        all.namespaces.extend(p.namespaces);
        all.service_accounts.extend(p.service_accounts);
        all.cluster_roles.extend(p.cluster_roles);
        all.cluster_role_bindings.extend(p.cluster_role_bindings);
        all.admission_policies.extend(p.admission_policies);
        all.admission_policy_bindings
            .extend(p.admission_policy_bindings);
        all.config_maps.extend(p.config_maps);
        all.daemon_sets.extend(p.daemon_sets);
        all.services.extend(p.services);
        all.crds.extend(p.crds);
        all.pods.extend(p.pods);
        all.device_classes.extend(p.device_classes);
        all.claim_templates.extend(p.claim_templates);
        all.dynamic.extend(p.dynamic);
    }
    all
}

#[test]
fn every_yaml_file_in_deploy_is_checked_here() {
    let mut files = BTreeSet::new();
    for dir in ["deploy", "deploy/examples", "deploy/dra", "deploy/dra/nri"] {
        for e in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") || name.ends_with(".yml") {
                files.insert(format!("{dir}/{name}"));
            }
        }
    }
    let checked: BTreeSet<String> = [
        "deploy/namespace.yaml",
        "deploy/rbac.yaml",
        "deploy/configmap.yaml",
        "deploy/daemonset.yaml",
        "deploy/crd-sriovnodestate.yaml",
        "deploy/examples/nad-kernel-vlan-mtu.yaml",
        "deploy/examples/nad-dpdk.yaml",
        "deploy/examples/pod.yaml",
        "deploy/examples/dra-claim.yaml",
        "deploy/dra/rbac.yaml",
        "deploy/dra/deviceclass.yaml",
        "deploy/dra/nri/rbac.yaml",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, checked, "a new manifest needs its checks");
}

#[test]
fn node_daemon_manifests() {
    let objs = merge(
        [
            "deploy/namespace.yaml",
            "deploy/rbac.yaml",
            "deploy/configmap.yaml",
            "deploy/daemonset.yaml",
        ]
        .into_iter()
        .map(load)
        .collect(),
    );
    let ns = &objs.namespaces[0];
    assert_eq!(ns.metadata.name.as_deref(), Some("sriov-rs"));
    assert_eq!(
        ns.metadata.labels.as_ref().unwrap()["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    check_rbac(&objs, "sriov-rs", "sriov-device-plugin", false);
    assert_eq!(
        objs.config_maps[0].metadata.namespace.as_deref(),
        Some("sriov-rs")
    );
    check_config_map(&objs.config_maps[0], "intel.com");
    assert_eq!(objs.daemon_sets.len(), 1);
    check_daemon_set(
        &objs.daemon_sets[0],
        &Expect {
            namespace: "sriov-rs".into(),
            image: "ghcr.io/sriov-rs/sriov-rs:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
            service_account: "sriov-device-plugin".into(),
            config_map: objs.config_maps[0].metadata.name.clone().unwrap(),
            config_key: None,
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
        },
    );
}

#[test]
fn crd_manifest_is_the_generated_one() {
    let objs = load("deploy/crd-sriovnodestate.yaml");
    assert_eq!(
        objs.crds,
        [<sriov_node_state::SriovNodeState as kube::CustomResourceExt>::crd()]
    );
    let chart = load("charts/sriov-rs/crds/sriovnodestate.yaml");
    assert_eq!(chart.crds, objs.crds);
}

#[test]
fn examples_ask_for_resources_the_config_defines() {
    let config = load("deploy/configmap.yaml");
    let resources: BTreeSet<String> = check_config_map(&config.config_maps[0], "intel.com")
        ["config.json"]
        .iter()
        .cloned()
        .collect();

    let kernel = load("deploy/examples/nad-kernel-vlan-mtu.yaml");
    let (kernel_res, kernel_conf) = check_nad(kernel.dynamic_of("NetworkAttachmentDefinition")[0]);
    assert!(resources.contains(&kernel_res), "{kernel_res}");
    assert_eq!(kernel_conf["vlan"], 100);
    assert_eq!(kernel_conf["mtu"], 9000);
    assert_eq!(kernel_conf["mtuLock"], true);
    assert!(kernel_conf["ipam"]["type"].is_string());

    let dpdk = load("deploy/examples/nad-dpdk.yaml");
    let (dpdk_res, dpdk_conf) = check_nad(dpdk.dynamic_of("NetworkAttachmentDefinition")[0]);
    assert!(resources.contains(&dpdk_res), "{dpdk_res}");
    assert!(
        dpdk_conf.get("ipam").is_none(),
        "a vfio VF has no netdev to address"
    );
    assert!(
        dpdk_conf.get("mtu").is_none(),
        "a vfio VF has no netdev MTU to set"
    );

    let pods = load("deploy/examples/pod.yaml").pods;
    let pod = &pods[0];
    let networks = &pod.metadata.annotations.as_ref().unwrap()["k8s.v1.cni.cncf.io/networks"];
    let networks: Vec<&str> = networks.split(',').map(str::trim).collect();
    let nads = [
        kernel.dynamic_of("NetworkAttachmentDefinition")[0],
        dpdk.dynamic_of("NetworkAttachmentDefinition")[0],
    ];
    assert_eq!(networks, nads.map(|n| n.metadata.name.as_deref().unwrap()));
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let res = c.resources.as_ref().unwrap();
    for name in [&kernel_res, &dpdk_res] {
        // Extended resources: requests must equal limits.
        assert_eq!(
            res.requests.as_ref().unwrap()[name.as_str()].0,
            "1",
            "{name}"
        );
        assert_eq!(res.limits.as_ref().unwrap()[name.as_str()].0, "1", "{name}");
    }
    for nad in nads {
        assert_eq!(
            nad.metadata.namespace, pod.metadata.namespace,
            "the NADs live in the pod's namespace"
        );
    }
}

/// deploy/dra: the DRA ClusterRole grants exactly the DRA calls to the same account as
/// rbac.yaml, its policy confines them to the node (CEL evaluated), and the example claim
/// template asks for a class that exists, which the example pod uses.
#[test]
fn dra_manifests() {
    let base = load("deploy/rbac.yaml");
    let dra = load("deploy/dra/rbac.yaml");
    let role = &dra.cluster_roles[0];
    let granted = common::granted_rules(role);
    assert_eq!(
        granted,
        [
            "resource.k8s.io/resourceslices:list",
            "resource.k8s.io/resourceslices:create",
            "resource.k8s.io/resourceslices:update",
            "resource.k8s.io/resourceslices:delete",
            "resource.k8s.io/resourceclaims:get",
            "resource.k8s.io/resourceclaims/status:patch",
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );
    let sa = &base.service_accounts[0];
    let subject = &dra.cluster_role_bindings[0].subjects.as_ref().unwrap()[0];
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    assert_eq!(dra.admission_policies.len(), 1);
    common::check_own_node_dra_policy(
        &dra,
        &dra.admission_policies[0],
        sa.metadata.namespace.as_deref().unwrap(),
        sa.metadata.name.as_deref().unwrap(),
    );

    let classes = load("deploy/dra/deviceclass.yaml").device_classes;
    let names: BTreeSet<&str> = classes
        .iter()
        .map(|c| c.metadata.name.as_deref().unwrap())
        .collect();
    let example = load("deploy/examples/dra-claim.yaml");
    let template = &example.claim_templates[0];
    let t = serde_json::to_value(template).unwrap();
    let requests = t["spec"]["spec"]["devices"]["requests"].as_array().unwrap();
    assert!(!requests.is_empty());
    for r in requests {
        let class = r["exactly"]["deviceClassName"].as_str().unwrap();
        assert!(names.contains(class), "{class} is not in deviceclass.yaml");
    }
    let pod = &example.pods[0];
    let claims = pod.spec.as_ref().unwrap().resource_claims.as_ref().unwrap();
    assert_eq!(
        claims[0].resource_claim_template_name.as_deref(),
        template.metadata.name.as_deref()
    );
    let used = &pod.spec.as_ref().unwrap().containers[0]
        .resources
        .as_ref()
        .unwrap()
        .claims
        .as_ref()
        .unwrap()[0]
        .name;
    assert_eq!(used, &claims[0].name);
}

/// deploy/dra/nri: get on NetworkAttachmentDefinitions, nothing else, for the same account.
#[test]
fn dra_nri_manifest() {
    let base = load("deploy/rbac.yaml");
    let nri = load("deploy/dra/nri/rbac.yaml");
    assert_eq!(nri.cluster_roles.len(), 1);
    assert_eq!(
        common::granted_rules(&nri.cluster_roles[0]),
        BTreeSet::from(["k8s.cni.cncf.io/network-attachment-definitions:get".to_string()])
    );
    let binding = &nri.cluster_role_bindings[0];
    assert_eq!(
        Some(&binding.role_ref.name),
        nri.cluster_roles[0].metadata.name.as_ref()
    );
    let sa = &base.service_accounts[0];
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}
