//! Access plugins, black box: request-termination, ip-restriction, cors, Kong's
//! precedence and execution order, the default gateway.yaml, and `portcullis explain`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::process::GatewayProcess;
use common::*;
use portcullis::proxy::Settings;

fn cfg(body: &str) -> String {
    format!("_format_version: \"3.0\"\nservices:\n{body}")
}

// ---------------------------------------------------------------- request-termination

#[tokio::test]
async fn request_termination_every_option() {
    let up = echo_upstream().await;
    let yaml = cfg(&format!(
        "{s}    routes:\n      - paths: [/default]\n        plugins:\n          - name: request-termination\n\
         {s2}    routes:\n      - paths: [/msg]\n        plugins:\n          - name: request-termination\n            config:\n              status_code: 403\n              message: Access is forbidden.\n\
         {s3}    routes:\n      - paths: [/body]\n        plugins:\n          - name: request-termination\n            config:\n              status_code: 418\n              body: '<h1>teapot</h1>'\n              content_type: text/html\n\
         {s4}    routes:\n      - paths: [/nomsg]\n        plugins:\n          - name: request-termination\n            config:\n              status_code: 403\n\
         {s5}    routes:\n      - paths: [/trigger]\n        plugins:\n          - name: request-termination\n            config:\n              status_code: 401\n              trigger: x-block\n\
         {s6}    routes:\n      - paths: [/echo]\n        plugins:\n          - name: request-termination\n            config:\n              status_code: 200\n              echo: true\n\
         {s7}    routes:\n      - paths: [/nocontent]\n        plugins:\n          - name: request-termination\n            config:\n              status_code: 204\n",
        s = svc("d", up, "/"),
        s2 = svc("m", up, "/"),
        s3 = svc("b", up, "/"),
        s4 = svc("n", up, "/"),
        s5 = svc("t", up, "/"),
        s6 = svc("e", up, "/"),
        s7 = svc("nc", up, "/"),
    ));
    let g = gateway(&yaml).await;

    let r = get(g.addr, "/default").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), r#"{"message":"Service unavailable"}"#);
    assert_eq!(
        r.header("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
    assert!(r.header("server").unwrap().starts_with("portcullis/"));
    assert!(r.header("x-kong-response-latency").is_some());

    let r = get(g.addr, "/msg").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), r#"{"message":"Access is forbidden."}"#);

    let r = get(g.addr, "/body").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "<h1>teapot</h1>");
    assert_eq!(r.header("content-type").unwrap(), "text/html");

    let r = get(g.addr, "/nomsg").await;
    assert_eq!(r.status, 403);
    assert!(r.body.is_empty());

    // trigger: passes through unless the header or query argument is present.
    let r = get(g.addr, "/trigger").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/");
    let r = send(g.addr, "GET", "/trigger", &[("x-block", "1")], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), r#"{"message":"Unauthorized"}"#);
    let r = get(g.addr, "/trigger?x-block").await;
    assert_eq!(r.status, 401);
    let r = get(g.addr, "/trigger?other=x-block").await;
    assert_eq!(r.status, 200);

    // echo: the request as the gateway saw it.
    let r = send(
        g.addr,
        "POST",
        "/echo/a?x=1&y=2&y=3",
        &[("content-type", "application/json"), ("x-test", "yes")],
        br#"{"k":"v"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["request"]["method"], "POST");
    assert_eq!(j["request"]["path"], "/echo/a");
    assert_eq!(j["request"]["headers"]["x-test"], "yes");
    assert_eq!(j["request"]["query"]["x"], "1");
    assert_eq!(j["request"]["query"]["y"], serde_json::json!(["2", "3"]));
    assert_eq!(j["request"]["body"]["k"], "v");
    assert_eq!(j["request"]["raw_body"], r#"{"k":"v"}"#);
    assert_eq!(j["matched_service"]["name"], "e");
    assert!(j["kong"]["node_id"].is_string());

    let r = get(g.addr, "/nocontent").await;
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none());
}

