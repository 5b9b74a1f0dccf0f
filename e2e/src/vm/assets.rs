//! Installing and caching what the lab needs: QEMU 10 (system-wide, from bookworm-backports),
//! a Debian guest kernel with its modules and busybox-static (both unpacked in the cache).
//!
//! Every step checks first whether its result already exists, and all of them run under one
//! exclusive `flock` on `<cache>/.lock`, so concurrent test processes do the work once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use super::{progress, KernelSeries, VmError};

/// Module folders (under `lib/modules/<release>/`) removed from the unpacked kernel.
const UNUSED_MODULE_TREES: &[&str] = &[
    "kernel/sound",
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/staging",
    "kernel/drivers/infiniband",
    "kernel/drivers/usb",
    "kernel/drivers/hid",
    "kernel/drivers/input",
    "kernel/drivers/iio",
    "kernel/drivers/bluetooth",
    "kernel/drivers/net/wireless",
    "kernel/net/bluetooth",
    "kernel/net/mac80211",
    "kernel/net/wireless",
];

/// The QEMU binary the lab runs.
pub const QEMU: &str = "qemu-system-x86_64";
const BACKPORTS: &str = "bookworm-backports";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/sriov-lab-bookworm-backports.sources";
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/sriov-lab-bookworm-backports.list";

type Result<T> = std::result::Result<T, VmError>;

/// The cache folder: `$SRIOV_LAB_CACHE` or `/var/cache/sriov-lab`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("SRIOV_LAB_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/var/cache/sriov-lab"),
    }
}

/// An exclusive lock on the cache, held until dropped.
pub struct CacheLock {
    _lock: Flock<fs::File>,
    /// The cache folder.
    pub dir: PathBuf,
}

/// Takes the cache lock (blocking), creating the cache folder if needed.
pub fn lock_cache() -> Result<CacheLock> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).map_err(VmError::io(format!("create {}", dir.display())))?;
    let path = dir.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(VmError::io(format!("open {}", path.display())))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            progress(format_args!(
                "waiting for {} (another sriov-lab is preparing the cache) ...",
                path.display()
            ));
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| VmError::Setup(format!("flock {}: {e}", path.display())))?
        }
        Err((_, e)) => return Err(VmError::Setup(format!("flock {}: {e}", path.display()))),
    };
    Ok(CacheLock { _lock: lock, dir })
}

/// An unpacked guest kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Kernel release, e.g. `6.12.27+bpo-amd64`.
    pub release: String,
    /// The bootable image (`boot/vmlinuz-<release>`).
    pub image: PathBuf,
    /// `lib/modules/<release>` with a `modules.dep` made by `depmod -b`.
    pub modules: PathBuf,
}

/// Everything needed to boot a guest.
#[derive(Clone, Debug)]
pub struct Assets {
    pub kernel: Kernel,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    pub cache: PathBuf,
}

/// Installs (first use) or finds (afterwards) QEMU, the kernel and busybox.
pub fn ensure(series: KernelSeries, lock: &CacheLock) -> Result<Assets> {
    ensure_qemu()?;
    let busybox = ensure_busybox(&lock.dir)?;
    let kernel = ensure_kernel(series, &lock.dir)?;
    Ok(Assets {
        kernel,
        busybox,
        cache: lock.dir.clone(),
    })
}

/// Runs a command, failing with its stderr when it does not succeed.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(VmError::io(format!("run {shown}")))?;
    if !out.status.success() {
        return Err(VmError::Setup(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
        "-q",
        "-y",
        "-o",
        "DPkg::Lock::Timeout=600",
    ]);
    cmd
}

fn qemu_has_igb() -> bool {
    Command::new(QEMU)
        .args(["-device", "help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("name \"igb\""))
        })
        .unwrap_or(false)
}

/// Installs `qemu-system-x86` from bookworm-backports unless the installed QEMU has `igb`.
pub fn ensure_qemu() -> Result<()> {
    if qemu_has_igb() {
        return Ok(());
    }
    ensure_backports()?;
    let t = Instant::now();
    progress("installing QEMU 10 (qemu-system-x86) from bookworm-backports ...");
    run_cmd(apt_get().args([
        "install",
        "--no-install-recommends",
        "-t",
        BACKPORTS,
        "qemu-system-x86",
    ]))?;
    if !qemu_has_igb() {
        return Err(VmError::Setup(format!(
            "{QEMU} from {BACKPORTS} still has no igb device"
        )));
    }
    progress(format_args!(
        "QEMU installed in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn backports_configured() -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            let name = p.to_string_lossy();
            if name.ends_with(".list") || name.ends_with(".sources") {
                files.push(p);
            }
        }
    }
    files.iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|text| {
            text.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with('#') && l.split_whitespace().any(|w| w == BACKPORTS)
            })
        })
    })
}

fn backports_indexed() -> bool {
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.contains(&format!("_dists_{BACKPORTS}_main_binary-amd64_Packages"))
        })
    })
}

