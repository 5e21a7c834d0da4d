//! mcp-policy end to end: Supabase's own MCP server (`@supabase/mcp-server-supabase`
//! 0.6.3 with a stub platform, run as Studio runs it: stateless, JSON answers) and the
//! Python SDK server (SSE, sessions) behind the gateway, driven by the real Python
//! (`mcp` 2.3.0) and TypeScript (SDK 1.32.2) clients; wire checks with raw HTTP.
//!
//! Needs what tests/mcp.rs needs (scripts/test sets it up): `PORTCULLIS_TEST_PYTHON`,
//! `PORTCULLIS_TEST_NODE_MODULES` (now with `@supabase/mcp-server-supabase`), `node`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt_support;
mod mcp_support;

use bytes::Bytes;
use common::process::GatewayProcess;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use jwt_support::{AuthServer, SigningKey, now};
use mcp_support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;

impl Server {
    async fn supabase() -> Server {
        let dir = node_dir("supabase.mjs");
        let mut cmd = Command::new(node());
        cmd.arg(dir.path().join("supabase.mjs"));
        Server::start(cmd, "Supabase's MCP server (node)", Some(dir)).await
    }

    /// Supabase stub only: every JSON-RPC message it received, as (method, name).
    async fn received(&self) -> Vec<(String, Option<String>)> {
        let r = get(self.addr, "/received").await;
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["method"].as_str().unwrap().to_string(),
                    m["name"].as_str().map(str::to_string),
                )
            })
            .collect()
    }
}

/// `python policy_client.py URL MODE [--token T] --call NAME=ARGS... [--progress]`
async fn py_client(url: &str, mode: &str, token: Option<&str>, args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(script("policy_client.py")).arg(url).arg(mode);
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    for a in args {
        if a.starts_with("--") {
            cmd.arg(a);
        } else {
            cmd.arg("--call").arg(a);
        }
    }
    let what = format!("python client {mode} {url}");
    run(cmd, &what)
        .await
        .unwrap_or_else(|e| panic!("{what} failed:\n{e}"))
}

/// `node policy_client.mjs URL NAME=ARGS... [--progress]` with `MCP_TOKEN`.
async fn ts_client(url: &str, token: Option<&str>, args: &[&str]) -> Value {
    let dir = node_dir("policy_client.mjs");
    let mut cmd = Command::new(node());
    cmd.arg(dir.path().join("policy_client.mjs"))
        .arg(url)
        .args(args);
    match token {
        Some(t) => cmd.env("MCP_TOKEN", t),
        None => cmd.env_remove("MCP_TOKEN"),
    };
    let what = format!("node client {url}");
    let r = run(cmd, &what).await;
    drop(dir);
    r.unwrap_or_else(|e| panic!("{what} failed:\n{e}"))
}

fn route(name: &str, up: SocketAddr, path: &str, plugins: &str) -> String {
    format!(
        "  - name: {name}\n    url: http://{up}/mcp\n    routes:\n      - name: {name}\n        paths: [{path}]\n    plugins:\n{plugins}"
    )
}

/// The refusal a client got for `tool`: a JSON-RPC error naming the policy.
fn assert_refused(v: &Value, tool: &str, what: &str) {
    let e = &v["calls"][tool]["error"];
    assert_eq!(e["code"], -32602, "{what}: {tool}: {v}");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("gateway's MCP policy") && msg.contains(tool),
        "{what}: {tool}: {v}"
    );
}

const READ_ONLY: [&str; 6] = [
    "generate_typescript_types",
    "get_project_url",
    "get_publishable_keys",
    "list_extensions",
    "list_migrations",
    "list_tables",
];

