//! Before anything is touched: the netdev found for a VF must be that VF's own, and never the
//! node's uplink.
//!
//! [`super::locate`] already proved that `deviceID` is a VF of a PF on this node (its `physfn`
//! has a `virtfnN` link back to it). The netdev is then found by the names under the VF's `net/`
//! folder; here it must also be shown to belong to the VF, by the kernel's own account:
//!
//! - a netdev with a parent device (every PCI netdev: `IFLA_PARENT_DEV_NAME`) must have the VF as
//!   its parent, on the PCI bus;
//! - a netdev without one (virtual links; the simulated node's veth stand-ins) must have its
//!   sysfs entry (`class/net/NAME`) under the VF's own device folder, which for a real virtual
//!   link it never has (those live under `devices/virtual/net`);
//! - it is not the PF's netdev, and it carries no default route (IPv4 or IPv6): moving the
//!   uplink into a pod would cut the node off.

use super::locate::VfLocation;
use super::AttachError;
use crate::netlink::{LinkInfo, NetlinkSocket};
use crate::sysfs::Sysfs;

/// Refuses `link` as the netdev of `loc`'s VF unless it provably is that VF's.
pub(crate) fn check_netdev(
    host: &mut NetlinkSocket,
    sysfs: &Sysfs,
    loc: &VfLocation,
    link: &LinkInfo,
    pf_index: Option<u32>,
) -> Result<(), AttachError> {
    let name = &link.name;
    let pci = loc.pci.to_string();
    match (&link.parent_dev, &link.parent_bus) {
        (Some(dev), bus) if *dev != pci || bus.as_deref().is_some_and(|b| b != "pci") => {
            return Err(AttachError::Invalid(format!(
                "deviceID: its netdev {name} belongs to {} device {dev}, not to this VF",
                bus.as_deref().unwrap_or("another")
            )))
        }
        (Some(_), _) => {}
        (None, _) => {
            let theirs = sysfs.netdev_device_dir(name)?;
            let ours = sysfs.link_target(&sysfs.pci_device(&loc.pci))?;
            if theirs.is_none() || theirs != ours {
                return Err(AttachError::Invalid(format!(
                    "deviceID: netdev {name} is not this VF's: it has no parent device and sysfs {}",
                    match theirs {
                        Some(dir) => format!("places it under {}", dir.display()),
                        None => "does not place it under a PCI device".into(),
                    }
                )));
            }
        }
    }
    if pf_index == Some(link.index) || loc.pf_name.as_deref() == Some(name.as_str()) {
        return Err(AttachError::Invalid(format!(
            "deviceID: netdev {name} is the PF's own netdev"
        )));
    }
    let routes = host.routes().map_err(AttachError::netlink(format!(
        "read the routes (to make sure {name} is not the node's uplink)"
    )))?;
    if let Some(r) = routes
        .iter()
        .find(|r| r.dst.is_none() && r.oif == Some(link.index))
    {
        return Err(AttachError::Invalid(format!(
            "deviceID: netdev {name} carries the node's default {} route (the uplink); it is never handed to a pod",
            if r.ipv6 { "IPv6" } else { "IPv4" }
        )));
    }
    Ok(())
}
