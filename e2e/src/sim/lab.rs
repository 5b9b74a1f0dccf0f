//! A lab on disk: building it (`up`), opening it by name, and changing its
//! VFs with the kernel's `sriov_numvfs` rules.

use super::description::{make_vfs, LabDescription, PfDescription};
use super::error::{Result, SimError};
use super::kernel_emulator::{KernelEmulator, NumVfsWrite};
use super::links;
use super::paths::{LabPaths, RUN_ROOT};
use super::spec::{validate_name, SimSpec};
use super::sysfs_tree;
use super::teardown::down;
use nix::fcntl::{Flock, FlockArg};
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// Refuses early, with one clear message, what would fail later in pieces.
pub fn ensure_root() -> Result<()> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        Ok(())
    } else {
        Err(SimError::NotRoot { uid: uid.as_raw() })
    }
}

/// A built lab, found by name. Dropping it leaves the lab in place; see
/// [`super::SimNode`] for a handle that removes it.
#[derive(Debug, Clone)]
pub struct Lab {
    paths: LabPaths,
    desc: LabDescription,
}

impl Lab {
    /// Builds the lab described by `spec`, replacing any lab of that name.
    /// `owner_pid`: the process whose death lets `gc` remove it (`None`: kept
    /// until `down`). On failure everything built so far is removed.
    pub fn create(spec: &SimSpec, owner_pid: Option<u32>) -> Result<Lab> {
        ensure_root()?;
        spec.validate()?;
        let paths = LabPaths::new(&spec.name);
        if paths.root().exists() || paths.netns_path().exists() {
            down(&spec.name)?;
        }
        fs::create_dir_all(RUN_ROOT).map_err(SimError::io("create folder", RUN_ROOT))?;
        fs::create_dir(paths.root()).map_err(SimError::io("create lab folder", paths.root()))?;
        match Self::build(spec, &paths, owner_pid) {
            Ok(desc) => Ok(Lab { paths, desc }),
            Err(e) => {
                // The build error is the one worth reporting; cleanup is best effort.
                let _ = down(&spec.name);
                Err(e)
            }
        }
    }

    fn build(spec: &SimSpec, paths: &LabPaths, owner_pid: Option<u32>) -> Result<LabDescription> {
        links::mount_tmpfs(paths.root())?;
        // First file of the lab: lets `gc` judge even a half-built lab.
        let owner = owner_pid.map_or("none".to_string(), |pid| pid.to_string());
        fs::write(paths.owner(), owner + "\n").map_err(SimError::io("write", paths.owner()))?;
        for dir in [paths.tmp(), paths.netsys(), paths.sys(), paths.dev()] {
            fs::create_dir(&dir).map_err(SimError::io("create folder", &dir))?;
        }
        links::add_netns(&paths.netns_name())?;
        links::mount_netsys(&paths.netns_path(), &paths.netsys())?;
        let desc = LabDescription::build(spec, paths, owner_pid);
        if spec.links {
            links::ip_batch(&paths.netns_name(), &links::up_lines(&desc))?;
        }
        sysfs_tree::build(paths, &desc)?;
        desc.save(paths)?;
        Ok(desc)
    }

    /// Opens an existing lab from its `lab.json`.
    pub fn open(name: &str) -> Result<Lab> {
        validate_name(name)?;
        let paths = LabPaths::new(name);
        let json = paths.lab_json();
        if !json.exists() {
            return Err(SimError::NoSuchLab {
                name: name.to_string(),
                path: json,
            });
        }
        let desc = LabDescription::load(&json)?;
        Ok(Lab { paths, desc })
    }

    pub fn name(&self) -> &str {
        self.paths.name()
    }

    /// The description as of `up`, the last `set_vfs` through this handle, or
    /// the last [`Lab::refresh`].
    pub fn description(&self) -> &LabDescription {
        &self.desc
    }

