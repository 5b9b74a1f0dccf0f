//! Our NRI plugin against a real runtime: Debian trixie's containerd 1.7 with NRI on (in a
//! chroot, inside a simulated node's netns), pod sandboxes driven through CRI as kubelet does.
//! The plugin registers, is configured and synchronized, gets RunPodSandbox with the sandbox's
//! network namespace path, moves a VF's netdev (a veth of the simulated node) into that
//! namespace, where the pod sees it, and gets StopPodSandbox (it moves the netdev back) and
//! RemovePodSandbox. Needs root; installs what it needs (the trixie root is cached).
//!
//! Then the daemon's own NRI attach (`--mode dra --nri`): a claim prepared through the DRA
//! kubelet plugin, a CRI pod sandbox of the pod it is reserved for, and the VF appears in the
//! pod with the claim's VfConfig settings over the NetworkAttachmentDefinition it names (the
//! NAD's IPAM, the VfConfig's MTU), its interface is written to the claim's
//! `status.devices[].networkData`, and StopPodSandbox gives the VF back as it was. A claim
//! naming a missing NAD, or one whose MTU the VF cannot take, fails its sandbox and leaves its
//! VF untouched.

use serde_json::json;
use sriov_e2e::apiserver::Resource;
use sriov_e2e::containerd17::Containerd17;
use sriov_e2e::cri;
use sriov_e2e::dra_node::{dev, result, vf_config, DraNode, DraNodeSpec, DRIVER, WAIT};
use sriov_e2e::kubelet::dra::claim;
use sriov_e2e::sim::{unique_name, vf_pci, SimNode, SimSpec};
use sriov_proto::nri::api::PodSandbox;
use sriov_proto::nri::plugin::{self, NriError, PluginOptions, PodEvents, RuntimeInfo};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the plugin saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Configured(RuntimeInfo),
    Synchronized(usize),
    Run(Box<PodSandbox>),
    Stop(String),
    Remove(String),
}

/// Attaches the node's VF netdev to each pod as `net1` and gives it back at stop.
struct Attacher {
    seen: Mutex<Vec<Seen>>,
    node_netns: PathBuf,
    vf: String,
}

fn ip(netns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "ip {args:?} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `ifname` exists in the netns at `netns`.
fn has_link(netns: &str, ifname: &str) -> bool {
    ip(netns, &["-j", "link", "show", "dev", ifname]).is_ok()
}

#[tonic::async_trait]
impl PodEvents for Attacher {
    async fn configured(&self, runtime: RuntimeInfo) {
        self.seen.lock().unwrap().push(Seen::Configured(runtime));
    }
    async fn synchronize(&self, pods: Vec<PodSandbox>) -> Result<(), String> {
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Synchronized(pods.len()));
        Ok(())
    }
    async fn run_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Run(Box::new(pod.clone())));
        let netns = pod.network_namespace().ok_or("no network namespace")?;
        let node = self.node_netns.display().to_string();
        ip(&node, &["link", "set", "dev", &self.vf, "netns", netns])?;
        ip(netns, &["link", "set", "dev", &self.vf, "name", "net1"])?;
        ip(netns, &["link", "set", "dev", "net1", "up"])?;
        Ok(())
    }
    async fn stop_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        self.seen.lock().unwrap().push(Seen::Stop(pod.id.clone()));
        let netns = pod.network_namespace().ok_or("no network namespace")?;
        let node = self.node_netns.display().to_string();
        ip(netns, &["link", "set", "dev", "net1", "down"])?;
        ip(
            netns,
            &[
                "link", "set", "dev", "net1", "netns", &node, "name", &self.vf,
            ],
        )?;
        Ok(())
    }
    async fn remove_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String> {
        self.seen.lock().unwrap().push(Seen::Remove(pod.id.clone()));
        Ok(())
    }
}

