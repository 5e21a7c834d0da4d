//! HTTP/1.1 request framing and smuggling, black box: raw bytes to the real binary,
//! a raw recording upstream behind it (tests/common/recorder.rs) that parses as a
//! strict origin and flags anything it could read two ways. Every case is either
//! refused with a 4xx or forwarded in one unambiguous form; nothing is ever smuggled
//! behind another request. The access log (JSON on stdout) is checked where the issue
//! asks for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::GatewayProcess;
use common::recorder::{Recorder, Seen};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// The gateway binary with one catch-all route to `up`, JSON access log on stdout.
fn gateway(up: SocketAddr, extra: &[&str]) -> GatewayProcess {
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: rec\n    url: http://{up}/\n    routes:\n      - name: all\n        paths: [/]\n"
    );
    GatewayProcess::run()
        .config_yaml(&yaml)
        .loopback()
        .args(["--access-log", "json"])
        .args(extra)
        .start()
}

/// Writes `bytes`, then reads until the gateway closes, or nothing more came for
/// `idle` (after something came), or `WAIT` passed.
async fn exchange(addr: SocketAddr, bytes: &[u8], idle: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_some(&mut s, idle).await
}

async fn read_some(s: &mut TcpStream, idle: Duration) -> String {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = if out.is_empty() { left } else { idle.min(left) };
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n') || text[..*i].ends_with("ok"))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn first_status(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP/1.1 response: {text:?}"))
}

/// Waits briefly for straggling upstream traffic, then asserts no request reached
/// the upstream at all.
async fn assert_nothing_upstream(rec: &Recorder, what: &str) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = rec.requests();
    assert!(seen.is_empty(), "{what}: upstream saw {seen:#?}");
}

