//! The default-route netdevs of another network namespace (root): they are never pool devices.

use sriov::discovery::default_route_interfaces;
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
    ip(&[
        "-n", &ns.0, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "10.66.0.1/24", "dev", "up0"]);
    ip(&["-n", &ns.0, "link", "set", "up0", "up"]);
    ip(&["-n", &ns.0, "link", "set", "up1", "up"]);
    ip(&[
        "-n",
        &ns.0,
        "route",
        "add",
        "default",
        "via",
        "10.66.0.2",
        "dev",
        "up0",
    ]);
    let path = format!("/var/run/netns/{}", ns.0);
    assert_eq!(default_route_interfaces(Some(Path::new(&path))), ["up0"]);
    // The caller's own namespace is not that one.
    assert!(!default_route_interfaces(None).contains(&"up0".to_string()));
    // A path that is no namespace: none, not a panic.
    assert!(default_route_interfaces(Some(Path::new("/nonexistent"))).is_empty());
}
