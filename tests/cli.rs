//! The real `portcullis` binary, black box: `check` output (every error with its
//! file:line:col), `run` on the embedded config, flags and their environment twins,
//! the stdout access log, and memory while 100 MiB stream through each way.
//!
//! Children start with a cleared environment (PATH and NO_COLOR only), so whatever
//! PORTCULLIS_* or KONG_* variables the developer has set cannot leak in. Ports are
//! always 127.0.0.1:0, read back from the "listening" log lines; every wait is bounded
//! and every child is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::process::{Finished, GatewayBuilder, GatewayProcess};
use common::{Resp, echo_upstream, echoed, get, send, serve_upstream};

type Gateway = GatewayProcess;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Start-up, `check`, one small request, one log line.
const WAIT: Duration = Duration::from_secs(20);
/// 100 MiB one way through a debug build.
const BIG_WAIT: Duration = Duration::from_secs(300);
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------
// Harness: the binary as a child process
// ---------------------------------------------------------------------------------

/// `portcullis` in `cwd`, with an environment holding nothing but PATH, NO_COLOR and
/// PORTCULLIS_TLS_LISTEN=off.
fn portcullis(cwd: &Path) -> GatewayBuilder {
    let mut c = GatewayProcess::bin();
    // The HTTPS listener defaults to 0.0.0.0:8443, which parallel tests can't share
    // (tests/ops.rs covers it).
    c.cwd(cwd).env("PORTCULLIS_TLS_LISTEN", "off");
    c
}

/// A command that is expected to end by itself (`check`, or `run` refusing to start).
fn finish(cmd: GatewayBuilder) -> Finished {
    cmd.finish(WAIT)
}

/// Starts and waits until one proxy listener and the status listener are up.
fn start(cmd: GatewayBuilder) -> Gateway {
    start_expecting(cmd, 1, true)
}

/// The status listener is bound after every proxy listener, so once all the
/// expected lines are there the gateway is ready.
fn start_expecting(mut cmd: GatewayBuilder, proxies: usize, status: bool) -> Gateway {
    cmd.ready_when(proxies, 0, status).start_wait(WAIT).start()
}

/// What these tests ask of a running gateway beyond `GatewayProcess`.
trait Harness {
    fn addr(&self) -> SocketAddr;
    async fn status_json(&self) -> serde_json::Value;
    /// The next access log line on stdout (bounded wait).
    async fn log_line(&mut self) -> String;
    /// SIGTERM, then a bounded wait for the graceful exit.
    fn terminate(&mut self) -> ExitStatus;
}

impl Harness for Gateway {
    fn addr(&self) -> SocketAddr {
        self.proxy_addr()
    }

    async fn status_json(&self) -> serde_json::Value {
        let r = get(self.status_addr(), "/status").await;
        assert_eq!(r.status, 200);
        r.json()
    }

    async fn log_line(&mut self) -> String {
        self.next_stdout_line(WAIT).await
    }

    fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit_blocking(WAIT)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// "LINE:COL" (1-based) of `token` on the only line of `text` containing `line_has`.
fn at(text: &str, line_has: &str, token: &str) -> String {
    let hits: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(line_has))
        .collect();
    assert_eq!(hits.len(), 1, "{line_has:?} should be on exactly one line");
    let (i, line) = hits[0];
    let col = line
        .find(token)
        .unwrap_or_else(|| panic!("{token:?} not on line {line:?}"));
    format!("{}:{}", i + 1, col + 1)
}

/// A config with one service (the echo upstream) and a named route on /echo.
fn echo_config(up: SocketAddr) -> String {
    format!(
        "_format_version: \"3.0\"\n\
         services:\n  - name: echo-svc\n    url: http://{up}/base\n    routes:\n      \
         - name: echo-route\n        paths: [/echo]\n"
    )
}

fn run_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--status-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

// ---------------------------------------------------------------------------------
// 1. portcullis check
// ---------------------------------------------------------------------------------

const VALID: &str = r#"_format_version: "3.0"
services:
  - name: api
    url: http://127.0.0.1:9/v1
    routes:
      - name: api-route
        paths: [/api]
    plugins:
      - name: ip-restriction
        config:
          allow: [127.0.0.1, 10.0.0.0/8, "::1"]
  - name: other
    host: 127.0.0.1
    port: 9
routes:
  - name: top-level
    service: other
    paths: ['~/items/\d+$']
  - name: by-host
    service: other
    hosts: [example.test]
consumers:
  - username: alice
plugins:
  - name: cors
"#;

#[test]
fn check_valid_file_exits_0_with_summary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "valid.yaml", VALID);
    let mut cmd = portcullis(dir.path());
    cmd.args(["check", "--config", s(&cfg)]);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(
        out.stdout,
        vec![format!(
            "{}: OK (2 services, 3 routes, 2 plugins, 1 consumers)",
            s(&cfg)
        )]
    );
}

/// Each mistake on its own line, so every position is computed from the text.
const BROKEN: &str = r#"_format_version: "3.0"
services:
  - name: dup
    url: http://127.0.0.1:9/
    routes:
      - name: r1
        strip_paht: true
        paths: [/one]
    plugins:
      - name: no-such-plugin
      - name: ip-restriction
        config:
          allow: [10.0.0.1, 10.0.0.0/33]
  - name: dup
    url: http://127.0.0.1:9/
    routes:
      - name: r2
        paths: ['~/(']
      - name: r3
        paths:
          - /a/../b
  - name: env
    url: http://127.0.0.1:9/
    plugins:
      - name: request-termination
        config:
          message: "token $NOT_SET_VAR_XYZ"