/// The README's policy for Supabase's server: read-only tools for tokens with `mcp`,
/// every tool for tokens that also carry `mcp:admin`.
#[tokio::test]
async fn supabase_server_read_only_scope_and_admin_scope_with_both_sdks() {
    let supabase = Server::supabase().await;
    let key = SigningKey::es256("policy-key");
    let a = AuthServer::start(&[&key]).await;
    let resource = "https://mcp.example.test/mcp";
    let plugins = format!(
        "      - name: oauth2-resource\n        config:\n          resource: {resource}\n          issuer: {}\n          jwks_uri: {}\n          required_scopes: [mcp]\n{}",
        a.issuer(),
        a.jwks_uri(),
        "      - name: mcp-policy\n        config:\n          allow:\n            tools: [search_docs, \"list_*\", get_project_url, get_publishable_keys, generate_typescript_types]\n          scopes:\n            - scope: \"mcp:admin\"\n              allow:\n                tools: [\"*\"]\n",
    );
    let g = gateway(&services(&[route("mcp", supabase.addr, "/mcp", &plugins)])).await;
    let token = |scope: &str| {
        key.sign(&json!({
            "iss": a.issuer(), "sub": "u1", "aud": resource, "exp": now() + 600,
            "scope": scope, "client_id": "c1",
        }))
    };
    let (reader, admin) = (token("mcp"), token("mcp mcp:admin"));
    let url = format!("http://{}/mcp", g.addr);
    let calls = [
        r#"list_tables={"schemas":["public"]}"#,
        r#"execute_sql={"query":"select 1"}"#,
        r#"apply_migration={"name":"drop","query":"drop table t"}"#,
    ];
    let (py_reader, ts_reader, py_admin) = tokio::join!(
        py_client(&url, "auto", Some(&reader), &calls),
        ts_client(&url, Some(&reader), &calls),
        py_client(&url, "auto", Some(&admin), &calls[..2]),
    );
    for (what, v) in [("python", &py_reader), ("typescript", &ts_reader)] {
        assert_eq!(v["tools"], json!(READ_ONLY), "{what}: {v}");
        assert!(v["calls"]["list_tables"]["ok"].is_string(), "{what}: {v}");
        assert_refused(v, "execute_sql", what);
        assert_refused(v, "apply_migration", what);
    }
    // The client fell back from 2026-07-28 to the handshake, as against Studio.
    assert_eq!(py_reader["protocol_version"], "2025-11-25");
    assert_eq!(py_admin["tools"].as_array().unwrap().len(), 8, "{py_admin}");
    let sql = py_admin["calls"]["execute_sql"]["ok"].as_str().unwrap();
    assert!(
        sql.contains("\"ok\":1") || sql.contains(r#"\"ok\":1"#),
        "{sql}"
    );

    // Refused calls never reached the server: only the admin's execute_sql did.
    let got = supabase.received().await;
    let called = |tool: &str| {
        got.iter()
            .filter(|(m, n)| m == "tools/call" && n.as_deref() == Some(tool))
            .count()
    };
    assert_eq!(called("execute_sql"), 1, "{got:?}");
    assert_eq!(called("apply_migration"), 0, "{got:?}");
    assert_eq!(called("list_tables"), 3, "{got:?}");

    let m = g.gw.metrics.render(1);
    assert!(
        m.contains(r#"portcullis_mcp_requests_total{route="mcp",method="tools/call",name="execute_sql",decision="denied"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"portcullis_mcp_requests_total{route="mcp",method="tools/call",name="execute_sql",decision="allowed"} 1"#),
        "{m}"
    );
}

/// SSE answers (the Python server with sessions, and stateless 2026-07-28): the
/// tools/list event is filtered, progress of an allowed call still streams.
#[tokio::test]
async fn sse_lists_filtered_and_progress_unbuffered() {
    let (stateful, stateless) = tokio::join!(Server::python(&[]), Server::python(&["--stateless"]));
    let policy = "      - name: mcp-policy\n        config:\n          allow:\n            tools: [slow_count]\n";
    let g = gateway(&services(&[
        route("sessions", stateful.addr, "/mcp", policy),
        route("stateless", stateless.addr, "/stateless/mcp", policy),
    ]))
    .await;
    let sessions = format!("http://{}/mcp", g.addr);
    let modern = format!("http://{}/stateless/mcp", g.addr);
    let args = [r#"add={"a":1,"b":2}"#, "--progress"];
    let (legacy, latest, ts) = tokio::join!(
        py_client(&sessions, "legacy", None, &args),
        py_client(&modern, "2026-07-28", None, &args),
        ts_client(&sessions, None, &args),
    );
    assert_eq!(latest["protocol_version"], "2026-07-28");
    for (what, v) in [("legacy", &legacy), ("2026-07-28", &latest), ("ts", &ts)] {
        assert_eq!(v["tools"], json!(["slow_count"]), "{what}: {v}");
        assert_refused(v, "add", what);
        assert_streamed(&v["progress"], what);
    }
}

// ------------------------------------------------------------------ raw wire checks

/// An upstream that records every body and answers tools/list with two tools (JSON,
/// or SSE with a notification 600 ms before the result when the path has "sse"),
/// anything else with an echo of the body.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Bytes>>>) {
    let seen: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let s = Arc::clone(&seen);
    let addr = serve_upstream(move |req: Request<Incoming>| {
        let s = Arc::clone(&s);
        async move {
            let sse = req.uri().path().contains("sse");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            s.lock().unwrap().push(body.clone());
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if v["method"] != "tools/list" {
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(portcullis::body::full(
                        json!({"jsonrpc":"2.0","id":v["id"],"result":{"echo": String::from_utf8_lossy(&body)}}).to_string(),
                    ))
                    .unwrap();
            }
            let result = json!({"jsonrpc":"2.0","id":v["id"],"result":{"tools":[
                {"name":"list_tables","inputSchema":{"type":"object"}},
                {"name":"execute_sql","inputSchema":{"type":"object"}}]}});
            if !sse {
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(portcullis::body::full(result.to_string()))
                    .unwrap();
            }
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<Frame<Bytes>, portcullis::body::BoxError>>(4);
            tokio::spawn(async move {
                let first = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"execute_sql\"}}\r\n\r\n";
                let _ = tx.send(Ok(Frame::data(Bytes::from(first)))).await;
                tokio::time::sleep(Duration::from_millis(600)).await;
                let text = format!("event: message\r\ndata: {result}\r\n\r\n");
                // Split mid-event: the filter must join the halves.
                let (a, b) = text.split_at(text.len() / 2);
                let _ = tx.send(Ok(Frame::data(Bytes::from(a.to_string())))).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(b.to_string())))).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(tokio_stream_from(rx)).boxed())
                .unwrap()
        }
    })
    .await;
    (addr, seen)
}

