//! The dashboard tests' gateway: the real binary (`common::process`) on a config file
//! in a temporary directory, proxy and status listeners on 127.0.0.1:0, stopped when
//! dropped; the CLI; and a plain HTTP client for the status listener.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crate::common::process::GatewayProcess;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(20);

/// What Supabase's kong-entrypoint.sh exports before the gateway reads kong.yml (its
/// legacy branch), with values that are easy to search for.
pub const SUPABASE_ENV: &[(&str, &str)] = &[
    (
        "SUPABASE_ANON_KEY",
        "eyJhbGciOiJIUzI1NiJ9.anon-key-value.sig",
    ),
    (
        "SUPABASE_SERVICE_KEY",
        "eyJhbGciOiJIUzI1NiJ9.service-key-value.sig",
    ),
    ("SUPABASE_PUBLISHABLE_KEY", "sb_publishable_value_4711"),
    ("SUPABASE_SECRET_KEY", "sb_secret_value_4712"),
    ("DASHBOARD_USERNAME", "supabase"),
    ("DASHBOARD_PASSWORD", "studio_password_value_4713"),
    (
        "LUA_AUTH_EXPR",
        "$((headers.authorization ~= nil and headers.authorization:sub(1, 10) ~= 'Bearer sb_' \
         and headers.authorization) or (headers.apikey == 'sb_secret_value_4712' and 'Bearer jwt_service_value_4714') or headers.apikey)",
    ),
    ("LUA_RT_WS_EXPR", "$(query_params.apikey)"),
    ("LUA_FUNCTIONS_EXPR", "$(nil)"),
    (
        "WELL_KNOWN_OAUTH_PATH",
        "/.well-known/oauth-authorization-server/auth/v1",
    ),
];

/// The real binary (through the tests' one process helper) on a config file of a
/// given name, with the dashboard's usual flags.
pub struct Gateway {
    process: GatewayProcess,
    pub proxy: SocketAddr,
    pub status: SocketAddr,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `portcullis run` on `yaml` written to `<tmp>/<file_name>`.
    pub fn start(file_name: &str, yaml: &str, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(file_name);
        std::fs::write(&config, yaml).unwrap();
        let mut b = GatewayProcess::run();
        b.config_file(&config)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "off",
                "--workers",
                "1",
                "--access-log",
                "off",
            ])
            .args(args)
            .envs(env)
            .discard_stdout();
        if !args.contains(&"--status-listen") {
            b.args(["--status-listen", "127.0.0.1:0"]);
        }
        let process = b.start();
        let proxy = process.proxy_addr();
        let status = process.status_addr();
        // A wildcard bind is reached on loopback.
        let status = if status.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), status.port())
        } else {
            status
        };
        Gateway {
            process,
            proxy,
            status,
            config,
            dir,
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The status listener's URL.
    pub fn status_url(&self) -> String {
        format!("http://{}", self.status)
    }
}

/// `portcullis <args>` with `env` (and nothing else of the environment): (exit code, stdout).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let done = GatewayProcess::bin().args(args).envs(env).finish(WAIT);
    (done.code().unwrap_or(-1), done.stdout.join("\n") + "\n")
}

/// The `verdict:` line of `portcullis explain` output.
pub fn verdict(explain: &str) -> String {
    explain
        .lines()
        .find_map(|l| l.strip_prefix("verdict:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no verdict in:\n{explain}"))
}

/// Polls `f` until it returns Some, up to [`WAIT`]; panics with `what` otherwise.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A response: status, headers (lower-case names), body text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (Connection: close), read to the end.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {text}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(addr: SocketAddr, target: &str) -> Resp {
    request(addr, "GET", target, &[], "")
}