#[tokio::test]
async fn request_termination_config_errors() {
    let bad = "_format_version: '3.0'\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    routes:\n      - paths: [/x]\n    plugins:\n      - name: request-termination\n        config:\n          status_code: 700\n          message: m\n          body: b\n";
    let errs = portcullis::config::load_config("t.yml", bad)
        .unwrap_err()
        .to_string();
    assert!(errs.contains("t.yml:10:24: plugin 'request-termination'.config.status_code: value should be between 100 and 599"), "{errs}");
    assert!(
        errs.contains("message cannot be used with content_type or body"),
        "{errs}"
    );
}

// ---------------------------------------------------------------- ip-restriction

fn ip_cfg(up: std::net::SocketAddr, config: &str) -> String {
    cfg(&format!(
        "{}    routes:\n      - paths: [/]\n    plugins:\n      - name: ip-restriction\n        config:\n{config}",
        svc("ip", up, "/")
    ))
}

#[tokio::test]
async fn ip_restriction_ipv4() {
    let up = echo_upstream().await;
    let g = gateway(&ip_cfg(up, "          allow: [127.0.0.0/8]\n")).await;
    assert_eq!(get(g.addr, "/").await.status, 200);

    let g = gateway(&ip_cfg(up, "          allow: [10.0.0.0/8, '::1']\n")).await;
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 403);
    let j = r.json();
    assert_eq!(j["message"], "IP address not allowed: 127.0.0.1");
    assert!(j["request_id"].is_string());

    // deny wins over allow when both match.
    let g = gateway(&ip_cfg(
        up,
        "          allow: [127.0.0.0/8]\n          deny: [127.0.0.1]\n",
    ))
    .await;
    assert_eq!(get(g.addr, "/").await.status, 403);
    // deny only: others pass.
    let g = gateway(&ip_cfg(up, "          deny: [10.0.0.1, 192.168.0.0/16]\n")).await;
    assert_eq!(get(g.addr, "/").await.status, 200);

    // status and message overrides.
    let g = gateway(&ip_cfg(
        up,
        "          deny: [0.0.0.0/0]\n          status: 401\n          message: Go away\n",
    ))
    .await;
    let r = send(g.addr, "GET", "/", &[("accept", "text/plain")], b"").await;
    assert_eq!(r.status, 401);
    assert!(r.text().starts_with("Go away\nrequest_id: "));
}

#[tokio::test]
async fn ip_restriction_ipv6() {
    let up = echo_upstream().await;
    let yaml = ip_cfg(up, "          allow: ['::1/128']\n");
    let g = gateway_with(&yaml, Settings::default(), "[::1]:0").await;
    assert_eq!(get(g.addr, "/").await.status, 200);
    let yaml = ip_cfg(up, "          allow: ['fe80::/8', 127.0.0.1]\n");
    let g = gateway_with(&yaml, Settings::default(), "[::1]:0").await;
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "IP address not allowed: ::1");
    let yaml = ip_cfg(up, "          deny: ['::/0']\n");
    let g = gateway_with(&yaml, Settings::default(), "[::1]:0").await;
    assert_eq!(get(g.addr, "/").await.status, 403);
}

