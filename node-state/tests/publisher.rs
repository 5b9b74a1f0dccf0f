//! The publisher against an in-test HTTP server that plays the API server: it records every
//! request (verb, path, query, content type, body) and answers as the API server does (404 for
//! the status of a missing object, the object after an apply, a Status on errors).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sriov_node_state::{
    run, PfStatus, Publisher, PublisherConfig, SriovNodeStateStatus, SriovState, FIELD_MANAGER,
    SRIOV_CAPABLE_LABEL,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

const NODE: &str = "worker-1";
const NODE_UID: &str = "6c1a7a80-0000-4000-8000-000000000001";
const STATUS_PATH: &str = "/apis/sriov-rs.io/v1alpha1/sriovnodestates/worker-1/status";
const OBJECT_PATH: &str = "/apis/sriov-rs.io/v1alpha1/sriovnodestates/worker-1";
const NODE_PATH: &str = "/api/v1/nodes/worker-1";

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
    at: Instant,
}

#[derive(Default)]
struct ApiState {
    requests: Vec<Recorded>,
    object: Option<Value>,
    labels: BTreeMap<String, String>,
    /// Answer the next N status applies with 500.
    fail_status: usize,
}

#[derive(Clone)]
struct FakeApiServer {
    url: String,
    state: Arc<Mutex<ApiState>>,
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApiServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ApiState::default()));
        let server = FakeApiServer {
            url,
            state: state.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    fn with_object(self) -> Self {
        self.state.lock().unwrap().object = Some(
            json!({"apiVersion": "sriov-rs.io/v1alpha1", "kind": "SriovNodeState", "metadata": {"name": NODE}, "spec": {"nodeName": NODE}}),
        );
        self
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }
}

async fn handle(state: &Mutex<ApiState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let mut s = state.lock().unwrap();
    s.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query,
        content_type,
        body: body.clone(),
        at: Instant::now(),
    });
    let (code, answer) = match (method.as_str(), path.as_str()) {
        ("PATCH", STATUS_PATH) if s.fail_status > 0 => {
            s.fail_status -= 1;
            (
                500,
                status_body(500, "InternalError", "etcdserver: request timed out"),
            )
        }
        ("PATCH", STATUS_PATH) => match s.object.as_mut() {
            // A status subresource never creates its object.
            None => (
                404,
                status_body(
                    404,
                    "NotFound",
                    "sriovnodestates.sriov-rs.io \"worker-1\" not found",
                ),
            ),
            Some(obj) => {
                obj["status"] = body["status"].clone();
                (200, obj.clone())
            }
        },
        ("PATCH", OBJECT_PATH) => {
            let created = s.object.is_none();
            let mut obj = body.clone();
            obj["metadata"]["uid"] = json!("state-uid");
            s.object = Some(obj.clone());
            (if created { 201 } else { 200 }, obj)
        }
        ("GET", NODE_PATH) => (200, node_json(&s.labels)),
        ("PATCH", NODE_PATH) => {
            for (k, v) in body["metadata"]["labels"].as_object().unwrap() {
                match v.as_str() {
                    Some(v) => s.labels.insert(k.clone(), v.to_string()),
                    None => s.labels.remove(k),
                };
            }
            (200, node_json(&s.labels))
        }
        _ => (
            404,
            status_body(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    };
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap()
}

fn node_json(labels: &BTreeMap<String, String>) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": NODE_UID, "labels": labels}})
}

fn pf(name: &str, sriov: SriovState, enabled: u32) -> PfStatus {
    PfStatus {
        name: name.into(),
        pci_address: "0000:3b:00.0".into(),
        vendor_device: "8086:1593".into(),
        driver: Some("ice".into()),
        sriov,
        vfs_total: 64,
        vfs_enabled: enabled,
        link: "up".into(),
        mtu: Some(9000),
        numa_node: Some(0),
    }
}

