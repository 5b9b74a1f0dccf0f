//! Server and generated clients talk over a Unix socket in a temp dir through
//! `bind_unix`, `serve_unix_incoming`, `connect_unix` and
//! `connect_unix_lazy`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::pluginregistration as reg;
use sriov_proto::podresources::v1 as pr;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn device_plugin_round_trip() {
    let mut server = common::TestServer::start().await;
    let ch = sriov_proto::connect_unix(&server.socket).await.unwrap();

    // Register with the (fake) kubelet.
    let mut kubelet = dp::registration_client::RegistrationClient::new(ch.clone());
    let req = dp::RegisterRequest {
        version: sriov_proto::DEVICE_PLUGIN_API_VERSION.into(),
        endpoint: "intel.com_sriov.sock".into(),
        resource_name: "intel.com/sriov".into(),
        options: Some(dp::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    };
    kubelet.register(req.clone()).await.unwrap();
    let seen = tokio::time::timeout(TIMEOUT, server.registered.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, req);

    // A status error travels back with its code.
    let err = kubelet
        .register(dp::RegisterRequest {
            version: "v1alpha".into(),
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Drive the plugin as the kubelet does.
    let mut plugin = dp::device_plugin_client::DevicePluginClient::new(ch.clone());
    let opts = plugin
        .get_device_plugin_options(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(opts.get_preferred_allocation_available);
    assert!(!opts.pre_start_required);

    let mut stream = plugin
        .list_and_watch(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.devices, common::fake_devices());
    assert_eq!(first.devices[0].health, sriov_proto::HEALTHY);
    assert_eq!(first.devices[1].health, sriov_proto::UNHEALTHY);
    let second = stream.message().await.unwrap().unwrap();
    assert_eq!(second.devices.len(), 1);
    assert!(stream.message().await.unwrap().is_none(), "stream ends");

    let pref = plugin
        .get_preferred_allocation(dp::PreferredAllocationRequest {
            container_requests: vec![dp::ContainerPreferredAllocationRequest {
                available_device_i_ds: vec!["a".into(), "b".into(), "c".into()],
                must_include_device_i_ds: vec!["c".into()],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pref.container_responses[0].device_i_ds, vec!["c", "a"]);

    let alloc = plugin
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec!["0000:3b:02.0".into(), "0000:3b:02.2".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let c = &alloc.container_responses[0];
    assert_eq!(
        c.envs,
        HashMap::from([(
            "PCIDEVICE_INTEL_COM_SRIOV".to_string(),
            "0000:3b:02.0,0000:3b:02.2".to_string()
        )])
    );
    assert_eq!(c.devices[0].host_path, "/dev/vfio/vfio");
    assert_eq!(c.devices[0].permissions, "rw");

    let err = plugin
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec!["0000:3b:02.1".into()],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    plugin
        .pre_start_container(dp::PreStartContainerRequest {
            devices_ids: vec!["0000:3b:02.0".into()],
        })
        .await
        .unwrap();

    server.stop().await;
}

#[tokio::test]
async fn plugin_registration_round_trip() {
    let mut server = common::TestServer::start().await;
    let ch = sriov_proto::connect_unix(&server.socket).await.unwrap();
    let mut watcher = reg::registration_client::RegistrationClient::new(ch);

    let info = watcher
        .get_info(reg::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, sriov_proto::DEVICE_PLUGIN_TYPE);
    assert_eq!(info.name, "intel.com/sriov");
    assert_eq!(info.supported_versions, vec!["v1beta1"]);

    let status = reg::RegistrationStatus {
        plugin_registered: false,
        error: "resource name taken".into(),
    };
    watcher
        .notify_registration_status(status.clone())
        .await
        .unwrap();
    let seen = tokio::time::timeout(TIMEOUT, server.status.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, status);

    server.stop().await;
}

#[tokio::test]
async fn pod_resources_round_trip() {
    let server = common::TestServer::start().await;
    let ch = sriov_proto::connect_unix(&server.socket).await.unwrap();
    let mut lister = pr::pod_resources_lister_client::PodResourcesListerClient::new(ch);

    let list = lister
        .list(pr::ListPodResourcesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.pod_resources, vec![common::fake_pod()]);
    let devs = &list.pod_resources[0].containers[0].devices[0];
    assert_eq!(devs.resource_name, "intel.com/sriov");
    assert_eq!(devs.device_ids, vec!["0000:3b:02.0"]);

    let alloc = lister
        .get_allocatable_resources(pr::AllocatableResourcesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alloc.devices.len(), 1);

    let got = lister
        .get(pr::GetPodResourcesRequest {
            pod_name: "pod-a".into(),
            pod_namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.pod_resources, Some(common::fake_pod()));

    let err = lister
        .get(pr::GetPodResourcesRequest {
            pod_name: "nope".into(),
            pod_namespace: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    server.stop().await;
}

#[tokio::test]
async fn connect_to_missing_socket_fails() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.sock");
    assert!(sriov_proto::connect_unix(&missing).await.is_err());

    // The lazy channel is created at once and fails only when used.
    let ch = sriov_proto::connect_unix_lazy(&missing);
    let mut plugin = dp::device_plugin_client::DevicePluginClient::new(ch);
    let err = plugin
        .get_device_plugin_options(dp::Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn lazy_channel_reaches_a_server_started_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let ch = sriov_proto::connect_unix_lazy(&path);

    // Start a server at that path only now (a stale file is there first).
    std::fs::write(&path, b"stale").unwrap();
    let listener = sriov_proto::bind_unix(&path).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(dp::device_plugin_server::DevicePluginServer::new(
                common::FakePlugin,
            ))
            .serve_with_incoming_shutdown(sriov_proto::serve_unix_incoming(listener), async {
                rx.await.ok();
            }),
    );

    let mut plugin = dp::device_plugin_client::DevicePluginClient::new(ch);
    let opts = tokio::time::timeout(TIMEOUT, plugin.get_device_plugin_options(dp::Empty {}))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(opts.get_preferred_allocation_available);

    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
