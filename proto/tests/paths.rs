//! The gRPC method paths the generated servers answer on are the kubelet's:
//! a raw client (no generated stub) calls each path by hand over a Unix
//! socket, and an unknown path gets `Unimplemented`.

mod common;

use prost::Message;
use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::pluginregistration as reg;
use sriov_proto::podresources::v1 as pr;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

/// Unary call on a path given as text, like any other gRPC implementation
/// would make it.
async fn raw_unary<Req, Resp>(
    channel: &Channel,
    path: &'static str,
    req: Req,
) -> Result<Resp, Status>
where
    Req: Message + Send + Sync + 'static,
    Resp: Message + Default + Send + Sync + 'static,
{
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec: ProstCodec<Req, Resp> = ProstCodec::default();
    grpc.unary(Request::new(req), PathAndQuery::from_static(path), codec)
        .await
        .map(|r| r.into_inner())
}

#[test]
fn service_names() {
    assert_eq!(
        dp::registration_server::SERVICE_NAME,
        "v1beta1.Registration"
    );
    assert_eq!(
        dp::device_plugin_server::SERVICE_NAME,
        "v1beta1.DevicePlugin"
    );
    assert_eq!(
        reg::registration_server::SERVICE_NAME,
        "pluginregistration.Registration"
    );
    assert_eq!(
        pr::pod_resources_lister_server::SERVICE_NAME,
        "v1.PodResourcesLister"
    );
}

#[tokio::test]
async fn kubelet_method_paths() {
    let server = common::TestServer::start().await;
    let ch = sriov_proto::connect_unix(&server.socket).await.unwrap();

    // deviceplugin v1beta1: Registration (kubelet side)
    let _: dp::Empty = raw_unary(
        &ch,
        "/v1beta1.Registration/Register",
        dp::RegisterRequest {
            version: "v1beta1".into(),
            endpoint: "x.sock".into(),
            resource_name: "intel.com/x".into(),
            options: None,
        },
    )
    .await
    .unwrap();

    // deviceplugin v1beta1: DevicePlugin (plugin side)
    let opts: dp::DevicePluginOptions = raw_unary(
        &ch,
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        dp::Empty {},
    )
    .await
    .unwrap();
    assert!(opts.get_preferred_allocation_available);

    let pref: dp::PreferredAllocationResponse = raw_unary(
        &ch,
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        dp::PreferredAllocationRequest {
            container_requests: vec![dp::ContainerPreferredAllocationRequest {
                available_device_i_ds: vec!["a".into(), "b".into()],
                must_include_device_i_ds: vec![],
                allocation_size: 1,
            }],
        },
    )
    .await
    .unwrap();
    assert_eq!(pref.container_responses[0].device_i_ds, vec!["a"]);

    let alloc: dp::AllocateResponse = raw_unary(
        &ch,
        "/v1beta1.DevicePlugin/Allocate",
        dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec!["0000:3b:02.0".into()],
            }],
        },
    )
    .await
    .unwrap();
    assert_eq!(alloc.container_responses.len(), 1);

    let _: dp::PreStartContainerResponse = raw_unary(
        &ch,
        "/v1beta1.DevicePlugin/PreStartContainer",
        dp::PreStartContainerRequest {
            devices_ids: vec!["a".into()],
        },
    )
    .await
    .unwrap();

    // ListAndWatch is server-streaming
    let mut grpc = Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let codec: ProstCodec<dp::Empty, dp::ListAndWatchResponse> = ProstCodec::default();
    let mut stream = grpc
        .server_streaming(
            Request::new(dp::Empty {}),
            PathAndQuery::from_static("/v1beta1.DevicePlugin/ListAndWatch"),
            codec,
        )
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.devices, common::fake_devices());

    // pluginregistration
    let info: reg::PluginInfo = raw_unary(
        &ch,
        "/pluginregistration.Registration/GetInfo",
        reg::InfoRequest {},
    )
    .await
    .unwrap();
    assert_eq!(info.r#type, "DevicePlugin");
    let _: reg::RegistrationStatusResponse = raw_unary(
        &ch,
        "/pluginregistration.Registration/NotifyRegistrationStatus",
        reg::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        },
    )
    .await
    .unwrap();

    // podresources v1
    let list: pr::ListPodResourcesResponse = raw_unary(
        &ch,
        "/v1.PodResourcesLister/List",
        pr::ListPodResourcesRequest {},
    )
    .await
    .unwrap();
    assert_eq!(list.pod_resources, vec![common::fake_pod()]);
    let alloc: pr::AllocatableResourcesResponse = raw_unary(
        &ch,
        "/v1.PodResourcesLister/GetAllocatableResources",
        pr::AllocatableResourcesRequest {},
    )
    .await
    .unwrap();
    assert_eq!(alloc.cpu_ids, vec![0, 1, 2, 3]);
    let get: pr::GetPodResourcesResponse = raw_unary(
        &ch,
        "/v1.PodResourcesLister/Get",
        pr::GetPodResourcesRequest {
            pod_name: "pod-a".into(),
            pod_namespace: "default".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(get.pod_resources, Some(common::fake_pod()));

    // A path under another package is not served.
    for wrong in [
        "/deviceplugin.v1beta1.Registration/Register",
        "/pluginregistration.v1.Registration/GetInfo",
        "/podresources.v1.PodResourcesLister/List",
    ] {
        let err = raw_unary::<dp::Empty, dp::Empty>(&ch, wrong, dp::Empty {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{wrong}");
    }

    server.stop().await;
}
