//! Core gateway, black box: real gateway (`server::run` on 127.0.0.1:0), real upstreams,
//! real HTTP. Routing priority, strip_path joins, normalisation, forwarded headers,
//! error bodies, streaming.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use portcullis::proxy::Settings;

fn cfg(body: &str) -> String {
    format!("_format_version: \"3.0\"\nservices:\n{body}")
}

#[tokio::test]
async fn no_route_is_404_json_and_plain() {
    let up = echo_upstream().await;
    let g = gateway(&cfg(&format!(
        "{}    routes:\n      - paths: [/known]\n",
        svc("a", up, "/")
    )))
    .await;
    let r = get(g.addr, "/unknown").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    let j = r.json();
    assert_eq!(j["message"], "no Route matched with those values");
    assert_eq!(j["request_id"].as_str().unwrap().len(), 32);
    assert_eq!(
        r.header("x-kong-request-id").unwrap(),
        j["request_id"].as_str().unwrap()
    );
    assert!(r.header("server").unwrap().starts_with("portcullis/"));

    let r = send(g.addr, "GET", "/unknown", &[("accept", "text/plain")], b"").await;
    assert_eq!(r.status, 404);
    assert!(
        r.text()
            .starts_with("no Route matched with those values\nrequest_id: ")
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );

    let r = send(g.addr, "GET", "/unknown", &[("accept", "text/html")], b"").await;
    assert!(
        r.text()
            .contains("<p>no Route matched with those values.</p>")
    );
    let r = send(
        g.addr,
        "GET",
        "/unknown",
        &[("accept", "application/xml")],
        b"",
    )
    .await;
    assert!(
        r.text()
            .contains("<message>no Route matched with those values</message>")
    );
    let r = send(g.addr, "HEAD", "/unknown", &[], b"").await;
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn upstream_refused_is_502_and_timeout_is_504_and_dns_is_503() {
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    retries: 1\n    routes:\n      - paths: [/refused]\n\
         {}    read_timeout: 300\n    routes:\n      - paths: [/slow]\n\
         {}    routes:\n      - paths: [/dns]\n",
        svc("refused", closed, "/"),
        svc("slow", up, "/"),
        "  - name: dns\n    url: http://nonexistent-host.invalid/\n",
    ));
    let g = gateway(&yaml).await;

    let r = get(g.addr, "/refused").await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.text(),
        format!(
            "An invalid response was received from the upstream server\nrequest_id: {}\n",
            r.header("x-kong-request-id").unwrap()
        )
    );
    let r = send(
        g.addr,
        "GET",
        "/refused",
        &[("accept", "application/json")],
        b"",
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["message"],
        "An invalid response was received from the upstream server"
    );

    let r = get(g.addr, "/slow/sleep").await;
    assert_eq!(r.status, 504);
    assert!(r.text().starts_with("The upstream server is timing out\n"));
    let r = send(
        g.addr,
        "GET",
        "/slow/sleep",
        &[("content-type", "application/json")],
        b"",
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["message"], "The upstream server is timing out");

    let r = get(g.addr, "/dns").await;
    assert_eq!(r.status, 503);
    assert!(
        r.text().starts_with("name resolution failed\n"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn route_priority() {
    let up = echo_upstream().await;
    // Each service has its own path so the echo tells which one answered.
    let yaml = cfg(&format!(
        "{}    routes:\n      - name: short\n        paths: [/api]\n\
         {}    routes:\n      - name: long\n        paths: [/api/v1]\n\
         {}    routes:\n      - name: hostpath\n        hosts: [example.com]\n        paths: [/api]\n\
         {}    routes:\n      - name: wild\n        hosts: ['*.example.com']\n        paths: [/api]\n\
         {}    routes:\n      - name: regex\n        paths: ['~/api/v[0-9]+/items']\n\
         {}    routes:\n      - name: regex-hi\n        regex_priority: 5\n        paths: ['~/api/v1/items/special']\n\
         {}    routes:\n      - name: header\n        headers:\n          x-version: ['2']\n        paths: [/api]\n\
         {}    routes:\n      - name: method\n        methods: [POST]\n        paths: [/api]\n",
        svc("s-short", up, "/short"),
        svc("s-long", up, "/long"),
        svc("s-hostpath", up, "/hostpath"),
        svc("s-wild", up, "/wild"),
        svc("s-regex", up, "/regex"),
        svc("s-regex-hi", up, "/regexhi"),
        svc("s-header", up, "/header"),
        svc("s-method", up, "/method"),
    ));
    let g = gateway(&yaml).await;
    let which = |r: &Resp| {
        let p = r.json()["path"].as_str().unwrap().to_string();
        p.trim_start_matches('/')
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    // Longest prefix wins among plain paths; byte prefix (not segment).
    assert_eq!(which(&get(g.addr, "/api/x").await), "short");
    assert_eq!(which(&get(g.addr, "/api/v1/x").await), "long");
    assert_eq!(which(&get(g.addr, "/apix").await), "short");
    // More fields beat a longer path.
    let r = send(g.addr, "GET", "/api/v1/x", &[("host", "example.com")], b"").await;
    assert_eq!(which(&r), "hostpath");
    // Host header port is ignored for a port-less host.
    let r = send(
        g.addr,
        "GET",
        "/api/v1/x",
        &[("host", "example.com:1234")],
        b"",
    )
    .await;
    assert_eq!(which(&r), "hostpath");
    // Wildcards match subdomains, not the bare domain.
    let r = send(g.addr, "GET", "/api/x", &[("host", "a.b.example.com")], b"").await;
    assert_eq!(which(&r), "wild");
    // Regex beats prefix, whatever the length.
    assert_eq!(which(&get(g.addr, "/api/v1/items/3").await), "regex");
    // Higher regex_priority wins among regexes.
    assert_eq!(
        which(&get(g.addr, "/api/v1/items/special").await),
        "regexhi"
    );
    // Regexes are anchored at the start only.
    assert_eq!(which(&get(g.addr, "/api/v22/items/zzz").await), "regex");
    assert_eq!(get(g.addr, "/x/api/v1/items").await.status, 404);
    // Headers and methods add a field.
    let r = send(g.addr, "GET", "/api/v1/x", &[("x-version", "2")], b"").await;
    assert_eq!(which(&r), "header");
    let r = send(g.addr, "POST", "/api/v1/x", &[], b"").await;
    assert_eq!(which(&r), "method");
    // Case-sensitive paths.
    assert_eq!(get(g.addr, "/API/x").await.status, 404);
}

/// A route that neither strips nor joins: the upstream gets the client's path and
/// query byte for byte when it is already normal, the normalised path otherwise.
#[tokio::test]
async fn unchanged_path_and_query_pass_through() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/]\n        strip_path: false\n",
        svc("a", up, "")
    ));
    let g = gateway(&yaml).await;
    for (sent, seen) in [
        ("/a/b?x=1&y=%20z&&=", "/a/b?x=1&y=%20z&&="),
        ("/a/b?", "/a/b?"),
        ("/a%2Fb/c%20d?q", "/a%2Fb/c%20d?q"),
        ("/a/./b/../c?k=v", "/a/c?k=v"),
        ("/a/%62?k", "/a/b?k"),
        ("/", "/"),
    ] {
        let r = get(g.addr, sent).await;
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.json()["path"], seen, "{sent}");
    }
}

