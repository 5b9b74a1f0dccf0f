//! The daemon as a DRA driver (`--mode dra`), end to end on a simulated node: the real daemon,
//! the real `sriov-node-state` sidecar (its claim service and slice publisher) against the
//! in-test API server, and kubelet's DRA side emulated (plugin watcher registration,
//! NodePrepareResources / NodeUnprepareResources, NodeWatchResources). The test plays the
//! scheduler: it writes each claim's `status.allocation`. Needs root.

use serde_json::{json, Value};
use sriov_e2e::apiserver::Resource;
use sriov_e2e::cdi_check::check_spec;
use sriov_e2e::dra_node::{dev, result, vf_config, DraNode, DraNodeSpec, DRIVER, NODE, WAIT};
use sriov_e2e::kubelet::dra::claim;
use sriov_e2e::sim::{self, vf_pci, BindEmulator, SimNode, SimSpec};
use sriov_proto::dra::health::v1 as hv1;
use std::time::Duration;

const POOLS: &str = r#"{"resourceList": [
    {"resourceName": "net", "selectors": {"drivers": ["iavf"]}},
    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}}
]}"#;

/// One test's world; fields drop in order (the node's processes first).
struct World {
    node: DraNode,
    lab: SimNode,
    tmp: tempfile::TempDir,
}

impl std::ops::Deref for World {
    type Target = DraNode;
    fn deref(&self) -> &DraNode {
        &self.node
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut DraNode {
        &mut self.node
    }
}

impl World {
    fn start(prefix: &str, fault: Option<&str>) -> World {
        World::start_in(prefix, fault, "dra")
    }

    fn start_in(prefix: &str, fault: Option<&str>, mode: &str) -> World {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (a simulated node)"
        );
        sim::gc().expect("gc of dead labs");
        let lab = SimNode::up(&SimSpec::new(sim::unique_name(prefix)).pfs(2).vfs(4).vfio(1))
            .unwrap_or_else(|e| panic!("lab up: {e}"));
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = DraNodeSpec::on_lab(&lab, tmp.path(), POOLS);
        spec.mode = mode.into();
        let node = DraNode::start(spec, fault).unwrap_or_else(|e| panic!("{e}"));
        World { node, lab, tmp }
    }

    fn cdi_spec(&self, uid: &str) -> Option<Value> {
        std::fs::read(self.cdi_spec_path(uid)).ok().map(|b| {
            check_spec(&b).unwrap_or_else(|e| panic!("claim spec breaks the CDI rules: {e}"))
        })
    }

