//! The fake sysfs tree under `/run/sriov-lab/NAME/sys`, laid out like the
//! kernel's: `bus/pci/devices/<bdf>` links into `devices/pci0000:00/<bdf>/`.
//!
//! Nothing here opens a file inside a PF folder for writing in place: the
//! kernel emulator holds fanotify permission marks on PF folders, so files
//! there are replaced by rename (see [`replace_file`]), never rewritten.

use super::description::{
    LabDescription, PfDescription, VfDescription, DRIVERS, NVME_PCI, PLAIN_NIC_NETDEV,
    PLAIN_NIC_PCI,
};
use super::error::{Result, SimError};
use super::paths::{LabPaths, PCI_ROOT};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

fn mkdir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(SimError::io("create folder", path))
}

fn write(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content).map_err(SimError::io("write", path))
}

fn link(target: impl AsRef<Path>, at: &Path) -> Result<()> {
    symlink(target.as_ref(), at).map_err(SimError::io("create symlink", at))
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(SimError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(SimError::io("remove folder", path)(e)),
        _ => Ok(()),
    }
}

/// A fresh name in the lab's scratch folder (same filesystem as the tree).
fn scratch(paths: &LabPaths, what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    paths
        .tmp()
        .join(format!("{what}-{}-{n}", std::process::id()))
}

/// Replaces `dest` atomically: readers see the old or the new content, and
/// no open() happens in `dest`'s folder (which may be fanotify-marked).
pub(crate) fn replace_file(paths: &LabPaths, dest: &Path, content: &str) -> Result<()> {
    let tmp = scratch(paths, "file");
    write(&tmp, content)?;
    fs::rename(&tmp, dest).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SimError::io("rename into place", dest)(e)
    })
}

/// Sets `sriov_numvfs` of a PF the way a reader expects it (`N\n`).
pub(crate) fn write_numvfs(paths: &LabPaths, pf_pci: &str, n: u32) -> Result<()> {
    replace_file(
        paths,
        &paths.pci_dir(pf_pci).join("sriov_numvfs"),
        &format!("{n}\n"),
    )
}

/// Static stand-ins for a netdev's sysfs attributes when there are no links.
struct StaticNetdev {
    mac: String,
    up: bool,
}

/// `net/IFNAME` inside a PCI device folder: a link to the live netdev in the
/// node netns's sysfs, or (without links) a folder of static attributes.
fn net_entry(
    paths: &LabPaths,
    dev_dir: &Path,
    ifname: &str,
    fixed: Option<StaticNetdev>,
) -> Result<()> {
    let net = dev_dir.join("net");
    mkdir(&net)?;
    let at = net.join(ifname);
    match fixed {
        None => link(paths.live_netdev(ifname), &at),
        Some(attrs) => {
            mkdir(&at)?;
            let operstate = if attrs.up { "up" } else { "down" };
            for (file, value) in [
                ("address", attrs.mac.as_str()),
                ("mtu", "1500"),
                ("operstate", operstate),
                ("carrier", "1"),
                ("type", "1"),
            ] {
                write(&at.join(file), &format!("{value}\n"))?;
            }
            Ok(())
        }
    }
}

/// `class/net/IFNAME -> ../../devices/pci0000:00/<bdf>/net/IFNAME`
fn class_net_link(paths: &LabPaths, bdf: &str, ifname: &str) -> Result<()> {
    let at = paths.sys().join("class/net").join(ifname);
    remove_file(&at)?;
    link(format!("../../{PCI_ROOT}/{bdf}/net/{ifname}"), &at)
}

fn static_mac(a: u32, b: u32) -> String {
    format!("02:00:00:{:02x}:{:02x}:{:02x}", a & 0xff, b >> 8, b & 0xff)
}

/// Folder with the attributes every PCI function has, plus bus and driver links.
fn pci_function(
    dir: &Path,
    vendor: &str,
    device: &str,
    class: &str,
    numa: i32,
    driver: &str,
) -> Result<()> {
    mkdir(dir)?;
    write(&dir.join("vendor"), &format!("0x{vendor}\n"))?;
    write(&dir.join("device"), &format!("0x{device}\n"))?;
    write(&dir.join("class"), &format!("0x{class}\n"))?;
    write(&dir.join("numa_node"), &format!("{numa}\n"))?;
    link(
        format!("../../../bus/pci/drivers/{driver}"),
        &dir.join("driver"),
    )
}

/// Links a device into `bus/pci/devices` and its driver's folder.
fn register_device(paths: &LabPaths, bdf: &str, driver: &str) -> Result<()> {
    let sys = paths.sys();
    link(
        format!("../../../{PCI_ROOT}/{bdf}"),
        &sys.join("bus/pci/devices").join(bdf),
    )?;
    link(
        format!("../../../../{PCI_ROOT}/{bdf}"),
        &sys.join("bus/pci/drivers").join(driver).join(bdf),
    )
}

