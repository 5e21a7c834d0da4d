//! request-transformer, pre-function and post-function, black box: a real gateway,
//! a real upstream that echoes what it got (body included), Supabase's own kong.yml.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn cfg(body: &str) -> String {
    format!("_format_version: \"3.0\"\nservices:\n{body}")
}

/// An upstream echoing {"method","path","headers":{name:[values]},"body"}.
async fn body_echo() -> SocketAddr {
    serve_upstream(|req: Request<Incoming>| async move {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let mut headers = serde_json::Map::new();
        for (k, v) in req.headers() {
            let e = headers
                .entry(k.as_str().to_string())
                .or_insert_with(|| serde_json::Value::Array(vec![]));
            if let serde_json::Value::Array(a) = e {
                a.push(String::from_utf8_lossy(v.as_bytes()).into_owned().into());
            }
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let doc = serde_json::json!({
            "method": method,
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(portcullis::body::full(doc.to_string()))
            .unwrap()
    })
    .await
}

/// A service with one route and a plugins block (YAML already indented by 6).
fn route(name: &str, up: SocketAddr, paths: &str, plugins: &str) -> String {
    format!(
        "  - name: {name}\n    url: http://{up}/\n    routes:\n      - paths: [{paths}]\n        strip_path: true\n    plugins:\n{plugins}"
    )
}

fn all(j: &serde_json::Value, name: &str) -> Vec<String> {
    j["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ headers

#[tokio::test]
async fn header_operations_in_kong_order() {
    let up = body_echo().await;
    let plugins = r#"      - name: request-transformer
        config:
          remove:
            headers: [x-remove, X-Both]
          rename:
            headers: ["x-old:x-new", "x-missing:x-never"]
          replace:
            headers: ["X-Rep:replaced", "x-absent:nope", "x-new:renamed-then-replaced"]
          add:
            headers: ["x-add:added", "x-rep:not-added", "x-both:re-added", "x-colon:a:b", "x-space: v", "x-nil:$(nil)", "x-empty:"]
          append:
            headers: ["x-app:second", "x-add:appended"]
"#;
    let g = gateway(&cfg(&route("h", up, "/h", plugins))).await;
    let r = send(
        g.addr,
        "GET",
        "/h",
        &[
            ("x-remove", "1"),
            ("x-both", "orig"),
            ("x-old", "o"),
            ("x-rep", "r"),
            ("x-app", "first"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert!(all(&j, "x-remove").is_empty());
    // remove runs before add: the header comes back with the added value.
    assert_eq!(all(&j, "x-both"), ["re-added"]);
    // rename runs before replace.
    assert!(all(&j, "x-old").is_empty());
    assert_eq!(all(&j, "x-new"), ["renamed-then-replaced"]);
    assert!(all(&j, "x-never").is_empty());
    // replace only what is present (names are case-insensitive); add only what is absent.
    assert_eq!(all(&j, "x-rep"), ["replaced"]);
    assert!(all(&j, "x-absent").is_empty());
    // add then append: another value.
    assert_eq!(all(&j, "x-add"), ["added", "appended"]);
    assert_eq!(all(&j, "x-app"), ["first", "second"]);
    // Split at the first ':'; the value's leading space is only HTTP whitespace.
    assert_eq!(all(&j, "x-colon"), ["a:b"]);
    assert_eq!(all(&j, "x-space"), ["v"]);
    // A nil template gives an empty header; an empty config value adds nothing.
    assert_eq!(all(&j, "x-nil"), [""]);
    assert!(all(&j, "x-empty").is_empty());
}

#[tokio::test]
async fn host_can_be_replaced_but_not_added() {
    let up = body_echo().await;
    let yaml = cfg(&format!(
        "{}{}",
        route(
            "rep",
            up,
            "/rep",
            "      - name: request-transformer\n        config:\n          replace:\n            headers: [\"host:changed.test\"]\n"
        ),
        route(
            "add",
            up,
            "/add",
            "      - name: request-transformer\n        config:\n          add:\n            headers: [\"host:added.test\"]\n          remove:\n            headers: [host]\n"
        )
    ));
    let g = gateway(&yaml).await;
    let j = get(g.addr, "/rep").await.json();
    assert_eq!(all(&j, "host"), ["changed.test"]);
    let j = get(g.addr, "/add").await.json();
    assert_eq!(all(&j, "host"), [up.to_string()]);
}

// ------------------------------------------------------------------ query string

#[tokio::test]
async fn querystring_operations() {
    let up = body_echo().await;
    let plugins = r#"      - name: request-transformer
        config:
          remove:
            querystring: [rm]
          rename:
            querystring: ["old:new"]
          replace:
            querystring: ["rep:R", "absent:no"]
          add:
            querystring: ["added:A b", "rep:no", "new:no"]
          append:
            querystring: ["app:2", "fresh:x"]
"#;
    let g = gateway(&cfg(&route("q", up, "/q", plugins))).await;
    let j = get(g.addr, "/q/x?keep=1&rm=gone&old=o&rep=r&app=1")
        .await
        .json();
    assert_eq!(
        j["path"],
        "/x?keep=1&new=o&rep=R&app=1&app=2&added=A%20b&fresh=x"
    );
    // No query at all: only add and append apply.
    let j = get(g.addr, "/q").await.json();
    assert_eq!(j["path"], "/?added=A%20b&rep=no&new=no&app=2&fresh=x");
}

// ------------------------------------------------------------------ bodies

fn body_plugins() -> &'static str {
    r#"      - name: request-transformer
        config:
          remove:
            body: [rm]
          rename:
            body: ["old:new"]
          replace:
            body: ["rep:R", "absent:no"]
          add:
            body: ["added:A", "rep:no"]
          append:
            body: ["app:b"]
"#
}

#[tokio::test]
async fn json_body_operations() {
    let up = body_echo().await;
    let g = gateway(&cfg(&route("b", up, "/b", body_plugins()))).await;
    let ct = ("content-type", "application/json");
    let r = send(
        g.addr,
        "POST",
        "/b",
        &[ct],
        br#"{"rm":1,"old":"o","rep":"r","keep":true,"app":"a"}"#,
    )
    .await;
    let j = r.json();
    let body: serde_json::Value = serde_json::from_str(j["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"new":"o","rep":"R","keep":true,"app":["a","b"],"added":"A"})
    );
    assert_eq!(
        all(&j, "content-length"),
        [j["body"].as_str().unwrap().len().to_string()]
    );

    // Malformed JSON is left untouched.
    let j = send(g.addr, "POST", "/b", &[ct], b"{not json").await.json();
    assert_eq!(j["body"], "{not json");
    // An empty body: only add and append.
    let j = send(g.addr, "POST", "/b", &[ct], b"").await.json();
    let body: serde_json::Value = serde_json::from_str(j["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"added":"A","rep":"no","app":["b"]})
    );
    // Another content type is not touched.
    let j = send(
        g.addr,
        "POST",
        "/b",
        &[("content-type", "text/plain")],
        b"rm=1",
    )
    .await
    .json();
    assert_eq!(j["body"], "rm=1");
}

#[tokio::test]
async fn form_body_operations() {
    let up = body_echo().await;
    let g = gateway(&cfg(&route("b", up, "/b", body_plugins()))).await;
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let j = send(
        g.addr,
        "POST",
        "/b",
        &[ct],
        b"rm=1&old=o&rep=r&keep=a+b&app=a",
    )
    .await
    .json();
    assert_eq!(j["body"], "new=o&rep=R&keep=a%20b&app=a&app=b&added=A");
    assert_eq!(all(&j, "content-length"), ["42"]);
}

#[tokio::test]
async fn http_method_moves_a_form_into_the_query() {
    let up = body_echo().await;
    let plugins =
        "      - name: request-transformer\n        config:\n          http_method: GET\n";
    let g = gateway(&cfg(&route("m", up, "/m", plugins))).await;
    let j = send(
        g.addr,
        "POST",
        "/m?c=3&a=0",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"a=1&b=x+y",
    )
    .await
    .json();
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/?c=3&a=0&a=1&b=x%20y");
    // A JSON body stays where it is.
    let j = send(
        g.addr,
        "POST",
        "/m?c=3",
        &[("content-type", "application/json")],
        b"{}",
    )
    .await
    .json();
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/?c=3");
}

// ------------------------------------------------------------------ uri and templates

#[tokio::test]
async fn replace_uri_with_uri_captures() {
    let up = body_echo().await;
    let plugins = r#"      - name: request-transformer
        config:
          replace:
            uri: "/v2/$(uri_captures.user)/items/$(uri_captures[2])"
          add:
            headers: ["x-whole:$(uri_captures[0])"]
"#;
    let yaml = cfg(&format!(
        "  - name: u\n    url: http://{up}/base\n    routes:\n      - paths: ['~/users/(?<user>[a-z]+)/items/(\\d+)$']\n    plugins:\n{plugins}"
    ));
    let g = gateway(&yaml).await;
    let j = get(g.addr, "/users/alice/items/42?x=1").await.json();
    assert_eq!(j["path"], "/v2/alice/items/42?x=1");
    assert_eq!(all(&j, "x-whole"), ["/users/alice/items/42"]);
}

#[tokio::test]
async fn templates_read_headers_query_and_shared() {
    let up = body_echo().await;
    let plugins = r#"      - name: pre-function
        config:
          access:
            - kong.ctx.shared.tenant = kong.request.get_query_arg("t")
      - name: request-transformer
        config:
          add:
            headers:
              - "x-q:$(query_params.apikey)"
              - "x-h:$(headers.x_custom)"
              - "x-shared:tenant-$(shared.tenant)"
              - "x-type:$(type(headers['x-multi']))"
              - "x-literal:$('$(not evaluated)')"
"#;
    let g = gateway(&cfg(&route("t", up, "/t", plugins))).await;
    let j = send(
        g.addr,
        "GET",
        "/t?apikey=a%20b&t=acme",
        &[("X-Custom", "c"), ("x-multi", "1"), ("x-multi", "2")],
        b"",
    )
    .await
    .json();
    assert_eq!(all(&j, "x-q"), ["a b"]);
    assert_eq!(all(&j, "x-h"), ["c"]);
    assert_eq!(all(&j, "x-shared"), ["tenant-acme"]);
    assert_eq!(all(&j, "x-type"), ["table"]);
    assert_eq!(all(&j, "x-literal"), ["$(not evaluated)"]);
}

/// Kong renders every entry's template (the same source in `replace` and `add` twice)
/// against the headers as the run first read them, even after its header operations.
#[tokio::test]
async fn templates_render_per_entry_against_the_headers_as_they_were() {
    let up = body_echo().await;
    let plugins = r#"      - name: pre-function
        config:
          access:
            - local n = 0 kong.ctx.shared.next = function() n = n + 1 return n end
      - name: request-transformer
        config:
          rename:
            headers: ["x-a:x-b"]
          replace:
            headers: ["x-n:$(shared.next())", "authorization:$(headers['x-a'])"]
          add:
            headers: ["x-n:$(shared.next())", "x-seen:$(headers['x-a'])"]
            querystring: ["seen:$(headers['x-a'] or 'renamed')"]
"#;
    let g = gateway(&cfg(&route("t", up, "/t", plugins))).await;
    let j = send(
        g.addr,
        "GET",
        "/t",
        &[("x-a", "va"), ("authorization", "old")],
        b"",
    )
    .await
    .json();
    // replace rendered 1 (no x-n to replace), add rendered 2 and set it.
    assert_eq!(all(&j, "x-n"), ["2"]);
    assert_eq!(all(&j, "x-b"), ["va"]);
    assert!(j["headers"]["x-a"].is_null(), "{j}");
    assert_eq!(all(&j, "authorization"), ["va"]);
    assert_eq!(all(&j, "x-seen"), ["va"]);
    assert_eq!(j["path"], "/?seen=va");
}

// ------------------------------------------------------------------ Supabase

const ANON_JWT: &str = "eyJhbGciOiJFUzI1NiJ9.anon-asym.sig";
const SERVICE_JWT: &str = "eyJhbGciOiJFUzI1NiJ9.service-asym.sig";

/// Supabase's kong.yml as its entrypoint would hand it over: every `$NAME` replaced
/// like its awk does (the LUA_* values built as kong-entrypoint.sh builds them), and
/// the upstream host names pointed at the echo server.
fn supabase_yaml(up: SocketAddr, opaque: bool) -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/supabase/kong.yml");
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (secret, publishable) = ("sb_secret_test", "sb_publishable_test");
    let (auth, ws, functions) = if opaque {
        (
            format!(
                "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or (headers.apikey == '{secret}' and 'Bearer {SERVICE_JWT}') or (headers.apikey == '{publishable}' and 'Bearer {ANON_JWT}') or headers.apikey)"
            ),
            format!(
                "$((query_params.apikey == '{secret}' and '{SERVICE_JWT}') or (query_params.apikey == '{publishable}' and '{ANON_JWT}') or query_params.apikey)"
            ),
            format!(
                "$((headers.apikey == '{secret}' and '{SERVICE_JWT}') or (headers.apikey == '{publishable}' and '{ANON_JWT}') or (headers.authorization == 'Bearer {secret}' and '{SERVICE_JWT}') or (headers.authorization == 'Bearer {publishable}' and '{ANON_JWT}') or nil)"
            ),
        )
    } else {
        (
            "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' and headers.authorization) or headers.apikey)".to_string(),
            "$(query_params.apikey)".to_string(),
            "$(nil)".to_string(),
        )
    };
    let vars = [
        (
            "SUPABASE_PUBLISHABLE_KEY",
            if opaque { publishable } else { "" },
        ),
        ("SUPABASE_SECRET_KEY", if opaque { secret } else { "" }),
        ("SUPABASE_ANON_KEY", "eyJhbGciOiJIUzI1NiJ9.anon.sig"),
        ("SUPABASE_SERVICE_KEY", "eyJhbGciOiJIUzI1NiJ9.service.sig"),
        ("DASHBOARD_USERNAME", "supabase"),
        ("DASHBOARD_PASSWORD", "pw"),
        ("LUA_AUTH_EXPR", auth.as_str()),
        ("LUA_RT_WS_EXPR", ws.as_str()),
        ("LUA_FUNCTIONS_EXPR", functions.as_str()),
        (
            "WELL_KNOWN_OAUTH_PATH",
            "/.well-known/oauth-authorization-server/auth/v1",
        ),
    ];
    // Longest names first, so a name never eats the start of a longer one.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in vars {
        text = text.replace(&format!("${k}"), v);
    }
    // Supabase's entrypoint deletes the empty credentials.
    text = text
        .lines()
        .filter(|l| l.trim() != "- key:")
        .collect::<Vec<_>>()
        .join("\n");
    for host in [
        "auth:9999",
        "rest:3000",
        "storage:5000",
        "functions:9000",
        "realtime-dev.supabase-realtime:4000",
        "meta:8080",
        "studio:3000",
    ] {
        text = text.replace(&format!("http://{host}"), &format!("http://{up}"));
    }
    text
}

#[tokio::test]
async fn supabase_legacy_keys() {
    let up = body_echo().await;
    let g = gateway(&supabase_yaml(up, false)).await;
    let anon = "eyJhbGciOiJIUzI1NiJ9.anon.sig";

    // apikey only: Authorization becomes the key (legacy branch).
    let r = send(g.addr, "GET", "/rest/v1/todos", &[("apikey", anon)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["path"], "/todos");
    assert_eq!(all(&j, "authorization"), [anon]);
    // A user session JWT passes through untouched.
    let r = send(
        g.addr,
        "GET",
        "/rest/v1/todos",
        &[("apikey", anon), ("Authorization", "Bearer eyJuser")],
        b"",
    )
    .await;
    assert_eq!(all(&r.json(), "authorization"), ["Bearer eyJuser"]);

    // storage: no key-auth; nothing to translate gives " ", which the post-function removes.
    let j = get(g.addr, "/storage/v1/object/x").await.json();
    assert!(all(&j, "authorization").is_empty(), "{j}");
    let j = send(
        g.addr,
        "GET",
        "/storage/v1/object/x",
        &[("apikey", "k")],
        b"",
    )
    .await
    .json();
    assert_eq!(all(&j, "authorization"), ["k"]);

    // functions: a client's sb-api-key is removed, `$(nil)` adds " ", the post-function
    // removes it.
    let j = send(
        g.addr,
        "POST",
        "/functions/v1/hello",
        &[
            ("sb-api-key", "spoofed"),
            ("Authorization", "Bearer eyJuser"),
        ],
        b"{}",
    )
    .await
    .json();
    assert!(all(&j, "sb-api-key").is_empty(), "{j}");
    assert_eq!(all(&j, "authorization"), ["Bearer eyJuser"]);
    assert_eq!(j["body"], "{}");
}

#[tokio::test]
async fn supabase_opaque_keys_become_jwts() {
    let up = body_echo().await;
    let g = gateway(&supabase_yaml(up, true)).await;

    let r = send(
        g.addr,
        "GET",
        "/rest/v1/todos?select=*",
        &[("apikey", "sb_publishable_test")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(all(&j, "authorization"), [format!("Bearer {ANON_JWT}")]);
    assert_eq!(j["path"], "/todos?select=*");
    // supabase-js also sends the opaque key as a bearer: still translated.
    let j = send(
        g.addr,
        "GET",
        "/auth/v1/user",
        &[
            ("apikey", "sb_secret_test"),
            ("Authorization", "Bearer sb_secret_test"),
        ],
        b"",
    )
    .await
    .json();
    assert_eq!(all(&j, "authorization"), [format!("Bearer {SERVICE_JWT}")]);
    // An unknown key is refused by key-auth before any translation.
    let r = send(
        g.addr,
        "GET",
        "/rest/v1/todos",
        &[("apikey", "sb_nope")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);

    // storage translates without key-auth.
    let j = send(
        g.addr,
        "GET",
        "/storage/v1/bucket",
        &[("apikey", "sb_publishable_test")],
        b"",
    )
    .await
    .json();
    assert_eq!(all(&j, "authorization"), [format!("Bearer {ANON_JWT}")]);

    // functions: the raw JWT in sb-api-key; no key, no header.
    let j = send(
        g.addr,
        "GET",
        "/functions/v1/hello",
        &[("apikey", "sb_secret_test"), ("sb-api-key", "spoofed")],
        b"",
    )
    .await
    .json();
    assert_eq!(all(&j, "sb-api-key"), [SERVICE_JWT]);
    let j = send(
        g.addr,
        "GET",
        "/functions/v1/hello",
        &[("Authorization", "Bearer sb_publishable_test")],
        b"",
    )
    .await
    .json();
    assert_eq!(all(&j, "sb-api-key"), [ANON_JWT]);
    let j = send(
        g.addr,
        "GET",
        "/functions/v1/hello",
        &[("sb-api-key", "spoofed")],
        b"",
    )
    .await
    .json();
    assert!(all(&j, "sb-api-key").is_empty(), "{j}");

    // realtime: the key in the query is replaced by the JWT, and sent as x-api-key.
    let r = get(
        g.addr,
        "/realtime/v1/websocket?apikey=sb_publishable_test&vsn=1.0.0",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        j["path"],
        format!("/socket/websocket?apikey={ANON_JWT}&vsn=1.0.0")
    );
    assert_eq!(all(&j, "x-api-key"), [ANON_JWT]);
}

// ------------------------------------------------------------------ pre/post-function

#[tokio::test]
async fn pdk_in_pre_and_post_functions() {
    let up = body_echo().await;
    let plugins = r#"      - name: post-function
        config:
          access:
            - |
              local h = kong.request.get_headers()
              kong.service.request.set_header("x-post", kong.request.get_header("x-pre") .. "+post")
              kong.service.request.set_header("x-method", kong.request.get_method())
              kong.service.request.set_header("x-path", kong.request.get_path())
              kong.service.request.set_header("x-raw-query", kong.request.get_raw_query())
              kong.service.request.set_header("x-count", tostring(#h["x-multi"]))
              kong.log.info("post-function ran for ", kong.request.get_path())
      - name: pre-function
        config:
          access:
            - kong.service.request.set_header("x-pre", "pre")
            - |
              -- Runs before key-auth: turn ?key=... into the apikey header.
              local key = kong.request.get_query_arg("key")
              if key then
                kong.service.request.set_header("apikey", key)
                kong.service.request.set_query({ keep = kong.request.get_query_arg("keep") })
              end
            - |
              if kong.request.get_header("x-block") then
                return kong.response.exit(403, { message = "blocked", by = "pre" }, { ["X-Reason"] = "test" })
              end
      - name: key-auth
"#;
    let yaml = format!(
        "_format_version: \"3.0\"\nconsumers:\n  - username: u\n    keyauth_credentials:\n      - key: secret\nservices:\n{}",
        route("f", up, "/f", plugins)
    );
    let g = gateway(&yaml).await;
    let r = send(
        g.addr,
        "GET",
        "/f/a?key=secret&keep=1",
        &[("x-multi", "1"), ("x-multi", "2")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(all(&j, "x-pre"), ["pre"]);
    assert_eq!(all(&j, "x-post"), ["pre+post"]);
    assert_eq!(all(&j, "x-method"), ["GET"]);
    assert_eq!(all(&j, "x-path"), ["/f/a"]);
    assert_eq!(all(&j, "x-raw-query"), ["keep=1"]);
    assert_eq!(all(&j, "x-count"), ["2"]);
    assert_eq!(all(&j, "x-consumer-username"), ["u"]);
    assert_eq!(j["path"], "/a?keep=1");

    // kong.response.exit with a table body and headers, before key-auth.
    let r = send(g.addr, "GET", "/f", &[("x-block", "1")], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        serde_json::json!({"message":"blocked","by":"pre"})
    );
    assert_eq!(
        r.header("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
    assert_eq!(r.header("x-reason").unwrap(), "test");
    // Without the key, key-auth answers (the pre-function ran and passed).
    assert_eq!(get(g.addr, "/f").await.status, 401);
}

#[tokio::test]
async fn failing_and_runaway_snippets_give_500_and_the_gateway_keeps_serving() {
    let up = body_echo().await;
    let snippet = |code: &str| {
        format!(
            "      - name: post-function\n        config:\n          access:\n            - \"{code}\"\n"
        )
    };
    let mut services = String::new();
    let cases = [
        ("err", "error('boom')"),
        ("nilcall", "local x = nil; x()"),
        ("loop", "while true do end"),
        (
            "pcallloop",
            "while true do pcall(function() while true do end end) end",
        ),
        ("exec", "os.execute('touch /tmp/portcullis-pwned')"),
        ("io", "io.open('/etc/passwd')"),
        ("require", "require('os')"),
        ("load", "load('return 1')()"),
        ("debug", "debug.getinfo(1)"),
        ("dump", "string.dump(print)"),
        ("setfenv", "setfenv(1, {})"),
        (
            "memory",
            "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1e6) .. i end",
        ),
        ("template", "x"),
    ];
    for (name, code) in cases {
        if name == "template" {
            services.push_str(&route(
                name,
                up,
                &format!("/{name}"),
                "      - name: request-transformer\n        config:\n          add:\n            headers: [\"x:$(undefined_function())\"]\n",
            ));
        } else {
            services.push_str(&route(name, up, &format!("/{name}"), &snippet(code)));
        }
    }
    services.push_str(&route(
        "ok",
        up,
        "/ok",
        &snippet("kong.service.request.set_header('x-ok', '1')"),
    ));
    let g = gateway(&cfg(&services)).await;
    for (name, _) in cases {
        let started = Instant::now();
        let r = get(g.addr, &format!("/{name}")).await;
        assert_eq!(r.status, 500, "{name}: {}", r.text());
        assert!(
            r.text().starts_with("An unexpected error occurred"),
            "{name}"
        );
        // Kong's error body, negotiated as Kong does.
        let r = send(
            g.addr,
            "GET",
            &format!("/{name}"),
            &[("accept", "application/json")],
            b"",
        )
        .await;
        assert_eq!(r.status, 500, "{name}");
        assert_eq!(
            r.json()["message"],
            "An unexpected error occurred",
            "{name}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        // The gateway still serves, on whatever worker thread.
        let r = get(g.addr, "/ok").await;
        assert_eq!(r.status, 200, "after {name}");
        assert_eq!(all(&r.json(), "x-ok"), ["1"]);
    }
    assert!(!std::path::Path::new("/tmp/portcullis-pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_many_threads() {
    let up = body_echo().await;
    let plugins = r#"      - name: request-transformer
        config:
          add:
            headers: ["x-k:$(headers.apikey or 'none')-$(query_params.n)"]
      - name: post-function
        config:
          access:
            - |
              local n = 0
              return function()
                n = n + 1
                kong.service.request.set_header("x-counted", tostring(n > 0))
              end
"#;
    let g = gateway(&cfg(&route("c", up, "/c", plugins))).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let addr = g.addr;
        tasks.push(tokio::spawn(async move {
            let key = format!("k{i}");
            let j = send(addr, "GET", &format!("/c?n={i}"), &[("apikey", &key)], b"")
                .await
                .json();
            assert_eq!(all(&j, "x-k"), [format!("k{i}-{i}")]);
            assert_eq!(all(&j, "x-counted"), ["true"]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

// ------------------------------------------------------------------ config errors

#[test]
fn lua_syntax_errors_are_config_errors_with_positions() {
    let bad = r#"_format_version: "3.0"
services:
  - name: s
    url: http://127.0.0.1:1/
    routes:
      - paths: [/]
    plugins:
      - name: post-function
        config:
          access:
            - |
              local a = 1
              if then
      - name: request-transformer
        config:
          add:
            headers: ["x-a:$(headers.x +)"]
            querystring: ["novalue"]
          replace:
            uri: "/$(("
          rename:
            headers: ["bad name:x"]
          http_method: get
      - name: pre-function
        config:
          header_filter: ["kong.log.err('x')"]
"#;
    let errs = portcullis::config::load_config("t.yml", bad)
        .unwrap_err()
        .to_string();
    for want in [
        "t.yml:13:15: plugin 'post-function'.config.access[0]: error parsing post-function: access[0]:2: unexpected symbol near 'then'",
        "t.yml:17:23: plugin 'request-transformer'.config.add.headers[0]: value '$(headers.x +)' is not in supported format, error: add.headers[0]:1: unexpected symbol near ')'",
        "t.yml:18:27: plugin 'request-transformer'.config.add.querystring[0]: key 'novalue' has no value",
        "t.yml:22:23: plugin 'request-transformer'.config.rename.headers[0]: 'bad name' is not a valid header",
        "t.yml:23:24: plugin 'request-transformer'.config.http_method: invalid value 'get'",
        "t.yml:26:11: plugin 'pre-function'.config.header_filter: the 'header_filter' phase is not supported",
    ] {
        assert!(errs.contains(want), "missing:\n{want}\nin:\n{errs}");
    }
    // "/$((" has no balanced `$( )`: a constant, so no error for it.
    assert!(!errs.contains("replace.uri"), "{errs}");

    let empty = "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:1/\n    plugins:\n      - name: post-function\n        config:\n          access: []\n";
    let errs = portcullis::config::load_config("t.yml", empty)
        .unwrap_err()
        .to_string();
    assert!(
        errs.contains("at least one of these fields must be non-empty: 'config.certificate'"),
        "{errs}"
    );
}
