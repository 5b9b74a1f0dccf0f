//! The NRI plugin against an in-test runtime on an in-memory socket: the runtime's side of the
//! protocol (accept RegisterPlugin, call Configure, a split Synchronize, pod events old-style
//! through StateChange and new-style as their own calls, a method the plugin lacks), and what
//! the plugin does with broken input. The real runtime (containerd 1.7) is in the e2e tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use sriov_proto::nri::api;
use sriov_proto::nri::mux::{self, MuxDecoder, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use sriov_proto::nri::plugin::{self, NriError, PluginOptions, PodEvents, RuntimeInfo};
use sriov_proto::nri::ttrpc::{self, code, Frame, FrameDecoder};
use sriov_proto::nri::{EventMask, PLUGIN_SERVICE, RUNTIME_SERVICE};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
}

#[tonic::async_trait]
impl PodEvents for Recorder {
    async fn configured(&self, rt: RuntimeInfo) {
        self.push(format!(
            "configured {} {}",
            rt.runtime_name, rt.runtime_version
        ));
    }
    async fn synchronize(&self, pods: Vec<api::PodSandbox>) -> Result<(), String> {
        let names: Vec<_> = pods.iter().map(|p| p.name.as_str()).collect();
        self.push(format!("sync {}", names.join(",")));
        Ok(())
    }
    async fn run_pod_sandbox(&self, pod: api::PodSandbox) -> Result<(), String> {
        self.push(format!(
            "run {} {}",
            pod.name,
            pod.network_namespace().unwrap_or("-")
        ));
        if pod.name == "refused" {
            return Err("no VF for this pod".into());
        }
        Ok(())
    }
    async fn stop_pod_sandbox(&self, pod: api::PodSandbox) -> Result<(), String> {
        self.push(format!(
            "stop {} {}",
            pod.name,
            pod.network_namespace().unwrap_or("-")
        ));
        Ok(())
    }
    async fn remove_pod_sandbox(&self, pod: api::PodSandbox) -> Result<(), String> {
        self.push(format!(
            "remove {} {}",
            pod.name,
            pod.network_namespace().unwrap_or("-")
        ));
        Ok(())
    }
}

