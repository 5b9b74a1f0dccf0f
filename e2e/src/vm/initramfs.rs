//! Building (and caching) the guest initramfs: busybox with its applet links, the kernel
//! modules the lab needs with their dependencies (decompressed, in load order), iproute2's
//! full `ip` with its shared libraries, `/dev/console` and the [`guest::INIT`] script.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::assets::{run_cmd, Assets};
use super::cpio::Archive;
use super::{guest, progress, VmError};

type Result<T> = std::result::Result<T, VmError>;

/// Normalized module name of a `.ko[.xz|.zst|.gz]` path (`-` becomes `_`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The kernel's module index: name -> (path, dependencies) and built-in names.
pub struct ModuleIndex {
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Reads `modules.dep` and `modules.builtin` from `lib/modules/<release>`.
    pub fn load(dir: &Path) -> Result<Self> {
        let dep_path = dir.join("modules.dep");
        let text = fs::read_to_string(&dep_path)
            .map_err(VmError::io(format!("read {}", dep_path.display())))?;
        Ok(Self::parse(
            &text,
            &fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default(),
        ))
    }

    /// Parses the two files' contents.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut deps = HashMap::new();
        for line in modules_dep.lines() {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let list = rest.split_whitespace().map(module_name).collect();
            deps.insert(module_name(path), (path.to_string(), list));
        }
        let builtin = modules_builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        ModuleIndex { deps, builtin }
    }

    /// Module paths (relative to the release folder) to load, dependencies first. Built-in
    /// modules are skipped; unknown ones are an error.
    pub fn load_order(&self, wanted: &[&str], seen: &mut HashSet<String>) -> Result<Vec<String>> {
        let mut order = Vec::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if self.builtin.contains(&name) {
                continue;
            }
            if !self.deps.contains_key(&name) {
                return Err(VmError::Setup(format!("kernel has no module {name}")));
            }
            self.visit(&name, seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some((path, deps)) = self.deps.get(name) {
            for d in deps {
                self.visit(d, seen, order);
            }
            order.push(path.clone());
        }
    }
}

/// A file's content with `.xz`/`.zst`/`.gz` compression removed.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tool = match ext {
        "xz" => "xz",
        "zst" => "zstd",
        "gz" => "gzip",
        _ => return fs::read(path).map_err(VmError::io(format!("read {}", path.display()))),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(VmError::io(format!("run {tool} -dc")))?;
    if !out.status.success() {
        return Err(VmError::Setup(format!(
            "{tool} -dc {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

fn strip_compression(rel: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = rel.strip_suffix(ext) {
            return s.to_string();
        }
    }
    rel.to_string()
}

/// The host's iproute2 `ip` and the shared libraries `ldd` lists for it.
fn ip_files() -> Result<Vec<PathBuf>> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| VmError::Setup("iproute2's ip is not installed on the host".into()))?;
    let ldd = run_cmd(Command::new("ldd").arg(&ip))?;
    let mut files = vec![ip];
    for line in ldd.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let target = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(t) = target.filter(|t| t.starts_with('/')) {
            files.push(PathBuf::from(t));
        }
    }
    Ok(files)
}

fn fingerprint(h: &mut DefaultHasher, path: &Path) {
    path.hash(h);
    if let Ok(md) = fs::metadata(path) {
        md.len().hash(h);
        md.modified().ok().hash(h);
    }
}

