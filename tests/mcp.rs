//! MCP end to end with the real SDKs through the gateway: the Python `mcp` 2.3.0 server
//! and client (handshake era 2025-11-25 with sessions, and stateless 2026-07-28) and the
//! TypeScript SDK 1.32.2 client.
//!
//! Needs (scripts/test sets both up and exports the variables):
//! - `PORTCULLIS_TEST_PYTHON`: a Python with `mcp==2.3.0` (default: `.venv-mcp/bin/python`);
//! - `PORTCULLIS_TEST_NODE_MODULES`: a `node_modules` with `@modelcontextprotocol/sdk`
//!   (default: `tests/mcp-node/node_modules`), and `node` on PATH (or `PORTCULLIS_TEST_NODE`).
//!
//! Missing either fails the test with the set-up command; nothing is skipped. The
//! scenarios of one test run concurrently, so the 17 s silent tool costs 17 s once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt_support;
mod mcp_support;

use common::*;
use jwt_support::{AuthServer, SigningKey, now};
use mcp_support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::process::Command;

/// `python client.py URL MODE ARGS...`
async fn py_client(url: &str, mode: &str, args: &[&str]) -> ClientResult {
    let mut cmd = Command::new(python());
    cmd.arg(script("client.py")).arg(url).arg(mode).args(args);
    run(cmd, &format!("python client {mode} {url}")).await
}

/// `node client.mjs URL` with `MCP_TOKEN`, from a scratch directory whose
/// `node_modules` points at the installed SDK (ES modules resolve next to the script).
async fn ts_client(url: &str, token: Option<&str>) -> ClientResult {
    let dir = node_dir("client.mjs");
    let mut cmd = Command::new(node());
    cmd.arg(dir.path().join("client.mjs")).arg(url);
    match token {
        Some(t) => cmd.env("MCP_TOKEN", t),
        None => cmd.env_remove("MCP_TOKEN"),
    };
    let r = run(cmd, &format!("node client {url}")).await;
    drop(dir);
    r
}

fn ok(r: ClientResult, what: &str) -> Value {
    r.unwrap_or_else(|e| panic!("{what} failed:\n{e}"))
}

fn assert_basics(v: &Value, what: &str) {
    assert_eq!(v["tools"], json!(["add", "slow_count"]), "{what}");
    assert!(
        v["add"] == json!({"result": 3}) || v["add"] == json!("3"),
        "{what}: {v}"
    );
}

fn route_yaml(name: &str, up: SocketAddr, path: &str, plugins: &str) -> String {
    format!(
        "  - name: {name}\n    url: http://{up}/mcp\n    routes:\n      - paths: [{path}]\n{plugins}"
    )
}

#[tokio::test]
async fn python_sdk_both_eras_with_a_17s_silent_tool() {
    let (stateful, stateless) = tokio::join!(Server::python(&[]), Server::python(&["--stateless"]));
    let g = gateway(&services(&[
        route_yaml("sessions", stateful.addr, "/mcp", ""),
        route_yaml("stateless", stateless.addr, "/stateless/mcp", ""),
    ]))
    .await;
    let sessions = format!("http://{}/mcp", g.addr);
    let modern = format!("http://{}/stateless/mcp", g.addr);
    let (legacy, latest, auto) = tokio::join!(
        py_client(&sessions, "legacy", &["--progress", "--silent", "17"]),
        py_client(&modern, "2026-07-28", &["--progress", "--silent", "17"]),
        py_client(&sessions, "auto", &["--progress"]),
    );
    let legacy = ok(legacy, "python legacy (2025-11-25, sessions)");
    assert_eq!(legacy["protocol_version"], "2025-11-25");
    assert_basics(&legacy, "legacy");
    assert_streamed(&legacy["progress"], "legacy");
    assert_eq!(legacy["silent"]["result"], "counted to 1");
    assert!(legacy["silent"]["seconds"].as_f64().unwrap() >= 17.0);

    let latest = ok(latest, "python 2026-07-28 (stateless)");
    assert_eq!(latest["protocol_version"], "2026-07-28");
    assert_basics(&latest, "2026-07-28");
    assert_streamed(&latest["progress"], "2026-07-28");
    assert_eq!(latest["silent"]["result"], "counted to 1");

    let auto = ok(auto, "python auto");
    assert_eq!(auto["protocol_version"], "2026-07-28");
    assert_streamed(&auto["progress"], "auto");
}

#[tokio::test]
async fn typescript_sdk_client_and_session_delete() {
    let server = Server::python(&[]).await;
    let g = gateway(&services(&[route_yaml("mcp", server.addr, "/mcp", "")])).await;
    let url = format!("http://{}/mcp", g.addr);
    let (ts, ()) = tokio::join!(ts_client(&url, None), raw_session(g.addr));
    let ts = ok(ts, "TypeScript client");
    assert_eq!(ts["protocol_version"], "2025-11-25");
    assert!(ts["session"].is_string(), "{ts}");
    assert_basics(&ts, "ts");
    assert_streamed(&ts["progress"], "ts");
    assert_eq!(ts["terminated"], true, "DELETE through the gateway: {ts}");
}

