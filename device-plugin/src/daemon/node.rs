//! Discovery, provisioning and reconciling the pools with what was found.

use super::*;

use crate::supervise;
use sriov::health::{track_pool, LinkState, TrackedDevice};
use sriov::pools::{self, Pool, Uplinks};
use sriov::provision::{self, WaitPolicy};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(super) fn discover(
    sysfs: &Sysfs,
    config: &Config,
    netns: Option<&Path>,
    ddptool: Option<PathBuf>,
) -> Result<Discovered, DiscoveryError> {
    crate::fault::panic_at("discovery-panic-once");
    let start = Instant::now();
    let node = pools::discover_for(sysfs, config, ddptool)?;
    Ok(Discovered {
        node,
        uplinks: sriov::discovery::default_route_interfaces(netns),
        took: start.elapsed(),
    })
}

/// Sets what the plan asks for; the errors of the PFs that failed.
fn provision_all(
    sysfs: &Sysfs,
    plan: Vec<(PciAddress, String, Option<u32>, Option<u32>)>,
) -> Result<(), Vec<String>> {
    crate::fault::panic_at("provisioning-panic-once");
    let mut errors = Vec::new();
    for (pci, name, num_vfs, mtu) in plan {
        if let Some(mtu) = mtu {
            match provision::set_pf_mtu(sysfs, &pci, mtu) {
                Ok(true) => tracing::info!(pf = %name, mtu, "PF MTU set"),
                Ok(false) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Some(n) = num_vfs {
            match provision::set_num_vfs(sysfs, &pci, n, WaitPolicy::default()) {
                Ok(true) => tracing::info!(pf = %name, vfs = n, "VF count set"),
                Ok(false) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

impl Daemon {
    /// Discovers on a blocking thread; the result (or the panic) comes back as
    /// [`Event::Discovered`].
    pub(super) fn start_discovery(&mut self) {
        self.sched.start(Job::Discovery);
        let sysfs = self.ctx.sysfs.clone();
        let config = self.config.clone();
        let netns = self.opts.netns.clone();
        let ddptool = self.opts.ddptool.clone();
        let tx = self.tx.clone();
        supervise::spawn_blocking(
            move || discover(&sysfs, &config, netns.as_deref(), ddptool),
            move |r| {
                let _ = tx.send(Event::Discovered(Box::new(r)));
            },
        );
    }

    /// Sets PF VF counts and MTUs the config asks for, on a blocking thread (the kernel takes
    /// its time to create VFs); the pools follow through the discovery that comes after.
    pub(super) fn start_provisioning(&mut self) {
        if self.config.provisioning.is_empty() || !self.discovered {
            return;
        }
        let plan: Vec<(PciAddress, String, Option<u32>, Option<u32>)> =
            pools::provisioning_plan(&self.config, &self.node)
                .into_iter()
                .map(|(pf, p)| (pf.pci, pf.display_name(), p.num_vfs, p.mtu))
                .collect();
        if plan.is_empty() {
            return;
        }
        self.sched.start(Job::Provisioning);
        let sysfs = self.ctx.sysfs.clone();
        let tx = self.tx.clone();
        supervise::spawn_blocking(
            move || provision_all(&sysfs, plan),
            move |r| {
                let _ = tx.send(Event::Provisioned(r));
            },
        );
    }

    pub(super) fn on_provisioned(&mut self, result: Result<(), TaskError<Vec<String>>>) {
        let retry = self.sched.finish(&Job::Provisioning, result.is_ok());
        match result {
            Ok(()) => self.problems.clear("provisioning"),
            Err(e) => {
                let errors = match e {
                    TaskError::Failed(errors) => errors,
                    TaskError::Panicked(m) => vec![format!("provisioning panicked: {m}")],
                    TaskError::Cancelled => vec!["provisioning was cancelled".into()],
                };
                for error in &errors {
                    self.ctx.metrics.error(ErrorKind::Provisioning);
                    tracing::error!(
                        "provisioning: {error}; retrying in {:?}",
                        retry.unwrap_or_default()
                    );
                }
                self.problems.set("provisioning", errors.join("; "));
            }
        }
        self.sched.schedule(Job::Discovery, Duration::ZERO);
    }

    pub(super) async fn on_discovered(
        &mut self,
        result: Result<Discovered, TaskError<DiscoveryError>>,
    ) {
        let retry = self.sched.finish(&Job::Discovery, result.is_ok());
        let d = match result {
            Ok(d) => d,
            Err(e) => {
                self.ctx.metrics.error(ErrorKind::Discovery);
                let what = match &e {
                    TaskError::Panicked(m) => format!("discovery panicked: {m}"),
                    other => format!("discovery failed: {other}"),
                };
                tracing::error!(
                    "{what}; keeping the devices known so far, retrying in {:?}",
                    retry.unwrap_or_default()
                );
                self.problems.set("discovery", what);
                return;
            }
        };
        self.problems.clear("discovery");
        let first = !self.discovered;
        self.apply_discovery(d).await;
        if first {
            self.sched.schedule(Job::Provisioning, Duration::ZERO);
        }
    }

    pub(super) fn watch_sysfs(&mut self) {
        let Some(fs) = self.fs.as_mut() else { return };
        let sysfs = &self.ctx.sysfs;
        let mut dirs = vec![sysfs.pci_devices_dir()];
        dirs.extend(
            self.node
                .devices
                .iter()
                .filter(|d| d.sriov != sriov::discovery::SriovStatus::NotSupported)
                .map(|d| sysfs.pci_device(&d.pci)),
        );
        // Accelerator PFs (their virtfnN links), and where auxiliary devices come and go.
        dirs.extend(
            self.node
                .accelerators
                .iter()
                .filter(|a| a.pf.is_none())
                .map(|a| sysfs.pci_device(&a.pci)),
        );
        if !self.node.aux_devices.is_empty() {
            dirs.push(sysfs.root().join("bus/auxiliary/devices"));
        }
        let mut drivers: Vec<&str> = self
            .node
            .vfs()
            .filter_map(|(_, vf)| vf.driver.as_deref())
            .chain(
                self.node
                    .accelerators
                    .iter()
                    .filter_map(|a| a.driver.as_deref()),
            )
            .collect();
        drivers.sort_unstable();
        drivers.dedup();
        dirs.extend(
            drivers
                .iter()
                .map(|d| sysfs.root().join("bus/pci/drivers").join(d)),
        );
        for dir in dirs {
            if let Err(e) = fs.watch_sysfs(&dir) {
                tracing::debug!("cannot watch {}: {e}", dir.display());
            }
        }
    }

    pub(super) async fn apply_discovery(&mut self, d: Discovered) {
        self.ctx.metrics.discovery(d.took);
        tracing::debug!(took = ?d.took, devices = d.node.devices.len(), "discovered");
        self.node = d.node;
        self.discovered = true;
        self.uplinks = match d.uplinks {
            Ok(list) => {
                if self.uplinks.is_err() {
                    tracing::info!(uplinks = ?list, "the uplinks are known again");
                }
                self.problems.clear("uplink");
                Ok(list)
            }
            Err(e) => {
                let why =
                    format!("{e}: every netdev that could be the uplink stays out of the pools");
                self.ctx.metrics.error(ErrorKind::Uplink);
                if self.uplinks.as_ref().err() != Some(&why) {
                    tracing::error!("{why}");
                }
                self.problems.set("uplink", why.clone());
                Err(why)
            }
        };
        let mut fallback = Vec::new();
        for pf in &self.node.devices {
            if let Some(n) = pf.netdevs.first() {
                self.pf_names.insert(pf.pci, n.name.clone());
                fallback.push((n.name.clone(), LinkState::from_sysfs(n)));
            }
        }
        self.links.set_fallback(fallback);
        self.watch_sysfs();
        self.reconcile().await;
    }

    /// Brings the running pools in line with the config and the last discovery.
    pub(super) async fn reconcile(&mut self) {
        let uplinks = match &self.uplinks {
            Ok(list) => Uplinks::Known(list),
            Err(_) => Uplinks::Unknown,
        };
        let assigned = pools::assign_with(
            &self.config,
            &self.node,
            &self.opts.resource_prefix,
            uplinks,
        );
        let mut holders: HashMap<String, String> = HashMap::new();
        let mut desired: BTreeMap<String, Pool> = BTreeMap::new();
        for mut pool in assigned.pools {
            let name = pool.full_name();
            for d in &mut pool.devices {
                holders.insert(d.id(), name.clone());
                if d.pf_name.is_none() {
                    d.pf_name = self.pf_names.get(&d.pf_pci).cloned();
                }
            }
            desired.insert(name, pool);
        }
        let removed: Vec<String> = self
            .pools
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for name in removed {
            if let Some(rt) = self.pools.remove(&name) {
                tracing::info!(pool = %name, "pool removed");
                self.stop_pool(rt).await;
            }
        }
        for (name, pool) in desired {
            let elsewhere =
                |d: &sriov::pools::PoolDevice| holders.get(&d.id()).is_some_and(|h| *h != name);
            match self.pools.get(&name) {
                Some(rt) => {
                    let current = rt.current();
                    let same_config = current.config == pool.config;
                    if !same_config {
                        tracing::info!(pool = %name, "pool reconfigured");
                    }
                    let previous: &[TrackedDevice] =
                        if same_config { &current.devices } else { &[] };
                    let devices =
                        track_pool(previous, &pool.devices, &self.node, &self.links, elsewhere);
                    if current.devices.len() != devices.len() {
                        tracing::info!(pool = %name, devices = devices.len(), "pool devices changed");
                    }
                    rt.publish(
                        PoolSnapshot {
                            config: pool.config,
                            devices,
                        },
                        &self.ctx.metrics,
                    );
                }
                None => {
                    let devices =
                        track_pool(&[], &pool.devices, &self.node, &self.links, elsewhere);
                    self.start_pool(
                        name,
                        PoolSnapshot {
                            config: pool.config,
                            devices,
                        },
                    );
                }
            }
        }
        self.remove_cdi_orphans();
    }

    /// `--use-cdi`: `sriov-dp-*` specs no running pool owns go (a previous run's, upstream's).
    fn remove_cdi_orphans(&mut self) {
        let Some(settings) = &self.ctx.cdi else {
            return;
        };
        let keep: Vec<String> = self
            .pools
            .values()
            .map(|rt| crate::cdi::file_name(&rt.current()))
            .collect();
        match crate::cdi::remove_orphans(settings, &keep) {
            Ok(removed) => {
                for f in removed {
                    tracing::info!("removed CDI spec {f}: no pool of ours has it");
                }
            }
            Err(e) => {
                self.ctx.metrics.error(ErrorKind::Cdi);
                tracing::warn!("{e}");
            }
        }
    }
}
