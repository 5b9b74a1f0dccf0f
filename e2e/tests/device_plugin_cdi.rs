//! `--use-cdi` end to end: the real daemon on a simulated node writes one CDI spec per pool
//! into its CDI folder, every file checked against the CDI specification's rules
//! (`sriov_e2e::cdi_check`); Allocate returns the annotation upstream returns and
//! `cdi_devices`; specs follow pool changes, leftovers of other runs go, and SIGTERM removes
//! ours. Needs root.

mod dp_common;

use dp_common::*;
use sriov_e2e::cdi_check::check_spec;
use sriov_e2e::sim::SimSpec;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const POOLS: &str = r#"{"resourceList": [
    {"resourceName": "netdev", "selectors": {"drivers": ["iavf"]}},
    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"], "needVhostNet": true}}
]}"#;

const NETDEV_FILE: &str = "sriov-dp-intel.com-net-pci-netdev.yaml";
const DPDK_FILE: &str = "sriov-dp-intel.com-net-pci-dpdk.yaml";

/// Every file in the folder, each spec checked: name → parsed content (other files: Null).
fn specs(dir: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let content = std::fs::read(e.path()).unwrap();
        let v = if name.starts_with("sriov-dp-") {
            check_spec(&content).unwrap_or_else(|why| panic!("{name} breaks the CDI rules: {why}"))
        } else {
            Value::Null
        };
        out.insert(name, v);
    }
    out
}

