//! The `sriov` CNI plugin under stress on a simulated node: parallel ADD/DEL on one PF, pools
//! claimed in parallel, and 1,000 ADD/DEL cycles (kills: `cni_sim_crash.rs`). Needs root.

mod cni_common;

use cni_common::CniLab;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;

fn node_link_count(lab: &CniLab) -> usize {
    CniLab::links_in(&lab.node.netns_name()).len()
}

#[test]
fn parallel_adds_then_dels_on_one_pf() {
    const N: u32 = 32;
    let lab = CniLab::new("cni-par", |s| s.pfs(1).vfs(N));
    let before: Vec<Value> = (0..N)
        .map(|k| lab.fingerprint(&format!("ens1f0v{k}")))
        .collect();
    let pods: Vec<String> = (0..N).map(|k| lab.pod(&format!("p{k}"))).collect();
    let conf = |k: u32| {
        lab.conf(
            "1.1.0",
            json!({"deviceID": lab.vf_pci(0, k), "mtu": 1450, "ipam": lab.host_local("10.44.0.0/16")}),
        )
    };
    let run_all = |cmd: &str| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..N)
                .map(|k| {
                    let (pod, conf, lab) = (&pods[k as usize], conf(k), &lab);
                    s.spawn(move || lab.call(cmd, &format!("c{k}"), "net1", pod, &conf))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let adds = run_all("ADD");
    let mut ips = BTreeSet::new();
    for (k, c) in adds.iter().enumerate() {
        c.ok();
        ips.insert(c.json()["ips"][0]["address"].as_str().unwrap().to_string());
        assert!(CniLab::pod_link(&pods[k], "net1").is_some(), "pod {k}");
    }
    assert_eq!(ips.len(), N as usize, "distinct addresses");
    assert_eq!(lab.records().len(), N as usize);
    for c in run_all("DEL") {
        c.ok();
    }
    for k in 0..N {
        assert_eq!(
            lab.fingerprint(&format!("ens1f0v{k}")),
            before[k as usize],
            "VF {k}"
        );
    }
    assert!(lab.records().is_empty());
    assert!(lab.reservations().is_empty());
}

#[test]
fn pool_vfs_are_claimed_once_under_parallel_adds() {
    const N: u32 = 8;
    let lab = CniLab::new("cni-pool", |s| s.pfs(2).vfs(N));
    let dir = tempfile::tempdir().unwrap();
    let pool_config = dir.path().join("config.json");
    std::fs::write(
        &pool_config,
        json!({"resourceList": [{"resourceName": "sriov_a", "selectors": {"pfNames": ["ens1f0"]}}]}).to_string(),
    )
    .unwrap();
    lab.set_node_config(json!({"poolConfig": pool_config}));
    let conf = lab.conf("1.0.0", json!({"resourceName": "intel.com/sriov_a"}));
    let pods: Vec<String> = (0..=N).map(|k| lab.pod(&format!("p{k}"))).collect();
    let adds: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|k| {
                let (pod, conf, lab) = (&pods[k as usize], &conf, &lab);
                let args = format!("IgnoreUnknown=1;K8S_POD_NAME=ctr{k}");
                s.spawn(move || {
                    lab.call_env(
                        "ADD",
                        &format!("c{k}"),
                        "eth0",
                        pod,
                        conf.to_string().as_bytes(),
                        &[("CNI_ARGS", &args)],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for c in &adds {
        c.ok();
        let r = c.json();
        assert_eq!(r["interfaces"][0]["name"], "eth0");
    }
    let owned: BTreeSet<String> = lab.records().into_iter().collect();
    assert_eq!(owned.len(), N as usize, "each ADD got its own VF of PF 0");
    assert!(owned.iter().all(|r| r.starts_with("0000:3b:")), "{owned:?}");
    // The pool is exhausted now.
    lab.call("ADD", "cx", "eth0", &pods[N as usize], &conf)
        .err(101, "every VF of pool intel.com/sriov_a is in use");
    for k in 0..N {
        lab.call("DEL", &format!("c{k}"), "eth0", &pods[k as usize], &conf)
            .ok();
    }
    assert!(lab.records().is_empty());
    for k in 0..N {
        assert!(lab.node_link(&format!("ens1f0v{k}")).is_some());
    }
}

#[test]
fn a_thousand_add_del_cycles_leak_nothing() {
    let lab = CniLab::new("cni-cycles", |s| s.pfs(1).vfs(2));
    let before = lab.fingerprint("ens1f0v1");
    let links_before = node_link_count(&lab);
    let pod = lab.pod("a");
    let conf = lab.conf(
        "1.0.0",
        json!({"deviceID": lab.vf_pci(0, 1), "ipam": lab.host_local("10.33.0.0/24")}),
    );
    for i in 0..1000 {
        let cid = format!("cycle{i}");
        lab.call("ADD", &cid, "net1", &pod, &conf).ok();
        lab.call("DEL", &cid, "net1", &pod, &conf).ok();
    }
    assert_eq!(lab.fingerprint("ens1f0v1"), before);
    assert_eq!(node_link_count(&lab), links_before);
    assert_eq!(
        CniLab::links_in(CniLab::ns_name(&pod)).len(),
        1,
        "only lo in the pod"
    );
    assert!(lab.records().is_empty());
    assert!(lab.reservations().is_empty());
    let locks = std::fs::read_dir(lab.state.path().join("locks"))
        .unwrap()
        .count();
    assert_eq!(locks, 1, "one lock file per VF ever used");
    let stray: Vec<_> = std::fs::read_dir(lab.state.path().join("vfs"))
        .unwrap()
        .collect();
    assert!(stray.is_empty(), "no temp files: {stray:?}");
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&ns.stdout).contains(CniLab::ns_name(&pod)));
}
