//! A raw TCP upstream that records every request it receives, parsed strictly as an
//! HTTP/1.1 origin would, and flags any form a server could read two ways (both
//! Content-Length and Transfer-Encoding, several Content-Length lines, a
//! Transfer-Encoding other than a single `chunked`, bare CR or LF, obs-fold). Each
//! complete request is answered `200 ok`; a request cut off mid-body is recorded
//! with `complete: false`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the upstream read it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived whole (false: the connection ended mid-body).
    pub complete: bool,
    /// Anything ambiguous in the framing, as text (empty: clean).
    pub ambiguous: Vec<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Clone)]
pub struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Every byte received, per connection.
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Recorder {
            addr: l.local_addr().unwrap(),
            seen: Arc::default(),
            raw: Arc::default(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move { me.connection(s).await });
            }
        });
        r
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn raw_bytes(&self) -> Vec<Vec<u8>> {
        self.raw.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests have been recorded.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.requests();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "upstream saw {} requests, wanted {n}: {seen:#?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts no recorded request was ambiguous and returns them.
    pub fn assert_clean(&self) -> Vec<Seen> {
        let seen = self.requests();
        for s in &seen {
            assert!(s.ambiguous.is_empty(), "ambiguous request upstream: {s:#?}");
        }
        seen
    }

    async fn connection(&self, mut s: tokio::net::TcpStream) {
        let idx = {
            let mut raw = self.raw.lock().unwrap();
            raw.push(Vec::new());
            raw.len() - 1
        };
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        // Reads more bytes into `buf`; false at end of stream.
        macro_rules! fill {
            () => {{
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => false,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        self.raw.lock().unwrap()[idx].extend_from_slice(&chunk[..n]);
                        true
                    }
                }
            }};
        }
        loop {
            // The head.
            let end = loop {
                if let Some(i) = find(&buf, b"\r\n\r\n") {
                    break i;
                }
                if !fill!() {
                    return;
                }
            };
            let head = buf[..end].to_vec();
            buf.drain(..end + 4);
            let mut seen = parse_head(&head);
            // The body, framed as a strict origin server would.
            let te = seen.headers_named("transfer-encoding").len();
            let cl: Vec<String> = seen
                .headers_named("content-length")
                .iter()
                .map(|s| s.to_string())
                .collect();
            if te > 0 {
                // Chunked.
                let mut body = Vec::new();
                let complete = 'chunks: loop {
                    let line_end = loop {
                        if let Some(i) = find(&buf, b"\r\n") {
                            break i;
                        }
                        if !fill!() {
                            break 'chunks false;
                        }
                    };
                    let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                    buf.drain(..line_end + 2);
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    let Ok(size) = usize::from_str_radix(size_text, 16) else {
                        seen.ambiguous.push(format!("bad chunk size line {line:?}"));
                        break false;
                    };
                    if size == 0 {
                        // Trailers until an empty line.
                        loop {
                            let e = loop {
                                if let Some(i) = find(&buf, b"\r\n") {
                                    break i;
                                }
                                if !fill!() {
                                    break 'chunks false;
                                }
                            };
                            let t = buf[..e].to_vec();
                            buf.drain(..e + 2);
                            if t.is_empty() {
                                break 'chunks true;
                            }
                        }
                    }
                    while buf.len() < size + 2 {
                        if !fill!() {
                            body.extend_from_slice(&buf);
                            break 'chunks false;
                        }
                    }
                    body.extend_from_slice(&buf[..size]);
                    if &buf[size..size + 2] != b"\r\n" {
                        seen.ambiguous.push("chunk not followed by CRLF".into());
                    }
                    buf.drain(..size + 2);
                };
                seen.body = body;
                seen.complete = complete;
            } else if let Some(len) = cl.first() {
                let len: usize = len.trim().parse().unwrap_or_else(|_| {
                    seen.ambiguous.push(format!("bad content-length {len:?}"));
                    0
                });
                let mut complete = true;
                while buf.len() < len {
                    if !fill!() {
                        complete = false;
                        break;
                    }
                }
                let take = len.min(buf.len());
                seen.body = buf.drain(..take).collect();
                seen.complete = complete;
            } else {
                seen.complete = true;
            }
            let complete = seen.complete;
            self.seen.lock().unwrap().push(seen);
            if !complete {
                return;
            }
            let resp =
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(resp).await.is_err() {
                return;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a head (without its final CRLFCRLF), noting every ambiguity.
fn parse_head(head: &[u8]) -> Seen {
    let mut ambiguous = Vec::new();
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            ambiguous.push(format!("bare LF at byte {i}"));
        }
        if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
            ambiguous.push(format!("bare CR at byte {i}"));
        }
        if b == 0 {
            ambiguous.push(format!("NUL at byte {i}"));
        }
    }
    let text = String::from_utf8_lossy(head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            ambiguous.push(format!("obs-fold line {line:?}"));
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            ambiguous.push(format!("header line without a colon {line:?}"));
            continue;
        };
        if k.is_empty() || k.bytes().any(|b| !is_tchar(b)) {
            ambiguous.push(format!("invalid header name {k:?}"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let te: Vec<&String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v)
        .collect();
    let cl: Vec<&String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v)
        .collect();
    if !te.is_empty() && !cl.is_empty() {
        ambiguous.push("both Content-Length and Transfer-Encoding".into());
    }
    if cl.len() > 1 {
        ambiguous.push(format!("{} Content-Length lines", cl.len()));
    }
    if let Some(v) = cl.first()
        && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()))
    {
        ambiguous.push(format!("Content-Length {v:?}"));
    }
    if te.len() > 1
        || te
            .first()
            .is_some_and(|v| !v.eq_ignore_ascii_case("chunked"))
    {
        ambiguous.push(format!("Transfer-Encoding {te:?}"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        ambiguous.push(format!("version {version:?}"));
    }
    Seen {
        method,
        target,
        version,
        headers,
        body: Vec::new(),
        complete: false,
        ambiguous,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
