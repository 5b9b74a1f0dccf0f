//! `sriov-lab demo`: the project's main job end to end on a simulated node, step by step.
//!
//! A node with two SR-IOV PFs is built; the real `sriov-device-plugin run` provisions VFs from
//! its config (the emulated kernel answers) and registers its pools with the in-repo kubelet
//! emulator; two "pods" are allocated a VF each, and the real `sriov` CNI plugin moves each VF
//! into its pod's netns with an address from Debian's `static` IPAM; the pods ping each other;
//! the daemon restores a locked MTU a pod changed; the status view shows who holds which VF;
//! everything is torn down. Each step prints what it does; any failure stops the demo with a
//! non-zero exit.

use crate::cni::{run_in_node, Invocation, CNI_PATH};
use crate::kubelet::{DaemonArgs, DaemonProcess, KubeletEmulator, RegistrationMode};
use crate::sim::{unique_name, SimNode, SimSpec};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sriov::config::Config;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::report::StatusReport;
use sriov::sysfs::Sysfs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
const CONFIG: &str = r#"{
  "resourceList": [
    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
    {"resourceName": "fast", "selectors": {"pfNames": ["ens1f0#0-3"]}},
    {"resourceName": "kernel", "selectors": {"vendors": ["8086"], "drivers": ["iavf"]}}
  ],
  "provisioning": [{"pfNames": ["ens1f0"], "numVfs": 8, "mtu": 9000}]
}"#;

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn show_status(sysfs: &Sysfs, config: &Config, cni_state: Option<&Path>) -> Result<()> {
    let report = StatusReport::collect(sysfs, config, "intel.com", cni_state)?;
    print!("{}", report.render_text());
    Ok(())
}

/// Debian's IPAM plugins (`static`, `host-local`), installed when missing.
fn ensure_ipam_plugins() -> Result<()> {
    if Path::new(CNI_PATH).join("static").exists() {
        return Ok(());
    }
    println!("installing Debian's containernetworking-plugins (static IPAM) ...");
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends containernetworking-plugins >/dev/null",
        ])
        .status()?
        .success();
    if !ok || !Path::new(CNI_PATH).join("static").exists() {
        bail!("could not install containernetworking-plugins (needed for IPAM)");
    }
    Ok(())
}

/// The CNI plugin, run as a runtime runs it, inside the node's network namespace, with its
/// node-local settings (the lab's sysfs, the demo's folders) in a file as the installer writes it.
struct Cni {
    bin: PathBuf,
    node_netns: PathBuf,
    node_config: PathBuf,
}

impl Cni {
    fn new(bin: &Path, lab: &SimNode, state_dir: &Path) -> Result<Cni> {
        let dir = state_dir.parent().unwrap_or(state_dir);
        let node_config = dir.join("cni.json");
        let settings = json!({
            "sysfsRoot": lab.sysfs_root(), "stateDir": state_dir,
            "deviceInfoDir": dir.join("devinfo-cni"), "logDir": dir,
        });
        std::fs::write(&node_config, settings.to_string())?;
        Ok(Cni {
            bin: bin.to_path_buf(),
            node_netns: lab.netns_path().to_path_buf(),
            node_config,
        })
    }

    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({"cniVersion": "1.1.0", "name": "demo-net", "type": "sriov"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    }

    /// Runs one command; Ok(stdout JSON) on exit 0, Err(the error JSON) otherwise.
    fn call(&self, cmd: &str, container: &str, netns: &str, conf: &Value) -> Result<Value> {
        let call = Invocation {
            command: cmd,
            container_id: container,
            ifname: "net1",
            netns,
        };
        let node_config = self.node_config.display().to_string();
        let out = run_in_node(
            &self.bin,
            &self.node_netns,
            &call,
            conf.to_string().as_bytes(),
            &[("SRIOV_CNI_NODE_CONFIG", &node_config)],
        )
        .context("running the sriov CNI plugin")?;
        let json: Value = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout)
                .with_context(|| format!("CNI output: {}", String::from_utf8_lossy(&out.stdout)))?
        };
        if out.status.success() {
            Ok(json)
        } else {
            Err(anyhow!("{json}"))
        }
    }
}

struct Pod {
    name: &'static str,
    netns: String,
    ip: Ipv4Addr,
    vf: String,
}