/// Every row of Kong's v0 strip_path join table (kong-behaviour.md §2.4).
#[tokio::test]
async fn strip_path_join_table() {
    let up = echo_upstream().await;
    // (service path, route path, strip, request, upstream)
    let rows: &[(&str, &str, bool, &str, &str)] = &[
        ("/", "/route", true, "/route", "/"),
        ("/", "/route", true, "/route/", "/"),
        ("/", "/route", true, "/routereq", "/req"),
        ("/", "/route/", true, "/route/req", "/req"),
        ("/srv", "/rou", false, "/roureq", "/srv/roureq"),
        ("/srv", "/rou", true, "/roureq", "/srv/req"),
        ("/srv/", "/rou", true, "/rou", "/srv"),
        ("/srv/", "/rou", false, "/rou", "/srv/rou"),
        ("/service", "/", true, "/", "/service"),
        ("/service", "/", false, "/", "/service"),
        ("/service", "/", true, "/route/", "/service/route/"),
        ("/service", "/", false, "/route/", "/service/route/"),
        ("/service", "/route", true, "/route/", "/service/"),
        ("/service", "/route/", true, "/route/", "/service/"),
        ("/service/", "/route", true, "/route", "/service"),
        ("/service/", "/", true, "/", "/service/"),
        ("/service/", "/", false, "/", "/service/"),
        ("/service", "/route", true, "/route./req", "/service/req"),
        ("/service", "/route", true, "/route%2E/req", "/service/req"),
        ("/service", "/route", true, "/route../req", "/service/req"),
        (
            "/service",
            "/route",
            false,
            "/route%2e%2E/req",
            "/service/route../req",
        ),
        ("/service", "~/[0]?route", true, "/route/", "/service/"),
        (
            "/service",
            "~/[0]?route",
            true,
            "/0routereq",
            "/service/req",
        ),
    ];
    for (i, (sp, rp, strip, req, want)) in rows.iter().enumerate() {
        let yaml = cfg(&format!(
            "{}    routes:\n      - strip_path: {strip}\n        paths: ['{rp}']\n",
            svc(&format!("row{i}"), up, sp)
        ));
        let g = gateway(&yaml).await;
        let r = get(g.addr, req).await;
        assert_eq!(r.status, 200, "row {i}: {r:?}");
        assert_eq!(
            r.json()["path"],
            *want,
            "row {i}: service {sp} route {rp} strip {strip} request {req}"
        );
    }
    // Host-only route: nothing to strip.
    let yaml = cfg(&format!(
        "{}    routes:\n      - hosts: [h.test]\n",
        svc("hostonly", up, "/service")
    ));
    let g = gateway(&yaml).await;
    let r = send(g.addr, "GET", "/route", &[("host", "h.test")], b"").await;
    assert_eq!(r.json()["path"], "/service/route");
}

