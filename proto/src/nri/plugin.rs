//! The plugin side of NRI: register with the runtime, subscribe to the pod sandbox lifecycle,
//! and hand each event to a [`PodEvents`] implementation.
//!
//! The sequence, as the runtime drives it: the plugin connects and calls `RegisterPlugin`
//! (name, two-digit index) on the runtime-service connection; the runtime then calls
//! `Configure` (the plugin answers with its event mask), `Synchronize` (every existing pod, maybe
//! split over several calls flagged `more`), and from then on one call per subscribed event.
//! Runtimes before NRI 0.9 (containerd 1.7) deliver pod events through `StateChange`; newer
//! ones call `RunPodSandbox`/`StopPodSandbox`/`RemovePodSandbox`: both are served. Anything else
//! is answered Unimplemented, which newer runtimes take as "use the older call".
//!
//! containerd 1.7 stops the sandbox's container before it sends StopPodSandbox, and then sends
//! the pod without its Linux namespaces (the netns itself still exists until after the call).
//! The plugin remembers each sandbox's network namespace path from RunPodSandbox and
//! Synchronize and fills it in for StopPodSandbox and RemovePodSandbox when it is missing, so a
//! handler can always give the pod's interfaces back.
//!
//! Calls are handled concurrently (each in its own task), as the runtime issues them for
//! different pods in parallel. An error from the handler goes back to the runtime as the call's
//! status: for RunPodSandbox the runtime then fails the sandbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::Mutex;

use super::api::{self, PodSandbox};
use super::mux::{Mux, MuxConn, MuxError, MuxSender, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use super::ttrpc::{self, code, Frame, FrameDecoder, Request, Response, Status};
use super::{validate_plugin_index, EventMask, PLUGIN_SERVICE, RUNTIME_SERVICE};

/// How to register.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// The runtime's NRI socket ([`super::DEFAULT_SOCKET_PATH`]).
    pub socket: PathBuf,
    pub name: String,
    /// Two digits; plugins are called in ascending index order.
    pub index: String,
    /// The events to get ([`EventMask::POD_LIFECYCLE`]).
    pub events: EventMask,
    /// How long the runtime may take to answer `RegisterPlugin`.
    pub registration_timeout: Duration,
}

impl PluginOptions {
    pub fn new(name: impl Into<String>, index: impl Into<String>) -> Self {
        PluginOptions {
            socket: PathBuf::from(super::DEFAULT_SOCKET_PATH),
            name: name.into(),
            index: index.into(),
            events: EventMask::POD_LIFECYCLE,
            registration_timeout: Duration::from_secs(5),
        }
    }
}

/// What the runtime told the plugin in `Configure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub runtime_name: String,
    pub runtime_version: String,
    pub nri_version: String,
    /// The runtime's per-call timeout: a handler that takes longer fails the call.
    pub request_timeout: Duration,
}

/// The pod events a plugin acts on. An `Err` is returned to the runtime as the call's error.
#[tonic::async_trait]
pub trait PodEvents: Send + Sync + 'static {
    /// The runtime accepted the registration and configured the plugin.
    async fn configured(&self, _runtime: RuntimeInfo) {}
    /// The pods that exist when the plugin connects (all of them, once).
    async fn synchronize(&self, _pods: Vec<PodSandbox>) -> Result<(), String> {
        Ok(())
    }
    /// Before the sandbox's containers start; the network namespace exists.
    async fn run_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String>;
    async fn stop_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String>;
    async fn remove_pod_sandbox(&self, pod: PodSandbox) -> Result<(), String>;
    /// The runtime is shutting down.
    async fn shutdown(&self) {}
}

/// The plugin could not register or lost the runtime.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    #[error("NRI plugin options: {0}")]
    Options(String),
    #[error("connecting to the NRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NRI transport: {0}")]
    Mux(#[from] MuxError),
    #[error("NRI protocol: {0}")]
    Protocol(String),
    #[error("RegisterPlugin: {0}")]
    Register(String),
    #[error("the runtime closed the NRI connection")]
    Closed,
}

