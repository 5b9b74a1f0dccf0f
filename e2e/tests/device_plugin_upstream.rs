//! The daemon's Allocate answers compared with what the upstream Go device plugin builds for the
//! same devices (its info providers, pkg/infoprovider; device specs, pkg/devices and
//! pkg/resources; device-info files, pkg/netdevice/netResourcePool.go), end to end: the real
//! `sriov-device-plugin run` on a simulated node with uio, no-IOMMU vfio and RDMA devices,
//! driven by the kubelet emulator. Needs root; everything is removed on drop.

mod dp_common;

use dp_common::*;
use serde_json::{json, Value};
use sriov_e2e::kubelet::RegistrationMode;
use sriov_e2e::sim::{self, Model, SimSpec};
use std::path::PathBuf;

/// PF 0 is Intel, PF 1 Mellanox. Per PF: VFs 0-1 kernel (mlx5 ones with an RDMA device each),
/// VF 2 on igb_uio, VF 3 on vfio-pci in no-IOMMU mode.
fn spec() -> SimSpec {
    SimSpec::default()
        .pfs(2)
        .vfs(4)
        .vfio(1)
        .uio(1)
        .noiommu(true)
        .rdma(true)
        .model(Model::Mixed)
}

const CONFIG: &str = r#"{"resourceList": [
    {"resourceName": "rdma", "selectors": {"vendors": ["15b3"], "drivers": ["mlx5_core"], "isRdma": true},
     "additionalInfo": {}},
    {"resourceName": "uio", "selectors": {"drivers": ["igb_uio"], "needVhostNet": true}},
    {"resourceName": "vfio", "selectors": [{"drivers": ["vfio-pci"]}]},
    {"resourceName": "skipped", "selectors": []},
    {"resourceName": "pfnames", "selectors": {"pfNames": ["ENS1F0#0", "ens1f0#1"]}}
]}"#;

fn specs(
    r: &sriov_proto::deviceplugin::v1beta1::ContainerAllocateResponse,
) -> Vec<(String, String)> {
    r.devices
        .iter()
        .map(|d| {
            assert_eq!(d.permissions, "rw");
            (d.container_path.clone(), d.host_path.clone())
        })
        .collect()
}

fn at(root: &std::path::Path, rel: &str) -> String {
    root.join(rel).display().to_string()
}

