//! The daemon as a DRA driver against a real igb VF (guest booted with --iommu): the real
//! `sriov-device-plugin run --mode dra` next to this binary; in this process the sidecar's code
//! (claim service, slice publisher: a second process costs seconds under TCG), the API server
//! emulator and kubelet's DRA side. A claim with
//! `driver: vfio-pci` is prepared: the VF is bound to vfio-pci by the kernel (sysfs `driver`
//! link), its IOMMU group's `/dev/vfio/N` exists as a character device and is what the claim's
//! CDI spec names, the record keeps igbvf, the claim gets `Ready`. Unprepare gives the VF back
//! to igbvf with a netdev that netlink knows, the spec and the record are gone, and the
//! daemon's health stream reports the device Healthy again.

use super::{ensure, igb_pfs_up, IGB_POOLS};
use crate::cdi_check::check_spec;
use crate::dra_node::{dev, result, vfio_config, DraNode, DraNodeSpec, DRIVER};
use crate::kubelet::dra::claim;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sriov::names::PciAddress;
use sriov::netlink::NetlinkSocket;
use sriov::provision::{bind_driver, WaitPolicy};
use sriov::sysfs::Sysfs;
use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant};

const HEALTHY: i32 = 1;
/// Waits in the guest (debug binaries under TCG are slow).
const GUEST_WAIT: Duration = Duration::from_secs(60);