/// Returns the cached initramfs for these assets, building it first if needed.
pub fn ensure(assets: &Assets) -> Result<PathBuf> {
    let ip = ip_files()?;
    let mut h = DefaultHasher::new();
    guest::INIT.hash(&mut h);
    (guest::BOOT_MODULES, guest::NET_MODULES, guest::VFIO_MODULES).hash(&mut h);
    guest::MODULE_PARAMS.hash(&mut h);
    assets.kernel.release.hash(&mut h);
    fingerprint(&mut h, &assets.busybox);
    for f in &ip {
        fingerprint(&mut h, f);
    }
    let dir = assets.cache.join("initramfs");
    let path = dir.join(format!(
        "{}-{:016x}.cpio.gz",
        assets.kernel.release,
        h.finish()
    ));
    if path.exists() {
        return Ok(path);
    }
    let t = Instant::now();
    progress(format_args!("building initramfs {} ...", path.display()));
    fs::create_dir_all(&dir).map_err(VmError::io(format!("create {}", dir.display())))?;
    let archive = build(assets, &ip)?;
    let raw = dir.join(format!("build-{}.cpio", std::process::id()));
    fs::write(&raw, archive.to_newc()).map_err(VmError::io("write initramfs"))?;
    run_cmd(Command::new("gzip").args(["-f", "-6"]).arg(&raw))?;
    let gz = raw.with_extension("cpio.gz");
    fs::rename(&gz, &path).map_err(VmError::io("rename initramfs"))?;
    // Older images of this kernel (other init scripts or host ip) are stale now.
    let prefix = format!("{}-", assets.kernel.release);
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".cpio.gz") && e.path() != path {
            fs::remove_file(e.path()).ok();
        }
    }
    progress(format_args!(
        "initramfs ready in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    Ok(path)
}

fn build(assets: &Assets, ip: &[PathBuf]) -> Result<Archive> {
    let mut a = Archive::new();
    for d in [
        "proc", "sys", "dev", "run", "tmp", "host", "results", "root", "etc", "mnt",
    ] {
        a.dir(d);
    }
    a.char_dev("dev/console", 5, 1, 0o600);
    a.char_dev("dev/null", 1, 3, 0o666);
    a.file("init", guest::INIT.as_bytes().to_vec(), 0o755);

    // iproute2 first so that busybox's `ip` applet link does not take /sbin/ip.
    for (i, f) in ip.iter().enumerate() {
        let data = fs::read(f).map_err(VmError::io(format!("read {}", f.display())))?;
        let dest = if i == 0 {
            "sbin/ip".to_string()
        } else {
            f.to_string_lossy().into_owned()
        };
        a.file(&dest, data, 0o755);
    }

    let bb = fs::read(&assets.busybox).map_err(VmError::io("read busybox"))?;
    a.file("bin/busybox", bb, 0o755);
    let list = run_cmd(Command::new(&assets.busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        a.symlink_if_absent(applet, "/bin/busybox");
    }
    a.symlink_if_absent("bin/sh", "/bin/busybox");

    let index = ModuleIndex::load(&assets.kernel.modules)?;
    let mut seen = HashSet::new();
    let lists = [
        ("modules.boot", guest::BOOT_MODULES),
        ("modules.net", guest::NET_MODULES),
        ("modules.vfio", guest::VFIO_MODULES),
    ];
    for (list_name, wanted) in lists {
        let mut listing = String::new();
        for rel in index.load_order(wanted, &mut seen)? {
            let data = read_module(&assets.kernel.modules.join(&rel))?;
            let dest = format!(
                "lib/modules/{}/{}",
                assets.kernel.release,
                strip_compression(&rel)
            );
            listing.push('/');
            listing.push_str(&dest);
            let name = module_name(&rel);
            if let Some((_, params)) = guest::MODULE_PARAMS.iter().find(|(m, _)| *m == name) {
                listing.push(' ');
                listing.push_str(params);
            }
            listing.push('\n');
            a.file(&dest, data, 0o644);
        }
        a.file(
            &format!("etc/sriov-lab/{list_name}"),
            listing.into_bytes(),
            0o644,
        );
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_order() {
        let dep = "kernel/a/igb.ko.xz: kernel/b/dca.ko.xz kernel/c/i2c-algo-bit.ko.xz\n\
                   kernel/b/dca.ko.xz:\n\
                   kernel/c/i2c-algo-bit.ko.xz:\n\
                   kernel/d/vfio-pci.ko.xz: kernel/e/vfio_pci_core.ko.xz kernel/f/vfio.ko.xz\n\
                   kernel/e/vfio_pci_core.ko.xz: kernel/f/vfio.ko.xz\n\
                   kernel/f/vfio.ko.xz:\n";
        let idx = ModuleIndex::parse(dep, "kernel/g/virtio_pci.ko\n");
        let mut seen = HashSet::new();
        let order = idx
            .load_order(&["virtio_pci", "igb", "vfio-pci"], &mut seen)
            .unwrap();
        let pos = |m: &str| order.iter().position(|p| p.contains(m)).unwrap();
        assert!(pos("dca") < pos("igb") && pos("i2c-algo-bit") < pos("igb"));
        assert!(pos("/vfio.ko") < pos("vfio_pci_core") && pos("vfio_pci_core") < pos("vfio-pci"));
        assert_eq!(order.len(), 6);
        assert!(idx.load_order(&["nope"], &mut seen).is_err());
        assert_eq!(strip_compression("x/igb.ko.xz"), "x/igb.ko");
    }
}
