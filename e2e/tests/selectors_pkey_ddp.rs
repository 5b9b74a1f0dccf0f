//! The `pKeys` and `ddpProfiles` selectors on simulated nodes (root): discovery reads partition
//! keys from the tree only when a selector uses them, and DDP package names come through the
//! `sriov::ddp::DdpSource` seam, answered here as an ice PF's devlink `dev info` would be (the
//! reply bytes built and parsed by the library's devlink code).

use sriov::config::Config;
use sriov::ddp::{self, DdpSource};
use sriov::discovery::Node;
use sriov::names::PciAddress;
use sriov::netlink::genl::{devlink_info_attrs, parse_devlink_info};
use sriov::netlink::DevlinkInfo;
use sriov::pools;
use sriov::sysfs::Sysfs;
use sriov_e2e::sim::{unique_name, vf_pci, Model, SimNode, SimSpec};
use std::collections::BTreeMap;
use std::fs;

fn lab(spec: SimSpec) -> SimNode {
    SimNode::up(&spec).unwrap_or_else(|e| panic!("lab {}: {e}", spec.name))
}

fn names(pools: &pools::Pools, name: &str) -> Vec<String> {
    pools
        .pool(name)
        .unwrap()
        .devices
        .iter()
        .map(|d| d.pci.to_string())
        .collect()
}

/// Upstream pkg/netdevice/pciNetDevice.go `NewPciNetDevice` reads the key only for link type
/// `infiniband`, through pkg/utils/utils.go `GetPKey` (sriovnet `GetPKeyByIndexFromPci`:
/// `infiniband/<first>/ports/1/pkeys/0`); pkg/resources/pKeySelector.go compares it exactly
/// and never takes a device without one.
#[test]
fn p_keys_select_infiniband_vfs_by_their_partition_key() {
    let node = lab(SimSpec::new(unique_name("pkey"))
        .pfs(2)
        .vfs(3)
        .model(Model::Mellanox)
        .rdma(true)
        .links(false));
    let sys = node.sysfs_root().to_path_buf();
    let dev = |pci: &str| sys.join("bus/pci/devices").join(pci);
    // PF 1's port is InfiniBand (ARPHRD_INFINIBAND); PF 0 stays Ethernet (RoCE).
    fs::write(dev("0000:3c:00.0").join("net/ens2f0/type"), "32\n").unwrap();
    let key = |pf: u32, k: u32, value: &str| {
        let pci = vf_pci(pf, k);
        let ib = dev(&pci).join("infiniband");
        let first = fs::read_dir(&ib)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        let dir = ib.join(first).join("ports/1/pkeys");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("0"), format!("{value}\n")).unwrap();
    };
    key(1, 0, "0x8001");
    key(1, 1, "0xffff");
    // VF 2 of PF 1 has no key file; PF 0's VF has a key but an Ethernet link.
    key(0, 0, "0x8001");
    let config = Config::parse(
        r#"{"resourceList": [
            {"resourceName": "ib_part", "selectors": {"pKeys": ["0x8001"]}},
            {"resourceName": "ib_default", "selectors": {"pKeys": ["0xffff", "0x7fff"]}},
            {"resourceName": "rest", "selectors": {"vendors": ["15b3"]}}
        ]}"#,
        "mellanox.com",
    )
    .unwrap();
    let sysfs = Sysfs::new(&sys);
    let opts = pools::discovery_options(&config);
    assert!(opts.p_keys);
    let found = Node::discover(&sysfs, &opts).unwrap();
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    let p = pools::assign(&config, &found, "mellanox.com", &[]);
    assert_eq!(names(&p, "mellanox.com/ib_part"), [vf_pci(1, 0)]);
    assert_eq!(names(&p, "mellanox.com/ib_default"), [vf_pci(1, 1)]);
    assert_eq!(names(&p, "mellanox.com/rest").len(), 4);

    // Without a pKeys selector nothing of it is read.
    let plain = Config::parse(r#"{"resourceList": [{"resourceName": "a"}]}"#, "x.io").unwrap();
    let before = sysfs.reads();
    let without = Node::discover(&sysfs, &pools::discovery_options(&plain)).unwrap();
    let plain_reads = sysfs.reads() - before;
    let before = sysfs.reads();
    Node::discover(&sysfs, &opts).unwrap();
    let pkey_reads = sysfs.reads() - before;
    assert!(without.selector_attrs.is_empty());
    // Per InfiniBand device (the 3 VFs of PF 1): list infiniband/, read the key.
    assert_eq!(pkey_reads - plain_reads, 3 * 2);
}