/// Connects to `opts.socket`, registers and serves until the runtime closes the connection
/// (then [`NriError::Closed`]: reconnect when the runtime is back).
pub async fn run(opts: &PluginOptions, events: Arc<dyn PodEvents>) -> Result<(), NriError> {
    check_options(opts)?;
    let stream = tokio::net::UnixStream::connect(&opts.socket)
        .await
        .map_err(|source| NriError::Connect {
            path: opts.socket.clone(),
            source,
        })?;
    run_on(stream, opts, events).await
}

fn check_options(opts: &PluginOptions) -> Result<(), NriError> {
    if opts.name.is_empty() || opts.name.chars().any(|c| c.is_control() || c == '/') {
        return Err(NriError::Options(format!(
            "plugin name {:?}: non-empty, no '/' or control characters",
            opts.name
        )));
    }
    validate_plugin_index(&opts.index).map_err(NriError::Options)
}

/// [`run`] on a connected stream (a socket, or a test's in-memory pipe).
pub async fn run_on<S>(
    stream: S,
    opts: &PluginOptions,
    events: Arc<dyn PodEvents>,
) -> Result<(), NriError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    check_options(opts)?;
    let (mux, mut conns) = Mux::start(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])?;
    let mut runtime_conn = conns.pop().ok_or(NriError::Closed)?;
    let plugin_conn = conns.pop().ok_or(NriError::Closed)?;
    let server = Server {
        events,
        mask: opts.events,
        sync: Arc::new(Mutex::new(vec![])),
        netns: Arc::new(Mutex::new(HashMap::new())),
    };
    let serving = server.serve(plugin_conn);
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => return Err(ended(r, mux).await),
        r = register(&mut runtime_conn, opts) => if let Err(e) = r {
            mux.reader.abort();
            return Err(e);
        },
    }
    let result = serving.await;
    Err(ended(result, mux).await)
}

/// Why serving ended: its own error, the socket's, or a clean close by the runtime.
async fn ended(served: Result<(), NriError>, mux: Mux) -> NriError {
    if let Err(e) = served {
        mux.reader.abort();
        return e;
    }
    // The plugin connection ends when the socket reader stops: it has, or is about to.
    match mux.reader.await {
        Ok(Err(e)) => NriError::Mux(e),
        _ => NriError::Closed,
    }
}

/// Calls `RegisterPlugin` (stream 1) and waits for its response.
async fn register(conn: &mut MuxConn, opts: &PluginOptions) -> Result<(), NriError> {
    let req = api::RegisterPluginRequest {
        plugin_name: opts.name.clone(),
        plugin_idx: opts.index.clone(),
        nri_version: String::new(),
    };
    let timeout = opts.registration_timeout;
    let envelope = Request {
        service: RUNTIME_SERVICE.into(),
        method: "RegisterPlugin".into(),
        payload: req.encode_to_vec(),
        timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
        metadata: vec![],
    };
    let frame = Frame {
        stream_id: 1,
        kind: ttrpc::TYPE_REQUEST,
        flags: 0,
        data: envelope.encode_to_vec(),
    };
    let bytes = frame
        .encode()
        .map_err(|e| NriError::Protocol(e.to_string()))?;
    conn.sender()
        .write(&bytes)
        .await
        .map_err(|e| NriError::Mux(e.into()))?;
    let mut decoder = FrameDecoder::new();
    let response = tokio::time::timeout(timeout, async {
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) if f.kind == ttrpc::TYPE_RESPONSE && f.stream_id == 1 => {
                    return Response::decode(f.data.as_slice())
                        .map_err(|e| NriError::Protocol(format!("RegisterPlugin response: {e}")));
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(NriError::Protocol(e.to_string())),
            }
            match conn.read().await {
                Some(bytes) => decoder.push(&bytes),
                None => return Err(NriError::Closed),
            }
        }
    })
    .await
    .map_err(|_| NriError::Register(format!("no answer within {timeout:?}")))??;
    match response.status {
        Some(s) if s.code != code::OK => Err(NriError::Register(format!(
            "refused (code {}): {}",
            s.code, s.message
        ))),
        _ => Ok(()),
    }
}

