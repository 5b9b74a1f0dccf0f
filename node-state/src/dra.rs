//! The node's pools as DRA devices and ResourceSlices (`resource.k8s.io/v1`); no I/O.
//!
//! Two steps, split along the trust boundary:
//! - the daemon (no API credentials) turns discovery, pools and health into [`DraDevices`]
//!   ([`build_devices`]) and writes them to a node-local file ([`crate::status_file`]'s atomic
//!   JSON write);
//! - the sidecar reads the file and cuts the devices into slices ([`slice_specs`]) for the
//!   [`crate::slice_publisher`].
//!
//! One pool per node, named after the node. A device is named from its PCI address, which is a
//! DNS label once `:` and `.` become `-` (`0000:3b:02.1` → `0000-3b-02-1`, dra-driver-sriov's
//! naming). Every pool device is published (VFs, and PFs without VFs as the device plugin offers
//! them), in PCI order, at most [`MAX_DEVICES_PER_SLICE`] per slice, or
//! [`MAX_DEVICES_PER_SLICE_WITH_TAINTS`] when taints are on (the API's limit for a slice with
//! any tainted device; cutting at 64 whenever taints are on keeps a device in the same slice
//! when its health flips).
//!
//! Attributes are dra-driver-sriov's, so its DeviceClasses and CEL selectors keep working: under
//! the driver's domain `vendor` (the PF's vendor ID), `deviceID`, `pfDeviceID`, `pciAddress`,
//! `PFName`, `vfID` (int), `pfPciAddress`, `linkType` (`ethernet` | `infiniband` | `unknown`),
//! `rdmaCapable` (bool), `EswitchMode` (`legacy` unless told otherwise); plus
//! `k8s.cni.cncf.io/deviceID`, `k8s.cni.cncf.io/resourceName` (the pool's full resource name, what
//! a NAD's `resourceName` annotation matches), `resource.kubernetes.io/pciBusID`,
//! `resource.kubernetes.io/pcieRoot` (`pci<domain>:<bus>`, when known) and `dra.net/numaNode`
//! (int, -1 without NUMA affinity). Ours, under the driver's domain: `driver` (the bound kernel
//! driver), `mtu` (int), `linkState` (`up` | `down`, the PF's link). With the driver name
//! `sriovnetwork.k8snetworkplumbingwg.io` the slices read exactly like dra-driver-sriov's.
//!
//! Taints (`resource.k8s.io/v1` `Device.taints`, beta in 1.35 behind `DRADeviceTaints`): with
//! [`DraOptions::taints`], an unhealthy device carries `<driver>/unhealthy=<reason>:NoSchedule`,
//! so the scheduler allocates it to no new claim. A cluster without the feature drops the field;
//! the publisher notices and stops sending it.

use serde::{Deserialize, Serialize};
use sriov::discovery::{Node, PciNetDevice, Vf};
use sriov::health::{Health, Unhealthy};
use sriov::names::PciAddress;
use sriov::pools::{Pool, PoolDevice, Pools};
use std::collections::BTreeMap;

/// Our driver name (a DNS subdomain under the project's own domain).
pub const DEFAULT_DRIVER: &str = "sriov.sriov-rs.io";
/// The API's limit of devices in one ResourceSlice.
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// The limit when any device of the slice has a taint.
pub const MAX_DEVICES_PER_SLICE_WITH_TAINTS: usize = 64;
/// The API's limit of attributes plus capacities per device.
pub const MAX_ATTRIBUTES: usize = 32;
/// The API's limit of a string attribute's length.
pub const MAX_STRING_VALUE: usize = 64;
/// dra-driver-sriov's default when devlink does not say.
pub const DEFAULT_ESWITCH_MODE: &str = "legacy";
/// The effect of the unhealthy taint.
pub const TAINT_EFFECT: &str = "NoSchedule";

