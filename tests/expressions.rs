//! Expression routes, black box: real gateway, real echo upstreams, real HTTP. The Supabase
//! OpenAPI-root route exactly as kong.yml has it, the ATC operators, fields and priority, the
//! config errors (file:line:col of the expression) and `portcullis explain`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::net::SocketAddr;

fn cfg(body: &str) -> String {
    format!("_format_version: \"3.0\"\nservices:\n{body}")
}

/// Which upstream answered (each test service has its own echo upstream) and what it got.
fn served_by(r: &Resp, up: SocketAddr) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        echoed(&j, "host").as_deref(),
        Some(up.to_string().as_str()),
        "answered by another service: {j}"
    );
    j["path"].as_str().unwrap().to_string()
}

/// kong.yml's rest-v1-openapi, rest-v1 and dashboard services (in that order), routes verbatim.
fn supabase_yaml(openapi: SocketAddr, rest: SocketAddr, dashboard: SocketAddr) -> String {
    [
        "_format_version: \"2.1\"".to_string(),
        "services:".to_string(),
        "  - name: rest-v1-openapi".to_string(),
        format!("    url: http://{openapi}/"),
        "    routes:".to_string(),
        "      - name: rest-v1-openapi-root".to_string(),
        "        strip_path: true".to_string(),
        "        expression: 'http.path == \"/rest/v1/\"'".to_string(),
        "  - name: rest-v1".to_string(),
        format!("    url: http://{rest}/"),
        "    routes:".to_string(),
        "      - name: rest-v1-all".to_string(),
        "        strip_path: true".to_string(),
        "        paths:".to_string(),
        "          - /rest/v1/".to_string(),
        "  - name: dashboard".to_string(),
        format!("    url: http://{dashboard}/"),
        "    routes:".to_string(),
        "      - name: dashboard-all".to_string(),
        "        strip_path: true".to_string(),
        "        paths:".to_string(),
        "          - /".to_string(),
    ]
    .join("\n")
}

#[tokio::test]
async fn supabase_openapi_root_expression_route() {
    let (openapi, rest, dashboard) = (
        echo_upstream().await,
        echo_upstream().await,
        echo_upstream().await,
    );
    let g = gateway(&supabase_yaml(openapi, rest, dashboard)).await;

    let r = get(g.addr, "/rest/v1/?select=x").await;
    assert_eq!(served_by(&r, openapi), "/?select=x");
    let j = r.json();
    assert_eq!(
        echoed(&j, "x-forwarded-prefix").as_deref(),
        Some("/rest/v1/")
    );
    assert_eq!(echoed(&j, "x-forwarded-path").as_deref(), Some("/rest/v1/"));
    assert_eq!(served_by(&get(g.addr, "/rest/v1/").await, openapi), "/");
    assert_eq!(
        served_by(&get(g.addr, "/rest/v1/?x=1").await, openapi),
        "/?x=1"
    );
    // http.path is the normalized path, as for paths routes.
    assert_eq!(
        served_by(&get(g.addr, "/rest//v1/./?a=b").await, openapi),
        "/?a=b"
    );

    // Anything longer is the paths route, a bare /rest/v1 the catch-all.
    let r = get(g.addr, "/rest/v1/todos?select=id").await;
    assert_eq!(served_by(&r, rest), "/todos?select=id");
    assert_eq!(
        echoed(&r.json(), "x-forwarded-prefix").as_deref(),
        Some("/rest/v1/")
    );
    assert_eq!(
        served_by(&get(g.addr, "/rest/v1").await, dashboard),
        "/rest/v1"
    );
    let r = get(g.addr, "/rest/v1").await;
    assert_eq!(echoed(&r.json(), "x-forwarded-prefix"), None);
}

#[tokio::test]
async fn prefix_operator_strips_the_prefix() {
    let (a, b) = (echo_upstream().await, echo_upstream().await);
    let g = gateway(&cfg(&format!(
        "{}    routes:\n      - expression: 'http.path ^= \"/api/\"'\n\
         {}    routes:\n      - expression: 'http.path ^= \"/keep/\"'\n        strip_path: false\n",
        svc("strip", a, "/base"),
        svc("keep", b, "/base"),
    )))
    .await;
    let r = get(g.addr, "/api/users?q=1").await;
    assert_eq!(served_by(&r, a), "/base/users?q=1");
    assert_eq!(
        echoed(&r.json(), "x-forwarded-prefix").as_deref(),
        Some("/api/")
    );
    assert_eq!(served_by(&get(g.addr, "/api/").await, a), "/base/");
    let r = get(g.addr, "/keep/x").await;
    assert_eq!(served_by(&r, b), "/base/keep/x");
    assert_eq!(echoed(&r.json(), "x-forwarded-prefix"), None);
    assert_eq!(get(g.addr, "/api").await.status, 404);
}