fn unregister_device(paths: &LabPaths, bdf: &str, driver: &str) -> Result<()> {
    let sys = paths.sys();
    remove_file(&sys.join("bus/pci/devices").join(bdf))?;
    remove_file(&sys.join("bus/pci/drivers").join(driver).join(bdf))
}

/// Writes the whole tree for `desc` (a fresh lab).
pub(crate) fn build(paths: &LabPaths, desc: &LabDescription) -> Result<()> {
    let sys = paths.sys();
    for dir in [
        "bus/pci/devices",
        "class/net",
        "kernel/iommu_groups",
        PCI_ROOT,
    ] {
        mkdir(&sys.join(dir))?;
    }
    mkdir(&paths.dev().join("vfio"))?;
    // Stand-in for the vfio container device every vfio user opens, and for the nodes a
    // needVhostNet pool hands out (tests remove them to emulate a node without vhost-net).
    write(&paths.dev().join("vfio/vfio"), "")?;
    write(&paths.dev().join("vhost-net"), "")?;
    mkdir(&paths.dev().join("net"))?;
    write(&paths.dev().join("net/tun"), "")?;
    if desc.spec.rdma {
        for dir in [
            "class/infiniband_verbs",
            "class/infiniband_mad",
            "class/infiniband",
        ] {
            mkdir(&sys.join(dir))?;
        }
        mkdir(&paths.dev().join("infiniband"))?;
        write(&paths.dev().join("infiniband/rdma_cm"), "")?;
    }
    for driver in DRIVERS {
        let dir = sys.join("bus/pci/drivers").join(driver);
        mkdir(&dir)?;
        write(&dir.join("bind"), "")?;
        write(&dir.join("unbind"), "")?;
    }

    let links = desc.spec.links;
    let nic = paths.pci_dir(PLAIN_NIC_PCI);
    pci_function(&nic, "8086", "15b8", "020000", -1, "e1000e")?;
    let fixed = (!links).then(|| StaticNetdev {
        mac: static_mac(0xff, 1),
        up: true,
    });
    net_entry(paths, &nic, PLAIN_NIC_NETDEV, fixed)?;
    class_net_link(paths, PLAIN_NIC_PCI, PLAIN_NIC_NETDEV)?;
    register_device(paths, PLAIN_NIC_PCI, "e1000e")?;

    pci_function(
        &paths.pci_dir(NVME_PCI),
        "8086",
        "2822",
        "010802",
        -1,
        "nvme",
    )?;
    register_device(paths, NVME_PCI, "nvme")?;

    for pf in &desc.pfs {
        build_pf(paths, pf, links)?;
        add_vfs(paths, pf, &pf.vfs, links)?;
    }
    Ok(())
}

fn build_pf(paths: &LabPaths, pf: &PfDescription, links: bool) -> Result<()> {
    let dir = paths.pci_dir(&pf.pci);
    pci_function(
        &dir,
        &pf.vendor,
        &pf.device,
        "020000",
        pf.numa_node,
        &pf.driver,
    )?;
    for (file, value) in [
        ("sriov_totalvfs", pf.total_vfs.to_string()),
        ("sriov_numvfs", pf.num_vfs.to_string()),
        ("sriov_offset", "16".to_string()),
        ("sriov_stride", "1".to_string()),
        ("sriov_vf_device", pf.vf_device.clone()),
        ("sriov_drivers_autoprobe", "1".to_string()),
    ] {
        write(&dir.join(file), &format!("{value}\n"))?;
    }
    let fixed = (!links).then(|| StaticNetdev {
        mac: static_mac(pf.index, 0),
        up: true,
    });
    net_entry(paths, &dir, &pf.netdev, fixed)?;
    class_net_link(paths, &pf.pci, &pf.netdev)?;
    register_device(paths, &pf.pci, &pf.driver)
}

