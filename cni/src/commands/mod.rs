//! The CNI commands. Each takes a [`Ctx`] and returns the JSON to print or a [`CniError`]; the
//! process boundary (`main.rs`) prints either and picks the exit code.

mod add;
mod check;
mod del;
mod device_info;
mod gc;
mod release;
mod sf;
mod status;

pub use add::add;
pub use check::check;
pub use del::del;
pub use gc::gc;
pub use status::status;

use crate::env::CniEnv;
use crate::ipam::IpamCall;
use crate::netconf::NetConf;
use crate::node_config::NodeConfig;
use crate::spec::{CniError, CniVersion, ErrorCode};
use serde_json::Value;
use sriov::netlink::{NetlinkError, NetlinkSocket, Netns};
use sriov::state::{Owner, StateDir, StateError, VfRecord};
use sriov::sysfs::Sysfs;
use sriov::vf_attach::AttachError;

/// Everything one invocation works with.
pub struct Ctx {
    /// The node-local settings (paths and folders), never from the network config.
    pub node: NodeConfig,
    pub conf: NetConf,
    pub env: CniEnv,
    pub state: StateDir,
    pub sysfs: Sysfs,
    /// The config sent to the IPAM plugin: the one we got, with `cniVersion` 1.1.0 lowered to
    /// 1.0.0 (same IPAM result shape; Debian's plugins stop at 1.0.0).
    pub ipam_config: Vec<u8>,
}

impl Ctx {
    pub fn new(
        node: NodeConfig,
        conf: NetConf,
        env: CniEnv,
        stdin: &[u8],
    ) -> Result<Ctx, CniError> {
        let ipam_config = if conf.ipam.is_some() && conf.cni_version == CniVersion::V110 {
            let mut raw = conf.raw.clone();
            raw.insert("cniVersion".into(), Value::String("1.0.0".into()));
            if let Some(Value::Object(prev)) = raw.get_mut("prevResult") {
                prev.insert("cniVersion".into(), Value::String("1.0.0".into()));
            }
            serde_json::to_vec(&raw).unwrap_or_else(|_| stdin.to_vec())
        } else {
            stdin.to_vec()
        };
        let code = if env.command == crate::spec::Command::Status {
            ErrorCode::NotAvailable
        } else {
            ErrorCode::Io
        };
        let state = StateDir::open(&node.state_dir)
            .map_err(|e| CniError::new(code, format!("stateDir ({}): {e}", node.describe())))?;
        // Pods attached by an older sriov-rs (records on disk) keep their VFs across the upgrade.
        match state.adopt(std::path::Path::new(sriov::state::PREVIOUS_STATE_DIR)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "adopted {n} record(s) of an older sriov-rs from {}",
                sriov::state::PREVIOUS_STATE_DIR
            ),
            Err(e) => tracing::warn!(
                "cannot adopt the records in {}: {e}",
                sriov::state::PREVIOUS_STATE_DIR
            ),
        }
        Ok(Ctx {
            state,
            sysfs: Sysfs::new(&node.sysfs_root),
            node,
            conf,
            env,
            ipam_config,
        })
    }

    /// The IPAM plugin, if the config has one.
    pub fn ipam(&self) -> Option<IpamCall<'_>> {
        let plugin = self.conf.ipam.as_ref()?.get("type")?.as_str()?;
        Some(IpamCall {
            plugin,
            env: &self.env,
            config: &self.ipam_config,
        })
    }

    /// IPAM DEL for an attachment (best effort: the caller collects the error).
    pub fn ipam_del(
        &self,
        container_id: &str,
        ifname: &str,
        netns: Option<&std::path::Path>,
    ) -> Result<(), CniError> {
        match self.ipam() {
            Some(call) => call.run("DEL", container_id, ifname, netns).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Upstream sriov-cni's data folder, if this node has one (attachments made before the
    /// switch).
    pub fn upstream(&self) -> Result<Option<crate::upstream::UpstreamState>, CniError> {
        crate::upstream::UpstreamState::open(&self.node.upstream_state_dir)
    }

    /// The live network namespace upstream sriov-cni says holds `pci`, if any (its allocation
    /// file names one that still exists).
    pub fn upstream_holder(
        &self,
        pci: &sriov::names::PciAddress,
    ) -> Result<Option<std::path::PathBuf>, CniError> {
        let Some(up) = self.upstream()? else {
            return Ok(None);
        };
        Ok(up.allocation(pci)?.filter(|ns| Netns::open(ns).is_ok()))
    }

    /// Removes temporary record files left by killed calls (their writer's PID is gone).
    pub fn remove_stale_temps(&self) {
        match self.state.remove_stale_temps() {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} temporary record file(s) of killed calls"),
            Err(e) => tracing::warn!("cannot clean up temporary record files: {e}"),
        }
    }
}

pub(crate) fn state_err(e: StateError) -> CniError {
    CniError::new(ErrorCode::Io, e.to_string())
}

pub(crate) fn netlink_err(what: &str) -> impl FnOnce(NetlinkError) -> CniError + '_ {
    move |e| CniError::new(ErrorCode::Dataplane, format!("{what}: {e}"))
}

/// The one mapping from dataplane errors to CNI codes; the VF is named once, here.
pub(crate) fn attach_err(
    pci: &sriov::names::PciAddress,
) -> impl FnOnce(AttachError) -> CniError + '_ {
    move |e| CniError::new(attach_code(&e), format!("VF {pci}: {e}"))
}

