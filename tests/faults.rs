//! Upstream and client faults, black box: each fault gives the README's status (or a
//! clean close), and the gateway goes on serving. The storm test runs them all against
//! the real binary, with reloads midway and an upstream host name that stops
//! resolving, and checks that its file descriptors and memory come back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: usize = portcullis::upstream::MAX_UPSTREAM_HEAD;

/// An upstream speaking raw bytes: for each connection, reads the request head, then
/// hands the socket and the head to `f`.
async fn raw_upstream<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                f(s, String::from_utf8_lossy(&head).into_owned()).await;
            });
        }
    });
    addr
}

/// Sends `bytes` (in pieces of `chunk`), then closes.
async fn answer(mut s: TcpStream, bytes: Vec<u8>, chunk: usize) {
    for piece in bytes.chunks(chunk.max(1)) {
        if s.write_all(piece).await.is_err() {
            return;
        }
        let _ = s.flush().await;
    }
    let _ = s.shutdown().await;
}

/// A response head whose size, as the README counts it, is exactly `size`.
fn head_of_size(size: usize) -> Vec<u8> {
    let fixed = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".len() + "x-pad: \r\n".len() + 2;
    let pad = size - fixed;
    let mut h = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: {}\r\n\r\n",
        {
            // 100 header lines at most (hyper's): one long value.
            "p".repeat(pad)
        }
    )
    .into_bytes();
    h.extend_from_slice(b"ok");
    h
}

