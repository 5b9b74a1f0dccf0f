//! `sriov-lab demo`: the project's main job on a simulated node, step by step.
//!
//! Today: build a node with two SR-IOV PFs, show its adapters and pools, provision more VFs
//! through the (emulated) kernel from a config, show the result, tear everything down. Each step
//! prints what it does; any failure stops the demo with a non-zero exit.

use crate::sim::{unique_name, SimNode, SimSpec};
use anyhow::{bail, Context, Result};
use sriov::config::Config;
use sriov::discovery::{default_route_interfaces, Node};
use sriov::pools;
use sriov::provision::{self, WaitPolicy};
use sriov::report::StatusReport;
use sriov::sysfs::Sysfs;

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn show_status(sysfs: &Sysfs, config: &Config) -> Result<Node> {
    let node = Node::discover(sysfs, &pools::discovery_options(config))?;
    let routes = default_route_interfaces("/proc/net/route".as_ref()).unwrap_or_default();
    let pools = pools::assign(config, &node, "intel.com", &routes);
    let report = StatusReport::build(
        &sysfs.root().display().to_string(),
        &node,
        &pools,
        &config.warnings,
    );
    print!("{}", report.render_text());
    Ok(node)
}

/// Runs the demo; `keep` leaves the lab up at the end.
pub fn run(keep: bool) -> Result<()> {
    let name = unique_name("demo");
    step(1, &format!("build a simulated node {name:?}: 2 SR-IOV PFs x 4 VFs (1 vfio-bound per PF), real veth links"));
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
        "sriov-device-plugin status (zero config: one pool per SR-IOV PF)",
    );
    show_status(&sysfs, &Config::default())?;

    step(
        3,
        "apply a config: 8 VFs on ens1f0 and MTU 9000, pools by driver and PF",
    );
    let config = Config::parse(
        r#"{
          "resourceList": [
            {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
            {"resourceName": "fast", "selectors": {"pfNames": ["ens1f0#0-3"]}},
            {"resourceName": "kernel", "selectors": {"vendors": ["8086"], "drivers": ["iavf"]}}
          ],
          "provisioning": [{"pfNames": ["ens1f0"], "numVfs": 8, "mtu": 9000}]
        }"#,
        "intel.com",
    )?;
    let kernel = lab
        .emulate_kernel()
        .context("starting the emulated kernel")?;
    let node = Node::discover(&sysfs, &pools::discovery_options(&config))?;
    for (pf, p) in pools::provisioning_plan(&config, &node) {
        if let Some(n) = p.num_vfs {
            provision::set_num_vfs(&sysfs, &pf.pci, n, WaitPolicy::default())?;
            println!("{}: {} VFs", pf.display_name(), n);
        }
        if let Some(mtu) = p.mtu {
            provision::set_pf_mtu(&sysfs, &pf.pci, mtu)?;
            println!("{}: MTU {mtu}", pf.display_name());
        }
    }
    let writes = kernel.writes();
    println!("writes to sriov_numvfs seen by the kernel: {writes:?}");
    drop(kernel);

    step(4, "status with the config");
    let node = show_status(&sysfs, &config)?;
    let pf = node
        .device_by_name("ens1f0")
        .context("ens1f0 not found after provisioning")?;
    if pf.vfs.len() != 8 || pf.netdevs[0].mtu != Some(9000) {
        bail!(
            "provisioning did not take effect: {} VFs, MTU {:?}",
            pf.vfs.len(),
            pf.netdevs[0].mtu
        );
    }

    step(5, "bad input gets a clear error");
    let e = provision::set_num_vfs(&sysfs, &pf.pci, 17, WaitPolicy::default())
        .err()
        .context("17 VFs on a 16-VF PF was accepted")?;
    println!("{e}");

    if keep {
        step(
            6,
            &format!("lab kept: remove it with `sriov-lab down --name {name}`"),
        );
        lab.keep();
    } else {
        step(6, "tear down");
        drop(lab);
        println!("removed {name}");
    }
    println!("\ndemo finished: all steps passed");
    Ok(())
}
