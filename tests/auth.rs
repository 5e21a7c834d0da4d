//! Consumers and auth plugins, black box: key-auth, basic-auth, acl, consumer headers,
//! anonymous consumers, AND/OR of several auth plugins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use base64::Engine;
use common::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Consumers shared by the tests: alice (key + nested acl), bob (key by top-level
/// credential + top-level acl), carol (basic auth), anon (no credentials).
fn consumers() -> &'static str {
    r#"consumers:
  - username: alice
    custom_id: a-1
    keyauth_credentials:
      - key: alice-key
    acls:
      - group: admin
  - username: bob
  - username: carol
    basicauth_credentials:
      - username: carol
        password: "p:ss:word"
  - username: anon
  - username: empty
    keyauth_credentials:
      - key: ""
keyauth_credentials:
  - consumer: bob
    key: bob-key
acls:
  - consumer: bob
    group: users
  - consumer: anon
    group: guests
"#
}

async fn auth_gateway(services: &str) -> TestGateway {
    let yaml = format!(
        "_format_version: \"3.0\"\n{}services:\n{services}",
        consumers()
    );
    gateway(&yaml).await
}

fn svc_with(name: &str, up: std::net::SocketAddr, path: &str, plugins: &str) -> String {
    format!(
        "  - name: {name}\n    url: http://{up}/\n    routes:\n      - paths: [{path}]\n    plugins:\n{plugins}"
    )
}