/// A device attribute's value, as `resource.k8s.io/v1` writes it (`{"string": "8086"}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AttributeValue {
    String(String),
    Int(i64),
    Bool(bool),
    Version(String),
}

/// A device taint, as `resource.k8s.io/v1` writes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTaint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: String,
    /// Set by the API server; carried over from the published slice so an unchanged taint
    /// compares equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

/// One device of a ResourceSlice (the fields we publish of `resource.k8s.io/v1` Device).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DraDevice {
    pub name: String,
    pub attributes: BTreeMap<String, AttributeValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<DeviceTaint>,
}

/// What the daemon hands to the sidecar: the node-local DRA devices file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "camelCase")]
pub struct DraDevices {
    /// The DRA driver name (`spec.driver` of every slice).
    pub driver: String,
    /// Whether unhealthy devices carry taints (and slices are cut at 64 devices).
    #[serde(default)]
    pub taints: bool,
    /// In PCI order.
    #[serde(default)]
    pub devices: Vec<DraDevice>,
    /// What could not be published as is (an attribute too long, a device over the limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct DraOptions {
    pub driver: String,
    pub taints: bool,
}

impl Default for DraOptions {
    fn default() -> Self {
        DraOptions {
            driver: DEFAULT_DRIVER.into(),
            taints: false,
        }
    }
}

/// What discovery does not read (yet) but the attributes carry, per PF (by PCI address).
#[derive(Debug, Clone, Default)]
pub struct PfTopology {
    /// `pci<domain>:<bus>`: the root complex the PF (and its VFs) hang below.
    pub pcie_roots: BTreeMap<PciAddress, String>,
    /// devlink's eswitch mode; [`DEFAULT_ESWITCH_MODE`] when absent.
    pub eswitch_modes: BTreeMap<PciAddress, String>,
}

/// The device name of a PCI address: `0000:3b:02.1` → `0000-3b-02-1` (a DNS label).
pub fn device_name(pci: &PciAddress) -> String {
    pci.to_string().replace([':', '.'], "-")
}

fn link_type_name(link_type: Option<&str>) -> &'static str {
    match link_type {
        Some("ether") => "ethernet",
        Some("infiniband") => "infiniband",
        _ => "unknown",
    }
}

/// The taint value of an unhealthy device: a short reason (a label value).
pub fn unhealthy_reason(why: &Unhealthy) -> &'static str {
    match why {
        Unhealthy::PfDown { .. } => "PfDown",
        Unhealthy::PfNoCarrier { .. } => "PfNoCarrier",
        Unhealthy::PfGone { .. } => "PfGone",
        Unhealthy::DeviceGone => "DeviceGone",
        Unhealthy::NoLongerMatches { .. } => "DriverMismatch",
    }
}

/// The unhealthy taint's key for `driver`.
pub fn taint_key(driver: &str) -> String {
    format!("{driver}/unhealthy")
}

struct Attrs<'a> {
    driver: &'a str,
    map: BTreeMap<String, AttributeValue>,
    warnings: Vec<String>,
    device: String,
}

impl Attrs<'_> {
    fn ours(&mut self, name: &str, v: AttributeValue) {
        let key = format!("{}/{name}", self.driver);
        self.put(key, v);
    }

    fn put(&mut self, key: String, v: AttributeValue) {
        if let AttributeValue::String(s) = &v {
            if s.len() > MAX_STRING_VALUE {
                self.warnings.push(format!(
                    "device {}: attribute {key} left out: its value is longer than {MAX_STRING_VALUE} characters",
                    self.device
                ));
                return;
            }
        }
        self.map.insert(key, v);
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::String(v.into())
}

fn hex4(id: u16) -> AttributeValue {
    s(format!("{id:04x}"))
}

