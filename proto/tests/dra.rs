//! The DRA plugin APIs (v1, v1beta1) and the DRA health API as the kubelet speaks them: every
//! field on the kubelet's number and wire type (expected bytes written out by hand), and the
//! gRPC paths the generated servers answer on, called by a raw client as the kubelet would.

use std::collections::HashMap;
use std::fmt::Debug;
use std::pin::Pin;

use prost::Message;
use sriov_proto::dra::health::v1 as health;
use sriov_proto::dra::{v1, v1beta1};
use tokio_stream::{Stream, StreamExt};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

fn ld(tag: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 0x80, "short payloads only");
    [vec![tag, payload.len() as u8], payload.to_vec()].concat()
}

fn s(tag: u8, text: &str) -> Vec<u8> {
    ld(tag, text.as_bytes())
}

fn check<M: Message + Default + PartialEq + Debug>(msg: &M, expected: &[u8]) {
    assert_eq!(msg.encode_to_vec(), expected, "{msg:?}");
    assert_eq!(&M::decode(expected).expect("decode"), msg);
}

fn claim_bytes() -> Vec<u8> {
    [s(0x0a, "ns"), s(0x12, "uid-1"), s(0x1a, "c")].concat()
}

#[test]
fn claim_and_requests() {
    let c = v1::Claim {
        namespace: "ns".into(),
        uid: "uid-1".into(),
        name: "c".into(),
    };
    check(&c, &claim_bytes());
    check(
        &v1::NodePrepareResourcesRequest {
            claims: vec![c.clone()],
        },
        &ld(0x0a, &claim_bytes()),
    );
    check(
        &v1::NodeUnprepareResourcesRequest { claims: vec![c] },
        &ld(0x0a, &claim_bytes()),
    );
}

fn device_bytes() -> Vec<u8> {
    [
        s(0x0a, "vf"),
        s(0x12, "worker-1"),
        s(0x1a, "0000-3b-02-1"),
        s(0x22, "k8s.sriov-rs.io/vf=a"),
    ]
    .concat()
}

#[test]
fn prepare_response_v1_with_share_id() {
    let d = v1::Device {
        request_names: vec!["vf".into()],
        pool_name: "worker-1".into(),
        device_name: "0000-3b-02-1".into(),
        cdi_device_ids: vec!["k8s.sriov-rs.io/vf=a".into()],
        share_id: Some("s".into()),
    };
    // share_id: field 5, length-delimited (0x2a), `optional` so present even when empty.
    check(&d, &[device_bytes(), s(0x2a, "s")].concat());
    let empty_share = v1::Device {
        share_id: Some(String::new()),
        ..Default::default()
    };
    check(&empty_share, &[0x2a, 0]);
    let resp = v1::NodePrepareResourcesResponse {
        claims: HashMap::from([(
            "uid-1".to_string(),
            v1::NodePrepareResourceResponse {
                devices: vec![v1::Device {
                    share_id: None,
                    ..d.clone()
                }],
                error: "e".into(),
            },
        )]),
    };
    // map entry { key 1, value 2 { devices 1, error 2 } }
    let value = [ld(0x0a, &device_bytes()), s(0x12, "e")].concat();
    check(
        &resp,
        &ld(0x0a, &[s(0x0a, "uid-1"), ld(0x12, &value)].concat()),
    );
    let un = v1::NodeUnprepareResourcesResponse {
        claims: HashMap::from([(
            "uid-1".to_string(),
            v1::NodeUnprepareResourceResponse { error: "x".into() },
        )]),
    };
    check(
        &un,
        &ld(0x0a, &[s(0x0a, "uid-1"), ld(0x12, &s(0x0a, "x"))].concat()),
    );
}