fn wait_specs(
    dir: &Path,
    what: &str,
    check: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = specs(dir);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn device_names(spec: &Value) -> Vec<String> {
    spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

fn device<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no device {name} in {spec}"))
}

fn node_paths(device: &Value) -> Vec<(String, String)> {
    device["containerEdits"]["deviceNodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n["path"].as_str().unwrap().to_string(),
                        n["hostPath"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn specs_per_pool_allocate_annotations_and_cleanup() {
    // The CDI folder exists before the daemon with a leftover of upstream's plugin (a pool
    // that is no more) and a file of another vendor.
    let cdi_dir = tempfile::tempdir().unwrap();
    let dir = cdi_dir.path().join("cdi");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("sriov-dp-intel.com-net-pci-gone.yaml"), "{}").unwrap();
    std::fs::write(dir.join("nvidia.com-gpu.json"), "{}").unwrap();
    let run = Run {
        extra: vec!["--use-cdi".into(), format!("--cdi-dir={}", dir.display())],
        ..Run::default()
    };
    let mut env = Env::start(
        "dp-cdi",
        SimSpec::default().pfs(2).vfs(4).vfio(1),
        POOLS,
        run,
    );
    let netdev = env.wait_devices("intel.com/netdev", |d| d.len() == 6);
    let dpdk = env.wait_devices("intel.com/dpdk", |d| d.len() == 2);
    let s = wait_specs(&dir, "one spec per pool", |s| {
        s.contains_key(NETDEV_FILE)
            && s.contains_key(DPDK_FILE)
            && !s.contains_key("sriov-dp-intel.com-net-pci-gone.yaml")
    });
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        ["nvidia.com-gpu.json", DPDK_FILE, NETDEV_FILE],
        "the other vendor's file stays"
    );
    for file in [NETDEV_FILE, DPDK_FILE] {
        let mode = std::fs::metadata(dir.join(file)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o644
        );
        assert_eq!(s[file]["cdiVersion"], "0.5.0", "as upstream");
        assert_eq!(s[file]["kind"], "intel.com/net-pci");
    }
    // The devices are the pool's, named by their IDs at kubelet.
    assert_eq!(device_names(&s[NETDEV_FILE]), ids(&netdev));
    assert_eq!(device_names(&s[DPDK_FILE]), ids(&dpdk));
    // A kernel VF: no device nodes, its env entry; a vfio-pci VF: VFIO container and group,
    // vhost-net and tun (needVhostNet), host paths under the node's /dev.
    let kernel = device(&s[NETDEV_FILE], &vf(0, 0));
    assert!(node_paths(kernel).is_empty());
    assert_eq!(
        kernel["containerEdits"]["env"],
        serde_json::json!([format!(
            "PCIDEVICE_INTEL_COM_NETDEV_0000_3B_02_0={}",
            vf(0, 0)
        )])
    );
    let dev = env.lab.paths().dev();
    let group = std::fs::read_link(
        env.lab
            .sysfs_root()
            .join("bus/pci/devices")
            .join(vf(0, 3))
            .join("iommu_group"),
    )
    .unwrap();
    let group = group.file_name().unwrap().to_string_lossy().into_owned();
    let paths = node_paths(device(&s[DPDK_FILE], &vf(0, 3)));
    let want: Vec<(String, String)> = [
        "vfio/vfio".to_string(),
        format!("vfio/{group}"),
        "vhost-net".into(),
        "net/tun".into(),
    ]
    .iter()
    .map(|rel| (format!("/dev/{rel}"), dev.join(rel).display().to_string()))
    .collect();
    assert_eq!(paths, want);

    // Allocate: the annotation upstream returns, the same names in cdi_devices, no device
    // specs (the runtime takes them from the spec), the usual envs.
    let r = env
        .kubelet
        .allocate("intel.com/dpdk", &[vf(0, 3), vf(1, 3)])
        .unwrap();
    let names = [
        format!("intel.com/net-pci={}", vf(0, 3)),
        format!("intel.com/net-pci={}", vf(1, 3)),
    ];
    assert_eq!(
        r.annotations.get("cdi.k8s.io/intel.com_net-pci"),
        Some(&names.join(","))
    );
    assert_eq!(r.annotations.len(), 1);
    assert_eq!(
        r.cdi_devices
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>(),
        names
    );
    assert!(r.devices.is_empty(), "{:?}", r.devices);
    assert_eq!(
        r.envs["PCIDEVICE_INTEL_COM_DPDK"],
        format!("{},{}", vf(0, 3), vf(1, 3))
    );
    // Each name resolves in the spec files as a runtime resolves it (kind, then device).
    let now = specs(&dir);
    for n in &names {
        let (kind, name) = n.split_once('=').unwrap();
        let spec = now
            .values()
            .find(|v| v["kind"] == kind && device_names(v).iter().any(|d| d == name));
        assert!(spec.is_some(), "{n} not found in any spec");
    }

    // The vfio VF's IOMMU group changes behind the daemon's back (a rebind): Allocate reads it
    // and rewrites the spec before it answers.
    let link = env
        .lab
        .sysfs_root()
        .join("bus/pci/devices")
        .join(vf(1, 3))
        .join("iommu_group");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../../../kernel/iommu_groups/977", &link).unwrap();
    env.kubelet.allocate("intel.com/dpdk", &[vf(1, 3)]).unwrap();
    let paths = node_paths(device(&specs(&dir)[DPDK_FILE], &vf(1, 3)));
    assert!(paths.iter().any(|(p, _)| p == "/dev/vfio/977"), "{paths:?}");

    // A pool change rewrites its spec; a pool that goes takes its spec along.
    env.set_config(
        r#"{"resourceList": [{"resourceName": "netdev", "selectors": {"drivers": ["iavf"], "pfNames": ["ens1f0"]}}]}"#,
    );
    let s = wait_specs(&dir, "the new pools' specs", |s| {
        !s.contains_key(DPDK_FILE)
            && s.get(NETDEV_FILE)
                .is_some_and(|v| device_names(v).len() == 3)
    });
    assert_eq!(
        device_names(&s[NETDEV_FILE]),
        [vf(0, 0), vf(0, 1), vf(0, 2)]
    );

    // SIGTERM removes our specs, never the other vendor's.
    let status = env
        .daemon
        .terminate(Duration::from_secs(5))
        .expect("daemon exits");
    assert!(status.success(), "{}", env.daemon.log());
    assert_eq!(
        specs(&dir).keys().collect::<Vec<_>>(),
        ["nvidia.com-gpu.json"]
    );
}

/// `--cdi-spec-version 1.1.0` writes that version, still valid; a version older than the
/// fields need is refused at start.
#[test]
fn newer_spec_versions_on_request() {
    let cdi_dir = tempfile::tempdir().unwrap();
    let dir = cdi_dir.path().join("cdi");
    let run = Run {
        extra: vec![
            "--use-cdi".into(),
            format!("--cdi-dir={}", dir.display()),
            "--cdi-spec-version=1.1.0".into(),
        ],
        ..Run::default()
    };
    let env = Env::start("dp-cdi-v", SimSpec::default().pfs(1).vfs(2), IAVF_POOL, run);
    env.wait_devices("intel.com/net", |d| d.len() == 2);
    let s = wait_specs(&dir, "the pool's spec", |s| {
        s.contains_key("sriov-dp-intel.com-net-pci-net.yaml")
    });
    assert_eq!(
        s["sriov-dp-intel.com-net-pci-net.yaml"]["cdiVersion"],
        "1.1.0"
    );
    let r = env.kubelet.allocate("intel.com/net", &[vf(0, 1)]).unwrap();
    assert_eq!(r.cdi_devices.len(), 1);

    let out = std::process::Command::new(sriov_e2e::workspace_binary("sriov-device-plugin"))
        .args(["run", "--use-cdi", "--cdi-spec-version=0.4.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.4.0") && err.contains("0.5.0"), "{err}");
}