    fn wait<T>(&self, what: &str, f: impl Fn() -> Option<T>) -> T {
        self.node
            .wait(what, WAIT, f)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[test]
fn prepare_unprepare_shared_claims_configs_and_health() {
    let w = World::start("dra-drv", None);
    let reg = w.kubelet.with_state(|s| s.registrations[0].clone());
    assert_eq!(reg.versions, ["v1.DRAPlugin", "v1beta1.DRAPlugin"]);
    assert_eq!(
        reg.endpoint,
        w.tmp
            .path()
            .join(format!("kubelet/plugins/{DRIVER}/dra.sock"))
    );
    // The node's devices reach the API server as ResourceSlices through the sidecar.
    w.wait("the node's ResourceSlices", || {
        let slices = w.api.objects(Resource::ResourceSlices);
        let n: usize = slices
            .iter()
            .filter(|s| s["spec"]["nodeName"] == NODE && s["spec"]["driver"] == DRIVER)
            .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
            .sum();
        (n == 8).then_some(())
    });

    // A claim with a kernel VF and a vfio-pci VF; class and claim configs, every field kept.
    let (kernel, vfio) = (vf_pci(0, 0), vf_pci(1, 3));
    let uid = w.claim(
        "c1",
        json!([result("vf", &kernel), result("dpdk", &vfio)]),
        json!([
            vf_config("FromClaim", &["vf"], json!({"apiVersion": format!("{DRIVER}/v1alpha1"), "kind": "VfConfig",
                "ifName": "net1", "vlan": 10, "mac": "02:00:00:00:00:01"})),
            vf_config("FromClass", &[], json!({"apiVersion": "sriovnetwork.k8snetworkplumbingwg.io/v1alpha1", "kind": "VfConfig",
                "ifName": "eth9", "addVhostMount": true, "netAttachDefName": "sriov-net", "netAttachDefNamespace": "infra", "mtu": 9000})),
            vf_config("FromClaim", &["dpdk"], json!({"apiVersion": format!("{DRIVER}/v1alpha1"), "kind": "VfConfig", "driver": "vfio-pci"})),
        ]),
        &["p1"],
    );
    let r = w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "c1", &uid)])
        .unwrap();
    let got = &r.claims[&uid];
    assert_eq!(got.error, "", "{}", w.daemon.log());
    let ids: Vec<(String, String, Vec<String>)> = got
        .devices
        .iter()
        .map(|d| {
            (
                d.request_names.join(","),
                d.device_name.clone(),
                d.cdi_device_ids.clone(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            (
                "vf".into(),
                dev(&kernel),
                vec![format!("{DRIVER}/vf={uid}-{}", dev(&kernel))]
            ),
            (
                "dpdk".into(),
                dev(&vfio),
                vec![format!("{DRIVER}/vf={uid}-{}", dev(&vfio))]
            ),
        ]
    );
    assert!(got.devices.iter().all(|d| d.pool_name == NODE));
    // The record keeps every merged field; the CDI spec is valid and names the devices.
    let rec = w.record(&uid).expect("record");
    assert_eq!(rec["phase"], "Prepared");
    assert_eq!(
        rec["devices"][0]["config"],
        json!({"apiVersion": format!("{DRIVER}/v1alpha1"), "kind": "VfConfig", "ifName": "net1", "vlan": 10,
               "mac": "02:00:00:00:00:01", "addVhostMount": true, "netAttachDefName": "sriov-net",
               "netAttachDefNamespace": "infra", "mtu": 9000})
    );
    assert_eq!(rec["devices"][1]["config"]["driver"], "vfio-pci");
    assert_eq!(rec["devices"][0]["resourceName"], "intel.com/net");
    assert_eq!(rec["pods"][0]["uid"], "uid-p1");
    let spec = w.cdi_spec(&uid).expect("claim CDI spec");
    assert_eq!(spec["kind"], format!("{DRIVER}/vf"));
    let env: Vec<&str> = spec["containerEdits"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&format!("PCIDEVICE_INTEL_COM_NET={kernel}").as_str()),
        "{env:?}"
    );
    assert!(
        env.contains(&format!("PCIDEVICE_INTEL_COM_DPDK={vfio}").as_str()),
        "{env:?}"
    );
    assert!(
        env.iter()
            .any(|e| e.starts_with("PCIDEVICE_INTEL_COM_DPDK_INFO=")),
        "{env:?}"
    );
    let nodes = |i: usize| -> Vec<String> {
        spec["devices"][i]["containerEdits"]["deviceNodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| n["path"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // addVhostMount (from the class) gives the kernel VF vhost-net and tun; the vfio VF its group.
    assert_eq!(nodes(0), ["/dev/vhost-net", "/dev/net/tun"]);
    assert!(
        nodes(1).contains(&"/dev/vfio/vfio".to_string()),
        "{:?}",
        nodes(1)
    );

    // Idempotent, and through v1beta1 too; a second pod sharing the claim is recorded.
    w.api
        .modify(Resource::ResourceClaims, "default", "c1", |c| {
            c["status"]["reservedFor"]
                .as_array_mut()
                .unwrap()
                .push(json!({"resource": "pods", "name": "p2", "uid": "uid-p2"}));
        });
    let again = w
        .kubelet
        .prepare_v1beta1(
            DRIVER,
            vec![sriov_proto::dra::v1beta1::Claim {
                namespace: "default".into(),
                uid: uid.clone(),
                name: "c1".into(),
            }],
        )
        .unwrap();
    let again = &again.claims[&uid];
    assert_eq!(again.error, "");
    assert_eq!(
        again
            .devices
            .iter()
            .map(|d| d.cdi_device_ids.clone())
            .collect::<Vec<_>>(),
        ids.iter().map(|i| i.2.clone()).collect::<Vec<_>>()
    );
    let pods: Vec<String> = w.record(&uid).unwrap()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pods, ["uid-p1", "uid-p2"]);

    // A device of a prepared claim is not given to another claim; a bad config names the field.
    let uid2 = w.claim("c2", json!([result("vf", &kernel)]), json!([]), &["p3"]);
    let e = &w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "c2", &uid2)])
        .unwrap()
        .claims[&uid2];
    assert!(
        e.error.contains("prepared for claim default/c1"),
        "{}",
        e.error
    );
    let uid3 = w.claim(
        "c3",
        json!([result("vf", &vf_pci(0, 1))]),
        json!([vf_config(
            "FromClaim",
            &[],
            json!({"apiVersion": format!("{DRIVER}/v1alpha1"), "kind": "VfConfig", "vlan": 5000})
        )]),
        &["p4"],
    );
    let e = &w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "c3", &uid3)])
        .unwrap()
        .claims[&uid3];
    assert!(
        e.error.contains("\"vlan\"") && e.error.contains("5000"),
        "{}",
        e.error
    );
    assert!(
        w.record(&uid3).is_none() && w.cdi_spec(&uid3).is_none(),
        "nothing half-done"
    );
    // Both outcomes reach the claims' status.devices[].conditions through the sidecar.
    let conditions = |name: &str| -> Vec<(String, String, String)> {
        w.api
            .get(Resource::ResourceClaims, "default", name)
            .and_then(|c| c["status"]["devices"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|d| {
                let c = &d["conditions"][0];
                (
                    d["device"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                    c["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let c3 = w.wait("c3's failure on the claim", || {
        let c = conditions("c3");
        (!c.is_empty()).then_some(c)
    });
    assert_eq!(
        (c3[0].0.as_str(), c3[0].1.as_str()),
        (dev(&vf_pci(0, 1)).as_str(), "PrepareFailed")
    );
    assert!(c3[0].2.contains("\"vlan\""), "{c3:?}");
    let c1 = w.wait("c1's devices ready on the claim", || {
        let c = conditions("c1");
        (c.len() == 2).then_some(c)
    });
    assert!(c1.iter().all(|c| c.1 == "Prepared"), "{c1:?}");
    // A uid that is not the claim's (deleted and created again) is refused by the sidecar.
    let e = &w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "c1", "0000-not-it")])
        .unwrap()
        .claims["0000-not-it"];
    assert!(e.error.contains("not 0000-not-it"), "{}", e.error);

    // Unprepare: the spec and record go; again is fine.
    for _ in 0..2 {
        let u = w
            .kubelet
            .unprepare(DRIVER, vec![claim("default", "c1", &uid)])
            .unwrap();
        assert_eq!(u.claims[&uid].error, "");
        assert!(w.record(&uid).is_none() && w.cdi_spec(&uid).is_none());
    }
    // Now c2 gets the VF.
    let ok = &w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "c2", &uid2)])
        .unwrap()
        .claims[&uid2];
    assert_eq!(ok.error, "");

    // Health: every device Healthy, then PF 0's VFs Unhealthy while its link is down, and back.
    w.kubelet
        .wait_for("a health stream", WAIT, |s| s.watching.then_some(()))
        .unwrap();
    let pf0 = |name: &str| name.starts_with("0000-3b-");
    let healthy = hv1::HealthStatus::Healthy as i32;
    let unhealthy = hv1::HealthStatus::Unhealthy as i32;
    w.kubelet
        .wait_for("8 healthy devices", WAIT, |s| {
            s.last_health()
                .filter(|h| h.len() == 8 && h.iter().all(|d| d.1 == healthy))
        })
        .unwrap();
    let out = w
        .lab
        .ip(&["link", "set", &sim::pf_netdev(0), "down"])
        .unwrap();
    assert!(out.status.success());
    let h = w
        .kubelet
        .wait_for("PF 0's VFs unhealthy", WAIT, |s| {
            s.last_health()
                .filter(|h| h.iter().all(|(n, s, _)| (*s == unhealthy) == pf0(n)))
        })
        .unwrap();
    assert!(
        h.iter().filter(|d| pf0(&d.0)).all(|d| !d.2.is_empty()),
        "a reason: {h:?}"
    );
    w.lab
        .ip(&["link", "set", &sim::pf_netdev(0), "up"])
        .unwrap();
    w.kubelet
        .wait_for("all healthy again", WAIT, |s| {
            s.last_health().filter(|h| h.iter().all(|d| d.1 == healthy))
        })
        .unwrap();

    // Kubelet's registration socket removed: the driver serves and registers again.
    let reg = w
        .tmp
        .path()
        .join(format!("kubelet/plugins_registry/{DRIVER}-reg.sock"));
    let before = w.kubelet.with_state(|s| s.registrations.len());
    std::fs::remove_file(&reg).unwrap();
    w.kubelet
        .wait_for("a new registration", WAIT, |s| {
            (s.registrations.len() > before).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", w.daemon.log()));
    let ok = &w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "c2", &uid2)])
        .unwrap()
        .claims[&uid2];
    assert_eq!(ok.error, "", "idempotent after the restart of the servers");

    // SIGTERM: the sockets go, the prepared claims stay recorded (kubelet unprepares them).
    let mut w = w;
    let status = w.daemon.terminate(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{}", w.daemon.log());
    assert!(!reg.exists());
    assert_eq!(w.record(&uid2).unwrap()["phase"], "Prepared");
}