#[test]
fn v1beta1_has_the_same_layout_without_share_id() {
    let d = v1beta1::Device {
        request_names: vec!["vf".into()],
        pool_name: "worker-1".into(),
        device_name: "0000-3b-02-1".into(),
        cdi_device_ids: vec!["k8s.sriov-rs.io/vf=a".into()],
    };
    check(&d, &device_bytes());
    // A v1 message with share_id decodes as v1beta1 (the field is skipped).
    let v1_bytes = [device_bytes(), s(0x2a, "s")].concat();
    assert_eq!(v1beta1::Device::decode(v1_bytes.as_slice()).unwrap(), d);
    check(
        &v1beta1::NodeUnprepareResourceResponse { error: "x".into() },
        &s(0x0a, "x"),
    );
}

#[test]
fn device_health() {
    let h = health::DeviceHealth {
        device: Some(health::DeviceIdentifier {
            pool_name: "p".into(),
            device_name: "d".into(),
        }),
        health: health::HealthStatus::Unhealthy as i32,
        last_updated_time: 1_700_000_000,
        health_check_timeout_seconds: -1,
        message: "PF down".into(),
    };
    let mut expected = [
        ld(0x0a, &[s(0x0a, "p"), s(0x12, "d")].concat()),
        vec![0x10, 2],
    ]
    .concat();
    // last_updated_time: field 3 varint, int64
    expected.extend_from_slice(&[0x18, 0x80, 0xe2, 0xcf, 0xaa, 0x06]);
    // health_check_timeout_seconds: field 4, a negative int64 takes ten bytes
    expected.push(0x20);
    expected.extend_from_slice(&[0xff; 9]);
    expected.push(0x01);
    expected.extend(s(0x2a, "PF down"));
    check(&h, &expected);
    assert_eq!(health::HealthStatus::Unknown as i32, 0);
    assert_eq!(health::HealthStatus::Healthy as i32, 1);
    check(&health::NodeWatchResourcesRequest {}, &[]);
}

#[test]
fn service_names_and_registration_constants() {
    assert_eq!(
        v1::dra_plugin_server::SERVICE_NAME,
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
    );
    assert_eq!(
        v1beta1::dra_plugin_server::SERVICE_NAME,
        "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"
    );
    assert_eq!(
        health::dra_resource_health_server::SERVICE_NAME,
        "v1.DRAResourceHealth"
    );
    assert_eq!(sriov_proto::dra::DRA_PLUGIN_TYPE, "DRAPlugin");
    assert_eq!(
        sriov_proto::dra::SUPPORTED_VERSIONS,
        ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    );
    assert_eq!(
        sriov_proto::dra::registration_socket_name("sriov.sriov-rs.io"),
        "sriov.sriov-rs.io-reg.sock"
    );
}

/// Answers prepare with one device per claim (named after the claim), unprepare with an error
/// for a claim named "bad"; streams two health updates.
struct Driver;

