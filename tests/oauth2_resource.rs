//! oauth2-resource and mcp-origin, black box: a real gateway, an echo upstream and a
//! loopback authorization server serving a JWKS of generated ES256/RS256 keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt_support;

use common::*;
use jwt_support::*;
use serde_json::{Value, json};
use std::time::Duration;

const RESOURCE: &str = "https://mcp.example.test/mcp";
const METADATA: &str = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp";

fn yaml(up: std::net::SocketAddr, plugin_config: &str, extra_plugins: &str) -> String {
    format!(
        r#"_format_version: "3.0"
services:
  - name: mcp
    url: http://{up}/api/mcp
    routes:
      - name: mcp
        paths: [/mcp]
      - name: mcp-metadata
        paths: [/.well-known/oauth-protected-resource]
    plugins:
{extra_plugins}      - name: oauth2-resource
        config:
{plugin_config}"#
    )
}

fn base_config(a: &AuthServer) -> String {
    format!(
        "          resource: {RESOURCE}\n          issuer: {}\n          jwks_uri: {}\n          required_scopes: [mcp]\n          subject_header: X-Forwarded-User\n          jwks_min_refresh_interval: 1\n",
        a.issuer(),
        a.jwks_uri()
    )
}

fn claims(a: &AuthServer) -> Value {
    json!({
        "iss": a.issuer(),
        "sub": "user-1",
        "aud": RESOURCE,
        "exp": now() + 300,
        "iat": now(),
        "scope": "openid mcp",
        "client_id": "client-1",
    })
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    if v.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = v;
    }
    c
}

async fn call(g: &TestGateway, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send(
        g.addr,
        "POST",
        "/mcp",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        b"{}",
    )
    .await
}

/// A 401 invalid_token whose description mentions `why`.
fn assert_invalid(r: &Resp, why: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{www}"
    );
    assert!(
        www.contains(&format!("resource_metadata=\"{METADATA}\"")),
        "{www}"
    );
    let j = r.json();
    assert_eq!(j["error"], "invalid_token");
    assert!(
        j["error_description"].as_str().unwrap().contains(why),
        "expected '{why}' in {j}"
    );
}

#[tokio::test]
async fn metadata_document_from_config_only() {
    let up = echo_upstream().await;
    let key = SigningKey::es256("k1");
    let a = AuthServer::start(&[&key]).await;
    let cfg = format!("{}          resource_name: Test MCP\n", base_config(&a));
    let g = gateway(&yaml(up, &cfg, "")).await;

    let expected = json!({
        "resource": RESOURCE,
        "authorization_servers": [a.issuer()],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp"],
        "resource_name": "Test MCP",
    });
    // Forwarded headers and Host never change the document (spoofable; http/https flips).
    let spoof = [
        ("host", "evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.example"),
    ];
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = send(g.addr, "GET", path, &spoof, b"").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json(), expected);
        assert_eq!(r.header("content-type").unwrap(), "application/json");
        assert_eq!(r.header("cache-control").unwrap(), "public, max-age=3600");
    }
    let r = send(
        g.addr,
        "HEAD",
        "/.well-known/oauth-protected-resource/mcp",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = get(g.addr, "/.well-known/oauth-protected-resource/other").await;
    assert_eq!(r.status, 404);
    let r = send(
        g.addr,
        "POST",
        "/.well-known/oauth-protected-resource/mcp",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").unwrap(), "GET, HEAD, OPTIONS");
    // The metadata needs no keys: nothing was fetched.
    assert_eq!(a.fetches(), 0);
}

#[tokio::test]
async fn challenges_and_malformed_requests() {
    let up = echo_upstream().await;
    let key = SigningKey::es256("k1");
    let a = AuthServer::start(&[&key]).await;
    let g = gateway(&yaml(up, &base_config(&a), "")).await;

    // No credentials: a bare challenge (RFC 6750 §3.1), for every MCP method.
    for method in ["POST", "GET", "DELETE"] {
        let r = send(g.addr, method, "/mcp", &[], b"").await;
        assert_eq!(r.status, 401, "{method}");
        assert_eq!(
            r.header("www-authenticate").unwrap(),
            format!("Bearer resource_metadata=\"{METADATA}\", scope=\"mcp\"")
        );
        assert_eq!(r.header("cache-control").unwrap(), "no-store");
        assert_eq!(r.json()["error"], "invalid_token");
    }
    // Another scheme is no bearer credential either.
    let r = send(
        g.addr,
        "POST",
        "/mcp",
        &[("authorization", "Basic YTpi")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.header("www-authenticate").unwrap().contains("error="));

    // Malformed requests: 400 invalid_request.
    let token = key.sign(&claims(&a));
    let bearer = format!("Bearer {token}");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("authorization", &bearer), ("authorization", &bearer)],
            "/mcp",
        ),
        (vec![("authorization", "Bearer ")], "/mcp"),
        (vec![("authorization", "Bearer a b")], "/mcp"),
        (vec![("authorization", "Bearer a\"b")], "/mcp"),
        (vec![], "/mcp?access_token=abc"),
        (vec![("authorization", &bearer)], "/mcp?access_token=abc"),
    ];
    for (headers, target) in cases {
        let r = send(g.addr, "POST", target, &headers, b"").await;
        assert_eq!(r.status, 400, "{headers:?} {target}: {}", r.text());
        let www = r.header("www-authenticate").unwrap();
        assert!(www.starts_with("Bearer error=\"invalid_request\""), "{www}");
        assert!(www.contains(&format!("resource_metadata=\"{METADATA}\"")));
        assert_eq!(r.json()["error"], "invalid_request");
    }
}

