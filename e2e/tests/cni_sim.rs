//! The `sriov` CNI plugin on a simulated node (veth stand-ins for VFs, which reject PF-side
//! settings with EOPNOTSUPP). Needs root. Every test builds its own lab.

mod cni_common;

use cni_common::{CniLab, VERSIONS};
use serde_json::{json, Value};
use std::process::Command;

const VF0: &str = "0000:3b:02.0";
const VF1: &str = "0000:3b:02.1";
const VF2: &str = "0000:3b:02.2";

fn lab(prefix: &str) -> CniLab {
    CniLab::new(prefix, |s| s.pfs(2).vfs(4))
}

#[test]
fn version_for_each_spec_version() {
    let lab = lab("cni-version");
    for v in VERSIONS {
        let c = lab.call("VERSION", "", "", "", &json!({"cniVersion": v}));
        c.ok();
        let j = c.json();
        assert_eq!(j["cniVersion"], v);
        assert_eq!(j["supportedVersions"], json!(VERSIONS));
    }
}

#[test]
fn add_check_del_for_each_spec_version() {
    let lab = lab("cni-versions");
    let before = lab.fingerprint("ens1f0v1");
    for (i, v) in VERSIONS.iter().enumerate() {
        let pod = lab.pod(&format!("p{i}"));
        let conf = lab.conf(
            v,
            json!({"deviceID": VF1, "mtu": 1400, "mac": "02:00:00:00:01:01"}),
        );
        let r = lab.call("ADD", "c1", "net1", &pod, &conf);
        r.ok();
        let res = r.json();
        assert_eq!(res["cniVersion"], *v);
        let iface = &res["interfaces"][0];
        if *v < "0.3.0" {
            // 0.1.0/0.2.0 results have no interfaces (and without IPAM, no ip4/ip6).
            assert_eq!(res, json!({"cniVersion": v, "dns": {}}), "{v}");
        } else {
            assert_eq!(iface["name"], "net1");
            assert_eq!(iface["mac"], "02:00:00:00:01:01");
            assert_eq!(iface["sandbox"], pod);
        }
        if *v == "1.1.0" {
            assert_eq!(iface["mtu"], 1400);
            assert_eq!(iface["pciID"], VF1);
        } else {
            assert!(
                iface.get("mtu").is_none() && iface.get("pciID").is_none(),
                "{res}"
            );
        }
        let link = CniLab::pod_link(&pod, "net1").expect("net1 in the pod");
        assert_eq!(link["mtu"], 1400);
        assert_eq!(link["address"], "02:00:00:00:01:01");
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        assert!(lab.node_link("ens1f0v1").is_none(), "the VF left the node");
        if *v >= "0.4.0" {
            let mut c = conf.clone();
            c["prevResult"] = res.clone();
            lab.call("CHECK", "c1", "net1", &pod, &c).ok();
        } else {
            let mut c = conf.clone();
            c["prevResult"] = res.clone();
            lab.call("CHECK", "c1", "net1", &pod, &c)
                .err(1, "CHECK needs 0.4.0");
        }
        lab.call("DEL", "c1", "net1", &pod, &conf).ok();
        assert_eq!(lab.fingerprint("ens1f0v1"), before, "VF restored after {v}");
        assert!(lab.records().is_empty());
        // DEL again, and containerd's second DEL without a netns.
        lab.call("DEL", "c1", "net1", &pod, &conf).ok();
        lab.call("DEL", "c1", "net1", "", &conf).ok();
    }
    // Without cniVersion (as upstream's RDMA and DPDK NAD examples): 0.1.0.
    let pod = lab.pod("noversion");
    let mut conf = lab.conf("x", json!({"deviceID": VF1}));
    conf.as_object_mut().unwrap().remove("cniVersion");
    let r = lab.call("ADD", "c1", "net1", &pod, &conf);
    r.ok();
    assert_eq!(r.json(), json!({"cniVersion": "0.1.0", "dns": {}}));
    assert!(CniLab::pod_link(&pod, "net1").is_some());
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert_eq!(lab.fingerprint("ens1f0v1"), before);
    // A version we do not speak: ADD refuses it, DEL (nothing to do, or something) succeeds.
    conf["cniVersion"] = json!("9.9.9");
    lab.call("ADD", "c1", "net1", &pod, &conf).err(1, "9.9.9");
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    conf.as_object_mut().unwrap().remove("cniVersion");
    lab.call("ADD", "c1", "net1", &pod, &conf).ok();
    conf["cniVersion"] = json!("9.9.9");
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert_eq!(
        lab.fingerprint("ens1f0v1"),
        before,
        "a DEL in any version restores"
    );
    assert!(lab.records().is_empty());
}

