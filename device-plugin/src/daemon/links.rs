//! Link notifications: the watcher (on a blocking thread, supervised) and what its updates do
//! to device health.

use super::*;
use crate::supervise;
use sriov::health::{refresh_links, LinkState};
use sriov::linkwatch::LinkWatcher;

impl Daemon {
    /// Starts the link watcher; it reports its end (an error or a panic) as
    /// [`Event::LinkWatchEnded`], and is restarted with backoff.
    pub(super) fn start_link_watcher(&mut self) {
        let watcher = match LinkWatcher::open(self.opts.netns.as_deref()) {
            Ok(w) => w,
            Err(e) => {
                self.link_watch_failed(&e.to_string());
                return;
            }
        };
        let (updates, ended) = (self.tx.clone(), self.tx.clone());
        supervise::spawn_blocking(
            move || {
                let mut watcher = watcher;
                loop {
                    let update = watcher.next_update()?;
                    if updates.send(Event::Link(update)).is_err() {
                        return Ok(());
                    }
                }
            },
            move |r| {
                let _ = ended.send(Event::LinkWatchEnded(r));
            },
        );
    }

    fn link_watch_failed(&mut self, why: &str) {
        self.ctx.metrics.error(ErrorKind::Linkwatch);
        let retry = self.sched.finish(&Job::LinkWatch, false);
        tracing::error!(
            "link notifications unavailable ({why}); health follows sysfs at discovery; retrying in {:?}",
            retry.unwrap_or_default()
        );
        self.problems.set(
            "linkwatch",
            format!("link notifications unavailable: {why}"),
        );
        self.links = Links::partial([]);
        self.sched.schedule(Job::Discovery, Duration::ZERO);
    }

    pub(super) fn on_link_watch_ended(&mut self, r: Result<(), TaskError<LinkWatchError>>) {
        match r {
            // The loop is going away.
            Ok(()) | Err(TaskError::Cancelled) => {}
            Err(e) => self.link_watch_failed(&e.to_string()),
        }
    }

    fn refresh_health(&mut self, netdev: Option<&str>) {
        for rt in self.pools.values() {
            if netdev.is_some_and(|n| !rt.uses_pf(n)) {
                continue;
            }
            let mut snapshot = (*rt.current()).clone();
            if refresh_links(&mut snapshot.devices, &self.links) {
                for t in &snapshot.devices {
                    if let sriov::health::Health::Unhealthy(why) = &t.health {
                        tracing::debug!(pool = %rt.shared.name, device = %t.device.pci, "unhealthy: {why}");
                    }
                }
                let (healthy, unhealthy) = snapshot.counts();
                tracing::info!(pool = %rt.shared.name, healthy, unhealthy, "device health changed");
                rt.publish(snapshot, &self.ctx.metrics);
            }
        }
    }

    pub(super) fn on_link(&mut self, update: LinkUpdate) {
        match update {
            LinkUpdate::Snapshot(links) => {
                let mut l = Links::complete(
                    links
                        .iter()
                        .map(|l| (l.name.clone(), LinkState::from_link(l))),
                );
                std::mem::swap(&mut l, &mut self.links);
                // Keep the sysfs states gathered so far.
                let fallback: Vec<(String, LinkState)> = self
                    .node
                    .devices
                    .iter()
                    .filter_map(|pf| {
                        pf.netdevs
                            .first()
                            .map(|n| (n.name.clone(), LinkState::from_sysfs(n)))
                    })
                    .collect();
                self.links.set_fallback(fallback);
                self.sched.finish(&Job::LinkWatch, true);
                self.problems.clear("linkwatch");
                tracing::debug!(links = links.len(), "link snapshot");
                self.refresh_health(None);
            }
            LinkUpdate::Changed(link) => {
                self.ctx.metrics.link_event();
                let known = self.links.get(&link.name).is_some();
                if self.links.set(&link.name, LinkState::from_link(&link)) {
                    self.refresh_health(Some(&link.name));
                }
                if !known {
                    // A new netdev: possibly new VFs or a PF driver coming back.
                    self.sched.schedule(Job::Discovery, DISCOVERY_DEBOUNCE);
                }
            }
            LinkUpdate::Deleted(link) => {
                self.ctx.metrics.link_event();
                if self.links.remove(&link.name) {
                    self.refresh_health(Some(&link.name));
                }
                self.sched.schedule(Job::Discovery, DISCOVERY_DEBOUNCE);
            }
            LinkUpdate::Unparsed(e) => {
                // What the message said is unknown: sysfs tells at the rediscovery.
                self.ctx.metrics.error(ErrorKind::NetlinkParse);
                tracing::warn!("a link notification did not parse: {e}; rediscovering");
                self.sched.schedule(Job::Discovery, DISCOVERY_DEBOUNCE);
            }
        }
    }
}