fn device(
    pool: &Pool,
    d: &PoolDevice,
    pf: Option<&PciNetDevice>,
    vf: Option<&Vf>,
    health: Option<&Health>,
    topology: &PfTopology,
    opts: &DraOptions,
) -> (DraDevice, Vec<String>) {
    let name = device_name(&d.pci);
    let mut a = Attrs {
        driver: &opts.driver,
        map: BTreeMap::new(),
        warnings: vec![],
        device: name.clone(),
    };
    let pci = d.pci.to_string();
    a.ours("vendor", hex4(pf.map_or(d.vendor, |p| p.vendor)));
    a.ours("deviceID", hex4(d.device));
    a.ours("pfDeviceID", hex4(pf.map_or(d.device, |p| p.device)));
    a.ours("pciAddress", s(&pci));
    if let Some(pf_name) = &d.pf_name {
        a.ours("PFName", s(pf_name));
    }
    let eswitch = topology
        .eswitch_modes
        .get(&d.pf_pci)
        .map_or(DEFAULT_ESWITCH_MODE, String::as_str);
    a.ours("EswitchMode", s(eswitch));
    if let Some(index) = d.vf_index {
        a.ours("vfID", AttributeValue::Int(i64::from(index)));
    }
    a.ours("pfPciAddress", s(d.pf_pci.to_string()));
    a.ours(
        "linkType",
        s(link_type_name(
            pf.and_then(PciNetDevice::link_type)
                .or(d.link_type.as_deref()),
        )),
    );
    a.ours("rdmaCapable", AttributeValue::Bool(d.rdma));
    a.put("k8s.cni.cncf.io/deviceID".into(), s(&pci));
    a.put("k8s.cni.cncf.io/resourceName".into(), s(pool.full_name()));
    a.put("resource.kubernetes.io/pciBusID".into(), s(&pci));
    if let Some(root) = topology.pcie_roots.get(&d.pf_pci) {
        a.put("resource.kubernetes.io/pcieRoot".into(), s(root));
    }
    let numa = d.numa_node.map_or(-1, i64::from);
    a.put("dra.net/numaNode".into(), AttributeValue::Int(numa));
    if let Some(driver) = &d.driver {
        a.ours("driver", s(driver));
    }
    let mtu = match vf {
        Some(vf) => vf.netdev_details.as_ref().and_then(|n| n.mtu),
        None => pf.and_then(|p| p.netdevs.first()).and_then(|n| n.mtu),
    };
    if let Some(mtu) = mtu {
        a.ours("mtu", AttributeValue::Int(i64::from(mtu)));
    }
    if let Some(pf_netdev) = pf.and_then(|p| p.netdevs.first()) {
        // The daemon's health follows link notifications; discovery's sysfs read may be older.
        let up = match health {
            Some(Health::Healthy) => true,
            Some(Health::Unhealthy(Unhealthy::PfDown { .. } | Unhealthy::PfNoCarrier { .. })) => {
                false
            }
            Some(Health::Unhealthy(_)) | None => pf_netdev.is_link_up(),
        };
        a.ours("linkState", s(if up { "up" } else { "down" }));
    }
    let taints = match health {
        Some(Health::Unhealthy(why)) if opts.taints => vec![DeviceTaint {
            key: taint_key(&opts.driver),
            value: Some(unhealthy_reason(why).into()),
            effect: TAINT_EFFECT.into(),
            time_added: None,
        }],
        _ => vec![],
    };
    (
        DraDevice {
            name,
            attributes: a.map,
            taints,
        },
        a.warnings,
    )
}

/// The node's pool devices as DRA devices, in PCI order.
///
/// `health` holds the daemon's live health by PCI address (a device missing there is
/// Healthy; a PF link state there overrides what discovery read). A device left out of the
/// pools' current assignment but still tracked (e.g. gone, driver mismatch) is not published:
/// the scheduler must not allocate it, and the taint covers only devices that still exist.
pub fn build_devices(
    node: &Node,
    pools: &Pools,
    health: &BTreeMap<PciAddress, Health>,
    topology: &PfTopology,
    opts: &DraOptions,
) -> DraDevices {
    let mut devices = vec![];
    let mut warnings = vec![];
    for_each_device(node, pools, health, topology, opts, |dev, w| {
        devices.extend(dev);
        warnings.extend(w);
    });
    DraDevices {
        driver: opts.driver.clone(),
        taints: opts.taints,
        devices,
        warnings,
    }
}

