//! An in-test Kubernetes API server: `resource.k8s.io/v1` ResourceSlices (cluster-scoped) and
//! ResourceClaims (namespaced, with a status subresource), core/v1 Nodes, and Multus'
//! `k8s.cni.cncf.io/v1` NetworkAttachmentDefinitions (namespaced), over HTTP on a
//! loopback port, answering as the real server does. There is no API server on the machines
//! this project is tested on; a `kube::Client` pointed at [`ApiServer::url`] cannot tell.
//!
//! What it does like the real one: `resourceVersion` on every object, bumped by every write;
//! `uid`, `creationTimestamp`, `generation` (bumped on spec changes); get, list (with
//! `fieldSelector` on the fields the real server indexes, e.g. `spec.nodeName` and `spec.driver`
//! of slices, and `labelSelector`), create (`generateName` too), update (409 Conflict on a stale
//! `resourceVersion`), JSON merge patch, server-side apply (`fieldManager` required, conflicts
//! between managers, `force`; [`apply`]), delete (with a `resourceVersion` precondition) and
//! deletecollection; Status bodies with the real reasons and messages for 404 NotFound, 409
//! AlreadyExists/Conflict, 422 Invalid (ResourceSlice validation, [`validate`]), 400 and 415; a
//! status subresource that writes only `status` while the main resource ignores it. Strategic
//! merge patch is taken as a JSON merge patch (no list directives). Not served: watch, tables,
//! protobuf. Every request is logged ([`ApiServer::requests`]) for assertions.
//!
//! Knobs for tests: [`ApiServer::drop_device_taints`] plays a cluster without the
//! `DRADeviceTaints` feature (taints are dropped on write); [`ApiServer::modify`] plays another
//! writer (the object changes under the client's feet).

pub mod apply;
pub mod selectors;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use apply::Managers;

/// The kinds of objects served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Nodes,
    ResourceSlices,
    ResourceClaims,
    NetworkAttachmentDefinitions,
}

impl Resource {
    fn plural(self) -> &'static str {
        match self {
            Resource::Nodes => "nodes",
            Resource::ResourceSlices => "resourceslices",
            Resource::ResourceClaims => "resourceclaims",
            Resource::NetworkAttachmentDefinitions => "network-attachment-definitions",
        }
    }
    fn group(self) -> &'static str {
        match self {
            Resource::Nodes => "",
            Resource::NetworkAttachmentDefinitions => "k8s.cni.cncf.io",
            _ => "resource.k8s.io",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Resource::Nodes => "v1",
            Resource::NetworkAttachmentDefinitions => "k8s.cni.cncf.io/v1",
            _ => "resource.k8s.io/v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Resource::Nodes => "Node",
            Resource::ResourceSlices => "ResourceSlice",
            Resource::ResourceClaims => "ResourceClaim",
            Resource::NetworkAttachmentDefinitions => "NetworkAttachmentDefinition",
        }
    }
    fn namespaced(self) -> bool {
        matches!(
            self,
            Resource::ResourceClaims | Resource::NetworkAttachmentDefinitions
        )
    }
    fn has_status(self) -> bool {
        !matches!(
            self,
            Resource::ResourceSlices | Resource::NetworkAttachmentDefinitions
        )
    }
    fn field_selectors(self) -> &'static [&'static str] {
        match self {
            Resource::ResourceSlices => &[
                "metadata.name",
                "spec.nodeName",
                "spec.driver",
                "spec.pool.name",
            ],
            Resource::ResourceClaims | Resource::NetworkAttachmentDefinitions => {
                &["metadata.name", "metadata.namespace"]
            }
            Resource::Nodes => &["metadata.name", "spec.unschedulable"],
        }
    }
    /// `resourceslices.resource.k8s.io`, as messages name it.
    fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().into(),
            g => format!("{}.{g}", self.plural()),
        }
    }
}

/// One request as received, with the status it got.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

type Key = (Resource, String, String);

struct Stored {
    object: Value,
    managers: Managers,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    uids: u64,
    log: Vec<LoggedRequest>,
    drop_device_taints: bool,
    /// Updates still to be raced by another writer.
    race: usize,
}

/// The running emulator; stops accepting when dropped.
pub struct ApiServer {
    url: String,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A test that panicked while holding it leaves the data usable for the next assertion.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl ApiServer {
    /// Listens on a free loopback port (inside a tokio runtime).
    pub async fn start() -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(serve(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(ApiServer { url, state, accept })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client for it (plain HTTP, no credentials).
    pub fn client(&self) -> kube::Client {
        let uri = self.url.parse().unwrap_or_default();
        let config = kube::Config::new(uri);
        kube::Client::try_from(config).expect("a client for a plain HTTP URL")
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state).log.clone()
    }

    /// The requests so far, forgetting them.
    pub fn take_requests(&self) -> Vec<LoggedRequest> {
        std::mem::take(&mut lock(&self.state).log)
    }

    /// Stores `object` as if created by someone else (a Node, a scheduler's claim); returns it
    /// as stored.
    pub fn insert(&self, resource: Resource, object: Value) -> Value {
        let mut s = lock(&self.state);
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut object = object;
        s.stamp_new(resource, &mut object);
        s.objects.insert(
            (resource, ns, name),
            Stored {
                object: object.clone(),
                managers: Managers::new(),
            },
        );
        object
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource, namespace.to_string(), name.to_string());
        lock(&self.state)
            .objects
            .get(&key)
            .map(|s| s.object.clone())
    }

    /// All objects of a kind, by namespace and name.
    pub fn objects(&self, resource: Resource) -> Vec<Value> {
        lock(&self.state)
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == resource)
            .map(|(_, s)| s.object.clone())
            .collect()
    }

