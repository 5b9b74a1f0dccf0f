//! Removing labs: `down` by name (works from the name alone, after a crash),
//! and `gc` of labs whose owner died.

use super::error::{Result, SimError};
use super::lab::ensure_root;
use super::links;
use super::paths::{LabPaths, NETNS_PREFIX, RUN_ROOT};
use super::spec::validate_name;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Labs without an owner file older than this are leftovers of a crashed `up`.
const HALF_BUILT_GRACE: Duration = Duration::from_secs(60);

/// Removes lab `name`: unmounts its netsys, deletes netns `sriovlab-NAME` (and
/// with it the veths and bridges) and every pod netns `sriovlab-NAME-*`, then
/// its folder. Idempotent; does not need `lab.json`.
pub fn down(name: &str) -> Result<()> {
    ensure_root()?;
    validate_name(name)?;
    let paths = LabPaths::new(name);
    links::unmount_under(paths.root())?;
    let node = paths.netns_name();
    let others = other_labs_below(name);
    for ns in links::list_netns() {
        let is_pod = ns
            .strip_prefix(&node)
            .is_some_and(|rest| rest.starts_with('-'));
        if ns == node || (is_pod && !others.iter().any(|lab| netns_of(&ns, lab))) {
            links::delete_netns(&ns)?;
        }
    }
    match fs::remove_dir_all(paths.root()) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(SimError::io("remove lab folder", paths.root())(e))
        }
        _ => Ok(()),
    }
}

/// Lab `a-b`'s netns also matches `sriovlab-a-*`: such labs are spared by `down a`.
fn other_labs_below(name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    lab_names()
        .into_iter()
        .filter(|lab| lab.starts_with(&prefix))
        .collect()
}

/// Whether `ns` is lab `lab`'s node netns or one of its pod netns.
fn netns_of(ns: &str, lab: &str) -> bool {
    ns.strip_prefix(NETNS_PREFIX)
        .and_then(|rest| rest.strip_prefix(lab))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// Names of the lab folders under /run/sriov-lab.
pub fn lab_names() -> Vec<String> {
    let Ok(dir) = fs::read_dir(RUN_ROOT) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| validate_name(n).is_ok())
        .collect();
    names.sort();
    names
}

/// A process counts as alive unless it is gone or a zombie.
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may contain spaces and ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

enum Owner {
    Pid(u32),
    Nobody,
    Unknown,
}

fn owner_of(paths: &LabPaths) -> Owner {
    match fs::read_to_string(paths.owner()) {
        Ok(text) if text.trim() == "none" => Owner::Nobody,
        Ok(text) => text.trim().parse().map_or(Owner::Unknown, Owner::Pid),
        Err(_) => Owner::Unknown,
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d > age)
}

/// Removes every lab whose owner process is dead, half-built labs left by a
/// crash, and `sriovlab-*` netns no lab folder accounts for. Returns what it
/// removed (lab names, then netns names).
pub fn gc() -> Result<Vec<String>> {
    ensure_root()?;
    // List the netns before the labs: `up` creates its folder before its netns,
    // so a netns seen here whose folder is missing below is truly orphaned.
    let netns = links::list_netns();
    let mut removed = Vec::new();
    for name in lab_names() {
        let paths = LabPaths::new(&name);
        let dead = match owner_of(&paths) {
            Owner::Pid(pid) => !alive(pid),
            Owner::Nobody => false,
            Owner::Unknown => older_than(paths.root(), HALF_BUILT_GRACE),
        };
        if dead {
            down(&name)?;
            removed.push(name);
        }
    }
    let labs = lab_names();
    for ns in netns.into_iter().filter(|ns| ns.starts_with(NETNS_PREFIX)) {
        if !labs.iter().any(|lab| netns_of(&ns, lab)) {
            links::delete_netns(&ns)?;
            removed.push(ns);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_ownership() {
        assert!(netns_of("sriovlab-a", "a"));
        assert!(netns_of("sriovlab-a-pod", "a"));
        assert!(netns_of("sriovlab-a-b", "a-b"));
        assert!(!netns_of("sriovlab-ab", "a"));
        assert!(!netns_of("other-a", "a"));
    }

    #[test]
    fn own_process_is_alive() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