impl Recorder {
    fn push(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// The runtime's end of the socket.
struct Runtime {
    io: DuplexStream,
    mux: MuxDecoder,
    /// ttrpc frames per logical connection.
    frames: [FrameDecoder; 3],
    next_stream: u32,
}

impl Runtime {
    async fn next_frame(&mut self, conn: u32) -> Frame {
        loop {
            if let Some(f) = self.frames[conn as usize].next_frame().unwrap() {
                return f;
            }
            if let Some((id, payload)) = self.mux.next_chunk().unwrap() {
                self.frames[id as usize].push(&payload);
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.io.read(&mut buf))
                .await
                .expect("plugin answers")
                .unwrap();
            assert!(n > 0, "plugin closed the socket");
            self.mux.push(&buf[..n]);
        }
    }

    async fn send(&mut self, conn: u32, frame: Frame) {
        self.io
            .write_all(&mux::encode(conn, &frame.encode().unwrap()))
            .await
            .unwrap();
    }

    /// Calls a plugin method; returns the response.
    async fn call(&mut self, method: &str, payload: Vec<u8>) -> ttrpc::Response {
        self.next_stream += 2;
        let id = self.next_stream;
        let req = ttrpc::Request {
            service: PLUGIN_SERVICE.into(),
            method: method.into(),
            payload,
            ..Default::default()
        };
        self.send(
            PLUGIN_SERVICE_CONN,
            Frame {
                stream_id: id,
                kind: ttrpc::TYPE_REQUEST,
                flags: 0,
                data: req.encode_to_vec(),
            },
        )
        .await;
        let f = self.next_frame(PLUGIN_SERVICE_CONN).await;
        assert_eq!((f.stream_id, f.kind), (id, ttrpc::TYPE_RESPONSE));
        ttrpc::Response::decode(f.data.as_slice()).unwrap()
    }

    /// Accepts the plugin's registration; returns its request.
    async fn accept_registration(&mut self) -> api::RegisterPluginRequest {
        let f = self.next_frame(RUNTIME_SERVICE_CONN).await;
        assert_eq!((f.kind, f.stream_id % 2), (ttrpc::TYPE_REQUEST, 1));
        let req = ttrpc::Request::decode(f.data.as_slice()).unwrap();
        assert_eq!(
            (req.service.as_str(), req.method.as_str()),
            (RUNTIME_SERVICE, "RegisterPlugin")
        );
        let resp = ttrpc::Response {
            status: Some(ttrpc::Status::ok()),
            payload: api::Empty {}.encode_to_vec(),
        };
        self.send(
            RUNTIME_SERVICE_CONN,
            Frame {
                stream_id: f.stream_id,
                kind: ttrpc::TYPE_RESPONSE,
                flags: 0,
                data: resp.encode_to_vec(),
            },
        )
        .await;
        api::RegisterPluginRequest::decode(req.payload.as_slice()).unwrap()
    }
}

fn start(rec: &Arc<Recorder>) -> (Runtime, tokio::task::JoinHandle<Result<(), NriError>>) {
    let (plugin_end, runtime_end) = tokio::io::duplex(64 * 1024);
    let mut opts = PluginOptions::new("sriov-rs", "10");
    opts.registration_timeout = Duration::from_secs(5);
    let events: Arc<dyn PodEvents> = rec.clone();
    let task = tokio::spawn(async move { plugin::run_on(plugin_end, &opts, events).await });
    let runtime = Runtime {
        io: runtime_end,
        mux: MuxDecoder::new(),
        frames: Default::default(),
        next_stream: 1,
    };
    (runtime, task)
}

/// How the plugin's run ended (it always ends with an error).
async fn ended(task: tokio::task::JoinHandle<Result<(), NriError>>) -> NriError {
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the plugin stops")
        .expect("no panic");
    result.expect_err("run only returns errors")
}

fn pod(name: &str, netns: &str) -> api::PodSandbox {
    api::PodSandbox {
        id: format!("id-{name}"),
        name: name.into(),
        uid: format!("uid-{name}"),
        namespace: "default".into(),
        linux: Some(api::LinuxPodSandbox {
            namespaces: vec![api::LinuxNamespace {
                r#type: "network".into(),
                path: netns.into(),
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the recorder logs for run, stop and remove of one pod.
fn lifecycle(name: &str, netns: &str) -> Vec<String> {
    ["run", "stop", "remove"]
        .map(|e| format!("{e} {name} {netns}"))
        .to_vec()
}

fn ok(r: &ttrpc::Response) -> &[u8] {
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.code, code::OK, "{status:?}");
    &r.payload
}

#[tokio::test]
async fn registers_configures_synchronizes_and_gets_pod_events() {
    let rec = Arc::new(Recorder::default());
    let (mut rt, task) = start(&rec);
    let reg = rt.accept_registration().await;
    assert_eq!(
        (reg.plugin_name.as_str(), reg.plugin_idx.as_str()),
        ("sriov-rs", "10")
    );

    let cfg = api::ConfigureRequest {
        runtime_name: "containerd".into(),
        runtime_version: "1.7.24".into(),
        request_timeout: 2000,
        ..Default::default()
    };
    let r = rt.call("Configure", cfg.encode_to_vec()).await;
    let mask = api::ConfigureResponse::decode(ok(&r)).unwrap().events;
    assert_eq!(
        EventMask(mask),
        EventMask::POD_LIFECYCLE,
        "run, stop, remove"
    );

    // Synchronize in two parts: the plugin echoes `more` and sees all pods once, at the end.
    for (names, more) in [(vec!["a", "b"], true), (vec!["c"], false)] {
        let req = api::SynchronizeRequest {
            pods: names.iter().map(|n| pod(n, "")).collect(),
            containers: vec![],
            more,
        };
        let r = rt.call("Synchronize", req.encode_to_vec()).await;
        let resp = api::SynchronizeResponse::decode(ok(&r)).unwrap();
        assert_eq!(resp.more, more);
        assert!(resp.update.is_empty());
    }
    assert_eq!(rec.take(), ["configured containerd 1.7.24", "sync a,b,c"]);

    // containerd 1.7: StateChange events; stop and remove come without the namespaces (as
    // containerd 1.7 sends them): the plugin fills in the path it saw at run.
    for (event, name, netns) in [
        (api::Event::RunPodSandbox, "web", "/var/run/netns/cni-1"),
        (api::Event::StopPodSandbox, "web", ""),
        (api::Event::RemovePodSandbox, "web", ""),
        (api::Event::CreateContainer, "web", ""),
    ] {
        let ev = api::StateChangeEvent {
            event: event as i32,
            pod: Some(pod(name, netns)),
            container: None,
        };
        let r = rt.call("StateChange", ev.encode_to_vec()).await;
        ok(&r);
    }
    assert_eq!(rec.take(), lifecycle("web", "/var/run/netns/cni-1"));

    // Newer runtimes: their own calls.
    let run = api::RunPodSandboxRequest {
        pod: Some(pod("db", "/var/run/netns/cni-2")),
    };
    ok(&rt.call("RunPodSandbox", run.encode_to_vec()).await);
    let stop = api::StopPodSandboxRequest {
        pod: Some(pod("db", "")),
    };
    ok(&rt.call("StopPodSandbox", stop.encode_to_vec()).await);
    let remove = api::RemovePodSandboxRequest {
        pod: Some(pod("db", "")),
    };
    ok(&rt.call("RemovePodSandbox", remove.encode_to_vec()).await);
    assert_eq!(rec.take(), lifecycle("db", "/var/run/netns/cni-2"));

    // A pod known from Synchronize ("a" had no netns there) and one never seen: no path.
    let stop = api::StopPodSandboxRequest {
        pod: Some(pod("a", "")),
    };
    ok(&rt.call("StopPodSandbox", stop.encode_to_vec()).await);
    assert_eq!(rec.take(), ["stop a -"]);

    // The handler's error is the call's: the runtime fails the sandbox.
    let run = api::RunPodSandboxRequest {
        pod: Some(pod("refused", "/var/run/netns/cni-3")),
    };
    let r = rt.call("RunPodSandbox", run.encode_to_vec()).await;
    let status = r.status.unwrap();
    assert_eq!(status.code, code::UNKNOWN);
    assert!(status.message.contains("no VF for this pod"), "{status:?}");

    // What the plugin does not serve: Unimplemented (newer runtimes fall back on it).
    let r = rt.call("CreateContainer", vec![]).await;
    assert_eq!(r.status.unwrap().code, code::UNIMPLEMENTED);
    // An undecodable payload: InvalidArgument, and the plugin keeps serving.
    let r = rt.call("RunPodSandbox", vec![0xff, 0xff, 0xff]).await;
    assert_eq!(r.status.unwrap().code, code::INVALID_ARGUMENT);
    ok(&rt.call("Shutdown", vec![]).await);

    // The runtime goes away: the plugin returns Closed.
    drop(rt);
    let err = ended(task).await;
    assert!(matches!(err, NriError::Closed), "{err}");
}

#[tokio::test]
async fn refused_registration_and_broken_frames_are_errors_not_panics() {
    // The runtime refuses the registration.
    let rec = Arc::new(Recorder::default());
    let (mut rt, task) = start(&rec);
    let f = rt.next_frame(RUNTIME_SERVICE_CONN).await;
    let resp = ttrpc::Response {
        status: Some(ttrpc::Status::error(
            code::INVALID_ARGUMENT,
            "invalid plugin index",
        )),
        payload: vec![],
    };
    rt.send(
        RUNTIME_SERVICE_CONN,
        Frame {
            stream_id: f.stream_id,
            kind: ttrpc::TYPE_RESPONSE,
            flags: 0,
            data: resp.encode_to_vec(),
        },
    )
    .await;
    let err = ended(task).await;
    assert!(
        matches!(&err, NriError::Register(m) if m.contains("invalid plugin index")),
        "{err}"
    );

    // After registering, an oversized ttrpc frame on the plugin connection: a protocol error.
    let (mut rt, task) = start(&rec);
    rt.accept_registration().await;
    let mut header = ((ttrpc::MAX_DATA + 1) as u32).to_be_bytes().to_vec();
    header.extend_from_slice(&[0, 0, 0, 3, ttrpc::TYPE_REQUEST, 0]);
    rt.io
        .write_all(&mux::encode(PLUGIN_SERVICE_CONN, &header))
        .await
        .unwrap();
    let err = ended(task).await;
    assert!(matches!(err, NriError::Protocol(_)), "{err}");

    // An oversized mux chunk: a transport error.
    let (mut rt, task) = start(&rec);
    rt.accept_registration().await;
    let mut chunk = PLUGIN_SERVICE_CONN.to_be_bytes().to_vec();
    chunk.extend_from_slice(&u32::MAX.to_be_bytes());
    rt.io.write_all(&chunk).await.unwrap();
    let err = ended(task).await;
    assert!(matches!(err, NriError::Mux(_)), "{err}");

    // Bad options never reach the socket.
    let (a, _b) = tokio::io::duplex(64);
    let events: Arc<dyn PodEvents> = rec.clone();
    for (name, idx) in [("", "10"), ("x/y", "10"), ("ok", "1"), ("ok", "ab")] {
        let opts = PluginOptions::new(name, idx);
        let err = plugin::run_on(tokio::io::duplex(64).0, &opts, events.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, NriError::Options(_)),
            "{name:?} {idx:?}: {err}"
        );
    }
    drop(a);
    // A socket that does not exist.
    let mut opts = PluginOptions::new("sriov-rs", "10");
    opts.socket = "/nonexistent/nri.sock".into();
    assert!(matches!(
        plugin::run(&opts, events).await,
        Err(NriError::Connect { .. })
    ));
}
