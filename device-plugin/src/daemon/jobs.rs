//! What each scheduled job does; the node-state file; MTU locks.

use super::*;
use crate::supervise;

impl Daemon {
    /// Runs one due job; returns whether it may have changed the node's state.
    pub(super) async fn run(&mut self, job: Job) -> bool {
        match job {
            Job::Heartbeat => {
                self.sched
                    .schedule(Job::Heartbeat, self.probes.heartbeat_interval());
                return false;
            }
            Job::Resync => {
                self.sched.schedule(Job::Resync, self.opts.resync_interval);
                self.resync().await;
            }
            Job::Config => self.check_config(),
            Job::Discovery => self.start_discovery(),
            Job::Provisioning => self.start_provisioning(),
            Job::LinkWatch => self.start_link_watcher(),
            Job::NodeState => {
                self.write_node_state();
                return false;
            }
            Job::MtuLocks => self.check_mtu_locks(),
            Job::FsWatch => self.restart_fs_watcher(),
            Job::Uevent => self.start_uevents(),
            Job::Http(metrics) => self.start_listener(metrics).await,
            job @ (Job::StartServer(_) | Job::Register(_)) => self.retry_pool(job).await,
            Job::DraServer => self.check_dra_sockets().await,
            Job::DraDevices => {
                self.write_dra_devices();
                return false;
            }
        }
        true
    }

    /// The backstop: sockets, config, sysfs and MTU locks re-checked even if no event said so,
    /// and the allocations re-read from kubelet.
    async fn resync(&mut self) {
        let stale: Vec<String> = self
            .pools
            .iter()
            .filter(|(_, rt)| Self::server_needs_restart(rt))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.restart_server(&name).await;
        }
        self.check_dra_sockets().await;
        self.check_config();
        self.sched.schedule(Job::Discovery, Duration::ZERO);
        self.check_mtu_locks();
        if let Some(ns) = &mut self.node_state {
            ns.refresh_allocations().await;
        }
    }

    /// Writes the current state to the node-state file (if there is one and it changed), on a
    /// blocking thread; the outcome comes back as [`Event::NodeStateWritten`].
    fn write_node_state(&mut self) {
        let Some(ns) = &self.node_state else { return };
        let snapshots: Vec<_> = self.pools.values().map(|rt| rt.shared.current()).collect();
        let links = &self.links;
        let Some(status) = ns.pending(
            &self.node,
            snapshots.iter().map(|s| &**s),
            self.config.resources.is_none(),
            self.problems.last(),
            &|name| links.get(name).map(|l| l.admin_up && l.carrier),
        ) else {
            return;
        };
        self.sched.start(Job::NodeState);
        let file = ns.file().to_path_buf();
        let tx = self.tx.clone();
        supervise::spawn_blocking(
            move || crate::node_state::write(&file, &status).map(|()| Box::new(status)),
            move |r| {
                let _ = tx.send(Event::NodeStateWritten(r));
            },
        );
    }

    pub(super) fn on_node_state_written(
        &mut self,
        result: Result<Box<SriovNodeStateStatus>, TaskError<String>>,
    ) {
        let retry = self.sched.finish(&Job::NodeState, result.is_ok());
        let Some(ns) = &mut self.node_state else {
            return;
        };
        match result {
            Ok(status) => {
                ns.written(*status);
                self.problems.clear("node_state");
            }
            Err(e) => {
                self.ctx.metrics.error(ErrorKind::NodeState);
                ns.failed(e.to_string(), retry.unwrap_or_default());
                self.problems
                    .set("node_state", format!("node state not written: {e}"));
            }
        }
        // A cleared or new problem changes lastError; a change made while writing is due too.
        self.node_state_soon();
    }

    /// Enforces the MTU locks recorded now, and watches for new ones (the state folder may only
    /// appear with the first CNI ADD: retried on every resync).
    pub(super) fn check_mtu_locks(&mut self) {
        let dir = self.mtu_locks.records_dir();
        // The CNI creates it at its first ADD; creating it first lets the watch start now.
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
            {
                tracing::debug!("cannot create {}: {e}", dir.display());
            }
        }
        if let Some(fs) = &mut self.fs {
            if dir.is_dir() {
                if let Err(e) = fs.watch_cni_state(&dir) {
                    tracing::debug!("cannot watch {}: {e}", dir.display());
                }
            }
        }
        if !self.mtu_locks.reconcile() {
            self.ctx.metrics.error(ErrorKind::MtuLock);
        }
    }
}
