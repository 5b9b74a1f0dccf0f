//! Kubernetes without Multus: the NAD names only a `resourceName`; kubelet (emulated) allocated
//! the pod's VFs through the real `sriov-device-plugin`; the CNI finds them through the pod
//! resources API from CNI_ARGS `K8S_POD_NAME`/`K8S_POD_NAMESPACE`. Needs root.

mod cni_common;

use cni_common::CniLab;
use serde_json::json;
use sriov_e2e::kubelet::{DaemonArgs, DaemonProcess, KubeletEmulator, RegistrationMode};
use std::time::Duration;

const RESOURCE: &str = "intel.com/sriov_net";

#[test]
fn vfs_come_from_the_pod_resources_api() {
    let lab = CniLab::new("cni-k8s", |s| s.pfs(1).vfs(4));
    let tmp = tempfile::tempdir().unwrap();
    let kubelet_dir = tmp.path().join("kubelet");
    let kubelet = KubeletEmulator::start(&kubelet_dir, RegistrationMode::KubeletSocket)
        .expect("kubelet emulator");
    let config = tmp.path().join("config.json");
    std::fs::write(
        &config,
        json!({"resourceList": [{"resourceName": "sriov_net", "selectors": {"pfNames": ["ens1f0"]}}]}).to_string(),
    )
    .unwrap();
    let args = DaemonArgs {
        config,
        sysfs_root: lab.node.sysfs_root().to_path_buf(),
        kubelet_dir: kubelet_dir.clone(),
        devinfo_dir: tmp.path().join("devinfo"),
        dev_root: lab.node.paths().dev(),
        netns: Some(lab.node.netns_path().to_path_buf()),
        metrics_address: None,
        extra: vec![],
    };
    let bin = sriov_e2e::workspace_binary("sriov-device-plugin");
    let _daemon =
        DaemonProcess::spawn(&bin, &args, &tmp.path().join("daemon.log")).expect("daemon");
    let devices = kubelet
        .wait_devices(RESOURCE, Duration::from_secs(20), |d| d.len() == 4)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    // kubelet gives pod default/web two VFs (in reverse order, to prove the CNI sorts).
    let picked = vec![ids[3].clone(), ids[1].clone()];
    kubelet
        .allocate_pod("web", "default", "app", RESOURCE, &picked)
        .expect("Allocate");

    let pod = lab.pod("web");
    lab.set_node_config(
        json!({"podResourcesSocket": kubelet_dir.join("pod-resources/kubelet.sock")}),
    );
    let conf = lab.conf("1.1.0", json!({"resourceName": RESOURCE}));
    let env = [("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1")];
    let stdin = conf.to_string();
    let add = |ifname: &str| lab.call_env("ADD", "c1", ifname, &pod, stdin.as_bytes(), &env);
    let first = add("net1");
    first.ok();
    assert_eq!(
        first.json()["interfaces"][0]["pciID"],
        ids[1],
        "Multus' order: sorted IDs"
    );
    let second = add("net2");
    second.ok();
    assert_eq!(second.json()["interfaces"][0]["pciID"], ids[3]);
    add("net3").err(101, "all already attached");
    // A pod kubelet gave nothing to.
    let other = lab.pod("other");
    lab.call_env(
        "ADD",
        "c2",
        "net1",
        &other,
        stdin.as_bytes(),
        &[(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nobody",
        )],
    )
    .err(
        7,
        "kubelet reports no intel.com/sriov_net device for pod default/nobody",
    );
    // DEL without a deviceID finds each attachment's VF by its owner.
    for ifname in ["net1", "net2"] {
        lab.call_env("DEL", "c1", ifname, &pod, stdin.as_bytes(), &env)
            .ok();
    }
    assert!(lab.records().is_empty());
    for k in 0..4 {
        assert!(lab.node_link(&format!("ens1f0v{k}")).is_some());
    }
    // kubelet gone: a clear, retryable error.
    drop(kubelet);
    add("net1").err(11, "podResourcesSocket");
}
