//! Upgrade (WebSocket) tunnels, black box: the handshake goes through strip_path and
//! the plugin chain, then bytes flow both ways until either side closes; the service
//! read timeout closes an idle tunnel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that accepts any upgrade, reports the request it saw in a header, and
/// echoes every byte back in upper case (so the test can tell it went through).
async fn upgrade_echo_upstream() -> std::net::SocketAddr {
    serve_upstream(|mut req: Request<Incoming>| async move {
        let seen = format!(
            "{} host={} upgrade={} xff={}",
            req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
            req.headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            req.headers()
                .get("upgrade")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        if req.headers().get("upgrade").is_none() {
            return Response::builder()
                .status(400)
                .body(portcullis::body::full("expected an upgrade"))
                .unwrap();
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = hyper_util::rt::TokioIo::new(up);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let upper: Vec<u8> = buf[..n].to_ascii_uppercase();
                        if io.write_all(&upper).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .header("x-seen", seen)
            .body(portcullis::body::empty())
            .unwrap()
    })
    .await
}

async fn read_until(s: &mut tokio::net::TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !out.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("timed out")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    out
}

const HANDSHAKE: &str = "GET /realtime/v1/websocket?apikey=k&vsn=1.0.0 HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn websocket_tunnel_relays_both_ways() {
    let up = upgrade_echo_upstream().await;
    let yaml = format!(
        "_format_version: \"2.1\"\nservices:\n  - name: realtime\n    url: http://{up}/socket\n    protocol: ws\n    routes:\n      - name: realtime-v1-ws\n        strip_path: true\n        paths: [/realtime/v1/]\n    plugins:\n      - name: cors\n"
    );
    let g = gateway(&yaml).await;
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    let head = read_until(&mut s, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // strip_path joined the path, Host rewritten to the upstream's, Upgrade passed on.
    assert!(
        head.contains(&format!(
            "x-seen: /socket/websocket?apikey=k&vsn=1.0.0 host={up} upgrade=websocket xff=127.0.0.1"
        )),
        "{head}"
    );
    for msg in ["hello", "second frame", "third"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let got = read_until(&mut s, msg.to_ascii_uppercase().as_bytes()).await;
        assert_eq!(got, msg.to_ascii_uppercase().as_bytes());
    }
    // The client closes: the tunnel ends without trouble, and the gateway still serves.
    drop(s);
    let r = get(g.addr, "/realtime/v1/plain").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "expected an upgrade");
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_the_read_timeout() {
    let up = upgrade_echo_upstream().await;
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: realtime\n    url: ws://{up}/socket\n    read_timeout: 400\n    routes:\n      - paths: [/realtime/v1/]\n"
    );
    let g = gateway(&yaml).await;
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    read_until(&mut s, b"\r\n\r\n").await;
    // Traffic keeps it alive past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"ping").await.unwrap();
        read_until(&mut s, b"PING").await;
    }
    // ...silence closes it.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn upgrade_goes_through_the_plugin_chain() {
    let up = upgrade_echo_upstream().await;
    let yaml = format!(
        "_format_version: \"3.0\"\nconsumers:\n  - username: anon\n    keyauth_credentials:\n      - key: good\nservices:\n  - name: realtime\n    url: ws://{up}/socket\n    routes:\n      - paths: [/realtime/v1/]\n    plugins:\n      - name: key-auth\n"
    );
    let g = gateway(&yaml).await;
    let bad = HANDSHAKE.replace("apikey=k", "apikey=bad");
    let out = raw(g.addr, bad.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    let good = HANDSHAKE.replace("apikey=k", "apikey=good");
    let mut s = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    s.write_all(good.as_bytes()).await.unwrap();
    let head = read_until(&mut s, b"\r\n\r\n").await;
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s.write_all(b"x").await.unwrap();
    assert_eq!(read_until(&mut s, b"X").await, b"X");
    let _ = Bytes::new();
}