/// A request on a new HTTP/1.1 connection: status, and the body or the error that
/// ended it.
async fn fetch(addr: SocketAddr, path: &str) -> (u16, Result<Bytes, String>) {
    let s = TcpStream::connect(addr).await.unwrap();
    // Room for the 1 MiB heads the gateway relays.
    let (mut send, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(8 << 20)
        .handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("no response")
        .expect("request failed");
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body never ended")
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (status, body)
}

fn config(services: &[(&str, SocketAddr, &str)]) -> String {
    let mut y = String::from("_format_version: \"3.0\"\nservices:\n");
    for (name, addr, extra) in services {
        y.push_str(&format!(
            "  - name: {name}\n    url: http://{addr}/\n{extra}    routes:\n      - paths: [/{name}]\n"
        ));
    }
    y
}

async fn ok_upstream() -> SocketAddr {
    echo_upstream().await
}

#[tokio::test]
async fn upstream_faults_give_the_documented_status() {
    let ok = ok_upstream().await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hang = raw_upstream(|s, _| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let malformed = raw_upstream(|s, _| answer(s, b"HTTP/1.1 2x0 OK\r\n\r\n".to_vec(), 64)).await;
    let garbage = raw_upstream(|s, _| answer(s, b"\x00\x01garbage\r\n\r\n".to_vec(), 64)).await;
    let bad_len = raw_upstream(|s, _| {
        answer(
            s,
            b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nok".to_vec(),
            64,
        )
    })
    .await;
    let two_lens = raw_upstream(|s, _| {
        answer(
            s,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk".to_vec(),
            64,
        )
    })
    .await;
    let closed_early = raw_upstream(|s, _| answer(s, Vec::new(), 1)).await;
    let g = gateway(&config(&[
        ("ok", ok, ""),
        ("refused", refused, ""),
        ("hang", hang, "    read_timeout: 300\n"),
        ("malformed", malformed, ""),
        ("garbage", garbage, ""),
        ("badlen", bad_len, ""),
        ("twolens", two_lens, ""),
        ("closed", closed_early, ""),
    ]))
    .await;
    for (path, status) in [
        ("/refused", 502),
        ("/hang", 504),
        ("/malformed", 502),
        ("/garbage", 502),
        ("/badlen", 502),
        ("/twolens", 502),
        ("/closed", 502),
    ] {
        let (got, body) = fetch(g.addr, path).await;
        assert_eq!(got, status, "{path}: {body:?}");
        assert_eq!(get(g.addr, "/ok").await.status, 200, "after {path}");
    }
}

#[tokio::test]
async fn upstream_head_limit_is_exact_however_the_bytes_arrive() {
    let ok = ok_upstream().await;
    let mut services = vec![("ok", ok, String::new())];
    let mut cases = Vec::new();
    for (i, chunk) in [usize::MAX, 65536, 1500, 4096 + 7].into_iter().enumerate() {
        for (j, size) in [LIMIT - 1, LIMIT, LIMIT + 1, 2 * LIMIT - 100, 3 * LIMIT]
            .into_iter()
            .enumerate()
        {
            let up = raw_upstream(move |s, _| answer(s, head_of_size(size), chunk)).await;
            let name = format!("h{i}x{j}");
            let want = if size <= LIMIT { 200 } else { 502 };
            cases.push((format!("/{name}"), want, size, chunk));
            services.push((Box::leak(name.into_boxed_str()), up, String::new()));
        }
    }
    let services: Vec<(&str, SocketAddr, &str)> = services
        .iter()
        .map(|(n, a, e)| (*n, *a, e.as_str()))
        .collect();
    let g = gateway(&config(&services)).await;
    for (path, want, size, chunk) in cases {
        let (got, body) = fetch(g.addr, &path).await;
        assert_eq!(
            got, want,
            "a {size}-byte head (limit {LIMIT}) sent in {chunk}-byte writes"
        );
        if want == 200 {
            assert_eq!(body.unwrap(), "ok");
        }
    }
    assert_eq!(get(g.addr, "/ok").await.status, 200);
}

#[tokio::test]
async fn upstream_faults_mid_response_end_the_client_response_uncleanly() {
    let ok = ok_upstream().await;
    // Content-Length 100000, 1000 bytes, then a TCP reset.
    let reset = raw_upstream(|s, _| async move {
        let mut s = s;
        let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
        head.extend(vec![b'x'; 1000]);
        let _ = s.write_all(&head).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let std = s.into_std().unwrap();
        socket2::SockRef::from(&std)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(std);
    })
    .await;
    // Content-Length 10, 5 bytes, then a clean close.
    let short = raw_upstream(|s, _| {
        answer(
            s,
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec(),
            64,
        )
    })
    .await;
    // An SSE stream that closes after one event, without its last chunk.
    let sse = raw_upstream(|s, _| async move {
        let mut s = s;
        let ev = "data: one\n\n";
        let out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{ev}\r\n",
            ev.len()
        );
        let _ = s.write_all(out.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = s.shutdown().await;
    })
    .await;
    let g = gateway(&config(&[
        ("ok", ok, ""),
        ("reset", reset, ""),
        ("short", short, ""),
        ("sse", sse, ""),
    ]))
    .await;
    for path in ["/reset", "/short", "/sse"] {
        let (status, body) = fetch(g.addr, path).await;
        assert_eq!(status, 200, "{path}");
        // The client must not take a cut response for a whole one.
        assert!(body.is_err(), "{path}: ended cleanly: {body:?}");
        assert_eq!(get(g.addr, "/ok").await.status, 200, "after {path}");
        // Over HTTP/2: the stream is reset, not ended.
        let s = TcpStream::connect(g.addr).await.unwrap();
        let (send, conn) = h2::client::handshake(s).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let req = http::Request::builder()
            .uri(format!("http://localhost{path}"))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "h2 {path}");
        let mut body = resp.into_body();
        let ended = loop {
            match tokio::time::timeout(WAIT, body.data()).await.unwrap() {
                Some(Ok(d)) => {
                    let _ = body.flow_control().release_capacity(d.len());
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        assert!(ended.is_err(), "h2 {path}: ended cleanly");
    }
}

#[tokio::test]
async fn a_client_that_aborts_an_upload_aborts_the_upstream_request() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
    let up = serve_upstream(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let mut body = req.into_body();
            let mut n = 0u64;
            let outcome = loop {
                match body.frame().await {
                    None => break Ok(n),
                    Some(Ok(f)) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Some(Err(e)) => break Err(e.to_string()),
                }
            };
            let _ = tx.send(outcome);
            http::Response::new(portcullis::body::full("done"))
        }
    })
    .await;
    let g = gateway(&config(&[("up", up, "")])).await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![b'u'; 100_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the upstream never saw the upload end")
        .unwrap();
    assert!(
        seen.is_err(),
        "the upstream took an aborted upload for a complete one: {seen:?}"
    );
    assert_eq!(send(g.addr, "POST", "/up", &[], b"whole").await.status, 200);
    assert_eq!(rx.recv().await.unwrap(), Ok(5));
}

#[tokio::test]
async fn a_client_that_aborts_a_download_releases_the_upstream() {
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let up = serve_upstream(move |req: http::Request<hyper::body::Incoming>| {
        let gone = gone_tx.clone();
        async move {
            if req.uri().path().contains("ok") {
                return http::Response::new(portcullis::body::full("ok"));
            }
            // An endless stream; the send fails once the gateway lets go of it.
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<hyper::body::Frame<Bytes>, portcullis::body::BoxError>,
            >(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'd'; 16 * 1024]);
                while tx
                    .send(Ok(hyper::body::Frame::data(chunk.clone())))
                    .await
                    .is_ok()
                {}
                let _ = gone.send(());
            });
            let body = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed();
            http::Response::new(body)
        }
    })
    .await;
    let g = gateway(&config(&[("up", up, "")])).await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /up/stream HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0;
    let mut b = [0u8; 16384];
    while got < 200_000 {
        got += s.read(&mut b).await.unwrap();
    }
    drop(s);
    tokio::time::timeout(WAIT, gone_rx.recv())
        .await
        .expect("the upstream stream went on after the client left");
    assert_eq!(get(g.addr, "/up/ok").await.status, 200);
}