/// Runs the demo; `keep` leaves the lab up at the end.
pub fn run(keep: bool) -> Result<()> {
    let name = unique_name("demo");
    step(
        1,
        &format!("build a simulated node {name:?}: 2 SR-IOV PFs x 4 VFs (1 vfio-bound each), real veth links"),
    );
    let lab = SimNode::up(
        &SimSpec::new(&name)
            .pfs(2)
            .vfs(4)
            .total_vfs(16)
            .vfio(1)
            .numa(true),
    )
    .context("building the simulated node")?;
    let sysfs = Sysfs::new(lab.sysfs_root());
    println!("sysfs root: {}", lab.sysfs_root().display());
    println!("node netns: {}", lab.netns_name());

    step(
        2,
        "sriov-device-plugin status (no config: one pool per SR-IOV PF)",
    );
    show_status(&sysfs, &Config::default(), None)?;

    ensure_ipam_plugins()?;
    let daemon_bin = crate::bins::build_binary("sriov-device-plugin").map_err(|e| anyhow!(e))?;
    let cni_bin = crate::bins::build_binary("sriov").map_err(|e| anyhow!(e))?;
    let work = tempdir(&name)?;
    let config_path = work.join("config.json");
    std::fs::write(&config_path, CONFIG)?;
    let config = Config::parse(CONFIG, "intel.com")?;
    let state_dir = work.join("cni-state");

    step(
        3,
        "start the emulated kernel, a kubelet emulator and `sriov-device-plugin run` with a config: \
         pools by driver and PF, 8 VFs and MTU 9000 on ens1f0",
    );
    println!("{CONFIG}");
    let _kernel = lab
        .emulate_kernel()
        .context("starting the emulated kernel")?;
    let kubelet_dir = work.join("kubelet");
    let kubelet = KubeletEmulator::start(&kubelet_dir, RegistrationMode::KubeletSocket)?;
    let args = DaemonArgs {
        config: config_path,
        sysfs_root: lab.sysfs_root().to_path_buf(),
        kubelet_dir,
        devinfo_dir: work.join("devinfo"),
        dev_root: lab.paths().dev(),
        netns: Some(lab.netns_path().to_path_buf()),
        metrics_address: None,
        extra: vec!["--cni-state-dir".into(), state_dir.display().to_string()],
    };
    let mut daemon = DaemonProcess::spawn(&daemon_bin, &args, &work.join("daemon.log"))?;
    let result = with_daemon(&lab, &sysfs, &config, &kubelet, &cni_bin, &state_dir);
    let status = daemon.terminate(Duration::from_secs(5));
    if let Err(e) = result {
        eprintln!("--- daemon log\n{}", daemon.log());
        return Err(e);
    }
    step(
        9,
        "stop the daemon (SIGTERM): it deregisters and removes its sockets and device-info files",
    );
    if !status.is_some_and(|s| s.success()) {
        bail!("the daemon did not exit cleanly on SIGTERM: {status:?}");
    }
    let left = std::fs::read_dir(work.join("devinfo"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!("daemon exited 0; device-info files left: {left}");
    if left != 0 {
        bail!("device-info files left behind");
    }

    if keep {
        step(
            10,
            &format!("lab kept: remove it with `sriov-lab down --name {name}`"),
        );
        lab.keep();
    } else {
        step(10, "tear down the node");
        lab.down()?;
        println!("removed {name}");
    }
    let _ = std::fs::remove_dir_all(&work);
    println!("\ndemo finished: all steps passed");
    Ok(())
}

fn tempdir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sriov-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn with_daemon(
    lab: &SimNode,
    sysfs: &Sysfs,
    config: &Config,
    kubelet: &KubeletEmulator,
    cni_bin: &Path,
    state_dir: &Path,
) -> Result<()> {
    let fast = "intel.com/fast";
    for (resource, count) in [(fast, 4), ("intel.com/kernel", 6), ("intel.com/dpdk", 2)] {
        let devices = kubelet
            .wait_devices(resource, WAIT, |d| {
                d.len() == count && d.iter().all(|x| x.health == sriov_proto::HEALTHY)
            })
            .map_err(|e| anyhow!("{e}\n{}", kubelet.describe()))?;
        println!("kubelet sees {resource}: {} healthy devices", devices.len());
    }

    let cni = Cni::new(cni_bin, lab, state_dir)?;
    let mut pods = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for (n, (pod, ip)) in [
        ("pod-a", Ipv4Addr::new(10, 56, 0, 1)),
        ("pod-b", Ipv4Addr::new(10, 56, 0, 2)),
    ]
    .into_iter()
    .enumerate()
    {
        step(
            4 + n as u32,
            &format!("{pod}: kubelet allocates a VF of {fast}; the sriov CNI attaches it with {ip}/24, MTU 9000 (locked)"),
        );
        let available: Vec<String> = kubelet
            .plugin(fast)
            .context("no plugin")?
            .ids()
            .into_iter()
            .filter(|id| !taken.contains(id))
            .collect();
        let chosen = kubelet.preferred_allocation(fast, &available, &[], 1)?;
        let resp = kubelet.allocate_pod(pod, "default", "app", fast, &chosen)?;
        let vf = resp
            .envs
            .get("PCIDEVICE_INTEL_COM_FAST")
            .context("no PCIDEVICE_INTEL_COM_FAST env")?
            .clone();
        println!(
            "GetPreferredAllocation -> {chosen:?}; Allocate env PCIDEVICE_INTEL_COM_FAST={vf}"
        );
        taken.push(vf.clone());
        let netns_name = lab.create_pod_netns(pod)?;
        let netns = format!("/var/run/netns/{netns_name}");
        let conf = cni.conf(json!({
            "deviceID": vf, "mtu": 9000, "mtuLock": true,
            "ipam": {"type": "static", "addresses": [{"address": format!("{ip}/24")}]},
        }));
        let result = cni.call("ADD", pod, &netns, &conf)?;
        println!("CNI ADD result: {result}");
        pods.push(Pod {
            name: pod,
            netns,
            ip,
            vf,
        });
    }

    step(
        6,
        "pod-a pings pod-b over their VFs (through the PF's switch)",
    );
    let a = Netns::open(&pods[0].netns)?;
    match crate::ping::ping(&a, pods[1].ip, 5, Duration::from_secs(1))? {
        Some(rtt) => println!(
            "reply from {} in {:.3} ms",
            pods[1].ip,
            rtt.as_secs_f64() * 1e3
        ),
        None => bail!("pod-a got no echo reply from pod-b"),
    }

    step(
        7,
        "pod-b changes its locked MTU to 1300; the daemon puts it back",
    );
    let b = Netns::open(&pods[1].netns)?;
    let mut nl = NetlinkSocket::new_in(&b)?;
    let link = nl.link_by_name("net1")?;
    // Give the daemon a moment to pick up the lock the CNI just recorded.
    std::thread::sleep(Duration::from_millis(300));
    nl.set_mtu(link.index, 1300)?;
    let changed = Instant::now();
    loop {
        let mtu = nl.link_by_index(link.index)?.mtu;
        if mtu == 9000 {
            println!(
                "MTU back to 9000 after {:.1} ms",
                changed.elapsed().as_secs_f64() * 1e3
            );
            break;
        }
        if changed.elapsed() > Duration::from_secs(2) {
            bail!("the locked MTU was not restored (still {mtu})");
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    step(
        8,
        "status: adapters, pools and which pod holds which VF; then both pods are deleted",
    );
    show_status(sysfs, config, Some(state_dir))?;
    let e = cni
        .call(
            "ADD",
            "pod-c",
            &pods[0].netns,
            &cni.conf(json!({"deviceID": "../../x"})),
        )
        .err()
        .context("a crafted deviceID was accepted")?;
    println!("bad input, CNI ADD with deviceID ../../x: {e}");
    let e = cni
        .call(
            "ADD",
            "pod-c",
            &pods[0].netns,
            &cni.conf(json!({"deviceID": pods[0].vf, "stateDir": "/etc"})),
        )
        .err()
        .context("a network config choosing the state folder was accepted")?;
    println!("a tenant's NAD naming a host folder (stateDir /etc): {e}");
    for pod in &pods {
        let conf = cni.conf(json!({"deviceID": pod.vf, "mtu": 9000, "mtuLock": true,
            "ipam": {"type": "static", "addresses": [{"address": format!("{}/24", pod.ip)}]}}));
        cni.call("DEL", pod.name, &pod.netns, &conf)?;
        println!("CNI DEL {}: VF {} back on the node", pod.name, pod.vf);
    }
    Ok(())
}