routes:
  - name: top
    service: nope
    paths: [/top]
"#;

#[test]
fn check_broken_file_lists_every_error_with_line_and_column() {
    let t = BROKEN;
    // The second `- name: dup` is the duplicate: the error points at its entry.
    let second_dup = {
        let i = t
            .lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| *l == "  - name: dup")
            .unwrap();
        format!("{}:{}", i + 1, "  - ".len() + 1)
    };
    let expected: Vec<(String, &str)> = vec![
        (
            at(t, "strip_paht", "strip_paht"),
            "route 'r1': unknown field 'strip_paht'",
        ),
        (
            at(t, "no-such-plugin", "no-such-plugin"),
            "plugin 'no-such-plugin' not enabled; add it to the 'plugins' configuration property",
        ),
        (
            at(t, "10.0.0.0/33", "10.0.0.0/33"),
            "plugin 'ip-restriction'.config.allow: invalid ip or cidr range: '10.0.0.0/33'",
        ),
        (
            second_dup,
            "uniqueness violation: 'services' entity with name set to 'dup' already declared",
        ),
        (
            at(t, "'~/('", "'~/('"),
            "route 'r2'.paths: invalid regex: '/('",
        ),
        (
            at(t, "/a/../b", "/a/../b"),
            "route 'r3'.paths: non-normalized path, consider use '/b' instead",
        ),
        (
            at(t, "NOT_SET_VAR_XYZ", "\"token"),
            "environment variable 'NOT_SET_VAR_XYZ' is not set",
        ),
        (
            at(t, "service: nope", "nope"),
            "invalid reference 'service: nope' (no such entry in 'services')",
        ),
    ];

    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "broken.yaml", t);
    let mut cmd = portcullis(dir.path());
    cmd.args(["check", "--config", s(&cfg)]);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    let shown = out.stdout.join("\n");
    assert_eq!(
        out.stdout.len(),
        expected.len(),
        "one line per error, nothing else:\n{shown}"
    );
    for (line, (pos, msg)) in out.stdout.iter().zip(&expected) {
        let want = format!("{}:{pos}: {msg}", s(&cfg));
        assert!(
            line.starts_with(&want),
            "want {want:?}\n got {line:?}\nall:\n{shown}"
        );
    }
    assert!(
        out.stderr
            .contains(&format!("{}: {} error(s)", s(&cfg), expected.len())),
        "{}",
        out.stderr
    );
}

#[test]
fn check_yaml_syntax_errors_point_at_line_and_column() {
    let cases = [
        // A second `:` on one line.
        (
            "_format_version: \"3.0\"\nservices:\n  - name: a: b\n    url: http://x\n",
            ("name: a: b", ": b"),
            "mapping values are not allowed in this context",
        ),
        // A flow sequence closed by the wrong bracket: reported at the opener.
        (
            "_format_version: \"3.0\"\nservices:\n  - name: a\n    url: http://x\n    routes:\n      - paths: [/a}\n",
            ("paths: [/a}", "["),
            "mismatched bracket '[' closed by '}'",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, (line_has, token), msg)) in cases.iter().enumerate() {
        let cfg = write(dir.path(), &format!("syntax{i}.yaml"), text);
        let mut cmd = portcullis(dir.path());
        cmd.args(["check", "--config", s(&cfg)]);
        let out = finish(cmd);
        assert_eq!(out.code(), Some(1), "case {i}: {}", out.stderr);
        let pos = at(text, line_has, token);
        assert_eq!(out.stdout.len(), 1, "case {i}: {:?}", out.stdout);
        let line = &out.stdout[0];
        assert!(
            line.starts_with(&format!("{}:{pos}: ", s(&cfg))) && line.contains(msg),
            "case {i}: want {pos} {msg:?}, got {line:?}"
        );
    }
}

#[test]
fn check_takes_the_config_from_env_and_flag_wins() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yaml", VALID);
    let bad = write(dir.path(), "bad.yaml", BROKEN);
    let ok_line = |p: &Path| {
        format!(
            "{}: OK (2 services, 3 routes, 2 plugins, 1 consumers)",
            s(p)
        )
    };

    // PORTCULLIS_CONFIG
    let mut cmd = portcullis(dir.path());
    cmd.arg("check").env("PORTCULLIS_CONFIG", &good);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, vec![ok_line(&good)]);

    // KONG_DECLARATIVE_CONFIG, when PORTCULLIS_CONFIG is unset or empty
    for empty in [false, true] {
        let mut cmd = portcullis(dir.path());
        cmd.arg("check").env("KONG_DECLARATIVE_CONFIG", &good);
        if empty {
            cmd.env("PORTCULLIS_CONFIG", "");
        }
        let out = finish(cmd);
        assert_eq!(out.code(), Some(0), "empty={empty}: {}", out.stderr);
        assert_eq!(out.stdout, vec![ok_line(&good)]);
    }

    // PORTCULLIS_CONFIG beats KONG_DECLARATIVE_CONFIG
    let mut cmd = portcullis(dir.path());
    cmd.arg("check")
        .env("PORTCULLIS_CONFIG", &bad)
        .env("KONG_DECLARATIVE_CONFIG", &good);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1));
    assert!(out.stdout[0].starts_with(s(&bad)), "{:?}", out.stdout);

    // --config beats both
    let mut cmd = portcullis(dir.path());
    cmd.args(["check", "--config", s(&good)])
        .env("PORTCULLIS_CONFIG", &bad)
        .env("KONG_DECLARATIVE_CONFIG", &bad);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(0), "{:?}", out.stdout);
    assert_eq!(out.stdout, vec![ok_line(&good)]);

    // A file that cannot be read is an error at 1:1, not a crash.
    let missing = dir.path().join("missing.yaml");
    let mut cmd = portcullis(dir.path());
    cmd.args(["check", "--config", s(&missing)]);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr
            .starts_with(&format!("{}:1:1: cannot read the config file", s(&missing))),
        "{}",
        out.stderr
    );
}