/// The session life cycle on the wire: Mcp-Session-Id exactly once, DELETE ends the
/// session, and the server's 404 afterwards reaches the client verbatim.
async fn raw_session(gw: SocketAddr) {
    let accept = ("accept", "application/json, text/event-stream");
    let ctype = ("content-type", "application/json");
    let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
    let r = send(gw, "POST", "/mcp", &[accept, ctype], init).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers.get_all("mcp-session-id").iter().count(), 1);
    let sid = r.header("mcp-session-id").unwrap();
    assert!(r.text().contains("\"protocolVersion\""), "{}", r.text());
    let with_sid = [
        accept,
        ctype,
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let r = send(
        gw,
        "POST",
        "/mcp",
        &with_sid,
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let r = send(
        gw,
        "POST",
        "/mcp",
        &with_sid,
        br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("slow_count"), "{}", r.text());
    // No session id on a non-initialize request: the server's 400, relayed.
    let r = send(
        gw,
        "POST",
        "/mcp",
        &[accept, ctype],
        br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // End the session.
    let r = send(gw, "DELETE", "/mcp", &with_sid, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        gw,
        "POST",
        "/mcp",
        &with_sid,
        br#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("Session not found"), "{}", r.text());
}

#[tokio::test]
async fn ip_restriction_allows_and_denies_the_sdk_client() {
    let server = Server::python(&["--stateless"]).await;
    let allow = |cidr: &str| {
        format!(
            "    plugins:\n      - name: ip-restriction\n        config:\n          allow: [\"{cidr}\"]\n"
        )
    };
    let g = gateway(&services(&[
        route_yaml("mine", server.addr, "/mcp", &allow("127.0.0.1")),
        route_yaml("theirs", server.addr, "/other/mcp", &allow("10.0.0.0/8")),
    ]))
    .await;
    let allowed = format!("http://{}/mcp", g.addr);
    let denied = format!("http://{}/other/mcp", g.addr);
    let (a, d, t) = tokio::join!(
        py_client(&allowed, "auto", &[]),
        py_client(&denied, "auto", &[]),
        ts_client(&denied, None),
    );
    assert_basics(&ok(a, "allowed client"), "allowed");
    let e = d.expect_err("a client outside the allow list got through");
    assert!(e.contains("HTTP statuses: [403"), "{e}");
    let e = t.expect_err("a TS client outside the allow list got through");
    assert!(e.contains("HTTP statuses: [403"), "{e}");
}

#[tokio::test]
async fn default_gateway_yaml_refuses_mcp() {
    let yaml = std::fs::read_to_string(repo().join("gateway.yaml")).unwrap();
    let g = gateway(&yaml).await;
    let url = format!("http://{}/mcp", g.addr);
    let (legacy, auto, ts) = tokio::join!(
        py_client(&url, "legacy", &[]),
        py_client(&url, "auto", &[]),
        ts_client(&url, None),
    );
    for (what, r) in [("legacy", legacy), ("auto", auto), ("ts", ts)] {
        let e = r.expect_err("the default gateway.yaml let an MCP client in");
        assert!(e.contains("HTTP statuses: [403"), "{what}: {e}");
    }
    for path in ["/mcp", "/api/mcp"] {
        let r = send(
            g.addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            b"{}",
        )
        .await;
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["message"], "Access is forbidden.");
    }
}

#[tokio::test]
async fn bearer_token_through_the_gateway() {
    let (server, stateless) = tokio::join!(Server::python(&[]), Server::python(&["--stateless"]));
    let key = SigningKey::es256("sdk-key");
    let a = AuthServer::start(&[&key]).await;
    let resource = "https://mcp.example.test/mcp";
    let plugins = format!(
        "    plugins:\n      - name: mcp-origin\n      - name: oauth2-resource\n        config:\n          resource: {resource}\n          issuer: {}\n          jwks_uri: {}\n          required_scopes: [mcp]\n",
        a.issuer(),
        a.jwks_uri()
    );
    let g = gateway(&services(&[
        route_yaml("mcp", server.addr, "/mcp", &plugins),
        route_yaml("modern", stateless.addr, "/stateless/mcp", &plugins),
    ]))
    .await;
    let token = key.sign(&json!({
        "iss": a.issuer(), "sub": "sdk-user", "aud": resource, "exp": now() + 600,
        "scope": "mcp", "client_id": "c1",
    }));
    let no_scope = key.sign(&json!({
        "iss": a.issuer(), "sub": "sdk-user", "aud": resource, "exp": now() + 600,
        "scope": "openid",
    }));
    let sessions = format!("http://{}/mcp", g.addr);
    let modern = format!("http://{}/stateless/mcp", g.addr);
    let with_token = ["--token", token.as_str(), "--progress"];
    let with_no_scope = ["--token", no_scope.as_str()];
    let (legacy, latest, ts, anonymous, wrong_scope) = tokio::join!(
        py_client(&sessions, "legacy", &with_token),
        py_client(&modern, "2026-07-28", &with_token),
        ts_client(&sessions, Some(&token)),
        py_client(&modern, "auto", &[]),
        py_client(&modern, "2026-07-28", &with_no_scope),
    );
    let legacy = ok(legacy, "python legacy with a bearer token");
    assert_eq!(legacy["protocol_version"], "2025-11-25");
    assert_streamed(&legacy["progress"], "legacy+token");
    let latest = ok(latest, "python 2026-07-28 with a bearer token");
    assert_eq!(latest["protocol_version"], "2026-07-28");
    assert_streamed(&latest["progress"], "2026+token");
    let ts = ok(ts, "TypeScript client with a bearer token");
    assert_eq!(ts["terminated"], true);
    let e = anonymous.expect_err("no token, yet the client got through");
    assert!(e.contains("HTTP statuses: [401"), "{e}");
    let e = wrong_scope.expect_err("a token without the scope got through");
    assert!(e.contains("HTTP statuses: [403"), "{e}");
    assert_eq!(a.fetches(), 1);
}
