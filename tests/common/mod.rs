//! Black-box test helpers: a real gateway (in-process `server::run` on 127.0.0.1:0, or
//! the real binary), real upstream servers on 127.0.0.1:0, and a raw HTTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod process;
pub mod recorder;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::proxy::{Gateway, Settings};
use portcullis::upstream::ClientCache;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestGateway {
    pub addr: SocketAddr,
    pub gw: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub dir: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn gateway(yaml: &str) -> TestGateway {
    gateway_with(yaml, Settings::default(), "127.0.0.1:0").await
}

pub async fn gateway_with(yaml: &str, mut settings: Settings, bind: &str) -> TestGateway {
    settings.access_log = portcullis::access_log::Format::Off;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let clients = ClientCache::default();
    let snap = match portcullis::config::load(path.to_str().unwrap(), 1, &clients) {
        Ok(s) => s,
        Err(e) => panic!("test config invalid:\n{e}"),
    };
    let gw = Arc::new(Gateway::new(snap, settings, clients));
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(portcullis::server::run(
        Arc::clone(&gw),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    TestGateway {
        addr,
        gw,
        stop: Some(tx),
        dir,
    }
}

/// A response read completely.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Sends one request on a fresh HTTP/1.1 connection; `target` is the raw request target.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(target);
    let mut has_host = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("host") {
            has_host = true;
        }
        b = b.header(*k, *v);
    }
    if !has_host {
        b = b.header("host", "localhost");
    }
    let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("response timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body timed out")
        .expect("body failed")
        .to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, target: &str) -> Resp {
    send(addr, "GET", target, &[], b"").await
}

/// Writes raw bytes and reads until the server closes or `WAIT` passes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough: stop once we have headers and the declared body.
                if let Some(text) = std::str::from_utf8(&out).ok()
                    && let Some(end) = text.find("\r\n\r\n")
                {
                    let head = &text[..end];
                    let len = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    });
                    if let Some(len) = len
                        && out.len() >= end + 4 + len
                    {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An upstream that answers every request with a JSON echo of what it received:
/// {"method","path" (raw target),"headers":{name:[values]},"body_len"}.
/// Special paths (anywhere in the target): "sse" streams 3 events 300 ms apart;
/// "sleep" waits 2 s before answering; "status-NNN" answers with status NNN.
pub async fn echo_upstream() -> SocketAddr {
    serve_upstream(|req: Request<Incoming>| async move { echo_handler(req).await }).await
}

pub async fn serve_upstream<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response<portcullis::body::Body>> + Send + 'static,
{
    serve_upstream_at("127.0.0.1:0", f).await
}

/// Like `serve_upstream`, on a given loopback address.
pub async fn serve_upstream_at<F, Fut>(bind: &str, f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response<portcullis::body::Body>> + Send + 'static,
{
    let l = TcpListener::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("cannot bind {bind}: {e}"));
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(f(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

pub async fn echo_handler(req: Request<Incoming>) -> Response<portcullis::body::Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if target.contains("sse") {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, portcullis::body::BoxError>>(4);
        tokio::spawn(async move {
            for i in 0..3 {
                let ev = format!("id: {i}\ndata: event {i}\n\n");
                if tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let body = StreamBody::new(tokio_stream_from(rx)).boxed();
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(body)
            .unwrap();
    }
    if target.contains("sleep") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let status = target
        .find("status-")
        .and_then(|i| target.get(i + 7..i + 10))
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let e = headers
            .entry(k.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(a) = e {
            a.push(serde_json::Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let mut body = req.into_body();
    let mut len: u64 = 0;
    while let Some(Ok(f)) = body.frame().await {
        if let Some(d) = f.data_ref() {
            len += d.len() as u64;
        }
    }
    let doc = serde_json::json!({
        "method": method,
        "path": target,
        "version": version,
        "headers": headers,
        "body_len": len,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(portcullis::body::full(doc.to_string()))
        .unwrap()
}

/// Adapts an mpsc receiver into a Stream without extra crates.
pub fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A service block for tests: `url` pointing at `addr` plus routes YAML.
pub fn svc(name: &str, addr: SocketAddr, path: &str) -> String {
    format!("  - name: {name}\n    url: http://{addr}{path}\n")
}

/// The first header value of an echo response's `headers` field.
pub fn echoed(j: &serde_json::Value, name: &str) -> Option<String> {
    j["headers"][name][0].as_str().map(str::to_string)
}
