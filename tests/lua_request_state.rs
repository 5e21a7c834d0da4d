//! Lua's per-request tables (`kong.ctx.shared`, `ngx.ctx`) belong to the request: a
//! request whose access phase waits (oauth2-resource fetching signing keys) while
//! others run Lua on the same thread finds its own tables when it resumes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod jwt_support;

use common::*;
use jwt_support::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const RESOURCE: &str = "https://api.example.test/mcp";

#[tokio::test]
async fn per_request_tables_survive_an_await_while_other_requests_run_lua() {
    let key = SigningKey::es256("k1");
    let jwk = key.jwk.clone();
    // A slow JWKS: every request below waits for it between pre- and post-function.
    let fetches = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&fetches);
    let jwks = serve_upstream(move |_req| {
        let jwk = jwk.clone();
        let f = Arc::clone(&f);
        async move {
            f.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(600)).await;
            http::Response::builder()
                .header("content-type", "application/json")
                .body(portcullis::body::full(json!({ "keys": [jwk] }).to_string()))
                .unwrap()
        }
    })
    .await;
    let up = echo_upstream().await;
    let issuer = "https://issuer.example.test";
    let yaml = format!(
        r#"_format_version: "3.0"
services:
  - name: api
    url: http://{up}/
    routes:
      - name: api
        paths: [/api]
    plugins:
      - name: pre-function
        config:
          access:
            - |
              local who = kong.request.get_header("x-who")
              kong.ctx.shared.who = who
              ngx.ctx.who = who
      - name: oauth2-resource
        config:
          resource: {RESOURCE}
          issuer: {issuer}
          jwks_uri: http://{jwks}/jwks
      - name: post-function
        config:
          access:
            - |
              kong.service.request.set_header("x-shared-who", kong.ctx.shared.who or "lost")
              kong.service.request.set_header("x-ngx-who", ngx.ctx.who or "lost")
"#
    );
    let g = gateway(&yaml).await;
    let token = key.sign(&json!({
        "iss": issuer,
        "sub": "user-1",
        "aud": RESOURCE,
        "exp": now() + 300,
        "iat": now(),
    }));
    let auth = format!("Bearer {token}");
    // Eight requests at once, each naming itself: all run pre-function, then wait for
    // the keys together, then resume one after another on this one thread.
    let calls = (0..8).map(|i| {
        let auth = auth.clone();
        let addr = g.addr;
        async move {
            let who = format!("client-{i}");
            let r = send(
                addr,
                "GET",
                "/api",
                &[("authorization", &auth), ("x-who", &who)],
                b"",
            )
            .await;
            (who, r)
        }
    });
    for (who, r) in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{who}: {}", r.text());
        let j = r.json();
        assert_eq!(echoed(&j, "x-shared-who").as_deref(), Some(who.as_str()));
        assert_eq!(echoed(&j, "x-ngx-who").as_deref(), Some(who.as_str()));
    }
    assert!(fetches.load(Ordering::SeqCst) >= 1);
    // Afterwards (keys cached, no wait), each request still starts with empty tables.
    let r = send(g.addr, "GET", "/api", &[("authorization", &auth)], b"").await;
    let j = r.json();
    assert_eq!(echoed(&j, "x-shared-who").as_deref(), Some("lost"));
    assert_eq!(echoed(&j, "x-ngx-who").as_deref(), Some("lost"));
}