const JSON_HEADERS: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
];

async fn post(g: SocketAddr, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut h: Vec<(&str, &str)> = JSON_HEADERS.to_vec();
    h.extend_from_slice(extra);
    send(g, "POST", path, &h, body).await
}

#[tokio::test]
async fn wire_refusals_batches_headers_limits_and_filters() {
    let (up, seen) = recording_upstream().await;
    let plugins = "      - name: mcp-policy\n        config:\n          max_body_size: 2048\n          allow:\n            tools: [\"list_*\", \"get_*\"]\n          deny:\n            methods: [logging/setLevel]\n";
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: up\n    url: http://{up}/mcp\n    routes:\n      - name: mcp\n        paths: [/mcp]\n      - name: sse\n        paths: [/sse]\n        strip_path: false\n    plugins:\n{plugins}"
    );
    let g = gateway(&yaml).await;
    let gw = g.addr;
    let upstream_count = || seen.lock().unwrap().len();

    // Allowed: forwarded byte for byte (odd spacing and key order kept).
    let body = br#"{ "id":1, "jsonrpc":"2.0","method":"tools/call","params":{"name":"list_tables","arguments":{"x":"execute_sql"}}}"#;
    let r = post(gw, "/mcp", &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen.lock().unwrap().last().unwrap().as_ref(), body);
    let n = upstream_count();

    // Denied: a JSON-RPC error with the request's id, status 200, nothing upstream.
    let r = post(
        gw,
        "/mcp",
        &[],
        br#"{"jsonrpc":"2.0","id":"a-7","method":"tools/call","params":{"name":"execute_sql","arguments":{}}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let v = r.json();
    assert_eq!(v["id"], "a-7");
    assert_eq!(v["error"]["code"], -32602);
    // A denied method; a denied notification: 202, never answered nor forwarded.
    let r = post(
        gw,
        "/mcp",
        &[],
        br#"{"jsonrpc":"2.0","id":3,"method":"logging/setLevel","params":{"level":"debug"}}"#,
    )
    .await;
    assert_eq!(r.json()["error"]["code"], -32601);
    let r = post(
        gw,
        "/mcp",
        &[],
        br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"execute_sql"}}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());

    // 2026-07-28 headers: agreeing (base64 form too) → judged; disagreeing → -32020.
    let call = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"execute_sql"}}"#;
    let h26 = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "=?base64?ZXhlY3V0ZV9zcWw=?="),
    ];
    let r = post(gw, "/mcp", &h26, call).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["error"]["code"], -32602);
    let lie = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "list_tables"),
    ];
    let r = post(gw, "/mcp", &lie, call).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32020);
    let r = post(
        gw,
        "/mcp",
        &[("mcp-method", "tools/list")],
        br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"list_tables"}}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32020);

    // A batch with one refused request: nothing forwarded, every request answered.
    let r = post(
        gw,
        "/mcp",
        &[],
        br#"[{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"list_tables"}},
            {"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"execute_sql"}},
            {"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["id"], 10);
    assert_eq!(v[0]["error"]["code"], -32600);
    assert_eq!(v[1]["id"], 11);
    assert_eq!(v[1]["error"]["code"], -32602);
    // An allowed batch is forwarded as it is.
    let batch = br#"[{"jsonrpc":"2.0","id":12,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
    post(gw, "/mcp", &[], batch).await;
    assert_eq!(seen.lock().unwrap().last().unwrap().as_ref(), batch);
    assert_eq!(
        upstream_count(),
        n + 1,
        "a refused message reached the upstream"
    );

    // Unreadable and oversized bodies.
    let r = post(gw, "/mcp", &[], b"{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"list_tables","arguments":{{"pad":"{}"}}}}}}"#,
        "x".repeat(3000)
    );
    let r = post(gw, "/mcp", &[], big.as_bytes()).await;
    assert_eq!(r.status, 413);
    assert_eq!(upstream_count(), n + 1);
    // GET (a server-to-client stream) carries no message: not judged.
    let r = send(gw, "GET", "/mcp", &[], b"").await;
    assert_eq!(r.status, 200);

    // tools/list filtered in a JSON answer...
    let list = br#"{"jsonrpc":"2.0","id":20,"method":"tools/list"}"#;
    let r = post(gw, "/mcp", &[("accept-encoding", "gzip")], list).await;
    let v = r.json();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["result"]["tools"][0]["name"], "list_tables");
    let fwd: Value = serde_json::from_slice(seen.lock().unwrap().last().unwrap()).unwrap();
    assert_eq!(fwd["id"], 20);

    // ...and in an SSE answer, where the event before the result is not held back.
    let stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/sse")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(http_body_util::Full::new(Bytes::from_static(list)))
        .unwrap();
    let t0 = Instant::now();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "the first event waited for the result"
    );
    assert!(String::from_utf8_lossy(&first).contains("notifications/message"));
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(rest.contains("list_tables"), "{rest}");
    assert!(!rest.contains("execute_sql"), "{rest}");
    assert!(rest.starts_with("event: message\r\ndata: {"), "{rest}");
}

