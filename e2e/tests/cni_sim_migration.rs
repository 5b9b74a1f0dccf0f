//! A node switched from upstream sriov-cni to `sriov` while pods run, on a simulated node: the
//! VFs sriov-cni attached are left as its ADD leaves them (moved into the pod, renamed, MAC and
//! MTU changed) with its records written in its format (../shared/FACTS.md §6: the cache
//! `<container>-<ifname>` with `OrigVfState`, and `pci/<address>` holding the pod's netns). Our
//! DEL restores the VF and removes sriov-cni's files as its own DEL would; CHECK and GC
//! understand those attachments; ADD refuses a VF sriov-cni holds in a live namespace. Needs root.

mod cni_common;

use cni_common::CniLab;
use serde_json::{json, Value};
use std::path::Path;

const VF1: &str = "0000:3b:02.1";
const VF2: &str = "0000:3b:02.2";
const DPDK_VF: &str = "0000:3b:02.3";

/// A lab whose node-local settings name a folder for sriov-cni's records.
fn lab(prefix: &str) -> (CniLab, tempfile::TempDir) {
    let lab = CniLab::new(prefix, |s| s.pfs(1).vfs(4).vfio(1));
    let up = tempfile::tempdir().unwrap();
    std::fs::create_dir(up.path().join("pci")).unwrap();
    lab.set_node_config(json!({"upstreamStateDir": up.path()}));
    (lab, up)
}

/// The cache sriov-cni v2.10 writes at the end of its ADD: the network config merged with its
/// own fields (`LoadConf` fills Master and VFID, `FillOriginalVfInfo` and `SetupVF` the
/// original state).
fn cache(conf: &Value, pci: &str, vf_id: u32, host_ifname: &str, mac: &str, mtu: u64) -> Value {
    let mut c = conf.clone();
    c["deviceID"] = json!(pci);
    c["Master"] = json!("ens1f0");
    c["VFID"] = json!(vf_id);
    c["MAC"] = json!("");
    c["MTU"] = Value::Null;
    c["OrigVfState"] = json!({
        "HostIFName": host_ifname, "SpoofChk": false, "Trust": false,
        "AdminMAC": "00:00:00:00:00:00", "EffectiveMAC": mac, "Vlan": 0, "VlanQoS": 0,
        "VlanProto": 33024, "MinTxRate": 0, "MaxTxRate": 0, "LinkState": 0, "MTU": mtu,
    });
    c
}

