//! Finding the workspace's binaries from tests and benchmarks.
//!
//! `cargo test --workspace` does not always build other packages' binaries, so the first call
//! builds all of the workspace's binaries (same profile as the caller), then returns the path
//! of the one asked for under target/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Whether this process already built the workspace's binaries.
static BUILT: Mutex<bool> = Mutex::new(false);
/// Whether this process already built the image's binaries.
static IMAGE_BUILT: Mutex<bool> = Mutex::new(false);
/// Whether this process already built the release CNI plugin.
static RELEASE_BUILT: Mutex<bool> = Mutex::new(false);

/// Path of a workspace binary (`sriov-device-plugin`, `sriov`, `sriov-lab`), built if needed.
///
/// Panics with cargo's output when the build fails: this is test support.
pub fn workspace_binary(bin: &str) -> PathBuf {
    build_binary(bin).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`workspace_binary`], with the failure as an error.
pub fn build_binary(bin: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin>
    let mut dir = exe
        .parent()
        .ok_or("no folder for the current executable")?
        .to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    // All of them in one build: building packages one by one unifies dependency features
    // differently each time, and so rebuilds the shared crates once per package.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--workspace", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    build_once(&BUILT, cmd, "cargo build --workspace --bins")?;
    existing(dir.join(bin))
}

/// Path of a binary as the image ships it (static, `target/image/bin/`), built by
/// `scripts/build-image.sh --binaries-only`: benchmarks measure what runs on nodes.
pub fn image_binary(bin: &str) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace folder")?;
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/build-image.sh"))
        .arg("--binaries-only")
        .current_dir(root);
    build_once(&IMAGE_BUILT, cmd, "scripts/build-image.sh --binaries-only")?;
    existing(root.join("target/image/bin").join(bin))
}

/// Path of the CNI plugin `sriov` built in the release profile (what nodes run: no fault points),
/// built if needed.
pub fn release_cni_binary() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace folder")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--release",
        "--locked",
        "-p",
        "sriov-cni",
        "--bin",
        "sriov",
    ])
    .current_dir(root);
    build_once(&RELEASE_BUILT, cmd, "cargo build --release -p sriov-cni")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    existing(target.join("release/sriov"))
}

/// Runs the build `cmd` unless `done` says this process already did.
fn build_once(done: &Mutex<bool>, mut cmd: Command, what: &str) -> Result<(), String> {
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        let out = cmd.output().map_err(|e| format!("running {what}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{what} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        *done = true;
    }
    Ok(())
}

fn existing(path: PathBuf) -> Result<PathBuf, String> {
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} was not built", path.display()))
    }
}