/// The CNI code of a dataplane error.
pub(crate) fn attach_code(e: &AttachError) -> ErrorCode {
    match e {
        AttachError::Busy(_) => ErrorCode::VfBusy,
        AttachError::Invalid(_) => ErrorCode::InvalidConfig,
        _ => ErrorCode::Dataplane,
    }
}

/// Whether the record's owner still has its namespace (a live pod owns the VF).
pub(crate) fn owner_alive(record: &VfRecord) -> bool {
    !record.orphaned && netns_alive(&record.owner)
}

/// Whether `owner`'s network namespace still exists.
pub(crate) fn netns_alive(owner: &Owner) -> bool {
    owner.netns.as_ref().is_some_and(|p| Netns::open(p).is_ok())
}

/// ADD of a device (`what`: `VF 0000:3b:02.1`, `SF mlx5_core.sf.4`) whose record names
/// `owner`: code 101 when it is this very attachment (DEL it first) or a live pod's (`alive`);
/// `Ok` when the owner is gone and its cleanup may be finished.
pub(crate) fn refuse_if_held(
    what: &str,
    owner: &Owner,
    alive: bool,
    env: &CniEnv,
) -> Result<(), CniError> {
    if owner.is(&env.container_id, &env.ifname) {
        return Err(CniError::new(
            ErrorCode::VfBusy,
            format!(
                "deviceID: {what} is already attached to container {} as {}; DEL it first",
                env.container_id, env.ifname
            ),
        ));
    }
    if alive {
        return Err(CniError::new(
            ErrorCode::VfBusy,
            format!(
                "deviceID: {what} belongs to container {} ({} in {})",
                owner.container_id,
                owner.ifname,
                owner
                    .netns
                    .as_deref()
                    .unwrap_or(std::path::Path::new("?"))
                    .display()
            ),
        ));
    }
    Ok(())
}

/// Opens `CNI_NETNS` and a netlink socket inside it: code 4 when it is missing or not a network
/// namespace (entering it is the final test: `setns` refuses any other kind with EINVAL).
pub(crate) fn open_netns(env: &CniEnv) -> Result<(Netns, NetlinkSocket), CniError> {
    let invalid = |e: NetlinkError| CniError::new(ErrorCode::InvalidEnv, format!("CNI_NETNS: {e}"));
    let path = env.netns.as_deref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnv,
            format!("CNI_NETNS: required for {}", env.command),
        )
    })?;
    let ns = Netns::open(path).map_err(invalid)?;
    let sock = NetlinkSocket::new_in(&ns).map_err(|e| match e.errno() {
        Some(sriov::netlink::Errno::EINVAL) => invalid(e),
        _ => netlink_err("open a netlink socket in CNI_NETNS")(e),
    })?;
    Ok((ns, sock))
}

/// One invocation, from the raw inputs: returns the `cniVersion` to print errors in and the
/// outcome (`Ok(None)`: success without output).
pub fn run(
    command: &str,
    stdin: &[u8],
    get_env: impl Fn(&str) -> Option<String>,
) -> (String, Result<Option<String>, CniError>) {
    // Errors are printed in the version asked for; a config object without one asks for 0.1.0;
    // without a readable config, the newest.
    let requested = match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(o)) => match o.get("cniVersion") {
            None | Some(Value::Null) => Some(crate::spec::IMPLIED_VERSION.to_string()),
            Some(v) => v.as_str().map(str::to_string),
        },
        _ => None,
    }
    .filter(|v| crate::spec::SUPPORTED_VERSIONS.contains(&v.as_str()));
    let version = requested.unwrap_or_else(|| "1.1.0".into());
    let outcome = (|| {
        let command = crate::spec::Command::parse(command)?;
        if command == crate::spec::Command::Version {
            return Ok(Some(crate::spec::version_json(&version)));
        }
        let node = NodeConfig::load(&get_env)?;
        let conf = NetConf::parse_for(stdin, command == crate::spec::Command::Del)?;
        crate::logging::init(
            conf.log_level.as_deref(),
            conf.log_file.as_deref(),
            &node.log_dir,
        );
        if conf.cni_version < command.min_version() {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion: {command} needs {} or newer, got {}",
                    command.min_version(),
                    conf.cni_version
                ),
            ));
        }
        let env = CniEnv::load(command, &get_env)?;
        let ctx = Ctx::new(node, conf, env, stdin)?;
        let started = std::time::Instant::now();
        let out = match command {
            crate::spec::Command::Add => add(&ctx),
            crate::spec::Command::Del => del(&ctx),
            crate::spec::Command::Check => check(&ctx),
            crate::spec::Command::Gc => gc(&ctx),
            crate::spec::Command::Status => status(&ctx),
            crate::spec::Command::Version => unreachable!("answered above"),
        };
        let (cid, ifname, took) = (&ctx.env.container_id, &ctx.env.ifname, started.elapsed());
        match &out {
            Err(e) => tracing::error!("{command} {cid} {ifname}: {e}"),
            // Runtimes call CHECK and STATUS often: only ADD, DEL and GC are worth a line.
            Ok(_)
                if matches!(
                    command,
                    crate::spec::Command::Check | crate::spec::Command::Status
                ) =>
            {
                tracing::debug!("{command} {cid} {ifname}: ok in {took:.1?}")
            }
            Ok(_) => tracing::info!("{command} {cid} {ifname}: ok in {took:.1?}"),
        }
        crate::fault::point("result");
        let out = out?;
        Ok((!out.is_null()).then(|| out.to_string()))
    })();
    (version, outcome)
}