#[tokio::test]
async fn ip_restriction_uses_real_ip_from_trusted_peer() {
    let up = echo_upstream().await;
    let yaml = ip_cfg(up, "          allow: [203.0.113.7]\n");
    let settings = Settings {
        trusted_ips: portcullis::ipset::IpSet::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap(),
        real_ip_header: http::HeaderName::from_static("x-forwarded-for"),
        real_ip_recursive: true,
        ..Settings::default()
    };
    let g = gateway_with(&yaml, settings, "127.0.0.1:0").await;
    // Recursion skips the trusted hops from the right: the client is 203.0.113.7.
    let r = send(
        g.addr,
        "GET",
        "/",
        &[("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json(), "x-real-ip").unwrap(), "203.0.113.7");
    // A spoofed leftmost entry does not help an untrusted hop.
    let r = send(
        g.addr,
        "GET",
        "/",
        &[("x-forwarded-for", "203.0.113.7, 198.51.100.1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "IP address not allowed: 198.51.100.1");

    // Without trusted peers the header is ignored entirely.
    let g = gateway(&ip_cfg(up, "          allow: [203.0.113.7]\n")).await;
    let r = send(
        g.addr,
        "GET",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-real-ip", "203.0.113.7"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn ip_restriction_config_errors() {
    let bad = "_format_version: '3.0'\nplugins:\n  - name: ip-restriction\n    config:\n      allow: [10.0.0.1, hello, 300.1.1.1/8]\n  - name: ip-restriction\n    route: r\n    config: {}\nroutes:\n  - name: r\n    paths: [/]\n";
    let errs = portcullis::config::load_config("t.yml", bad)
        .unwrap_err()
        .to_string();
    assert!(
        errs.contains(
            "t.yml:5:25: plugin 'ip-restriction'.config.allow: invalid ip or cidr range: 'hello'"
        ),
        "{errs}"
    );
    assert!(errs.contains("t.yml:5:32: plugin 'ip-restriction'.config.allow: invalid ip or cidr range: '300.1.1.1/8'"), "{errs}");
    assert!(
        errs.contains(
            "at least one of these fields must be non-empty: 'config.allow', 'config.deny'"
        ),
        "{errs}"
    );
}

// ---------------------------------------------------------------- cors

async fn cors_gateway(config: &str) -> (TestGateway, std::net::SocketAddr) {
    let up = echo_upstream().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "_format_version: \"3.0\"\nplugins:\n  - name: cors\n{config}\nservices:\n{}    routes:\n      - paths: [/api]\n\
         {}    routes:\n      - paths: [/down]\n\
         {}    routes:\n      - paths: [/locked]\n    plugins:\n      - name: ip-restriction\n        config:\n          deny: [0.0.0.0/0]\n\
         {}    routes:\n      - paths: [/auth]\n    plugins:\n      - name: request-termination\n        config:\n          status_code: 401\n",
        svc("api", up, "/"),
        svc("down", closed, "/"),
        svc("locked", up, "/"),
        svc("auth", up, "/"),
    );
    (gateway(&yaml).await, up)
}

#[tokio::test]
async fn cors_default_config() {
    let (g, _) = cors_gateway("").await;
    // Preflight: answered by the gateway, 200, empty body, before any other plugin.
    let r = send(
        g.addr,
        "OPTIONS",
        "/locked",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-one, authorization"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length").unwrap(), "0");
    assert_eq!(r.header("access-control-allow-origin").unwrap(), "*");
    assert_eq!(
        r.header("access-control-allow-methods").unwrap(),
        "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    );
    assert_eq!(
        r.header("access-control-allow-headers").unwrap(),
        "x-one, authorization"
    );
    assert!(r.header("access-control-max-age").is_none());
    assert!(r.header("vary").is_none());

    // OPTIONS without Access-Control-Request-Method is not a preflight: proxied.
    let r = send(
        g.addr,
        "OPTIONS",
        "/api",
        &[("origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(r.json()["method"], "OPTIONS");
    assert_eq!(r.header("access-control-allow-origin").unwrap(), "*");
    // OPTIONS without Origin: proxied too.
    let r = send(
        g.addr,
        "OPTIONS",
        "/api",
        &[("access-control-request-method", "GET")],
        b"",
    )
    .await;
    assert_eq!(r.json()["method"], "OPTIONS");

    // Simple request: proxied, headers added.
    let r = send(
        g.addr,
        "GET",
        "/api",
        &[("origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin").unwrap(), "*");
    // Missing Origin: still ACAO * (allow_origin_absent defaults to true).
    let r = get(g.addr, "/api").await;
    assert_eq!(r.header("access-control-allow-origin").unwrap(), "*");

    // CORS headers on the gateway's own errors and upstream errors.
    for (path, status) in [
        ("/locked", 403),
        ("/auth", 401),
        ("/nowhere", 404),
        ("/down", 502),
        ("/api/status-404", 404),
    ] {
        let r = send(
            g.addr,
            "GET",
            path,
            &[("origin", "https://app.example")],
            b"",
        )
        .await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some("*"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn cors_origins_credentials_and_options() {
    let (g, _) = cors_gateway(
        "    config:\n      origins: ['https://a.example', 'https?://(.+)\\.b\\.example', 'c\\.example']\n      credentials: true\n      exposed_headers: [x-total, x-page]\n      headers: [x-one, x-two]\n      methods: [GET, POST]\n      max_age: 600\n      private_network: true\n",
    )
    .await;
    // Exact origin.
    let r = send(
        g.addr,
        "GET",
        "/api",
        &[("origin", "https://a.example")],
        b"",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://a.example"
    );
    assert_eq!(
        r.header("access-control-allow-credentials").unwrap(),
        "true"
    );
    assert_eq!(
        r.header("access-control-expose-headers").unwrap(),
        "x-total,x-page"
    );
    assert_eq!(r.header("vary").unwrap(), "Origin");
    // Regex with ':' matches the normalised origin (default port dropped).
    let r = send(
        g.addr,
        "GET",
        "/api",
        &[("origin", "http://x.b.example:80")],
        b"",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "http://x.b.example"
    );
    // Regex without ':' matches the host.
    let r = send(
        g.addr,
        "GET",
        "/api",
        &[("origin", "https://c.example:8443")],
        b"",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://c.example:8443"
    );
    // Anchored: no partial match.
    let r = send(
        g.addr,
        "GET",
        "/api",
        &[("origin", "https://evil-c.example")],
        b"",
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(
        r.header("access-control-allow-credentials").unwrap(),
        "true"
    );
    // Preflight with configured headers, methods, max_age and private network.
    let r = send(
        g.addr,
        "OPTIONS",
        "/api",
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-ignored"),
            ("access-control-request-private-network", "true"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-headers").unwrap(),
        "x-one,x-two"
    );
    assert_eq!(
        r.header("access-control-allow-methods").unwrap(),
        "GET,POST"
    );
    assert_eq!(r.header("access-control-max-age").unwrap(), "600");
    assert_eq!(
        r.header("access-control-allow-private-network").unwrap(),
        "true"
    );
    assert!(r.header("access-control-expose-headers").is_none());

    // credentials with '*': the request origin is echoed, not '*'.
    let (g, _) = cors_gateway("    config:\n      origins: ['*']\n      credentials: true\n").await;
    let r = send(
        g.addr,
        "GET",
        "/api",
        &[("origin", "https://any.example")],
        b"",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://any.example"
    );
    assert_eq!(
        r.header("access-control-allow-credentials").unwrap(),
        "true"
    );
    assert_eq!(r.header("vary").unwrap(), "Origin");
}

#[tokio::test]
async fn cors_preflight_continue_goes_upstream() {
    let (g, _) = cors_gateway("    config:\n      preflight_continue: true\n").await;
    let r = send(
        g.addr,
        "OPTIONS",
        "/api",
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.json()["method"], "OPTIONS");
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_config_errors() {
    let bad = "_format_version: '3.0'\nplugins:\n  - name: cors\n    config:\n      origins: ['(unclosed']\n      methods: [GET, FETCH]\n";
    let errs = portcullis::config::load_config("t.yml", bad)
        .unwrap_err()
        .to_string();
    assert!(errs.contains("is not a valid regex"), "{errs}");
    assert!(errs.contains("methods"), "{errs}");
}

// ---------------------------------------------------------------- precedence and order

#[tokio::test]
async fn plugin_precedence_route_over_service_over_global() {
    let up = echo_upstream().await;
    let yaml = format!(
        r#"_format_version: "3.0"
plugins:
  - name: request-termination
    config: {{status_code: 401, message: from-global}}
  - name: request-termination
    route: both
    service: s1
    config: {{status_code: 409, message: from-route-and-service}}
services:
  - name: s1
    url: http://{up}/
    plugins:
      - name: request-termination
        config: {{status_code: 402, message: from-service}}
    routes:
      - name: r-route
        paths: [/route]
        plugins:
          - name: request-termination
            config: {{status_code: 403, message: from-route}}
      - name: r-service
        paths: [/service]
  - name: s2
    url: http://{up}/
    routes:
      - name: r-global
        paths: [/global]
routes:
  - name: both
    paths: [/both]
    service: s1
"#
    );
    let g = gateway(&yaml).await;
    assert_eq!(get(g.addr, "/route").await.json()["message"], "from-route");
    assert_eq!(
        get(g.addr, "/service").await.json()["message"],
        "from-service"
    );
    assert_eq!(
        get(g.addr, "/global").await.json()["message"],
        "from-global"
    );
    assert_eq!(
        get(g.addr, "/both").await.json()["message"],
        "from-route-and-service"
    );
}

#[tokio::test]
async fn execution_order_is_by_priority_not_yaml_order() {
    let up = echo_upstream().await;
    // request-termination (priority 2) is listed first but ip-restriction (990) runs
    // first; cors (2000) answers the preflight before both.
    let yaml = cfg(&format!(
        "{}    routes:\n      - paths: [/]\n    plugins:\n      - name: request-termination\n        config: {{status_code: 410, message: gone}}\n      - name: ip-restriction\n        config: {{deny: [127.0.0.1]}}\n      - name: cors\n",
        svc("o", up, "/")
    ));
    let g = gateway(&yaml).await;
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 403);
    let r = send(
        g.addr,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://x"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
}

// ---------------------------------------------------------------- default gateway.yaml

#[tokio::test]
async fn default_gateway_yaml_denies_by_default() {
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml")).unwrap();
    assert_eq!(yaml, portcullis::cli::EMBEDDED_CONFIG);
    let g = gateway(&yaml).await;
    for path in [
        "/mcp",
        "/mcp/",
        "/mcp?features=docs",
        "/api/mcp",
        "/api/mcp/x",
    ] {
        let r = send(
            g.addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            b"{}",
        )
        .await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.text(), r#"{"message":"Access is forbidden."}"#, "{path}");
    }
    for path in ["/", "/rest/v1/", "/auth/v1/token", "/mc", "/api"] {
        let r = get(g.addr, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["message"], "no Route matched with those values");
    }
}

#[tokio::test]
async fn opening_mcp_with_the_commented_recipe_works() {
    // Apply the recipe in gateway.yaml's comments: drop request-termination, enable
    // cors + ip-restriction with an allow list.
    let up = echo_upstream().await;
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml")).unwrap();
    let start = yaml.find("  ## MCP endpoint").unwrap();
    let opened = format!(
        "{}  - name: mcp\n    url: http://{up}/api/mcp\n    routes:\n      - name: mcp\n        strip_path: true\n        paths:\n          - /mcp\n    plugins:\n      - name: cors\n      - name: ip-restriction\n        config:\n          allow:\n            - 127.0.0.1\n            - ::1\n          deny: []\n",
        &yaml[..start]
    );
    let g = gateway(&opened).await;
    let r = send(
        g.addr,
        "POST",
        "/mcp?read_only=true",
        &[("content-type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/mcp?read_only=true");
    assert_eq!(get(g.addr, "/api/mcp").await.status, 403);
    let settings = Settings::default();
    let g6 = gateway_with(
        &opened.replace("            - ::1\n", ""),
        settings,
        "[::1]:0",
    )
    .await;
    let r = get(g6.addr, "/mcp").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "IP address not allowed: ::1");
}

// ---------------------------------------------------------------- explain

fn explain(config: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config).unwrap();
    let out = GatewayProcess::bin()
        .arg("explain")
        .args(["--config", path.to_str().unwrap()])
        .args(args)
        .finish(WAIT);
    (
        out.status.success(),
        out.stdout.join("\n") + "\n" + &out.stderr,
    )
}

#[test]
fn explain_describes_route_chain_upstream_and_verdict() {
    let yaml = r#"_format_version: "3.0"
plugins:
  - name: cors
services:
  - name: api
    url: http://api.internal:3000/v2
    routes:
      - name: api-all
        paths: [/api]
      - name: api-users
        paths: [/api/users]
        plugins:
          - name: ip-restriction
            config:
              allow: [192.168.0.0/16]
  - name: mcp
    url: http://studio:3000/api/mcp
    routes:
      - name: mcp
        paths: [/mcp]
    plugins:
      - name: request-termination
        config: {status_code: 403, message: Access is forbidden.}
"#;
    let (ok, out) = explain(
        yaml,
        &[
            "--client-ip",
            "10.0.0.5",
            "GET",
            "http://localhost:8000/api/users/../users/7?x=1",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("normalised path: /api/users/7"), "{out}");
    assert!(
        out.contains("matched route:   route 'api-users' (service 'api')"),
        "{out}"
    );
    assert!(
        out.contains("beats:         route 'api-all' (service 'api') — longer prefix (10 > 4)"),
        "{out}"
    );
    assert!(out.contains("1. cors"), "{out}");
    assert!(out.contains("global"), "{out}");
    assert!(out.contains("2. ip-restriction"), "{out}");
    assert!(
        out.contains("DENIES 10.0.0.5 → 403 Forbidden \"IP address not allowed: 10.0.0.5\""),
        "{out}"
    );
    assert!(
        out.contains("upstream:        GET http://api.internal:3000/v2/7?x=1"),
        "{out}"
    );
    assert!(
        out.contains("verdict:         ip-restriction answers 403"),
        "{out}"
    );

    let (_, out) = explain(
        yaml,
        &[
            "--client-ip",
            "192.168.1.2",
            "GET",
            "http://localhost:8000/api/users/7",
        ],
    );
    assert!(out.contains("allows 192.168.1.2"), "{out}");
    assert!(
        out.contains("verdict:         proxied to service 'api'"),
        "{out}"
    );

    let (_, out) = explain(yaml, &["POST", "http://localhost:8000/mcp"]);
    assert!(out.contains("request-termination"), "{out}");
    assert!(
        out.contains("403 Forbidden \"Access is forbidden.\""),
        "{out}"
    );

    let (_, out) = explain(
        yaml,
        &[
            "-H",
            "Origin: https://x",
            "-H",
            "Access-Control-Request-Method: GET",
            "OPTIONS",
            "http://localhost:8000/api",
        ],
    );
    assert!(out.contains("answers the preflight → 200 OK"), "{out}");

    let (_, out) = explain(yaml, &["GET", "http://localhost:8000/other"]);
    assert!(out.contains("matched route:   none"), "{out}");
    assert!(
        out.contains("404 \"no Route matched with those values\""),
        "{out}"
    );

    let (ok, out) = explain(
        "_format_version: '3.0'\nservices: 5\n",
        &["GET", "http://x/"],
    );
    assert!(!ok);
    assert!(
        out.contains("gateway.yaml:2:11: services: expected an array"),
        "{out}"
    );
}

#[test]
fn explain_on_the_default_config() {
    let out = GatewayProcess::bin()
        .args(["explain", "GET", "http://localhost:8000/mcp"])
        .finish(WAIT);
    let out = out.stdout.join("\n");
    assert!(
        out.contains("config:          <embedded gateway.yaml>"),
        "{out}"
    );
    assert!(
        out.contains("upstream:        GET http://studio:3000/api/mcp"),
        "{out}"
    );
    assert!(
        out.contains("request-termination answers 403 Forbidden \"Access is forbidden.\""),
        "{out}"
    );
}