    /// Another writer changes an object (its resourceVersion moves on); false if absent.
    pub fn modify(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> bool {
        let mut s = lock(&self.state);
        let rv = s.next_version();
        let key = (resource, namespace.to_string(), name.to_string());
        let Some(stored) = s.objects.get_mut(&key) else {
            return false;
        };
        f(&mut stored.object);
        stored.object["metadata"]["resourceVersion"] = json!(rv);
        true
    }

    /// Plays another writer that gets in before each of the next `n` updates (PUT) of an
    /// existing object: its resourceVersion moves on, so a client sending the one it read gets
    /// 409 Conflict.
    pub fn race_next_updates(&self, n: usize) {
        lock(&self.state).race = n;
    }

    /// Plays a cluster without the `DRADeviceTaints` feature: writes drop `devices[].taints`.
    pub fn drop_device_taints(&self, drop: bool) {
        lock(&self.state).drop_device_taints = drop;
    }
}

/// An API error as the server sends it.
struct ApiError {
    code: u16,
    body: Value,
}

fn status_body(code: u16, reason: &str, message: &str, details: Value) -> ApiError {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code});
    if !details.is_null() {
        body["details"] = details;
    }
    ApiError { code, body }
}

fn not_found(r: Resource, name: &str) -> ApiError {
    let msg = format!("{} \"{name}\" not found", r.qualified());
    status_body(
        404,
        "NotFound",
        &msg,
        json!({"name": name, "group": r.group(), "kind": r.plural()}),
    )
}

fn conflict(r: Resource, name: &str) -> ApiError {
    let msg = format!(
        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
        r.qualified()
    );
    status_body(
        409,
        "Conflict",
        &msg,
        json!({"name": name, "group": r.group(), "kind": r.plural()}),
    )
}

fn bad_request(message: &str) -> ApiError {
    status_body(400, "BadRequest", message, Value::Null)
}

fn invalid(r: Resource, name: &str, causes: Vec<validate::Cause>) -> ApiError {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let group = r.group();
    let msg = format!(
        "{}.{group} \"{name}\" is invalid: {}",
        r.kind(),
        parts.join(", ")
    );
    let causes: Vec<Value> = causes
        .iter()
        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
        .collect();
    status_body(
        422,
        "Invalid",
        &msg,
        json!({"name": name, "group": group, "kind": r.kind(), "causes": causes}),
    )
}

/// `/api/v1/nodes[/NAME]`, `/apis/resource.k8s.io/v1/resourceslices[/NAME]`,
/// `/apis/resource.k8s.io/v1/[namespaces/NS/]resourceclaims[/NAME[/status]]`,
/// `/apis/k8s.cni.cncf.io/v1/[namespaces/NS/]network-attachment-definitions[/NAME]`.
struct Route {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest): (&str, &[&str]) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g @ ("resource.k8s.io" | "k8s.cni.cncf.io"), "v1", rest @ ..] => (g, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let resource = match (group, rest.first()?) {
        ("", &"nodes") => Resource::Nodes,
        ("resource.k8s.io", &"resourceslices") => Resource::ResourceSlices,
        ("resource.k8s.io", &"resourceclaims") => Resource::ResourceClaims,
        ("k8s.cni.cncf.io", &"network-attachment-definitions") => {
            Resource::NetworkAttachmentDefinitions
        }
        _ => return None,
    };
    if namespace.is_some() && !resource.namespaced() {
        return None;
    }
    let (name, status) = match &rest[1..] {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] if resource.has_status() => (Some(name.to_string()), true),
        _ => return None,
    };
    Some(Route {
        resource,
        namespace,
        name,
        status,
    })
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = vec![];
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes[i],
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn serve(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = query_map(req.uri().query());
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Result<Value, ApiError> = if bytes.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            bad_request(&format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })
    };
    let mut s = lock(state);
    let logged_body = body.as_ref().cloned().unwrap_or(Value::Null);
    let outcome = body.and_then(|b| s.handle(&method, &path, &query, &content_type, b));
    let (code, answer) = match outcome {
        Ok((code, v)) => (code, v),
        Err(e) => (e.code, e.body),
    };
    s.log.push(LoggedRequest {
        method,
        path,
        query,
        content_type,
        body: logged_body,
        status: code,
    });
    drop(s);
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

mod handlers;
mod time;