#[test]
fn check_without_config_uses_cwd_gateway_yaml_else_the_embedded_one() {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = portcullis(empty.path());
    cmd.arg("check");
    let out = finish(cmd);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        vec!["<embedded gateway.yaml>: OK (2 services, 2 routes, 2 plugins, 0 consumers)"]
    );

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "gateway.yaml", VALID);
    let mut cmd = portcullis(dir.path());
    cmd.arg("check");
    let out = finish(cmd);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        vec!["gateway.yaml: OK (2 services, 3 routes, 2 plugins, 1 consumers)"]
    );
}

// ---------------------------------------------------------------------------------
// 2. Supabase's own files
// ---------------------------------------------------------------------------------

fn supabase_fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/supabase")
        .join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// What Supabase's kong-entrypoint.sh exports before the gateway reads kong.yml (the
/// legacy branch of its LUA_* expressions).
fn supabase_env(cmd: &mut GatewayBuilder) {
    for (k, v) in [
        ("SUPABASE_ANON_KEY", "eyJhbGciOiJIUzI1NiJ9.anon.sig"),
        ("SUPABASE_SERVICE_KEY", "eyJhbGciOiJIUzI1NiJ9.service.sig"),
        ("SUPABASE_PUBLISHABLE_KEY", "sb_publishable_test"),
        ("SUPABASE_SECRET_KEY", "sb_secret_test"),
        ("DASHBOARD_USERNAME", "supabase"),
        ("DASHBOARD_PASSWORD", "this_password_is_insecure"),
        (
            "LUA_AUTH_EXPR",
            "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' \
             and headers.authorization) or headers.apikey)",
        ),
        ("LUA_RT_WS_EXPR", "$(query_params.apikey)"),
        ("LUA_FUNCTIONS_EXPR", "$(nil)"),
        (
            "WELL_KNOWN_OAUTH_PATH",
            "/.well-known/oauth-authorization-server/auth/v1",
        ),
    ] {
        cmd.env(k, v);
    }
}

/// Both of Supabase's files, unmodified, pass `check` once their variables are set;
/// without them every `$NAME` is reported where it is used.
#[test]
fn supabase_fixtures_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    for (name, summary) in [
        (
            "kong.yml",
            "21 services, 21 routes, 45 plugins, 3 consumers",
        ),
        (
            "kong-legacy.yml",
            "15 services, 15 routes, 27 plugins, 3 consumers",
        ),
    ] {
        let path = supabase_fixture(name);
        let mut cmd = portcullis(dir.path());
        cmd.args(["check", "--config", s(&path)]);
        supabase_env(&mut cmd);
        let out = finish(cmd);
        assert_eq!(
            out.code(),
            Some(0),
            "{name}:\n{}\n{}",
            out.stdout.join("\n"),
            out.stderr
        );
        assert_eq!(out.stdout, vec![format!("{}: OK ({summary})", s(&path))]);
    }

    let path = supabase_fixture("kong-legacy.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut cmd = portcullis(dir.path());
    cmd.args(["check", "--config", s(&path)]);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let vars = [
        "SUPABASE_ANON_KEY",
        "SUPABASE_SERVICE_KEY",
        "DASHBOARD_USERNAME",
        "DASHBOARD_PASSWORD",
    ];
    assert_eq!(out.stdout.len(), vars.len(), "{:#?}", out.stdout);
    for (line, var) in out.stdout.iter().zip(vars) {
        let pos = at(&text, &format!("${var}"), &format!("${var}"));
        let want = format!(
            "{}:{pos}: environment variable '{var}' is not set",
            s(&path)
        );
        assert!(line.starts_with(&want), "want {want:?}\n got {line:?}");
    }
}

/// Supabase's compose names the file in KONG_DECLARATIVE_CONFIG; the gateway serves it.
/// The upstreams (auth:9999, rest:3000, ...) do not exist here, so only answers the
/// gateway gives by itself are checked.
#[tokio::test(flavor = "multi_thread")]
async fn supabase_fixture_runs_from_kong_declarative_config() {
    let path = supabase_fixture("kong.yml");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&[]))
        .env("KONG_DECLARATIVE_CONFIG", &path);
    supabase_env(&mut cmd);
    let mut g = start(cmd);
    let st = g.status_json().await;
    assert_eq!(st["config_file"], s(&path));
    assert_eq!(st["generation"], 1);

    // key-auth without a key.
    let r = get(g.addr(), "/rest/v1/todos?select=*").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "No API key found in request");
    // Blocked outright.
    for target in ["/realtime/v1/api/tenants", "/mcp", "/api/mcp"] {
        let r = get(g.addr(), target).await;
        assert_eq!(r.status, 403, "{target}");
        assert_eq!(
            r.json(),
            serde_json::json!({"message": "Access is forbidden."})
        );
    }
    // The dashboard catch-all asks for Basic credentials.
    let r = get(g.addr(), "/project/default").await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic realm=")),
        "{r:?}"
    );
    // A CORS preflight is answered before key-auth runs.
    let r = send(
        g.addr(),
        "OPTIONS",
        "/rest/v1/todos",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let mut logged = Vec::new();
    for _ in 0..6 {
        logged.push(parse_combined(&g.log_line().await).status);
    }
    assert_eq!(logged, [401, 403, 403, 403, 401, 200]);
}

