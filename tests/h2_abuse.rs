//! HTTP/2 abuse, black box: a real gateway on 127.0.0.1:0 driven by raw HTTP/2 frames
//! over TCP (floods, rapid reset, too many streams) or by the `h2` crate's client
//! (header lists, bodies that never come, windows kept shut, idle connections). Each
//! test checks that the abusive connection is closed, GOAWAY'd or its stream reset, and
//! that the gateway goes on serving others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use portcullis::proxy::Settings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(9 + payload.len());
    let len = u32::try_from(payload.len()).unwrap();
    b.put_slice(&len.to_be_bytes()[1..]);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u32(stream & 0x7fff_ffff);
    b.put_slice(payload);
    b.to_vec()
}

/// An HPACK block for `GET path` on `localhost`: static-table method and scheme,
/// literal (not indexed) :path and :authority.
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"localhost");
    b
}

/// A frame read from the gateway.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames from a raw connection.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// The next frame; None when the gateway closed the connection, or at `deadline`.
    async fn next(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 65536];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until GOAWAY (its error code) or the end of the connection (None).
    async fn goaway(&mut self, deadline: Instant) -> Option<u32> {
        while let Some(f) = self.next(deadline).await {
            if f.kind == GOAWAY {
                return Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
            }
        }
        None
    }
}

/// Connects, sends the preface and empty SETTINGS, acknowledges the gateway's
/// SETTINGS, and waits until the gateway has applied them (a PING answered after our
/// ACK).
async fn raw_h2(addr: SocketAddr) -> Reader {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let mut r = Reader { s, buf: Vec::new() };
    let deadline = Instant::now() + WAIT;
    loop {
        let f = r
            .next(deadline)
            .await
            .expect("no SETTINGS from the gateway");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            break;
        }
    }
    let mut ack = frame(SETTINGS, ACK, 0, &[]);
    ack.extend(frame(PING, 0, 0, b"applied!"));
    r.s.write_all(&ack).await.unwrap();
    loop {
        let f = r.next(deadline).await.expect("no PING answer");
        if f.kind == PING && f.flags & ACK != 0 {
            return r;
        }
    }
}

/// An h2-crate client connection (its driver runs in a task that reports when the
/// connection ends).
async fn h2_client(
    addr: SocketAddr,
    builder: h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = builder.handshake(s).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = tx.send(());
    });
    (send, rx)
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

/// One request on a new HTTP/2 connection: its status and body.
async fn h2_once(addr: SocketAddr, path: &str) -> (u16, Bytes) {
    let (send, _done) = h2_client(addr, h2::client::Builder::new()).await;
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(h2_get(path), true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = BytesMut::new();
    while let Some(d) = tokio::time::timeout(WAIT, body.data()).await.unwrap() {
        let d = d.unwrap();
        let _ = body.flow_control().release_capacity(d.len());
        out.extend_from_slice(&d);
    }
    (status, out.freeze())
}

/// The gateway still serves: HTTP/1.1 and HTTP/2 requests on new connections.
async fn still_serves(addr: SocketAddr) {
    assert_eq!(get(addr, "/ok").await.status, 200);
    assert_eq!(h2_once(addr, "/ok").await.0, 200);
}

/// An upstream that counts its requests and answers after `delay`.
async fn counting_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&n);
    let addr = serve_upstream(move |_req| {
        let count = Arc::clone(&count);
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            http::Response::new(portcullis::body::full("ok"))
        }
    })
    .await;
    (addr, n)
}

