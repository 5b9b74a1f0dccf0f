//! Root tests of `sriov::netlink` against the real kernel.
//!
//! Each test works in its own named network namespaces
//! (`nltest-<pid>-<n>`), deleted on drop (also when the test panics). As a
//! non-root user the tests print why and pass; set
//! `SRIOV_REQUIRE_ROOT_TESTS=1` (CI) to make that a failure instead.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use sriov::netlink::{
    Errno, LinkInfo, MacAddr, NetlinkError, NetlinkSocket, Netns, OperState, VfLinkState,
    VfSetting, VfSettingError, VlanProto, MAIN_TABLE,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new() -> Self {
        let name = format!(
            "nltest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        Self { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn open(&self) -> Netns {
        Netns::open(self.path()).expect("open test netns")
    }

    fn socket(&self) -> NetlinkSocket {
        NetlinkSocket::new_in(&self.open()).expect("socket in test netns")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether root tests can run here.
fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("SRIOV_REQUIRE_ROOT_TESTS").is_some() {
        panic!("SRIOV_REQUIRE_ROOT_TESTS is set but the tests do not run as root");
    }
    eprintln!("netlink_root: not root, skipping (set SRIOV_REQUIRE_ROOT_TESTS=1 to fail instead)");
    false
}

fn kernel_errno(e: &NetlinkError) -> Errno {
    match e {
        NetlinkError::Kernel { errno, .. } => *errno,
        other => panic!("expected a kernel error, got {other:?}"),
    }
}

fn veth(sock: &mut NetlinkSocket, a: &str, b: &str) -> (LinkInfo, LinkInfo) {
    sock.create_veth(a, b, None).expect("create veth");
    (sock.link_by_name(a).unwrap(), sock.link_by_name(b).unwrap())
}

/// Named `netlink::...` so `cargo test -p sriov netlink` selects them.
mod netlink {
    use super::*;

    #[test]
    fn veth_rename_with_altname_and_collisions() {
        if !root() {
            return;
        }
        let ns = TestNetns::new();
        let mut sock = ns.socket();
        let index = sock.create_veth("va", "vb", None).unwrap();
        let va = sock.link_by_index(index).unwrap();
        assert_eq!(va.name, "va");
        assert_eq!(va.kind.as_deref(), Some("veth"));
        assert!(!va.up);

        // Creating it again: EEXIST, typed.
        let e = sock.create_veth("va", "vc", None).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::EEXIST);

        // Altnames: found by name lookup, survive a rename.
        let alt = "va-a-rather-long-alternative-name";
        sock.add_altname(index, alt).unwrap();
        assert_eq!(sock.link_by_name(alt).unwrap().index, index);
        sock.rename(index, "net1").unwrap();
        let l = sock.link_by_index(index).unwrap();
        assert_eq!(l.name, "net1");
        assert_eq!(l.altnames, vec![alt.to_string()]);

        // Renaming onto a taken name or altname: EEXIST naming the operation.
        let vb = sock.link_by_name("vb").unwrap().index;
        let e = sock.rename(vb, "net1").unwrap_err();
        eprintln!("{e}");
        assert_eq!(kernel_errno(&e), Errno::EEXIST);
        assert!(
            e.to_string()
                .starts_with("rename to net1 on vb: File exists (EEXIST)"),
            "{e}"
        );
        sock.add_altname(index, "short-alt").unwrap();
        let e = sock.rename(vb, "short-alt").unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::EEXIST, "{e}");
        // ... and an altname that is another link's name.
        let e = sock.add_altname(vb, "net1").unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::EEXIST, "{e}");

        // Deleting the altname frees it.
        sock.del_altname(index, "short-alt").unwrap();
        assert!(sock.link_by_name("short-alt").unwrap_err().is_no_device());
        sock.rename(vb, "short-alt").unwrap();
        let e = sock.del_altname(index, "never-added").unwrap_err();
        assert!(e.errno().is_some(), "{e}");

        // Names the kernel cannot take are refused before asking it.
        let e = sock.rename(vb, "0123456789abcdef").unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn rename_while_up() {
        if !root() {
            return;
        }
        let ns = TestNetns::new();
        let mut sock = ns.socket();
        let (va, _) = veth(&mut sock, "va", "vb");
        sock.set_up(va.index).unwrap();
        // Kernels refuse to rename a running netdev (EBUSY); callers must
        // bring it down first. Record what this kernel does.
        match sock.rename(va.index, "renamed") {
            Ok(()) => eprintln!("this kernel renames up links"),
            Err(e) => assert_eq!(kernel_errno(&e), Errno::EBUSY, "{e}"),
        }
    }

    #[test]
    fn mtu_mac_up_down_promiscuity() {
        if !root() {
            return;
        }
        let ns = TestNetns::new();
        let mut sock = ns.socket();
        let (va, vb) = veth(&mut sock, "va", "vb");

        sock.set_mtu(va.index, 9000).unwrap();
        assert_eq!(sock.link_by_index(va.index).unwrap().mtu, 9000);
        let e = sock.set_mtu(va.index, 70000).unwrap_err();
        eprintln!("{e}");
        assert_eq!(kernel_errno(&e), Errno::EINVAL);
        assert!(
            e.to_string()
                .starts_with("set mtu 70000 on va: Invalid argument (EINVAL)"),
            "{e}"
        );

        let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
        sock.set_mac(va.index, mac).unwrap();
        assert_eq!(sock.link_by_index(va.index).unwrap().mac, Some(mac));
        let e = sock
            .set_mac(va.index, "01:00:00:00:00:01".parse().unwrap())
            .unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::EADDRNOTAVAIL, "multicast MAC: {e}");

        sock.set_up(va.index).unwrap();
        sock.set_up(vb.index).unwrap();
        let l = sock.link_by_index(va.index).unwrap();
        assert!(l.up);
        assert!(l.running);
        assert_eq!(l.carrier, Some(true));
        assert_eq!(l.operstate, OperState::Up);
        sock.set_down(vb.index).unwrap();
        let l = sock.link_by_index(va.index).unwrap();
        assert!(l.up && !l.running, "{l:?}");
        assert_eq!(l.operstate, OperState::LowerLayerDown);

        sock.set_promiscuity(va.index, true).unwrap();
        let l = sock.link_by_index(va.index).unwrap();
        assert!(l.promisc);
        assert_eq!(l.promiscuity, 1);
        // The user's request is a flag, not a counter: asking twice is once.
        sock.set_promiscuity(va.index, true).unwrap();
        assert_eq!(sock.link_by_index(va.index).unwrap().promiscuity, 1);
        sock.set_promiscuity(va.index, false).unwrap();
        let l = sock.link_by_index(va.index).unwrap();
        assert!(!l.promisc);
        assert_eq!(l.promiscuity, 0);
    }

    #[test]
    fn move_between_namespaces_and_back() {
        if !root() {
            return;
        }
        let (ns1, ns2) = (TestNetns::new(), TestNetns::new());
        let (netns1, netns2) = (ns1.open(), ns2.open());
        let mut s1 = NetlinkSocket::new_in(&netns1).unwrap();
        let mut s2 = NetlinkSocket::new_in(&netns2).unwrap();
        let (va, _) = veth(&mut s1, "va", "vb");

        s1.move_to_netns(va.index, &netns2).unwrap();
        assert!(s1.link_by_name("va").unwrap_err().is_no_device());
        let moved = s2.link_by_name("va").unwrap();
        assert_eq!(moved.mac, va.mac);
        // Its peer is now in another namespace.
        assert!(moved.link_netnsid.is_some(), "{moved:?}");

        s2.move_to_netns(moved.index, &netns1).unwrap();
        assert!(s2.link_by_name("va").unwrap_err().is_no_device());
        assert_eq!(s1.link_by_name("va").unwrap().mac, va.mac);

        // A veth whose peer is born in the other namespace.
        s1.create_veth("host0", "pod0", Some(&netns2)).unwrap();
        assert!(s1.link_by_name("pod0").unwrap_err().is_no_device());
        assert_eq!(
            s2.link_by_name("pod0").unwrap().kind.as_deref(),
            Some("veth")
        );

        // Moving a link that does not exist names it by index.
        let e = s1.move_to_netns(999_999, &netns2).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::ENODEV);
        assert!(e.to_string().contains("on ifindex 999999"), "{e}");
    }

    #[test]
    fn sockets_and_closures_in_a_netns_leave_the_caller_alone() {
        if !root() {
            return;
        }
        let before = Netns::current().unwrap();
        let ns = TestNetns::new();
        let netns = ns.open();
        let mut sock = NetlinkSocket::new_in(&netns).unwrap();
        assert!(before.same_as(&Netns::current().unwrap()).unwrap());
        let names: Vec<String> = sock.links().unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec!["lo"]);

        // run_in: /proc/sys/net follows the thread's namespace.
        let inside = netns
            .run_in(|| {
                let ours = Netns::current().unwrap();
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
                ours
            })
            .unwrap();
        assert!(inside.same_as(&netns).unwrap());
        assert!(!inside.same_as(&before).unwrap());
        let forward = netns
            .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap())
            .unwrap();
        assert_eq!(forward.trim(), "1");
        assert!(before.same_as(&Netns::current().unwrap()).unwrap());
    }

    #[test]
    fn addresses_and_routes() {
        if !root() {
            return;
        }
        let ns = TestNetns::new();
        let mut sock = ns.socket();
        let (va, vb) = veth(&mut sock, "va", "vb");
        sock.set_up(va.index).unwrap();
        sock.set_up(vb.index).unwrap();

        let v4: IpAddr = "10.99.0.2".parse().unwrap();
        let v6: IpAddr = "fd00:99::2".parse().unwrap();
        sock.add_address(va.index, v4, 24).unwrap();
        sock.add_address(va.index, v6, 64).unwrap();
        let e = sock.add_address(va.index, v4, 24).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::EEXIST);
        assert!(
            e.to_string()
                .starts_with("add address 10.99.0.2/24 on va: File exists (EEXIST)"),
            "{e}"
        );

        let addrs = sock.addresses(va.index).unwrap();
        assert!(addrs.iter().all(|a| a.index == va.index));
        let a4 = addrs
            .iter()
            .find(|a| a.address == v4)
            .expect("IPv4 address listed");
        assert_eq!((a4.prefix_len, a4.label.as_deref()), (24, Some("va")));
        assert!(addrs.iter().any(|a| a.address == v6 && a.prefix_len == 64));
        assert!(sock
            .addresses(vb.index)
            .unwrap()
            .iter()
            .all(|a| !a.address.is_ipv4()));

        let gw4: IpAddr = "10.99.0.1".parse().unwrap();
        let gw6: IpAddr = "fd00:99::1".parse().unwrap();
        let net: (IpAddr, u8) = ("10.98.0.0".parse().unwrap(), 16);
        sock.add_route(None, Some(gw4), va.index).unwrap();
        sock.add_route(Some(net), None, va.index).unwrap();
        sock.add_route(None, Some(gw6), va.index).unwrap();
        let e = sock.add_route(None, Some(gw4), va.index).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::EEXIST);
        assert!(
            e.to_string()
                .starts_with("add route default via 10.99.0.1 on va"),
            "{e}"
        );

        let routes: Vec<_> = sock
            .routes()
            .unwrap()
            .into_iter()
            .filter(|r| r.table == MAIN_TABLE)
            .collect();
        let default4 = routes
            .iter()
            .find(|r| !r.ipv6 && r.dst.is_none())
            .expect("IPv4 default route");
        assert_eq!(
            (default4.gateway, default4.oif),
            (Some(gw4), Some(va.index))
        );
        let link_route = routes
            .iter()
            .find(|r| r.dst == Some(net))
            .expect("10.98/16");
        assert_eq!((link_route.gateway, link_route.scope), (None, 253));
        assert!(routes
            .iter()
            .any(|r| r.ipv6 && r.dst.is_none() && r.gateway == Some(gw6)));
        // The kernel's connected route for the address.
        assert!(routes
            .iter()
            .any(|r| r.dst == Some(("10.99.0.0".parse().unwrap(), 24)) && r.protocol == 2));

        sock.del_route(Some(net), None, va.index).unwrap();
        let e = sock.del_route(Some(net), None, va.index).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::ESRCH, "{e}");
        sock.del_address(va.index, v4, 24).unwrap();
        assert!(!sock
            .addresses(va.index)
            .unwrap()
            .iter()
            .any(|a| a.address == v4));
        let e = sock.del_address(va.index, v4, 24).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::EADDRNOTAVAIL, "{e}");
    }

    #[test]
    fn vf_setters_on_a_veth_fail_typed() {
        if !root() {
            return;
        }
        let ns = TestNetns::new();
        let mut sock = ns.socket();
        let (va, _) = veth(&mut sock, "va", "vb");
        let pf = va.index;
        let mac = "02:00:00:00:00:01".parse().unwrap();
        let attempts: Vec<(VfSetting, sriov::netlink::Result<()>)> = vec![
            (VfSetting::Mac, sock.set_vf_mac(pf, 0, mac)),
            (
                VfSetting::Vlan,
                sock.set_vf_vlan(pf, 0, 100, 1, VlanProto::Dot1Q),
            ),
            (
                VfSetting::Vlan,
                sock.set_vf_vlan(pf, 0, 100, 1, VlanProto::Dot1Ad),
            ),
            (VfSetting::SpoofCheck, sock.set_vf_spoofchk(pf, 0, false)),
            (VfSetting::Trust, sock.set_vf_trust(pf, 0, true)),
            (VfSetting::MinTxRate, sock.set_vf_rate(pf, 0, 10, 0)),
            (VfSetting::MaxTxRate, sock.set_vf_rate(pf, 0, 0, 100)),
            (VfSetting::TxRates, sock.set_vf_rate(pf, 0, 10, 100)),
            (
                VfSetting::LinkState,
                sock.set_vf_link_state(pf, 0, VfLinkState::Disable),
            ),
        ];
        for (expected, result) in attempts {
            match result {
                Err(NetlinkError::VfSetting {
                    pf: name,
                    vf: 0,
                    error: VfSettingError { setting, errno, .. },
                }) => {
                    assert_eq!(setting, expected);
                    assert_eq!(name, "va");
                    eprintln!("{expected}: {errno:?}");
                    assert_eq!(errno, Errno::EOPNOTSUPP, "{expected}");
                }
                other => panic!("{expected}: expected a VfSetting error, got {other:?}"),
            }
        }
        let e = sock
            .set_vf_link_state(pf, 3, VfLinkState::Auto)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "VF 3 of va: link_state: not supported by this driver (EOPNOTSUPP)"
        );
        // Refused before asking the kernel.
        assert!(matches!(
            sock.set_vf_vlan(pf, 0, 4096, 0, VlanProto::Dot1Q),
            Err(NetlinkError::InvalidArgument(_))
        ));

        // Reading VF info from a link that is no PF.
        match sock.pf_vf_info(pf, 0) {
            Err(NetlinkError::NoSuchVf {
                pf: name,
                vf: 0,
                num_vfs,
            }) => {
                assert_eq!(name, "va");
                assert_eq!(num_vfs, None);
            }
            other => panic!("expected NoSuchVf, got {other:?}"),
        }
        assert_eq!(
            sock.pf_vf_info(pf, 0).unwrap_err().to_string(),
            "va has no VF 0 (it is not an SR-IOV PF)"
        );
        assert!(sock.pf_vfs_info(pf).unwrap().is_empty());
        assert!(sock.pf_vf_info(999_999, 0).unwrap_err().is_no_device());
    }

    #[test]
    fn bridge_master_and_kind() {
        if !root() {
            return;
        }
        let ns = TestNetns::new();
        let mut sock = ns.socket();
        let (va, _) = veth(&mut sock, "va", "vb");
        let br = sock.create_bridge("br0").unwrap();
        assert_eq!(
            sock.link_by_index(br).unwrap().kind.as_deref(),
            Some("bridge")
        );
        sock.set_master(va.index, Some(br)).unwrap();
        let l = sock.link_by_index(va.index).unwrap();
        assert_eq!(l.master, Some(br));
        // The bridge holds its port promiscuous; the user's flag stays off.
        assert!(l.promiscuity >= 1 && !l.promisc, "{l:?}");
        sock.set_master(va.index, None).unwrap();
        assert_eq!(sock.link_by_index(va.index).unwrap().master, None);
        let e = sock.set_master(va.index, Some(999_999)).unwrap_err();
        assert!(e.errno().is_some(), "{e}");
        assert!(
            e.to_string().starts_with("set master ifindex 999999 on va"),
            "{e}"
        );
    }

    #[test]
    fn dump_lookup_and_delete() {
        if !root() {
            return;
        }
        let ns = TestNetns::new();
        let mut sock = ns.socket();
        // Enough links for the dump to span several datagrams.
        for i in 0..40 {
            sock.create_veth(&format!("a{i}"), &format!("b{i}"), None)
                .unwrap();
        }
        let links = sock.links().unwrap();
        assert_eq!(links.len(), 81);
        assert!(links.iter().any(|l| l.name == "lo" && l.kind.is_none()));
        let a7 = links.iter().find(|l| l.name == "a7").unwrap();
        assert_eq!(
            sock.link_by_index(a7.index).unwrap(),
            sock.link_by_name("a7").unwrap()
        );

        sock.delete_link(a7.index).unwrap();
        assert!(
            sock.link_by_name("b7").unwrap_err().is_no_device(),
            "veth peers go together"
        );
        let e = sock.link_by_index(a7.index).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::ENODEV);
        assert_eq!(
            e.to_string(),
            format!("get link on ifindex {}: No such device (ENODEV)", a7.index)
        );
        let e = sock.delete_link(a7.index).unwrap_err();
        assert_eq!(kernel_errno(&e), Errno::ENODEV);
        assert_eq!(sock.links().unwrap().len(), 79);
    }
}