/// devlink `dev info` as ice answers it: the running package as `fw.app.name` on the PF (its
/// iavf VFs have no devlink instance). Answered from reply bytes the library parses.
struct EmulatedIce {
    replies: Vec<Vec<u8>>,
    fallback_asked: Vec<PciAddress>,
    fallback_answers: BTreeMap<PciAddress, String>,
}

impl DdpSource for EmulatedIce {
    fn devlink_profiles(&mut self) -> Result<BTreeMap<PciAddress, String>, String> {
        let mut out = BTreeMap::new();
        for r in &self.replies {
            let info = parse_devlink_info(r).map_err(|e| e.to_string())?;
            if let (Ok(pci), Some(name)) =
                (PciAddress::parse(&info.dev), info.version(ddp::FW_APP_NAME))
            {
                out.insert(pci, name.to_string());
            }
        }
        Ok(out)
    }

    fn fallback(&mut self, pci: &PciAddress) -> Result<Option<String>, String> {
        self.fallback_asked.push(*pci);
        Ok(self.fallback_answers.get(pci).cloned())
    }
}

fn ice_reply(pf: &str, package: &str) -> Vec<u8> {
    devlink_info_attrs(&DevlinkInfo {
        bus: "pci".into(),
        dev: pf.into(),
        driver: Some("ice".into()),
        serial_number: Some("00-01-02-ff-ff-03-04-05".into()),
        fixed: vec![("board.id".into(), "K91258-000".into())],
        running: vec![
            ("fw.mgmt".into(), "5.4.5".into()),
            ("fw.app.name".into(), package.into()),
            ("fw.app".into(), "1.3.30.0".into()),
        ],
        stored: vec![],
    })
}

/// Upstream's documented E810 config (docs/ddp/e800/configMap.yaml; its `devices` ["1889"]
/// swapped for the lab's VF ID): pkg/netdevice/pciNetDevice.go `GetDDPProfiles` takes the
/// VF's devlink answer, else its PF's, else the ddptool fallback; pkg/resources/ddpSelector.go
/// drops devices without a profile.
#[test]
fn ddp_profiles_select_vfs_by_their_pfs_package() {
    let node = lab(SimSpec::new(unique_name("ddp")).pfs(3).vfs(2).links(false));
    let config = Config::parse(
        r#"{"resourceList": [{
                "resourceName": "e800_default", "resourcePrefix": "intel.com",
                "selectors": [{"vendors": ["8086"], "devices": ["154c"],
                               "ddpProfiles": ["ICE OS Default Package"]}]
            }, {
                "resourceName": "e800_comms", "resourcePrefix": "intel.com",
                "selectors": [{"vendors": ["8086"], "devices": ["154c"],
                               "ddpProfiles": ["ICE COMMS Package"]}]
            }]}"#,
        "intel.com",
    )
    .unwrap();
    assert!(pools::uses_ddp_profiles(&config));
    let sysfs = Sysfs::new(node.sysfs_root());
    let mut found = Node::discover(&sysfs, &pools::discovery_options(&config)).unwrap();
    let mut source = EmulatedIce {
        replies: vec![
            ice_reply("0000:3b:00.0", "ICE OS Default Package"),
            ice_reply("0000:3c:00.0", "ICE COMMS Package"),
        ],
        fallback_asked: vec![],
        // PF 2 has no devlink answer: its first VF is found by the fallback (ddptool).
        fallback_answers: BTreeMap::from([(
            PciAddress::parse(&vf_pci(2, 0)).unwrap(),
            "ICE COMMS Package".to_string(),
        )]),
    };
    ddp::read_profiles(&mut found, &mut source);
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    let p = pools::assign(&config, &found, "intel.com", &[]);
    assert_eq!(
        names(&p, "intel.com/e800_default"),
        [vf_pci(0, 0), vf_pci(0, 1)]
    );
    assert_eq!(
        names(&p, "intel.com/e800_comms"),
        [vf_pci(1, 0), vf_pci(1, 1), vf_pci(2, 0)]
    );
    // Only the devices devlink had nothing for (PF 2's VFs, the plain NIC) went to the fallback.
    let asked: Vec<String> = source
        .fallback_asked
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(asked, ["0000:00:1f.6", &vf_pci(2, 0), &vf_pci(2, 1)]);
}
