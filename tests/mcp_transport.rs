//! Streamable HTTP (MCP) through the gateway, black box with Rust stub upstreams:
//! methods, end-to-end headers, SSE event by event, no compression, idle (not total)
//! timeouts, client disconnects reaching the upstream, 4xx bodies verbatim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mcp_yaml(up: SocketAddr, service_extra: &str) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n  - name: mcp\n    url: http://{up}/api/mcp\n{service_extra}    routes:\n      - name: mcp\n        paths: [/mcp]\n"
    )
}

/// Sends a request and returns the response head with its body still streaming.
async fn open(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("response head timed out")
        .unwrap()
}

/// The body's data frames with their arrival time since `t0`.
async fn frames(resp: Response<Incoming>, t0: Instant) -> Vec<(Duration, String)> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(f) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("body stalled")
    {
        if let Ok(d) = f.unwrap().into_data() {
            out.push((t0.elapsed(), String::from_utf8_lossy(&d).into_owned()));
        }
    }
    out
}

fn count(resp: &Response<Incoming>, name: &str) -> usize {
    resp.headers().get_all(name).iter().count()
}

type Tx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, portcullis::body::BoxError>>;

/// An SSE response whose events are produced by `f` on its own task.
fn sse<F, Fut>(f: F) -> Response<portcullis::body::Body>
where
    F: FnOnce(Tx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache, no-transform")
        .header("x-accel-buffering", "no")
        .header("mcp-session-id", "c0ffee")
        .body(StreamBody::new(tokio_stream_from(rx)).boxed())
        .unwrap()
}

async fn event(tx: &Tx, text: String) -> bool {
    tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_ok()
}

#[tokio::test]
async fn methods_headers_and_query_pass_untouched() {
    let up = echo_upstream().await;
    let g = gateway(&mcp_yaml(up, "")).await;
    let sent = [
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-session-id", "7f3a-SESSION_id.~!"),
        ("mcp-protocol-version", "2025-11-25"),
        ("last-event-id", "42"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "slow_count"),
        ("mcp-param-region", "=?base64?ZXUtd2VzdA==?="),
        ("mcp-param-x-custom", "v"),
        ("authorization", "Bearer opaque"),
    ];
    for method in ["POST", "GET", "DELETE"] {
        let r = send(
            g.addr,
            method,
            "/mcp?features=docs,database&read_only=true",
            &sent,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{method}");
        let j = r.json();
        assert_eq!(j["method"], method);
        assert_eq!(j["path"], "/api/mcp?features=docs,database&read_only=true");
        for (name, value) in sent {
            assert_eq!(
                j["headers"][name],
                serde_json::json!([value]),
                "{method} {name}"
            );
        }
    }
}

#[tokio::test]
async fn session_id_once_and_error_bodies_verbatim() {
    let up = serve_upstream(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_string();
        let (status, ctype, body, extra): (u16, &str, &str, Vec<(&str, &str)>) =
            match path.as_str() {
                "/api/mcp/404" => (
                    404,
                    "application/json",
                    r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}"#,
                    vec![],
                ),
                "/api/mcp/400" => (
                    400,
                    "application/json",
                    r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32020,"message":"Mcp-Name header does not match"}}"#,
                    vec![],
                ),
                "/api/mcp/405" => (
                    405,
                    "application/json",
                    r#"{"error":{"message":"Method GET Not Allowed"}}"#,
                    vec![("allow", "POST")],
                ),
                "/api/mcp/406" => (406, "text/plain", "Not Acceptable: Client must accept both application/json and text/event-stream", vec![]),
                "/api/mcp/401" => (
                    401,
                    "application/json",
                    r#"{"error":"invalid_token","error_description":"Authentication required"}"#,
                    vec![("www-authenticate", "Bearer error=\"invalid_token\", resource_metadata=\"http://x/.well-known/oauth-protected-resource/mcp\"")],
                ),
                _ => (200, "application/json", r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, vec![]),
            };
        let mut b = Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("mcp-session-id", "s-1");
        for (k, v) in extra {
            b = b.header(k, v);
        }
        b.body(portcullis::body::full(body.to_string())).unwrap()
    })
    .await;
    let g = gateway(&mcp_yaml(up, "")).await;
    for code in ["200", "400", "401", "404", "405", "406"] {
        let target = if code == "200" {
            "/mcp".to_string()
        } else {
            format!("/mcp/{code}")
        };
        let resp = open(
            g.addr,
            "POST",
            &target,
            &[("accept", "application/json, text/event-stream")],
            "{}",
        )
        .await;
        assert_eq!(resp.status().as_str(), code);
        assert_eq!(count(&resp, "mcp-session-id"), 1, "{code}");
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let direct = send(up, "POST", &target.replace("/mcp", "/api/mcp"), &[], b"{}").await;
        assert_eq!(body, direct.body, "{code}: body must be relayed verbatim");
        assert_eq!(
            headers.get("content-type"),
            direct.headers.get("content-type")
        );
        for name in ["allow", "www-authenticate"] {
            assert_eq!(headers.get(name), direct.headers.get(name), "{code} {name}");
        }
    }
}