/// The JSON access-log lines so far.
fn log_lines(g: &GatewayProcess) -> Vec<serde_json::Value> {
    g.stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits (bounded) for an access-log line with `status`; returns it.
async fn log_with_status(g: &GatewayProcess, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = log_lines(g).into_iter().find(|l| l["status"] == status) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line with status {status}:\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request is fine upstream: clean framing, complete, and one of the expected paths.
fn assert_clean(s: &Seen, what: &str) {
    assert!(s.ambiguous.is_empty(), "{what}: ambiguous upstream: {s:#?}");
    assert!(s.complete, "{what}: incomplete upstream: {s:#?}");
    assert!(
        !(s.header("content-length").is_some() && s.header("transfer-encoding").is_some()),
        "{what}: {s:#?}"
    );
}

// ---------------------------------------------------------------------------------
// Content-Length / Transfer-Encoding
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_never_smuggles() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    // Under CL the body is "0\r\n\r\n" and a second request follows; under TE the body
    // is empty and "GET /smuggled" is the next request. Either reading by a proxy that
    // forwards both headers lets the upstream pick the other.
    let attack = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let out = exchange(g.proxy_addr(), attack, Duration::from_millis(500)).await;
    let st = statuses(&out);
    assert!(!st.is_empty(), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for s in rec.requests() {
        assert_clean(&s, "CL+TE");
        assert_ne!(s.target, "/smuggled", "smuggled through: {out}");
        assert!(s.body.is_empty(), "{s:#?}");
    }
    // Either refused (4xx) or the TE reading with the connection closed after it
    // (so the trailing bytes are never read as a request): one response only.
    assert!(
        (400..500).contains(&st[0]) || st == [200],
        "statuses {st:?}: {out}"
    );

    // Variants: TE first, CL after; TE in odd case; CL then TE on a second request.
    for attack in [
        &b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        &b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let before = rec.requests().len();
        let out = exchange(g.proxy_addr(), attack, Duration::from_millis(300)).await;
        let st = first_status(&out);
        let seen = rec.requests();
        for s in &seen[before..] {
            assert_clean(s, "TE+CL");
            assert_eq!(s.body, b"hello", "{s:#?}");
        }
        assert!(st == 200 || (400..500).contains(&st), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_or_malformed_content_length_is_refused() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    for (cl, want_ok) in [
        ("Content-Length: 5\r\nContent-Length: 6", false),
        ("Content-Length: 5, 6", false),
        ("Content-Length: -5", false),
        ("Content-Length: +5", false),
        ("Content-Length: 0x5", false),
        ("Content-Length: 5a", false),
        ("Content-Length: 99999999999999999999999", false),
        ("Content-Length: 5 5", false),
        // Identical duplicates: nginx refuses them; hyper reads one length. Either way
        // the upstream must see exactly one.
        ("Content-Length: 5\r\nContent-Length: 5", true),
    ] {
        let before = rec.requests().len();
        let req = format!(
            "POST /cl HTTP/1.1\r\nHost: x\r\n{cl}\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let out = exchange(g.proxy_addr(), req.as_bytes(), Duration::from_millis(300)).await;
        let st = first_status(&out);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = rec.requests();
        for s in &seen[before..] {
            assert_clean(s, cl);
            // With a valid length the next request is a legitimate pipelined one.
            assert!(want_ok || s.target != "/smuggled", "{cl}: {out}");
            if s.target == "/cl" {
                assert_eq!(s.headers_named("content-length").len(), 1, "{cl}: {s:#?}");
            }
        }
        if want_ok {
            assert!(st == 200 || st == 400, "{cl}: {out}");
        } else {
            assert_eq!(st, 400, "{cl}: {out}");
            assert_eq!(seen.len(), before, "{cl}: forwarded {:#?}", &seen[before..]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_encoding_must_end_in_chunked() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunkedx",
        "Transfer-Encoding: chunked;q=1",
    ] {
        let req = format!("POST /te HTTP/1.1\r\nHost: x\r\n{te}\r\n\r\n{body}");
        let out = exchange(g.proxy_addr(), req.as_bytes(), Duration::from_millis(300)).await;
        assert_eq!(first_status(&out), 400, "{te}: {out}");
    }
    assert_nothing_upstream(&rec, "TE not final chunked").await;

    // chunked last (after another coding): the upstream must not receive a
    // Transfer-Encoding it would decode differently (the gateway does not decode gzip).
    for te in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
    ] {
        let before = rec.requests().len();
        let req = format!("POST /te HTTP/1.1\r\nHost: x\r\n{te}\r\n\r\n{body}");
        let out = exchange(g.proxy_addr(), req.as_bytes(), Duration::from_millis(300)).await;
        let st = first_status(&out);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for s in &rec.requests()[before..] {
            assert_clean(s, te);
        }
        assert!(st == 200 || st == 400 || st == 501, "{te}: {out}");
    }

    // HTTP/1.0 has no chunked coding.
    let req = format!("POST /te HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    let before = rec.requests().len();
    let out = exchange(g.proxy_addr(), req.as_bytes(), Duration::from_millis(300)).await;
    assert!(
        out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.0 400"),
        "{out}"
    );
    assert_eq!(rec.requests().len(), before);
}

// ---------------------------------------------------------------------------------
// Header syntax
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_header_lines_are_refused() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    for (what, head) in [
        (
            "obs-fold",
            &b"GET /h HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"[..],
        ),
        (
            "obs-fold tab",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
        ),
        ("fold before host", b"GET /h HTTP/1.1\r\n Host: x\r\n\r\n"),
        (
            "space before colon",
            b"GET /h HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
        ),
        (
            "space in name",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n",
        ),
        ("empty name", b"GET /h HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n"),
        ("no colon", b"GET /h HTTP/1.1\r\nHost: x\r\nXA\r\n\r\n"),
        (
            "paren in name",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n",
        ),
        (
            "NUL in value",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "NUL in name",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-\0A: b\r\n\r\n",
        ),
        (
            "bare CR in value",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        ),
        ("bare CR line end", b"GET /h HTTP/1.1\rHost: x\r\n\r\n"),
        (
            "DEL in value",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
        ),
        ("two Host", b"GET /h HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
        ("no Host on 1.1", b"GET /h HTTP/1.1\r\nX-A: b\r\n\r\n"),
        ("Host with space", b"GET /h HTTP/1.1\r\nHost: x y\r\n\r\n"),
        ("Host with slash", b"GET /h HTTP/1.1\r\nHost: x/y\r\n\r\n"),
        (
            "Host with backslash",
            b"GET /h HTTP/1.1\r\nHost: x\\y\r\n\r\n",
        ),
        (
            "Host with dot dot",
            b"GET /h HTTP/1.1\r\nHost: x..y\r\n\r\n",
        ),
        ("empty Host", b"GET /h HTTP/1.1\r\nHost: \r\n\r\n"),
    ] {
        let out = exchange(g.proxy_addr(), head, Duration::from_millis(300)).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{what}: {}",
            out.lines().next().unwrap_or("<closed>")
        );
    }
    assert_nothing_upstream(&rec, "malformed headers").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_lf_line_ends_are_read_as_nginx_reads_them() {
    // nginx (and RFC 9112 §2.2, as a MAY) accept a bare LF as a line end; what matters
    // is that the upstream then receives proper CRLF lines, never the bare LF.
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    let out = exchange(
        g.proxy_addr(),
        b"GET /lf HTTP/1.1\nHost: x\nX-A: b\n\n",
        Duration::from_millis(300),
    )
    .await;
    let st = first_status(&out);
    assert!(st == 200 || st == 400, "{out}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for s in rec.requests() {
        assert_clean(&s, "bare LF");
        assert_eq!(s.target, "/lf");
        assert_eq!(s.header("x-a"), Some("b"));
    }
    // A bare LF inside a value never becomes a header line of its own upstream.
    let out = exchange(
        g.proxy_addr(),
        b"GET /lf2 HTTP/1.1\r\nHost: x\r\nX-A: b\nX-Injected: 1\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    let st = first_status(&out);
    assert!(st == 200 || st == 400, "{out}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for s in rec.requests() {
        assert_clean(&s, "bare LF in value");
    }
}

// ---------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn chunk_size_and_extension_abuse() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    let head = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Each one malformed in its first chunk line: nothing complete may reach the
    // upstream, and the client gets a 400.
    let ext = "a".repeat(64 * 1024);
    let cases: Vec<(&str, String)> = vec![
        (
            "overflowing size",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n".into()),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n".into()),
        ("no size", "\r\nhello\r\n0\r\n\r\n".into()),
        ("space in size", "5 5\r\nhello\r\n0\r\n\r\n".into()),
        (
            "chunk longer than its size",
            "3\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("huge extension", format!("5;{ext}\r\nhello\r\n0\r\n\r\n")),
        ("bare LF after data", "5\r\nhello\n0\r\n\r\n".into()),
    ];
    for (what, body) in cases {
        let before = rec.requests().len();
        let out = exchange(
            g.proxy_addr(),
            format!("{head}{body}").as_bytes(),
            Duration::from_millis(500),
        )
        .await;
        let st = if out.is_empty() {
            0
        } else {
            first_status(&out)
        };
        assert_eq!(st, 400, "{what}: {out:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        for s in &rec.requests()[before..] {
            assert!(
                !s.complete,
                "{what}: upstream got a complete request: {s:#?}"
            );
        }
    }
    // Allowed extensions and trailers: forwarded cleanly, body intact.
    let before = rec.requests().len();
    let out = exchange(
        g.proxy_addr(),
        format!("{head}5;name=value\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n").as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(first_status(&out), 200, "{out}");
    let seen = rec.wait_for(before + 1, WAIT).await;
    assert_clean(&seen[before], "extension + trailer");
    assert_eq!(seen[before].body, b"hello");
    // Trailers must not smuggle framing headers into the upstream head.
    let before = rec.requests().len();
    let out = exchange(
        g.proxy_addr(),
        format!(
            "{head}5\r\nhello\r\n0\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    let st = first_status(&out);
    assert!(st == 200 || st == 400, "{out}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for s in &rec.requests()[before..] {
        assert_clean(s, "framing trailers");
        assert_eq!(s.body, b"hello");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_malformed_after_streaming_began_is_a_400_and_aborts_upstream() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    let mut s = TcpStream::connect(g.proxy_addr()).await.unwrap();
    s.write_all(
        b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    // The upstream has the head (and the first chunk) before the body goes bad.
    let deadline = Instant::now() + WAIT;
    while rec.raw_bytes().iter().all(|b| !b.ends_with(b"hello\r\n")) {
        assert!(
            Instant::now() < deadline,
            "upstream never got the first chunk"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.write_all(b"zz\r\nbroken\r\n0\r\n\r\n").await.unwrap();
    let out = read_some(&mut s, Duration::from_millis(500)).await;
    assert_eq!(first_status(&out), 400, "{out}");
    let seen = rec.wait_for(1, WAIT).await;
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].complete,
        "upstream saw a complete request: {:#?}",
        seen[0]
    );
    assert_eq!(seen[0].target, "/stream");
    let line = log_with_status(&g, 400).await;
    assert_eq!(line["path"], "/stream", "{line}");
    assert_eq!(line["method"], "POST", "{line}");

    // Cut short (client goes away mid-body): the upstream request is aborted too.
    let mut s = TcpStream::connect(g.proxy_addr()).await.unwrap();
    s.write_all(b"POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while rec
        .raw_bytes()
        .iter()
        .all(|b| !b.ends_with(b"\r\n\r\nhello"))
    {
        assert!(
            Instant::now() < deadline,
            "upstream never got the first bytes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(s);
    let seen = rec.wait_for(2, WAIT).await;
    assert_eq!(seen[1].target, "/short");
    assert!(!seen[1].complete, "{:#?}", seen[1]);
}

// ---------------------------------------------------------------------------------
// Targets, methods, versions
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn targets_methods_and_versions() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    let a = g.proxy_addr();

    // Absolute-form: the upstream gets origin-form, never the client's authority.
    let out = exchange(
        a,
        b"GET http://evil.example/abs?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(first_status(&out), 200, "{out}");
    let seen = rec.wait_for(1, WAIT).await;
    assert_clean(&seen[0], "absolute-form");
    assert_eq!(seen[0].target, "/abs?q=1");
    assert!(!seen[0].target.contains("evil"), "{:#?}", seen[0]);

    // CONNECT and asterisk-form are not proxied.
    for req in [
        &b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"[..],
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let out = exchange(a, req, Duration::from_millis(300)).await;
        let st = first_status(&out);
        assert!(
            (400..500).contains(&st),
            "{}: {out}",
            String::from_utf8_lossy(req)
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rec.requests().len(), 1, "{:#?}", rec.requests());

    // Unknown but well-formed methods go through as they are (nginx and Kong proxy
    // any token); malformed ones are refused.
    let out = exchange(
        a,
        b"PURGE /m HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(first_status(&out), 200, "{out}");
    let seen = rec.wait_for(2, WAIT).await;
    assert_eq!(seen[1].method, "PURGE");
    for req in [
        &b"G(T /m HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET  /m HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /m HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /m HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /m HTTP/1.x\r\nHost: x\r\n\r\n",
        b"GET /m\r\nHost: x\r\n\r\n",
        b"GET /m h\0 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let out = exchange(a, req, Duration::from_millis(300)).await;
        let st = if out.is_empty() {
            0
        } else {
            first_status(&out)
        };
        assert!(
            (400..506).contains(&st),
            "{:?}: {out:?}",
            String::from_utf8_lossy(req)
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rec.requests().len(), 2, "{:#?}", rec.requests());

    // HTTP/1.0 without Host: served (nginx does), the upstream gets one Host.
    let out = exchange(a, b"GET /ten HTTP/1.0\r\n\r\n", Duration::from_millis(300)).await;
    assert!(out.contains(" 200 "), "{out}");
    let seen = rec.wait_for(3, WAIT).await;
    assert_clean(&seen[2], "1.0 without Host");
    assert_eq!(seen[2].target, "/ten");
    assert_eq!(seen[2].headers_named("host").len(), 1, "{:#?}", seen[2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_and_pipelining() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    let a = g.proxy_addr();

    // Expect: 100-continue: the interim answer comes before the body is sent, then the
    // upstream gets the whole body.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(
        b"POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let out = read_some(&mut s, Duration::from_millis(300)).await;
    let all = format!("{interim}{out}");
    assert!(all.contains("HTTP/1.1 200 "), "{all}");
    let seen = rec.wait_for(1, WAIT).await;
    assert_clean(&seen[0], "expect");
    assert_eq!(seen[0].body, b"hello");

    // Pipelined: answered in order, each forwarded once, nothing merged or lost.
    let out = exchange(
        a,
        b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\nGET /inside HTTP/1.1\r\nHost: x\r\n\r\nGET /p3 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(statuses(&out), [200, 200, 200], "{out}");
    let seen = rec.wait_for(4, WAIT).await;
    let targets: Vec<&str> = seen[1..].iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/p1", "/p2", "/p3"]);
    assert_eq!(seen[2].body, b"GET /inside HTTP/1.1\r\nHost: x\r\n\r\n");
    for s in &seen {
        assert_clean(s, "pipelined");
    }

    // A pipelined request after a refused one is not served (the connection closes).
    let out = exchange(
        a,
        b"GET /bad HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(statuses(&out), [400], "{out}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rec.requests().iter().all(|s| s.target != "/after"));
}

// ---------------------------------------------------------------------------------
// Wire-level rejections leave an access-log line
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn wire_level_rejections_are_logged() {
    let rec = Recorder::start().await;
    let g = gateway(rec.addr(), &[]);
    let a = g.proxy_addr();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "t".repeat(20 * 1024));
    let big_head = format!(
        "GET /h HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(70 * 1024)
    );
    for (what, req, status) in [
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), 400u16),
        ("target too long", long_target.into_bytes(), 414),
        ("head too large", big_head.into_bytes(), 400),
    ] {
        let before = log_lines(&g).len();
        let out = exchange(a, &req, Duration::from_millis(300)).await;
        assert_eq!(first_status(&out), status, "{what}: {out}");
        let deadline = Instant::now() + WAIT;
        let line = loop {
            let lines = log_lines(&g);
            if lines.len() > before {
                break lines[before].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no access-log line\n{}",
                g.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(line["status"], status, "{what}: {line}");
        assert_eq!(line["client_ip"], "127.0.0.1", "{what}: {line}");
        assert!(
            line["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{line}"
        );
        // The request id in the answer's body and header is the logged one.
        assert!(
            out.contains(line["request_id"].as_str().unwrap()),
            "{what}: {out}"
        );
    }
    assert_nothing_upstream(&rec, "wire-level rejections").await;
}
