//! Supabase drop-in, end to end: the unmodified fixture `kong.yml` (and the Kong 2.8-era
//! `kong-legacy.yml`) served by the real binary, started through `deploy/entrypoint.sh`
//! exactly as the container starts it, with stub upstreams for auth, rest, studio,
//! storage, functions, meta and realtime on their own loopback addresses. The
//! upstream host names resolve through a private /etc/hosts (a mount namespace made
//! with `unshare -m`), so neither the product nor the fixture is touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use base64::Engine;
use common::process::{BIN, GatewayProcess};
use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ANON: &str = "anon-legacy-jwt";
const SERVICE: &str = "service-legacy-jwt";
const PUBLISHABLE: &str = "sb_publishable_abc123";
const SECRET: &str = "sb_secret_xyz789";
const ANON_ASYM: &str = "eyJhbGciOiJFUzI1NiJ9.anon.sig";
const SERVICE_ASYM: &str = "eyJhbGciOiJFUzI1NiJ9.service_role.sig";
const DASH_USER: &str = "supabase";
/// Quotes in the password: Supabase's shell substitution breaks on these; ours does not.
const DASH_PASS: &str = "pa'ss\"w:rd";

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/supabase")
        .join(name);
    assert!(p.exists(), "missing fixture {}", p.display());
    p
}

/// The fixtures are Supabase's files byte for byte: each one's SHA-256 matches the sum
/// recorded beside it when it was copied (`SOURCE.md` there says from where).
#[test]
fn fixtures_are_supabase_files_unmodified() {
    use sha2::Digest;
    let sums = std::fs::read_to_string(fixture("SHA256SUMS")).unwrap();
    let mut names = Vec::new();
    for line in sums.lines() {
        let (want, name) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("not a sha256sum line: {line:?}"));
        let got: String = sha2::Sha256::digest(std::fs::read(fixture(name)).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want, "{name} is not the file Supabase ships");
        names.push(name);
    }
    names.sort_unstable();
    assert_eq!(names, ["kong-entrypoint.sh", "kong-legacy.yml", "kong.yml"]);
}

/// The services of the fixture and the host:port each one calls.
const HOSTS: &[(&str, &str, u16)] = &[
    ("auth", "auth", 9999),
    ("rest", "rest", 3000),
    ("studio", "studio", 3000),
    ("storage", "storage", 5000),
    ("functions", "functions", 9000),
    ("meta", "meta", 8080),
    ("realtime", "realtime-dev.supabase-realtime", 4000),
];

/// Stub upstream: echoes the request as JSON tagged with the service name; accepts
/// WebSocket upgrades and echoes bytes in upper case.
async fn stub(ip: &str, port: u16, service: &'static str) -> SocketAddr {
    serve_upstream_at(
        &format!("{ip}:{port}"),
        move |mut req: Request<Incoming>| async move {
            if req.headers().contains_key("upgrade") {
                let seen = serde_json::json!({
                    "service": service,
                    "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
                    "host": req.headers().get("host").and_then(|v| v.to_str().ok()),
                    "x-api-key": req.headers().get("x-api-key").and_then(|v| v.to_str().ok()),
                })
                .to_string();
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(up) = on.await else { return };
                    let mut io = hyper_util::rt::TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                            return;
                        }
                    }
                });
                return Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("x-seen", seen)
                    .body(portcullis::body::empty())
                    .unwrap();
            }
            let mut r = echo_handler(req).await;
            r.headers_mut()
                .insert("x-service", http::HeaderValue::from_static(service));
            r
        },
    )
    .await
}

/// The gateway, then the dir holding its hosts file (dropped in that order).
struct Gw {
    addr: SocketAddr,
    _p: GatewayProcess,
    _dir: tempfile::TempDir,
}