/// Kong plugins Portcullis does not implement are refused at load, each at its name,
/// never skipped: a security plugin silently ignored would be an open door.
#[test]
fn unimplemented_kong_plugins_fail_closed_with_positions() {
    let text = r#"_format_version: "3.0"
services:
  - name: api
    url: http://127.0.0.1:9/
    routes:
      - paths: [/api]
        plugins:
          - name: jwt
    plugins:
      - name: response-ratelimiting
        config:
          limits: {sms: {minute: 5}}
plugins:
  - name: prometheus
"#;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "unsupported.yaml", text);
    let mut cmd = portcullis(dir.path());
    cmd.args(["check", "--config", s(&cfg)]);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let want: Vec<String> = ["jwt", "response-ratelimiting", "prometheus"]
        .iter()
        .map(|p| {
            format!(
                "{}:{}: plugin '{p}' is not supported by this version of Portcullis \
                 (refusing to load rather than skip it)",
                s(&cfg),
                at(text, &format!("name: {p}"), p)
            )
        })
        .collect();
    assert_eq!(out.stdout, want);

    // `run` refuses the same file and never opens a port.
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg)]));
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&want[0]), "{}", out.stderr);
    assert!(!out.stderr.contains("listening"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------
// 3. run on the embedded config
// ---------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn run_embedded_config_denies_by_default() {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = portcullis(empty.path());
    cmd.args(run_args(&[]));
    let mut g = start(cmd);

    for target in ["/mcp", "/mcp/tools/list?x=1", "/api/mcp", "/api/mcp/x"] {
        let r = get(g.addr(), target).await;
        assert_eq!(r.status, 403, "{target}");
        assert_eq!(
            r.json(),
            serde_json::json!({"message": "Access is forbidden."}),
            "{target}"
        );
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{target}"
        );
        g.log_line().await;
    }
    for target in ["/anything", "/", "/mcpx/../other"] {
        let r = get(g.addr(), target).await;
        assert_eq!(r.status, 404, "{target}");
        assert_eq!(r.json()["message"], "no Route matched with those values");
        g.log_line().await;
    }

    let health = get(g.status_addr(), "/health").await;
    assert_eq!(health.status, 200);
    let st = g.status_json().await;
    assert_eq!(st["generation"], 1);
    assert_eq!(st["config_file"], "<embedded gateway.yaml>");
    let embedded = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"));
    assert_eq!(st["config_hash"], sha256_hex(embedded));
    let hash = st["config_hash"].as_str().unwrap();
    assert!(
        hash.len() == 64
            && hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(st["last_reload_error"].is_null(), "{st}");
    let loaded_at = st["loaded_at"].as_str().unwrap();
    let re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$").unwrap();
    assert!(re.is_match(loaded_at), "{loaded_at}");
    assert_eq!(get(g.status_addr(), "/nope").await.status, 404);

    // SIGTERM drains and exits 0.
    let code = g.terminate();
    assert!(code.success(), "{code}");
    assert!(g.stderr_text().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_without_config_prefers_gateway_yaml_in_cwd() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let text = echo_config(up);
    write(dir.path(), "gateway.yaml", &text);
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--access-log", "off"]));
    let g = start(cmd);
    let r = get(g.addr(), "/echo/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/base/x");
    let st = g.status_json().await;
    assert_eq!(st["config_file"], "gateway.yaml");
    assert_eq!(st["config_hash"], sha256_hex(text.as_bytes()));
    // The embedded /mcp block is not there: this file has no such route.
    assert_eq!(get(g.addr(), "/mcp").await.status, 404);
}

// ---------------------------------------------------------------------------------
// 4. Flags and their environment twins
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn env_twins_configure_listeners_config_and_access_log() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "env.yaml", &echo_config(up));
    let mut cmd = portcullis(dir.path());
    cmd.arg("run")
        .env("PORTCULLIS_LISTEN", "127.0.0.1:0,127.0.0.1:0")
        .env("PORTCULLIS_STATUS_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_CONFIG", &cfg)
        .env("PORTCULLIS_ACCESS_LOG", "json");
    let mut g = start_expecting(cmd, 2, true);
    assert_ne!(g.proxy_addrs()[0], g.proxy_addrs()[1]);
    for addr in g.proxy_addrs().to_vec() {
        let r = get(addr, "/echo/a").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], "/base/a");
        let line = g.log_line().await;
        let j: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(j["route"], "echo-route");
    }
    assert_eq!(g.status_json().await["config_file"], s(&cfg));
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_win_over_env_twins() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "flag.yaml", &echo_config(up));
    let mut cmd = portcullis(dir.path());
    // Every env value here would stop the gateway (bad address, missing file) or
    // change its output (json): the flags must win.
    cmd.args(run_args(&["--config", s(&cfg), "--access-log", "combined"]))
        .env("PORTCULLIS_LISTEN", "not-an-address")
        .env("PORTCULLIS_STATUS_LISTEN", "not-an-address")
        .env("PORTCULLIS_CONFIG", dir.path().join("missing.yaml"))
        .env("KONG_DECLARATIVE_CONFIG", dir.path().join("missing.yaml"))
        .env("PORTCULLIS_ACCESS_LOG", "json")
        .env("PORTCULLIS_TRUSTED_IPS", "127.0.0.1")
        .env("PORTCULLIS_REAL_IP_HEADER", "x-client-addr")
        .args(["--trusted-ips", "10.0.0.0/8", "--real-ip-header", "x-other"]);
    let mut g = start(cmd);
    let r = send(
        g.addr(),
        "GET",
        "/echo/x",
        &[
            ("x-client-addr", "203.0.113.9"),
            ("x-other", "198.51.100.7"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    // 127.0.0.1 is not in --trusted-ips, so neither header is believed.
    assert_eq!(echoed(&r.json(), "x-real-ip").unwrap(), "127.0.0.1");
    let line = g.log_line().await;
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert_eq!(g.status_json().await["config_file"], s(&cfg));
}

#[tokio::test(flavor = "multi_thread")]
async fn kong_declarative_config_is_used_when_portcullis_config_is_unset() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let kong = write(dir.path(), "kong.yaml", &echo_config(up));
    let ours = write(
        dir.path(),
        "ours.yaml",
        &echo_config(up).replace("/echo]", "/ours]"),
    );

    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&[]))
        .env("KONG_DECLARATIVE_CONFIG", &kong);
    let g = start(cmd);
    assert_eq!(g.status_json().await["config_file"], s(&kong));
    assert_eq!(get(g.addr(), "/echo").await.status, 200);
    drop(g);

    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&[]))
        .env("KONG_DECLARATIVE_CONFIG", &kong)
        .env("PORTCULLIS_CONFIG", &ours);
    let g = start(cmd);
    assert_eq!(g.status_json().await["config_file"], s(&ours));
    assert_eq!(get(g.addr(), "/ours").await.status, 200);
    assert_eq!(get(g.addr(), "/echo").await.status, 404);
    drop(g);

    // An empty PORTCULLIS_CONFIG (how compose clears the image's default) is unset.
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&[]))
        .env("PORTCULLIS_CONFIG", "")
        .env("KONG_DECLARATIVE_CONFIG", &kong);
    let g = start(cmd);
    assert_eq!(g.status_json().await["config_file"], s(&kong));
    assert_eq!(get(g.addr(), "/echo").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn kong_trusted_ips_and_real_ip_header_are_honoured() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "ip.yaml", &echo_config(up));
    let real_ip = |r: &Resp| echoed(&r.json(), "x-real-ip").unwrap();

    // KONG_* twins: the peer (127.0.0.1) is trusted, so its header names the client.
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg)]))
        .env("KONG_TRUSTED_IPS", "10.0.0.0/8, 127.0.0.1/32")
        .env("KONG_REAL_IP_HEADER", "X-Client-Addr");
    let mut g = start(cmd);
    let r = send(
        g.addr(),
        "GET",
        "/echo",
        &[("x-client-addr", "203.0.113.9")],
        b"",
    )
    .await;
    assert_eq!(real_ip(&r), "203.0.113.9");
    let line = g.log_line().await;
    assert!(line.starts_with("203.0.113.9 - - ["), "{line}");
    // Without the header the peer address stands.
    let r = get(g.addr(), "/echo").await;
    assert_eq!(real_ip(&r), "127.0.0.1");
    drop(g);

    // PORTCULLIS_TRUSTED_IPS wins over KONG_TRUSTED_IPS: 127.0.0.1 is no longer trusted.
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg)]))
        .env("PORTCULLIS_TRUSTED_IPS", "10.0.0.0/8")
        .env("KONG_TRUSTED_IPS", "127.0.0.1")
        .env("KONG_REAL_IP_HEADER", "X-Client-Addr");
    let g = start(cmd);
    let r = send(
        g.addr(),
        "GET",
        "/echo",
        &[("x-client-addr", "203.0.113.9")],
        b"",
    )
    .await;
    assert_eq!(real_ip(&r), "127.0.0.1");
    drop(g);

    // PORTCULLIS_REAL_IP_RECURSIVE walks X-Forwarded-For past trusted hops.
    for (recursive, want) in [(false, "10.1.1.1"), (true, "198.51.100.1")] {
        let mut cmd = portcullis(dir.path());
        cmd.args(run_args(&["--config", s(&cfg)]))
            .env("PORTCULLIS_TRUSTED_IPS", "127.0.0.1,10.0.0.0/8")
            .env("PORTCULLIS_REAL_IP_HEADER", "X-Forwarded-For");
        if recursive {
            cmd.env("PORTCULLIS_REAL_IP_RECURSIVE", "true");
        }
        let g = start(cmd);
        let r = send(
            g.addr(),
            "GET",
            "/echo",
            &[("x-forwarded-for", "198.51.100.1, 10.1.1.1")],
            b"",
        )
        .await;
        assert_eq!(real_ip(&r), want, "recursive={recursive}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_off_keeps_the_status_listener() {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = portcullis(empty.path());
    cmd.args(["run", "--listen", "off", "--status-listen", "127.0.0.1:0"]);
    let g = start_expecting(cmd, 0, true);
    let r = get(g.status_addr(), "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(g.status_json().await["generation"], 1);
    assert!(!g.stderr_text().contains("proxy listening"));

    // And the env twin of "off".
    let mut cmd = portcullis(empty.path());
    cmd.args(["run", "--status-listen", "127.0.0.1:0"])
        .env("PORTCULLIS_LISTEN", "off");
    let g = start_expecting(cmd, 0, true);
    assert_eq!(get(g.status_addr(), "/health").await.status, 200);
    assert!(!g.stderr_text().contains("proxy listening"));
}

#[test]
fn bad_flag_values_are_refused_before_listening() {
    let empty = tempfile::tempdir().unwrap();
    struct Case {
        args: Vec<String>,
        env: Option<(&'static str, &'static str)>,
        stderr: &'static str,
    }
    let cases = [
        Case {
            args: run_args(&["--access-log", "xml"]),
            env: None,
            stderr: "--access-log: invalid access log format 'xml' (expected combined, json or off)",
        },
        Case {
            args: run_args(&[]),
            env: Some(("PORTCULLIS_ACCESS_LOG", "apache")),
            stderr: "invalid access log format 'apache'",
        },
        Case {
            args: vec!["run".into(), "--status-listen".into(), "127.0.0.1:0".into()],
            env: Some(("PORTCULLIS_LISTEN", "")),
            stderr: "--listen: no address given",
        },
        Case {
            args: run_args(&["--trusted-ips", "10.0.0.0/33"]),
            env: None,
            stderr: "--trusted-ips: ",
        },
        Case {
            args: run_args(&["--real-ip-header", "bad header"]),
            env: None,
            stderr: "--real-ip-header: invalid header name 'bad header'",
        },
        Case {
            args: run_args(&["--workers", "0"]),
            env: None,
            stderr: "--workers: '0' is not a number of workers between 1 and 1024 (or 'auto')",
        },
        Case {
            args: run_args(&[]),
            env: Some(("PORTCULLIS_WORKERS", "many")),
            stderr: "--workers: 'many' is not a number of workers",
        },
    ];
    for Case { args, env, stderr } in cases {
        let mut cmd = portcullis(empty.path());
        cmd.args(&args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = finish(cmd);
        assert_ne!(out.code(), Some(0), "{args:?} {env:?}");
        assert!(out.code().is_some(), "killed by a signal: {args:?}");
        assert!(
            out.stderr.contains(stderr),
            "{args:?} {env:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("listening"), "{}", out.stderr);
    }
}

#[test]
fn invalid_config_exits_1_with_positions_and_never_listens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "broken.yaml", BROKEN);
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg)]));
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let first = format!(
        "{}:{}: route 'r1': unknown field 'strip_paht'",
        s(&cfg),
        at(BROKEN, "strip_paht", "strip_paht")
    );
    assert!(out.stderr.contains(&first), "{}", out.stderr);
    let nope = format!(
        "{}:{}: invalid reference",
        s(&cfg),
        at(BROKEN, "service: nope", "nope")
    );
    assert!(out.stderr.contains(&nope), "{}", out.stderr);
    assert!(out.stderr.contains("not starting"), "{}", out.stderr);
    assert!(!out.stderr.contains("listening"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);

    // The same through the env twin.
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&[])).env("PORTCULLIS_CONFIG", &cfg);
    let out = finish(cmd);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&first), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------