fn cfg(up: SocketAddr) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n{}    routes:\n      - paths: [/]\n",
        svc("a", up, "/")
    )
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_reaches_few_upstream_requests() {
    let (up, count) = counting_upstream(Duration::from_millis(50)).await;
    let g = gateway(&cfg(up)).await;
    let mut r = raw_h2(g.addr).await;
    // CVE-2023-44487: open a stream and cancel it at once, thousands of times, in one
    // burst (the client never waits for anything).
    const STREAMS: u32 = 5000;
    let block = get_block("/reset");
    let mut burst = Vec::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The gateway may close before taking it all.
    let _ = r.s.write_all(&burst).await;
    let code = r.goaway(Instant::now() + WAIT).await;
    assert_eq!(
        code,
        Some(ENHANCE_YOUR_CALM),
        "rapid reset: expected GOAWAY ENHANCE_YOUR_CALM"
    );
    let reached = count.load(Ordering::SeqCst);
    assert!(
        reached < (STREAMS / 10) as usize,
        "{reached} of {STREAMS} reset streams reached the upstream"
    );
    still_serves(g.addr).await;
}

#[tokio::test]
async fn continuation_flood_gets_goaway() {
    let (up, count) = counting_upstream(Duration::ZERO).await;
    let g = gateway(&cfg(up)).await;
    for payload in [0usize, 16 * 1024] {
        let mut r = raw_h2(g.addr).await;
        // A HEADERS frame that never ends its header block, then CONTINUATION frames
        // (empty ones, then full ones) without end.
        let mut block = get_block("/flood");
        block.extend_from_slice(&[0x40, 1, b'x', 0x7f, 0xff, 0xff, 0xff, 0x0f]);
        let mut flood = frame(HEADERS, END_STREAM, 1, &block);
        let filler = vec![b'a'; payload];
        let started = Instant::now();
        let mut sent = 0usize;
        let closed = loop {
            let mut chunk = Vec::new();
            for _ in 0..64 {
                chunk.extend(frame(CONTINUATION, 0, 1, &filler));
            }
            flood.extend(chunk);
            if r.s.write_all(&flood).await.is_err() {
                break true;
            }
            sent += 64;
            flood.clear();
            if sent >= 100_000 || started.elapsed() > WAIT {
                break false;
            }
        };
        let code = r.goaway(Instant::now() + WAIT).await;
        assert!(
            closed || code.is_some(),
            "{sent} CONTINUATION frames of {payload} bytes: neither GOAWAY nor close"
        );
        assert!(
            sent < 100_000,
            "the gateway took 100000 CONTINUATION frames of {payload} bytes"
        );
    }
    assert_eq!(count.load(Ordering::SeqCst), 0);
    still_serves(g.addr).await;
}

/// Writes `unit` frames in chunks without reading anything back, until a chunk
/// cannot be written within 2 s (the gateway stopped reading) or `cap` bytes went.
async fn flood_without_reading(s: &mut TcpStream, unit: &[u8], cap: usize) -> (usize, bool) {
    let chunk: Vec<u8> = unit
        .iter()
        .copied()
        .cycle()
        .take(unit.len() * 4096)
        .collect();
    let mut sent = 0;
    while sent < cap {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => return (sent, true),
            Err(_) => return (sent, false),
        }
    }
    (sent, false)
}

#[tokio::test]
async fn settings_and_ping_floods_are_back_pressured() {
    let (up, _) = counting_upstream(Duration::ZERO).await;
    let g = gateway(&cfg(up)).await;
    const CAP: usize = 256 << 20;
    for (name, unit) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])),
        ("PING", frame(PING, 0, 0, b"flooding")),
    ] {
        let mut r = raw_h2(g.addr).await;
        // Every SETTINGS and PING needs an answer; a client that never reads them
        // must stall, not make the gateway queue answers without bound.
        let (sent, closed) = flood_without_reading(&mut r.s, &unit, CAP).await;
        assert!(
            sent < CAP,
            "{name} flood: the gateway read {sent} bytes without the client reading its answers"
        );
        // Meanwhile, others are served.
        still_serves(g.addr).await;
        if !closed {
            // The flooder reads again: the gateway catches up (or has closed).
            let deadline = Instant::now() + WAIT;
            let mut answers = 0usize;
            while answers < 8 {
                match r.next(deadline).await {
                    Some(f) if f.flags & ACK != 0 => answers += 1,
                    Some(_) => {}
                    None => break,
                }
            }
        }
    }
    still_serves(g.addr).await;
}

