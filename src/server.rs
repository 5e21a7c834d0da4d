//! Listeners: the proxy listeners (HTTP/1.1 and HTTP/2 cleartext on one port) and the
//! status listener (/health, /status), with graceful shutdown.

use crate::body::{self, Body};
use crate::proxy::{self, Gateway, Listener};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long in-flight requests may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the proxy on `listener` until `shutdown` completes, then drains.
pub async fn run(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let info = Listener { port, tls: false };
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gw = Arc::clone(&gw);
                let svc = service_fn(move |req: Request<Incoming>| {
                    let gw = Arc::clone(&gw);
                    async move { Ok::<_, std::convert::Infallible>(proxy::handle(gw, req, peer, info).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
    }
    Ok(())
}

/// Serves /health and /status on `listener` until `shutdown` completes.
pub async fn run_status(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let gw = Arc::clone(&gw);
                let svc = service_fn(move |req: Request<Incoming>| {
                    let gw = Arc::clone(&gw);
                    async move { Ok::<_, std::convert::Infallible>(status_response(&gw, &req)) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

fn status_response(gw: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let text_resp = |status: StatusCode, ctype: &'static str, text: String| {
        let mut r = Response::new(body::full(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r
    };
    match req.uri().path() {
        "/health" => text_resp(StatusCode::OK, "text/plain; charset=utf-8", "OK\n".into()),
        "/status" => {
            let snap = gw.snapshot.load();
            let st = match gw.status.lock() {
                Ok(s) => s.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let loaded_at = chrono::DateTime::<chrono::Utc>::from(snap.loaded_at)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let doc = serde_json::json!({
                "server": proxy::SERVER,
                "generation": snap.generation,
                "config_hash": snap.config_hash,
                "config_file": snap.file,
                "loaded_at": loaded_at,
                "last_reload_error": st.last_reload_error,
                "reloads": {
                    "ok": st.reloads_ok,
                    "failed": st.reloads_failed,
                    "unchanged": st.reloads_unchanged,
                },
                "routes": snap.config.routes.len(),
                "services": snap.config.services.len(),
            });
            text_resp(
                StatusCode::OK,
                "application/json; charset=utf-8",
                doc.to_string(),
            )
        }
        _ => text_resp(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found (try /health or /status)\n".into(),
        ),
    }
}