// 5. Access log
// ---------------------------------------------------------------------------------

fn combined_re() -> regex::Regex {
    regex::Regex::new(
        r#"^(\S+) - (\S+) \[([^\]]+)\] "(\S+) (\S+) (HTTP/\d\.\d)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$"#,
    )
    .unwrap()
}

struct Combined {
    ip: String,
    user: String,
    time: String,
    method: String,
    target: String,
    version: String,
    status: u16,
    bytes: u64,
    referer: String,
    agent: String,
}

fn parse_combined(line: &str) -> Combined {
    let c = combined_re()
        .captures(line)
        .unwrap_or_else(|| panic!("not nginx combined: {line:?}"));
    let g = |i: usize| c[i].to_string();
    Combined {
        ip: g(1),
        user: g(2),
        time: g(3),
        method: g(4),
        target: g(5),
        version: g(6),
        status: g(7).parse().unwrap(),
        bytes: g(8).parse().unwrap(),
        referer: g(9),
        agent: g(10),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_combined_matches_nginx_format() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "log.yaml", &echo_config(up));
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg)]));
    let mut g = start(cmd);
    let time_re =
        regex::Regex::new(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}$").unwrap();

    // Proxied, with query, referer, agent and Basic credentials (alice:secret).
    let target = "/echo/a%20b?x=1&y=%2F&z";
    let r = send(
        g.addr(),
        "GET",
        target,
        &[
            ("referer", "https://app.example/page?q=1"),
            ("user-agent", "curl/8.5.0"),
            ("authorization", "Basic YWxpY2U6c2VjcmV0"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let l = parse_combined(&g.log_line().await);
    assert_eq!(l.ip, "127.0.0.1");
    assert_eq!(l.user, "alice");
    assert!(time_re.is_match(&l.time), "{}", l.time);
    assert_eq!(l.method, "GET");
    assert_eq!(l.target, target);
    assert_eq!(l.version, "HTTP/1.1");
    assert_eq!(l.status, 200);
    assert_eq!(l.bytes, r.body.len() as u64);
    assert!(l.bytes > 0);
    assert_eq!(l.referer, "https://app.example/page?q=1");
    assert_eq!(l.agent, "curl/8.5.0");

    // A POST with a body: the count is the response body, not the request.
    let r = send(g.addr(), "POST", "/echo/p", &[], &[b'x'; 5000]).await;
    assert_eq!(r.json()["body_len"], 5000);
    let l = parse_combined(&g.log_line().await);
    assert_eq!((l.method.as_str(), l.status), ("POST", 200));
    assert_eq!(l.bytes, r.body.len() as u64);
    assert_eq!(
        (l.user.as_str(), l.referer.as_str(), l.agent.as_str()),
        ("-", "-", "-")
    );

    // No route: 404, still one line with the error body's size.
    let r = send(
        g.addr(),
        "GET",
        "/nowhere?q=1",
        &[("user-agent", "evil\" agent")],
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    let line = g.log_line().await;
    let l = parse_combined(&line);
    assert_eq!(l.status, 404);
    assert_eq!(l.target, "/nowhere?q=1");
    assert_eq!(l.bytes, r.body.len() as u64);
    // A quote from the client cannot end the field early (nginx escapes it).
    assert_eq!(l.agent, "evil\\x22 agent");

    // An upstream error status is logged as the client saw it.
    let r = get(g.addr(), "/echo/status-418").await;
    let l = parse_combined(&g.log_line().await);
    assert_eq!((l.status, l.bytes), (418, r.body.len() as u64));
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_json_has_every_field() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "log.yaml", &echo_config(up));
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg), "--access-log", "json"]));
    let mut g = start(cmd);
    let time_re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").unwrap();
    let keys = [
        "bytes",
        "client_ip",
        "latency_ms",
        "method",
        "path",
        "request_id",
        "route",
        "service",
        "status",
        "time",
        "upstream_latency_ms",
    ];

    let r = send(g.addr(), "PUT", "/echo/j?k=v", &[], b"hello").await;
    assert_eq!(r.status, 200);
    let line = g.log_line().await;
    let j: serde_json::Value = serde_json::from_str(&line).expect(&line);
    let mut got: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, keys);
    assert!(time_re.is_match(j["time"].as_str().unwrap()), "{line}");
    assert_eq!(j["route"], "echo-route");
    assert_eq!(j["service"], "echo-svc");
    assert_eq!(j["method"], "PUT");
    assert_eq!(j["path"], "/echo/j?k=v");
    assert_eq!(j["status"], 200);
    assert_eq!(j["bytes"], r.body.len() as u64);
    assert!(j["latency_ms"].is_u64(), "{line}");
    assert!(j["upstream_latency_ms"].is_u64(), "{line}");
    assert!(j["latency_ms"].as_u64() >= j["upstream_latency_ms"].as_u64());
    assert_eq!(j["client_ip"], "127.0.0.1");
    assert_eq!(
        j["request_id"].as_str().unwrap(),
        r.header("x-kong-request-id").unwrap()
    );

    let r = get(g.addr(), "/nowhere").await;
    let line = g.log_line().await;
    let j: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(j["status"], 404);
    assert!(j["route"].is_null() && j["service"].is_null(), "{line}");
    assert!(j["upstream_latency_ms"].is_null(), "{line}");
    assert_eq!(j["bytes"], r.body.len() as u64);
    assert_eq!(
        j["request_id"].as_str().unwrap(),
        r.header("x-kong-request-id").unwrap()
    );
    // One object per line.
    assert_eq!(g.stdout_lines().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_off_writes_nothing() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "log.yaml", &echo_config(up));
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg), "--access-log", "off"]));
    let mut g = start(cmd);
    assert_eq!(get(g.addr(), "/echo").await.status, 200);
    assert_eq!(get(g.addr(), "/nowhere").await.status, 404);
    // Exit cleanly, then stdout is complete: nothing was written.
    assert!(g.terminate().success());
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && !g.stderr_text().contains("shutting down") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(g.stdout_lines().is_empty(), "{:?}", g.stdout_lines());
}