#[tokio::test]
async fn normalisation_and_query() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/route]\n        strip_path: false\n\
         {}    routes:\n      - paths: [/etc]\n        strip_path: false\n",
        svc("r", up, "/"),
        svc("etc", up, "/secret"),
    ));
    let g = gateway(&yaml).await;
    let path_of = |r: Resp| r.json()["path"].as_str().unwrap().to_string();
    assert_eq!(path_of(get(g.addr, "/route/a/../b").await), "/route/b");
    assert_eq!(path_of(get(g.addr, "/route//x///y").await), "/route/x/y");
    assert_eq!(path_of(get(g.addr, "/rout%65/x").await), "/route/x");
    assert_eq!(path_of(get(g.addr, "/route/a%2Fb").await), "/route/a%2Fb");
    assert_eq!(
        path_of(get(g.addr, "/route/%c3%b8%20x").await),
        "/route/%C3%B8%20x"
    );
    // `..` that climbs out of the route is resolved before matching: it cannot reach
    // a route it does not name.
    let r = get(g.addr, "/route/../etc/passwd").await;
    assert_eq!(path_of(r), "/secret/etc/passwd");
    // Climbing above the root is refused, as nginx does in front of Kong.
    let r = get(g.addr, "/route/../../etc/passwd").await;
    assert_eq!(r.status, 400);
    assert_eq!(get(g.addr, "/route/%zz").await.status, 400);
    // The query string passes byte for byte, including odd encodings and a bare '?'.
    assert_eq!(
        path_of(get(g.addr, "/route?b=2&a=%2f%2F&c").await),
        "/route?b=2&a=%2f%2F&c"
    );
    assert_eq!(path_of(get(g.addr, "/route?").await), "/route?");
}

#[tokio::test]
async fn forwarded_headers_untrusted_peer() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/api]\n",
        svc("a", up, "/base")
    ));
    let g = gateway(&yaml).await;
    let r = send(
        g.addr,
        "GET",
        "/api/x?q=1",
        &[
            ("host", "Example.COM:8443"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/evil"),
            ("x-real-ip", "10.9.9.9"),
            ("connection", "keep-alive, x-drop-me ,X-Drop-Two"),
            ("x-drop-me", "1"),
            ("x-drop-two", "2"),
            ("proxy", "http://evil"),
            ("via", "1.1 edge"),
        ],
        b"",
    )
    .await;
    let j = r.json();
    assert_eq!(
        echoed(&j, "x-forwarded-for").unwrap(),
        "10.1.1.1, 127.0.0.1"
    );
    assert_eq!(echoed(&j, "x-real-ip").unwrap(), "127.0.0.1");
    assert_eq!(echoed(&j, "x-forwarded-proto").unwrap(), "http");
    assert_eq!(echoed(&j, "x-forwarded-host").unwrap(), "example.com");
    assert_eq!(
        echoed(&j, "x-forwarded-port").unwrap(),
        g.addr.port().to_string()
    );
    assert_eq!(echoed(&j, "x-forwarded-path").unwrap(), "/api/x");
    assert_eq!(echoed(&j, "x-forwarded-prefix").unwrap(), "/api");
    assert_eq!(echoed(&j, "host").unwrap(), up.to_string());
    assert!(echoed(&j, "x-drop-me").is_none());
    assert!(echoed(&j, "x-drop-two").is_none());
    assert!(echoed(&j, "proxy").is_none());
    assert!(
        echoed(&j, "via")
            .unwrap()
            .starts_with("1.1 edge, 1.1 portcullis/")
    );
    assert!(r.header("via").unwrap().starts_with("1.1 portcullis/"));
    assert!(r.header("x-kong-upstream-latency").is_some());
    assert!(r.header("x-kong-proxy-latency").is_some());
}