/// Killed (SIGKILL) in the middle of a prepare: the record says `Preparing` and the CDI spec is
/// there; the next start undoes both, and the next prepare succeeds.
#[test]
fn kill_during_prepare_is_undone_at_start() {
    let mut w = World::start("dra-kill", Some("dra-hang-before-prepared"));
    let uid = w.claim(
        "k1",
        json!([result("vf", &vf_pci(0, 0))]),
        json!([]),
        &["p1"],
    );
    let r = w.kubelet.prepare_with_timeout(
        DRIVER,
        vec![claim("default", "k1", &uid)],
        Duration::from_secs(2),
    );
    assert!(r.is_err(), "the fault holds the prepare: {r:?}");
    w.wait("the Preparing record and the spec", || {
        (w.record(&uid).is_some_and(|r| r["phase"] == "Preparing") && w.cdi_spec(&uid).is_some())
            .then_some(())
    });
    let pid = nix::unistd::Pid::from_raw(w.daemon.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    w.daemon.terminate(Duration::from_secs(5));
    assert!(w.record(&uid).is_some(), "a kill leaves the record");

    w.daemon = w.spec.spawn_daemon(None).unwrap();
    w.wait("the unfinished prepare undone", || {
        (w.record(&uid).is_none() && w.cdi_spec(&uid).is_none()).then_some(())
    });
    assert!(w
        .daemon
        .log()
        .contains("undid an unfinished claim preparation"));
    let r = w.wait("the driver serving again", || {
        w.kubelet
            .prepare(DRIVER, vec![claim("default", "k1", &uid)])
            .ok()
    });
    assert_eq!(r.claims[&uid].error, "");
    assert_eq!(w.record(&uid).unwrap()["phase"], "Prepared");
}

/// `driver: vfio-pci` binds a kernel VF to vfio-pci at prepare (its VFIO nodes in the claim's
/// spec) and back to its driver at unprepare.
#[test]
fn vfio_pci_config_binds_and_unprepare_gives_the_driver_back() {
    let w = World::start("dra-vfio", None);
    let pci = vf_pci(0, 1);
    let _kernel = BindEmulator::start(&w.lab, std::slice::from_ref(&pci)).unwrap();
    let driver = || {
        std::fs::read_link(
            w.lab
                .sysfs_root()
                .join("bus/pci/devices")
                .join(&pci)
                .join("driver"),
        )
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
    };
    assert_eq!(driver(), "iavf");
    let uid = w.claim(
        "v1",
        json!([result("vf", &pci)]),
        json!([vf_config("FromClaim", &[], json!({"apiVersion": format!("{DRIVER}/v1alpha1"), "kind": "VfConfig", "driver": "vfio-pci"}))]),
        &["p1"],
    );
    let r = w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "v1", &uid)])
        .unwrap();
    assert_eq!(r.claims[&uid].error, "", "{}", w.daemon.log());
    assert_eq!(driver(), "vfio-pci");
    let rec = w.record(&uid).unwrap();
    assert_eq!(rec["devices"][0]["originalDriver"], "iavf");
    assert_eq!(rec["devices"][0]["originalDriverOverride"], "");
    let spec = w.cdi_spec(&uid).unwrap();
    let nodes: Vec<&str> = spec["devices"][0]["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["/dev/vfio/vfio", "/dev/vfio/900"]);
    let u = w
        .kubelet
        .unprepare(DRIVER, vec![claim("default", "v1", &uid)])
        .unwrap();
    assert_eq!(u.claims[&uid].error, "");
    assert_eq!(driver(), "iavf", "the driver it had");
    let over = std::fs::read_to_string(
        w.lab
            .sysfs_root()
            .join("bus/pci/devices")
            .join(&pci)
            .join("driver_override"),
    )
    .unwrap();
    assert_eq!(over.trim(), "", "the override it had (none), not iavf");
    assert!(w.record(&uid).is_none() && w.cdi_spec(&uid).is_none());
}