/// [`build_devices`] one device at a time, in PCI order, without holding the list (the daemon
/// digests and writes 1,024 devices this way): `f` gets each device with its warnings, or only
/// the warnings of a device that cannot be published.
pub fn for_each_device(
    node: &Node,
    pools: &Pools,
    health: &BTreeMap<PciAddress, Health>,
    topology: &PfTopology,
    opts: &DraOptions,
    mut f: impl FnMut(Option<DraDevice>, Vec<String>),
) {
    // Which pool's entry names each device (a later pool's wins), in PCI order.
    let mut order: BTreeMap<PciAddress, (usize, usize)> = BTreeMap::new();
    for (p, pool) in pools.pools.iter().enumerate() {
        // Auxiliary devices share their parent's PCI address; DRA names devices by it.
        for (i, d) in pool.devices.iter().enumerate() {
            if d.aux().is_none() {
                order.insert(d.pci, (p, i));
            }
        }
    }
    for (p, i) in order.into_values() {
        let pool = &pools.pools[p];
        let d = &pool.devices[i];
        let pf = node.device(&d.pf_pci);
        let vf = d.vf_index.and_then(|_| node.vf(&d.pci)).map(|(_, vf)| vf);
        let (dev, mut w) = device(pool, d, pf, vf, health.get(&d.pci), topology, opts);
        if dev.attributes.len() > MAX_ATTRIBUTES {
            // Cannot happen with the attributes above (at most 18); guards future additions.
            w.push(format!(
                "device {}: {} attributes exceed the API's {MAX_ATTRIBUTES}: not published",
                dev.name,
                dev.attributes.len()
            ));
            f(None, w);
            continue;
        }
        f(Some(dev), w);
    }
}

/// `spec.pool` of a slice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePool {
    pub name: String,
    pub generation: i64,
    pub resource_slice_count: i64,
}

/// The `spec` of one ResourceSlice, as the API writes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SliceSpec {
    pub driver: String,
    pub pool: ResourcePool,
    pub node_name: String,
    pub devices: Vec<DraDevice>,
}

/// The node's slices at pool `generation`: the devices in order, cut at the limit; none for no
/// devices (the publisher then deletes what is there).
pub fn slice_specs(devices: &DraDevices, node_name: &str, generation: i64) -> Vec<SliceSpec> {
    let per = if devices.taints {
        MAX_DEVICES_PER_SLICE_WITH_TAINTS
    } else {
        MAX_DEVICES_PER_SLICE
    };
    let chunks: Vec<&[DraDevice]> = devices.devices.chunks(per).collect();
    let count = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
    chunks
        .into_iter()
        .map(|c| SliceSpec {
            driver: devices.driver.clone(),
            pool: ResourcePool {
                name: node_name.to_string(),
                generation,
                resource_slice_count: count,
            },
            node_name: node_name.to_string(),
            devices: c.to_vec(),
        })
        .collect()
}

/// The name of the node's `index`th slice: `<node>-<driver>-<index>`, a DNS subdomain (a
/// hash stands in for the middle when that would pass 253 characters).
pub fn slice_name(node_name: &str, driver: &str, index: usize) -> String {
    let base = format!("{node_name}-{driver}");
    let suffix = format!("-{index}");
    if base.len() + suffix.len() <= 253 {
        return format!("{base}{suffix}");
    }
    // FNV-1a: stable across processes and versions (the name must not change).
    let hash = base.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let keep = 253 - suffix.len() - 17;
    let mut cut = keep.min(base.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = base[..cut].trim_end_matches(['-', '.']);
    format!("{head}-{hash:016x}{suffix}")
}
