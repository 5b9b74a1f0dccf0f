//! Kubelet's `PodResourcesLister` on `pod-resources/kubelet.sock`, answering from the
//! allocations made through the emulator and the devices its plugins advertise.

use super::{Server, Shared, State};
use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::podresources::v1 as pr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

struct Lister {
    shared: Arc<Shared>,
}

fn topology(devices: &[dp::Device], ids: &[String]) -> Option<pr::TopologyInfo> {
    let mut nodes: Vec<i64> = devices
        .iter()
        .filter(|d| ids.contains(&d.id))
        .filter_map(|d| d.topology.as_ref())
        .flat_map(|t| t.nodes.iter().map(|n| n.id))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    (!nodes.is_empty()).then(|| pr::TopologyInfo {
        nodes: nodes.into_iter().map(|id| pr::NumaNode { id }).collect(),
    })
}

fn pod(state: &State, name: &str, namespace: &str) -> Option<pr::PodResources> {
    let allocations: Vec<_> = state
        .pods
        .iter()
        .filter(|a| a.pod == name && a.namespace == namespace)
        .collect();
    if allocations.is_empty() {
        return None;
    }
    let mut containers: Vec<pr::ContainerResources> = Vec::new();
    for a in allocations {
        let devices = state
            .plugins
            .get(&a.resource)
            .map(|p| p.devices.as_slice())
            .unwrap_or(&[]);
        let entry = pr::ContainerDevices {
            resource_name: a.resource.clone(),
            device_ids: a.device_ids.clone(),
            topology: topology(devices, &a.device_ids),
        };
        match containers.iter_mut().find(|c| c.name == a.container) {
            Some(c) => c.devices.push(entry),
            None => containers.push(pr::ContainerResources {
                name: a.container.clone(),
                devices: vec![entry],
                ..Default::default()
            }),
        }
    }
    Some(pr::PodResources {
        name: name.to_string(),
        namespace: namespace.to_string(),
        containers,
    })
}

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for Lister {
    async fn list(
        &self,
        _: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        let state = self.shared.lock();
        let mut names: Vec<(String, String)> = state
            .pods
            .iter()
            .map(|a| (a.pod.clone(), a.namespace.clone()))
            .collect();
        names.sort();
        names.dedup();
        let pod_resources = names
            .iter()
            .filter_map(|(n, ns)| pod(&state, n, ns))
            .collect();
        Ok(Response::new(pr::ListPodResourcesResponse {
            pod_resources,
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        let state = self.shared.lock();
        let devices = state
            .plugins
            .iter()
            .flat_map(|(resource, p)| {
                p.devices
                    .iter()
                    .filter(|d| d.health == sriov_proto::HEALTHY)
                    .map(move |d| pr::ContainerDevices {
                        resource_name: resource.clone(),
                        device_ids: vec![d.id.clone()],
                        topology: topology(std::slice::from_ref(d), std::slice::from_ref(&d.id)),
                    })
            })
            .collect();
        Ok(Response::new(pr::AllocatableResourcesResponse {
            devices,
            ..Default::default()
        }))
    }

    async fn get(
        &self,
        request: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        let req = request.into_inner();
        let state = self.shared.lock();
        let found = pod(&state, &req.pod_name, &req.pod_namespace).ok_or_else(|| {
            Status::not_found(format!(
                "pod {}/{} has no devices",
                req.pod_namespace, req.pod_name
            ))
        })?;
        Ok(Response::new(pr::GetPodResourcesResponse {
            pod_resources: Some(found),
        }))
    }
}

/// Serves the lister on `socket`. Must be called inside the emulator's runtime.
pub(super) fn serve(socket: &Path, shared: Arc<Shared>) -> std::io::Result<Server> {
    let listener = sriov_proto::bind_unix(socket)?;
    let (stop, mut stop_rx) = watch::channel(false);
    let service = pr::pod_resources_lister_server::PodResourcesListerServer::new(Lister { shared });
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(sriov_proto::serve_unix_incoming(listener), async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(Server { stop, task })
}