/// containerd's error lines.
fn errors(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn containerd_1_7_nri_plugin_attaches_into_the_pod_netns() {
    let started = Instant::now();
    let sim = SimNode::up(&SimSpec::new(unique_name("nri")).pfs(1).vfs(2)).unwrap();
    let node_netns = sim.netns_path().to_path_buf();
    let vf = sim.description().pfs[0].vfs[1]
        .netdev
        .clone()
        .expect("the VF has a netdev");
    let conflist = json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "cni-nri0", "isGateway": false,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/24"}]]}}]});
    let mut c = Containerd17::start(&node_netns, &conflist).unwrap_or_else(|e| panic!("{e}"));
    let version = c.cri().version().expect("CRI Version");
    assert_eq!(version.runtime_name, "containerd");
    assert!(version.runtime_version.starts_with("1.7."), "{version:?}");

    // The plugin runs in this process, on its own runtime thread.
    let attacher = Arc::new(Attacher {
        seen: Mutex::new(vec![]),
        node_netns: node_netns.clone(),
        vf: vf.clone(),
    });
    let mut opts = PluginOptions::new("sriov-rs-test", "10");
    opts.socket = c.nri_socket();
    let events: Arc<dyn PodEvents> = attacher.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let plugin_task = rt.spawn(async move { plugin::run(&opts, events).await });
    wait_for(
        "NRI configure and synchronize",
        Duration::from_secs(10),
        || attacher.seen.lock().unwrap().len() >= 2,
    );
    let seen = attacher.seen.lock().unwrap().clone();
    match &seen[..] {
        [Seen::Configured(info), Seen::Synchronized(0)] => {
            assert_eq!(info.runtime_name, "containerd");
            assert!(info.runtime_version.starts_with("1.7."), "{info:?}");
        }
        other => panic!("registration: {other:?}\n{}", c.log()),
    }

    let mut config = cri::pod_sandbox_config("web", "sriov-test", "uid-web", &std::env::temp_dir());
    config
        .annotations
        .insert("k8s.v1.cni.cncf.io/networks".into(), "sriov-net".into());
    let id = c
        .run_pod(config)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let netns = c.pod_netns(&id).unwrap();
    assert!(
        netns.starts_with(
            &c.nri_socket()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .display()
                .to_string()
        ),
        "{netns}"
    );

    let run = attacher.seen.lock().unwrap()[2].clone();
    let Seen::Run(pod) = run else {
        panic!("expected RunPodSandbox: {run:?}")
    };
    assert_eq!(pod.id, id);
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str()),
        ("web", "sriov-test", "uid-web")
    );
    assert_eq!(pod.annotations["k8s.v1.cni.cncf.io/networks"], "sriov-net");
    assert_eq!(
        pod.network_namespace(),
        Some(netns.as_str()),
        "the sandbox's netns path"
    );

    // The pod sees the VF as net1 (up), next to the CNI's eth0; the node does not any more.
    let link = ip(&netns, &["-j", "link", "show", "dev", "net1"]).unwrap();
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    assert_eq!(link[0]["ifname"], "net1");
    assert!(
        link[0]["flags"].as_array().unwrap().contains(&json!("UP")),
        "{link}"
    );
    assert!(has_link(&netns, "eth0"), "the CNI network is there too");
    assert!(!has_link(&node_netns.display().to_string(), &vf));

    c.stop_pod(&id).unwrap();
    assert_eq!(
        attacher.seen.lock().unwrap().last(),
        Some(&Seen::Stop(id.clone()))
    );
    assert!(
        has_link(&node_netns.display().to_string(), &vf),
        "the VF is back on the node\n{}",
        errors(&c.log())
    );
    c.remove_pod(&id).unwrap();
    assert_eq!(
        attacher.seen.lock().unwrap().last(),
        Some(&Seen::Remove(id.clone()))
    );
    assert_eq!(
        attacher.seen.lock().unwrap().len(),
        5,
        "{:?}",
        attacher.seen.lock().unwrap()
    );

    // containerd stops: the plugin's connection ends.
    drop(c);
    let ended =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), plugin_task).await });
    assert!(matches!(ended, Ok(Ok(Err(NriError::Closed)))), "{ended:?}");
    eprintln!("containerd 1.7 NRI test took {:?}", started.elapsed());
}

/// The daemon's pools: `intel.com/net`, the simulated node's iavf VFs.
const POOLS: &str =
    r#"{"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}"#;