/// What sriov-cni's ADD does to a kernel VF on this node: down, into the pod as `net1`, its
/// MAC and MTU set, up.
fn attach_as_sriov_cni(lab: &CniLab, vf_netdev: &str, pod: &str, mac: &str) {
    let node = lab.node.netns_name();
    let ns = CniLab::ns_name(pod);
    CniLab::ip(&node, &["link", "set", vf_netdev, "down"]);
    CniLab::ip(&node, &["link", "set", vf_netdev, "netns", ns]);
    CniLab::ip(ns, &["link", "set", vf_netdev, "name", "net1"]);
    CniLab::ip(
        ns,
        &["link", "set", "net1", "address", mac, "mtu", "1400", "up"],
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["", "pci"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn del_check_and_add_understand_what_sriov_cni_attached() {
    let (lab, up) = lab("cni-mig");
    let node = lab.node.netns_name();
    // sriov-cni's DEL leaves VFs down: so is this one before it is attached.
    CniLab::ip(&node, &["link", "set", "ens1f0v1", "down"]);
    let before = lab.fingerprint("ens1f0v1");
    let (pod, other) = (lab.pod("a"), lab.pod("b"));
    let conf = lab.conf(
        "1.0.0",
        json!({"deviceID": VF1, "ipam": lab.host_local("10.71.0.0/24")}),
    );
    attach_as_sriov_cni(&lab, "ens1f0v1", &pod, "02:00:00:00:71:01");
    let c = cache(
        &conf,
        VF1,
        1,
        "ens1f0v1",
        before["address"].as_str().unwrap(),
        before["mtu"].as_u64().unwrap(),
    );
    write(up.path(), "c1-net1", &c.to_string());
    write(&up.path().join("pci"), VF1, &pod);

    // sriov-cni holds the VF in a live namespace: nobody else gets it.
    lab.call("ADD", "c2", "net1", &other, &conf)
        .err(101, "attached by sriov-cni to the live network namespace");
    assert!(CniLab::pod_link(&pod, "net1").is_some(), "untouched");

    // CHECK compares the pod's interface with prevResult.
    let mut check = conf.clone();
    check["prevResult"] = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "mac": "02:00:00:00:71:01", "sandbox": pod}]});
    check.as_object_mut().unwrap().remove("ipam");
    lab.call("CHECK", "c1", "net1", &pod, &check).ok();
    check["prevResult"]["interfaces"][0]["mac"] = json!("02:00:00:00:71:99");
    lab.call("CHECK", "c1", "net1", &pod, &check)
        .err(100, "prevResult says 02:00:00:00:71:99");

    // DEL: the VF back as it was, sriov-cni's files gone as its own DEL removes them.
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert_eq!(
        lab.fingerprint("ens1f0v1"),
        before,
        "restored from OrigVfState"
    );
    assert!(CniLab::pod_link(&pod, "net1").is_none());
    assert!(files(up.path()).is_empty(), "{:?}", files(up.path()));
    assert!(lab.records().is_empty());
    // Again: nothing to do.
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert_eq!(lab.fingerprint("ens1f0v1"), before);
    // And the VF is ours to give now.
    lab.call("ADD", "c2", "net1", &other, &conf).ok();
    lab.call("DEL", "c2", "net1", &other, &conf).ok();

    // A DPDK VF: sriov-cni saved no netdev (HostIFName ""); DEL has only files to remove here
    // (the simulated PF has no VF settings to reset).
    let dpdk = lab.conf("1.0.0", json!({"deviceID": DPDK_VF}));
    write(
        up.path(),
        "c3-net1",
        &cache(&dpdk, DPDK_VF, 3, "", "", 0).to_string(),
    );
    write(&up.path().join("pci"), DPDK_VF, &pod);
    lab.call("DEL", "c3", "net1", &pod, &dpdk).ok();
    assert!(files(up.path()).is_empty(), "{:?}", files(up.path()));
    assert!(lab.records().is_empty());
}

#[test]
fn gc_releases_sriov_cni_attachments_not_in_the_valid_list() {
    let (lab, up) = lab("cni-mig-gc");
    let node = lab.node.netns_name();
    CniLab::ip(&node, &["link", "set", "ens1f0v1", "down"]);
    CniLab::ip(&node, &["link", "set", "ens1f0v2", "down"]);
    let before = [lab.fingerprint("ens1f0v1"), lab.fingerprint("ens1f0v2")];
    let (pa, pb) = (lab.pod("a"), lab.pod("b"));
    let conf = lab.conf("1.1.0", json!({}));
    for (vf, netdev, pod, cid, k) in [
        (VF1, "ens1f0v1", &pa, "ca", 0),
        (VF2, "ens1f0v2", &pb, "cb", 1),
    ] {
        attach_as_sriov_cni(&lab, netdev, pod, &format!("02:00:00:00:72:0{k}"));
        let c = cache(
            &conf,
            vf,
            k + 1,
            netdev,
            before[k as usize]["address"].as_str().unwrap(),
            1500,
        );
        write(up.path(), &format!("{cid}-net1"), &c.to_string());
        write(&up.path().join("pci"), vf, pod);
    }
    // Another network's GC leaves them alone.
    let mut other = lab.conf("1.1.0", json!({"cni.dev/valid-attachments": []}));
    other["name"] = json!("another-net");
    lab.call("GC", "", "", "", &other).ok();
    assert_eq!(files(up.path()).len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ca", "ifname": "net1"}]);
    lab.call("GC", "", "", "", &gc).ok();
    assert_eq!(
        files(up.path()),
        ["/ca-net1".to_string(), format!("pci/{VF1}")]
    );
    assert_eq!(lab.fingerprint("ens1f0v2"), before[1], "cb's VF released");
    assert!(CniLab::pod_link(&pa, "net1").is_some(), "ca keeps its VF");
}
