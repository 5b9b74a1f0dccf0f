//! DRA devices of a simulated node, as the daemon will build them: discovery of the node's
//! sysfs tree, one pool (`intel.com/sriov_net`) of its iavf VFs, the daemon's health.

use std::collections::BTreeMap;

use sriov::config::Config;
use sriov::discovery::{DiscoveryOptions, Node};
use sriov::health::Health;
use sriov::names::PciAddress;
use sriov::sysfs::Sysfs;
use sriov_node_state::dra::{build_devices, DraDevices, DraOptions, PfTopology};

use crate::sim::SimNode;

/// The pool's config.
pub const POOL_CONFIG: &str =
    r#"{"resourceList": [{"resourceName": "sriov_net", "selectors": {"drivers": ["iavf"]}}]}"#;

/// Discovers `sim` now and builds its DRA devices (default driver; taints as asked).
pub fn sim_devices(
    sim: &SimNode,
    taints: bool,
    health: &BTreeMap<PciAddress, Health>,
) -> DraDevices {
    let node = Node::discover(&Sysfs::new(sim.sysfs_root()), &DiscoveryOptions::default())
        .expect("discovery of a simulated node");
    let config = Config::parse(POOL_CONFIG, "intel.com").expect("the pool config");
    let pools = sriov::pools::assign(&config, &node, "intel.com", &[]);
    let opts = DraOptions {
        taints,
        ..Default::default()
    };
    build_devices(&node, &pools, health, &PfTopology::default(), &opts)
}
