//! rate-limiting, black box: Kong's headers and verdicts, fixed UTC windows, every
//! `limit_by`, scopes and precedence, reloads keeping counters, config errors; the
//! redis policy on a real `redis-server` (stopped and restarted under fault_tolerant
//! true and false, batching with sync_rate), and three gateway processes sharing one
//! YAML and one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::GatewayProcess;
use common::*;
use portcullis::proxy::Settings;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ------------------------------------------------------------------ helpers

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Makes sure at least `need` seconds are left in the current window of `len`
/// seconds, waiting for the next window to start otherwise (at most `need` seconds),
/// so a test's requests all fall into one window.
async fn window_with_room(len: u64, need: u64) {
    assert!(need < len);
    let left = len - now_secs() % len;
    if left < need {
        let start = now_secs() + left;
        let deadline = Instant::now() + Duration::from_secs(left + 2);
        while now_secs() < start {
            assert!(Instant::now() < deadline, "clock did not advance");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn remaining(r: &Resp, period: &str) -> Option<u64> {
    r.header(&format!("x-ratelimit-remaining-{period}"))
        .map(|v| v.parse().unwrap())
}

async fn get_h(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, "GET", target, headers, b"").await
}

fn yaml_with(up: SocketAddr, plugin_config: &str) -> String {
    format!(
        "_format_version: \"3.0\"
services:
  - name: s
    url: http://{up}/
    routes:
      - name: r
        paths: [/]
    plugins:
      - name: rate-limiting
        config:
{plugin_config}"
    )
}

fn trusting_loopback() -> Settings {
    Settings {
        trusted_ips: portcullis::ipset::IpSet::parse(&["127.0.0.1"]).unwrap(),
        ..Settings::default()
    }
}

// ------------------------------------------------------------------ Redis

/// A real `redis-server` on a free loopback port, with its own directory; killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn redis_binary() -> &'static str {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "redis-server is not installed: these tests need Debian's package redis-server (apt-get install -y redis-server; scripts/test installs it)"
    );
    "redis-server"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Redis {
    /// Picks a free port (bind 127.0.0.1:0, release), retrying when redis-server
    /// loses the race for it.
    fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
        };
        for _ in 0..10 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start on a free port after 10 tries");
    }

    /// Starts redis-server on `self.port`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new(redis_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if ping(self.port) {
                return true;
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} not answering after {WAIT:?}",
            self.port
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + WAIT;
        while ping(self.port) {
            assert!(Instant::now() < deadline, "redis still answering");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same port (the gateway's config names it).
    fn restart(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "cannot restart redis-server on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap()
    }

    async fn keys(&self, pattern: &str) -> Vec<(String, i64)> {
        let mut c = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap();
        let mut out = Vec::new();
        for k in keys {
            let v: i64 = redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
            out.push((k, v));
        }
        out.sort();
        out
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------ local policy

#[tokio::test]
async fn kong_headers_and_rejection() {
    let up = echo_upstream().await;
    let g = gateway(&yaml_with(up, "          minute: 6\n")).await;
    window_with_room(60, 15).await;
    let mut seen = Vec::new();
    for i in 0..7 {
        let r = get(g.addr, "/").await;
        seen.push((r.status.as_u16(), remaining(&r, "minute").unwrap()));
        assert_eq!(r.header("x-ratelimit-limit-minute").unwrap(), "6");
        assert_eq!(r.header("ratelimit-limit").unwrap(), "6");
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
        if i < 6 {
            assert_eq!(r.json()["path"], "/", "proxied");
            assert!(r.header("retry-after").is_none());
        } else {
            assert_eq!(r.header("retry-after").unwrap(), reset.to_string());
            assert_eq!(
                r.header("content-type").unwrap(),
                "application/json; charset=utf-8"
            );
            let j = r.json();
            assert_eq!(j["message"], "API rate limit exceeded");
            assert_eq!(
                j["request_id"].as_str().unwrap(),
                r.header("x-kong-request-id").unwrap()
            );
        }
    }
    assert_eq!(
        seen,
        vec![
            (200, 5),
            (200, 4),
            (200, 3),
            (200, 2),
            (200, 1),
            (200, 0),
            (429, 0)
        ]
    );
    // Kong's content negotiation on the error body.
    let r = get_h(g.addr, "/", &[("accept", "text/plain")]).await;
    assert_eq!(r.status, 429);
    assert!(
        r.text()
            .starts_with("API rate limit exceeded\nrequest_id: "),
        "{}",
        r.text()
    );
    // HEAD: no body.
    let r = send(g.addr, "HEAD", "/", &[], b"").await;
    assert_eq!(r.status, 429);
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn several_periods_custom_error_and_hidden_headers() {
    let up = echo_upstream().await;
    let g = gateway(&yaml_with(
        up,
        "          minute: 3\n          hour: 5\n          day: 5\n          error_code: 418\n          error_message: slow down\n",
    ))
    .await;
    window_with_room(60, 15).await;
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r, "minute"), Some(2));
    assert_eq!(remaining(&r, "hour"), Some(4));
    assert_eq!(remaining(&r, "day"), Some(4));
    assert_eq!(r.header("x-ratelimit-limit-hour").unwrap(), "5");
    // The period with the least remaining: the minute.
    assert_eq!(r.header("ratelimit-limit").unwrap(), "3");
    assert_eq!(r.header("ratelimit-remaining").unwrap(), "2");
    get(g.addr, "/").await;
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r, "minute"), Some(0));
    assert_eq!(remaining(&r, "hour"), Some(2));
    let r = get(g.addr, "/").await;
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.json()["message"], "slow down");
    // The stopping period loses one more; the others show what is left.
    assert_eq!(remaining(&r, "minute"), Some(0));
    assert_eq!(remaining(&r, "hour"), Some(2));
    assert_eq!(r.header("ratelimit-limit").unwrap(), "3");
    assert!(r.header("retry-after").is_some());

    // hide_client_headers: the same verdicts, no headers but Retry-After.
    let up = echo_upstream().await;
    let g = gateway(&yaml_with(
        up,
        "          minute: 1\n          hide_client_headers: true\n",
    ))
    .await;
    window_with_room(60, 15).await;
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers.keys().all(|k| !k.as_str().contains("ratelimit")),
        "{:?}",
        r.headers
    );
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 429);
    assert!(r.headers.keys().all(|k| !k.as_str().contains("ratelimit")));
    let reset: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset));
}

