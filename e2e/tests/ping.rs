//! The ICMP echo helper used by the demo: a reply across a veth pair, none to a silent address.

use sriov::netlink::{NetlinkSocket, Netns};
use sriov_e2e::ping::ping;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("pingtest-{}-{tag}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Ns(name)
    }
    fn open(&self) -> Netns {
        Netns::open(format!("/var/run/netns/{}", self.0)).unwrap()
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn ping_across_a_veth_pair() {
    let (a, b) = (Ns::new("a"), Ns::new("b"));
    let (na, nb) = (a.open(), b.open());
    let mut sa = NetlinkSocket::new_in(&na).unwrap();
    sa.create_veth("va", "vb", Some(&nb)).unwrap();
    let mut sb = NetlinkSocket::new_in(&nb).unwrap();
    for (s, name, ip) in [
        (&mut sa, "va", [10, 77, 0, 1]),
        (&mut sb, "vb", [10, 77, 0, 2]),
    ] {
        let l = s.link_by_name(name).unwrap();
        s.add_address(l.index, IpAddr::V4(Ipv4Addr::from(ip)), 24)
            .unwrap();
        s.set_up(l.index).unwrap();
    }
    let rtt = ping(
        &na,
        Ipv4Addr::new(10, 77, 0, 2),
        5,
        Duration::from_millis(500),
    )
    .unwrap();
    assert!(rtt.is_some(), "no echo reply across the veth pair");
    let none = ping(
        &na,
        Ipv4Addr::new(10, 77, 0, 9),
        2,
        Duration::from_millis(200),
    )
    .unwrap();
    assert!(none.is_none(), "a reply from an address nobody has");
}
