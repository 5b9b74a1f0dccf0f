//! The uplinks (default-route netdevs) of another network namespace (root), from a netlink
//! route dump: IPv4 and IPv6, and an error, never an empty list, when they cannot be read.

use sriov::discovery::{default_route_interfaces, UplinkError};
use std::path::Path;
use std::process::Command;

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    assert!(
        Command::new("ip").args(args).status().unwrap().success(),
        "ip {args:?}"
    );
}

#[test]
fn default_route_interfaces_of_another_netns() {
    let ns = Ns(format!("droute-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    let n = |args: &[&str]| {
        let mut all = vec!["-n", &ns.0];
        all.extend_from_slice(args);
        ip(&all);
    };
    for (a, b) in [("up0", "up1"), ("v6a", "v6b"), ("lan0", "lan1")] {
        n(&["link", "add", a, "type", "veth", "peer", "name", b]);
        n(&["link", "set", a, "up"]);
        n(&["link", "set", b, "up"]);
    }
    n(&["addr", "add", "10.66.0.1/24", "dev", "up0"]);
    n(&["addr", "add", "10.67.0.1/24", "dev", "lan0"]);
    n(&["route", "add", "default", "via", "10.66.0.2", "dev", "up0"]);
    n(&["-6", "addr", "add", "fd00:66::1/64", "dev", "v6a", "nodad"]);
    n(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:66::2",
        "dev",
        "v6a",
    ]);
    let path = format!("/var/run/netns/{}", ns.0);
    let mut got = default_route_interfaces(Some(Path::new(&path))).unwrap();
    got.sort();
    // lan0 has addresses and routes, but no default route.
    assert_eq!(got, ["up0", "v6a"]);
    // The caller's own namespace is not that one.
    assert!(!default_route_interfaces(None)
        .unwrap()
        .contains(&"up0".to_string()));
    // Unreadable (no such namespace, or a file that is none): an error that says why.
    for bad in ["/nonexistent", "/proc/self/status"] {
        let e = default_route_interfaces(Some(Path::new(bad))).unwrap_err();
        assert!(matches!(e, UplinkError::Netlink { .. }), "{e}");
        assert!(e.to_string().contains(bad), "{e}");
    }
}
