//! Which VF an ADD gets:
//!
//! 1. `deviceID` / `runtimeConfig.deviceID` / `pciBusID` (Multus, or a NAD naming one VF);
//! 2. a pod (`K8S_POD_UID`) with DRA claims the node daemon prepared: the VF its record
//!    ([`sriov::dra_record`]) gives the pod, of `resourceName` and/or of the claim `claimName`
//!    when the config names them, the first one not yet attached (works without Multus);
//! 3. `resourceName` with `K8S_POD_NAME` and `K8S_POD_NAMESPACE`: the pod's VFs of that resource
//!    from kubelet's pod resources API (works without Multus), the first one not yet attached;
//! 4. `resourceName` without Kubernetes (podman): a free VF of that pool of the device plugin
//!    config (the node-local `poolConfig`), claimed under its lock so parallel ADDs never pick the
//!    same VF.
//!
//! The VF comes back with its lock held.

use crate::commands::Ctx;
use crate::env::CniEnv;
use crate::spec::{CniError, ErrorCode};
use sriov::names::PciAddress;
use sriov::state::{StateDir, VfLock};
use std::time::Duration;

fn state_err(e: sriov::state::StateError) -> CniError {
    CniError::new(ErrorCode::Io, e.to_string())
}

/// Picks and locks the VF for this ADD.
pub fn select(ctx: &Ctx) -> Result<(PciAddress, VfLock), CniError> {
    let (conf, env, state) = (&ctx.conf, &ctx.env, &ctx.state);
    if let Some(pci) = conf.device_id {
        return Ok((pci, state.lock_vf(pci).map_err(state_err)?));
    }
    if let Some(picked) = from_dra_records(ctx)? {
        return Ok(picked);
    }
    let Some(resource) = conf.resource_name.as_deref() else {
        return Err(CniError::config(
            "deviceID: no VF given: set deviceID (Multus passes it as runtimeConfig.deviceID), or resourceName",
        ));
    };
    if let Some((pod, namespace)) = env.args.pod() {
        let ids = pod_resources(&ctx.node.pod_resources_socket, pod, namespace, resource)?;
        return pick_for_pod(state, env, &ids, resource, pod, namespace);
    }
    claim_from_pool(ctx, resource)
}

/// The pod's VFs from the daemon's DRA records, if it has a records folder and the pod
/// (`K8S_POD_UID`) has prepared claims; `claimName` without a match is an error (the config
/// asked for a claim), anything else without a match falls through to the other ways.
fn from_dra_records(ctx: &Ctx) -> Result<Option<(PciAddress, VfLock)>, CniError> {
    let Some(pod_uid) = ctx.env.args.pod_uid.as_deref() else {
        return Ok(None);
    };
    let claim = ctx.conf.claim_name.as_deref();
    let records = match sriov::dra_record::Records::open(&ctx.node.dra_state_dir, false) {
        Ok(r) => r,
        Err(sriov::dra_record::RecordError::File(e))
            if e.errno() == Some(nix::errno::Errno::ENOENT) && claim.is_none() =>
        {
            return Ok(None)
        }
        Err(e) => return Err(CniError::new(ErrorCode::Io, format!("draStateDir: {e}"))),
    };
    let found = records
        .devices_for_pod(pod_uid, ctx.conf.resource_name.as_deref(), claim)
        .map_err(|e| CniError::new(ErrorCode::Io, format!("draStateDir: {e}")))?;
    let ids: Vec<PciAddress> = found
        .iter()
        .filter_map(|(_, d)| PciAddress::parse(&d.pci).ok())
        .collect();
    if ids.is_empty() {
        return match claim {
            Some(c) => Err(CniError::config(format!(
                "claimName: pod {pod_uid} has no prepared VF of claim {c:?}"
            ))),
            None => Ok(None),
        };
    }
    let what = claim.map_or_else(
        || {
            ctx.conf
                .resource_name
                .clone()
                .unwrap_or_else(|| "its DRA claims".into())
        },
        |c| format!("claim {c}"),
    );
    let (state, env) = (&ctx.state, &ctx.env);
    for &pci in &ids {
        let lock = state.lock_vf(pci).map_err(state_err)?;
        match state.load(&pci).map_err(state_err)? {
            None => return Ok(Some((pci, lock))),
            Some(r) if r.owner.is(&env.container_id, &env.ifname) => return Ok(Some((pci, lock))),
            Some(_) => continue,
        }
    }
    Err(CniError::new(
        ErrorCode::VfBusy,
        format!(
            "pod {pod_uid} has {} prepared VF(s) of {what}, all already attached",
            ids.len()
        ),
    ))
}

/// Multus' order: the pod's device IDs of the resource, sorted; the first one without a record
/// (or whose record is this attachment's, e.g. after a failed ADD) is ours.
fn pick_for_pod(
    state: &StateDir,
    env: &CniEnv,
    ids: &[PciAddress],
    resource: &str,
    pod: &str,
    namespace: &str,
) -> Result<(PciAddress, VfLock), CniError> {
    for &pci in ids {
        let lock = state.lock_vf(pci).map_err(state_err)?;
        match state.load(&pci).map_err(state_err)? {
            None => return Ok((pci, lock)),
            Some(r) if r.owner.is(&env.container_id, &env.ifname) => return Ok((pci, lock)),
            Some(_) => continue,
        }
    }
    Err(CniError::new(
        ErrorCode::VfBusy,
        format!(
            "resourceName: pod {namespace}/{pod} has {} VF(s) of {resource} from kubelet, all already attached",
            ids.len()
        ),
    ))
}