/// Creates the VF folders of `pf` as the kernel does when VFs are enabled.
/// Each VF is assembled in the scratch folder and renamed into place, and its
/// `virtfn` link comes last: once a `virtfn<k>` exists, the VF is complete.
pub(crate) fn add_vfs(
    paths: &LabPaths,
    pf: &PfDescription,
    vfs: &[VfDescription],
    links: bool,
) -> Result<()> {
    let pf_dir = paths.pci_dir(&pf.pci);
    for vf in vfs {
        let staging = scratch(paths, "vf");
        pci_function(
            &staging,
            &pf.vendor,
            &pf.vf_device,
            "020000",
            pf.numa_node,
            &vf.driver,
        )?;
        link(format!("../{}", pf.pci), &staging.join("physfn"))?;
        if let Some(ifname) = &vf.netdev {
            let fixed = (!links).then(|| StaticNetdev {
                mac: static_mac(pf.index, vf.index + 1),
                up: false,
            });
            net_entry(paths, &staging, ifname, fixed)?;
        }
        if let Some(group) = vf.iommu_group {
            link(
                format!("../../../kernel/iommu_groups/{group}"),
                &staging.join("iommu_group"),
            )?;
        }
        if let Some(uio) = &vf.uio_device {
            mkdir(&staging.join("uio").join(uio))?;
            write(
                &staging.join("uio").join(uio).join("name"),
                "uio_pci_generic\n",
            )?;
        }
        if let Some(rdma) = &vf.rdma_device {
            // The layout mlx5 gives a VF: its RDMA device, and the character devices of its
            // port as class devices under the PCI device (each naming it in `ibdev`).
            let n = rdma.trim_start_matches("mlx5_");
            mkdir(&staging.join("infiniband").join(rdma).join("ports/1"))?;
            for (class, name) in [
                ("infiniband_verbs", format!("uverbs{n}")),
                ("infiniband_mad", format!("umad{n}")),
                ("infiniband_mad", format!("issm{n}")),
            ] {
                let dir = staging.join(class).join(&name);
                mkdir(&dir)?;
                write(&dir.join("ibdev"), &format!("{rdma}\n"))?;
            }
        }
        let dir = paths.pci_dir(&vf.pci);
        fs::rename(&staging, &dir).map_err(SimError::io("rename into place", &dir))?;

        register_device(paths, &vf.pci, &vf.driver)?;
        if let Some(ifname) = &vf.netdev {
            class_net_link(paths, &vf.pci, ifname)?;
        }
        if let Some(group) = vf.iommu_group {
            let devices = paths
                .sys()
                .join(format!("kernel/iommu_groups/{group}/devices"));
            mkdir(&devices)?;
            link(
                format!("../../../../{PCI_ROOT}/{}", vf.pci),
                &devices.join(&vf.pci),
            )?;
            if vf.noiommu {
                write(
                    &paths
                        .sys()
                        .join(format!("kernel/iommu_groups/{group}/name")),
                    "vfio-noiommu\n",
                )?;
            }
            write(&paths.dev().join(vfio_node(vf, group)), "")?;
        }
        if let Some(uio) = &vf.uio_device {
            write(&paths.dev().join(uio), "")?;
        }
        if let Some(rdma) = &vf.rdma_device {
            let n = rdma.trim_start_matches("mlx5_");
            let class = paths.sys().join("class");
            link(
                format!("../../{PCI_ROOT}/{}/infiniband/{rdma}", vf.pci),
                &class.join("infiniband").join(rdma),
            )?;
            for (class_name, name) in [
                ("infiniband_verbs", format!("uverbs{n}")),
                ("infiniband_mad", format!("umad{n}")),
                ("infiniband_mad", format!("issm{n}")),
            ] {
                link(
                    format!("../../{PCI_ROOT}/{}/{class_name}/{name}", vf.pci),
                    &class.join(class_name).join(&name),
                )?;
                write(&paths.dev().join("infiniband").join(&name), "")?;
            }
        }
        link(
            format!("../{}", vf.pci),
            &pf_dir.join(format!("virtfn{}", vf.index)),
        )?;
    }
    Ok(())
}

/// The VFIO group node of a vfio VF under the lab's `/dev`.
fn vfio_node(vf: &VfDescription, group: u32) -> String {
    if vf.noiommu {
        format!("vfio/noiommu-{group}")
    } else {
        format!("vfio/{group}")
    }
}

/// Removes VFs as the kernel does when `0` is written: `virtfn` links first,
/// then everything that points at the VF, then its folder.
pub(crate) fn remove_vfs(paths: &LabPaths, pf: &PfDescription) -> Result<()> {
    let pf_dir = paths.pci_dir(&pf.pci);
    for vf in &pf.vfs {
        remove_file(&pf_dir.join(format!("virtfn{}", vf.index)))?;
    }
    for vf in &pf.vfs {
        unregister_device(paths, &vf.pci, &vf.driver)?;
        if let Some(ifname) = &vf.netdev {
            remove_file(&paths.sys().join("class/net").join(ifname))?;
        }
        if let Some(group) = vf.iommu_group {
            remove_dir(&paths.sys().join(format!("kernel/iommu_groups/{group}")))?;
            remove_file(&paths.dev().join(vfio_node(vf, group)))?;
        }
        if let Some(uio) = &vf.uio_device {
            remove_file(&paths.dev().join(uio))?;
        }
        if let Some(rdma) = &vf.rdma_device {
            let n = rdma.trim_start_matches("mlx5_");
            let class = paths.sys().join("class");
            remove_file(&class.join("infiniband").join(rdma))?;
            for (class_name, name) in [
                ("infiniband_verbs", format!("uverbs{n}")),
                ("infiniband_mad", format!("umad{n}")),
                ("infiniband_mad", format!("issm{n}")),
            ] {
                remove_file(&class.join(class_name).join(&name))?;
                remove_file(&paths.dev().join("infiniband").join(&name))?;
            }
        }
        remove_dir(&paths.pci_dir(&vf.pci))?;
    }
    Ok(())
}