/// Starts the gateway like the container does: `/entrypoint.sh kong docker-start`, in a
/// mount namespace whose /etc/hosts maps the fixture's host names to our stubs.
fn start_gateway(template: PathBuf, hosts: &str, opaque_keys: bool) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let hosts_file = dir.path().join("hosts");
    std::fs::write(
        &hosts_file,
        format!("127.0.0.1 localhost\n::1 localhost\n{hosts}"),
    )
    .unwrap();
    let entrypoint = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/entrypoint.sh");
    let script = format!(
        "mount --bind '{}' /etc/hosts && exec sh '{}' kong docker-start --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 --access-log off",
        hosts_file.display(),
        entrypoint.display()
    );
    let mut cmd = GatewayProcess::command("unshare");
    cmd.args(["-m", "sh", "-c", &script])
        .env("PORTCULLIS_BIN", BIN)
        .env("PORTCULLIS_SUPABASE_TEMPLATE", &template)
        .env("PORTCULLIS_TLS_LISTEN", "off")
        .env("KONG_DECLARATIVE_CONFIG", dir.path().join("unused.yml"))
        .env("SUPABASE_ANON_KEY", ANON)
        .env("SUPABASE_SERVICE_KEY", SERVICE)
        .env("DASHBOARD_USERNAME", DASH_USER)
        .env("DASHBOARD_PASSWORD", DASH_PASS)
        .env("JWT_ISSUER", "http://localhost:8000/auth/v1")
        .env("ANON_KEY_ASYMMETRIC", ANON_ASYM)
        .env("SERVICE_ROLE_KEY_ASYMMETRIC", SERVICE_ASYM)
        .discard_stdout()
        .hint("the Supabase end-to-end test needs `unshare` (util-linux), and `unshare -m` needs root / CAP_SYS_ADMIN");
    if opaque_keys {
        cmd.env("SUPABASE_PUBLISHABLE_KEY", PUBLISHABLE)
            .env("SUPABASE_SECRET_KEY", SECRET);
    } else {
        // What compose passes for unset opaque keys: `${VAR:-}`.
        cmd.env("SUPABASE_PUBLISHABLE_KEY", "")
            .env("SUPABASE_SECRET_KEY", "");
    }
    let p = cmd.start();
    Gw {
        addr: p.proxy_addr(),
        _p: p,
        _dir: dir,
    }
}

/// A random 127.x.y.0/24 so parallel runs don't collide on the fixture's fixed ports.
fn loopback_net() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    format!(
        "127.{}.{}",
        100 + (n % 100) as u8,
        1 + ((n >> 8) % 250) as u8
    )
}