// ---------------------------------------------------------------------------------
// The storm: the real binary, reloads midway, a host name that stops resolving, and
// its file descriptors and memory afterwards.

struct Proc {
    child: std::process::Child,
    addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("cannot read the gateway's /proc/PID/fd")
            .count()
    }
    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmRSS")
    }
    fn sighup(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("cannot run kill")
            .success();
        assert!(ok, "kill -HUP failed");
    }
    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// `portcullis run` (one worker) in a private mount namespace whose /etc/hosts is
/// `hosts` (needs root, as the Supabase test).
fn start_in_namespace(config: &std::path::Path, hosts: &std::path::Path) -> Proc {
    use std::io::BufRead;
    let script = format!(
        "mount --bind '{}' /etc/hosts && exec '{}' run --config '{}' --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 --tls-listen off --access-log off --workers 1",
        hosts.display(),
        env!("CARGO_BIN_EXE_portcullis"),
        config.display()
    );
    let mut child = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run `unshare` (util-linux); the fault storm test needs it");
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = log.lock().unwrap().iter().find_map(|l| {
            let i = l.find("proxy listening addr=")?;
            l[i + "proxy listening addr=".len()..]
                .split_whitespace()
                .next()?
                .parse::<SocketAddr>()
                .ok()
        });
        if let Some(addr) = found {
            return Proc { child, addr, log };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "gateway exited ({status}) before listening (unshare -m needs root):\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not start:\n{}",
            log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway's fd count once it stops changing (three equal looks in a row).
async fn stable_fds(gw: &Proc) -> usize {
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(gw.fds());
        if seen.len() >= 3 && seen[seen.len() - 3..].windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    *seen.last().unwrap()
}

/// Polls `f` until it holds or `within` passes; the last value either way.
async fn settle<T>(within: Duration, mut f: impl FnMut() -> T, ok: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = f();
        if ok(&v) || std::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_faults_with_reloads_leaks_nothing() {
    let ok = ok_upstream().await;
    // Closes after each answer, so every request to it resolves its name again.
    let named = raw_upstream(|s, _| {
        answer(
            s,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_vec(),
            64,
        )
    })
    .await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hang = raw_upstream(|s, _| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let malformed = raw_upstream(|s, _| answer(s, b"HTTP/1.1 2x0 OK\r\n\r\n".to_vec(), 64)).await;
    let short = raw_upstream(|s, _| {
        answer(
            s,
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec(),
            64,
        )
    })
    .await;
    let sse = raw_upstream(|s, _| async move {
        let mut s = s;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await;
    let big = raw_upstream(|s, _| answer(s, head_of_size(LIMIT + 1), 8192)).await;
    let endless = raw_upstream(|s, _| async move {
        let mut s = s;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("4000\r\n{}\r\n", "d".repeat(0x4000));
        while s.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let with_name = "127.0.0.1 localhost\n127.0.0.1 up.faults.test\n";
    let without_name = "127.0.0.1 localhost\n";
    std::fs::write(&hosts, with_name).unwrap();
    let cfg_path = dir.path().join("gateway.yaml");
    let named_port = named.port();
    let write_config = |generation: usize| {
        let mut y = config(&[
            ("ok", ok, ""),
            ("refused", refused, ""),
            ("hang", hang, "    read_timeout: 300\n"),
            ("malformed", malformed, ""),
            ("short", short, ""),
            ("sse", sse, ""),
            ("big", big, ""),
            ("endless", endless, ""),
        ]);
        y.push_str(&format!(
            "  - name: named\n    url: http://up.faults.test:{named_port}/\n    routes:\n      - paths: [/named]\n  - name: gen\n    url: http://{ok}/\n    routes:\n      - paths: [/gen{generation}]\n"
        ));
        std::fs::write(&cfg_path, y).unwrap();
    };
    write_config(0);
    let gw = start_in_namespace(&cfg_path, &hosts);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", gw.pid())).unwrap();
    assert_eq!(
        comm.trim(),
        "portcullis",
        "the child is not the gateway itself"
    );
    let addr = gw.addr;

    // One round: every fault at once, a reload in the middle of them, client aborts.
    let round = |n: usize, resolvable: bool| {
        let hosts = hosts.clone();
        let gw_pid = gw.pid();
        let write_config = &write_config;
        async move {
            let mut expect = vec![
                ("/ok", Some(200)),
                ("/refused", Some(502)),
                ("/hang", Some(504)),
                ("/malformed", Some(502)),
                ("/big", Some(502)),
                ("/short", None),
                ("/sse", None),
            ];
            expect.push(("/named", Some(if resolvable { 200 } else { 503 })));
            std::fs::write(&hosts, if resolvable { with_name } else { without_name }).unwrap();
            let requests = futures_util::future::join_all(expect.iter().map(|(p, want)| {
                let (p, want) = (*p, *want);
                async move {
                    let (status, body) = fetch(addr, p).await;
                    match want {
                        Some(w) => assert_eq!(status, w, "round {n}: {p}"),
                        // Cut mid-body: the head went out, the body must not end cleanly.
                        None => assert!(
                            status == 200 && body.is_err(),
                            "round {n}: {p}: {status} {body:?}"
                        ),
                    }
                }
            }));
            let aborts = async {
                let mut up = TcpStream::connect(addr).await.unwrap();
                up.write_all(b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
                    .await
                    .unwrap();
                up.write_all(&vec![b'u'; 50_000]).await.unwrap();
                let mut down = TcpStream::connect(addr).await.unwrap();
                down.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut got = 0;
                let mut b = [0u8; 16384];
                while got < 100_000 {
                    match down.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got += k,
                    }
                }
            };
            let reload = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                write_config(n + 1);
                let _ = std::process::Command::new("kill")
                    .args(["-HUP", &gw_pid.to_string()])
                    .status();
            };
            tokio::join!(requests, aborts, reload);
        }
    };

    // Warm-up rounds, then the baseline.
    for n in 0..3 {
        round(n, n % 2 == 0).await;
    }
    assert_eq!(fetch(addr, "/ok").await.0, 200);
    let base_fds = stable_fds(&gw).await;
    let base_rss = gw.rss_kib();
    for n in 3..23 {
        round(n, n % 2 == 0).await;
    }
    // The gateway still serves, and the last config is live.
    assert_eq!(fetch(addr, "/ok").await.0, 200);
    let mut last = 0;
    for _ in 0..50 {
        last = fetch(addr, "/gen23").await.0;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200, "the last reload never took effect");
    let fds = settle(Duration::from_secs(15), || gw.fds(), |&f| f <= base_fds).await;
    let rss = gw.rss_kib();
    eprintln!("storm: fds {base_fds} -> {fds}, RSS {base_rss} KiB -> {rss} KiB");
    assert!(
        fds <= base_fds,
        "file descriptors: {base_fds} before the storm, {fds} after\n{}",
        gw.log_text()
    );
    assert!(
        rss <= base_rss + 8 * 1024,
        "RSS grew from {base_rss} KiB to {rss} KiB over 20 rounds"
    );
    gw.sighup();
    assert!(gw.log_text().contains("config reloaded"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let up = serve_upstream(move |req: http::Request<hyper::body::Incoming>| {
        let gone = gone_tx.clone();
        async move {
            if req.uri().path().ends_with("/ok") {
                return http::Response::new(portcullis::body::full("ok"));
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<hyper::body::Frame<Bytes>, portcullis::body::BoxError>,
            >(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
                while tx
                    .send(Ok(hyper::body::Frame::data(chunk.clone())))
                    .await
                    .is_ok()
                {}
                let _ = gone.send(());
            });
            http::Response::new(http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed())
        }
    })
    .await;
    let mut settings = portcullis::proxy::Settings::default();
    settings.limits.send_timeout = Duration::from_millis(500);
    let g = gateway_with(&config(&[("up", up, "")]), settings, "127.0.0.1:0").await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /up HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing: once the socket buffers are full the response stalls,
    // and the gateway lets go of the connection and of the upstream.
    tokio::time::timeout(WAIT, gone_rx.recv())
        .await
        .expect("a client that never reads held its response forever");
    // What was buffered, then the end.
    let mut b = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert_eq!(get(g.addr, "/up/ok").await.status, 200);
}