#[tokio::test]
async fn sse_streams_event_by_event_and_uncompressed() {
    let up = serve_upstream(|_req: Request<Incoming>| async move {
        sse(|tx| async move {
            for i in 1..=3 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                if !event(
                    &tx,
                    format!("event: message\nid: {i}\ndata: {{\"progress\":{i}}}\n\n"),
                )
                .await
                {
                    return;
                }
            }
        })
    })
    .await;
    let g = gateway(&mcp_yaml(up, "")).await;
    let t0 = Instant::now();
    let resp = open(
        g.addr,
        "POST",
        "/mcp",
        &[
            ("accept", "application/json, text/event-stream"),
            ("accept-encoding", "gzip, br"),
        ],
        "{}",
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache, no-transform");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(
        h.get("content-encoding").is_none(),
        "SSE must not be compressed"
    );
    assert!(h.get("content-length").is_none());
    assert_eq!(count(&resp, "mcp-session-id"), 1);
    let got = frames(resp, t0).await;
    let events: Vec<&(Duration, String)> =
        got.iter().filter(|(_, t)| t.contains("data:")).collect();
    assert_eq!(events.len(), 3, "{got:?}");
    // Each event arrives when it is sent (~0.4 s apart), not all at the end.
    assert!(events[0].0 < Duration::from_millis(1100), "{got:?}");
    assert!(
        events[2].0 - events[0].0 >= Duration::from_millis(600),
        "events bunched together (buffering): {got:?}"
    );
}

#[tokio::test]
async fn timeouts_are_idle_timeouts_not_deadlines() {
    // Defaults: 60 s between bytes, which is above the SDKs' 15 s keepalive pings and the
    // Python server's up-to-15 s wait before its response head.
    let clients = portcullis::upstream::ClientCache::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    std::fs::write(&path, mcp_yaml("127.0.0.1:9".parse().unwrap(), "")).unwrap();
    let snap = portcullis::config::load(path.to_str().unwrap(), 1, &clients).unwrap();
    let up = snap.routes[0].upstream.as_ref().unwrap();
    assert!(up.read_timeout >= Duration::from_secs(60));

    // read_timeout 1 s: a stream that ticks every 300 ms lives for 2.4 s; a head that
    // takes 600 ms is fine; 2 s of silence before the head is a 504.
    let up = serve_upstream(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/api/mcp/ticks" => sse(|tx| async move {
                for i in 0..8 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if !event(&tx, format!(": ping {i}\n\n")).await {
                        return;
                    }
                }
                event(&tx, "data: done\n\n".into()).await;
            }),
            "/api/mcp/slow-head" => {
                tokio::time::sleep(Duration::from_millis(600)).await;
                Response::new(portcullis::body::full("ok"))
            }
            _ => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Response::new(portcullis::body::full("too late"))
            }
        }
    })
    .await;
    let g = gateway(&mcp_yaml(up, "    read_timeout: 1000\n")).await;
    let t0 = Instant::now();
    let resp = open(g.addr, "POST", "/mcp/ticks", &[], "{}").await;
    assert_eq!(resp.status(), 200);
    let got = frames(resp, t0).await;
    assert!(got.last().unwrap().1.contains("done"), "{got:?}");
    assert!(t0.elapsed() > Duration::from_millis(2000));
    let r = send(g.addr, "POST", "/mcp/slow-head", &[], b"{}").await;
    assert_eq!(r.status, 200);
    let r = send(g.addr, "POST", "/mcp/silent", &[], b"{}").await;
    assert_eq!(r.status, 504);
}

/// A raw upstream that reports (through the channel) when the gateway closes the
/// connection. `stream_first`: answer with an SSE head and keep sending pings.
async fn watched_upstream(stream_first: bool) -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if stream_first {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    loop {
                        let chunk = b"d\r\ndata: ping\n\n\r\n";
                        if s.write_all(chunk).await.is_err() {
                            break;
                        }
                        // A closed peer shows as EOF on read (or an error on write).
                        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            _ => {}
                        }
                    }
                } else {
                    // Hold the response; wait for the gateway to hang up.
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
                let _ = tx.send(()).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    // Before the response head: the client gives up while the tool is still running.
    let (up, mut closed) = watched_upstream(false).await;
    let g = gateway(&mcp_yaml(up, "")).await;
    let mut c = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    c.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(closed.try_recv().is_err(), "closed before the client left");
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream never saw the client leave");

    // Mid-stream (2026-07-28: closing the response stream is cancellation).
    let (up, mut closed) = watched_upstream(true).await;
    let g = gateway(&mcp_yaml(up, "")).await;
    let resp = open(g.addr, "POST", "/mcp", &[], "{}").await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(body);
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream stream was not cancelled");
}