fn prepared(claims: &[v1::Claim]) -> v1::NodePrepareResourcesResponse {
    let claims = claims
        .iter()
        .map(|c| {
            let device = v1::Device {
                pool_name: "worker-1".into(),
                device_name: format!("dev-{}", c.name),
                ..Default::default()
            };
            (
                c.uid.clone(),
                v1::NodePrepareResourceResponse {
                    devices: vec![device],
                    error: String::new(),
                },
            )
        })
        .collect();
    v1::NodePrepareResourcesResponse { claims }
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for Driver {
    async fn node_prepare_resources(
        &self,
        r: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        Ok(Response::new(prepared(&r.into_inner().claims)))
    }
    async fn node_unprepare_resources(
        &self,
        r: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let claims = r
            .into_inner()
            .claims
            .into_iter()
            .map(|c| {
                let error = if c.name == "bad" { "busy" } else { "" };
                (
                    c.uid,
                    v1::NodeUnprepareResourceResponse {
                        error: error.into(),
                    },
                )
            })
            .collect();
        Ok(Response::new(v1::NodeUnprepareResourcesResponse { claims }))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for Driver {
    async fn node_prepare_resources(
        &self,
        r: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        // The same answer, re-encoded: v1beta1 and v1 share the layout.
        let req =
            v1::NodePrepareResourcesRequest::decode(r.into_inner().encode_to_vec().as_slice())
                .map_err(|e| Status::internal(e.to_string()))?;
        let resp = prepared(&req.claims).encode_to_vec();
        v1beta1::NodePrepareResourcesResponse::decode(resp.as_slice())
            .map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }
    async fn node_unprepare_resources(
        &self,
        _: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        Err(Status::unimplemented("v1 only"))
    }
}

type HealthStream =
    Pin<Box<dyn Stream<Item = Result<health::NodeWatchResourcesResponse, Status>> + Send>>;

fn update(name: &str, status: health::HealthStatus) -> health::NodeWatchResourcesResponse {
    health::NodeWatchResourcesResponse {
        devices: vec![health::DeviceHealth {
            device: Some(health::DeviceIdentifier {
                pool_name: "worker-1".into(),
                device_name: name.into(),
            }),
            health: status as i32,
            ..Default::default()
        }],
    }
}

#[tonic::async_trait]
impl health::dra_resource_health_server::DraResourceHealth for Driver {
    type NodeWatchResourcesStream = HealthStream;
    async fn node_watch_resources(
        &self,
        _: Request<health::NodeWatchResourcesRequest>,
    ) -> Result<Response<HealthStream>, Status> {
        let updates = vec![
            Ok(update("a", health::HealthStatus::Healthy)),
            Ok(update("a", health::HealthStatus::Unhealthy)),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(updates))))
    }
}

#[tokio::test]
async fn kubelet_calls_every_path_of_a_dra_driver() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dra.sock");
    let listener = sriov_proto::bind_unix(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::dra_plugin_server::DraPluginServer::new(Driver))
            .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(Driver))
            .add_service(health::dra_resource_health_server::DraResourceHealthServer::new(Driver))
            .serve_with_incoming_shutdown(sriov_proto::serve_unix_incoming(listener), async {
                stopped.await.ok();
            }),
    );
    let channel = sriov_proto::connect_unix(&socket).await.unwrap();
    let mut grpc = Grpc::new(channel);
    let claims = vec![
        v1::Claim {
            namespace: "ns".into(),
            uid: "u1".into(),
            name: "c1".into(),
        },
        v1::Claim {
            namespace: "ns".into(),
            uid: "u2".into(),
            name: "bad".into(),
        },
    ];

    grpc.ready().await.unwrap();
    let resp: v1::NodePrepareResourcesResponse = grpc
        .unary(
            Request::new(v1::NodePrepareResourcesRequest {
                claims: claims.clone(),
            }),
            PathAndQuery::from_static(
                "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
            ),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.claims["u1"].devices[0].device_name, "dev-c1");
    assert_eq!(resp.claims.len(), 2);

    grpc.ready().await.unwrap();
    let resp: v1::NodeUnprepareResourcesResponse = grpc
        .unary(
            Request::new(v1::NodeUnprepareResourcesRequest {
                claims: claims.clone(),
            }),
            PathAndQuery::from_static(
                "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
            ),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.claims["u1"].error, "");
    assert_eq!(resp.claims["u2"].error, "busy");

    grpc.ready().await.unwrap();
    let resp: v1beta1::NodePrepareResourcesResponse = grpc
        .unary(
            Request::new(v1::NodePrepareResourcesRequest { claims }),
            PathAndQuery::from_static(
                "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
            ),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.claims["u2"].devices[0].device_name, "dev-bad");

    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            Request::new(health::NodeWatchResourcesRequest {}),
            PathAndQuery::from_static("/v1.DRAResourceHealth/NodeWatchResources"),
            ProstCodec::<_, health::NodeWatchResourcesResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut healths = vec![];
    while let Some(u) = stream.next().await {
        healths.push(u.unwrap().devices[0].health);
    }
    assert_eq!(healths, [1, 2]);

    // A path nobody serves.
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<_, v1::NodePrepareResourcesResponse, _>(
            Request::new(v1::NodePrepareResourcesRequest::default()),
            PathAndQuery::from_static("/v1alpha4.Node/NodePrepareResources"),
            ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
