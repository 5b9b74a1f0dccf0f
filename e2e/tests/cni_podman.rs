//! A real runtime: podman 4.3.1 with its CNI backend runs containers on a simulated node's VFs
//! through `sriov`. Podman runs inside the node's netns (`nsenter --net`, which keeps the host's
//! cgroup mounts, unlike `ip netns exec`), with its own containers.conf (CNI backend, runc) and
//! a busybox rootfs. Needs root.

mod cni_common;

use cni_common::{install_test_deps, CniLab};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Podman {
    lab: CniLab,
    dir: tempfile::TempDir,
}

impl Podman {
    fn new(prefix: &str) -> Podman {
        install_test_deps();
        let lab = CniLab::new(prefix, |s| s.pfs(1).vfs(4));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "rootfs/bin",
            "rootfs/proc",
            "rootfs/sys",
            "rootfs/dev",
            "rootfs/etc",
            "rootfs/tmp",
            "net.d",
            "plugins",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", d.join("rootfs/bin/busybox")).unwrap();
        for applet in ["sh", "ip", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", d.join("rootfs/bin").join(applet)).unwrap();
        }
        // The plugin is found as `sriov` in a plugin folder of ours, as a wrapper that names
        // the lab's node-local settings: podman runs DEL from its cleanup process (started by
        // conmon), which does not inherit podman's environment.
        let wrapper = d.join("plugins/sriov");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nSRIOV_CNI_NODE_CONFIG={} exec {} \"$@\"\n",
                lab.node_config().display(),
                lab.bin.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\n\
                 cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n[engine]\nruntime = \"runc\"\n",
                d.join("net.d").display(),
                d.join("plugins").display()
            ),
        )
        .unwrap();
        Podman { lab, dir }
    }

    /// Writes the network `name` with one `sriov` plugin configured by `plugin`.
    fn network(&self, name: &str, plugin: serde_json::Value) {
        let mut p = self.lab.conf("1.0.0", plugin);
        p.as_object_mut().unwrap().remove("cniVersion");
        p.as_object_mut().unwrap().remove("name");
        let conflist = json!({"cniVersion": "1.0.0", "name": name, "plugins": [p]});
        std::fs::write(
            self.dir
                .path()
                .join("net.d")
                .join(format!("{name}.conflist")),
            conflist.to_string(),
        )
        .unwrap();
    }

    /// `podman run --rm --network NET ARGS --rootfs ROOTFS /bin/sh -c SCRIPT` in the node netns.
    fn run(&self, net: &str, args: &[&str], script: &str) -> (bool, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.lab.node.netns_path().display()))
            .arg("podman")
            .args(["run", "--rm", "--network", net])
            .args(args)
            .arg("--rootfs")
            .arg(self.dir.path().join("rootfs"))
            .args(["/bin/sh", "-c", script])
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output()
            .expect("run podman");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }
}

fn assert_clean(lab: &CniLab, vfs: &[(&str, &serde_json::Value)]) {
    for (name, before) in vfs {
        assert_eq!(
            &lab.fingerprint(name),
            *before,
            "{name} back and clean after the container exited"
        );
    }
    lab.assert_nothing_held();
}

#[test]
fn podman_runs_a_container_on_a_vf() {
    let pm = Podman::new("cni-podman");
    assert!(Path::new(&pm.plugin_dir()).join("sriov").exists());
    let before = pm.lab.fingerprint("ens1f0v1");
    pm.network(
        "sriov-net",
        json!({"type": "sriov", "deviceID": pm.lab.vf_pci(0, 1), "mtu": 1400, "ipam": pm.lab.host_local("10.99.0.0/24")}),
    );
    let (ok, out) = pm.run(
        "sriov-net",
        &[],
        "ip addr show eth0; cat /sys/class/net/eth0/mtu",
    );
    assert!(ok, "{out}");
    assert!(out.contains("inet 10.99.0."), "address: {out}");
    assert!(out.contains("mtu 1400"), "MTU: {out}");
    assert_clean(&pm.lab, &[("ens1f0v1", &before)]);

    // --mac-address and --ip arrive as CNI_ARGS MAC= and IP=.
    let (ok, out) = pm.run(
        "sriov-net",
        &["--mac-address", "02:00:00:00:99:01", "--ip", "10.99.0.50"],
        "ip addr show eth0",
    );
    assert!(ok, "{out}");
    assert!(out.contains("02:00:00:00:99:01"), "{out}");
    assert!(out.contains("inet 10.99.0.50/24"), "{out}");
    assert_clean(&pm.lab, &[("ens1f0v1", &before)]);
}

#[test]
fn podman_claims_vfs_from_a_pool() {
    let pm = Podman::new("cni-podman-pool");
    let before: Vec<serde_json::Value> = (0..4)
        .map(|k| pm.lab.fingerprint(&format!("ens1f0v{k}")))
        .collect();
    let config = pm.dir.path().join("pcidp.json");
    std::fs::write(
        &config,
        json!({"resourceList": [{"resourceName": "sriov_pool", "selectors": {"pfNames": ["ens1f0#2-3"]}}]}).to_string(),
    )
    .unwrap();
    pm.lab.set_node_config(json!({"poolConfig": config}));
    pm.network(
        "pool-net",
        json!({"type": "sriov", "resourceName": "intel.com/sriov_pool",
               "ipam": pm.lab.host_local("10.98.0.0/24")}),
    );
    // Two containers at once get the pool's two VFs; each sees its own interface.
    let outs: Vec<(bool, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    pm.run(
                        "pool-net",
                        &[],
                        "ip addr show eth0; echo MAC=$(cat /sys/class/net/eth0/address); sleep 2",
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut macs = std::collections::BTreeSet::new();
    for (ok, out) in &outs {
        assert!(ok, "{out}");
        assert!(out.contains("inet 10.98.0."), "{out}");
        macs.insert(
            out.lines()
                .find(|l| l.starts_with("MAC="))
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(macs.len(), 2, "two containers, two VFs: {outs:?}");
    let vfs: Vec<(String, &serde_json::Value)> = (0..4)
        .map(|k| (format!("ens1f0v{k}"), &before[k]))
        .collect();
    let refs: Vec<(&str, &serde_json::Value)> = vfs.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    assert_clean(&pm.lab, &refs);
}
