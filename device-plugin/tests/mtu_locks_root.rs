//! MTU locks enforced from the daemon's runtime: restored through link notifications, with no
//! thread per lock (a test binary of its own, so its thread count is only its own). Root: each
//! lock's pod is a throw-away netns with a veth standing in for the VF.

use sriov::names::PciAddress;
use sriov::netlink::{NetlinkSocket, Netns};
use sriov::state::{MtuLock, OriginalState, Owner, PfRef, StateDir, VfRecord};
use sriov_device_plugin::metrics::Metrics;
use sriov_device_plugin::mtu_locks::MtuLocks;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn record(pci: PciAddress, lock: MtuLock) -> VfRecord {
    VfRecord {
        format: 1,
        pci,
        owner: Owner {
            network: "net".into(),
            container_id: format!("c-{pci}"),
            ifname: "net1".into(),
            netns: Some(lock.netns.clone()),
        },
        original: OriginalState {
            pf: PfRef {
                pci: PciAddress::parse("0000:3b:00.0").unwrap(),
                name: None,
                ifindex: None,
                driver: None,
            },
            vf_index: u32::from(pci.function),
            driver: None,
            netdev: None,
            pf_side: None,
        },
        ipam: false,
        attached: None,
        mtu_lock: Some(lock),
        orphaned: false,
        device_info_file: None,
        assigned_mac: None,
        upstream: false,
    }
}

#[test]
fn locks_are_restored_through_notifications_without_a_thread_each() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces)"
    );
    const PODS: u8 = 6;
    let state = tempfile::tempdir().unwrap();
    let dir = StateDir::open(state.path()).unwrap();
    let mut pods = Vec::new();
    for k in 0..PODS {
        let name = format!("mtulocks-{}-{k}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        let ns = Ns(name);
        let path = format!("/run/netns/{}", ns.0);
        let mut sock = NetlinkSocket::new_in(&Netns::open(&path).unwrap()).unwrap();
        let index = sock.create_veth("net1", "peer1", None).unwrap();
        sock.set_mtu(index, 1400).unwrap();
        let pci = PciAddress::parse(&format!("0000:3b:02.{k}")).unwrap();
        let lock = MtuLock {
            netns: path.clone().into(),
            ifname: "net1".into(),
            ifindex: Some(index),
            mtu: 1400,
        };
        let vf = dir.lock_vf(pci).unwrap();
        dir.save(&vf, &record(pci, lock)).unwrap();
        pods.push((ns, sock, index));
    }

    // The daemon's runtime: one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = Arc::new(Metrics::default());
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let mut locks = MtuLocks::new(state.path(), metrics.clone(), tx);
        let before = threads();
        assert!(locks.reconcile());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(metrics.render().contains("sriov_dp_mtu_locks 6"));
        assert_eq!(threads(), before, "no thread per lock");

        // Every pod changes its MTU; every change is put back from a notification.
        for (_, sock, index) in &mut pods {
            sock.set_mtu(*index, 9000).unwrap();
        }
        let changed = Instant::now();
        for (ns, sock, index) in &mut pods {
            while sock.link_by_index(*index).unwrap().mtu != 1400 {
                assert!(
                    changed.elapsed() < Duration::from_secs(2),
                    "{} not restored",
                    ns.0
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        println!("{PODS} locked MTUs restored after {:?}", changed.elapsed());
        assert!(metrics
            .render()
            .contains(&format!("sriov_dp_mtu_lock_restores_total {PODS}")));
        assert_eq!(threads(), before, "no thread per lock");

        // A pod whose interface goes: its watcher lets go by itself.
        let (ns, sock, index) = &mut pods[0];
        sock.delete_link(*index).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("the watcher ends")
            .unwrap();
        let sriov_device_plugin::daemon::Event::MtuLock(ended) = ended else {
            panic!("not an MTU lock event")
        };
        assert!(
            ended.outcome.as_ref().is_ok_and(|why| why.contains("left")),
            "{} {:?}",
            ns.0,
            ended.outcome
        );
        assert!(!locks.ended(ended));
        assert!(metrics.render().contains("sriov_dp_mtu_locks 5"));
        locks.stop();
    });
}