#[tokio::test]
async fn regex_operator_strips_the_matched_text() {
    let up = echo_upstream().await;
    let g = gateway(&cfg(&format!(
        "{}    routes:\n      - expression: 'http.path ~ \"^/v[0-9]+/\"'\n",
        svc("versioned", up, "/"),
    )))
    .await;
    let r = get(g.addr, "/v12/items?id=3").await;
    assert_eq!(served_by(&r, up), "/items?id=3");
    assert_eq!(
        echoed(&r.json(), "x-forwarded-prefix").as_deref(),
        Some("/v12/")
    );
    assert_eq!(get(g.addr, "/vx/items").await.status, 404);
}

#[tokio::test]
async fn logical_operators_and_kong_precedence() {
    let (a, b) = (echo_upstream().await, echo_upstream().await);
    let g = gateway(&cfg(&format!(
        "{}    routes:\n      - expression: 'http.method == \"POST\" && (http.path == \"/a\" || http.path == \"/b\")'\n\
         {}    routes:\n      - expression: 'http.method == \"GET\" && http.path == \"/x\" || http.path == \"/y\"'\n",
        svc("post", a, "/"),
        svc("get", b, "/"),
    )))
    .await;
    assert_eq!(
        served_by(&send(g.addr, "POST", "/a", &[], b"").await, a),
        "/"
    );
    assert_eq!(
        served_by(&send(g.addr, "POST", "/b", &[], b"").await, a),
        "/"
    );
    assert_eq!(get(g.addr, "/a").await.status, 404);
    // In ATC `||` binds tighter than `&&`: GET && (/x || /y). An `==` on http.path records the
    // whole path, so strip_path leaves `/`.
    assert_eq!(served_by(&get(g.addr, "/y").await, b), "/");
    assert_eq!(served_by(&get(g.addr, "/x").await, b), "/");
    assert_eq!(send(g.addr, "POST", "/y", &[], b"").await.status, 404);
}