/// The mirror (and keyring) the machine already uses for bookworm, from deb822 `.sources`
/// files or one-line `.list` files.
fn debian_mirror() -> (String, Option<String>, bool) {
    let default = ("http://deb.debian.org/debian".to_string(), None, true);
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.insert(0, PathBuf::from("/etc/apt/sources.list"));
    for f in &files {
        let Ok(text) = fs::read_to_string(f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().find_map(|l| {
                        l.strip_prefix(key)
                            .and_then(|v| v.strip_prefix(':'))
                            .map(|v| v.trim().to_string())
                    })
                };
                let suites = field("Suites").unwrap_or_default();
                if suites.split_whitespace().any(|s| s == "bookworm") {
                    if let Some(uri) = field("URIs") {
                        let uri = uri
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        return (uri, field("Signed-By"), true);
                    }
                }
            }
        } else if name.ends_with(".list") {
            for l in text.lines() {
                let words: Vec<&str> = l.split_whitespace().collect();
                if words.first() != Some(&"deb") {
                    continue;
                }
                // deb [options] URI suite components...
                let rest: Vec<&str> = if words.get(1).is_some_and(|w| w.starts_with('[')) {
                    let close = words.iter().position(|w| w.ends_with(']')).unwrap_or(1);
                    words[close + 1..].to_vec()
                } else {
                    words[1..].to_vec()
                };
                if rest.get(1) == Some(&"bookworm") {
                    return (rest[0].to_string(), None, false);
                }
            }
        }
    }
    default
}