#[tokio::test]
async fn streams_over_the_concurrency_limit_are_refused() {
    let (up, _) = counting_upstream(Duration::from_millis(1500)).await;
    let mut settings = Settings::default();
    settings.limits.h2_max_concurrent_streams = 4;
    let g = gateway_with(&cfg(up), settings, "127.0.0.1:0").await;
    let mut r = raw_h2(g.addr).await;
    let block = get_block("/slow");
    let mut five = Vec::new();
    for id in [1u32, 3, 5, 7, 9] {
        five.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
    }
    r.s.write_all(&five).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let mut refused = Vec::new();
    let mut answered = Vec::new();
    while answered.len() + refused.len() < 5 {
        let f = r
            .next(deadline)
            .await
            .expect("the gateway stopped answering");
        match f.kind {
            RST_STREAM => {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                assert_eq!(code, REFUSED_STREAM, "stream {} reset", f.stream);
                refused.push(f.stream);
            }
            HEADERS => answered.push(f.stream),
            _ => {}
        }
    }
    assert_eq!(refused, vec![9], "answered: {answered:?}");
    answered.sort_unstable();
    assert_eq!(answered, vec![1, 3, 5, 7]);
    // The same connection goes on: a new stream once the others are done.
    r.s.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        11,
        &get_block("/again"),
    ))
    .await
    .unwrap();
    loop {
        let f = r.next(deadline).await.expect("stream 11 unanswered");
        if f.kind == HEADERS && f.stream == 11 {
            break;
        }
        assert_ne!(f.kind, GOAWAY);
    }
    still_serves(g.addr).await;
}

#[tokio::test]
async fn oversized_header_lists_are_refused() {
    let (up, count) = counting_upstream(Duration::ZERO).await;
    let g = gateway(&cfg(up)).await;
    let (send, _done) = h2_client(g.addr, h2::client::Builder::new()).await;
    // Over the HTTP/2 header list limit (twice --max-header-bytes plus 16 KiB): the
    // stream is refused before any request is made of it.
    let mut send = send.ready().await.unwrap();
    let big = http::Request::builder()
        .uri("http://localhost/big")
        .header("x-big", "a".repeat(200 * 1024))
        .body(())
        .unwrap();
    let refused = match send.send_request(big, true) {
        Err(_) => true,
        Ok((resp, _)) => match tokio::time::timeout(WAIT, resp).await.unwrap() {
            Err(_) => true,
            Ok(r) => r.status() == 431,
        },
    };
    assert!(refused, "a 200 KiB header list was accepted");
    // Over --max-header-bytes but within the list limit: Kong's 400.
    let (send, _done) = h2_client(g.addr, h2::client::Builder::new()).await;
    let mut send = send.ready().await.unwrap();
    let mid = http::Request::builder()
        .uri("http://localhost/mid")
        .header("x-mid", "a".repeat(40 * 1024))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(mid, true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 400);
    // The same connection still serves a normal request.
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(h2_get("/ok"), true).unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, resp)
            .await
            .unwrap()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    still_serves(g.addr).await;
}

#[tokio::test]
async fn a_body_that_never_comes_times_out() {
    let up = echo_upstream().await;
    // /buffered: key-auth reads the body whole (body timeout, 408); /streamed: the
    // body streams to an upstream with a 500 ms read timeout (504).
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n{}    routes:\n      - paths: [/buffered]\n        plugins:\n          - name: key-auth\n            config:\n              key_in_body: true\n{}    read_timeout: 500\n    routes:\n      - paths: [/streamed]\n      - paths: [/ok]\nconsumers:\n  - username: u\n    keyauth_credentials:\n      - key: k\n",
        svc("a", up, "/"),
        svc("b", up, "/"),
    );
    let mut settings = Settings::default();
    settings.limits.body_timeout = Duration::from_millis(500);
    let g = gateway_with(&yaml, settings, "127.0.0.1:0").await;
    for (path, status) in [("/buffered", 408), ("/streamed", 504)] {
        let (send, _done) = h2_client(g.addr, h2::client::Builder::new()).await;
        let mut send = send.ready().await.unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", "10")
            .body(())
            .unwrap();
        // The stream stays open and no DATA ever comes.
        let (resp, _body_stream) = send.send_request(req, false).unwrap();
        let resp = tokio::time::timeout(WAIT, resp)
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer to a body that never came"))
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
    still_serves(g.addr).await;
}