fn state(enabled: u32, allocated: u32) -> SriovNodeStateStatus {
    let sriov = if enabled > 0 {
        SriovState::Enabled
    } else {
        SriovState::Disabled
    };
    let mut s = SriovNodeStateStatus {
        pfs: vec![pf("ens1f0", sriov, enabled)],
        ..Default::default()
    };
    s.summary.allocated = allocated;
    s
}

fn quick(node: &str, interval_ms: u64) -> PublisherConfig {
    PublisherConfig {
        min_interval: Duration::from_millis(interval_ms),
        jitter: Duration::ZERO,
        max_backoff: Duration::from_millis(interval_ms * 4),
        ..PublisherConfig::new(node)
    }
}

fn assert_apply(r: &Recorded, path: &str) {
    assert_eq!((r.method.as_str(), r.path.as_str()), ("PATCH", path));
    assert_eq!(r.content_type, "application/apply-patch+yaml");
    assert_eq!(
        r.query.get("fieldManager").map(String::as_str),
        Some(FIELD_MANAGER)
    );
    assert_eq!(
        r.query.get("force").map(String::as_str),
        Some("true"),
        "the daemon owns these fields"
    );
}

fn status_apply_body(s: &SriovNodeStateStatus) -> Value {
    json!({"apiVersion": "sriov-rs.io/v1alpha1", "kind": "SriovNodeState", "metadata": {"name": NODE},
           "status": serde_json::to_value(s).unwrap()})
}

fn label_patch(value: Value) -> Value {
    json!({"metadata": {"labels": {SRIOV_CAPABLE_LABEL: value}}})
}

fn assert_label_patch(r: &Recorded, value: Value) {
    assert_eq!((r.method.as_str(), r.path.as_str()), ("PATCH", NODE_PATH));
    assert_eq!(r.content_type, "application/merge-patch+json");
    assert_eq!(
        r.query.get("fieldManager").map(String::as_str),
        Some(FIELD_MANAGER)
    );
    assert!(!r.query.contains_key("force"), "force is for apply only");
    assert_eq!(r.body, label_patch(value));
}

#[tokio::test]
async fn first_publish_creates_the_object_owned_by_the_node_then_applies_status_and_label() {
    let api = FakeApiServer::start().await;
    let mut publisher = Publisher::new(api.client(), quick(NODE, 100));
    let s = state(8, 0);
    assert_eq!(publisher.publish(&s).await.unwrap(), 5);

    let r = api.requests();
    assert_eq!(r.len(), 5, "{r:#?}");
    assert_apply(&r[0], STATUS_PATH);
    assert_eq!(r[0].body, status_apply_body(&s));
    assert_eq!(
        (r[1].method.as_str(), r[1].path.as_str()),
        ("GET", NODE_PATH)
    );
    assert_apply(&r[2], OBJECT_PATH);
    assert_eq!(
        r[2].body,
        json!({"apiVersion": "sriov-rs.io/v1alpha1", "kind": "SriovNodeState",
               "metadata": {"name": NODE, "labels": {"app.kubernetes.io/managed-by": "sriov-rs"},
                            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}]},
               "spec": {"nodeName": NODE}})
    );
    assert_apply(&r[3], STATUS_PATH);
    assert_eq!(r[3].body, status_apply_body(&s));
    assert_label_patch(&r[4], json!("true"));
    let st = api.state.lock().unwrap();
    assert_eq!(st.labels[SRIOV_CAPABLE_LABEL], "true");
    assert_eq!(
        st.object.as_ref().unwrap()["status"],
        serde_json::to_value(&s).unwrap()
    );
}

