//! The generic netlink client and devlink `dev info` against the real kernel. Generic netlink
//! needs no privileges to resolve families or read devlink info, so these run as any user.

use sriov::netlink::genl::GENL_ID_CTRL;
use sriov::netlink::{Devlink, GenlSocket};

/// The controller resolves itself (its id is fixed) and says ENOENT for an unknown family.
#[test]
fn families_resolve_through_the_controller() {
    let mut socket = GenlSocket::new().unwrap();
    assert_eq!(socket.family("nlctrl").unwrap(), Some(GENL_ID_CTRL));
    assert_eq!(socket.family("sriovrs-nofam").unwrap(), None);
    // Longer than the kernel's GENL_NAMSIZ: refused before asking.
    let e = socket.family("sriov-rs-no-such-family").unwrap_err();
    assert!(e.to_string().contains("1-15 bytes"), "{e}");
    // Twice on one socket: sequence numbers keep requests apart.
    assert_eq!(socket.family("nlctrl").unwrap(), Some(GENL_ID_CTRL));
}

/// devlink on this kernel: a PCI device that does not exist has no devlink instance (the
/// kernel's ENODEV is "none", not an error), and the dump of every instance parses (this VM has
/// no devlink-capable NIC, so it may well be empty; whatever it holds has a bus and a name).
#[test]
fn devlink_info_of_the_real_kernel() {
    let mut devlink = Devlink::open().unwrap();
    if !devlink.available() {
        eprintln!("this kernel has no devlink family (CONFIG_NET_DEVLINK off): nothing to ask");
        return;
    }
    eprintln!("devlink is available");
    assert_eq!(devlink.info("pci", "0000:ff:1f.7").unwrap(), None);
    assert_eq!(devlink.info("nosuchbus", "x").unwrap(), None);
    let all = devlink.info_all().unwrap();
    for info in &all {
        assert!(!info.bus.is_empty() && !info.dev.is_empty(), "{info:?}");
        // Each one answers a get of its own.
        let one = devlink.info(&info.bus, &info.dev).unwrap();
        assert_eq!(one.as_ref().map(|i| &i.driver), Some(&info.driver));
    }
}
