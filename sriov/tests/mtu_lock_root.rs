//! Root tests of `sriov::mtu_lock`: a veth in a throw-away netns stands for the pod's VF. As a
//! non-root user the tests print why and pass; set `SRIOV_REQUIRE_ROOT_TESTS=1` to make that a
//! failure instead.

use sriov::mtu_lock::{scan_locks, LockEvent, MtuLockWatcher};
use sriov::names::PciAddress;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::state::MtuLock;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("SRIOV_REQUIRE_ROOT_TESTS").is_none(),
        "SRIOV_REQUIRE_ROOT_TESTS is set but the tests do not run as root"
    );
    eprintln!("mtu_lock_root: not root, skipping");
    false
}

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("mtulock-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn pci() -> PciAddress {
    PciAddress::parse("0000:3b:02.0").unwrap()
}

#[test]
fn a_changed_mtu_is_restored_within_a_second() {
    if !root() {
        return;
    }
    let ns = Ns::new("restore");
    let netns = Netns::open(ns.path()).unwrap();
    let mut pod = NetlinkSocket::new_in(&netns).unwrap();
    let index = pod.create_veth("net1", "peer1", None).unwrap();
    pod.set_mtu(index, 1400).unwrap();
    let lock = MtuLock {
        netns: ns.path().into(),
        ifname: "net1".into(),
        ifindex: Some(index),
        mtu: 1400,
    };
    let mut watcher = MtuLockWatcher::open(pci(), lock.clone()).unwrap();
    assert_eq!(watcher.enforce().unwrap(), LockEvent::Unchanged);

    // Driven by a thread of the test (the daemon waits on the socket with its other work);
    // the pod changes its MTU behind our back.
    let stop = Arc::new(AtomicBool::new(false));
    let restores = Arc::new(AtomicU32::new(0));
    let (s, r) = (stop.clone(), restores.clone());
    let handle = std::thread::spawn(move || loop {
        match watcher.wait(Duration::from_millis(50))? {
            LockEvent::Restored(restore) => {
                assert_eq!((restore.found, restore.restored), (9000, 1400));
                r.fetch_add(1, Ordering::SeqCst);
            }
            LockEvent::Gone(why) => return Ok(LockEvent::Gone(why)),
            LockEvent::Unchanged if s.load(Ordering::SeqCst) => {
                return Ok::<_, sriov::mtu_lock::MtuLockError>(LockEvent::Unchanged)
            }
            LockEvent::Unchanged => {}
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    for round in 1..=3 {
        let changed = Instant::now();
        pod.set_mtu(index, 9000).unwrap();
        while pod.link_by_index(index).unwrap().mtu != 1400 {
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "round {round}: not restored within 1 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        println!("round {round}: restored after {:?}", changed.elapsed());
    }
    while restores.load(Ordering::SeqCst) < 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(handle.join().unwrap().unwrap(), LockEvent::Unchanged);
    assert_eq!(restores.load(Ordering::SeqCst), 3);
}

#[test]
fn a_gone_pod_ends_the_watch() {
    if !root() {
        return;
    }
    let ns = Ns::new("gone");
    let netns = Netns::open(ns.path()).unwrap();
    let mut pod = NetlinkSocket::new_in(&netns).unwrap();
    let index = pod.create_veth("net1", "peer1", None).unwrap();
    let lock = MtuLock {
        netns: ns.path().into(),
        ifname: "net1".into(),
        ifindex: Some(index),
        mtu: 1500,
    };
    let mut watcher = MtuLockWatcher::open(pci(), lock).unwrap();
    // Nothing happened: nothing to do, and nothing was looked at.
    assert_eq!(
        watcher.wait(Duration::from_millis(20)).unwrap(),
        LockEvent::Unchanged
    );
    pod.delete_link(index).unwrap();
    assert!(
        matches!(watcher.wait(Duration::from_secs(1)).unwrap(), LockEvent::Gone(m) if m.contains("left"))
    );
    drop(ns);
    assert!(matches!(watcher.enforce().unwrap(), LockEvent::Gone(m) if m.contains("is gone")));
}

#[test]
fn scan_finds_recorded_locks() {
    let dir = tempfile::tempdir().unwrap();
    assert!(scan_locks(dir.path()).unwrap().is_empty());
}