/// Adds bookworm-backports to apt's sources (same mirror and format as the existing ones) if
/// missing, and fetches its index (only that source's) if apt has none.
pub fn ensure_backports() -> Result<()> {
    let mut source_file = None;
    if !backports_configured() {
        let (uri, signed_by, deb822) = debian_mirror();
        let (path, text) = if deb822 {
            let mut text =
                format!("Types: deb\nURIs: {uri}\nSuites: {BACKPORTS}\nComponents: main\n");
            if let Some(k) = signed_by {
                text.push_str(&format!("Signed-By: {k}\n"));
            }
            (BACKPORTS_SOURCES, text)
        } else {
            (BACKPORTS_LIST, format!("deb {uri} {BACKPORTS} main\n"))
        };
        progress(format_args!("adding {BACKPORTS} ({uri}) to {path}"));
        fs::write(path, text).map_err(VmError::io(format!("write {path}")))?;
        source_file = Some(path.to_string());
    }
    if !backports_indexed() || source_file.is_some() {
        let t = Instant::now();
        progress(format_args!("apt-get update ({BACKPORTS}) ..."));
        let mut cmd = apt_get();
        match source_file.as_deref() {
            Some(f) if Path::new(f).exists() => {
                // Only the new source: leaves the other indexes alone and is quicker.
                cmd.args([
                    "-o",
                    &format!("Dir::Etc::sourcelist={f}"),
                    "-o",
                    "Dir::Etc::sourceparts=-",
                    "-o",
                    "APT::Get::List-Cleanup=0",
                ]);
            }
            _ => {}
        }
        run_cmd(cmd.arg("update"))?;
        progress(format_args!(
            "apt index updated in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

fn ensure_tool(tool: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false)
        || Path::new("/sbin").join(tool).exists()
        || Path::new("/usr/sbin").join(tool).exists();
    if !found {
        progress(format_args!("installing {package} (for {tool}) ..."));
        run_cmd(apt_get().args(["install", "--no-install-recommends", package]))?;
    }
    Ok(())
}

/// Downloads a package's `.deb` into `dir` and unpacks it into `dir/root`.
fn download_and_unpack(package: &str, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(VmError::io(format!("create {}", dir.display())))?;
    run_cmd(apt_get().arg("download").arg(package).current_dir(dir))?;
    let deb = fs::read_dir(dir)
        .map_err(VmError::io(format!("read {}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| VmError::Setup(format!("apt-get download {package}: no .deb")))?;
    let root = dir.join("root");
    run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb).ok();
    Ok(root)
}

/// Unpacks busybox-static into `<cache>/busybox/busybox`.
pub fn ensure_busybox(cache: &Path) -> Result<PathBuf> {
    let target = cache.join("busybox").join("busybox");
    if target.exists() {
        return Ok(target);
    }
    progress("fetching busybox-static ...");
    let work = cache.join("busybox.tmp");
    fs::remove_dir_all(&work).ok();
    let root = download_and_unpack("busybox-static", &work)?;
    let bin = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.exists())
        .ok_or_else(|| VmError::Setup("busybox-static has no bin/busybox".into()))?;
    let dir = cache.join("busybox");
    fs::create_dir_all(&dir).map_err(VmError::io(format!("create {}", dir.display())))?;
    let tmp = dir.join("busybox.new");
    fs::copy(&bin, &tmp).map_err(VmError::io("copy busybox"))?;
    fs::rename(&tmp, &target).map_err(VmError::io("rename busybox"))?;
    fs::remove_dir_all(&work).ok();
    Ok(target)
}

/// Numeric components of a version string, for ordering (`6.12.27+bpo` -> [6, 12, 27]).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Picks the newest plain amd64 image package of a series from package names.
pub fn pick_kernel_package<'a>(
    series: KernelSeries,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let prefix = format!("{}.", series.as_str());
    names
        .into_iter()
        .filter_map(|name| {
            let ver = name.strip_prefix("linux-image-")?.strip_suffix("-amd64")?;
            if !ver.starts_with(&prefix) {
                return None;
            }
            // "6.12.95+deb12", "6.12.27+bpo", "6.1.0-35": every '-' part starts with a digit;
            // flavours (-cloud, -rt) and variants (-dbg, -unsigned) do not.
            if !ver
                .split('-')
                .all(|part| part.starts_with(|c: char| c.is_ascii_digit()))
            {
                return None;
            }
            Some((version_key(ver), name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
}

fn find_kernel_package(series: KernelSeries) -> Result<String> {
    let list = || -> Result<Option<String>> {
        let out = run_cmd(
            Command::new("apt-cache")
                .arg("pkgnames")
                .arg(format!("linux-image-{}.", series.as_str())),
        )?;
        Ok(pick_kernel_package(series, out.lines().map(str::trim)))
    };
    if let Some(name) = list()? {
        return Ok(name);
    }
    ensure_backports()?;
    list()?.ok_or_else(|| {
        VmError::Setup(format!(
            "no linux-image-{}.*-amd64 package in apt's index",
            series.as_str()
        ))
    })
}

/// Downloads, unpacks and `depmod`s the newest kernel of a series into
/// `<cache>/kernels/<series>/`, once.
pub fn ensure_kernel(series: KernelSeries, cache: &Path) -> Result<Kernel> {
    let dir = cache.join("kernels").join(series.as_str());
    let ready = dir.join("release");
    if let Ok(release) = fs::read_to_string(&ready) {
        let release = release.trim().to_string();
        let kernel = Kernel {
            image: dir.join("root/boot").join(format!("vmlinuz-{release}")),
            modules: dir.join("root/lib/modules").join(&release),
            release,
        };
        if kernel.image.exists() && kernel.modules.join("modules.dep").exists() {
            return Ok(kernel);
        }
    }
    if series == KernelSeries::V6_12 {
        ensure_backports()?;
    }
    ensure_tool("depmod", "kmod")?;
    let package = find_kernel_package(series)?;
    let t = Instant::now();
    progress(format_args!("fetching {package} ..."));
    fs::remove_dir_all(&dir).ok();
    let root = download_and_unpack(&package, &dir)?;
    progress(format_args!(
        "downloaded and unpacked in {:.1}s; depmod ...",
        t.elapsed().as_secs_f64()
    ));
    // Merged-/usr packages may ship usr/lib/modules; depmod -b wants lib/modules.
    let usr_mods = root.join("usr/lib/modules");
    let lib_mods = root.join("lib/modules");
    if usr_mods.is_dir() && !lib_mods.exists() {
        fs::create_dir_all(root.join("lib")).map_err(VmError::io("mkdir lib"))?;
        fs::rename(&usr_mods, &lib_mods).map_err(VmError::io("move usr/lib/modules"))?;
    }
    let release = fs::read_dir(&lib_mods)
        .map_err(VmError::io(format!("read {}", lib_mods.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| VmError::Setup(format!("{package} has no lib/modules/<release>")))?;
    // Drop module trees no lab guest uses (6.1's modules are uncompressed: ~400 MB).
    for sub in UNUSED_MODULE_TREES {
        fs::remove_dir_all(lib_mods.join(&release).join(sub)).ok();
    }
    let image = root.join("boot").join(format!("vmlinuz-{release}"));
    if !image.exists() {
        return Err(VmError::Setup(format!(
            "{package} has no {}",
            image.display()
        )));
    }
    let depmod = ["/sbin/depmod", "/usr/sbin/depmod"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("depmod");
    run_cmd(Command::new(depmod).arg("-b").arg(&root).arg(&release))?;
    fs::write(&ready, format!("{release}\n")).map_err(VmError::io("write release marker"))?;
    progress(format_args!(
        "kernel {release} ready in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    Ok(Kernel {
        image,
        modules: lib_mods.join(&release),
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_plain_kernel() {
        let names = [
            "linux-image-6.12.9+bpo-amd64",
            "linux-image-6.12.27+bpo-amd64",
            "linux-image-6.12.74+deb12-amd64",
            "linux-image-6.12.30+bpo-cloud-amd64",
            "linux-image-6.12.30+bpo-amd64-unsigned",
            "linux-image-6.12.30+bpo-rt-amd64",
            "linux-image-6.1.0-35-amd64",
            "linux-image-6.12.95+deb12-amd64-dbg",
            "linux-image-6.12.86+deb12-rt-amd64",
        ];
        assert_eq!(
            pick_kernel_package(KernelSeries::V6_12, names).as_deref(),
            Some("linux-image-6.12.74+deb12-amd64")
        );
        let names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-35-amd64",
            "linux-image-6.1.0-35-cloud-amd64",
            "linux-image-6.12.27+bpo-amd64",
        ];
        assert_eq!(
            pick_kernel_package(KernelSeries::V6_1, names).as_deref(),
            Some("linux-image-6.1.0-35-amd64")
        );
    }
}
