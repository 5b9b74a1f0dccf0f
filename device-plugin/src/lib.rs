//! The sriov-rs node daemon (`sriov-device-plugin run`), as a library.
//!
//! - [`daemon`]: the state and its event loop (discovery, pools, health, reconfiguration);
//! - [`plugin_server`]: one kubelet `DevicePlugin` server per pool, with a stopper;
//! - [`allocate`]: Allocate / GetPreferredAllocation decisions on a pool snapshot;
//! - [`registration`]: registration through `kubelet.sock`, retried;
//! - [`fswatch`]: inotify on kubelet's folders, the config folder and sysfs;
//! - [`uevent`]: kernel uevents (VFs and drivers the kernel changes by itself);
//! - [`cdi`]: `--use-cdi`, one CDI spec per pool;
//! - [`dra`]: the DRA kubelet plugin (`--mode dra | both`): registration, prepare/unprepare,
//!   health, the DRA devices file;
//! - [`pool`]: the snapshot shared by the daemon and the servers;
//! - [`mtu_locks`]: enforcing the CNI's MTU locks in pods;
//! - [`node_state`]: the SriovNodeState object, when running in a cluster;
//! - [`scheduler`]: the loop's debounced job queue with backoff; [`supervise`]: every task and
//!   blocking job reports how it ended, panics included;
//! - [`metrics`], [`process`] (the `process_*` metrics), [`probes`] (liveness and readiness),
//!   [`http`] (the metrics and probe listeners), [`options`]; [`fault`]: test-only faults
//!   (logging is `sriov::logging`).

pub mod allocate;
pub mod cdi;
pub mod daemon;
pub mod dra;
pub mod fault;
pub mod fswatch;
pub mod http;
pub mod metrics;
pub mod mtu_locks;
pub mod node_state;
pub mod options;
pub mod plugin_server;
pub mod pool;
pub mod probes;
pub mod process;
pub mod registration;
pub mod scheduler;
pub mod supervise;
pub mod uevent;

pub use daemon::{run, DaemonError};
pub use options::{Options, RegistrationMode};
pub use sriov::logging::LogFormat;
