//! Running one guest: prepare the run folder, start QEMU, follow its output, enforce the
//! timeout and collect the command's results.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::assets::{self, QEMU};
use super::{guest, initramfs, progress, qemu, tail_lines, RunOptions, VmError, VmOutcome, VmSpec};

type Result<T> = std::result::Result<T, VmError>;

/// Lines of console shown with a failure.
const CONSOLE_TAIL: usize = 40;
const POLL: Duration = Duration::from_millis(50);

/// Boots a guest for `spec`, runs `command` (argv; `command[0]` is an absolute path or found
/// in `PATH` inside the chroot) in the caller's current directory and returns its results.
/// A non-zero exit of the command is not an error: check [`VmOutcome::status`].
pub fn run_vm(spec: &VmSpec, command: &[String]) -> Result<VmOutcome> {
    run_vm_with(spec, command, &RunOptions::default())
}

/// How long a guest may take to reach the command. A boot takes 5-15 s under TCG; a TCG guest
/// on a loaded host occasionally hangs early in boot (RCU stalls: "timer wakeup didn't
/// happen"), which says nothing about the code under test, so such a boot is retried once.
const BOOT_DEADLINE: Duration = Duration::from_secs(90);
/// What the guest's init prints right before it runs the command.
const COMMAND_STARTED: &str = "sriov-lab-init: running command";

/// [`run_vm`] with extra environment, working directory and live output.
pub fn run_vm_with(spec: &VmSpec, command: &[String], opts: &RunOptions) -> Result<VmOutcome> {
    match run_once(spec, command, opts) {
        Err(BootHang(console_tail)) => {
            progress(format_args!(
                "the guest hung while booting (never reached the command in {BOOT_DEADLINE:?}); \
                 booting once more. Console tail:\n{console_tail}"
            ));
            run_once(spec, command, opts).map_err(|e| match e {
                BootHang(console_tail) => VmError::Timeout {
                    timeout: BOOT_DEADLINE.min(spec.timeout),
                    console_tail,
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                },
                Fail(e) => e,
            })
        }
        Err(Fail(e)) => Err(e),
        Ok(out) => Ok(out),
    }
}

/// Why one boot did not give an outcome.
enum Attempt {
    /// The guest never reached the command (console tail).
    BootHang(String),
    Fail(VmError),
}
use Attempt::{BootHang, Fail};

impl From<VmError> for Attempt {
    fn from(e: VmError) -> Self {
        Fail(e)
    }
}

fn run_once(
    spec: &VmSpec,
    command: &[String],
    opts: &RunOptions,
) -> std::result::Result<VmOutcome, Attempt> {
    spec.validate()?;
    if command.is_empty() {
        return Err(Fail(VmError::Spec("no command given".into())));
    }
    if let Some((k, _)) = opts.env.iter().find(|(k, _)| !valid_env_name(k)) {
        return Err(Fail(VmError::Spec(format!(
            "invalid environment variable name {k:?}"
        ))));
    }
    let (assets, initrd) = {
        let lock = assets::lock_cache()?;
        let assets = assets::ensure(spec.kernel, &lock)?;
        let initrd = initramfs::ensure(&assets)?;
        (assets, initrd)
    };

    let cwd = match &opts.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().map_err(VmError::io("current directory"))?,
    };
    let cwd = cwd
        .canonicalize()
        .map_err(VmError::io(format!("working directory {}", cwd.display())))?;
    let run_dir =
        RunDir::create(opts.keep_run_dir || std::env::var_os("SRIOV_LAB_KEEP").is_some())?;
    let dir = run_dir.path.clone();
    let write = |name: &str, text: String| {
        fs::write(dir.join(name), text).map_err(VmError::io(format!("write {name}")))
    };
    write("config", guest::config(spec.vfs, spec.iommu, &dir, &cwd))?;
    write(
        "run.sh",
        guest::run_script(command, &cwd, &command_env(&dir, opts)),
    )?;
    for f in ["stdout", "stderr", "console.log"] {
        write(f, String::new())?;
    }

    let console_path = dir.join("console.log");
    let qemu_log = dir.join("qemu.log");
    let args = qemu::args(
        spec,
        &qemu::BootFiles {
            kernel: &assets.kernel.image,
            initrd: &initrd,
            run_dir: &dir,
            console: &console_path,
        },
    );
    let log = fs::File::create(&qemu_log).map_err(VmError::io("create qemu.log"))?;
    let log2 = log.try_clone().map_err(VmError::io("dup qemu.log"))?;
    progress(format_args!(
        "booting {} ({} PF x {} VF{}{}, kernel {}) ...",
        QEMU,
        spec.pfs,
        spec.vfs,
        if spec.numa { ", numa" } else { "" },
        if spec.iommu { ", iommu" } else { "" },
        assets.kernel.release
    ));
    let start = Instant::now();
    // setpriv --pdeathsig: QEMU dies with us even when we are killed without unwinding.
    let mut cmd = match which("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--", QEMU]);
            c
        }
        None => Command::new(QEMU),
    };
    let child = cmd
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(VmError::io(format!("start {QEMU}")))?;
    let mut child = KillOnDrop(child);

    let mut out = Follow::new(dir.join("stdout"), Sink::Stdout, opts.stream_output);
    let mut err = Follow::new(dir.join("stderr"), Sink::Stderr, opts.stream_output);
    let mut con = Follow::new(console_path.clone(), Sink::Console, opts.stream_console);
    let exit = loop {
        let exited = child.0.try_wait().map_err(VmError::io("wait for QEMU"))?;
        out.poll();
        err.poll();
        con.poll();
        if let Some(st) = exited {
            break st;
        }
        if start.elapsed() > BOOT_DEADLINE.min(spec.timeout)
            && !fs::read_to_string(&console_path)
                .unwrap_or_default()
                .contains(COMMAND_STARTED)
        {
            child.0.kill().ok();
            child.0.wait().ok();
            let console = fs::read_to_string(&console_path).unwrap_or_default();
            return Err(BootHang(console_tail(&console)));
        }
        if start.elapsed() > spec.timeout {
            child.0.kill().ok();
            child.0.wait().ok();
            con.poll();
            con.flush_partial();
            let console = fs::read_to_string(&console_path).unwrap_or_default();
            let tail = |name: &str| {
                let text = fs::read(dir.join(name)).unwrap_or_default();
                tail_lines(&String::from_utf8_lossy(&text), CONSOLE_TAIL)
            };
            return Err(Fail(VmError::Timeout {
                timeout: spec.timeout,
                console_tail: console_tail(&console),
                stdout_tail: tail("stdout"),
                stderr_tail: tail("stderr"),
            }));
        }
        std::thread::sleep(POLL);
    };
    let elapsed = start.elapsed();
    con.flush_partial();
    let console = fs::read_to_string(&console_path).unwrap_or_default();
    let status = fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let Some(status) = status else {
        let mut reason = format!("no exit status came back (QEMU {exit})");
        if let Ok(e) = fs::read_to_string(dir.join("init-error")) {
            reason.push_str(&format!("; init: {}", e.trim()));
        }
        let qlog = fs::read_to_string(&qemu_log).unwrap_or_default();
        let qlog: Vec<&str> = qlog
            .lines()
            .filter(|l| !l.contains("is not connected to host network"))
            .collect();
        if !qlog.is_empty() {
            reason.push_str(&format!("; QEMU says: {}", qlog.join(" | ")));
        }
        return Err(Fail(VmError::Guest {
            reason,
            console_tail: console_tail(&console),
        }));
    };
    progress(format_args!(
        "guest finished in {:.1}s, command exit status {status}",
        elapsed.as_secs_f64()
    ));
    let read = |name: &str| {
        String::from_utf8_lossy(&fs::read(dir.join(name)).unwrap_or_default()).into_owned()
    };
    Ok(VmOutcome {
        status,
        stdout: read("stdout"),
        stderr: read("stderr"),
        console,
        elapsed,
        run_dir: run_dir.keep.then(|| dir.clone()),
    })
}