#[test]
fn host_local_ipam_add_check_del() {
    let lab = lab("cni-hostlocal");
    let pod = lab.pod("a");
    let conf = lab.conf(
        "1.0.0",
        json!({"deviceID": VF0, "ipam": lab.host_local("10.66.0.0/24")}),
    );
    let r = lab.call("ADD", "c1", "net1", &pod, &conf);
    r.ok();
    let res = r.json();
    let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(addr.starts_with("10.66.0."), "{res}");
    let out = Command::new("ip")
        .args(["-n", CniLab::ns_name(&pod), "-j", "addr", "show", "net1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(addr.split('/').next().unwrap()));
    assert_eq!(lab.reservations().len(), 1);
    let mut c = conf.clone();
    c["prevResult"] = res;
    lab.call("CHECK", "c1", "net1", &pod, &c).ok();
    // Drift: the address removed.
    CniLab::ip(CniLab::ns_name(&pod), &["addr", "flush", "dev", "net1"]);
    lab.call("CHECK", "c1", "net1", &pod, &c)
        .err(100, "is missing from net1");
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert!(lab.reservations().is_empty(), "IP released");
    assert!(lab.records().is_empty());
}

#[test]
fn static_ipam_routes_and_cni_args() {
    let lab = lab("cni-static");
    let pod = lab.pod("a");
    let conf = lab.conf(
        "0.4.0",
        json!({"deviceID": VF2, "ipam": {"type": "static", "routes": [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}, {"dst": "192.168.5.0/24"}]}}),
    );
    let c = lab.call_env(
        "ADD",
        "c1",
        "eth0",
        &pod,
        conf.to_string().as_bytes(),
        &[(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.77.0.9/24;MAC=02:00:00:00:07:07",
        )],
    );
    c.ok();
    let res = c.json();
    assert_eq!(res["ips"][0]["address"], "10.77.0.9/24");
    assert_eq!(res["ips"][0]["version"], "4");
    assert_eq!(res["interfaces"][0]["mac"], "02:00:00:00:07:07");
    let routes = Command::new("ip")
        .args(["-n", CniLab::ns_name(&pod), "route"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("default via 10.77.0.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("192.168.5.0/24"), "{routes}");
    let notify = Command::new("ip")
        .args([
            "netns",
            "exec",
            CniLab::ns_name(&pod),
            "cat",
            "/proc/sys/net/ipv4/conf/eth0/arp_notify",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&notify.stdout).trim(),
        "1",
        "gratuitous ARP on up"
    );
    lab.call("DEL", "c1", "eth0", &pod, &conf).ok();
    assert!(lab.node_link("ens1f0v2").is_some());
}

#[test]
fn bad_inputs_get_the_right_code_and_leave_the_vf_untouched() {
    let lab = lab("cni-bad");
    let pod = lab.pod("a");
    let other = lab.pod("other");
    let before = lab.fingerprint("ens1f0v1");
    // A VF another netns holds (moved there behind our back).
    CniLab::ip(
        &lab.node.netns_name(),
        &["link", "set", "ens1f0v3", "netns", CniLab::ns_name(&other)],
    );
    // A pod that already has the interface name.
    CniLab::ip(
        CniLab::ns_name(&pod),
        &[
            "link", "add", "taken0", "type", "veth", "peer", "name", "taken0p",
        ],
    );
    let good = lab.conf("1.0.0", json!({"deviceID": VF1}));
    let with = |extra: Value| {
        let mut c = good.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string().into_bytes()
    };
    /// (what, stdin, env overrides, error code, message part)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            b"{\"cniVersion\":".to_vec(),
            vec![],
            6,
            "not valid JSON",
        ),
        (
            "unknown cniVersion",
            with(json!({"cniVersion": "0.2.9"})),
            vec![],
            1,
            "0.2.9",
        ),
        (
            "missing netns",
            with(json!({})),
            vec![("CNI_NETNS", "")],
            4,
            "CNI_NETNS",
        ),
        (
            "netns not a namespace",
            with(json!({})),
            vec![("CNI_NETNS", "/etc/hostname")],
            4,
            "CNI_NETNS",
        ),
        (
            "missing container id",
            with(json!({})),
            vec![("CNI_CONTAINERID", "")],
            4,
            "CNI_CONTAINERID",
        ),
        (
            "bad command",
            with(json!({})),
            vec![("CNI_COMMAND", "ATTACH")],
            4,
            "CNI_COMMAND",
        ),
        (
            "bad CNI_ARGS",
            with(json!({})),
            vec![("CNI_ARGS", "FOO=1")],
            4,
            "CNI_ARGS",
        ),
        (
            "invalid deviceID",
            with(json!({"deviceID": "../../x"})),
            vec![],
            7,
            "deviceID",
        ),
        (
            "no such VF",
            with(json!({"deviceID": "0000:99:02.0"})),
            vec![],
            7,
            "deviceID: no such PCI device",
        ),
        (
            "a PF is no VF",
            with(json!({"deviceID": "0000:3b:00.0"})),
            vec![],
            7,
            "not an SR-IOV VF",
        ),
        (
            "ifname too long",
            with(json!({})),
            vec![("CNI_IFNAME", "averyverylongifname")],
            4,
            "CNI_IFNAME",
        ),
        (
            "ifname exists",
            with(json!({})),
            vec![("CNI_IFNAME", "taken0")],
            4,
            "CNI_IFNAME: taken0 already exists",
        ),
        (
            "mtu above the PF's",
            with(json!({"mtu": 9000})),
            vec![],
            7,
            "mtu: 9000 is above the MTU 1500",
        ),
        (
            "vlan out of range",
            with(json!({"vlan": 5000})),
            vec![],
            7,
            "vlan",
        ),
        (
            "PF-side vlan on veth",
            with(json!({"vlan": 100})),
            vec![],
            100,
            "vlan 100: the i40e driver does not support it (EOPNOTSUPP)",
        ),
        (
            "PF-side trust on veth",
            with(json!({"trust": "on"})),
            vec![],
            100,
            "trust on: the i40e driver",
        ),
        (
            "PF-side max_tx_rate on veth",
            with(json!({"max_tx_rate": 100})),
            vec![],
            100,
            "max_tx_rate 100: the i40e driver",
        ),
        (
            "missing IPAM plugin",
            with(json!({"ipam": {"type": "nonexistent-ipam"}})),
            vec![],
            4,
            "CNI_PATH",
        ),
        (
            "IPAM failure",
            with(json!({"ipam": {"type": "host-local"}})),
            vec![],
            102,
            "ipam host-local",
        ),
        (
            "VF owned by another netns",
            with(json!({"deviceID": "0000:3b:02.3"})),
            vec![],
            101,
            "another pod or namespace",
        ),
    ];
    for (what, stdin, env, code, want) in cases {
        let mut full_env = vec![("CNI_ARGS", "")];
        full_env.extend(env);
        let cmd = full_env
            .iter()
            .find(|(k, _)| *k == "CNI_COMMAND")
            .map_or("ADD", |(_, v)| v);
        let netns = full_env
            .iter()
            .find(|(k, _)| *k == "CNI_NETNS")
            .map_or(pod.as_str(), |(_, v)| v);
        let cid = full_env
            .iter()
            .find(|(k, _)| *k == "CNI_CONTAINERID")
            .map_or("c1", |(_, v)| v);
        let ifname = full_env
            .iter()
            .find(|(k, _)| *k == "CNI_IFNAME")
            .map_or("net1", |(_, v)| v);
        let rest: Vec<(&str, &str)> = full_env
            .iter()
            .filter(|(k, _)| {
                !["CNI_COMMAND", "CNI_NETNS", "CNI_CONTAINERID", "CNI_IFNAME"].contains(k)
            })
            .copied()
            .collect();
        let c = lab.call_env(cmd, cid, ifname, netns, &stdin, &rest);
        assert_ne!(c.code, Some(0), "{what}: {c:?}");
        let j = c.json();
        assert_eq!(j["code"], code, "{what}: {j}");
        assert!(j["msg"].as_str().unwrap().contains(want), "{what}: {j}");
        assert!(
            c.stdout.lines().count() == 1,
            "{what}: only the error JSON on stdout"
        );
        assert_eq!(lab.fingerprint("ens1f0v1"), before, "{what}: VF touched");
        assert!(lab.records().is_empty(), "{what}: state left");
        assert!(CniLab::pod_link(&pod, "net1").is_none(), "{what}");
    }
    // Commands from newer spec versions refuse older configs.
    let old = lab.conf("0.3.1", json!({"deviceID": VF1, "prevResult": {}}));
    lab.call("CHECK", "c1", "net1", &pod, &old)
        .err(1, "CHECK needs 0.4.0");
    lab.call("GC", "", "", "", &lab.conf("1.0.0", json!({})))
        .err(1, "GC needs 1.1.0");
    lab.call("GC", "", "", "", &lab.conf("1.1.0", json!({})))
        .err(7, "cni.dev/valid-attachments");
}

#[test]
fn vf_owned_by_a_live_pod_is_refused_and_a_late_del_is_harmless() {
    let lab = lab("cni-owner");
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    let conf = lab.conf("1.0.0", json!({"deviceID": VF0}));
    lab.call("ADD", "ca", "net1", &a, &conf).ok();
    lab.call("ADD", "cb", "net1", &b, &conf)
        .err(101, "belongs to container ca");
    lab.call("ADD", "ca", "net1", &a, &conf)
        .err(101, "already attached");
    assert!(CniLab::pod_link(&a, "net1").is_some());
    lab.call("DEL", "ca", "net1", &a, &conf).ok();
    lab.call("ADD", "cb", "net1", &b, &conf).ok();
    // A late DEL of the old pod: the VF now belongs to cb.
    lab.call("DEL", "ca", "net1", &a, &conf).ok();
    lab.call("DEL", "ca", "net1", "", &conf).ok();
    assert!(CniLab::pod_link(&b, "net1").is_some(), "cb keeps its VF");
    assert_eq!(lab.records().len(), 1);
    lab.call("DEL", "cb", "net1", &b, &conf).ok();
    assert!(lab.records().is_empty());
}

#[test]
fn name_and_altname_collisions_in_the_pod() {
    let lab = lab("cni-names");
    let node = lab.node.netns_name().to_string();
    CniLab::ip(
        &node,
        &[
            "link",
            "property",
            "add",
            "dev",
            "ens1f0v1",
            "altname",
            "enp59s0f0v1",
        ],
    );
    let pod = lab.pod("a");
    let ns = CniLab::ns_name(&pod).to_string();
    // The pod already has links called like the VF and like its altname.
    CniLab::ip(
        &ns,
        &[
            "link", "add", "ens1f0v1", "type", "veth", "peer", "name", "x0",
        ],
    );
    CniLab::ip(
        &ns,
        &[
            "link",
            "add",
            "enp59s0f0v1",
            "type",
            "veth",
            "peer",
            "name",
            "x1",
        ],
    );
    let before = lab.fingerprint("ens1f0v1");
    assert_eq!(before["altnames"], json!(["enp59s0f0v1"]));
    let conf = lab.conf("1.1.0", json!({"deviceID": VF1, "mtu": 1300}));
    lab.call("ADD", "c1", "eth0", &pod, &conf).ok();
    let link = CniLab::pod_link(&pod, "eth0").unwrap();
    assert!(
        link.get("altnames").is_none(),
        "host altnames stay out of the pod: {link}"
    );
    lab.call("DEL", "c1", "eth0", &pod, &conf).ok();
    assert_eq!(lab.fingerprint("ens1f0v1"), before);
    assert!(CniLab::pod_link(&pod, "ens1f0v1").is_some());
}

#[test]
fn del_succeeds_when_the_netns_is_gone() {
    let lab = lab("cni-gone");
    let pod = lab.pod("a");
    let conf = lab.conf("1.0.0", json!({"deviceID": VF0}));
    // An ADD that died right after saving its record (VF still on the node), then the pod's
    // netns went away: DEL restores and succeeds.
    let c = lab.call_env(
        "ADD",
        "c1",
        "net1",
        &pod,
        conf.to_string().as_bytes(),
        &[("SRIOV_CNI_FAULT", "save")],
    );
    assert_eq!(c.signal, Some(9), "{c:?}");
    CniLab::ip(&lab.node.netns_name(), &["link", "show", "ens1f0v0"]);
    Command::new("ip")
        .args(["netns", "del", CniLab::ns_name(&pod)])
        .status()
        .unwrap();
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    lab.call("DEL", "c1", "net1", "", &conf).ok();
    assert!(lab.records().is_empty());
    // A stale record of a dead pod does not block the next pod: ADD cleans it first.
    let pod2 = lab.pod("b");
    let c = lab.call_env(
        "ADD",
        "c2",
        "net1",
        &pod2,
        conf.to_string().as_bytes(),
        &[("SRIOV_CNI_FAULT", "save")],
    );
    assert_eq!(c.signal, Some(9));
    Command::new("ip")
        .args(["netns", "del", CniLab::ns_name(&pod2)])
        .status()
        .unwrap();
    let pod3 = lab.pod("c");
    lab.call("ADD", "c3", "net1", &pod3, &conf).ok();
    lab.call("DEL", "c3", "net1", &pod3, &conf).ok();
    assert!(lab.records().is_empty());
}

#[test]
fn gc_releases_attachments_not_in_the_valid_list() {
    let lab = lab("cni-gc");
    let before: Vec<Value> = (0..3)
        .map(|k| lab.fingerprint(&format!("ens1f0v{k}")))
        .collect();
    let pods: Vec<String> = (0..3).map(|k| lab.pod(&format!("p{k}"))).collect();
    for k in 0..3 {
        let conf = lab.conf(
            "1.1.0",
            json!({"deviceID": lab.vf_pci(0, k), "ipam": lab.host_local("10.88.0.0/24")}),
        );
        lab.call("ADD", &format!("c{k}"), "net1", &pods[k as usize], &conf)
            .ok();
    }
    assert_eq!(lab.reservations().len(), 3);
    // Another network's GC never touches ours.
    let mut other = lab.conf("1.1.0", json!({"cni.dev/valid-attachments": []}));
    other["name"] = json!("other-net");
    lab.call("GC", "", "", "", &other).ok();
    assert_eq!(lab.records().len(), 3);
    let gc = lab.conf(
        "1.1.0",
        json!({"ipam": lab.host_local("10.88.0.0/24"),
               "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "net1"}],
               "cni.dev/attachments": [{"containerID": "c1", "ifname": "net1"}]}),
    );
    lab.call("GC", "", "", "", &gc).ok();
    assert_eq!(lab.records(), [format!("{}.json", lab.vf_pci(0, 1))]);
    assert_eq!(lab.reservations().len(), 1);
    assert_eq!(lab.fingerprint("ens1f0v0"), before[0]);
    assert_eq!(lab.fingerprint("ens1f0v2"), before[2]);
    assert!(CniLab::pod_link(&pods[1], "net1").is_some());
}

/// A scalable function attached by its auxiliary device name (an auxNetDevice pool's device
/// ID, which Multus passes as `deviceID`), as a VF: its netdev moves into the pod under the
/// pod's name with MAC, MTU and IPAM, traffic flows to a neighbour on the PF's switch, a second
/// pod cannot take it, and DEL puts it back exactly as it was. PF-side VF settings are refused
/// by key (code 7), and so is a deviceID that is no SF of this node; nothing is touched then.
#[test]
fn scalable_function_attached_by_its_auxiliary_name() {
    let lab = CniLab::new("cni-sf", |s| {
        s.pfs(1)
            .vfs(2)
            .sfs(2)
            .model(sriov_e2e::sim::Model::Mellanox)
    });
    let sf = lab.node.description().pfs[0].sfs[0].clone();
    let before = lab.fingerprint(&sf.netdev);
    let aux_records = || -> Vec<String> {
        std::fs::read_dir(lab.state.path().join("aux"))
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect()
    };

    for (i, (extra, want)) in [
        (json!({"vlan": 10}), "vlan: "),
        (json!({"vlan": 0}), "vlan: "),
        (json!({"spoofchk": "off"}), "spoofchk: "),
        (json!({"trust": "on"}), "trust: "),
        (json!({"link_state": "enable"}), "link_state: "),
        (json!({"min_tx_rate": 0}), "min_tx_rate: "),
        (json!({"max_tx_rate": 100}), "max_tx_rate: "),
        (json!({"mtu": 1400, "mtuLock": true}), "mtuLock: "),
    ]
    .into_iter()
    .enumerate()
    {
        let pod = lab.pod(&format!("bad{i}"));
        let mut conf = lab.conf("1.0.0", json!({"deviceID": sf.name}));
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        let j = lab.call("ADD", "c0", "net1", &pod, &conf).err(7, want);
        assert!(
            j["msg"]
                .as_str()
                .unwrap()
                .contains("no PF-side VF settings")
                || want == "mtuLock: ",
            "{j}"
        );
    }
    let pod = lab.pod("wrong");
    lab.call(
        "ADD",
        "c0",
        "net1",
        &pod,
        &lab.conf("1.0.0", json!({"deviceID": "../../etc.sf.1"})),
    )
    .err(7, "deviceID: ");
    lab.call(
        "ADD",
        "c0",
        "net1",
        &pod,
        &lab.conf("1.0.0", json!({"deviceID": "mlx5_core.sf.999"})),
    )
    .err(7, "no auxiliary device mlx5_core.sf.999");
    lab.call(
        "ADD",
        "c0",
        "net1",
        &pod,
        &lab.conf("1.0.0", json!({"deviceID": "mlx5_core.eth.0"})),
    )
    .err(7, "not a scalable function");
    assert_eq!(lab.fingerprint(&sf.netdev), before, "untouched");
    assert!(aux_records().is_empty());

    // Attach, with a MAC, an MTU and host-local addresses.
    let pod = lab.pod("a");
    let conf = lab.conf(
        "1.1.0",
        json!({"deviceID": sf.name, "mtu": 1400, "mac": "02:00:00:00:05:01",
               "ipam": lab.host_local("10.77.0.0/24")}),
    );
    let r = lab.call("ADD", "c1", "net1", &pod, &conf);
    r.ok();
    let res = r.json();
    assert_eq!(res["interfaces"][0]["name"], "net1");
    assert_eq!(res["interfaces"][0]["mac"], "02:00:00:00:05:01");
    assert_eq!(res["interfaces"][0]["mtu"], 1400);
    assert_eq!(res["interfaces"][0]["sandbox"], pod);
    let ip = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.77.0."), "{res}");
    let link = CniLab::pod_link(&pod, "net1").expect("net1 in the pod");
    assert_eq!(
        (link["mtu"].clone(), link["address"].clone()),
        (json!(1400), json!("02:00:00:00:05:01"))
    );
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert!(
        lab.node_link(&sf.netdev).is_none(),
        "the SF netdev left the node"
    );
    assert_eq!(aux_records(), [format!("{}.json", sf.name)]);
    // CHECK against prevResult; an MTU the pod changed is found.
    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    lab.call("CHECK", "c1", "net1", &pod, &check).ok();
    CniLab::ip(
        CniLab::ns_name(&pod),
        &["link", "set", "net1", "mtu", "1300"],
    );
    lab.call("CHECK", "c1", "net1", &pod, &check)
        .err(100, "mtu: net1 has 1300, the config says 1400");
    CniLab::ip(
        CniLab::ns_name(&pod),
        &["link", "set", "net1", "mtu", "1400"],
    );

    // Traffic: the other SF, attached to a second pod on the same PF switch.
    let other = lab.node.description().pfs[0].sfs[1].clone();
    let pod_b = lab.pod("b");
    let conf_b = lab.conf(
        "1.1.0",
        json!({"deviceID": other.name, "ipam": lab.host_local("10.77.0.0/24")}),
    );
    let rb = lab.call("ADD", "c2", "net1", &pod_b, &conf_b);
    rb.ok();
    // The bridge-side peers of the SF veths are up on the PF's switch.
    for n in [&sf.netdev, &other.netdev] {
        CniLab::ip(
            &lab.node.netns_name(),
            &["link", "set", &sriov_e2e::sim::peer_netdev(n), "up"],
        );
    }
    let addr = ip.split('/').next().unwrap().to_string();
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            CniLab::ns_name(&pod_b),
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            &addr,
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping {addr}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // Another pod asking for the same SF: busy.
    let pod_c = lab.pod("c");
    lab.call(
        "ADD",
        "c3",
        "net1",
        &pod_c,
        &lab.conf("1.0.0", json!({"deviceID": sf.name})),
    )
    .err(101, "belongs to container c1");

    // DEL: back as it was; DEL again (and containerd's DEL without a netns) are fine.
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    assert_eq!(lab.fingerprint(&sf.netdev), before, "SF restored");
    lab.call("DEL", "c1", "net1", &pod, &conf).ok();
    lab.call("DEL", "c1", "net1", "", &conf).ok();
    // A DEL without deviceID finds the attachment by its owner.
    let mut no_id = conf_b.clone();
    no_id.as_object_mut().unwrap().remove("deviceID");
    lab.call("DEL", "c2", "net1", &pod_b, &no_id).ok();
    assert!(lab.node_link(&other.netdev).is_some());
    assert!(aux_records().is_empty(), "{:?}", aux_records());

    // GC: an attachment not in the valid list is released, a valid one is kept.
    let pod_d = lab.pod("d");
    lab.call("ADD", "c4", "net1", &pod_d, &conf).ok();
    lab.call("ADD", "c5", "net1", &pod_b, &conf_b).ok();
    let mut gc = lab.conf("1.1.0", json!({"ipam": lab.host_local("10.77.0.0/24")}));
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c5", "ifname": "net1"}]);
    lab.call("GC", "", "", "", &gc).ok();
    assert_eq!(lab.fingerprint(&sf.netdev), before, "GC restored the SF");
    assert!(CniLab::pod_link(&pod_d, "net1").is_none());
    assert_eq!(aux_records(), [format!("{}.json", other.name)]);
    lab.call("DEL", "c5", "net1", &pod_b, &conf_b).ok();
    assert!(aux_records().is_empty(), "{:?}", aux_records());
    lab.assert_nothing_held();
}
