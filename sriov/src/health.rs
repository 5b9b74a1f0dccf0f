//! Device health, from discovery and link state.
//!
//! A pool device is Unhealthy when its PF's netdev is administratively down, has no carrier or
//! is gone, when the device itself disappeared from sysfs, or when it no longer matches its pool
//! (typically: rebound to a driver the pool does not select). It turns Healthy again as soon as
//! that clears.
//!
//! Devices that vanish are not dropped from the pool at once: kubelet may have given them to a
//! pod, and an Unhealthy entry is what tells it (and the operator) that something is wrong.
//! They leave the pool only when the disappearance is explained: the PF's VF count was lowered,
//! or another pool now holds the device.

use crate::discovery::{Node, SriovStatus};
use crate::names::PciAddress;
use crate::pools::PoolDevice;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A link as netlink (or sysfs) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// IFF_UP: administratively up.
    pub admin_up: bool,
    /// IFF_LOWER_UP / carrier.
    pub carrier: bool,
}

/// `IFF_LOWER_UP`: the driver signals carrier.
const IFF_LOWER_UP: u32 = 1 << 16;

impl LinkState {
    /// From a netlink link message (a dump or a notification).
    pub fn from_link(l: &crate::netlink::LinkInfo) -> LinkState {
        LinkState {
            admin_up: l.up,
            carrier: l.flags & IFF_LOWER_UP != 0 || l.carrier == Some(true),
        }
    }

    /// From sysfs attributes: the kernel answers `carrier` only for an interface that is
    /// administratively up (EINVAL otherwise), so its presence tells `admin_up`.
    pub fn from_sysfs(n: &crate::discovery::Netdev) -> LinkState {
        LinkState {
            admin_up: n.carrier.is_some() || n.operstate.as_deref() == Some("up"),
            carrier: n.carrier == Some(true),
        }
    }
}

/// The links of the network namespace that holds the PFs, by interface name.
#[derive(Debug, Clone, Default)]
pub struct Links {
    by_name: HashMap<String, LinkState>,
    /// True when `by_name` holds every link (it came from a full dump and its notifications): a
    /// missing name is then a missing link, not a missing fact.
    complete: bool,
    /// States read from sysfs at discovery, used for names the notifications do not cover (a PF
    /// netdev outside the watched namespace). Notifications always win.
    fallback: HashMap<String, LinkState>,
}

impl Links {
    /// Links known to be the whole set (a netlink dump).
    pub fn complete(links: impl IntoIterator<Item = (String, LinkState)>) -> Self {
        Links {
            by_name: links.into_iter().collect(),
            complete: true,
            fallback: HashMap::new(),
        }
    }

    /// Links seen some other way (sysfs at discovery): absent names are unknown, not gone.
    pub fn partial(links: impl IntoIterator<Item = (String, LinkState)>) -> Self {
        Links {
            by_name: links.into_iter().collect(),
            complete: false,
            fallback: HashMap::new(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// A link appeared or changed; returns whether anything changed.
    pub fn set(&mut self, name: &str, state: LinkState) -> bool {
        self.by_name.insert(name.to_string(), state) != Some(state)
    }

    /// A link was deleted (or left the namespace); returns whether it was known.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// Replaces the sysfs-read states.
    pub fn set_fallback(&mut self, links: impl IntoIterator<Item = (String, LinkState)>) {
        self.fallback = links.into_iter().collect();
    }

    pub fn get(&self, name: &str) -> Option<LinkState> {
        self.by_name
            .get(name)
            .or_else(|| self.fallback.get(name))
            .copied()
    }
}

/// Why a device is Unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    PfDown { pf: String },
    PfNoCarrier { pf: String },
    PfGone { pf: String },
    DeviceGone,
    NoLongerMatches { driver: Option<String> },
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unhealthy::PfDown { pf } => write!(f, "PF {pf} is down"),
            Unhealthy::PfNoCarrier { pf } => write!(f, "PF {pf} has no carrier"),
            Unhealthy::PfGone { pf } => write!(f, "PF netdev {pf} is gone"),
            Unhealthy::DeviceGone => write!(f, "the device disappeared"),
            Unhealthy::NoLongerMatches { driver } => write!(
                f,
                "the device no longer matches the pool (driver {})",
                driver.as_deref().unwrap_or("none")
            ),
        }
    }
}

/// A device's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy(Unhealthy),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// A pool device with its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedDevice {
    pub device: PoolDevice,
    pub health: Health,
}