fn valid_env_name(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn console_tail(console: &str) -> String {
    if console.trim().is_empty() {
        return format!(
            "(console empty: the guest never reached /init; the kernel runs with `quiet`, \
             set {}=1 for its messages)",
            qemu::VERBOSE_ENV
        );
    }
    tail_lines(console, CONSOLE_TAIL)
}

/// The command's environment: sane defaults, a few of the caller's variables, then `opts.env`.
fn command_env(run_dir: &Path, opts: &RunOptions) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        ),
        ("HOME".to_string(), "/root".to_string()),
        (super::IN_GUEST_ENV.to_string(), "1".to_string()),
        (
            "SRIOV_LAB_RESULTS".to_string(),
            run_dir.to_string_lossy().into_owned(),
        ),
    ];
    for k in [
        "RUST_LOG",
        "RUST_BACKTRACE",
        "RUST_TEST_THREADS",
        "NO_COLOR",
    ] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    env.extend(opts.env.iter().cloned());
    env
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// A fresh host folder shared with the guest; removed on drop unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(keep: bool) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        let base = base.canonicalize().unwrap_or(base);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = base.join(format!(
            "sriov-lab-run-{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).map_err(VmError::io(format!("create {}", path.display())))?;
        Ok(RunDir { path, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            progress(format_args!("run folder kept: {}", self.path.display()));
        } else {
            fs::remove_dir_all(&self.path).ok();
        }
    }
}

enum Sink {
    Stdout,
    Stderr,
    Console,
}

/// Follows a growing file and copies new bytes to a sink.
struct Follow {
    path: PathBuf,
    sink: Sink,
    enabled: bool,
    offset: u64,
    partial: Vec<u8>,
}

impl Follow {
    fn new(path: PathBuf, sink: Sink, enabled: bool) -> Self {
        Follow {
            path,
            sink,
            enabled,
            offset: 0,
            partial: Vec::new(),
        }
    }

    fn poll(&mut self) {
        if !self.enabled {
            return;
        }
        let Ok(mut f) = fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() || buf.is_empty() {
            return;
        }
        self.offset += buf.len() as u64;
        match self.sink {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(&buf).ok();
                o.flush().ok();
            }
            Sink::Stderr => {
                std::io::stderr().write_all(&buf).ok();
            }
            Sink::Console => {
                self.partial.extend_from_slice(&buf);
                while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.partial.drain(..=nl).collect();
                    let text = String::from_utf8_lossy(&line);
                    eprint!(
                        "vm| {}",
                        text.trim_end_matches(['\r', '\n']).to_owned() + "\n"
                    );
                }
            }
        }
    }

    fn flush_partial(&mut self) {
        self.poll();
        if !self.partial.is_empty() {
            eprintln!("vm| {}", String::from_utf8_lossy(&self.partial).trim_end());
            self.partial.clear();
        }
    }
}