async fn stubs() -> String {
    let net = loopback_net();
    let mut hosts = String::new();
    for (i, (service, host, port)) in HOSTS.iter().enumerate() {
        let ip = format!("{net}.{}", 10 + i);
        stub(&ip, *port, service).await;
        hosts.push_str(&format!("{ip} {host}\n"));
    }
    hosts
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test]
async fn current_kong_yml_behaves_as_under_kong() {
    let hosts = stubs().await;
    let gw = start_gateway(fixture("kong.yml"), &hosts, true);
    let a = gw.addr;
    let svc = |r: &Resp| r.header("x-service").unwrap_or_default();

    // Open auth routes: no key needed, cors on, strip_path joins.
    for (path, upstream) in [
        ("/auth/v1/verify?token=t", "/verify?token=t"),
        ("/auth/v1/callback", "/callback"),
        ("/auth/v1/authorize", "/authorize"),
        ("/auth/v1/.well-known/jwks.json", "/.well-known/jwks.json"),
        ("/auth/v1/sso/saml/acs", "/sso/saml/acs"),
        ("/auth/v1/sso/saml/metadata", "/sso/saml/metadata"),
        (
            "/.well-known/oauth-authorization-server/auth/v1",
            "/.well-known/oauth-authorization-server",
        ),
    ] {
        let r = send(a, "GET", path, &[("origin", "http://localhost:3000")], b"").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(svc(&r), "auth", "{path}");
        assert_eq!(r.json()["path"], upstream, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin").unwrap(),
            "*",
            "{path}"
        );
    }

    // Secure auth: keys in header or query; unknown/missing keys refused.
    let r = get(a, "/auth/v1/signup").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "No API key found in request");
    let r = send(a, "GET", "/auth/v1/signup", &[("apikey", "wrong")], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Unauthorized");
    let r = send(a, "POST", "/auth/v1/signup", &[("apikey", ANON)], b"{}").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/signup");
    assert_eq!(echoed(&j, "x-consumer-username").unwrap(), "anon");
    // Legacy key: the Lua template passes the apikey through as Authorization.
    assert_eq!(echoed(&j, "authorization").unwrap(), ANON);
    // Opaque publishable key → the anon asymmetric JWT.
    let r = send(a, "GET", "/auth/v1/user", &[("apikey", PUBLISHABLE)], b"").await;
    assert_eq!(
        echoed(&r.json(), "authorization").unwrap(),
        format!("Bearer {ANON_ASYM}")
    );
    // A user session JWT in Authorization passes through untouched.
    let r = send(
        a,
        "GET",
        "/auth/v1/user",
        &[
            ("apikey", PUBLISHABLE),
            ("authorization", "Bearer user-jwt"),
        ],
        b"",
    )
    .await;
    assert_eq!(
        echoed(&r.json(), "authorization").unwrap(),
        "Bearer user-jwt"
    );
    // `Bearer sb_…` in Authorization is translated, not passed on.
    let r = send(
        a,
        "GET",
        "/auth/v1/user",
        &[
            ("apikey", SECRET),
            ("authorization", &format!("Bearer {SECRET}")),
        ],
        b"",
    )
    .await;
    assert_eq!(
        echoed(&r.json(), "authorization").unwrap(),
        format!("Bearer {SERVICE_ASYM}")
    );

    // PostgREST: the exact `/rest/v1/` expression route is admin only.
    let r = send(a, "GET", "/rest/v1/?select=x", &[("apikey", ANON)], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "You cannot consume this service");
    let r = send(a, "GET", "/rest/v1/?select=x", &[("apikey", SECRET)], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(svc(&r), "rest");
    assert_eq!(r.json()["path"], "/?select=x");
    assert_eq!(
        echoed(&r.json(), "authorization").unwrap(),
        format!("Bearer {SERVICE_ASYM}")
    );
    let r = get(a, &format!("/rest/v1/todos?select=*&apikey={ANON}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], format!("/todos?select=*&apikey={ANON}"));
    // A bare /rest/v1 falls to the dashboard catch-all (basic-auth).
    let r = send(a, "GET", "/rest/v1", &[("apikey", ANON)], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Basic realm=\"service\""
    );

    // GraphQL: Content-Profile added.
    let r = send(a, "POST", "/graphql/v1", &[("apikey", ANON)], b"{}").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/rpc/graphql");
    assert_eq!(
        echoed(&r.json(), "content-profile").unwrap(),
        "graphql_public"
    );

    // Realtime: REST API blocked for tenants/openapi, open otherwise with a key.
    for path in ["/realtime/v1/api/tenants", "/realtime/v1/api/openapi"] {
        let r = send(a, "GET", path, &[("apikey", SECRET)], b"").await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.text(), r#"{"message":"Access is forbidden."}"#);
    }
    let r = send(
        a,
        "GET",
        "/realtime/v1/api/broadcast",
        &[("apikey", ANON)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/broadcast");
    // Realtime takes its tenant from Host: rewritten to the upstream's.
    assert_eq!(
        echoed(&r.json(), "host").unwrap(),
        "realtime-dev.supabase-realtime:4000"
    );

    // Realtime WebSocket: key from the query, translated into x-api-key and the query.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let handshake = format!(
        "GET /realtime/v1/websocket?apikey={PUBLISHABLE}&vsn=1.0.0 HTTP/1.1\r\nHost: localhost:8000\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let seen_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-seen:"))
        .unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(seen_line.split_once(':').unwrap().1.trim()).unwrap();
    assert_eq!(seen["service"], "realtime");
    assert_eq!(
        seen["path"],
        format!("/socket/websocket?apikey={ANON_ASYM}&vsn=1.0.0")
    );
    assert_eq!(seen["x-api-key"], ANON_ASYM);
    assert_eq!(seen["host"], "realtime-dev.supabase-realtime:4000");
    s.write_all(b"phx_join").await.unwrap();
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"PHX_JOIN");
    drop(s);

    // Storage: no key-auth; the empty Authorization the template yields is removed.
    let r = get(a, "/storage/v1/object/public/a.png?X-Amz-Signature=s").await;
    assert_eq!(r.status, 200);
    assert_eq!(svc(&r), "storage");
    assert_eq!(r.json()["path"], "/object/public/a.png?X-Amz-Signature=s");
    assert!(echoed(&r.json(), "authorization").is_none(), "{}", r.text());
    let r = send(a, "GET", "/storage/v1/bucket", &[("apikey", SECRET)], b"").await;
    assert_eq!(
        echoed(&r.json(), "authorization").unwrap(),
        format!("Bearer {SERVICE_ASYM}")
    );

    // Functions: sb-api-key from the opaque key, never from the client; empty removed.
    let r = send(
        a,
        "POST",
        "/functions/v1/hello",
        &[
            ("apikey", PUBLISHABLE),
            ("authorization", "Bearer user-jwt"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/hello");
    assert_eq!(echoed(&r.json(), "sb-api-key").unwrap(), ANON_ASYM);
    assert_eq!(
        echoed(&r.json(), "authorization").unwrap(),
        "Bearer user-jwt"
    );
    let r = send(
        a,
        "POST",
        "/functions/v1/hello",
        &[("sb-api-key", "spoofed")],
        b"{}",
    )
    .await;
    assert!(echoed(&r.json(), "sb-api-key").is_none(), "{}", r.text());
    let r = send(
        a,
        "POST",
        "/functions/v1/hello",
        &[("authorization", &format!("Bearer {SECRET}"))],
        b"{}",
    )
    .await;
    assert_eq!(echoed(&r.json(), "sb-api-key").unwrap(), SERVICE_ASYM);

    // pg-meta: admin only, no cors.
    let r = send(
        a,
        "GET",
        "/pg/tables",
        &[("apikey", ANON), ("origin", "http://x")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = send(a, "GET", "/pg/tables", &[("apikey", SERVICE)], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(svc(&r), "meta");
    assert_eq!(r.json()["path"], "/tables");

    // MCP closed.
    for path in ["/mcp", "/api/mcp"] {
        let r = send(
            a,
            "POST",
            path,
            &[("content-type", "application/json")],
            b"{}",
        )
        .await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.text(), r#"{"message":"Access is forbidden."}"#);
    }

    // Dashboard: basic-auth with a password full of quotes, credentials hidden.
    let r = get(a, "/project/default").await;
    assert_eq!(r.status, 401);
    let r = send(
        a,
        "GET",
        "/project/default",
        &[("authorization", &basic(DASH_USER, DASH_PASS))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(svc(&r), "studio");
    assert_eq!(r.json()["path"], "/project/default");
    assert!(echoed(&r.json(), "authorization").is_none());
    assert_eq!(
        echoed(&r.json(), "x-consumer-username").unwrap(),
        "DASHBOARD"
    );

    // CORS preflight is answered before key-auth.
    let r = send(
        a,
        "OPTIONS",
        "/rest/v1/todos",
        &[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "apikey, authorization"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-headers").unwrap(),
        "apikey, authorization"
    );
}

#[tokio::test]
async fn current_kong_yml_without_opaque_keys() {
    // Unset opaque keys arrive as empty strings: their credentials are skipped and the
    // legacy expressions apply.
    let hosts = stubs().await;
    let gw = start_gateway(fixture("kong.yml"), &hosts, false);
    let a = gw.addr;
    let r = send(a, "GET", "/rest/v1/todos", &[("apikey", "")], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "No API key found in request");
    let r = send(
        a,
        "GET",
        "/rest/v1/todos",
        &[
            ("apikey", ANON),
            ("authorization", &format!("Bearer {ANON}")),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed(&r.json(), "authorization").unwrap(),
        format!("Bearer {ANON}")
    );
    let r = send(a, "POST", "/functions/v1/hello", &[("apikey", ANON)], b"{}").await;
    assert!(echoed(&r.json(), "sb-api-key").is_none());
    let r = send(a, "GET", "/rest/v1/", &[("apikey", SERVICE)], b"").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn legacy_kong_yml_behaves_as_under_kong() {
    let hosts = stubs().await;
    let gw = start_gateway(fixture("kong-legacy.yml"), &hosts, false);
    let a = gw.addr;
    let r = get(a, "/rest/v1/todos").await;
    assert_eq!(r.status, 401);
    let r = send(
        a,
        "GET",
        "/rest/v1/todos?select=*",
        &[("apikey", ANON)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-service").unwrap(), "rest");
    assert_eq!(r.json()["path"], "/todos?select=*");
    let r = send(a, "GET", "/auth/v1/verify", &[], b"").await;
    assert_eq!(r.status, 200);
    for path in ["/mcp", "/api/mcp"] {
        assert_eq!(get(a, path).await.status, 403, "{path}");
    }
    let r = send(
        a,
        "GET",
        "/",
        &[("authorization", &basic(DASH_USER, DASH_PASS))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-service").unwrap(), "studio");
}
