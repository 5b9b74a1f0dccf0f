//! Installs a CNI plugin binary into the host's CNI folder, atomically, and writes the plugin's
//! node-local settings.
//!
//! `sriov-install-cni --from /usr/local/bin/sriov --to /host/opt/cni/bin/sriov
//!     [--node-config /host/etc/sriov-rs/cni.json --node-settings '{"logDir": "/var/log"}']`
//!
//! The settings (host paths the plugin uses: sysfs, its state, device-information and log
//! folders; see the `sriov` plugin's `node_config`) are checked as the plugin checks them, then
//! written atomically, without following symlinks, into a folder owned by root that nobody else
//! may write to (created 0755 if missing). A tenant's network config never carries them.
//!
//! Runs as the DaemonSet's init container, in an image without a shell. The binary is copied
//! to a temporary file in the target folder (same filesystem, so the rename is atomic), synced,
//! made 0755 and renamed over the target, then the folder is synced. A container runtime that
//! executes the plugin meanwhile sees either the old or the new binary, never a partial one;
//! and writing a new inode instead of truncating the old one avoids ETXTBSY while a plugin
//! process still runs the old binary.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: sriov-install-cni --from SOURCE --to TARGET \
     [--node-config FILE [--node-settings JSON]]";

/// What to do.
struct Args {
    from: PathBuf,
    to: PathBuf,
    node_config: Option<PathBuf>,
    node_settings: Option<String>,
}

fn main() {
    let run = || -> Result<()> {
        let args = parse_args(std::env::args().skip(1))?;
        // Settings first: a plugin installed without its settings would use the defaults.
        if let Some(file) = &args.node_config {
            write_node_config(file, args.node_settings.as_deref().unwrap_or("{}"))?;
        } else if args.node_settings.is_some() {
            bail!("--node-settings needs --node-config\n{USAGE}");
        }
        install(&args.from, &args.to)
    };
    if let Err(e) = run() {
        eprintln!("sriov-install-cni: {e:#}");
        std::process::exit(1);
    }
}

/// Checks `settings` as the plugin will, then writes them to `file`.
fn write_node_config(file: &Path, settings: &str) -> Result<()> {
    use sriov::owned_dir::{Access, OwnedDir};
    let value: serde_json::Value =
        serde_json::from_str(settings).context("--node-settings is not valid JSON")?;
    sriov_cni::node_config::NodeConfig::parse(&value)
        .map_err(|e| anyhow::anyhow!("--node-settings: {e}"))?;
    let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) else {
        bail!("--node-config {}: not a file path", file.display());
    };
    let text = serde_json::to_vec_pretty(&value)?;
    OwnedDir::open(dir, Access::Shared, true)
        .and_then(|d| d.write_atomic(name, &text, 0o644))
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "wrote the plugin's node-local settings to {}",
        file.display()
    );
    Ok(())
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args> {
    let (mut from, mut to, mut node_config, mut node_settings) = (None, None, None, None);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let slot = match key.as_str() {
            "--from" => &mut from,
            "--to" => &mut to,
            "--node-config" => &mut node_config,
            "--node-settings" => &mut node_settings,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        };
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .with_context(|| format!("{key} needs a value\n{USAGE}"))?,
        };
        *slot = Some(value);
    }
    match (from, to) {
        (Some(f), Some(t)) => Ok(Args {
            from: PathBuf::from(f),
            to: PathBuf::from(t),
            node_config: node_config.map(PathBuf::from),
            node_settings,
        }),
        _ => bail!("--from and --to are required\n{USAGE}"),
    }
}

fn install(from: &Path, to: &Path) -> Result<()> {
    let name = to
        .file_name()
        .with_context(|| format!("{}: not a file path", to.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    if !src.metadata()?.is_file() {
        bail!("{}: not a regular file", from.display());
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp_prefix = format!(".{name}.tmp-");
    let tmp = dir.join(format!("{tmp_prefix}{}-{nanos}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        io::copy(&mut src, &mut out).with_context(|| format!("writing {}", tmp.display()))?;
        // Explicit, so the umask does not decide.
        out.set_permissions(fs::Permissions::from_mode(0o755))?;
        out.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, to).with_context(|| format!("renaming onto {}", to.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Leftovers of an installer killed mid-copy (the container's pid is often the same, hence
    // the timestamp in the name).
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    println!("installed {} as {}", from.display(), to.display());
    Ok(())
}
