//! Differential test of the path normaliser against nginx's own: Debian's nginx
//! (`/usr/sbin/nginx`, package nginx-light) on 127.0.0.1 answers `return 200 $uri`
//! for a generated set of raw targets, and each answer is compared with
//! `path::check_nginx_uri` + `path::normalize`.
//!
//! Kong normalises `$request_uri` itself (kong-behaviour.md 2.3) rather than using
//! nginx's `$uri`, so two differences are expected and spelled out in
//! [`known_difference`] (and in README "Where Portcullis deliberately differs from
//! Kong"); any other disagreement fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::path;

const NGINX: &str = "/usr/sbin/nginx";

struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx() -> Nginx {
    assert!(
        std::path::Path::new(NGINX).exists(),
        "this test needs nginx at {NGINX} (Debian package nginx-light: apt-get install -y nginx-light)"
    );
    let mut last = String::new();
    // The port is picked by binding 0 and released for nginx: another process may take
    // it in between, so a failed start is retried.
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen 127.0.0.1:{port};\n    location / {{ default_type text/plain; return 200 $uri; }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                last = format!(
                    "nginx exited with {status}: {}",
                    std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                );
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Nginx {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                last = "nginx did not listen within 10 s".into();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{last}");
}

/// nginx's answer: Some($uri) for a 200, None for a 400.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn uri(&mut self, target: &str) -> Option<Vec<u8>> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(self.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.set_nodelay(true).unwrap();
                BufReader::new(s)
            }
        };
        let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        conn.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status = String::new();
        conn.read_line(&mut status).unwrap();
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{target:?}: bad status line {status:?}"));
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0; len];
        conn.read_exact(&mut body).unwrap();
        if !close {
            self.conn = Some(conn);
        }
        match code {
            200 => Some(body),
            400 => None,
            other => panic!("{target:?}: nginx answered {other}"),
        }
    }
}

/// Pieces the raw targets are built from: separators, dot segments (plain and
/// encoded), encoded slashes and backslashes, reserved escapes, overlong and invalid
/// UTF-8 escapes, malformed escapes.
const PIECES: &[&str] = &[
    "/",
    "//",
    "/./",
    "/../",
    "/.",
    "/..",
    "a",
    "b",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%25",
    "%3F",
    "%23",
    "%3b",
    "%41",
    "%7e",
    "%20",
    "%c0%ae",
    "%C0%AF",
    "%e0%80%ae",
    "%c0%2e",
    "%ff",
    "%fe%ff",
    "%c3%a4",
    "%00",
    "%",
    "%2",
    "%zz",
    "%%41",
    ";x",
    "~",
    "?q=/../",
    "#frag",
];

/// Every target of one to three pieces after a leading `/` (plus a few longer ones
/// from a fixed pseudo-random sequence).
fn targets() -> Vec<String> {
    let mut out = Vec::new();
    for a in PIECES {
        out.push(format!("/{a}"));
        for b in PIECES {
            out.push(format!("/{a}{b}"));
        }
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..6000 {
        let mut t = String::from("/");
        let n = 3 + (x % 4) as usize;
        for _ in 0..n {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            t.push_str(PIECES[(x >> 33) as usize % PIECES.len()]);
        }
        out.push(t);
    }
    // `#` would end the target on the wire: nginx never sees it.
    out.retain(|t| !t.contains('#'));
    out.sort();
    out.dedup();
    out
}

/// Decodes every `%XX` (the normaliser's output has no other `%`).
fn full_decode(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%'
            && let Some(v) = p
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(p[i]);
            i += 1;
        }
    }
    out
}

/// Dot segments removed and slashes merged on an already decoded absolute path.
fn dots(p: &[u8]) -> Vec<u8> {
    let segments: Vec<&[u8]> = p[1..].split(|&b| b == b'/').collect();
    let mut stack: Vec<&[u8]> = Vec::new();
    for s in &segments {
        match *s {
            b"" | b"." => {}
            b".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    let mut out = Vec::new();
    for s in &stack {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if matches!(segments.last(), Some(&(b"" | b"." | b".."))) || out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The documented differences (README "Where Portcullis deliberately differs from
/// Kong"), each with the check that it is exactly that difference.
fn known_difference(raw: &str, ours: &[u8], nginx: &[u8]) -> Option<&'static str> {
    let decoded = full_decode(ours);
    // Kong keeps the escapes of reserved characters (`%2F`, `%25`, `%3F`, `%3B`, ...)
    // in the path it routes and proxies; nginx's `$uri` has them decoded.
    if decoded == nginx {
        return Some("reserved escapes stay encoded");
    }
    // An encoded slash is data to Kong, a separator to nginx: nginx decodes it and
    // then removes the dot segments it delimits. Ours must be exactly the path with
    // each `%2F` as an opaque byte (stood in for by %01 here).
    let stand_in = raw.replace("%2f", "%01").replace("%2F", "%01");
    if stand_in != raw && dots(&full_decode(raw.as_bytes())) == nginx {
        let opaque = path::normalize(&stand_in).ok()?;
        let mut back = Vec::new();
        for &b in &opaque {
            match b {
                1 => back.extend_from_slice(b"%2F"),
                b => back.push(b),
            }
        }
        if back == ours {
            return Some("%2F is not a separator");
        }
    }
    None
}

#[test]
fn normaliser_agrees_with_nginx() {
    let nginx = start_nginx();
    let mut client = Client {
        addr: nginx.addr,
        conn: None,
    };
    let targets = targets();
    assert!(targets.len() > 2000, "{} targets", targets.len());
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for raw in &targets {
        let theirs = client.uri(raw);
        let path_only = raw.split('?').next().unwrap_or(raw);
        let ours = path::check_nginx_uri(path_only).and_then(|()| path::normalize(path_only));
        let kind = match (&ours, &theirs) {
            (Err(_), None) => "both 400",
            (Ok(o), Some(t)) if o == t => "same",
            (Ok(o), Some(t)) => match known_difference(path_only, o, t) {
                Some(k) => k,
                None => {
                    failures.push(format!(
                        "{raw:?}: portcullis {:?}, nginx {:?}",
                        String::from_utf8_lossy(o),
                        String::from_utf8_lossy(t)
                    ));
                    "different"
                }
            },
            (Ok(o), None) => {
                failures.push(format!(
                    "{raw:?}: portcullis {:?}, nginx 400",
                    String::from_utf8_lossy(o)
                ));
                "different"
            }
            (Err(_), Some(t)) => {
                failures.push(format!(
                    "{raw:?}: portcullis 400, nginx {:?}",
                    String::from_utf8_lossy(t)
                ));
                "different"
            }
        };
        *counts.entry(kind).or_default() += 1;
    }
    eprintln!("{} targets: {counts:?}", targets.len());
    assert!(
        failures.is_empty(),
        "{} disagreements with nginx:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The differences are real: each kind occurs in the generated set.
    for kind in [
        "same",
        "both 400",
        "reserved escapes stay encoded",
        "%2F is not a separator",
    ] {
        assert!(counts.contains_key(kind), "no target of kind {kind:?}");
    }
}