/// The health a present, matching device gets from its PF's link.
///
/// A device whose PF has no known netdev (bound to a userspace driver, or in another network
/// namespace) cannot be judged by link and is Healthy.
pub fn link_health(device: &PoolDevice, links: &Links) -> Health {
    let Some(pf) = device.pf_name.as_deref() else {
        return Health::Healthy;
    };
    match links.get(pf) {
        Some(s) if !s.admin_up => Health::Unhealthy(Unhealthy::PfDown { pf: pf.into() }),
        Some(s) if !s.carrier => Health::Unhealthy(Unhealthy::PfNoCarrier { pf: pf.into() }),
        Some(_) => Health::Healthy,
        None if links.is_complete() => Health::Unhealthy(Unhealthy::PfGone { pf: pf.into() }),
        None => Health::Healthy,
    }
}

fn enabled_vfs(status: SriovStatus) -> u32 {
    match status {
        SriovStatus::Enabled { enabled, .. } => enabled,
        _ => 0,
    }
}

/// What became of a device that left a pool's assignment.
fn departed(prev: &PoolDevice, node: &Node) -> Option<Unhealthy> {
    match prev.vf_index {
        Some(index) => match node.device(&prev.pf_pci) {
            // The VF count went down past this VF: removed on purpose.
            Some(pf) if enabled_vfs(pf.sriov) <= index => None,
            Some(_) => match node.vf(&prev.pci) {
                Some((_, vf)) => Some(Unhealthy::NoLongerMatches {
                    driver: vf.driver.clone(),
                }),
                None => Some(Unhealthy::DeviceGone),
            },
            None => Some(Unhealthy::DeviceGone),
        },
        None => match node.device(&prev.pci) {
            // A PF that got VFs is offered through them now.
            Some(pf) if !pf.vfs.is_empty() => None,
            Some(pf) => Some(Unhealthy::NoLongerMatches {
                driver: pf.driver.clone(),
            }),
            None => Some(Unhealthy::DeviceGone),
        },
    }
}

/// The new device list of a pool, sorted by PCI address.
///
/// - `previous`: the pool's list so far (empty for a new or reconfigured pool);
/// - `current`: the devices the pool's selectors take now;
/// - `held_elsewhere`: whether another pool now holds a device.
pub fn track_pool(
    previous: &[TrackedDevice],
    current: &[PoolDevice],
    node: &Node,
    links: &Links,
    held_elsewhere: impl Fn(&PciAddress) -> bool,
) -> Vec<TrackedDevice> {
    let mut out: BTreeMap<PciAddress, TrackedDevice> = current
        .iter()
        .map(|d| {
            let t = TrackedDevice {
                device: d.clone(),
                health: link_health(d, links),
            };
            (d.pci, t)
        })
        .collect();
    for prev in previous {
        if out.contains_key(&prev.device.pci) || held_elsewhere(&prev.device.pci) {
            continue;
        }
        if let Some(why) = departed(&prev.device, node) {
            out.insert(
                prev.device.pci,
                TrackedDevice {
                    device: prev.device.clone(),
                    health: Health::Unhealthy(why),
                },
            );
        }
    }
    out.into_values().collect()
}