pub fn run() -> Result<()> {
    let sysfs = Sysfs::new("/sys");
    let (pfs, total, mut nl) = igb_pfs_up(&sysfs)?;
    let vf = pfs[0].vfs.first().context("PF 0 has no VF")?.clone();
    let dir = std::env::temp_dir().join(format!("sriov-guest-dra-{}", std::process::id()));
    let bins = std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .to_path_buf();
    let mut spec = DraNodeSpec::on_host(&bins, &dir, IGB_POOLS);
    // Debug binaries under TCG: the daemon alone takes seconds to start.
    spec.start_timeout = GUEST_WAIT;
    let started = Instant::now();
    let result = DraNode::start(spec, None)
        .map_err(|e| anyhow!(e))
        .and_then(|n| {
            println!(
                "dra: daemon, sidecar and kubelet up in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let r = scenario(&n, &sysfs, &mut nl, vf.pci, total);
            if r.is_err() || std::env::var_os("SRIOV_GUEST_DRA_LOGS").is_some() {
                eprintln!("--- daemon log\n{}", n.daemon.log());
                eprintln!("--- sidecar log\n{}", n.sidecar_log());
            }
            r
        });
    // Whatever happened: the VF back on igbvf for the scenarios after this one.
    let driver = sysfs.link_name(&sysfs.pci_device(&vf.pci).join("driver"));
    if !matches!(driver.as_ref().map(|d| d.as_deref()), Ok(Some("igbvf"))) {
        if let Err(e) = bind_driver(&sysfs, &vf.pci, "igbvf", WaitPolicy::default()) {
            eprintln!("dra: giving {} back to igbvf: {e}", vf.pci);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn driver(sysfs: &Sysfs, pci: &PciAddress) -> Result<Option<String>> {
    Ok(sysfs.link_name(&sysfs.pci_device(pci).join("driver"))?)
}

fn netdevs(sysfs: &Sysfs, pci: &PciAddress) -> Result<Vec<String>> {
    Ok(sysfs
        .list(&sysfs.pci_device(pci).join("net"))?
        .unwrap_or_default())
}

fn wait_healthy(node: &DraNode, devices: usize, what: &str) -> Result<()> {
    node.kubelet
        .wait_for(what, GUEST_WAIT, |s| {
            let h = s.last_health()?;
            (h.len() == devices && h.iter().all(|d| d.1 == HEALTHY)).then_some(())
        })
        .map_err(|e| anyhow!("{e}\n{}", node.daemon.log()))
}

fn scenario(
    node: &DraNode,
    sysfs: &Sysfs,
    nl: &mut NetlinkSocket,
    pci: PciAddress,
    total: usize,
) -> Result<()> {
    wait_healthy(node, total, "every igb VF healthy")?;
    println!("dra: driver registered, {total} igb VFs healthy in NodeWatchResources");
    let id = pci.to_string();
    ensure(driver(sysfs, &pci)?.as_deref() == Some("igbvf"), || {
        format!("{id} is not on igbvf before the claim")
    })?;
    ensure(!netdevs(sysfs, &pci)?.is_empty(), || {
        format!("{id} has no netdev before the claim")
    })?;
    let uid = node.claim(
        "vfio",
        json!([result("vf", &id)]),
        json!([vfio_config()]),
        &["p1"],
    );
    let c = claim("default", "vfio", &uid);
    let start = Instant::now();
    let r = node.kubelet.prepare(DRIVER, vec![c.clone()])?;
    let took = start.elapsed();
    let got = r.claims.get(&uid).context("no answer for the claim")?;
    ensure(got.error.is_empty(), || {
        format!("prepare failed: {}", got.error)
    })?;
    let want_id = format!("{DRIVER}/vf={uid}-{}", dev(&id));
    ensure(
        got.devices.len() == 1 && got.devices[0].cdi_device_ids == [want_id.clone()],
        || {
            format!(
                "prepare answered {:?}, expected CDI ID {want_id}",
                got.devices
            )
        },
    )?;

    // The kernel bound it: driver link, IOMMU group, its /dev/vfio node, no netdev.
    ensure(driver(sysfs, &pci)?.as_deref() == Some("vfio-pci"), || {
        format!("{id} is on {:?} after prepare", driver(sysfs, &pci).ok())
    })?;
    let group = sysfs
        .link_name(&sysfs.pci_device(&pci).join("iommu_group"))?
        .context("no iommu_group")?;
    let group_dev = format!("/dev/vfio/{group}");
    for node_path in ["/dev/vfio/vfio", group_dev.as_str()] {
        let meta =
            std::fs::metadata(node_path).with_context(|| format!("{node_path} after prepare"))?;
        ensure(meta.file_type().is_char_device(), || {
            format!("{node_path} is not a character device")
        })?;
    }
    ensure(netdevs(sysfs, &pci)?.is_empty(), || {
        format!("{id} on vfio-pci still shows a netdev")
    })?;
    println!(
        "dra: prepare ({:.0} ms): {id} bound to vfio-pci, IOMMU group {group}, {group_dev} present",
        took.as_secs_f64() * 1e3
    );

    // The claim's CDI spec (valid by the CDI rules) names exactly those nodes.
    let spec_file = node.cdi_spec_path(&uid);
    let spec =
        check_spec(&std::fs::read(&spec_file).with_context(|| spec_file.display().to_string())?)
            .map_err(|e| anyhow!("claim spec breaks the CDI rules: {e}"))?;
    let device = &spec["devices"][0];
    ensure(
        device["name"] == format!("{uid}-{}", dev(&id)).as_str(),
        || format!("spec device {device}"),
    )?;
    let nodes: Vec<(&str, &str)> = device["containerEdits"]["deviceNodes"]
        .as_array()
        .context("no deviceNodes")?
        .iter()
        .map(|n| {
            (
                n["path"].as_str().unwrap_or(""),
                n["hostPath"]
                    .as_str()
                    .unwrap_or(n["path"].as_str().unwrap_or("")),
            )
        })
        .collect();
    ensure(
        nodes
            == [
                ("/dev/vfio/vfio", "/dev/vfio/vfio"),
                (group_dev.as_str(), group_dev.as_str()),
            ],
        || format!("CDI device nodes {nodes:?}, expected /dev/vfio/vfio and {group_dev}"),
    )?;
    let env: Vec<&str> = spec["containerEdits"]["env"]
        .as_array()
        .context("no env")?
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    ensure(
        env.contains(&format!("PCIDEVICE_INTEL_COM_IGB={id}").as_str())
            && env.iter().any(|e| {
                e.starts_with("PCIDEVICE_INTEL_COM_IGB_INFO=")
                    && e.contains(&format!("\"dev-mount\":\"{group_dev}\""))
            }),
        || format!("CDI env {env:?}"),
    )?;
    let rec = node.record(&uid).context("no record")?;
    ensure(
        rec["phase"] == "Prepared" && rec["devices"][0]["originalDriver"] == "igbvf",
        || format!("record {rec}"),
    )?;
    node.wait("the claim's Ready condition", GUEST_WAIT, || {
        node.ready_condition("vfio", &dev(&id))
            .filter(|c| c == &("True".to_string(), "Prepared".to_string()))
    })
    .map_err(|e| anyhow!(e))?;
    println!("dra: CDI spec names /dev/vfio/vfio and {group_dev}; record Prepared; claim Ready");

    // Unprepare: igbvf again, with a netdev netlink knows; nothing left behind.
    let start = Instant::now();
    let u = node.kubelet.unprepare(DRIVER, vec![c])?;
    let took = start.elapsed();
    let err = u
        .claims
        .get(&uid)
        .map(|r| r.error.clone())
        .unwrap_or_default();
    ensure(err.is_empty(), || format!("unprepare failed: {err}"))?;
    ensure(driver(sysfs, &pci)?.as_deref() == Some("igbvf"), || {
        format!("{id} is on {:?} after unprepare", driver(sysfs, &pci).ok())
    })?;
    let names = netdevs(sysfs, &pci)?;
    let Some(name) = names.first() else {
        bail!("{id} back on igbvf without a netdev");
    };
    let link = nl
        .link_by_name(name)
        .with_context(|| format!("netdev {name} of {id}"))?;
    ensure(!spec_file.exists() && node.record(&uid).is_none(), || {
        "the claim's CDI spec or record is left after unprepare".into()
    })?;
    let over = std::fs::read_to_string(sysfs.pci_device(&pci).join("driver_override"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    ensure(over.is_empty() || over == "(null)", || {
        format!("driver_override of {id} left as {over:?}")
    })?;
    wait_healthy(node, total, "every igb VF healthy again after unprepare")?;
    println!(
        "dra: unprepare ({:.0} ms): {id} back on igbvf as {name} (ifindex {}), spec and record gone, healthy",
        took.as_secs_f64() * 1e3,
        link.index
    );
    Ok(())
}