/// `--mode both`: the same pools as device plugins and through DRA; a VF prepared for a claim is
/// Unhealthy at the device plugin and its Allocate refused, until the claim is unprepared.
#[test]
fn both_modes_never_hand_out_a_prepared_vf_twice() {
    let w = World::start_in("dra-both", None, "both");
    let dp = sriov_e2e::kubelet::KubeletEmulator::start(
        &w.tmp.path().join("kubelet"),
        sriov_e2e::kubelet::RegistrationMode::KubeletSocket,
    )
    .unwrap();
    let pci = vf_pci(0, 0);
    let health_of = |devices: &[sriov_proto::deviceplugin::v1beta1::Device]| {
        devices
            .iter()
            .find(|d| d.id == pci)
            .map(|d| d.health.clone())
    };
    dp.wait_devices("intel.com/net", WAIT, |d| {
        d.len() == 6 && health_of(d).as_deref() == Some(sriov_proto::HEALTHY)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w.daemon.log()));
    let uid = w.claim("b1", json!([result("vf", &pci)]), json!([]), &["p1"]);
    let r = w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "b1", &uid)])
        .unwrap();
    assert_eq!(r.claims[&uid].error, "");
    dp.wait_devices("intel.com/net", WAIT, |d| {
        health_of(d).as_deref() == Some(sriov_proto::UNHEALTHY)
    })
    .unwrap();
    let e = dp
        .allocate("intel.com/net", std::slice::from_ref(&pci))
        .unwrap_err();
    assert!(e.message().contains("DRA claim"), "{e:?}");
    let u = w
        .kubelet
        .unprepare(DRIVER, vec![claim("default", "b1", &uid)])
        .unwrap();
    assert_eq!(u.claims[&uid].error, "");
    dp.wait_devices("intel.com/net", WAIT, |d| {
        health_of(d).as_deref() == Some(sriov_proto::HEALTHY)
    })
    .unwrap();
    dp.allocate("intel.com/net", std::slice::from_ref(&pci))
        .unwrap();
}