#[tokio::test]
async fn key_auth_rules() {
    let up = echo_upstream().await;
    let g = auth_gateway(&svc_with("k", up, "/k", "      - name: key-auth\n")).await;

    // Missing key.
    let r = get(g.addr, "/k").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "No API key found in request");
    assert_eq!(r.header("www-authenticate").unwrap(), "Key");
    // Empty key in a header and in the query.
    let r = send(g.addr, "GET", "/k", &[("apikey", "")], b"").await;
    assert_eq!(r.json()["message"], "No API key found in request");
    assert_eq!(
        get(g.addr, "/k?apikey=").await.json()["message"],
        "No API key found in request"
    );
    assert_eq!(
        get(g.addr, "/k?apikey").await.json()["message"],
        "No API key found in request"
    );
    // The credential whose key was left empty is never a valid empty key.
    assert_eq!(get(g.addr, "/k?apikey=").await.status, 401);
    // Unknown key.
    let r = send(g.addr, "GET", "/k", &[("apikey", "nope")], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Unauthorized");
    assert_eq!(r.header("www-authenticate").unwrap(), "Key");
    // Duplicate key.
    let r = send(
        g.addr,
        "GET",
        "/k",
        &[("apikey", "alice-key"), ("apikey", "bob-key")],
        b"",
    )
    .await;
    assert_eq!(r.json()["message"], "Duplicate API key found");
    let r = get(g.addr, "/k?apikey=alice-key&apikey=alice-key").await;
    assert_eq!(r.json()["message"], "Duplicate API key found");
    // Header and query.
    let r = send(g.addr, "GET", "/k", &[("apikey", "alice-key")], b"").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(echoed(&j, "x-consumer-username").unwrap(), "alice");
    assert_eq!(echoed(&j, "x-consumer-custom-id").unwrap(), "a-1");
    assert_eq!(echoed(&j, "x-consumer-id").unwrap().len(), 36);
    assert_eq!(echoed(&j, "x-credential-identifier").unwrap().len(), 36);
    assert!(echoed(&j, "x-anonymous-consumer").is_none());
    // Not hidden by default.
    assert_eq!(echoed(&j, "apikey").unwrap(), "alice-key");
    let r = get(g.addr, "/k?apikey=bob-key").await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json(), "x-consumer-username").unwrap(), "bob");
    // An URL-encoded key in the query is decoded.
    let r = get(g.addr, "/k?apikey=alice%2Dkey").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn key_auth_options() {
    let up = echo_upstream().await;
    let g = auth_gateway(&format!(
        "{}{}{}",
        svc_with(
            "hide",
            up,
            "/hide",
            "      - name: key-auth\n        config:\n          hide_credentials: true\n          key_names: [api_key, apikey]\n          realm: supabase\n"
        ),
        svc_with(
            "body",
            up,
            "/body",
            "      - name: key-auth\n        config:\n          key_in_body: true\n          key_in_header: false\n          key_in_query: false\n          hide_credentials: true\n"
        ),
        svc_with(
            "preflight",
            up,
            "/preflight",
            "      - name: key-auth\n        config:\n          run_on_preflight: false\n"
        ),
    ))
    .await;
    // `_` and `-` are interchangeable in header names.
    let r = send(g.addr, "GET", "/hide", &[("api-key", "alice-key")], b"").await;
    assert_eq!(r.status, 200);
    assert!(echoed(&r.json(), "api-key").is_none());
    // hide_credentials keeps the other query arguments in order, byte for byte.
    let r = get(g.addr, "/hide?c=1&api_key=alice-key&a=%2F3").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/?c=1&a=%2F3");
    // realm.
    let r = get(g.addr, "/hide").await;
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Key realm=\"supabase\""
    );
    // Key in a form body and in a JSON body, removed before proxying.
    let r = send(
        g.addr,
        "POST",
        "/body",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"x=1&apikey=bob-key&y=2",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], "x=1&y=2".len());
    let r = send(
        g.addr,
        "POST",
        "/body",
        &[("content-type", "application/json")],
        br#"{"apikey":"alice-key","x":1}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], r#"{"x":1}"#.len());
    let r = send(g.addr, "GET", "/body", &[("apikey", "alice-key")], b"").await;
    assert_eq!(r.status, 401);
    // run_on_preflight=false: any OPTIONS passes without a key.
    let r = send(g.addr, "OPTIONS", "/preflight", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(get(g.addr, "/preflight").await.status, 401);
}

#[tokio::test]
async fn consumer_headers_cannot_be_spoofed() {
    let up = echo_upstream().await;
    let g = auth_gateway(&svc_with("k", up, "/k", "      - name: key-auth\n")).await;
    let r = send(
        g.addr,
        "GET",
        "/k",
        &[
            ("apikey", "bob-key"),
            ("x-consumer-custom-id", "spoofed"),
            ("x-consumer-username", "admin"),
            ("x-anonymous-consumer", "true"),
        ],
        b"",
    )
    .await;
    let j = r.json();
    assert_eq!(echoed(&j, "x-consumer-username").unwrap(), "bob");
    // bob has no custom_id: the client's value is cleared, not passed on.
    assert!(echoed(&j, "x-consumer-custom-id").is_none());
    assert!(echoed(&j, "x-anonymous-consumer").is_none());
}

#[tokio::test]
async fn anonymous_consumers() {
    let up = echo_upstream().await;
    let g = auth_gateway(&format!(
        "{}{}",
        svc_with(
            "anon",
            up,
            "/anon",
            "      - name: key-auth\n        config:\n          anonymous: anon\n"
        ),
        svc_with(
            "ghost",
            up,
            "/ghost",
            "      - name: key-auth\n        config:\n          anonymous: ghost\n"
        ),
    ))
    .await;
    let r = send(
        g.addr,
        "GET",
        "/anon",
        &[("x-credential-identifier", "spoof")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(echoed(&j, "x-consumer-username").unwrap(), "anon");
    assert_eq!(echoed(&j, "x-anonymous-consumer").unwrap(), "true");
    assert!(echoed(&j, "x-credential-identifier").is_none());
    // Invalid keys fall back to anonymous too.
    let r = send(g.addr, "GET", "/anon", &[("apikey", "wrong")], b"").await;
    assert_eq!(echoed(&r.json(), "x-consumer-username").unwrap(), "anon");
    // A valid key still identifies its consumer.
    let r = send(g.addr, "GET", "/anon", &[("apikey", "alice-key")], b"").await;
    assert_eq!(echoed(&r.json(), "x-consumer-username").unwrap(), "alice");
    // An anonymous consumer that does not exist is a 500.
    let r = get(g.addr, "/ghost").await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["message"],
        "anonymous consumer ghost is configured but doesn't exist"
    );
}

#[tokio::test]
async fn basic_auth_rules() {
    let up = echo_upstream().await;
    let g = auth_gateway(&format!(
        "{}{}",
        svc_with("b", up, "/b", "      - name: basic-auth\n"),
        svc_with("hide", up, "/hide", "      - name: basic-auth\n        config:\n          hide_credentials: true\n          realm: kong\n"),
    ))
    .await;
    let r = get(g.addr, "/b").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Unauthorized");
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Basic realm=\"service\""
    );
    // The password contains ':' (split at the first one).
    let good = format!("Basic {}", b64("carol:p:ss:word"));
    let r = send(g.addr, "GET", "/b", &[("authorization", &good)], b"").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(echoed(&j, "x-consumer-username").unwrap(), "carol");
    assert_eq!(echoed(&j, "x-credential-identifier").unwrap(), "carol");
    assert_eq!(echoed(&j, "authorization").unwrap(), good);
    // Lower-case scheme and Proxy-Authorization.
    let r = send(
        g.addr,
        "GET",
        "/b",
        &[(
            "proxy-authorization",
            &format!("basic {}", b64("carol:p:ss:word")),
        )],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    // Wrong password, unknown user, bad base64, no password separator.
    for bad in [
        format!("Basic {}", b64("carol:nope")),
        format!("Basic {}", b64("dave:p:ss:word")),
        "Basic !!!not-base64".to_string(),
        format!("Basic {}", b64("carol")),
        "Bearer abc".to_string(),
    ] {
        let r = send(g.addr, "GET", "/b", &[("authorization", &bad)], b"").await;
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(
            r.header("www-authenticate").unwrap(),
            "Basic realm=\"service\""
        );
    }
    // hide_credentials removes the header it used; realm.
    let r = send(g.addr, "GET", "/hide", &[("authorization", &good)], b"").await;
    assert_eq!(r.status, 200);
    assert!(echoed(&r.json(), "authorization").is_none());
    assert_eq!(
        get(g.addr, "/hide")
            .await
            .header("www-authenticate")
            .unwrap(),
        "Basic realm=\"kong\""
    );
}

#[tokio::test]
async fn basic_auth_with_pre_hashed_passwords() {
    // `_transform: false`: passwords are stored as Kong exports them,
    // sha1(password .. consumer_id).
    let up = echo_upstream().await;
    let id = "2f0a1c3e-0000-4000-8000-000000000001";
    let hash = portcullis::consumers::basic_hash("secret", id);
    let yaml = format!(
        "_format_version: \"3.0\"\n_transform: false\nconsumers:\n  - id: {id}\n    username: u\n    basicauth_credentials:\n      - username: u\n        password: {hash}\nservices:\n{}",
        svc_with("b", up, "/", "      - name: basic-auth\n")
    );
    let g = gateway(&yaml).await;
    let r = send(
        g.addr,
        "GET",
        "/",
        &[("authorization", &format!("Basic {}", b64("u:secret")))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json(), "x-consumer-id").unwrap(), id);
}

#[tokio::test]
async fn acl_allow_and_deny() {
    let up = echo_upstream().await;
    let g = auth_gateway(&format!(
        "{}{}{}",
        svc_with("admin", up, "/admin", "      - name: key-auth\n      - name: acl\n        config:\n          allow: [admin]\n"),
        svc_with("nousers", up, "/nousers", "      - name: key-auth\n      - name: acl\n        config:\n          deny: [users]\n          hide_groups_header: true\n"),
        svc_with("guests", up, "/guests", "      - name: key-auth\n        config:\n          anonymous: anon\n      - name: acl\n        config:\n          allow: [admin, guests]\n"),
    ))
    .await;
    // alice's group comes from a nested acl, bob's from a top-level one.
    let r = send(g.addr, "GET", "/admin", &[("apikey", "alice-key")], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json(), "x-consumer-groups").unwrap(), "admin");
    let r = send(g.addr, "GET", "/admin", &[("apikey", "bob-key")], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "You cannot consume this service");
    let r = send(g.addr, "GET", "/nousers", &[("apikey", "bob-key")], b"").await;
    assert_eq!(r.status, 403);
    let r = send(
        g.addr,
        "GET",
        "/nousers",
        &[("apikey", "alice-key"), ("x-consumer-groups", "spoof")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(echoed(&r.json(), "x-consumer-groups").is_none());
    // The anonymous consumer's groups count too.
    let r = get(g.addr, "/guests").await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json(), "x-consumer-groups").unwrap(), "guests");
    let r = send(g.addr, "GET", "/guests", &[("apikey", "bob-key")], b"").await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn acl_without_a_consumer_is_401() {
    let up = echo_upstream().await;
    let g = auth_gateway(&svc_with(
        "a",
        up,
        "/a",
        "      - name: acl\n        config:\n          allow: [admin]\n",
    ))
    .await;
    let r = get(g.addr, "/a").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Unauthorized");
}

#[tokio::test]
async fn several_auth_plugins_and_or() {
    let up = echo_upstream().await;
    let basic = format!("Basic {}", b64("carol:p:ss:word"));
    // Without anonymous: both must pass (AND).
    let g = auth_gateway(&format!(
        "{}{}",
        svc_with("and", up, "/and", "      - name: key-auth\n      - name: basic-auth\n"),
        svc_with(
            "or",
            up,
            "/or",
            "      - name: key-auth\n        config:\n          anonymous: anon\n      - name: basic-auth\n        config:\n          anonymous: anon\n"
        ),
    ))
    .await;
    assert_eq!(
        send(g.addr, "GET", "/and", &[("apikey", "alice-key")], b"")
            .await
            .status,
        401
    );
    assert_eq!(
        send(g.addr, "GET", "/and", &[("authorization", &basic)], b"")
            .await
            .status,
        401
    );
    let r = send(
        g.addr,
        "GET",
        "/and",
        &[("apikey", "alice-key"), ("authorization", &basic)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    // The later plugin's consumer is the one sent upstream, as in Kong.
    assert_eq!(echoed(&r.json(), "x-consumer-username").unwrap(), "carol");
    // With anonymous on both: either passes (OR); neither gives the anonymous consumer.
    let r = send(g.addr, "GET", "/or", &[("apikey", "alice-key")], b"").await;
    assert_eq!(echoed(&r.json(), "x-consumer-username").unwrap(), "alice");
    let r = send(g.addr, "GET", "/or", &[("authorization", &basic)], b"").await;
    assert_eq!(echoed(&r.json(), "x-consumer-username").unwrap(), "carol");
    let r = get(g.addr, "/or").await;
    assert_eq!(echoed(&r.json(), "x-consumer-username").unwrap(), "anon");
    assert_eq!(echoed(&r.json(), "x-anonymous-consumer").unwrap(), "true");
}

#[tokio::test]
async fn consumer_scoped_plugins_apply_after_authentication() {
    let up = echo_upstream().await;
    let yaml = format!(
        "_format_version: \"3.0\"\n{}plugins:\n  - name: request-termination\n    consumer: bob\n    config:\n      status_code: 429\n      message: bob is blocked\nservices:\n{}",
        consumers(),
        svc_with("k", up, "/k", "      - name: key-auth\n")
    );
    let g = gateway(&yaml).await;
    assert_eq!(
        send(g.addr, "GET", "/k", &[("apikey", "alice-key")], b"")
            .await
            .status,
        200
    );
    let r = send(g.addr, "GET", "/k", &[("apikey", "bob-key")], b"").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["message"], "bob is blocked");
}

#[tokio::test]
async fn auth_config_errors() {
    let bad = r#"_format_version: "3.0"
consumers:
  - username: a
keyauth_credentials:
  - consumer: nobody
    key: k
plugins:
  - name: acl
    config:
      allow: [x]
      deny: [y]
  - name: key-auth
    consumer: a
  - name: key-auth
    config:
      key_names: ["bad name"]
"#;
    let errs = portcullis::config::load_config("t.yml", bad)
        .unwrap_err()
        .to_string();
    assert!(
        errs.contains(
            "t.yml:5:15: invalid reference 'consumer: nobody' (no such entry in 'consumers')"
        ),
        "{errs}"
    );
    assert!(
        errs.contains(
            "exactly one of these fields must be non-empty: 'config.allow', 'config.deny'"
        ),
        "{errs}"
    );
    assert!(
        errs.contains("plugin 'key-auth': cannot be applied to a consumer"),
        "{errs}"
    );
    assert!(errs.contains("'bad name' is illegal"), "{errs}");
}