    /// Re-reads `lab.json` (after another process or the kernel emulator
    /// changed VFs).
    pub fn refresh(&mut self) -> Result<&LabDescription> {
        self.desc = LabDescription::load(&self.paths.lab_json())?;
        Ok(&self.desc)
    }

    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }
    /// The fake `/sys`.
    pub fn sysfs_root(&self) -> &Path {
        &self.desc.sysfs_root
    }
    /// `sriovlab-NAME` (owned, so `&lab.netns_name()` reads naturally in args).
    pub fn netns_name(&self) -> String {
        self.desc.netns.clone()
    }
    pub fn netns_path(&self) -> &Path {
        &self.desc.netns_path
    }

    /// Does what the kernel does for `echo N > .../<pf>/sriov_numvfs`; `pf`
    /// is a PF netdev or PCI address. Refusals are [`SimError::NumVfsOutOfRange`]
    /// and [`SimError::NumVfsBusy`].
    pub fn set_vfs(&mut self, pf: &str, n: u32) -> Result<()> {
        let pci = self.change_vfs(pf, n)?;
        sysfs_tree::write_numvfs(&self.paths, &pci, n)
    }

    /// [`Lab::set_vfs`] without touching the `sriov_numvfs` file (the kernel
    /// emulator rewrites it in place itself). Returns the PF's PCI address.
    pub(crate) fn change_vfs(&mut self, pf: &str, n: u32) -> Result<String> {
        ensure_root()?;
        let _lock = self.lock()?;
        let mut desc = LabDescription::load(&self.paths.lab_json())?;
        let result = apply_numvfs(&self.paths, &mut desc, pf, n);
        self.desc = desc;
        result
    }

    fn lock(&self) -> Result<Flock<fs::File>> {
        let path = self.paths.lock();
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(SimError::io("open lock", &path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| SimError::sys("flock", path.display())(e))
    }

    /// Starts the `sriov_numvfs` kernel emulator on this lab.
    pub fn emulate_kernel(&self) -> Result<KernelEmulator> {
        KernelEmulator::start(self.name(), None)
    }

    /// Same, calling `on_write` for every write seen (from the emulator thread).
    pub fn emulate_kernel_with(
        &self,
        on_write: impl Fn(&NumVfsWrite) + Send + 'static,
    ) -> Result<KernelEmulator> {
        KernelEmulator::start(self.name(), Some(Box::new(on_write)))
    }

    /// Runs `ip -n <node netns> ARGS`; the caller checks the exit status.
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let mut cmd = Command::new(links::tool("ip"));
        cmd.arg("-n").arg(self.netns_name()).args(args);
        links::output(&mut cmd, None)
    }

    /// Runs a program inside the node netns (`nsenter --net=PATH ARGS`; unlike
    /// `ip netns exec` this keeps the host's /sys and cgroup mounts).
    pub fn run_in_netns<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let mut cmd = Command::new(links::tool("nsenter"));
        cmd.arg(format!("--net={}", self.netns_path().display()))
            .args(args);
        links::output(&mut cmd, None)
    }

    /// Creates netns `sriovlab-NAME-<suffix>` (a "pod"), removed by `down`.
    /// Returns its name; its path is `/var/run/netns/<name>`.
    pub fn create_pod_netns(&self, suffix: &str) -> Result<String> {
        validate_name(suffix)?;
        let name = format!("{}-{suffix}", self.netns_name());
        links::add_netns(&name)?;
        Ok(name)
    }

    /// Removes the lab (same as [`super::down`]).
    pub fn down(self) -> Result<()> {
        down(self.name())
    }
}

/// The kernel's `sriov_numvfs` store rules, applied to the tree, the links and
/// `lab.json` (not to the `sriov_numvfs` file). Returns the PF's PCI address.
fn apply_numvfs(paths: &LabPaths, desc: &mut LabDescription, pf: &str, n: u32) -> Result<String> {
    let i = desc.pf_position(pf)?;
    let links = desc.spec.links;
    let current = desc.pfs[i].clone();
    if n > current.total_vfs {
        return Err(SimError::NumVfsOutOfRange {
            pf: format!("{} ({})", current.pci, current.netdev),
            requested: n,
            total: current.total_vfs,
        });
    }
    if n == current.num_vfs {
        // The kernel accepts a write of the current value and changes nothing.
        return Ok(current.pci);
    }
    if current.num_vfs != 0 && n != 0 {
        return Err(SimError::NumVfsBusy {
            pf: format!("{} ({})", current.pci, current.netdev),
            current: current.num_vfs,
            requested: n,
        });
    }
    if n == 0 {
        sysfs_tree::remove_vfs(paths, &current)?;
        if links {
            links::ip_batch_best_effort(&desc.netns, &links::remove_vf_lines(&current))?;
        }
        desc.pfs[i].vfs.clear();
    } else {
        let added = PfDescription {
            vfs: make_vfs(&desc.spec, current.index, current.model, n),
            ..current
        };
        if let Err(e) = add_vfs(paths, &desc.netns, &added, links) {
            // Leave the PF as the kernel would after a failed enable: no VFs.
            let _ = sysfs_tree::remove_vfs(paths, &added);
            if links {
                let _ = links::ip_batch_best_effort(&desc.netns, &links::remove_vf_lines(&added));
            }
            return Err(e);
        }
        desc.pfs[i].vfs = added.vfs;
    }
    desc.pfs[i].num_vfs = n;
    desc.save(paths)?;
    Ok(desc.pfs[i].pci.clone())
}

fn add_vfs(paths: &LabPaths, netns: &str, pf: &PfDescription, links: bool) -> Result<()> {
    if links {
        links::ip_batch(netns, &links::add_vf_lines(pf, &pf.vfs))?;
    }
    sysfs_tree::add_vfs(paths, pf, &pf.vfs, links)
}
