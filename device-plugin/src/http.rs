//! The daemon's plain HTTP/1.1 endpoints: `/metrics` (on `--metrics-address`) and the probes
//! `/healthz` and `/readyz` (on `--probe-address`, and on the metrics address too).
//!
//! The probes have a listener of their own so they work whatever address the metrics are bound
//! to (a loopback-only metrics address would otherwise fail every kubelet probe, which comes
//! from the node's address).

use crate::metrics::{ErrorKind, Metrics};
use crate::probes::Probes;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accept errors (EMFILE, ENFILE, ENOBUFS...) back off from here to [`MAX_ACCEPT_BACKOFF`]:
/// they persist, and retrying at once would spin a core.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What a listener serves.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub probes: Arc<Probes>,
    /// Also `/metrics` (the metrics listener; the probe listener serves the probes only).
    pub serve_metrics: bool,
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn probe(result: Result<(), String>) -> Response<Full<Bytes>> {
    match result {
        Ok(()) => text(StatusCode::OK, "ok\n", "text/plain"),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}\n"),
            "text/plain",
        ),
    }
}

/// The answer to one request.
pub fn respond(path: &str, e: &Endpoints) -> Response<Full<Bytes>> {
    match path {
        "/metrics" if e.serve_metrics => text(
            StatusCode::OK,
            e.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" | "/livez" => probe(e.probes.live()),
        "/readyz" => probe(e.probes.ready()),
        _ => text(
            StatusCode::NOT_FOUND,
            if e.serve_metrics {
                "not found: try /metrics, /healthz or /readyz\n"
            } else {
                "not found: try /healthz or /readyz\n"
            },
            "text/plain",
        ),
    }
}

async fn handle(req: Request<Incoming>, e: Endpoints) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(respond(req.uri().path(), &e))
}

/// Binds `addr` and serves until `stop` turns true. Returns the bound address (port 0 picks one).
/// If serving ends otherwise (a panic), `on_end` says why.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
    mut stop: watch::Receiver<bool>,
    on_end: impl FnOnce(String) + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let accept = async move {
        let mut backoff = FIRST_ACCEPT_BACKOFF;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|s| *s) => break,
            };
            match accepted {
                Ok((stream, _)) => {
                    backoff = FIRST_ACCEPT_BACKOFF;
                    let e = endpoints.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(req, e.clone()));
                        if let Err(err) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!("http connection: {err}");
                        }
                    });
                }
                Err(err) => {
                    endpoints.metrics.error(ErrorKind::MetricsAccept);
                    if backoff == FIRST_ACCEPT_BACKOFF {
                        tracing::warn!("{bound}: cannot accept a connection: {err}; backing off");
                    }
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep(backoff) => false,
                        _ = stop.wait_for(|s| *s) => true,
                    };
                    if stopped {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
        Ok::<(), std::convert::Infallible>(())
    };
    crate::supervise::spawn(accept, move |r| {
        if let Err(e) = r {
            if !e.is_cancelled() {
                on_end(e.to_string());
            }
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let probes = Arc::new(Probes::new(Duration::from_secs(30)));
        let mut e = Endpoints {
            metrics: Arc::new(Metrics::default()),
            probes: probes.clone(),
            serve_metrics: false,
        };
        probes.beat();
        assert_eq!(respond("/healthz", &e).status(), StatusCode::OK);
        assert_eq!(
            respond("/readyz", &e).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        probes.set_ready(Ok(()));
        assert_eq!(respond("/readyz", &e).status(), StatusCode::OK);
        assert_eq!(respond("/metrics", &e).status(), StatusCode::NOT_FOUND);
        e.serve_metrics = true;
        assert_eq!(respond("/metrics", &e).status(), StatusCode::OK);
    }
}