/// Asks kubelet which devices of `resource` the pod holds. The only path with an async runtime:
/// a current-thread runtime built here, so plain ADDs never pay for one.
fn pod_resources(
    socket: &std::path::Path,
    pod: &str,
    namespace: &str,
    resource: &str,
) -> Result<Vec<PciAddress>, CniError> {
    use sriov_proto::podresources::v1::{
        pod_resources_lister_client::PodResourcesListerClient, GetPodResourcesRequest,
        ListPodResourcesRequest, PodResources,
    };
    let socket = socket.to_path_buf();
    let unavailable = |msg: String| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("podResourcesSocket: {msg}"),
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unavailable(format!("cannot start a runtime: {e}")))?;
    let pods: Vec<PodResources> = rt.block_on(async {
        let channel =
            tokio::time::timeout(Duration::from_secs(5), sriov_proto::connect_unix(&socket))
                .await
                .map_err(|_| unavailable(format!("{} did not answer in 5 s", socket.display())))?
                .map_err(|e| unavailable(format!("cannot connect to {}: {e}", socket.display())))?;
        let mut client = PodResourcesListerClient::new(channel);
        let get = GetPodResourcesRequest {
            pod_name: pod.to_string(),
            pod_namespace: namespace.to_string(),
        };
        match tokio::time::timeout(Duration::from_secs(5), client.get(get)).await {
            Ok(Ok(r)) => Ok(r.into_inner().pod_resources.into_iter().collect()),
            // Older kubelets have no Get (Unimplemented): List and filter.
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                let list = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.list(ListPodResourcesRequest {}),
                )
                .await
                .map_err(|_| unavailable("List timed out".into()))?
                .map_err(|s| unavailable(format!("List: {}", s.message())))?;
                Ok(list.into_inner().pod_resources)
            }
            // Unknown pod (or one without devices): nothing for it.
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(Vec::new()),
            Ok(Err(s)) => Err(unavailable(format!(
                "Get {namespace}/{pod}: {}",
                s.message()
            ))),
            Err(_) => Err(unavailable("Get timed out".into())),
        }
    })?;
    let mut ids: Vec<PciAddress> = pods
        .iter()
        .filter(|p| p.name == pod && p.namespace == namespace)
        .flat_map(|p| p.containers.iter())
        .flat_map(|c| c.devices.iter())
        .filter(|d| d.resource_name == resource)
        .flat_map(|d| d.device_ids.iter())
        .filter_map(|id| PciAddress::parse(id).ok())
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Err(CniError::config(format!(
            "resourceName: kubelet reports no {resource} device for pod {namespace}/{pod}"
        )));
    }
    Ok(ids)
}

/// Claims the first free VF of the pool: not locked by another call, no record, and its netdev
/// (if it has a kernel driver) still on the node.
fn claim_from_pool(ctx: &Ctx, resource: &str) -> Result<(PciAddress, VfLock), CniError> {
    let (pool_config, state, sysfs) = (ctx.node.pool_config.as_path(), &ctx.state, &ctx.sysfs);
    use sriov::config::{Config, DEFAULT_RESOURCE_PREFIX};
    let config = Config::load(pool_config, DEFAULT_RESOURCE_PREFIX)
        .map_err(|e| CniError::config(format!("poolConfig: {e}")))?;
    let node = sriov::pools::discover_for(sysfs, &config, None)
        .map_err(|e| CniError::new(ErrorCode::Io, format!("sysfsRoot: {e}")))?;
    let pools = sriov::pools::assign(&config, &node, DEFAULT_RESOURCE_PREFIX, &[]);
    let pool = pools
        .pools
        .iter()
        .find(|p| p.full_name() == resource || p.config.resource_name == resource)
        .ok_or_else(|| {
            let known: Vec<String> = pools.pools.iter().map(|p| p.full_name()).collect();
            CniError::config(format!(
                "resourceName: no pool {resource:?} in {} (pools: {})",
                pool_config.display(),
                known.join(", ")
            ))
        })?;
    let mut host = sriov::netlink::NetlinkSocket::new()
        .map_err(|e| CniError::new(ErrorCode::Dataplane, e.to_string()))?;
    let vfs = pool
        .devices
        .iter()
        .filter(|d| d.vf_index.is_some() && d.kind == sriov::pools::DeviceKind::Net);
    for dev in vfs {
        let Some(lock) = state.try_lock_vf(dev.pci).map_err(state_err)? else {
            continue;
        };
        if state.load(&dev.pci).map_err(state_err)?.is_some()
            || ctx.upstream_holder(&dev.pci)?.is_some()
        {
            continue;
        }
        let userspace = dev
            .driver
            .as_deref()
            .is_some_and(|d| sriov::discovery::USERSPACE_DRIVERS.contains(&d));
        let on_node = dev
            .netdev
            .as_deref()
            .is_some_and(|n| host.link_by_name(n).is_ok());
        if userspace || on_node {
            return Ok((dev.pci, lock));
        }
    }
    Err(CniError::new(
        ErrorCode::VfBusy,
        format!(
            "resourceName: every VF of pool {resource} is in use ({} VFs)",
            pool.devices.len()
        ),
    ))
}