/// Re-evaluates link health only (a link event): devices that departed keep their reason.
/// Returns whether any health changed.
pub fn refresh_links(devices: &mut [TrackedDevice], links: &Links) -> bool {
    let mut changed = false;
    for t in devices {
        let departed = matches!(
            t.health,
            Health::Unhealthy(Unhealthy::DeviceGone | Unhealthy::NoLongerMatches { .. })
        );
        if departed {
            continue;
        }
        let h = link_health(&t.device, links);
        if h != t.health {
            t.health = h;
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{PciNetDevice, Vf};

    fn pci(s: &str) -> PciAddress {
        PciAddress::parse(s).unwrap()
    }

    fn pool_dev(vf: u32) -> PoolDevice {
        PoolDevice {
            pci: pci(&format!("0000:3b:02.{vf}")),
            vendor: 0x8086,
            device: 0x154c,
            driver: Some("iavf".into()),
            pf_pci: pci("0000:3b:00.0"),
            pf_name: Some("ens1f0".into()),
            vf_index: Some(vf),
            netdev: None,
            numa_node: None,
            iommu_group: None,
            link_type: None,
            rdma: false,
            acpi_index: None,
            p_key: None,
            ddp_profile: None,
        }
    }

    fn node(vfs: u32, driver_of: impl Fn(u32) -> &'static str) -> Node {
        let pf = pci("0000:3b:00.0");
        Node {
            devices: vec![PciNetDevice {
                pci: pf,
                vendor: 0x8086,
                device: 0x1572,
                class: 0x020000,
                driver: Some("i40e".into()),
                numa_node: None,
                netdevs: vec![],
                sriov: if vfs == 0 {
                    SriovStatus::Disabled { total: 8 }
                } else {
                    SriovStatus::Enabled {
                        enabled: vfs,
                        total: 8,
                    }
                },
                vfs: (0..vfs)
                    .map(|i| Vf {
                        pci: pci(&format!("0000:3b:02.{i}")),
                        index: i,
                        pf,
                        vendor: 0x8086,
                        device: 0x154c,
                        driver: Some(driver_of(i).into()),
                        netdev: None,
                        netdev_details: None,
                        iommu_group: None,
                        numa_node: None,
                        rdma: false,
                    })
                    .collect(),
                rdma: false,
                acpi_index: None,
            }],
            warnings: vec![],
            selector_attrs: Default::default(),
        }
    }

    const UP: LinkState = LinkState {
        admin_up: true,
        carrier: true,
    };

    #[test]
    fn pf_link_states() {
        let d = pool_dev(0);
        let mut links = Links::complete([("ens1f0".to_string(), UP)]);
        assert_eq!(link_health(&d, &links), Health::Healthy);
        links.set(
            "ens1f0",
            LinkState {
                admin_up: true,
                carrier: false,
            },
        );
        assert!(matches!(
            link_health(&d, &links),
            Health::Unhealthy(Unhealthy::PfNoCarrier { .. })
        ));
        links.set(
            "ens1f0",
            LinkState {
                admin_up: false,
                carrier: false,
            },
        );
        assert!(matches!(
            link_health(&d, &links),
            Health::Unhealthy(Unhealthy::PfDown { .. })
        ));
        links.remove("ens1f0");
        assert!(matches!(
            link_health(&d, &links),
            Health::Unhealthy(Unhealthy::PfGone { .. })
        ));
        assert_eq!(link_health(&d, &Links::partial([])), Health::Healthy);
        let down = LinkState {
            admin_up: false,
            carrier: false,
        };
        links.set_fallback([("ens1f0".to_string(), down)]);
        assert!(matches!(
            link_health(&d, &links),
            Health::Unhealthy(Unhealthy::PfDown { .. })
        ));
        links.set("ens1f0", UP);
        assert_eq!(
            link_health(&d, &links),
            Health::Healthy,
            "notifications win over sysfs"
        );
    }

    #[test]
    fn departures() {
        let links = Links::complete([("ens1f0".to_string(), UP)]);
        let all: Vec<PoolDevice> = (0..4).map(pool_dev).collect();
        let prev = track_pool(&[], &all, &node(4, |_| "iavf"), &links, |_| false);
        assert_eq!(prev.len(), 4);
        assert!(prev.iter().all(|t| t.health.is_healthy()));

        // VF 2 rebound to vfio-pci: no longer selected, still there → Unhealthy.
        let now = node(4, |i| if i == 2 { "vfio-pci" } else { "iavf" });
        let cur: Vec<PoolDevice> = [0, 1, 3].into_iter().map(pool_dev).collect();
        let t = track_pool(&prev, &cur, &now, &links, |_| false);
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[2].health,
            Health::Unhealthy(Unhealthy::NoLongerMatches {
                driver: Some("vfio-pci".into())
            })
        );
        // ... unless another pool took it.
        let t = track_pool(&prev, &cur, &now, &links, |p| *p == pci("0000:3b:02.2"));
        assert_eq!(t.len(), 3);

        // VF count lowered to 2: VFs 2 and 3 leave quietly.
        let cur: Vec<PoolDevice> = (0..2).map(pool_dev).collect();
        let t = track_pool(&prev, &cur, &node(2, |_| "iavf"), &links, |_| false);
        assert_eq!(t.len(), 2);

        // VF 1 vanished while the count says 4: Unhealthy, and link refreshes keep the reason.
        let mut n = node(4, |_| "iavf");
        n.devices[0].vfs.remove(1);
        let cur: Vec<PoolDevice> = [0, 2, 3].into_iter().map(pool_dev).collect();
        let mut t = track_pool(&prev, &cur, &n, &links, |_| false);
        assert_eq!(t[1].health, Health::Unhealthy(Unhealthy::DeviceGone));
        let down = Links::complete([(
            "ens1f0".to_string(),
            LinkState {
                admin_up: false,
                carrier: false,
            },
        )]);
        assert!(refresh_links(&mut t, &down));
        assert_eq!(t[1].health, Health::Unhealthy(Unhealthy::DeviceGone));
        assert!(matches!(
            t[0].health,
            Health::Unhealthy(Unhealthy::PfDown { .. })
        ));
        assert!(refresh_links(&mut t, &links));
        assert!(t[0].health.is_healthy());
        assert!(!refresh_links(&mut t, &links));
    }
}
