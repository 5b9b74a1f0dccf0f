//! The daemon as a DRA kubelet plugin (`--mode dra | both`): registration through kubelet's
//! plugin watcher, `DRAPlugin` v1 and v1beta1 and `DRAResourceHealth` v1 on
//! `<kubelet-dir>/plugins/<driver>/dra.sock` ([`server`]), claims prepared and unprepared
//! ([`prepare`]) from their status, which the sidecar's claim service reads from the API server
//! ([`claims`]: the daemon holds no API credentials), and the node's DRA devices written for the
//! sidecar to publish as ResourceSlices ([`devices_file`]). With `--nri`, the daemon is also a
//! containerd NRI plugin that attaches each pod's prepared VFs to it ([`nri`]).
//!
//! The daemon's main loop publishes a [`DraView`] (its pools' snapshots, health included)
//! whenever the pools change; the services read it without locks.

pub mod claims;
pub mod devices_file;
pub mod nri;
pub mod prepare;
pub mod server;

use crate::pool::{Context, PoolSnapshot};
use sriov::cdi::{SpecDir, Version};
use sriov::dra_record::Records;
use sriov::health::Health;
use sriov_proto::dra::health::v1 as hv1;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The `health_check_timeout_seconds` sent: kubelet marks a device Unknown when its last
/// update is older.
pub const HEALTH_TIMEOUT_SECONDS: i64 = 60;
/// How often the whole health list is sent again when nothing changed.
pub const HEALTH_RESEND: std::time::Duration = std::time::Duration::from_secs(20);

/// What the DRA services read: the pools as they are now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DraView {
    /// The first discovery was applied (before it, no pool holds any device).
    pub ready: bool,
    pub pools: Vec<Arc<PoolSnapshot>>,
}

/// The DRA driver's state shared by its gRPC services.
pub struct Dra {
    pub driver: String,
    /// This node's name: the name of its (one) DRA pool.
    pub node_name: String,
    pub claims_socket: PathBuf,
    pub records: Records,
    pub cdi: SpecDir,
    pub cdi_version: Version,
    pub ctx: Arc<Context>,
    pub view: watch::Receiver<Arc<DraView>>,
    /// One prepare or unprepare at a time.
    pub lock: Mutex<()>,
}

impl Dra {
    /// Every device's health, as `DRAResourceHealth` streams it.
    pub fn health(&self, view: &DraView, now: i64) -> Vec<hv1::DeviceHealth> {
        let mut out: Vec<hv1::DeviceHealth> = view
            .pools
            .iter()
            .flat_map(|p| p.devices.iter())
            .map(|t| {
                let (health, message) = match &t.health {
                    Health::Healthy => (hv1::HealthStatus::Healthy, String::new()),
                    Health::Unhealthy(why) => (hv1::HealthStatus::Unhealthy, why.to_string()),
                };
                hv1::DeviceHealth {
                    device: Some(hv1::DeviceIdentifier {
                        pool_name: self.node_name.clone(),
                        device_name: sriov_node_state::dra::device_name(&t.device.pci),
                    }),
                    health: health as i32,
                    last_updated_time: now,
                    // Health is event-driven; the list is sent again well within this.
                    health_check_timeout_seconds: HEALTH_TIMEOUT_SECONDS,
                    message,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            a.device
                .as_ref()
                .map(|d| &d.device_name)
                .cmp(&b.device.as_ref().map(|d| &d.device_name))
        });
        out
    }
}
