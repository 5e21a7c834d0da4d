//! Bypass attempts against Supabase's layout, black box: `/api/mcp` and `/mcp` blocked
//! by request-termination, `/ipmcp` by ip-restriction, `/` open to the same upstream
//! (one "studio"). Raw HTTP/1.1 bytes (so no client library tidies the target) and
//! HTTP/2 with prior knowledge; a recording upstream checks that no request ever
//! reaches the blocked upstream paths, under any reading an upstream might apply
//! (percent-decoding, overlong UTF-8, backslashes, NUL truncation, dot segments,
//! trailing dots, repeated slashes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::recorder::Recorder;
use common::{TestGateway, gateway};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;

fn layout(up: SocketAddr) -> String {
    format!(
        r#"_format_version: "3.0"
services:
  - name: mcp-blocker
    url: http://{up}/api/mcp
    routes:
      - name: mcp-blocker-route
        strip_path: true
        paths: [/api/mcp]
    plugins:
      - name: request-termination
        config:
          status_code: 403
          message: "Access is forbidden."
  - name: mcp
    url: http://{up}/api/mcp
    routes:
      - name: mcp
        strip_path: true
        paths: [/mcp]
    plugins:
      - name: request-termination
        config:
          status_code: 403
          message: "Access is forbidden."
  - name: ipmcp
    url: http://{up}/api/ipmcp
    routes:
      - name: ipmcp
        strip_path: true
        paths: [/ipmcp]
    plugins:
      - name: ip-restriction
        config:
          allow: [10.0.0.0/8, 192.0.2.1]
  - name: ipok
    url: http://{up}/api/ipok
    routes:
      - name: ipok
        strip_path: true
        paths: [/ipok]
    plugins:
      - name: ip-restriction
        config:
          deny: [10.0.0.0/8, 192.0.2.1]
  - name: dashboard
    url: http://{up}/
    routes:
      - name: dashboard-all
        strip_path: true
        paths: [/]
"#
    )
}

async fn setup() -> (Recorder, TestGateway) {
    let rec = Recorder::start().await;
    let g = gateway(&layout(rec.addr())).await;
    (rec, g)
}

/// Decodes %XX except the escapes that change a path's structure (`%2F`, `%5C`, `%3F`,
/// `%23`, `%25`): RFC 3986 makes `/api%2Fmcp` a different path from `/api/mcp`, and
/// Kong forwards it as such. Everything else (letters, dots, NUL, controls, non-ASCII
/// bytes) is decoded. Invalid escapes stay as they are.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&s[i + 1..i + 3]), 16)
            && !matches!(b, b'/' | b'\\' | b'?' | b'#' | b'%')
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Overlong UTF-8 forms of ASCII, as a lax decoder reads them.
fn fold_overlong(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if (b == 0xC0 || b == 0xC1) && i + 1 < s.len() && s[i + 1] & 0xC0 == 0x80 {
            out.push(((b & 0x1F) << 6) | (s[i + 1] & 0x3F));
            i += 2;
            continue;
        }
        if b == 0xE0 && i + 2 < s.len() && s[i + 1] & 0xE0 == 0x80 && s[i + 2] & 0xC0 == 0x80 {
            out.push(((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F));
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The most generous reading any upstream might give `target`: percent-decoded,
/// overlong UTF-8 folded, `\` as `/`, cut at NUL, raw tabs/newlines dropped, repeated
/// slashes collapsed, trailing dots and spaces of segments dropped, dot segments
/// resolved. `;params` are kept: RFC 3986 makes `/;/api/mcp` another path, and Kong
/// forwards it as it is (README, "Security model").
fn generous(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    // Decoded once, as an origin server does: a double-encoded `%256d` is `%6d` to it
    // (and is forwarded as it is, as Kong does; an upstream decoding twice is out of
    // reach of any gateway).
    // WHATWG URL parsing drops raw tabs and newlines (before decoding).
    let path: String = path
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let mut b = fold_overlong(&percent_decode(path.as_bytes()));
    if let Some(i) = b.iter().position(|&c| c == 0) {
        b.truncate(i);
    }
    let text: String = String::from_utf8_lossy(&b)
        .chars()
        .map(|c| if c == '\\' { '/' } else { c })
        .collect();
    // Dot segments: resolved on the original segments ("." and ".." after decoding).
    let mut resolved: Vec<String> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                resolved.pop();
            }
            s => resolved.push(s.trim_end_matches(['.', ' ']).to_string()),
        }
    }
    format!("/{}", resolved.join("/"))
}