// ---------------------------------------------------------------------------------
// 6. Streaming 100 MiB each way with bounded memory
// ---------------------------------------------------------------------------------

const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];
const BIG: u64 = 100 * MIB;
/// Far below the 100 MiB that went through: nothing was buffered whole.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// `BIG` bytes as a stream of shared 64 KiB chunks: no 100 MiB buffer in the test either.
/// `produced` counts the bytes handed to hyper so far.
fn zeros_body(produced: Arc<AtomicU64>) -> portcullis::body::Body {
    let chunks = (BIG / CHUNK as u64) as usize;
    let stream = futures_util::stream::iter((0..chunks).map(move |_| {
        produced.fetch_add(CHUNK as u64, Ordering::Relaxed);
        Ok::<_, portcullis::body::BoxError>(hyper::body::Frame::data(Bytes::from_static(&ZEROS)))
    }));
    http_body_util::StreamBody::new(stream).boxed()
}

/// One request on a fresh HTTP/1.1 connection, with a bounded wait for the headers.
async fn open(
    addr: SocketAddr,
    req: http::Request<portcullis::body::Body>,
) -> http::Response<hyper::body::Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(BIG_WAIT, sender.send_request(req))
        .await
        .expect("response timed out")
        .expect("request failed")
}

/// Counts a response body frame by frame, bounded by `BIG_WAIT` overall.
async fn count_body(mut body: hyper::body::Incoming) -> u64 {
    let deadline = tokio::time::Instant::now() + BIG_WAIT;
    let mut n = 0u64;
    while let Some(f) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .expect("body timed out")
    {
        if let Some(d) = f.expect("body failed").data_ref() {
            n += d.len() as u64;
        }
    }
    n
}