#[tokio::test]
async fn a_window_kept_shut_closes_the_connection_after_the_send_timeout() {
    let big = serve_upstream(|_req| async {
        http::Response::new(portcullis::body::full(vec![b'x'; 1 << 20]))
    })
    .await;
    let mut settings = Settings::default();
    settings.limits.send_timeout = Duration::from_millis(600);
    let g = gateway_with(&cfg(big), settings, "127.0.0.1:0").await;
    // The client's stream window is 0 and it never opens it: the response can't move.
    let mut b = h2::client::Builder::new();
    b.initial_window_size(0);
    let (send, done) = h2_client(g.addr, b).await;
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(h2_get("/big"), true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    tokio::time::timeout(WAIT, done)
        .await
        .expect("a connection whose window stays shut was never closed")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    let mut body = resp.into_body();
    let mut got = 0;
    let ended_badly = loop {
        match body.data().await {
            Some(Ok(d)) => got += d.len(),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(
        ended_badly && got < 1 << 20,
        "the body completed ({got} bytes)"
    );
    still_serves(g.addr).await;
}

#[tokio::test]
async fn idle_http2_connections_get_goaway_but_busy_ones_do_not() {
    let up = echo_upstream().await;
    let mut settings = Settings::default();
    settings.limits.idle_timeout = Duration::from_millis(400);
    let g = gateway_with(&cfg(up), settings, "127.0.0.1:0").await;
    // A stream longer than the idle timeout (SSE: 3 events 300 ms apart) is not cut.
    let (send, mut done) = h2_client(g.addr, h2::client::Builder::new()).await;
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(h2_get("/sse"), true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    let mut body = resp.into_body();
    let mut events = Vec::new();
    while let Some(d) = tokio::time::timeout(WAIT, body.data()).await.unwrap() {
        let d = d.unwrap();
        let _ = body.flow_control().release_capacity(d.len());
        events.extend_from_slice(&d);
    }
    assert_eq!(
        String::from_utf8_lossy(&events).matches("data: ").count(),
        3
    );
    // Then nothing: the connection ends about the idle timeout later.
    let idle_from = Instant::now();
    tokio::time::timeout(WAIT, &mut done)
        .await
        .expect("an idle HTTP/2 connection was never closed")
        .unwrap();
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(350), "closed after {idle:?}");
    // A raw client sees the GOAWAY (NO_ERROR) before the close.
    let mut r = raw_h2(g.addr).await;
    r.s.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/x"),
    ))
    .await
    .unwrap();
    assert_eq!(r.goaway(Instant::now() + WAIT).await, Some(0));
    still_serves(g.addr).await;
}

#[test]
fn invalid_http2_limits_are_refused_at_start() {
    for (flag, value, message) in [
        (
            "--h2-max-concurrent-streams",
            "0",
            "--h2-max-concurrent-streams: must be at least 1",
        ),
        (
            "--h2-max-send-buffer",
            "0",
            "--h2-max-send-buffer: must be between 1 and 4294967295",
        ),
        ("--send-timeout", "soon", "is not a number of seconds"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--listen", "127.0.0.1:0", "--status-listen", "off"])
            .args(["--tls-listen", "off", flag, value])
            .env_remove("PORTCULLIS_CONFIG")
            .output()
            .expect("cannot run portcullis");
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{flag} {value}: {err}");
    }
}