#[test]
fn allocate_matches_upstream_for_rdma_uio_vhost_and_noiommu() {
    let env = Env::new("dp-up", spec(), CONFIG, RegistrationMode::KubeletSocket);
    let dev: PathBuf = env.lab.paths().dev();
    let rdma = env.wait_devices("intel.com/rdma", |d| d.len() == 2);
    assert_eq!(ids(&rdma), [vf(1, 0), vf(1, 1)]);
    let uio = env.wait_devices("intel.com/uio", |d| d.len() == 2);
    assert_eq!(ids(&uio), [vf(0, 2), vf(1, 2)]);
    let vfio = env.wait_devices("intel.com/vfio", |d| d.len() == 2);
    assert_eq!(ids(&vfio), [vf(0, 3), vf(1, 3)]);
    // pfNames compare case-insensitively and only the first entry naming a PF counts
    // (pkg/resources/deviceSelectors.go `getItem`): VF 0 of ens1f0, not VF 1.
    let by_name = env.wait_devices("intel.com/pfnames", |d| d.len() == 1);
    assert_eq!(ids(&by_name), [vf(0, 0)]);
    // `"selectors": []` leaves that resource out (cmd/sriovdp/manager.go `readConfig`), the
    // others are served.
    let regs = env.kubelet.with_state(|s| {
        let mut r: Vec<String> = s.registrations.iter().map(|r| r.resource.clone()).collect();
        r.sort();
        r
    });
    assert_eq!(
        regs,
        [
            "intel.com/pfnames",
            "intel.com/rdma",
            "intel.com/uio",
            "intel.com/vfio"
        ]
    );

    // RDMA (pkg/infoprovider/rdmaInfoProvider.go `GetEnvVal`, rdmamap `GetRdmaCharDevices`
    // order: issm, umad, uverbs, then rdma_cm), `extra: {}` because additionalInfo is set
    // (pkg/netdevice/pciNetDevice.go `NewPciNetDevice`).
    let id = vf(1, 1);
    let n = sim::rdma_number(1, 1);
    let r = env
        .kubelet
        .allocate("intel.com/rdma", std::slice::from_ref(&id))
        .unwrap();
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_RDMA_INFO"]).unwrap();
    assert_eq!(
        info,
        json!({ id.clone(): {
            "generic": {"deviceID": id},
            "extra": {},
            "rdma": {
                "issm": format!("/dev/infiniband/issm{n}"),
                "umad": format!("/dev/infiniband/umad{n}"),
                "uverbs": format!("/dev/infiniband/uverbs{n}"),
                "rdma_cm": "/dev/infiniband/rdma_cm",
                "rdma_dev": format!("mlx5_{n}"),
            }
        }})
    );
    let want: Vec<(String, String)> = [
        format!("infiniband/issm{n}"),
        format!("infiniband/umad{n}"),
        format!("infiniband/uverbs{n}"),
        "infiniband/rdma_cm".to_string(),
    ]
    .iter()
    .map(|rel| (format!("/dev/{rel}"), at(&dev, rel)))
    .collect();
    assert_eq!(specs(&r), want);
    // The device-information file names the RDMA device
    // (pkg/netdevice/netResourcePool.go `StoreDeviceInfoFile`).
    let file = env
        .devinfo_dir()
        .join(format!("intel.com-rdma-{id}-device.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["pci"]["rdma-device"], format!("mlx5_{n}"));

    // uio + needVhostNet: /dev/uioN per device, then vhost-net and tun once, in provider order
    // (pkg/factory/factory.go `GetDefaultInfoProvider`, pkg/infoprovider/uioInfoProvider.go,
    // vhostNetInfoProvider.go; pkg/resources/pool_stub.go `DeviceSpecExist`).
    let ids2 = [vf(0, 2), vf(1, 2)];
    let (u0, u1) = (sim::uio_number(0, 2), sim::uio_number(1, 2));
    let r = env.kubelet.allocate("intel.com/uio", &ids2).unwrap();
    assert_eq!(
        specs(&r),
        vec![
            (format!("/dev/uio{u0}"), at(&dev, &format!("uio{u0}"))),
            ("/dev/vhost-net".into(), at(&dev, "vhost-net")),
            ("/dev/net/tun".into(), at(&dev, "net/tun")),
            (format!("/dev/uio{u1}"), at(&dev, &format!("uio{u1}"))),
        ]
    );
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_UIO_INFO"]).unwrap();
    let vhost = json!({"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"});
    assert_eq!(
        info[&ids2[0]],
        json!({"generic": {"deviceID": ids2[0]}, "uio": {"mount": format!("/dev/uio{u0}")}, "vhost": vhost})
    );
    assert_eq!(
        info[&ids2[1]]["uio"],
        json!({"mount": format!("/dev/uio{u1}")})
    );
    assert!(info[&ids2[0]].get("extra").is_none(), "no additionalInfo");
    // A node without vhost-net: neither the entry nor the nodes (upstream
    // `VhostNetDeviceExist`), so the container can still start.
    std::fs::remove_file(dev.join("vhost-net")).unwrap();
    let r = env.kubelet.allocate("intel.com/uio", &ids2[..1]).unwrap();
    assert_eq!(
        specs(&r),
        vec![(format!("/dev/uio{u0}"), at(&dev, &format!("uio{u0}")))]
    );
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_UIO_INFO"]).unwrap();
    assert!(info[&ids2[0]].get("vhost").is_none(), "{info}");

    // vfio in no-IOMMU mode (pkg/utils/utils.go `GetVFIODeviceFile`): host node
    // /dev/vfio/noiommu-N, container path and dev-mount /dev/vfio/N.
    let id = vf(0, 3);
    let g = sim::iommu_group(0, 3);
    let r = env
        .kubelet
        .allocate("intel.com/vfio", std::slice::from_ref(&id))
        .unwrap();
    assert_eq!(
        specs(&r),
        vec![
            ("/dev/vfio/vfio".into(), at(&dev, "vfio/vfio")),
            (
                format!("/dev/vfio/{g}"),
                at(&dev, &format!("vfio/noiommu-{g}"))
            ),
        ]
    );
    let info: Value = serde_json::from_str(&r.envs["PCIDEVICE_INTEL_COM_VFIO_INFO"]).unwrap();
    assert_eq!(
        info[&id]["vfio"],
        json!({"mount": "/dev/vfio/vfio", "dev-mount": format!("/dev/vfio/{g}")})
    );
}
