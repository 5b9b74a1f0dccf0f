//! Plays the kernel's PCI core for driver binds on a simulated tree: a write of a device's
//! address to `bus/pci/drivers_probe` binds it to its `driver_override` (the `driver` link).
//! A device bound to vfio-pci gets an IOMMU group (900 for the first device named, 901 for the
//! next, ...: `iommu_group` link, `kernel/iommu_groups/N`) and `/dev/vfio/N` in the lab's
//! `/dev`, kept when it goes back (as the kernel keeps the group).
//!
//! Unlike the kernel, the bind happens after the write returns (an inotify event on
//! `drivers_probe`): the writer sees it when it next reads the `driver` link.

use super::{Result, SimError, SimNode};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The first IOMMU group number given.
pub const FIRST_BIND_GROUP: u32 = 900;

/// A running emulator; stops when dropped.
pub struct BindEmulator {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn err(action: &'static str, path: &Path, e: nix::Error) -> SimError {
    SimError::io(action, path)(std::io::Error::from(e))
}

impl BindEmulator {
    /// Creates `drivers_probe` and the `driver_override` files of `pcis` and starts watching.
    pub fn start(lab: &SimNode, pcis: &[String]) -> Result<BindEmulator> {
        let sys = lab.sysfs_root().to_path_buf();
        let dev = lab.paths().dev();
        let probe = sys.join("bus/pci/drivers_probe");
        std::fs::write(&probe, "").map_err(SimError::io("creating", &probe))?;
        for pci in pcis {
            let f = sys
                .join("bus/pci/devices")
                .join(pci)
                .join("driver_override");
            std::fs::write(&f, "").map_err(SimError::io("creating", &f))?;
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| err("inotify_init", &probe, e))?;
        inotify
            .add_watch(&probe, AddWatchFlags::IN_CLOSE_WRITE)
            .map_err(|e| err("watching", &probe, e))?;
        let groups: Vec<(String, u32)> = pcis
            .iter()
            .zip(FIRST_BIND_GROUP..)
            .map(|(p, g)| (p.clone(), g))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, 50u16), Ok(n) if n > 0) {
                    continue;
                }
                let _ = inotify.read_events();
                let pci = std::fs::read_to_string(&probe).unwrap_or_default();
                let pci = pci.trim();
                if pci.is_empty() {
                    continue;
                }
                if let Err(e) = bind(&sys, &dev, pci, &groups) {
                    eprintln!("bind emulator: {pci}: {e}");
                }
                let _ = std::fs::write(&probe, "");
            }
        });
        Ok(BindEmulator {
            stop,
            thread: Some(thread),
        })
    }
}

fn bind(sys: &Path, dev: &Path, pci: &str, groups: &[(String, u32)]) -> std::io::Result<()> {
    let dir = sys.join("bus/pci/devices").join(pci);
    let driver = std::fs::read_to_string(dir.join("driver_override"))?;
    let driver = driver.trim();
    let _ = std::fs::remove_file(dir.join("driver"));
    std::os::unix::fs::symlink(
        format!("../../../bus/pci/drivers/{driver}"),
        dir.join("driver"),
    )?;
    let group = groups.iter().find(|(p, _)| p == pci).map(|(_, g)| *g);
    if let (true, false, Some(g)) = (
        driver == "vfio-pci",
        dir.join("iommu_group").exists(),
        group,
    ) {
        std::fs::create_dir_all(sys.join(format!("kernel/iommu_groups/{g}/devices")))?;
        std::os::unix::fs::symlink(
            format!("../../../kernel/iommu_groups/{g}"),
            dir.join("iommu_group"),
        )?;
        std::fs::write(dev.join(format!("vfio/{g}")), "")?;
    }
    Ok(())
}

impl Drop for BindEmulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
