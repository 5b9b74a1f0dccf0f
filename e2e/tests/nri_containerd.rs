//! Our NRI plugin against a real runtime: Debian trixie's containerd 1.7 with NRI on (in a
//! chroot, inside a simulated node's netns), pod sandboxes driven through CRI as kubelet does.
//! The plugin registers, is configured and synchronized, gets RunPodSandbox with the sandbox's
//! network namespace path, moves a VF's netdev (a veth of the simulated node) into that
//! namespace, where the pod sees it, and gets StopPodSandbox (it moves the netdev back) and
//! RemovePodSandbox. Needs root; installs what it needs (the trixie root is cached).

use serde_json::json;
use sriov_e2e::containerd17::Containerd17;
use sriov_e2e::cri;
use sriov_e2e::sim::{unique_name, SimNode, SimSpec};
use sriov_proto::nri::api::PodSandbox;
use sriov_proto::nri::plugin::{self, NriError, PluginOptions, PodEvents, RuntimeInfo};
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