#[tokio::test]
async fn header_method_and_query_fields() {
    let (a, b, c) = (
        echo_upstream().await,
        echo_upstream().await,
        echo_upstream().await,
    );
    let g = gateway(&cfg(&format!(
        "{}    routes:\n      - expression: 'http.headers.x_tenant == \"acme\" && http.method == \"GET\"'\n\
         {}    routes:\n      - expression: 'lower(http.headers.x_tenant) == \"other\" && http.path ^= \"/t\"'\n\
         {}    routes:\n      - expression: 'http.queries.apikey == \"k 1\"'\n",
        svc("acme", a, "/"),
        svc("other", b, "/"),
        svc("query", c, "/"),
    )))
    .await;
    let r = send(g.addr, "GET", "/any/path", &[("X-Tenant", "acme")], b"").await;
    // No http.path value recorded: nothing stripped.
    assert_eq!(served_by(&r, a), "/any/path");
    assert_eq!(
        send(g.addr, "POST", "/any/path", &[("X-Tenant", "acme")], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        send(g.addr, "GET", "/any/path", &[("X-Tenant", "ACME")], b"")
            .await
            .status,
        404
    );
    let r = send(g.addr, "GET", "/t/x", &[("x-tenant", "OTHER")], b"").await;
    assert_eq!(served_by(&r, b), "/x");
    assert_eq!(
        served_by(&get(g.addr, "/q?apikey=k+1&other=2").await, c),
        "/q?apikey=k+1&other=2"
    );
    assert_eq!(
        served_by(&get(g.addr, "/q?apikey=k%201").await, c),
        "/q?apikey=k%201"
    );
    assert_eq!(get(g.addr, "/q?apikey=k1").await.status, 404);
}

#[tokio::test]
async fn priority_between_expression_routes_and_over_paths() {
    let (low, high, paths) = (
        echo_upstream().await,
        echo_upstream().await,
        echo_upstream().await,
    );
    let g = gateway(&cfg(&format!(
        "{}    routes:\n      - expression: 'http.path ^= \"/p\"'\n\
         {}    routes:\n      - expression: 'http.path ^= \"/p/special\"'\n        priority: 10\n\
         {}    routes:\n      - paths: [/p/special/deeper]\n        methods: [GET]\n        hosts: [localhost]\n",
        svc("low", low, "/"),
        svc("high", high, "/"),
        svc("paths", paths, "/"),
    )))
    .await;
    assert_eq!(served_by(&get(g.addr, "/p/special/x").await, high), "/x");
    assert_eq!(served_by(&get(g.addr, "/p/other").await, low), "/other");
    // An expression route outranks even a route with more fields and a longer path.
    let r = send(
        g.addr,
        "GET",
        "/p/special/deeper",
        &[("host", "localhost")],
        b"",
    )
    .await;
    assert_eq!(served_by(&r, high), "/deeper");
}

#[test]
fn config_errors_point_at_the_expression() {
    let yaml = [
        "_format_version: \"3.0\"",
        "services:",
        "  - name: s",
        "    url: http://127.0.0.1:1/",
        "    routes:",
        "      - name: bad-syntax",
        "        expression: 'http.path = \"/x\"'",
        "      - name: unknown-field",
        "        expression: http.pathx == \"/x\"",
        "      - name: both",
        "        paths: [/a]",
        "        expression: 'http.path == \"/a\"'",
        "      - name: prio",
        "        paths: [/b]",
        "        priority: 3",
        "      - name: type",
        "        expression: 'net.src.port == \"80\"'",
        "      - name: ok",
        "        expression: 'http.path == \"/ok\"'",
        "        priority: 5",
    ]
    .join("\n");
    let env = |_: &str| None;
    let errs = portcullis::config::load_config_with_env("gw.yaml", &yaml, &env)
        .expect_err("must fail")
        .to_string();
    let lines: Vec<&str> = errs.lines().collect();
    assert_eq!(
        lines,
        vec![
            "gw.yaml:7:21: route 'bad-syntax'.expression: Router Expression failed validation: expected binary_operator at 1:11",
            "gw.yaml:9:21: route 'unknown-field'.expression: Router Expression failed validation: Unknown LHS field ('http.pathx')",
            "gw.yaml:12:21: route 'both': Router Expression failed validation: cannot set 'expression' with 'methods', 'hosts', 'paths', 'headers', 'snis', 'sources' or 'destinations' simultaneously",
            "gw.yaml:15:9: route 'prio': Router Expression failed validation: cannot set 'priority' with 'methods', 'hosts', 'paths', 'headers', 'snis', 'sources' or 'destinations' simultaneously",
            "gw.yaml:17:21: route 'type'.expression: Router Expression failed validation: Type mismatch between the LHS and RHS values of predicate ('net.src.port')",
        ],
        "{errs}"
    );

    // A route with nothing to match on names `expression` among the choices.
    let yaml = "_format_version: \"3.0\"\nroutes:\n  - name: empty\n    strip_path: true\n";
    let errs = portcullis::config::load_config_with_env("gw.yaml", yaml, &env)
        .expect_err("must fail")
        .to_string();
    assert_eq!(
        errs,
        "gw.yaml:3:5: route 'empty': must set one of 'methods', 'hosts', 'headers', 'paths', 'expression' when 'protocols' is 'http'"
    );
}

#[tokio::test]
async fn explain_names_the_expression_and_why_it_wins() {
    let (openapi, rest, dashboard) = (
        echo_upstream().await,
        echo_upstream().await,
        echo_upstream().await,
    );
    let g = gateway(&supabase_yaml(openapi, rest, dashboard)).await;
    let snap = g.gw.snapshot.load_full();
    let req = portcullis::explain::Request {
        method: http::Method::GET,
        uri: "/rest/v1/?select=x".parse().unwrap(),
        headers: http::HeaderMap::new(),
        client_ip: "127.0.0.1".parse().unwrap(),
        body: None,
    };
    let out = portcullis::explain::explain(&snap, &req).await;
    assert!(
        out.contains("matched route:   route 'rest-v1-openapi-root' (service 'rest-v1-openapi')"),
        "{out}"
    );
    assert!(
        out.contains("  matched by:    expression 'http.path == \"/rest/v1/\"'"),
        "{out}"
    );
    assert!(
        out.contains(
            "  beats:         route 'rest-v1-all' (service 'rest-v1') — expression route outranks path routes"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "upstream:        GET http://{openapi}/?select=x (strip_path on)"
        )),
        "{out}"
    );
}