/// Waits (bounded) until `produced` stops growing, and returns where it stopped.
async fn wait_stalled(produced: &AtomicU64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = produced.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = produced.load(Ordering::Relaxed);
        if a == b && b > 0 {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "the sender never stalled ({b} bytes)"
        );
    }
}

fn big_config(up: SocketAddr) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n  - name: big\n    url: http://{up}/\n    \
         read_timeout: 300000\n    write_timeout: 300000\n    routes:\n      - paths: [/big]\n"
    )
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn upload_100_mib_streams_through_with_small_rss() {
    // The upstream reads nothing until told to, then counts what arrives and answers
    // with the count.
    let go = Arc::new(tokio::sync::Notify::new());
    let go_up = Arc::clone(&go);
    let up = serve_upstream(move |req: http::Request<hyper::body::Incoming>| {
        let go = Arc::clone(&go_up);
        async move {
            go.notified().await;
            let n = count_body(req.into_body()).await;
            http::Response::new(portcullis::body::full(n.to_string()))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "big.yaml", &big_config(up));
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg), "--access-log", "off"]));
    let g = start(cmd);
    let before = g.peak_rss_kib();

    let produced = Arc::new(AtomicU64::new(0));
    let req = http::Request::post("/big/upload")
        .header("host", "localhost")
        .header("content-length", BIG)
        .body(zeros_body(Arc::clone(&produced)))
        .unwrap();
    let addr = g.addr();
    let exchange = tokio::spawn(async move {
        let resp = open(addr, req).await;
        assert_eq!(resp.status(), 200);
        tokio::time::timeout(BIG_WAIT, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes()
    });

    // Backpressure: with the upstream not reading, the client soon cannot send more.
    let stalled_at = wait_stalled(&produced).await;
    println!(
        "upload: client stalled after {:.1} MiB with the upstream not reading",
        stalled_at as f64 / MIB as f64
    );
    assert!(
        stalled_at < BIG / 2,
        "{stalled_at} bytes taken ahead of the upstream"
    );
    go.notify_one();

    let text = tokio::time::timeout(BIG_WAIT, exchange)
        .await
        .expect("upload timed out")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&text), BIG.to_string());

    let peak = g.peak_rss_kib();
    println!(
        "upload 100 MiB: gateway VmHWM {peak} KiB ({:.1} MiB), {before} KiB before",
        peak as f64 / 1024.0
    );
    assert!(peak < RSS_LIMIT_KIB, "gateway peak RSS {peak} KiB");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn download_100_mib_streams_through_with_small_rss() {
    let produced = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&produced);
    let up = serve_upstream(move |_req: http::Request<hyper::body::Incoming>| {
        let counter = Arc::clone(&counter);
        async move {
            http::Response::builder()
                .header("content-type", "application/octet-stream")
                .header("content-length", BIG)
                .body(zeros_body(counter))
                .unwrap()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "big.yaml", &big_config(up));
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg)]));
    let mut g = start(cmd);
    let before = g.peak_rss_kib();

    let req = http::Request::get("/big/download")
        .header("host", "localhost")
        .body(portcullis::body::empty())
        .unwrap();
    let resp = open(g.addr(), req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], BIG.to_string().as_str());

    // Backpressure: while the client reads nothing, the upstream soon cannot send
    // more (socket buffers full on both hops); a gateway that buffered for a slow
    // client would let it run to the end.
    let stalled_at = wait_stalled(&produced).await;
    println!(
        "download: upstream stalled after {:.1} MiB with the client not reading",
        stalled_at as f64 / MIB as f64
    );
    assert!(
        stalled_at < BIG / 2,
        "{stalled_at} bytes sent ahead of the client"
    );

    let n = count_body(resp.into_body()).await;
    assert_eq!(n, BIG);

    // The access log counts what was sent.
    let l = parse_combined(&g.log_line().await);
    assert_eq!((l.status, l.bytes), (200, BIG));

    let peak = g.peak_rss_kib();
    println!(
        "download 100 MiB: gateway VmHWM {peak} KiB ({:.1} MiB), {before} KiB before",
        peak as f64 / 1024.0
    );
    assert!(peak < RSS_LIMIT_KIB, "gateway peak RSS {peak} KiB");
}

