//! MAC addresses the platform assigns (node-local `macPrefix`), on a simulated node: 1,000
//! attachments at once on one node get 1,000 distinct MACs from the prefix, a restarted pod gets
//! its MAC again, a config's own MAC still wins, and DEL gives each VF its previous MAC back.
//! Most VFs are bound to vfio-pci (their MAC lives in the record and, on a real PF, as the VF's
//! admin MAC), so the test is not 2,000 netns moves; the kernel VFs show it in the pod. Needs
//! root. (The admin MAC through a real PF: the QEMU lab, cni_vm.rs.)

mod cni_common;

use cni_common::CniLab;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const PREFIX: &str = "0a:58:56";

/// The MAC the VF's record says it was given.
fn record_mac(lab: &CniLab, pci: &str) -> String {
    let text = std::fs::read(lab.state.path().join(format!("vfs/{pci}.json"))).unwrap();
    let record: Value = serde_json::from_slice(&text).unwrap();
    record["assigned_mac"].as_str().unwrap().to_string()
}

fn args(pod: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod};K8S_POD_UID=u-{pod}")
}

/// Every VF netdev of the node with its MAC.
fn node_macs(lab: &CniLab) -> BTreeMap<String, String> {
    CniLab::links_in(&lab.node.netns_name())
        .into_iter()
        .filter(|l| l["ifname"].as_str().unwrap().contains('v'))
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_string(),
                l["address"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_thousand_attachments_get_distinct_stable_macs_from_the_prefix() {
    const PFS: u32 = 8;
    const VFS: u32 = 125;
    /// Per PF, the VFs after the first `KERNEL` are bound to vfio-pci.
    const KERNEL: u32 = 5;
    let lab = CniLab::new("cni-macs", |s| s.pfs(PFS).vfs(VFS).vfio(VFS - KERNEL));
    lab.set_node_config(json!({"macPrefix": PREFIX}));
    let before = node_macs(&lab);
    let pod = lab.pod("many");
    let conf = |pf: u32, vf: u32| lab.conf("1.1.0", json!({"deviceID": lab.vf_pci(pf, vf)}));
    // 1,000 ADDs, eight at a time: every VF of the node into one pod (net0..net999).
    let macs: Vec<(usize, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (lab, pod, conf) = (&lab, &pod, &conf);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in (t..(PFS * VFS) as usize).step_by(8) {
                        let (pf, vf) = (i as u32 / VFS, i as u32 % VFS);
                        let c = lab.call_env(
                            "ADD",
                            &format!("c{i}"),
                            &format!("net{i}"),
                            pod,
                            conf(pf, vf).to_string().as_bytes(),
                            &[("CNI_ARGS", &args(&format!("pod-{i}")))],
                        );
                        c.ok();
                        // A kernel VF's MAC is in the result; a vfio-pci VF's in its record.
                        let mac = match c.json()["interfaces"][0]["mac"].as_str() {
                            Some(m) => m.to_string(),
                            None => record_mac(lab, &lab.vf_pci(pf, vf)),
                        };
                        out.push((i, mac));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let distinct: BTreeSet<&String> = macs.iter().map(|(_, m)| m).collect();
    assert_eq!(distinct.len(), 1000, "no MAC given twice");
    assert!(
        macs.iter().all(|(_, m)| m.starts_with(PREFIX)),
        "all from the prefix"
    );
    // What the pod sees is what was given.
    let pod_macs: BTreeMap<String, String> = CniLab::links_in(CniLab::ns_name(&pod))
        .into_iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_string(),
                l["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut seen = 0;
    for (i, mac) in &macs {
        if let Some(in_pod) = pod_macs.get(&format!("net{i}")) {
            assert_eq!(in_pod, mac, "net{i}");
            seen += 1;
        }
    }
    assert_eq!(seen, (PFS * KERNEL) as usize, "every kernel VF in the pod");
    // DEL: every VF back with its previous MAC.
    std::thread::scope(|s| {
        for t in 0..8 {
            let (lab, pod, conf) = (&lab, &pod, &conf);
            s.spawn(move || {
                for i in (t..(PFS * VFS) as usize).step_by(8) {
                    let (pf, vf) = (i as u32 / VFS, i as u32 % VFS);
                    let c = conf(pf, vf).to_string();
                    lab.call_env(
                        "DEL",
                        &format!("c{i}"),
                        &format!("net{i}"),
                        pod,
                        c.as_bytes(),
                        &[],
                    )
                    .ok();
                }
            });
        }
    });
    assert_eq!(node_macs(&lab), before, "previous MACs back");
    assert!(lab.records().is_empty());

    // The same pod, restarted (a new container), gets the same MAC; a config's MAC still wins.
    let first: Value = macs.iter().find(|(i, _)| *i == 3).unwrap().1.clone().into();
    let again = lab.call_env(
        "ADD",
        "restarted",
        "net3",
        &pod,
        conf(0, 3).to_string().as_bytes(),
        &[("CNI_ARGS", &args("pod-3"))],
    );
    again.ok();
    assert_eq!(again.json()["interfaces"][0]["mac"], first);
    lab.call("DEL", "restarted", "net3", &pod, &conf(0, 3)).ok();
    let own = lab.conf(
        "1.1.0",
        json!({"deviceID": lab.vf_pci(0, 3), "mac": "02:00:00:00:77:07"}),
    );
    let c = lab.call_env(
        "ADD",
        "own",
        "net3",
        &pod,
        own.to_string().as_bytes(),
        &[("CNI_ARGS", &args("pod-3"))],
    );
    c.ok();
    assert_eq!(c.json()["interfaces"][0]["mac"], "02:00:00:00:77:07");
    lab.call("DEL", "own", "net3", &pod, &own).ok();
    assert_eq!(node_macs(&lab), before);
}
