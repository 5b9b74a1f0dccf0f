//! The node daemon against real igb VFs (issue: device plugin, in the QEMU lab): the real
//! `sriov-device-plugin run` next to this binary, driven by the in-repo kubelet emulator.
//! It discovers the VFs, one is allocated (envs and device-info file as upstream), a vfio-pci
//! VF yields `/dev/vfio/<group>` (with --iommu), and a PF link going down makes that PF's VFs
//! Unhealthy, and Healthy again when it comes back.

use super::{ensure, igb_pfs_up, IGB_POOLS};
use crate::kubelet::{DaemonArgs, DaemonProcess, KubeletEmulator, RegistrationMode};
use anyhow::{anyhow, Context, Result};
use sriov::netlink::NetlinkSocket;
use sriov::provision::{bind_driver, WaitPolicy};
use sriov::sysfs::Sysfs;
use sriov_proto::{HEALTHY, UNHEALTHY};
use std::path::PathBuf;
use std::time::Duration;

const RESOURCE: &str = "intel.com/igb";

pub fn run(iommu: bool) -> Result<()> {
    let sysfs = Sysfs::new("/sys");
    let (pfs, total, mut nl) = igb_pfs_up(&sysfs)?;
    let work = tempdir()?;
    let config = work.join("config.json");
    std::fs::write(&config, IGB_POOLS)?;
    let kubelet_dir = work.join("kubelet");
    let devinfo = work.join("devinfo");
    let kubelet = KubeletEmulator::start(&kubelet_dir, RegistrationMode::KubeletSocket)?;
    let bin = std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .join("sriov-device-plugin");
    let args = DaemonArgs {
        config,
        sysfs_root: "/sys".into(),
        kubelet_dir: kubelet_dir.clone(),
        devinfo_dir: devinfo.clone(),
        dev_root: "/dev".into(),
        netns: None,
        metrics_address: None,
        extra: vec![],
    };
    let mut daemon = DaemonProcess::spawn(&bin, &args, &work.join("daemon.log"))
        .with_context(|| format!("starting {}", bin.display()))?;
    let result = scenario(&kubelet, &sysfs, &pfs, total, &devinfo, iommu, &mut nl);
    let status = daemon.terminate(Duration::from_secs(5));
    if result.is_err() {
        eprintln!("--- daemon log\n{}", daemon.log());
    }
    result?;
    ensure(status.is_some_and(|s| s.success()), || {
        format!("daemon exit on SIGTERM: {status:?}")
    })?;
    let left: Vec<_> = std::fs::read_dir(&devinfo)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    ensure(left.is_empty(), || {
        format!("device-info files left after SIGTERM: {left:?}")
    })?;
    println!("daemon: SIGTERM exits 0 and removes its device-info files");
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sriov-guest-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn scenario(
    kubelet: &KubeletEmulator,
    sysfs: &Sysfs,
    pfs: &[sriov::discovery::PciNetDevice],
    total: usize,
    devinfo: &std::path::Path,
    iommu: bool,
    nl: &mut NetlinkSocket,
) -> Result<()> {
    let wait = Duration::from_secs(15);
    let devices = kubelet
        .wait_devices(RESOURCE, wait, |d| {
            d.len() == total && d.iter().all(|x| x.health == HEALTHY)
        })
        .map_err(|e| anyhow!("{e}\n{}", kubelet.describe()))?;
    println!("daemon: {RESOURCE} lists {} healthy igb VFs", devices.len());
    let pf0 = &pfs[0];
    let vf0 = pf0.vfs.first().context("PF 0 has no VF")?;
    let id = vf0.pci.to_string();
    let resp = kubelet.allocate(RESOURCE, std::slice::from_ref(&id))?;
    ensure(
        resp.envs.get("PCIDEVICE_INTEL_COM_IGB") == Some(&id),
        || format!("envs {:?}", resp.envs),
    )?;
    let info: serde_json::Value = serde_json::from_str(
        resp.envs
            .get("PCIDEVICE_INTEL_COM_IGB_INFO")
            .context("no _INFO env")?,
    )?;
    ensure(info[&id]["generic"]["deviceID"] == id.as_str(), || {
        format!("_INFO {info}")
    })?;
    ensure(resp.devices.is_empty(), || {
        format!("a kernel VF got device nodes: {:?}", resp.devices)
    })?;
    let file = devinfo.join(sriov::devinfo::file_name(RESOURCE, &vf0.pci));
    let di: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&file).with_context(|| format!("{}", file.display()))?,
    )?;
    ensure(
        di["type"] == "pci"
            && di["version"] == "1.1.0"
            && di["pci"]["pci-address"] == id.as_str()
            && di["pci"]["pf-pci-address"] == pf0.pci.to_string().as_str(),
        || format!("device-info {di}"),
    )?;
    println!("daemon: Allocate {id}: envs and device-info file as upstream");

    if iommu {
        let vf = pf0.vfs.last().context("no VF")?;
        bind_driver(sysfs, &vf.pci, "vfio-pci", WaitPolicy::default())?;
        let group = sysfs
            .link_name(&sysfs.pci_device(&vf.pci).join("iommu_group"))?
            .context("no iommu_group")?;
        let resp = kubelet.allocate(RESOURCE, &[vf.pci.to_string()])?;
        let paths: Vec<(&str, &str)> = resp
            .devices
            .iter()
            .map(|d| (d.container_path.as_str(), d.host_path.as_str()))
            .collect();
        let want = format!("/dev/vfio/{group}");
        ensure(
            paths.contains(&("/dev/vfio/vfio", "/dev/vfio/vfio"))
                && paths.contains(&(want.as_str(), want.as_str())),
            || format!("vfio device specs {paths:?}, expected /dev/vfio/vfio and {want}"),
        )?;
        println!(
            "daemon: vfio-pci VF {} gets /dev/vfio/vfio and {want}",
            vf.pci
        );
        bind_driver(sysfs, &vf.pci, "igbvf", WaitPolicy::default())?;
    }

    // PF 1 (or 0) link down: its VFs turn Unhealthy, the others stay Healthy.
    let pf = pfs.last().context("no PF")?;
    let pf_vfs: Vec<String> = pf.vfs.iter().map(|v| v.pci.to_string()).collect();
    let link = nl.link_by_name(pf.name().context("PF netdev")?)?;
    nl.set_down(link.index)?;
    let health = |d: &[sriov_proto::deviceplugin::v1beta1::Device], id: &str| {
        d.iter().find(|x| x.id == id).map(|x| x.health.clone())
    };
    kubelet
        .wait_devices(RESOURCE, wait, |d| {
            pf_vfs
                .iter()
                .all(|v| health(d, v).as_deref() == Some(UNHEALTHY))
        })
        .map_err(|e| {
            anyhow!(
                "VFs of {} not Unhealthy after link down: {e}",
                pf.display_name()
            )
        })?;
    println!(
        "daemon: {} down: its {} VFs Unhealthy",
        pf.display_name(),
        pf_vfs.len()
    );
    nl.set_up(link.index)?;
    kubelet
        .wait_devices(RESOURCE, wait, |d| d.iter().all(|x| x.health == HEALTHY))
        .map_err(|e| anyhow!("VFs not Healthy again after link up: {e}"))?;
    println!("daemon: {} up: all VFs Healthy again", pf.display_name());
    Ok(())
}