#[tokio::test]
async fn forwarded_headers_trusted_peer_and_real_ip() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/api]\n        preserve_host: true\n",
        svc("a", up, "/")
    ));
    let settings = Settings {
        trusted_ips: portcullis::ipset::IpSet::parse(&["127.0.0.1", "172.16.0.1", "192.168.0.1"])
            .unwrap(),
        real_ip_header: http::HeaderName::from_static("x-forwarded-for"),
        real_ip_recursive: true,
        ..Settings::default()
    };
    let g = gateway_with(&yaml, settings, "127.0.0.1:0").await;
    let r = send(
        g.addr,
        "GET",
        "/api",
        &[
            ("host", "front.test:9999"),
            (
                "x-forwarded-for",
                "127.0.0.1, 10.0.0.1, 192.168.0.1, 127.0.0.1, 172.16.0.1",
            ),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.test"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/edge"),
        ],
        b"",
    )
    .await;
    let j = r.json();
    assert_eq!(echoed(&j, "x-real-ip").unwrap(), "10.0.0.1");
    assert_eq!(
        echoed(&j, "x-forwarded-for").unwrap(),
        "127.0.0.1, 10.0.0.1, 192.168.0.1, 127.0.0.1, 172.16.0.1, 127.0.0.1"
    );
    assert_eq!(echoed(&j, "x-forwarded-proto").unwrap(), "https");
    assert_eq!(echoed(&j, "x-forwarded-host").unwrap(), "public.test");
    assert_eq!(echoed(&j, "x-forwarded-port").unwrap(), "443");
    assert_eq!(echoed(&j, "x-forwarded-prefix").unwrap(), "/edge");
    // preserve_host passes the client's Host verbatim.
    assert_eq!(echoed(&j, "host").unwrap(), "front.test:9999");
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    use http_body_util::BodyExt;
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/events]\n",
        svc("sse", up, "/")
    ));
    let g = gateway(&yaml).await;
    let stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/events/sse")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(f) = tokio::time::timeout(WAIT, body.frame()).await.unwrap() {
        if let Ok(d) = f.unwrap().into_data() {
            frames.push(String::from_utf8_lossy(&d).into_owned());
        }
    }
    // The upstream sends each event 300 ms after the previous one; buffering would
    // merge them into one frame.
    assert_eq!(frames.len(), 3, "{frames:?}");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f, &format!("id: {i}\ndata: event {i}\n\n"));
    }
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/x]\n",
        svc("a", up, "/")
    ));
    let g = gateway(&yaml).await;
    let r = get(g.addr, "/x/status-418").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.json()["path"], "/status-418");
}

#[tokio::test]
async fn disabled_service_routes_are_404_and_https_only_route_is_426() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    enabled: false\n    routes:\n      - paths: [/off]\n\
         {}    routes:\n      - paths: [/secure]\n        protocols: [https]\n\
         {}    routes:\n      - paths: [/redirect]\n        protocols: [https]\n        https_redirect_status_code: 301\n",
        svc("disabled", up, "/"),
        svc("secure", up, "/"),
        svc("redir", up, "/"),
    ));
    let g = gateway(&yaml).await;
    assert_eq!(get(g.addr, "/off").await.status, 404);
    let r = get(g.addr, "/secure").await;
    assert_eq!(r.status, 426);
    assert_eq!(r.json()["message"], "Please use HTTPS protocol");
    let r = send(
        g.addr,
        "GET",
        "/redirect/x?a=1",
        &[("host", "h.test:8000")],
        b"",
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").unwrap(),
        "https://h.test/redirect/x?a=1"
    );
}

#[tokio::test]
async fn bad_requests_get_400_not_a_panic() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/]\n",
        svc("a", up, "/")
    ));
    let g = gateway(&yaml).await;
    // HTTP/1.1 without Host.
    let out = raw(g.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("Bad request"), "{out}");
    // TRACE is refused.
    let out = raw(g.addr, b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    // Garbage request line: hyper answers 400 and closes.
    let out = raw(g.addr, b"\x01\x02 nonsense\r\n\r\n").await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
}
