//! The CNI and DRA: a pod whose VF came from a DRA claim the node daemon prepared is attached
//! without Multus and without a deviceID: the plugin finds the VF in the daemon's node-local
//! record of prepared claims (`draStateDir`) by the pod's UID (`K8S_POD_UID`) and the config's
//! `resourceName` or `claimName`. Needs root (a simulated node).

mod cni_common;

use cni_common::*;
use serde_json::json;
use sriov::dra_claim::{ClaimRef, Consumer, VfConfig};
use sriov::dra_record::{ClaimRecord, Phase, PreparedDevice, Records};
use sriov_e2e::sim::vf_pci;

fn record(uid: &str, claim: &str, pods: &[&str], pcis: &[String]) -> ClaimRecord {
    ClaimRecord {
        claim: ClaimRef {
            namespace: "default".into(),
            name: claim.into(),
            uid: uid.into(),
        },
        phase: Phase::Prepared,
        devices: pcis
            .iter()
            .map(|pci| PreparedDevice {
                request: "vf".into(),
                pool: "worker-1".into(),
                device: pci.replace([':', '.'], "-"),
                pci: pci.clone(),
                resource_name: "intel.com/net".into(),
                original_driver: Some("iavf".into()),
                original_driver_override: None,
                config: VfConfig::default(),
                cdi_device_id: format!("sriov.sriov-rs.io/vf={uid}-x"),
            })
            .collect(),
        pods: pods
            .iter()
            .map(|p| Consumer {
                resource: "pods".into(),
                name: p.to_string(),
                uid: format!("uid-{p}"),
            })
            .collect(),
        cdi_file: format!("sriov.sriov-rs.io-vf_{uid}.json"),
    }
}

fn args(pod: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}")
}

#[test]
fn a_pods_prepared_vf_is_found_from_the_daemons_records() {
    let lab = CniLab::new("cni-dra", |s| s.pfs(1).vfs(4));
    let dra = tempfile::tempdir().unwrap();
    let dra_dir = dra.path().join("dra");
    let records = Records::open(&dra_dir, true).unwrap();
    // Claim c1 (VF 1) for pod p1; claim c2 (VFs 2 and 3) shared by p1 and p2; an unfinished
    // prepare (VF 0) for p1 that must never be used.
    records
        .write(&record("1111-c1", "c1", &["p1"], &[vf_pci(0, 1)]))
        .unwrap();
    records
        .write(&record(
            "2222-c2",
            "c2",
            &["p1", "p2"],
            &[vf_pci(0, 2), vf_pci(0, 3)],
        ))
        .unwrap();
    let mut half = record("3333-c3", "c3", &["p1"], &[vf_pci(0, 0)]);
    half.phase = Phase::Preparing;
    records.write(&half).unwrap();
    lab.set_node_config(json!({"draStateDir": dra_dir}));

    let add = |cid: &str, pod: &str, netns: &str, extra: serde_json::Value| {
        let conf = lab.conf("1.1.0", extra);
        lab.call_env(
            "ADD",
            cid,
            "net1",
            netns,
            conf.to_string().as_bytes(),
            &[("CNI_ARGS", &args(pod))],
        )
    };
    let p1 = lab.pod("p1");
    // claimName c2: the claim's first VF.
    let r = add("cid-1", "p1", &p1, json!({"claimName": "c2"}));
    assert_eq!(r.ok().json()["interfaces"][0]["pciID"], vf_pci(0, 2));
    // resourceName, no claim: the pod's first prepared VF of that pool not yet attached (c1's).
    let p1b = lab.pod("p1b");
    let r = add(
        "cid-2",
        "p1",
        &p1b,
        json!({"resourceName": "intel.com/net"}),
    );
    assert_eq!(r.ok().json()["interfaces"][0]["pciID"], vf_pci(0, 1));
    // p2 shares c2: it gets the claim's other VF.
    let p2 = lab.pod("p2");
    let r = add("cid-3", "p2", &p2, json!({"claimName": "c2"}));
    assert_eq!(r.ok().json()["interfaces"][0]["pciID"], vf_pci(0, 3));
    // Everything of p2 is attached now; a claim the pod does not have is named.
    let p2b = lab.pod("p2b");
    add("cid-4", "p2", &p2b, json!({"claimName": "c2"})).err(101, "all already attached");
    add("cid-5", "p2", &p2b, json!({"claimName": "c1"})).err(7, "claimName");
    // The unfinished prepare's VF was never handed out; DEL gives the VFs back.
    for (cid, netns) in [("cid-1", &p1), ("cid-2", &p1b), ("cid-3", &p2)] {
        let conf = lab.conf("1.1.0", json!({}));
        lab.call_env("DEL", cid, "net1", netns, conf.to_string().as_bytes(), &[])
            .ok();
    }
}