#[tokio::test]
async fn fixed_windows_start_over_on_the_utc_second() {
    let up = echo_upstream().await;
    let g = gateway(&yaml_with(
        up,
        "          second: 2\n          minute: 100\n",
    ))
    .await;
    window_with_room(60, 20).await;
    let mut admitted = 0;
    // Each try starts right after a second begins; a slow machine may still cross a
    // boundary mid-try, which is detected and the try repeated (three at most).
    for _ in 0..3 {
        let start = now_secs();
        while now_secs() == start {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = now_secs();
        let mut statuses = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let r = get(g.addr, "/").await;
            statuses.push(r.status.as_u16());
            admitted += usize::from(r.status == 200);
            last = Some(r);
        }
        if now_secs() != s {
            continue;
        }
        let c = last.unwrap();
        assert_eq!(statuses, vec![200, 200, 429]);
        assert_eq!(c.header("retry-after").unwrap(), "1");
        // The exhausted second is the period RateLimit-* reports.
        assert_eq!(c.header("ratelimit-limit").unwrap(), "2");
        // Next second: allowed again; the rejected request was not counted.
        while now_secs() == s {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let d = get(g.addr, "/").await;
        assert_eq!(d.status, 200);
        admitted += 1;
        assert_eq!(remaining(&d, "minute"), Some(100 - admitted as u64));
        return;
    }
    panic!("could not fit three requests into one second, three times");
}

#[tokio::test]
async fn identifiers_for_every_limit_by() {
    let up = echo_upstream().await;
    let consumers = "consumers:
  - username: alice
    keyauth_credentials: [{key: alice-key}]
  - username: bob
    keyauth_credentials: [{key: bob-key}]
";
    let rl = |by: &str, extra: &str| {
        format!(
            "      - name: rate-limiting\n        config: {{minute: 2, limit_by: {by}{extra}}}\n"
        )
    };
    let yaml = format!(
        "_format_version: \"3.0\"
{consumers}services:
  - name: by-ip
    url: http://{up}/
    routes: [{{name: ip, paths: [/ip]}}]
    plugins:
{ip}  - name: by-header
    url: http://{up}/
    routes: [{{name: header, paths: [/header]}}]
    plugins:
{header}  - name: by-path
    url: http://{up}/
    routes: [{{name: path, paths: [/path]}}]
    plugins:
{path}  - name: by-consumer
    url: http://{up}/
    routes: [{{name: consumer, paths: [/consumer]}}]
    plugins:
      - name: key-auth
        config: {{anonymous: null}}
{consumer}  - name: by-credential
    url: http://{up}/
    routes: [{{name: credential, paths: [/credential]}}]
    plugins:
      - name: key-auth
{credential}  - name: by-service
    url: http://{up}/
    routes: [{{name: svc-a, paths: [/svc-a]}}, {{name: svc-b, paths: [/svc-b]}}]
    plugins:
{service}routes:
  - name: serviceless
    paths: [/none]
    plugins:
{service_none}      - name: request-termination
        config: {{status_code: 200, message: ok}}
",
        ip = rl("ip", ""),
        header = rl("header", ", header_name: x-tenant"),
        path = rl("path", ", path: /path/exact"),
        consumer = rl("consumer", ""),
        credential = rl("credential", ""),
        service = rl("service", ""),
        service_none = rl("service", ""),
    );
    let g = gateway_with(&yaml, trusting_loopback(), "127.0.0.1:0").await;
    window_with_room(60, 20).await;
    let status = |r: Resp| r.status.as_u16();
    let ip = |a: &'static str| [("x-real-ip", a)];

    // ip: each client address has its own counter.
    for _ in 0..2 {
        assert_eq!(status(get_h(g.addr, "/ip", &ip("10.0.0.1")).await), 200);
    }
    assert_eq!(status(get_h(g.addr, "/ip", &ip("10.0.0.1")).await), 429);
    assert_eq!(status(get_h(g.addr, "/ip", &ip("10.0.0.2")).await), 200);

    // header: per value; absent → the client IP.
    let t = |v: &'static str, a: &'static str| [("x-tenant", v), ("x-real-ip", a)];
    for _ in 0..2 {
        assert_eq!(
            status(get_h(g.addr, "/header", &t("acme", "10.0.0.1")).await),
            200
        );
    }
    assert_eq!(
        status(get_h(g.addr, "/header", &t("acme", "10.0.0.9")).await),
        429
    );
    assert_eq!(
        status(get_h(g.addr, "/header", &t("other", "10.0.0.1")).await),
        200
    );
    for _ in 0..2 {
        assert_eq!(status(get_h(g.addr, "/header", &ip("10.0.0.3")).await), 200);
    }
    assert_eq!(status(get_h(g.addr, "/header", &ip("10.0.0.3")).await), 429);
    assert_eq!(status(get_h(g.addr, "/header", &ip("10.0.0.4")).await), 200);

    // path: the configured path shares one counter whoever asks; others by IP.
    assert_eq!(
        status(get_h(g.addr, "/path/exact", &ip("10.0.0.1")).await),
        200
    );
    assert_eq!(
        status(get_h(g.addr, "/path/exact", &ip("10.0.0.2")).await),
        200
    );
    assert_eq!(
        status(get_h(g.addr, "/path/exact", &ip("10.0.0.3")).await),
        429
    );
    assert_eq!(
        status(get_h(g.addr, "/path/other", &ip("10.0.0.3")).await),
        200
    );

    // consumer: per consumer, whatever the address.
    let k = |key: &'static str, a: &'static str| [("apikey", key), ("x-real-ip", a)];
    assert_eq!(
        status(get_h(g.addr, "/consumer", &k("alice-key", "10.0.0.1")).await),
        200
    );
    assert_eq!(
        status(get_h(g.addr, "/consumer", &k("alice-key", "10.0.0.2")).await),
        200
    );
    assert_eq!(
        status(get_h(g.addr, "/consumer", &k("alice-key", "10.0.0.3")).await),
        429
    );
    assert_eq!(
        status(get_h(g.addr, "/consumer", &k("bob-key", "10.0.0.3")).await),
        200
    );

    // credential: per credential.
    assert_eq!(
        status(get_h(g.addr, "/credential", &k("bob-key", "10.0.0.1")).await),
        200
    );
    assert_eq!(
        status(get_h(g.addr, "/credential", &k("bob-key", "10.0.0.2")).await),
        200
    );
    assert_eq!(
        status(get_h(g.addr, "/credential", &k("bob-key", "10.0.0.3")).await),
        429
    );
    assert_eq!(
        status(get_h(g.addr, "/credential", &k("alice-key", "10.0.0.3")).await),
        200
    );

    // service: both routes of the service share one counter.
    assert_eq!(status(get_h(g.addr, "/svc-a", &ip("10.0.0.1")).await), 200);
    assert_eq!(status(get_h(g.addr, "/svc-b", &ip("10.0.0.2")).await), 200);
    assert_eq!(status(get_h(g.addr, "/svc-a", &ip("10.0.0.3")).await), 429);
    // ...and a serviceless route falls back to the client IP.
    assert_eq!(status(get_h(g.addr, "/none", &ip("10.0.0.1")).await), 200);
    assert_eq!(status(get_h(g.addr, "/none", &ip("10.0.0.1")).await), 200);
    assert_eq!(status(get_h(g.addr, "/none", &ip("10.0.0.1")).await), 429);
    assert_eq!(status(get_h(g.addr, "/none", &ip("10.0.0.2")).await), 200);
}

#[tokio::test]
async fn scopes_and_kong_precedence() {
    let up = echo_upstream().await;
    let rl = |scope: &str, n: u32| {
        format!("  - {{name: rate-limiting, {scope}config: {{hour: {n}, limit_by: ip}}}}\n")
    };
    let yaml = format!(
        "_format_version: \"3.0\"
consumers:
  - username: alice
    keyauth_credentials: [{{key: alice-key}}]
  - username: bob
    keyauth_credentials: [{{key: bob-key}}]
  - username: anon
services:
  - name: s1
    url: http://{up}/
    routes:
      - {{name: r1, paths: [/r1]}}
      - {{name: r2, paths: [/r2]}}
  - name: s2
    url: http://{up}/
    routes: [{{name: r3, paths: [/r3]}}]
plugins:
  - {{name: key-auth, config: {{anonymous: anon}}}}
{}{}{}{}{}{}",
        rl("", 10),
        rl("service: s1, ", 20),
        rl("route: r1, ", 30),
        rl("consumer: alice, ", 40),
        rl("consumer: bob, route: r1, ", 50),
        rl("consumer: bob, service: s1, ", 60),
    );
    let g = gateway(&yaml).await;
    window_with_room(3600, 30).await;
    let limit = |r: &Resp| r.header("x-ratelimit-limit-hour").unwrap();
    let key = |k: &'static str| [("apikey", k)];
    // Global only.
    assert_eq!(limit(&get(g.addr, "/r3").await), "10");
    // Service beats global; route beats service.
    assert_eq!(limit(&get(g.addr, "/r2").await), "20");
    assert_eq!(limit(&get(g.addr, "/r1").await), "30");
    // Consumer beats route (alice has only a consumer-scoped entry).
    assert_eq!(limit(&get_h(g.addr, "/r1", &key("alice-key")).await), "40");
    assert_eq!(limit(&get_h(g.addr, "/r3", &key("alice-key")).await), "40");
    // Route+consumer beats service+consumer; service+consumer applies elsewhere.
    assert_eq!(limit(&get_h(g.addr, "/r1", &key("bob-key")).await), "50");
    assert_eq!(limit(&get_h(g.addr, "/r2", &key("bob-key")).await), "60");
    // Anonymous consumer: no consumer-scoped entry for it.
    assert_eq!(limit(&get(g.addr, "/r1").await), "30");
    // Each entry counts on its own: /r1 without a key was asked twice.
    let r = get(g.addr, "/r1").await;
    assert_eq!(remaining(&r, "hour"), Some(27));
}

#[tokio::test]
async fn reload_keeps_counters_unless_the_plugin_changes() {
    let up = echo_upstream().await;
    let plugin = |hour: u32| format!("          hour: {hour}\n          limit_by: ip\n");
    let g = gateway(&yaml_with(up, &plugin(10))).await;
    let path = g.dir.path().join("gateway.yaml");
    window_with_room(3600, 30).await;
    for _ in 0..3 {
        get(g.addr, "/").await;
    }
    // An unrelated change: a new route elsewhere. The counter goes on (3 used).
    let changed = format!(
        "{}  - name: other\n    url: http://{up}/\n    routes: [{{paths: [/other]}}]\n",
        yaml_with(up, &plugin(10))
    );
    std::fs::write(&path, &changed).unwrap();
    let out = portcullis::reload::reload(&g.gw, &path).unwrap();
    assert!(
        matches!(out, portcullis::reload::Outcome::Reloaded(2)),
        "{out:?}"
    );
    let r = get(g.addr, "/").await;
    assert_eq!(
        remaining(&r, "hour"),
        Some(6),
        "counter kept across the reload"
    );
    // Changing the plugin's config starts its counters afresh.
    std::fs::write(&path, changed.replace("hour: 10", "hour: 12")).unwrap();
    portcullis::reload::reload(&g.gw, &path).unwrap();
    let r = get(g.addr, "/").await;
    assert_eq!(remaining(&r, "hour"), Some(11), "new config, new counters");
}

#[test]
fn config_errors_are_positioned() {
    let check = |config: &str| -> String {
        let yaml = format!(
            "_format_version: \"3.0\"\nplugins:\n  - name: rate-limiting\n    config:\n{config}"
        );
        match portcullis::config::load_config("rl.yaml", &yaml) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(
        check("      minute: 5\n      policy: cluster\n"),
        "rl.yaml:6:15: plugin 'rate-limiting'.config.policy: 'cluster' keeps counters in Kong's database, which a DB-less gateway does not have; use 'local' or 'redis'"
    );
    assert_eq!(
        check("      minute: 10\n      hour: 5\n"),
        "rl.yaml:6:7: plugin 'rate-limiting'.config: The limit for hour(5.0) cannot be lower than the limit for minute(10.0)"
    );
    assert!(
        check("      limit_by: ip\n").contains(
            "rl.yaml:5:7: plugin 'rate-limiting'.config: at least one of these fields must be non-empty: 'config.second', 'config.minute'"
        ),
        "{}",
        check("      limit_by: ip\n")
    );
    assert!(check("      minute: 5\n      limit_by: header\n").contains("No header name provided"));
    assert!(check("      minute: 5\n      limit_by: path\n").contains("No path provided"));
    assert!(check("      minute: 0\n").contains(
        "rl.yaml:5:15: plugin 'rate-limiting'.config.minute: value must be greater than 0"
    ));
    assert!(check("      minute: 5\n      policy: redis\n").contains("'redis' needs redis.host"));
    assert!(
        check("      minute: 5\n      colour: red\n")
            .contains("rl.yaml:6:7: plugin 'rate-limiting'.config: unknown field 'colour'")
    );
    assert!(
        check("      minute: 5\n      redis: {host: r, prot: 1}\n")
            .contains("unknown field 'prot'")
    );
    // Every field of Kong's schema, and the legacy flat redis_* fields.
    assert_eq!(
        check(
            "      second: 1\n      minute: 2\n      hour: 3\n      day: 4\n      month: 5\n      year: 6
      limit_by: header\n      header_name: x-tenant\n      path: /p\n      policy: redis
      fault_tolerant: false\n      hide_client_headers: true\n      error_code: 503
      error_message: busy\n      sync_rate: -1
      redis: {host: redis.internal, port: 6380, username: u, password: p, database: 2, timeout: 500, ssl: false, ssl_verify: false, server_name: redis.internal}
"
        ),
        ""
    );
    assert_eq!(
        check(
            "      minute: 2\n      policy: redis\n      redis_host: r\n      redis_port: 6380\n      redis_password: p
      redis_username: u\n      redis_database: 1\n      redis_timeout: 100\n      redis_ssl: true
      redis_ssl_verify: true\n      redis_server_name: r\n"
        ),
        ""
    );
}

#[tokio::test]
async fn distinct_identifiers_counted_concurrently() {
    // Many clients at once on the sharded counters: each identifier counted once per
    // request, none lost. (The memory bound itself is a unit test in the plugin.)
    let up = echo_upstream().await;
    let g = gateway_with(
        &yaml_with(
            up,
            "          hour: 1000\n          limit_by: header\n          header_name: x-id\n",
        ),
        Settings::default(),
        "127.0.0.1:0",
    )
    .await;
    let snap = g.gw.snapshot.load_full();
    let portcullis::plugins::Plugin::RateLimiting(p) = &*snap.config.plugins[0].plugin else {
        panic!("not rate-limiting");
    };
    window_with_room(3600, 30).await;
    let mut handles = Vec::new();
    for t in 0..8u32 {
        let addr = g.addr;
        handles.push(tokio::spawn(async move {
            for i in 0..300u32 {
                let id = format!("{t}-{i}");
                let r = get_h(addr, "/", &[("x-id", id.as_str())]).await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(p.state().identifiers(), 2400);
    let r = get_h(g.addr, "/", &[("x-id", "3-7")]).await;
    assert_eq!(remaining(&r, "hour"), Some(998));
}

// ------------------------------------------------------------------ redis policy

fn redis_yaml(up: SocketAddr, port: u16, extra: &str) -> String {
    yaml_with(
        up,
        &format!(
            "          policy: redis\n          limit_by: ip\n          redis: {{host: 127.0.0.1, port: {port}, timeout: 300}}\n{extra}"
        ),
    )
}

#[tokio::test]
async fn redis_policy_counts_in_redis_with_scoped_keys() {
    let redis = Redis::start();
    let up = echo_upstream().await;
    let g = gateway(&redis_yaml(
        up,
        redis.port,
        "          minute: 5\n          hour: 100\n",
    ))
    .await;
    window_with_room(60, 15).await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = get(g.addr, "/").await;
        statuses.push((r.status.as_u16(), remaining(&r, "minute").unwrap()));
    }
    assert_eq!(
        statuses,
        vec![
            (200, 4),
            (200, 3),
            (200, 2),
            (200, 1),
            (200, 0),
            (429, 0),
            (429, 0)
        ]
    );
    // Keys: the plugin's scope (route id, service id, consumer), the identifier, the
    // window start and the period; only admitted requests counted.
    let keys = redis.keys("portcullis:ratelimit:*").await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let snap = g.gw.snapshot.load_full();
    let service_id = &snap.config.services[0].id;
    let minute = now_secs() / 60 * 60;
    let want = format!("portcullis:ratelimit:-:{service_id}:-:127.0.0.1:{minute}:minute");
    assert!(keys.contains(&(want.clone(), 5)), "{want} not in {keys:?}");
    assert!(keys.iter().any(|(k, v)| k.ends_with(":hour") && *v == 5));
}

#[tokio::test]
async fn fault_tolerant_passes_while_redis_is_down_and_recovers() {
    let mut redis = Redis::start();
    let up = echo_upstream().await;
    let g = gateway(&redis_yaml(up, redis.port, "          hour: 1000\n")).await;
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r, "hour"), Some(999));

    redis.stop();
    for _ in 0..5 {
        let r = get(g.addr, "/").await;
        assert_eq!(r.status, 200, "fault_tolerant lets the request through");
        assert!(
            r.header("x-ratelimit-limit-hour").is_none(),
            "no headers when uncounted"
        );
    }
    let metrics = g.gw.metrics.render(1);
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_ratelimit_redis_errors_total "))
        .expect("the Redis error metric")
        .parse()
        .unwrap();
    assert!(errors >= 5, "{errors} errors counted\n{metrics}");

    redis.restart();
    // Picked up without a restart of the gateway; nothing was counted meanwhile
    // (the restarted Redis is empty, and so would an unchanged one be).
    let deadline = Instant::now() + WAIT;
    loop {
        let r = get(g.addr, "/").await;
        assert_eq!(r.status, 200);
        if let Some(left) = remaining(&r, "hour") {
            assert_eq!(left, 999);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis not used again after its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn not_fault_tolerant_answers_500_while_redis_is_down() {
    let mut redis = Redis::start();
    let up = echo_upstream().await;
    let g = gateway(&redis_yaml(
        up,
        redis.port,
        "          hour: 1000\n          fault_tolerant: false\n",
    ))
    .await;
    assert_eq!(get(g.addr, "/").await.status, 200);
    redis.stop();
    let r = get(g.addr, "/").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["message"], "An unexpected error occurred");
    let r = get_h(g.addr, "/", &[("accept", "text/html")]).await;
    assert_eq!(r.status, 500);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));

    redis.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let r = get(g.addr, "/").await;
        if r.status == 200 {
            assert_eq!(remaining(&r, "hour"), Some(999));
            break;
        }
        assert_eq!(r.status, 500);
        assert!(
            Instant::now() < deadline,
            "Redis not used again after its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_timeout_is_honoured() {
    // A Redis that accepts connections and never answers (a plain TCP listener).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept() {
            conns.push(c);
            if conns.len() > 20 {
                break;
            }
        }
    });
    let up = echo_upstream().await;
    let g = gateway(&redis_yaml(up, port, "          hour: 10\n")).await;
    let t = Instant::now();
    let r = get(g.addr, "/").await;
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-limit-hour").is_none());
    assert!(
        took < Duration::from_secs(3),
        "redis.timeout 300 ms not honoured: {took:?}"
    );
    drop(hold);
}

#[tokio::test]
async fn sync_rate_batches_increments() {
    let redis = Redis::start();
    let up = echo_upstream().await;
    let g = gateway(&redis_yaml(
        up,
        redis.port,
        "          hour: 4\n          sync_rate: 0.2\n",
    ))
    .await;
    window_with_room(3600, 20).await;
    // Counted locally between syncs: the replica enforces its own count at once.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(get(g.addr, "/").await.status.as_u16());
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 200, 200, 429, 429]);
    // ...and pushed to Redis within a sync interval.
    let deadline = Instant::now() + WAIT;
    loop {
        let keys = redis.keys("portcullis:ratelimit:*").await;
        if keys.iter().any(|(k, v)| k.ends_with(":hour") && *v == 4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "increments never reached Redis: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second gateway on the same scope and Redis (another replica, with a higher
    // limit): it starts from the shared total after its first sync.
    let g2 = gateway(&redis_yaml(
        up,
        redis.port,
        "          hour: 6\n          sync_rate: 0.2\n",
    ))
    .await;
    let r = get(g2.addr, "/").await;
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = get(g2.addr, "/").await;
        if r.status == 429 {
            break;
        }
        assert!(Instant::now() < deadline, "the shared total was never seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ replicas

/// A `portcullis run` process configured through the environment, killed on drop.
struct Replica {
    addr: SocketAddr,
    p: GatewayProcess,
}

impl Replica {
    fn start(config: &Path) -> Replica {
        let p = GatewayProcess::run()
            .env("PORTCULLIS_CONFIG", config)
            .env("PORTCULLIS_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_STATUS_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_TLS_LISTEN", "off")
            .env("PORTCULLIS_ACCESS_LOG", "off")
            .discard_stdout()
            .start();
        Replica {
            addr: p.proxy_addr(),
            p,
        }
    }
}

#[tokio::test]
async fn three_replicas_share_one_redis_limit() {
    let redis = Redis::start();
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("gateway.yaml");
    let n = 7;
    std::fs::write(
        &config,
        redis_yaml(up, redis.port, &format!("          minute: {n}\n")),
    )
    .unwrap();
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&config)).collect();
    // All requests in one minute window: wait for a fresh one if less than 30 s are left.
    window_with_room(60, 30).await;
    let minute = now_secs() / 60;
    let mut admitted = 0;
    let mut per_replica = [0; 3];
    for i in 0..(3 * n + 6) {
        let r = get(replicas[i % 3].addr, "/").await;
        match r.status.as_u16() {
            200 => {
                admitted += 1;
                per_replica[i % 3] += 1;
            }
            429 => {}
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    assert_eq!(now_secs() / 60, minute, "the minute rolled over mid-test");
    assert_eq!(
        admitted, n,
        "exactly the limit, across replicas ({per_replica:?})"
    );
    assert!(
        per_replica.iter().all(|&c| c >= 2),
        "round-robin: {per_replica:?}"
    );

    // One edit of the shared YAML reloads all three.
    std::fs::write(
        &config,
        redis_yaml(
            up,
            redis.port,
            "          minute: 1000\n          hour: 1000\n",
        ),
    )
    .unwrap();
    for r in &replicas {
        let deadline = Instant::now() + WAIT;
        loop {
            let resp = get(r.addr, "/").await;
            if resp.header("x-ratelimit-limit-hour").as_deref() == Some("1000") {
                assert_eq!(resp.status, 200);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} did not reload:\n{}",
                r.addr,
                r.p.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