#[test]
fn config_errors_are_positioned() {
    let clients = portcullis::upstream::ClientCache::default();
    let load = |plugin: &str| {
        let yaml = format!(
            "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:1/mcp\n    routes:\n      - paths: [/mcp]\n    plugins:\n      - name: mcp-policy\n{plugin}"
        );
        match portcullis::config::load_bytes("g.yaml", yaml.as_bytes(), 1, &clients) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let e = load("");
    assert!(
        e.contains("g.yaml:8:15:") && e.contains("empty policy"),
        "{e}"
    );
    let e = load("        config:\n          allow:\n            tool: [x]\n");
    assert!(
        e.contains("g.yaml:11:13:") && e.contains("unknown field 'tool'"),
        "{e}"
    );
    let e = load("        config:\n          allow: {}\n");
    assert!(e.contains("g.yaml:10:18:") && e.contains("empty"), "{e}");
    let e = load("        config:\n          scopes:\n            - scope: admin\n");
    assert!(e.contains("needs allow or deny"), "{e}");
    let e = load(
        "        config:\n          max_body_size: 0\n          deny:\n            tools: [x]\n",
    );
    assert!(e.contains("max_body_size"), "{e}");
    assert_eq!(
        load("        config:\n          deny:\n            tools: [execute_sql]\n"),
        ""
    );
}

#[tokio::test]
async fn explain_shows_the_policy_decision_for_a_body() {
    let clients = portcullis::upstream::ClientCache::default();
    let yaml = "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:1/mcp\n    routes:\n      - paths: [/mcp]\n    plugins:\n      - name: mcp-policy\n        config:\n          allow:\n            tools: [\"list_*\"]\n";
    let snap = portcullis::config::load_bytes("g.yaml", yaml.as_bytes(), 1, &clients).unwrap();
    let explain = |body: &'static str| {
        let req = portcullis::explain::Request {
            method: http::Method::POST,
            uri: "http://localhost:8000/mcp".parse().unwrap(),
            headers: http::HeaderMap::new(),
            client_ip: "127.0.0.1".parse().unwrap(),
            body: Some(Bytes::from_static(body.as_bytes())),
        };
        let snap = &snap;
        async move { portcullis::explain::explain(snap, &req).await }
    };
    let out = explain(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute_sql"}}"#,
    )
    .await;
    assert!(
        out.contains("mcp-policy") && out.contains("-32602") && out.contains("'execute_sql'"),
        "{out}"
    );
    assert!(out.contains("never reaches the upstream"), "{out}");
    let out = explain(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tables"}}"#,
    )
    .await;
    assert!(out.contains("allows tools/call 'list_tables'"), "{out}");
    let out = explain(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).await;
    assert!(out.contains("filtered"), "{out}");
}