#[tokio::test]
async fn valid_tokens_are_consumed_not_forwarded() {
    let up = echo_upstream().await;
    let es = SigningKey::es256("ec-1");
    let rs = SigningKey::rs256("rsa-1");
    let a = AuthServer::start(&[&es, &rs]).await;
    let g = gateway(&yaml(up, &base_config(&a), "")).await;

    for key in [&es, &rs] {
        let token = key.sign(&claims(&a));
        let auth = format!("Bearer {token}");
        let r = send(
            g.addr,
            "POST",
            "/mcp?features=docs,database&read_only=true",
            &[
                ("authorization", &auth),
                // A client cannot choose the identity the upstream sees.
                ("x-forwarded-user", "admin"),
            ],
            b"{}",
        )
        .await;
        assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.text());
        let j = r.json();
        assert_eq!(j["path"], "/api/mcp?features=docs,database&read_only=true");
        // No token passthrough.
        assert!(j["headers"]["authorization"].is_null(), "{j}");
        assert_eq!(j["headers"]["x-forwarded-user"], json!(["user-1"]));
    }
    // Keys were fetched once and cached.
    assert_eq!(a.fetches(), 1);

    // `aud` as an array containing the resource; scopes in `scp`; `Bearer` any case.
    let c = with(claims(&a), "aud", json!(["other", RESOURCE]));
    let c = with(c, "scope", Value::Null);
    let c = with(c, "scp", json!(["mcp"]));
    let auth = format!("bearer {}", es.sign(&c));
    let r = send(g.addr, "GET", "/mcp", &[("authorization", &auth)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Within the leeway (30 s by default), an expired token still passes.
    let c = with(claims(&a), "exp", json!(now() - 10));
    assert_eq!(call(&g, &es.sign(&c)).await.status, 200);
    // A kid-less token is matched to the only key of its type.
    let r = call(&g, &es.sign_as(None, &claims(&a))).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn every_rejection() {
    let up = echo_upstream().await;
    let es = SigningKey::es256("ec-1");
    let rs = SigningKey::rs256("rsa-1");
    let stranger = SigningKey::es256("ec-1");
    let a = AuthServer::start(&[&es, &rs]).await;
    let g = gateway(&yaml(up, &base_config(&a), "")).await;
    let good = claims(&a);

    let cases: Vec<(String, &str)> = vec![
        (
            es.sign(&with(good.clone(), "exp", json!(now() - 120))),
            "expired",
        ),
        (
            es.sign(&with(good.clone(), "nbf", json!(now() + 120))),
            "not valid yet",
        ),
        (
            es.sign(&with(
                good.clone(),
                "iss",
                json!("https://evil.example/auth/v1"),
            )),
            "another issuer",
        ),
        (
            es.sign(&with(
                good.clone(),
                "iss",
                json!(format!("{}/", a.issuer())),
            )),
            "another issuer",
        ),
        (
            es.sign(&with(good.clone(), "aud", json!("authenticated"))),
            "not meant for this resource",
        ),
        (
            es.sign(&with(good.clone(), "aud", json!(["a", "b"]))),
            "not meant for this resource",
        ),
        (es.sign(&with(good.clone(), "exp", Value::Null)), "no exp"),
        (es.sign(&with(good.clone(), "sub", Value::Null)), "no sub"),
        (es.sign(&with(good.clone(), "aud", Value::Null)), "no aud"),
        (es.sign(&with(good.clone(), "iss", Value::Null)), "no iss"),
        // Same kid, another key: the signature fails.
        (stranger.sign(&good), "signature"),
        // An RSA key named for an EC token: refused before any crypto.
        (es.sign_as(Some("rsa-1"), &good), "not for algorithm"),
        (unsigned("ec-1", &good), "not accepted"),
        (hs256("ec-1", b"secret", &good), "not accepted"),
        ("not-a-jwt".to_string(), "malformed"),
        ("a.b.c".to_string(), "malformed"),
        ("a.b.c.d".to_string(), "malformed"),
    ];
    for (token, why) in &cases {
        let r = call(&g, token).await;
        assert_invalid(&r, why);
    }

    // Missing scope: 403 insufficient_scope naming what the operation needs.
    let r = call(&g, &es.sign(&with(good.clone(), "scope", json!("openid")))).await;
    assert_eq!(r.status, 403);
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with(&format!(
            "Bearer error=\"insufficient_scope\", scope=\"mcp\", resource_metadata=\"{METADATA}\""
        )),
        "{www}"
    );
    assert_eq!(r.json()["error"], "insufficient_scope");

    // An unknown kid triggers one refresh, then 401.
    let fetched = a.fetches();
    let r = call(&g, &es.sign_as(Some("nope"), &good)).await;
    assert_invalid(&r, "unknown");
    assert!(a.fetches() <= fetched + 1);
}

#[tokio::test]
async fn key_rotation_and_bounded_refresh() {
    let up = echo_upstream().await;
    let old = SigningKey::es256("2026-old");
    let new = SigningKey::rs256("2026-new");
    let a = AuthServer::start(&[&old]).await;
    let g = gateway(&yaml(up, &base_config(&a), "")).await;
    let c = claims(&a);

    assert_eq!(call(&g, &old.sign(&c)).await.status, 200);
    assert_eq!(a.fetches(), 1);

    // The server rotates: only the new key is published.
    a.set_keys(&[&new]);
    // Past the minimum refresh interval (1 s), a token with the new kid refreshes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = call(&g, &new.sign(&c)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.fetches(), 2);
    // Tokens signed with the old key just before the rotation still pass.
    assert_eq!(call(&g, &old.sign(&c)).await.status, 200);

    // Made-up kids cannot make the gateway hammer the server: within the interval,
    // no fetch at all.
    for i in 0..5 {
        let r = call(&g, &new.sign_as(Some(&format!("bogus-{i}")), &c)).await;
        assert_invalid(&r, "unknown");
    }
    assert_eq!(a.fetches(), 2);
    // After it, one fetch for a burst of concurrent unknown-kid requests.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bogus = new.sign_as(Some("bogus"), &c);
    let calls: Vec<_> = (0..8).map(|_| call(&g, &bogus)).collect();
    for r in futures_util::future::join_all(calls).await {
        assert_invalid(&r, "unknown");
    }
    assert_eq!(a.fetches(), 3);
    // Both keys still work.
    assert_eq!(call(&g, &new.sign(&c)).await.status, 200);
    assert_eq!(call(&g, &old.sign(&c)).await.status, 200);
}

#[tokio::test]
async fn discovery_and_unavailable_keys() {
    let up = echo_upstream().await;
    let key = SigningKey::es256("k1");
    let a = AuthServer::start(&[&key]).await;

    // No jwks_uri: the RFC 8414 document of the issuer names it (path insertion).
    let cfg = format!(
        "          resource: {RESOURCE}\n          issuer: {}\n",
        a.issuer()
    );
    let g = gateway(&yaml(up, &cfg, "")).await;
    let r = call(&g, &key.sign(&claims(&a))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.fetches(), 1);

    // Metadata of another issuer is not trusted (RFC 8414 §3.3): no keys, 503.
    let b = AuthServer::start(&[&key]).await;
    b.set_metadata_issuer("https://elsewhere.example/auth/v1");
    let cfg = format!(
        "          resource: {RESOURCE}\n          issuer: {}\n          jwks_min_refresh_interval: 5\n",
        b.issuer()
    );
    let g = gateway(&yaml(up, &cfg, "")).await;
    let r = call(&g, &key.sign(&claims(&b))).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after").unwrap(), "5");
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(b.fetches(), 0);

    // An unreachable JWKS: 503, and the rate limit holds (no retry storm).
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let cfg = format!(
        "          resource: {RESOURCE}\n          issuer: {}\n          jwks_uri: http://{dead_addr}/jwks\n",
        a.issuer()
    );
    let g = gateway(&yaml(up, &cfg, "")).await;
    for _ in 0..3 {
        let r = call(&g, &key.sign(&claims(&a))).await;
        assert_eq!(r.status, 503);
    }
}

#[tokio::test]
async fn supabase_audience_and_client_checks() {
    let up = echo_upstream().await;
    let key = SigningKey::es256("k1");
    let a = AuthServer::start(&[&key]).await;
    // GoTrue puts aud=authenticated, not the resource: accept that audience, but only
    // for tokens its OAuth server minted (client_id present), from listed clients.
    let cfg = format!(
        "          resource: {RESOURCE}\n          issuer: {}\n          jwks_uri: {}\n          audiences: [authenticated]\n          require_client_id: true\n          allowed_client_ids: [client-1]\n          required_scopes: [email]\n",
        a.issuer(),
        a.jwks_uri()
    );
    let g = gateway(&yaml(up, &cfg, "")).await;
    let c = json!({
        "iss": a.issuer(), "sub": "u", "aud": "authenticated", "exp": now() + 60,
        "scope": "email", "client_id": "client-1", "role": "authenticated",
    });
    assert_eq!(call(&g, &key.sign(&c)).await.status, 200);
    // A session JWT of the dashboard: same issuer and audience, no client_id.
    assert_invalid(
        &call(&g, &key.sign(&with(c.clone(), "client_id", Value::Null))).await,
        "no client_id",
    );
    assert_invalid(
        &call(
            &g,
            &key.sign(&with(c.clone(), "client_id", json!("client-2"))),
        )
        .await,
        "client this resource does not accept",
    );
    // The resource URL itself is no longer an accepted audience here.
    assert_invalid(
        &call(&g, &key.sign(&with(c.clone(), "aud", json!(RESOURCE)))).await,
        "not meant",
    );
}

#[tokio::test]
async fn preflights_pass_to_cors() {
    let up = echo_upstream().await;
    let key = SigningKey::es256("k1");
    let a = AuthServer::start(&[&key]).await;
    let cors = "      - name: cors\n        config:\n          origins: [\"https://app.example\"]\n          exposed_headers: [Mcp-Session-Id, WWW-Authenticate]\n";
    let g = gateway(&yaml(up, &base_config(&a), cors)).await;
    let r = send(
        g.addr,
        "OPTIONS",
        "/mcp",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, mcp-protocol-version",
            ),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    // The browser can read the challenge of an actual request.
    let r = send(
        g.addr,
        "POST",
        "/mcp",
        &[("origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("WWW-Authenticate")
    );
}

#[tokio::test]
async fn config_errors() {
    let cases = [
        (
            "          issuer: https://a.example/auth/v1\n",
            "config.resource: required field missing",
        ),
        (
            "          resource: https://a.example/mcp#frag\n          issuer: https://a.example/auth/v1\n",
            "fragment",
        ),
        (
            "          resource: https://a.example/mcp\n          issuer: https://a.example/auth/v1\n          algorithms: [RS256, HS256]\n",
            "'HS256' is refused",
        ),
        (
            "          resource: https://a.example/mcp\n          issuer: https://a.example/auth/v1\n          algorithms: [none]\n",
            "'none' is refused",
        ),
        (
            "          resource: https://a.example/mcp\n          issuer: https://a.example/auth/v1\n          jwks_uri: http://k/jwks\n          discovery_url: http://k/meta\n",
            "not both",
        ),
        (
            "          resource: https://a.example/mcp\n          issuer: https://a.example/auth/v1\n          leeway: 3600\n",
            "leeway",
        ),
        (
            "          resource: https://a.example/mcp\n          issuer: https://a.example/auth/v1\n          bogus: 1\n",
            "unknown field 'bogus'",
        ),
    ];
    for (cfg, want) in cases {
        let y = yaml("127.0.0.1:1".parse().unwrap(), cfg, "");
        let errs = portcullis::config::load_config("t.yml", &y)
            .unwrap_err()
            .to_string();
        assert!(errs.contains(want), "want '{want}' in: {errs}");
        assert!(errs.contains("plugin 'oauth2-resource'.config"), "{errs}");
    }
    let bad_origin = "_format_version: '3.0'\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    routes:\n      - paths: [/x]\n    plugins:\n      - name: mcp-origin\n        config:\n          allowed_origins: ['*', 'app.example', 'https://ok.example']\n";
    let errs = portcullis::config::load_config("t.yml", bad_origin)
        .unwrap_err()
        .to_string();
    assert!(errs.contains("'*' would switch the check off"), "{errs}");
    assert!(errs.contains("'app.example'"), "{errs}");
}

// ---------------------------------------------------------------- mcp-origin

#[tokio::test]
async fn origin_check_runs_first() {
    let up = echo_upstream().await;
    let key = SigningKey::es256("k1");
    let a = AuthServer::start(&[&key]).await;
    let extra = "      - name: mcp-origin\n        config:\n          allowed_origins: [\"https://app.example\", \"http://localhost:*\"]\n      - name: cors\n      - name: ip-restriction\n        config:\n          allow: [127.0.0.1]\n";
    let g = gateway(&yaml(up, &base_config(&a), extra)).await;
    let token = key.sign(&claims(&a));
    let auth = format!("Bearer {token}");

    // No Origin (CLI and desktop clients): on to the token check.
    assert_eq!(call(&g, &token).await.status, 200);
    // Allowed origins, any port for localhost.
    for origin in [
        "https://app.example",
        "http://localhost:6274",
        "HTTP://LOCALHOST:1",
    ] {
        let r = send(
            g.addr,
            "POST",
            "/mcp",
            &[("origin", origin), ("authorization", &auth)],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{origin}");
    }
    // Anything else: 403 before cors, the token check or ip-restriction — a preflight
    // and a request without a token alike.
    for (method, headers) in [
        ("POST", vec![("origin", "https://evil.example")]),
        (
            "POST",
            vec![("origin", "https://evil.example"), ("authorization", &auth)],
        ),
        (
            "OPTIONS",
            vec![
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        ),
        ("GET", vec![("origin", "null")]),
        ("DELETE", vec![("origin", "https://app.example.evil")]),
        (
            "POST",
            vec![
                ("origin", "https://app.example"),
                ("origin", "https://evil.example"),
            ],
        ),
    ] {
        let r = send(g.addr, method, "/mcp", &headers, b"").await;
        assert_eq!(r.status, 403, "{method} {headers:?}");
        assert_eq!(r.json()["message"], "Origin not allowed");
        assert!(r.header("www-authenticate").is_none());
    }
    // Nothing was fetched for the refused requests beyond the first good one.
    assert_eq!(a.fetches(), 1);
}

// ---------------------------------------------------------------- the Supabase example

/// deploy/mcp-oauth.yml as shipped, with the compose host names pointed at loopback
/// stubs and the two environment values filled in.
#[tokio::test]
async fn supabase_example_config_works_without_apikey() {
    let auth = echo_upstream().await; // stands for auth:9999
    let studio = echo_upstream().await; // stands for studio:3000
    let key = SigningKey::es256("gotrue-es256");
    let keys = AuthServer::start(&[&key]).await;
    let issuer = "https://supabase.example.com/auth/v1";
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mcp-oauth.yml"))
            .unwrap()
            .replace(
                "jwks_uri: http://auth:9999/.well-known/jwks.json",
                &format!("jwks_uri: {}", keys.jwks_uri()),
            )
            .replace("http://auth:9999", &format!("http://{auth}"))
            .replace("http://studio:3000", &format!("http://{studio}"))
            .replace("$JWT_ISSUER", issuer)
            .replace("${SUPABASE_PUBLIC_URL}", "https://supabase.example.com");
    let g = gateway(&text).await;

    // What an MCP client reaches before it has a token: no apikey anywhere.
    for (method, path, upstream) in [
        (
            "GET",
            "/.well-known/oauth-authorization-server/auth/v1",
            "/.well-known/oauth-authorization-server",
        ),
        (
            "GET",
            "/auth/v1/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server",
        ),
        (
            "GET",
            "/.well-known/openid-configuration/auth/v1",
            "/.well-known/openid-configuration",
        ),
        (
            "GET",
            "/auth/v1/.well-known/openid-configuration",
            "/.well-known/openid-configuration",
        ),
        (
            "GET",
            "/auth/v1/.well-known/jwks.json",
            "/.well-known/jwks.json",
        ),
        (
            "POST",
            "/auth/v1/oauth/clients/register",
            "/oauth/clients/register",
        ),
        (
            "GET",
            "/auth/v1/oauth/authorize?response_type=code&client_id=c&code_challenge=x&code_challenge_method=S256&resource=https%3A%2F%2Fsupabase.example.com%2Fmcp",
            "/oauth/authorize?response_type=code&client_id=c&code_challenge=x&code_challenge_method=S256&resource=https%3A%2F%2Fsupabase.example.com%2Fmcp",
        ),
        ("POST", "/auth/v1/oauth/token", "/oauth/token"),
    ] {
        let r = send(g.addr, method, path, &[], b"").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["path"], upstream, "{path}");
    }

    let r = get(g.addr, "/.well-known/oauth-protected-resource/mcp").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["resource"], "https://supabase.example.com/mcp");
    assert_eq!(r.json()["authorization_servers"], json!([issuer]));

    let r = send(g.addr, "POST", "/mcp", &[], b"{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Bearer resource_metadata=\"https://supabase.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"email\""
    );

    // A GoTrue OAuth access token: aud "authenticated", client_id, scope.
    let token = key.sign(&json!({
        "iss": issuer, "sub": "0b6c…user", "aud": "authenticated", "exp": now() + 3600,
        "iat": now(), "role": "authenticated", "aal": "aal1", "session_id": "s",
        "client_id": "9a1f…client", "scope": "email",
    }));
    let auth_header = format!("Bearer {token}");
    let r = send(
        g.addr,
        "POST",
        "/mcp?features=docs,database&read_only=true",
        &[("authorization", &auth_header)],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["path"], "/api/mcp?features=docs,database&read_only=true");
    assert!(j["headers"]["authorization"].is_null());
    assert_eq!(j["headers"]["x-forwarded-user"], json!(["0b6c…user"]));
    // A dashboard session token (no client_id) is refused; /api/mcp stays closed.
    let session = key.sign(&json!({
        "iss": issuer, "sub": "u", "aud": "authenticated", "exp": now() + 3600,
        "role": "authenticated", "scope": "email",
    }));
    let r = call(&g, &session).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("no client_id")
    );
    assert_eq!(
        send(g.addr, "POST", "/api/mcp", &[], b"{}").await.status,
        403
    );
}