#[derive(Clone)]
struct Server {
    events: Arc<dyn PodEvents>,
    mask: EventMask,
    /// Pods of a split Synchronize, until its last part.
    sync: Arc<Mutex<Vec<PodSandbox>>>,
    /// Network namespace path by sandbox ID, for the stop and remove events.
    netns: Arc<Mutex<HashMap<String, String>>>,
}

/// A handler's outcome: the encoded response message, or the call's error status.
type Outcome = Result<Vec<u8>, Status>;

fn decode<M: Message + Default>(payload: &[u8], method: &str) -> Result<M, Status> {
    M::decode(payload).map_err(|e| {
        Status::error(
            code::INVALID_ARGUMENT,
            format!("{method}: undecodable request: {e}"),
        )
    })
}

fn failed(method: &str) -> impl FnOnce(String) -> Status + '_ {
    move |e| Status::error(code::UNKNOWN, format!("{method}: {e}"))
}

impl Server {
    async fn remember(&self, pod: &PodSandbox) {
        if let Some(path) = pod.network_namespace() {
            self.netns
                .lock()
                .await
                .insert(pod.id.clone(), path.to_string());
        }
    }

    /// The pod with its network namespace path filled in from what was seen before; `forget`
    /// drops the memory (the sandbox is removed).
    async fn recall(&self, mut pod: PodSandbox, forget: bool) -> PodSandbox {
        let mut known = self.netns.lock().await;
        let path = if forget {
            known.remove(&pod.id)
        } else {
            known.get(&pod.id).cloned()
        };
        if let (None, Some(path)) = (pod.network_namespace(), path) {
            let linux = pod.linux.get_or_insert_with(Default::default);
            linux.namespaces.retain(|n| n.r#type != "network");
            linux.namespaces.push(api::LinuxNamespace {
                r#type: "network".into(),
                path,
            });
        }
        pod
    }

    async fn run_pod(&self, pod: PodSandbox) -> Result<(), String> {
        self.remember(&pod).await;
        self.events.run_pod_sandbox(pod).await
    }

    async fn stop_pod(&self, pod: PodSandbox) -> Result<(), String> {
        let pod = self.recall(pod, false).await;
        self.events.stop_pod_sandbox(pod).await
    }

    async fn remove_pod(&self, pod: PodSandbox) -> Result<(), String> {
        let pod = self.recall(pod, true).await;
        self.events.remove_pod_sandbox(pod).await
    }

    /// Serves the runtime's calls until the connection closes (`Ok`) or breaks (`Err`).
    async fn serve(self, mut conn: MuxConn) -> Result<(), NriError> {
        let sender = conn.sender();
        let mut decoder = FrameDecoder::new();
        while let Some(bytes) = conn.read().await {
            decoder.push(&bytes);
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Err(NriError::Protocol(e.to_string())),
                };
                if frame.kind != ttrpc::TYPE_REQUEST {
                    tracing::debug!(kind = frame.kind, "NRI: ignoring a non-request frame");
                    continue;
                }
                let server = self.clone();
                let sender = sender.clone();
                tokio::spawn(async move { server.answer(frame, sender).await });
            }
        }
        Ok(())
    }

    async fn answer(self, frame: Frame, sender: MuxSender) {
        let outcome = match Request::decode(frame.data.as_slice()) {
            Err(e) => Err(Status::error(
                code::INVALID_ARGUMENT,
                format!("undecodable ttrpc request: {e}"),
            )),
            // Flags mark a streaming call, which no NRI method is.
            Ok(_) if frame.flags != 0 => Err(Status::error(
                code::UNIMPLEMENTED,
                "streaming calls are not served",
            )),
            Ok(req) if req.service != PLUGIN_SERVICE => Err(Status::error(
                code::UNIMPLEMENTED,
                format!("service {:?} is not served", req.service),
            )),
            Ok(req) => self.call(&req.method, &req.payload).await,
        };
        let response = match outcome {
            Ok(payload) => Response {
                status: Some(Status::ok()),
                payload,
            },
            Err(status) => {
                tracing::debug!(code = status.code, message = %status.message, "NRI call failed");
                Response {
                    status: Some(status),
                    payload: vec![],
                }
            }
        };
        let reply = Frame {
            stream_id: frame.stream_id,
            kind: ttrpc::TYPE_RESPONSE,
            flags: 0,
            data: response.encode_to_vec(),
        };
        match reply.encode() {
            Ok(bytes) => {
                if let Err(e) = sender.write(&bytes).await {
                    tracing::debug!("NRI: writing a response: {e}");
                }
            }
            Err(e) => tracing::warn!("NRI: response not sent: {e}"),
        }
    }

    async fn call(&self, method: &str, payload: &[u8]) -> Outcome {
        tracing::debug!(method, "NRI call");
        let ev = &self.events;
        match method {
            "Configure" => {
                let req: api::ConfigureRequest = decode(payload, method)?;
                ev.configured(RuntimeInfo {
                    runtime_name: req.runtime_name,
                    runtime_version: req.runtime_version,
                    nri_version: req.nri_version,
                    request_timeout: Duration::from_millis(
                        u64::try_from(req.request_timeout).unwrap_or(0),
                    ),
                })
                .await;
                Ok(api::ConfigureResponse {
                    events: self.mask.0,
                }
                .encode_to_vec())
            }
            "Synchronize" => {
                let req: api::SynchronizeRequest = decode(payload, method)?;
                let mut pending = self.sync.lock().await;
                pending.extend(req.pods);
                if !req.more {
                    let pods = std::mem::take(&mut *pending);
                    drop(pending);
                    for pod in &pods {
                        self.remember(pod).await;
                    }
                    ev.synchronize(pods).await.map_err(failed(method))?;
                }
                Ok(api::SynchronizeResponse {
                    update: vec![],
                    more: req.more,
                }
                .encode_to_vec())
            }
            "Shutdown" => {
                ev.shutdown().await;
                Ok(api::Empty {}.encode_to_vec())
            }
            "RunPodSandbox" => {
                let req: api::RunPodSandboxRequest = decode(payload, method)?;
                let pod = req.pod.unwrap_or_default();
                self.run_pod(pod).await.map_err(failed(method))?;
                Ok(api::RunPodSandboxResponse {}.encode_to_vec())
            }
            "StopPodSandbox" => {
                let req: api::StopPodSandboxRequest = decode(payload, method)?;
                let pod = req.pod.unwrap_or_default();
                self.stop_pod(pod).await.map_err(failed(method))?;
                Ok(api::StopPodSandboxResponse {}.encode_to_vec())
            }
            "RemovePodSandbox" => {
                let req: api::RemovePodSandboxRequest = decode(payload, method)?;
                let pod = req.pod.unwrap_or_default();
                self.remove_pod(pod).await.map_err(failed(method))?;
                Ok(api::RemovePodSandboxResponse {}.encode_to_vec())
            }
            "StateChange" => {
                let req: api::StateChangeEvent = decode(payload, method)?;
                let pod = req.pod.unwrap_or_default();
                let result = match api::Event::try_from(req.event) {
                    Ok(api::Event::RunPodSandbox) => self.run_pod(pod).await,
                    Ok(api::Event::StopPodSandbox) => self.stop_pod(pod).await,
                    Ok(api::Event::RemovePodSandbox) => self.remove_pod(pod).await,
                    // Container events we did not subscribe to.
                    _ => Ok(()),
                };
                result.map_err(failed(method))?;
                Ok(api::Empty {}.encode_to_vec())
            }
            other => Err(Status::error(
                code::UNIMPLEMENTED,
                format!("method {other} is not implemented"),
            )),
        }
    }
}