// ---------------------------------------------------------------------------------
// Worker threads
// ---------------------------------------------------------------------------------

/// The names of a process's threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc/PID/task")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// The names of the process's worker threads once `n` of them have started: "listening"
/// is logged when the sockets are bound, and each thread names itself as it starts.
fn worker_threads(pid: u32, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let workers: Vec<String> = thread_names(pid)
            .into_iter()
            .filter(|n| n.starts_with("portcullis-w"))
            .collect();
        if workers.len() >= n || std::time::Instant::now() > deadline {
            return workers;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_share_the_port_and_serve_every_connection() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "gw.yaml", &echo_config(up));
    let mut cmd = portcullis(dir.path());
    cmd.args(run_args(&["--config", s(&cfg), "--workers", "3"]));
    let mut g = start(cmd);
    // One listening line for the address, naming the workers; one thread each.
    let text = g.stderr_text();
    assert_eq!(text.matches("proxy listening").count(), 1, "{text}");
    assert!(text.contains("workers=3"), "{text}");
    let workers = worker_threads(g.pid(), 3);
    assert_eq!(workers, ["portcullis-w0", "portcullis-w1", "portcullis-w2"]);

    // Many connections at once: the kernel spreads them over the three sockets, and
    // every one is answered through the upstream.
    let addr = g.addr();
    let mut tasks = Vec::new();
    for i in 0..48 {
        tasks.push(tokio::spawn(async move {
            let r = get(addr, &format!("/echo/c{i}")).await;
            (r.status, r.json())
        }));
    }
    for t in tasks {
        let (status, j) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(j["path"].as_str().unwrap().starts_with("/base/c"), "{j}");
    }
    for _ in 0..48 {
        g.log_line().await;
    }
    let code = g.terminate();
    assert!(code.success(), "{code}");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_default_to_the_cores_the_process_may_use() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "gw.yaml", &echo_config(up));
    let mut cmd = portcullis(dir.path());
    // An empty value counts as unset, like every PORTCULLIS_* variable.
    cmd.env("PORTCULLIS_WORKERS", "");
    cmd.args(run_args(&["--config", s(&cfg)]));
    let g = start(cmd);
    let cores = std::thread::available_parallelism().unwrap().get();
    let text = g.stderr_text();
    assert!(text.contains(&format!("workers={cores}")), "{text}");
    let workers = worker_threads(g.pid(), cores).len();
    assert_eq!(workers, cores);
    assert_eq!(get(g.addr(), "/echo/x").await.status, 200);
}
