//! The node's "physical adapters" view: each PCI network device with its SR-IOV state, then the
//! pools and the VFs they hold. Built as a value (for `--json`) and rendered as text.

use crate::discovery::{Node, SriovStatus};
use crate::pools::Pools;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct AdapterRow {
    pub name: String,
    pub pci: String,
    /// `8086:1572`
    pub id: String,
    pub driver: Option<String>,
    pub sriov: SriovStatus,
    /// `up`, `down`, `no carrier`, or `-` without a netdev.
    pub link: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub numa_node: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolVfRow {
    pub pci: String,
    pub pf: Option<String>,
    pub vf_index: Option<u32>,
    pub driver: Option<String>,
    pub netdev: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<u32>,
    /// Who has it, from the CNI plugin's records: `<container>/<ifname> in <netns>`.
    pub attached_to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolRow {
    pub resource: String,
    pub devices: Vec<PoolVfRow>,
}

/// Everything `sriov-device-plugin status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub sysfs_root: String,
    pub zero_config: bool,
    pub adapters: Vec<AdapterRow>,
    pub pools: Vec<PoolRow>,
    pub warnings: Vec<String>,
}

fn link_text(n: &crate::discovery::Netdev) -> String {
    match (n.operstate.as_deref(), n.carrier) {
        (Some("up"), Some(false)) => "no carrier".into(),
        (Some("up"), _) => "up".into(),
        (Some(s), _) => s.to_string(),
        (None, _) => "-".into(),
    }
}

impl StatusReport {
    /// Discovers the node, assigns pools per `config` and adds who holds each VF (from the
    /// CNI's `cni_state_dir`): everything `sriov-device-plugin status` shows.
    pub fn collect(
        sysfs: &crate::sysfs::Sysfs,
        config: &crate::config::Config,
        prefix: &str,
        cni_state_dir: Option<&std::path::Path>,
    ) -> Result<StatusReport, crate::discovery::DiscoveryError> {
        let node = crate::pools::discover_for(sysfs, config, None)?;
        // Only this network namespace's default routes matter; unreadable ones leave every
        // netdev out, as in the daemon.
        let routes = crate::discovery::default_route_interfaces(None);
        let uplinks = match &routes {
            Ok(list) => crate::pools::Uplinks::Known(list),
            Err(_) => crate::pools::Uplinks::Unknown,
        };
        let pools = crate::pools::assign_with(config, &node, prefix, uplinks);
        let mut warnings = config.warnings.clone();
        if let Err(e) = &routes {
            warnings.push(format!("{e}: every netdev is left out of the pools"));
        }
        let mut report = StatusReport::build(
            &sysfs.root().display().to_string(),
            &node,
            &pools,
            &warnings,
        );
        if let Some(dir) = cni_state_dir {
            report.add_cni_attachments(dir);
        }
        Ok(report)
    }

    pub fn build(sysfs_root: &str, node: &Node, pools: &Pools, config_warnings: &[String]) -> Self {
        let adapters = node
            .devices
            .iter()
            .map(|d| {
                let net = d.netdevs.first();
                AdapterRow {
                    name: d.display_name(),
                    pci: d.pci.to_string(),
                    id: format!("{:04x}:{:04x}", d.vendor, d.device),
                    driver: d.driver.clone(),
                    sriov: d.sriov,
                    link: net.map(link_text).unwrap_or_else(|| "-".into()),
                    mac: net.and_then(|n| n.mac.clone()),
                    mtu: net.and_then(|n| n.mtu),
                    numa_node: d.numa_node,
                }
            })
            .collect();
        let zero_config = pools.zero_config;
        let pools = pools
            .pools
            .iter()
            .map(|p| PoolRow {
                resource: p.full_name(),
                devices: p
                    .devices
                    .iter()
                    .map(|d| PoolVfRow {
                        pci: d.pci.to_string(),
                        pf: d.pf_name.clone(),
                        vf_index: d.vf_index,
                        driver: d.driver.clone(),
                        netdev: d.netdev.clone(),
                        iommu_group: d.iommu_group,
                        numa_node: d.numa_node,
                        attached_to: None,
                    })
                    .collect(),
            })
            .collect();
        let mut warnings = config_warnings.to_vec();
        warnings.extend(node.warnings.iter().cloned());
        StatusReport {
            sysfs_root: sysfs_root.to_string(),
            zero_config,
            adapters,
            pools,
            warnings,
        }
    }

    /// Fills in which pod holds each device, from the CNI plugin's state folder (`stateDir`).
    /// A missing folder means nothing is attached; unreadable records become warnings.
    pub fn add_cni_attachments(&mut self, state_dir: &std::path::Path) {
        let records = match crate::state::StateDir::open_existing(state_dir)
            .and_then(|s| s.map_or(Ok(Vec::new()), |s| s.records()))
        {
            Ok(r) => r,
            Err(e) => {
                self.warnings
                    .push(format!("CNI state {}: {e}", state_dir.display()));
                return;
            }
        };
        for record in records {
            let r = match record {
                Ok(r) => r,
                Err(e) => {
                    self.warnings.push(format!("CNI state: {e}"));
                    continue;
                }
            };
            let id: String = r.owner.container_id.chars().take(12).collect();
            let netns = r
                .owner
                .netns
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "-".into());
            let state = match (&r.attached, r.orphaned) {
                (_, true) => " (orphaned: restored at the next ADD or GC)",
                (None, false) => " (attaching)",
                (Some(_), false) => "",
            };
            let text = format!("{id}/{} in {netns}{state}", r.owner.ifname);
            let pci = r.pci.to_string();
            for row in self.pools.iter_mut().flat_map(|p| p.devices.iter_mut()) {
                if row.pci == pci {
                    row.attached_to = Some(text.clone());
                }
            }
        }
    }

    /// The human-readable view.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Physical adapters (sysfs: {})", self.sysfs_root);
        let header = [
            "NAME",
            "PCI ADDRESS",
            "ID",
            "DRIVER",
            "SR-IOV",
            "LINK",
            "MTU",
            "NUMA",
        ];
        let rows: Vec<[String; 8]> = self
            .adapters
            .iter()
            .map(|a| {
                [
                    a.name.clone(),
                    a.pci.clone(),
                    a.id.clone(),
                    a.driver.clone().unwrap_or_else(|| "-".into()),
                    a.sriov.to_string(),
                    a.link.clone(),
                    opt(a.mtu),
                    opt(a.numa_node),
                ]
            })
            .collect();
        table(&mut out, &header, &rows);
        let _ = writeln!(out);
        if self.pools.is_empty() {
            let _ = writeln!(out, "Pools: none");
        } else if self.zero_config {
            let _ = writeln!(out, "Pools (no resourceList: one pool per SR-IOV PF)");
        } else {
            let _ = writeln!(out, "Pools");
        }
        for p in &self.pools {
            let _ = writeln!(out, "  {}: {} device(s)", p.resource, p.devices.len());
            let rows: Vec<[String; 7]> = p
                .devices
                .iter()
                .map(|d| {
                    [
                        d.pci.clone(),
                        match (&d.pf, d.vf_index) {
                            (Some(pf), Some(i)) => format!("{pf} vf {i}"),
                            (Some(pf), None) => format!("{pf} (PF)"),
                            (None, _) => "-".into(),
                        },
                        d.driver.clone().unwrap_or_else(|| "-".into()),
                        d.netdev.clone().unwrap_or_else(|| "-".into()),
                        d.iommu_group
                            .map(|g| format!("iommu group {g}"))
                            .unwrap_or_default(),
                        opt(d.numa_node),
                        d.attached_to.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            let mut sub = String::new();
            table(
                &mut sub,
                &[
                    "    DEVICE",
                    "FUNCTION",
                    "DRIVER",
                    "NETDEV",
                    "VFIO",
                    "NUMA",
                    "ATTACHED TO",
                ],
                &rows
                    .into_iter()
                    .map(|mut r| {
                        r[0] = format!("    {}", r[0]);
                        r
                    })
                    .collect::<Vec<_>>(),
            );
            out.push_str(&sub);
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "\nWarnings");
            for w in &self.warnings {
                let _ = writeln!(out, "  {w}");
            }
        }
        out
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn table<const N: usize>(out: &mut String, header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{:<w$}  ", c, w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(out, header.to_vec());
    for r in rows {
        line(out, r.iter().map(String::as_str).collect());
    }
}