/// `ip -j link show dev <ifname>` in `netns`, parsed: (MAC, MTU, up).
fn link_state(netns: &str, ifname: &str) -> (String, u64, bool) {
    let out = ip(netns, &["-j", "link", "show", "dev", ifname]).unwrap_or_else(|e| panic!("{e}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &v[0];
    (
        l["address"].as_str().unwrap_or_default().to_string(),
        l["mtu"].as_u64().unwrap_or_default(),
        l["flags"].as_array().unwrap().contains(&json!("UP")),
    )
}

/// The claim's `status.devices` entry of `device`, when the API server has one.
fn device_status(w: &DraNode, name: &str, device: &str) -> Option<serde_json::Value> {
    w.api
        .objects(Resource::ResourceClaims)
        .into_iter()
        .find(|c| c["metadata"]["name"] == name)?["status"]["devices"]
        .as_array()?
        .iter()
        .find(|d| d["device"] == device)
        .cloned()
}

#[test]
fn the_daemons_nri_attach_gives_a_claims_vf_to_the_pod_and_back() {
    let started = Instant::now();
    let lab = SimNode::up(&SimSpec::new(unique_name("nri-dra")).pfs(1).vfs(3)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let conflist = json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "cni-nri1", "isGateway": false,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.97.0.0/24"}]]}}]});
    let mut c = Containerd17::start(lab.netns_path(), &conflist).unwrap_or_else(|e| panic!("{e}"));
    // The CNI's node-local settings: the lab's sysfs, our folders, the daemon's claims.
    let dir = tmp.path();
    for d in ["cni-state", "cni-devinfo", "logs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let node_config = dir.join("cni.json");
    std::fs::write(
        &node_config,
        json!({"sysfsRoot": lab.sysfs_root(), "stateDir": dir.join("cni-state"),
               "deviceInfoDir": dir.join("cni-devinfo"), "logDir": dir.join("logs"),
               "draStateDir": dir.join("dra")})
        .to_string(),
    )
    .unwrap();
    let mut spec = DraNodeSpec::on_lab(&lab, dir, POOLS);
    spec.extra_args = vec![
        "--nri".into(),
        format!("--nri-socket={}", c.nri_socket().display()),
        format!(
            "--cni-plugin={}",
            sriov_e2e::workspace_binary("sriov").display()
        ),
        format!("--cni-bin-dir={}", sriov_e2e::cni::CNI_PATH),
    ];
    spec.env = vec![(
        "SRIOV_CNI_NODE_CONFIG".into(),
        node_config.display().to_string(),
    )];
    // A config kept for a sandbox removed while the daemon was away: gone at Synchronize.
    let stale = dir.join("dra/nri/5a1e@net1.json");
    for d in ["dra", "dra/nri"] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.join(d))
            .unwrap();
    }
    std::fs::write(&stale, "{}").unwrap();
    let w = DraNode::start(spec, None).unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        "the stale kept config removed",
        Duration::from_secs(20),
        || !stale.exists(),
    );
    let node = lab.netns_path().display().to_string();
    let (pci, bad_pci, nad_pci) = (vf_pci(0, 0), vf_pci(0, 1), vf_pci(0, 2));
    let vf_netdev = |i: usize| {
        lab.description().pfs[0].vfs[i]
            .netdev
            .clone()
            .expect("the VF has a netdev")
    };
    let (vf, bad_vf, nad_vf) = (vf_netdev(0), vf_netdev(1), vf_netdev(2));
    let before = link_state(&node, &vf);
    let bad_before = link_state(&node, &bad_vf);
    let nad_before = link_state(&node, &nad_vf);

    // The NAD the claim names: its IPAM and an MTU the claim's VfConfig overrides.
    w.api.insert(
        Resource::NetworkAttachmentDefinitions,
        json!({"metadata": {"name": "sriov-static", "namespace": "default"},
               "spec": {"config": json!({"cniVersion": "1.0.0", "name": "sriov-static",
                   "type": "sriov", "mtu": 9000,
                   "ipam": {"type": "static", "addresses": [{"address": "10.77.0.5/24"}]}})
                   .to_string()}}),
    );

    // The scheduler allocated a VF to pod web's claim; kubelet prepared it.
    let api_version = format!("{DRIVER}/v1alpha1");
    let uid = w.claim(
        "web-vf",
        json!([result("vf", &pci)]),
        json!([vf_config(
            "FromClaim",
            &["vf"],
            json!({"apiVersion": api_version, "kind": "VfConfig",
            "ifName": "sriov1", "mac": "02:00:00:aa:bb:01", "mtu": 1400,
            "netAttachDefName": "sriov-static"})
        )]),
        &["web"],
    );
    let prepared = w
        .kubelet
        .prepare(DRIVER, vec![claim("default", "web-vf", &uid)])
        .unwrap();
    assert_eq!(prepared.claims[&uid].error, "", "{}", w.daemon.log());
    w.wait("the daemon's NRI registration", WAIT, || {
        w.daemon
            .log()
            .contains("NRI: registered with the runtime")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // The pod's sandbox: the VF is in it, with the claim's settings.
    let config = cri::pod_sandbox_config("web", "default", "uid-web", &std::env::temp_dir());
    let id = c
        .run_pod(config)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.log(), w.daemon.log()));
    let netns = c.pod_netns(&id).unwrap();
    assert_eq!(
        link_state(&netns, "sriov1"),
        ("02:00:00:aa:bb:01".to_string(), 1400, true),
        "{}",
        w.daemon.log()
    );
    let addrs = ip(&netns, &["-j", "addr", "show", "dev", "sriov1"]).unwrap();
    assert!(addrs.contains("\"local\":\"10.77.0.5\""), "{addrs}");
    assert!(has_link(&netns, "eth0"), "the pod network is there too");
    // The ADD's config is kept for the DELs.
    let kept = dir.join(format!("dra/nri/{id}@sriov1.json"));
    let kept_conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(kept_conf["ipam"]["type"], "static");
    assert_eq!(kept_conf["mtu"], 1400);
    assert!(!has_link(&node, &vf), "the VF left the node");
    let entry = w
        .wait("networkData in the claim's status", WAIT, || {
            device_status(&w, "web-vf", &dev(&pci)).filter(|e| e.get("networkData").is_some())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        entry["networkData"],
        json!({"interfaceName": "sriov1", "ips": ["10.77.0.5/24"], "hardwareAddress": "02:00:00:aa:bb:01"})
    );
    assert_eq!(entry["conditions"][0]["type"], "Ready");
    assert_eq!(entry["conditions"][0]["status"], "True");

    // Pod `pod`'s claim of VF `pci` with `settings`, prepared; its sandbox's error.
    let mut refused_sandbox = |pod: &str, pci: &str, settings: serde_json::Value| {
        let name = format!("{pod}-vf");
        let mut params = json!({"apiVersion": api_version, "kind": "VfConfig"});
        params
            .as_object_mut()
            .unwrap()
            .extend(settings.as_object().unwrap().clone());
        let uid = w.claim(
            &name,
            json!([result("vf", pci)]),
            json!([vf_config("FromClaim", &[], params)]),
            &[pod],
        );
        let r = w
            .kubelet
            .prepare(DRIVER, vec![claim("default", &name, &uid)])
            .unwrap();
        assert_eq!(r.claims[&uid].error, "");
        c.run_pod(cri::pod_sandbox_config(
            pod,
            "default",
            &format!("uid-{pod}"),
            &std::env::temp_dir(),
        ))
        .expect_err("the sandbox fails")
    };

    // A claim whose settings the VF cannot take: the sandbox fails, the VF is untouched.
    let err = refused_sandbox("db", &bad_pci, json!({"mtu": 65000}));
    assert!(err.contains("mtu"), "{err}");
    assert_eq!(link_state(&node, &bad_vf), bad_before, "untouched");

    // A claim naming a NAD that does not exist: the sandbox fails naming it, the VF untouched.
    let err = refused_sandbox("cache", &nad_pci, json!({"netAttachDefName": "gone"}));
    assert!(
        err.contains("NetworkAttachmentDefinition default/gone not found"),
        "{err}"
    );
    assert_eq!(link_state(&node, &nad_vf), nad_before, "untouched");

    // StopPodSandbox: the VF is back on the node as it was; networkData is gone.
    c.stop_pod(&id).unwrap();
    assert_eq!(link_state(&node, &vf).0, before.0, "MAC restored");
    assert_eq!(link_state(&node, &vf).1, before.1, "MTU restored");
    w.wait("networkData removed", WAIT, || {
        device_status(&w, "web-vf", &dev(&pci))
            .filter(|e| e.get("networkData").is_none() && e.get("conditions").is_some())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(kept.exists(), "kept until the sandbox is removed");
    c.remove_pod(&id).unwrap();
    assert!(!kept.exists(), "{}", w.daemon.log());
    let r = w
        .kubelet
        .unprepare(DRIVER, vec![claim("default", "web-vf", &uid)])
        .unwrap();
    assert_eq!(r.claims[&uid].error, "");
    assert!(w.record(&uid).is_none());
    eprintln!("NRI attach test took {:?}", started.elapsed());
}