#[tokio::test]
async fn only_what_changed_is_sent() {
    let api = FakeApiServer::start().await.with_object();
    let mut publisher = Publisher::new(api.client(), quick(NODE, 100));
    let s1 = state(8, 0);
    assert_eq!(
        publisher.publish(&s1).await.unwrap(),
        2,
        "an existing object needs no create"
    );
    let r = api.take_requests();
    assert_apply(&r[0], STATUS_PATH);
    assert_label_patch(&r[1], json!("true"));

    // The same state again: no request at all.
    assert_eq!(publisher.publish(&s1).await.unwrap(), 0);
    assert!(api.requests().is_empty());

    // An allocation changes the status, not the label.
    let s2 = state(8, 1);
    assert_eq!(publisher.publish(&s2).await.unwrap(), 1);
    let r = api.take_requests();
    assert_eq!(r.len(), 1);
    assert_apply(&r[0], STATUS_PATH);
    assert_eq!(r[0].body, status_apply_body(&s2));

    // VFs disabled: the status changes and the label goes away (null in a merge patch).
    let s3 = state(0, 0);
    assert_eq!(publisher.publish(&s3).await.unwrap(), 2);
    let r = api.take_requests();
    assert_apply(&r[0], STATUS_PATH);
    assert_label_patch(&r[1], Value::Null);
    assert!(!api
        .state
        .lock()
        .unwrap()
        .labels
        .contains_key(SRIOV_CAPABLE_LABEL));
}

#[tokio::test]
async fn errors_are_reported_and_the_next_publish_retries() {
    let api = FakeApiServer::start().await.with_object();
    api.state.lock().unwrap().fail_status = 1;
    let mut publisher = Publisher::new(api.client(), quick(NODE, 100));
    let s = state(8, 0);
    let err = publisher.publish(&s).await.unwrap_err();
    assert!(
        matches!(err, sriov_node_state::PublishError::Status { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("worker-1"), "{err}");
    assert_eq!(
        api.take_requests().len(),
        1,
        "no label patch after a failed status"
    );
    assert_eq!(publisher.publish(&s).await.unwrap(), 2);
}

fn status_applies(r: &[Recorded]) -> Vec<&Recorded> {
    r.iter().filter(|r| r.path == STATUS_PATH).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_coalesces_changes_and_keeps_the_minimum_interval() {
    let api = FakeApiServer::start().await.with_object();
    let interval = Duration::from_millis(500);
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(run(Publisher::new(api.client(), quick(NODE, 500)), rx));

    // Nothing to publish yet: nothing sent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(api.requests().is_empty());

    tx.send_replace(Some(state(8, 0)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status_applies(&api.requests()).len(),
        1,
        "the first state goes out at once"
    );

    // A burst of changes within one interval: one update, with the last state.
    for allocated in 1..=5 {
        tx.send_replace(Some(state(8, allocated)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = api.requests();
    let applies = status_applies(&r);
    assert_eq!(applies.len(), 2, "{applies:#?}");
    assert_eq!(applies[1].body, status_apply_body(&state(8, 5)));
    assert!(
        applies[1].at - applies[0].at >= interval,
        "{:?}",
        applies[1].at - applies[0].at
    );
    assert_eq!(r.len(), 3, "status, label, status: {r:#?}");

    // The same state sent again (e.g. a periodic resync in the daemon): nothing goes out.
    tx.send_replace(Some(state(8, 5)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(api.requests().len(), 3);

    // The daemon stops: run returns.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_retries_with_backoff_without_a_new_state() {
    let api = FakeApiServer::start().await.with_object();
    api.state.lock().unwrap().fail_status = 2;
    let (tx, rx) = watch::channel(Some(state(8, 0)));
    let task = tokio::spawn(run(Publisher::new(api.client(), quick(NODE, 100)), rx));
    // Failures wait 200 ms, then 400 ms (min_interval doubled each time).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = api.requests();
    let applies = status_applies(&r);
    assert_eq!(applies.len(), 3, "{applies:#?}");
    assert!(applies[1].at - applies[0].at >= Duration::from_millis(200));
    assert!(applies[2].at - applies[1].at >= Duration::from_millis(400));
    assert_eq!(
        r.last().unwrap().path,
        NODE_PATH,
        "the label follows the status"
    );
    assert_eq!(
        api.state.lock().unwrap().labels[SRIOV_CAPABLE_LABEL],
        "true"
    );
    drop(tx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run ends")
        .unwrap();
}
