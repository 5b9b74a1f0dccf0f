//! Small fake implementations of every generated service, served together on
//! one Unix socket in a temp dir.

#![allow(dead_code)]

use std::path::PathBuf;
use std::pin::Pin;

use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::pluginregistration as reg;
use sriov_proto::podresources::v1 as pr;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Plays the kubelet's `Registration`: forwards every request to a channel.
pub struct FakeKubelet {
    pub registered: mpsc::UnboundedSender<dp::RegisterRequest>,
}

#[tonic::async_trait]
impl dp::registration_server::Registration for FakeKubelet {
    async fn register(
        &self,
        request: Request<dp::RegisterRequest>,
    ) -> Result<Response<dp::Empty>, Status> {
        let req = request.into_inner();
        if req.version != sriov_proto::DEVICE_PLUGIN_API_VERSION {
            return Err(Status::invalid_argument("unsupported version"));
        }
        self.registered.send(req).ok();
        Ok(Response::new(dp::Empty {}))
    }
}

/// A device plugin with two fixed devices.
pub struct FakePlugin;

pub fn fake_devices() -> Vec<dp::Device> {
    vec![
        dp::Device {
            id: "0000:3b:02.0".into(),
            health: sriov_proto::HEALTHY.into(),
            topology: Some(dp::TopologyInfo {
                nodes: vec![dp::NumaNode { id: 0 }],
            }),
        },
        dp::Device {
            id: "0000:3b:02.1".into(),
            health: sriov_proto::UNHEALTHY.into(),
            topology: None,
        },
    ]
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<dp::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl dp::device_plugin_server::DevicePlugin for FakePlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<dp::DevicePluginOptions>, Status> {
        Ok(Response::new(dp::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<dp::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        // Two updates: first the full list, then the first device only.
        let all = fake_devices();
        let first = vec![all[0].clone()];
        let updates = vec![
            Ok(dp::ListAndWatchResponse { devices: all }),
            Ok(dp::ListAndWatchResponse { devices: first }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(updates))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<dp::PreferredAllocationRequest>,
    ) -> Result<Response<dp::PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let mut ids = c.must_include_device_i_ds.clone();
                for id in c.available_device_i_ds {
                    if ids.len() >= c.allocation_size as usize {
                        break;
                    }
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                dp::ContainerPreferredAllocationResponse { device_i_ds: ids }
            })
            .collect();
        Ok(Response::new(dp::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<dp::AllocateRequest>,
    ) -> Result<Response<dp::AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in request.into_inner().container_requests {
            if c.devices_ids.iter().any(|id| id == "0000:3b:02.1") {
                return Err(Status::failed_precondition(
                    "device 0000:3b:02.1 is unhealthy",
                ));
            }
            let mut r = dp::ContainerAllocateResponse::default();
            r.envs
                .insert("PCIDEVICE_INTEL_COM_SRIOV".into(), c.devices_ids.join(","));
            r.devices.push(dp::DeviceSpec {
                container_path: "/dev/vfio/vfio".into(),
                host_path: "/dev/vfio/vfio".into(),
                permissions: "rw".into(),
            });
            container_responses.push(r);
        }
        Ok(Response::new(dp::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<dp::PreStartContainerRequest>,
    ) -> Result<Response<dp::PreStartContainerResponse>, Status> {
        Ok(Response::new(dp::PreStartContainerResponse {}))
    }
}

/// The plugin side of the plugin watcher API.
pub struct FakeWatcherPlugin {
    pub status: mpsc::UnboundedSender<reg::RegistrationStatus>,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for FakeWatcherPlugin {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: sriov_proto::DEVICE_PLUGIN_TYPE.into(),
            name: "intel.com/sriov".into(),
            endpoint: "/var/lib/kubelet/device-plugins/intel.com_sriov.sock".into(),
            supported_versions: vec![sriov_proto::DEVICE_PLUGIN_API_VERSION.into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        self.status.send(request.into_inner()).ok();
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// The kubelet's pod resources service with one pod.
pub struct FakePodResources;

pub fn fake_pod() -> pr::PodResources {
    pr::PodResources {
        name: "pod-a".into(),
        namespace: "default".into(),
        containers: vec![pr::ContainerResources {
            name: "app".into(),
            devices: vec![pr::ContainerDevices {
                resource_name: "intel.com/sriov".into(),
                device_ids: vec!["0000:3b:02.0".into()],
                topology: Some(pr::TopologyInfo {
                    nodes: vec![pr::NumaNode { id: 0 }],
                }),
            }],
            cpu_ids: vec![2, 3],
            memory: vec![],
            dynamic_resources: vec![],
        }],
    }
}

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for FakePodResources {
    async fn list(
        &self,
        _: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        Ok(Response::new(pr::ListPodResourcesResponse {
            pod_resources: vec![fake_pod()],
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        Ok(Response::new(pr::AllocatableResourcesResponse {
            devices: fake_pod().containers[0].devices.clone(),
            cpu_ids: vec![0, 1, 2, 3],
            memory: vec![],
        }))
    }

    async fn get(
        &self,
        request: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        let req = request.into_inner();
        let pod = fake_pod();
        if req.pod_name != pod.name || req.pod_namespace != pod.namespace {
            return Err(Status::not_found("pod not found"));
        }
        Ok(Response::new(pr::GetPodResourcesResponse {
            pod_resources: Some(pod),
        }))
    }
}

/// Every fake service on one socket in a temp dir; stops when dropped.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub registered: mpsc::UnboundedReceiver<dp::RegisterRequest>,
    pub status: mpsc::UnboundedReceiver<reg::RegistrationStatus>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("test.sock");
        let listener = sriov_proto::bind_unix(&socket).expect("bind");
        let (reg_tx, registered) = mpsc::unbounded_channel();
        let (status_tx, status) = mpsc::unbounded_channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();

        let router = tonic::transport::Server::builder()
            .add_service(dp::registration_server::RegistrationServer::new(
                FakeKubelet { registered: reg_tx },
            ))
            .add_service(dp::device_plugin_server::DevicePluginServer::new(
                FakePlugin,
            ))
            .add_service(reg::registration_server::RegistrationServer::new(
                FakeWatcherPlugin { status: status_tx },
            ))
            .add_service(
                pr::pod_resources_lister_server::PodResourcesListerServer::new(FakePodResources),
            );
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            sriov_proto::serve_unix_incoming(listener),
            async {
                shutdown_rx.await.ok();
            },
        ));
        TestServer {
            dir,
            socket,
            registered,
            status,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("serve");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
    }
}