/// A path an upstream could read as the blocked area.
fn blocked(target: &str) -> bool {
    let g = generous(target);
    g.starts_with("/api/mcp") || g.starts_with("/api/ipmcp")
}

/// Every target that reached the upstream is harmless under the generous reading.
fn assert_upstream_clean(rec: &Recorder, ctx: &str) {
    for s in rec.requests() {
        assert!(
            !blocked(&s.target),
            "{ctx}: the blocked upstream path was reached with {:?} (reads as {:?})",
            s.target,
            generous(&s.target)
        );
    }
}

/// The HTTP/1.1 status for raw bytes, or 0 when the gateway closed without one.
async fn status_of(addr: SocketAddr, req: &[u8]) -> u16 {
    let out = common::raw(addr, req).await;
    out.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The targets to try for a blocked area whose path is `segs` (e.g. ["api", "mcp"]).
fn vectors(segs: &[&str]) -> Vec<String> {
    let last = segs[segs.len() - 1];
    let head = &segs[..segs.len() - 1];
    let join = |sep: &str| format!("/{}", segs.join(sep));
    let with_last = |l: &str| {
        let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        v.push(l.to_string());
        format!("/{}", v.join("/"))
    };
    let first = last.as_bytes()[0];
    let rest = &last[1..];
    let mut v = vec![
        join("/"),
        // Encoded letters, slashes, backslashes.
        with_last(&format!("%{first:02x}{rest}")),
        with_last(&format!("%{first:02X}{rest}")),
        with_last(&format!("%25{first:02x}{rest}")),
        join("%2f"),
        join("%2F"),
        join("%5c"),
        join("%5C"),
        join("\\"),
        // Repeated slashes and dot segments.
        join("//"),
        format!("/{}", join("/")),
        format!("//{}", &join("/")[1..]),
        join("/./"),
        join("/%2e/"),
        join("/%2E/"),
        join("/x/../"),
        join("/x/%2e%2e/"),
        join("/x/%2E%2E/"),
        join("/x/.%2e/"),
        join("/x/%2e./"),
        join("/x%2f..%2f"),
        join("/x%2F..%2F"),
        join("/x/..%2f"),
        join("/x\\..\\"),
        join("/x/..\\"),
        join("/x/..%5c"),
        format!("/.{}", join("/")),
        format!("/./{}", &join("/")[1..]),
        format!("/%2e/{}", &join("/")[1..]),
        format!("/x/../{}", &join("/")[1..]),
        format!("/x/%2e%2e/{}", &join("/")[1..]),
        format!("/x/%2e%2e%2f{}", &join("/")[1..]),
        format!("/;/{}", &join("/")[1..]),
        format!("/.;/{}", &join("/")[1..]),
        // Trailing dots, slashes, parameters and padding.
        with_last(&format!("{last}.")),
        with_last(&format!("{last}./")),
        with_last(&format!("{last}..")),
        with_last(&format!("{last}/")),
        with_last(&format!("{last}//")),
        with_last(&format!("{last}/.")),
        with_last(&format!("{last}/..")),
        with_last(&format!("{last}%2e")),
        with_last(&format!("{last}%2f")),
        with_last(&format!("{last}%20")),
        with_last(&format!("{last};x")),
        with_last(&format!("{last}%3bx")),
        with_last(&format!("{last}?x=1")),
        with_last(&format!("{last}%3f")),
        with_last(&format!("{last}%23")),
        // Overlong UTF-8 for '.', '/', '\' and the first letter.
        join("/%c0%ae/"),
        join("/x/%c0%ae%c0%ae/"),
        join("%c0%af"),
        join("%c1%9c"),
        join("/x/%e0%80%ae%e0%80%ae/"),
        with_last(&format!("%c1%{:02x}{rest}", 0x80 | (first & 0x3F))),
        // NUL and control bytes, encoded.
        with_last(&format!("{last}%00")),
        with_last(&format!("{last}%00.x")),
        format!("/%00{}", join("/")),
        with_last(&format!("{}%09{}", &last[..1], rest)),
        with_last(&format!("{}%0a{}", &last[..1], rest)),
        with_last(&format!("{}%0d%0a{}", &last[..1], rest)),
        // Case changes (matched case-sensitively, as by Kong; the upstream sees the
        // other case, which is not the blocked path).
        join("/").to_uppercase(),
        with_last(&last.to_uppercase()),
    ];
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_and_mangled_paths_never_reach_the_blocked_upstream_path() {
    let (rec, g) = setup().await;
    let mut reached = Vec::new();
    for segs in [&["api", "mcp"][..], &["mcp"][..], &["ipmcp"][..]] {
        for target in vectors(segs) {
            let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            let before = rec.requests().len();
            let st = status_of(g.addr, req.as_bytes()).await;
            assert!(st != 0, "{target}: no answer");
            let seen = rec.requests();
            if seen.len() > before {
                reached.push((target.clone(), st, seen[before].target.clone()));
            }
            assert_upstream_clean(&rec, &target);
            // The plain path itself is refused.
            if target == format!("/{}", segs.join("/")) {
                assert_eq!(st, 403, "{target}");
            }
        }
    }
    // Raw (unencoded) NUL, control bytes and non-ASCII are refused outright.
    for raw in [
        &b"GET /mcp\0 HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"GET /\0/mcp HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /m\tcp HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /m\x01cp HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /\xc0\xae/mcp HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /api/\xc0\xaf/mcp HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /\x7fmcp HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let st = status_of(g.addr, raw).await;
        assert_eq!(st, 400, "{:?}", String::from_utf8_lossy(raw));
    }
    assert_upstream_clean(&rec, "raw bytes");
    // Something must have been tried on the open route, or the test proves nothing.
    assert!(
        reached.iter().any(|(_, st, _)| *st == 200),
        "no vector reached the catch-all at all"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_and_host_tricks_do_not_change_the_route() {
    let (rec, g) = setup().await;
    for (target, host) in [
        ("http://other.example/mcp", "localhost"),
        ("http://localhost/mcp", "other.example"),
        ("http://other.example/api/mcp", "localhost"),
        ("https://localhost/mcp", "localhost"),
        ("http://localhost:80/mcp", "localhost"),
        ("http://user@localhost/mcp", "localhost"),
        ("http://localhost/%2e/mcp", "localhost"),
        ("http://localhost//mcp", "localhost"),
        ("/mcp", "localhost/"),
        ("/mcp", "localhost:8000"),
        ("/mcp", "LOCALHOST"),
        ("/mcp", "localhost."),
        ("/mcp", "127.0.0.1"),
        ("/mcp", "[::1]"),
        ("/mcp", "other.example:80@localhost"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let st = status_of(g.addr, req.as_bytes()).await;
        assert!(st == 403 || st == 400, "{target} with Host {host}: {st}");
    }
    // Absolute-form pointing at the open route with a Host naming the blocked one
    // (or the other way round) follows the target, never the Host, for the path.
    let st = status_of(
        g.addr,
        b"GET http://localhost/open HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(st, 200);
    let seen = rec.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(seen[0].target, "/open");
    assert_upstream_clean(&rec, "absolute-form");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_path_and_authority_variants() {
    let (rec, g) = setup().await;
    let stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut reached = 0;
    for segs in [&["api", "mcp"][..], &["mcp"][..], &["ipmcp"][..]] {
        for target in vectors(segs) {
            // http::Uri refuses some forms the raw tests cover (backslash, NUL).
            let Ok(uri) = format!("http://localhost{target}").parse::<http::Uri>() else {
                continue;
            };
            let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
            let before = rec.requests().len();
            let resp = tokio::time::timeout(common::WAIT, sender.send_request(req))
                .await
                .expect("h2 response timed out");
            let st = match resp {
                Ok(r) => {
                    let st = r.status().as_u16();
                    let _ = r.into_body().collect().await;
                    st
                }
                // A stream reset is a refusal too.
                Err(_) => 0,
            };
            if target == format!("/{}", segs.join("/")) {
                assert_eq!(st, 403, "h2 {target}");
            }
            if rec.requests().len() > before {
                reached += 1;
            }
            assert_upstream_clean(&rec, &format!("h2 {target}"));
            if sender.ready().await.is_err() {
                // The gateway closed the connection (a protocol error): reconnect.
                let stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
                let (s, conn) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                sender = s;
            }
        }
    }
    assert!(reached > 0, "no h2 vector reached the catch-all at all");
    // :authority naming another host, and a host header disagreeing with it.
    for (uri, host) in [
        ("http://other.example/mcp", None),
        ("http://localhost/mcp", Some("other.example")),
        ("http://other.example/api/mcp", Some("localhost")),
    ] {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let r = sender
            .send_request(b.body(Empty::<Bytes>::new()).unwrap())
            .await;
        if let Ok(r) = r {
            assert!(
                r.status() == 403 || r.status() == 400,
                "h2 {uri} host {host:?}: {}",
                r.status()
            );
        }
    }
    assert_upstream_clean(&rec, "h2 authority");
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_forwarding_headers_do_not_change_the_client_ip() {
    let (rec, g) = setup().await;
    let spoofs: &[&[(&str, &str)]] = &[
        &[("x-forwarded-for", "10.1.2.3")],
        &[("x-forwarded-for", "192.0.2.1")],
        &[("x-forwarded-for", "10.1.2.3, 192.0.2.1")],
        &[("x-real-ip", "10.1.2.3")],
        &[("x-real-ip", "192.0.2.1")],
        &[("forwarded", "for=10.1.2.3")],
        &[("x-client-ip", "10.1.2.3")],
        &[("true-client-ip", "10.1.2.3")],
        &[("x-forwarded-for", "10.1.2.3"), ("x-real-ip", "10.1.2.3")],
        &[
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-for", "10.1.2.4"),
        ],
    ];
    for headers in spoofs {
        // Allow-list of 10/8: the peer is 127.0.0.1, so refused whatever it claims.
        let r = common::send(g.addr, "GET", "/ipmcp", headers, b"").await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
        // Deny-list of 10/8: claiming a denied address does not get 127.0.0.1 denied
        // (the claim is ignored rather than used).
        let r = common::send(g.addr, "GET", "/ipok", headers, b"").await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
    }
    // Raw header tricks around the name.
    for raw in [
        &b"GET /ipmcp HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For : 10.1.2.3\r\n\r\n"[..],
        b"GET /ipmcp HTTP/1.1\r\nHost: localhost\r\nX_Forwarded_For: 10.1.2.3\r\n\r\n",
        b"GET /ipmcp HTTP/1.1\r\nHost: localhost\r\nX-Real-IP: 10.1.2.3\r\nX-Real-IP: 10.1.2.4\r\n\r\n",
    ] {
        let st = status_of(g.addr, raw).await;
        assert!(st == 403 || st == 400, "{}: {st}", String::from_utf8_lossy(raw));
    }
    let seen = rec.requests();
    assert!(
        seen.iter().all(|s| !s.target.starts_with("/api/ipmcp")),
        "{seen:#?}"
    );
    assert_upstream_clean(&rec, "spoofed forwarding headers");
}
