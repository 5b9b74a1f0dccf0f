//! Discovery, provisioning and reconciling the pools with what was found.

use super::*;

pub(super) fn discover(
    sysfs: &Sysfs,
    config: &Config,
    netns: Option<&Path>,
) -> Result<Discovered, DiscoveryError> {
    let start = Instant::now();
    let node = Node::discover(sysfs, &pools::discovery_options(config))?;
    Ok(Discovered {
        node,
        default_routes: sriov::discovery::default_route_interfaces(netns),
        took: start.elapsed(),
    })
}

impl Daemon {
    pub(super) fn schedule_discovery(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.discovery_due = Some(self.discovery_due.map_or(at, |d| d.min(at)));
    }

    pub(super) fn start_discovery(&mut self) {
        self.discovery_due = None;
        if self.discovery_running {
            self.discovery_again = true;
            return;
        }
        self.discovery_running = true;
        let sysfs = self.ctx.sysfs.clone();
        let config = self.config.clone();
        let netns = self.opts.netns.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = discover(&sysfs, &config, netns.as_deref());
            let _ = tx.send(Event::Discovered(Box::new(result)));
        });
    }

    /// Sets PF VF counts and MTUs the config asks for, on a blocking thread (the kernel takes
    /// its time to create VFs); the pools follow through the discovery that comes after.
    pub(super) fn start_provisioning(&mut self) {
        if self.config.provisioning.is_empty() {
            return;
        }
        if self.provisioning_running {
            self.provisioning_again = true;
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
        self.provisioning_running = true;
        let sysfs = self.ctx.sysfs.clone();
        let tx = self.tx.clone();
        let metrics = self.ctx.metrics.clone();
        tokio::task::spawn_blocking(move || {
            for (pci, name, num_vfs, mtu) in plan {
                if let Some(mtu) = mtu {
                    match provision::set_pf_mtu(&sysfs, &pci, mtu) {
                        Ok(true) => tracing::info!(pf = %name, mtu, "PF MTU set"),
                        Ok(false) => {}
                        Err(e) => {
                            metrics.error("provisioning");
                            tracing::error!("provisioning: {e}");
                        }
                    }
                }
                if let Some(n) = num_vfs {
                    match provision::set_num_vfs(&sysfs, &pci, n, WaitPolicy::default()) {
                        Ok(true) => tracing::info!(pf = %name, vfs = n, "VF count set"),
                        Ok(false) => {}
                        Err(e) => {
                            metrics.error("provisioning");
                            tracing::error!("provisioning: {e}");
                        }
                    }
                }
            }
            let _ = tx.send(Event::Provisioned);
        });
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
        let mut drivers: Vec<&str> = self
            .node
            .vfs()
            .filter_map(|(_, vf)| vf.driver.as_deref())
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

    pub(super) async fn apply_discovery(&mut self, result: Result<Discovered, DiscoveryError>) {
        let d = match result {
            Ok(d) => d,
            Err(e) => {
                self.ctx.metrics.error("discovery");
                tracing::error!("discovery failed: {e}; keeping the devices known so far");
                self.last_error = Some(format!("discovery failed: {e}"));
                return;
            }
        };
        self.ctx.metrics.discovery(d.took);
        tracing::debug!(took = ?d.took, devices = d.node.devices.len(), "discovered");
        self.node = d.node;
        self.default_routes = d.default_routes;
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
        let assigned = pools::assign(
            &self.config,
            &self.node,
            &self.opts.resource_prefix,
            &self.default_routes,
        );
        let mut holders: HashMap<PciAddress, String> = HashMap::new();
        let mut desired: BTreeMap<String, Pool> = BTreeMap::new();
        for mut pool in assigned.pools {
            let name = pool.full_name();
            for d in &mut pool.devices {
                holders.insert(d.pci, name.clone());
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
            let elsewhere = |p: &PciAddress| holders.get(p).is_some_and(|h| *h != name);
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
    }
}