/// Per consumer through Kong's plugin scoping: a consumer's own mcp-policy entry
/// replaces the route's for that consumer (key-auth establishes who it is).
#[tokio::test]
async fn a_consumers_own_policy_replaces_the_routes() {
    let (up, seen) = recording_upstream().await;
    let yaml = format!(
        r#"_format_version: "3.0"
consumers:
  - username: reader
    keyauth_credentials:
      - key: reader-key
  - username: admin
    keyauth_credentials:
      - key: admin-key
plugins:
  - name: mcp-policy
    consumer: admin
    config:
      allow:
        tools: ["*"]
services:
  - name: up
    url: http://{up}/mcp
    routes:
      - name: mcp
        paths: [/mcp]
    plugins:
      - name: key-auth
      - name: mcp-policy
        config:
          allow:
            tools: ["list_*"]
"#
    );
    let g = gateway(&yaml).await;
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute_sql"}}"#;
    let list = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let r = post(g.addr, "/mcp", &[("apikey", "reader-key")], call).await;
    assert_eq!(r.json()["error"]["code"], -32602, "{}", r.text());
    let r = post(g.addr, "/mcp", &[("apikey", "reader-key")], list).await;
    assert_eq!(r.json()["result"]["tools"].as_array().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap().len(), 1);
    let r = post(g.addr, "/mcp", &[("apikey", "admin-key")], call).await;
    assert!(r.json()["result"]["echo"].is_string(), "{}", r.text());
    let r = post(g.addr, "/mcp", &[("apikey", "admin-key")], list).await;
    assert_eq!(r.json()["result"]["tools"].as_array().unwrap().len(), 2);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// `portcullis explain -d BODY` (and `-d @FILE`) through the real binary.
#[test]
fn explain_cli_takes_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:1/mcp\n    routes:\n      - paths: [/mcp]\n    plugins:\n      - name: mcp-policy\n        config:\n          allow:\n            tools: [\"list_*\"]\n",
    )
    .unwrap();
    let body = dir.path().join("call.json");
    std::fs::write(
        &body,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tables"}}"#,
    )
    .unwrap();
    let explain = |data: &str| {
        let out = GatewayProcess::bin()
            .args(["explain", "--config", cfg.to_str().unwrap(), "-d", data])
            .args(["POST", "http://localhost:8000/mcp"])
            .finish(WAIT);
        assert!(out.status.success(), "{out:?}");
        out.stdout.join("\n") + "\n"
    };
    let out = explain(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute_sql"}}"#,
    );
    assert!(
        out.contains("mcp-policy")
            && out.contains("execute_sql")
            && out.contains("never reaches the upstream"),
        "{out}"
    );
    let out = explain(&format!("@{}", body.display()));
    assert!(out.contains("allows tools/call 'list_tables'"), "{out}");
    assert!(out.contains("proxied to service 's'"), "{out}");
}
