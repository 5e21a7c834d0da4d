//! The soak: the real gateway binary under mixed loopback traffic (HTTP/1.1, SSE,
//! WebSocket, uploads, HTTP/2, TLS), a reload every few seconds and injected upstream
//! faults, for a bounded time. Run through `scripts/soak` (see README "Development").
//!
//! Prints, per minute, the gateway's RSS and open file descriptors and the requests
//! done; at the end, crashes, failed requests (anything but the injected faults'
//! documented answers), and whether RSS and fds stayed flat from minute 2. Exits 1 on
//! a crash, a failed request or growth.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(15);

/// (seconds since the start, RSS KiB, open fds, requests ok so far)
type Sample = (u64, u64, usize, u64);

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    injected: AtomicU64,
    failed: AtomicU64,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = http::Response<portcullis::body::Body>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(f(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// The well-behaved upstream: /sse streams 3 events, /ws echoes a tunnel, anything
/// else answers the request body's length.
async fn good_upstream() -> SocketAddr {
    serve(|mut req: http::Request<Incoming>| async move {
        let path = req.uri().path().to_string();
        if path.ends_with("/sse") {
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<hyper::body::Frame<Bytes>, portcullis::body::BoxError>,
            >(4);
            tokio::spawn(async move {
                for i in 0..3 {
                    let ev = Bytes::from(format!("data: {i}\n\n"));
                    if tx.send(Ok(hyper::body::Frame::data(ev))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|v| (v, rx))
            });
            return http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(http_body_util::StreamBody::new(stream).boxed())
                .unwrap();
        }
        if path.ends_with("/ws") {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            return http::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(portcullis::body::empty())
                .unwrap();
        }
        let n = req
            .into_body()
            .collect()
            .await
            .map_or(0, |c| c.to_bytes().len());
        http::Response::new(portcullis::body::full(format!("{n}")))
    })
    .await
}

/// Faulty upstreams: (refuses, resets mid-body, hangs before the head).
async fn faulty_upstreams() -> (SocketAddr, SocketAddr, SocketAddr) {
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let raw = |reset: bool| async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b).await;
                    if reset {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                            .await;
                        let std = s.into_std().unwrap();
                        let _ = socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO));
                    } else {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                });
            }
        });
        addr
    };
    (refused, raw(true).await, raw(false).await)
}

fn config(
    good: SocketAddr,
    faults: (SocketAddr, SocketAddr, SocketAddr),
    generation: u64,
) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n  - name: good\n    url: http://{good}/\n    routes:\n      - paths: [/good]\n      - paths: [/gen{generation}]\n  - name: refused\n    url: http://{}/\n    routes:\n      - paths: [/refused]\n  - name: reset\n    url: http://{}/\n    routes:\n      - paths: [/reset]\n  - name: hang\n    url: http://{}/\n    read_timeout: 200\n    routes:\n      - paths: [/hang]\n",
        faults.0, faults.1, faults.2
    )
}

/// One HTTP/1.1 request on `io`: status and whole body (or the body's error).
async fn h1<S>(
    io: S,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, Result<Bytes, String>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(body))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok((status, body))
}

/// One exchange of kind `i`; Ok(true) for a success, Ok(false) for an injected fault
/// that got its documented answer, Err for anything else.
async fn exchange(i: u64, gw: SocketAddr, tls: SocketAddr) -> Result<bool, String> {
    let connect = || async { TcpStream::connect(gw).await.map_err(|e| e.to_string()) };
    match i % 10 {
        0 | 1 => {
            let (s, b) = h1(connect().await?, "GET", "/good/plain", Bytes::new()).await?;
            (s == 200 && b.as_deref() == Ok(b"0".as_slice()))
                .then_some(true)
                .ok_or(format!("plain: {s} {b:?}"))
        }
        2 => {
            let (s, b) = h1(connect().await?, "GET", "/good/sse", Bytes::new()).await?;
            let text = b.map_err(|e| format!("sse body: {e}"))?;
            (s == 200 && text.as_ref() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n")
                .then_some(true)
                .ok_or(format!("sse: {s} {text:?}"))
        }
        3 => {
            let body = Bytes::from(vec![b'u'; 256 * 1024]);
            let (s, b) = h1(connect().await?, "POST", "/good/upload", body).await?;
            (s == 200 && b.as_deref() == Ok(b"262144".as_slice()))
                .then_some(true)
                .ok_or(format!("upload: {s} {b:?}"))
        }
        4 => {
            let (send, conn) = h2::client::handshake(connect().await?)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut send = send.ready().await.map_err(|e| e.to_string())?;
            let req = http::Request::builder()
                .uri("http://localhost/good/h2")
                .body(())
                .unwrap();
            let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
            let resp = resp.await.map_err(|e| e.to_string())?;
            let s = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(d) = body.data().await {
                let d = d.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(d.len());
                got.extend_from_slice(&d);
            }
            (s == 200 && got == b"0")
                .then_some(true)
                .ok_or(format!("h2: {s}"))
        }
        5 => {
            let cfg = portcullis::tls::client_config(false, &[]);
            let c = tokio_rustls::TlsConnector::from(Arc::new(cfg));
            let s = TcpStream::connect(tls).await.map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let s = c.connect(name, s).await.map_err(|e| e.to_string())?;
            let (st, b) = h1(s, "GET", "/good/tls", Bytes::new()).await?;
            (st == 200)
                .then_some(true)
                .ok_or(format!("tls: {st} {b:?}"))
        }
        6 => {
            let mut s = connect().await?;
            s.write_all(b"GET /good/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("ws: closed before 101".into());
                }
                got.extend_from_slice(&b[..n]);
            }
            if !got.starts_with(b"HTTP/1.1 101") {
                return Err(format!("ws: {}", String::from_utf8_lossy(&got)));
            }
            let frame = [
                0x81u8,
                0x85,
                1,
                2,
                3,
                4,
                b'h' ^ 1,
                b'e' ^ 2,
                b'l' ^ 3,
                b'l' ^ 4,
                b'o' ^ 1,
            ];
            s.write_all(&frame).await.map_err(|e| e.to_string())?;
            let mut echo = [0u8; 11];
            s.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
            (echo == frame)
                .then_some(true)
                .ok_or("ws: echo differs".into())
        }
        7 => {
            let (s, b) = h1(connect().await?, "GET", "/refused", Bytes::new()).await?;
            (s == 502)
                .then_some(false)
                .ok_or(format!("refused: {s} {b:?}"))
        }
        8 => {
            let (s, b) = h1(connect().await?, "GET", "/reset", Bytes::new()).await?;
            (s == 200 && b.is_err())
                .then_some(false)
                .ok_or(format!("reset: {s} {b:?}"))
        }
        _ => {
            let (s, b) = h1(connect().await?, "GET", "/hang", Bytes::new()).await?;
            (s == 504)
                .then_some(false)
                .ok_or(format!("hang: {s} {b:?}"))
        }
    }
}

fn proc_figures(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let minutes = arg("--minutes", 5).clamp(1, 10);
    let sample = Duration::from_secs(arg("--sample-secs", 60).max(1));
    let clients = arg("--clients", 4).clamp(1, 64);
    let bin =
        std::env::var("PORTCULLIS_BIN").unwrap_or_else(|_| "target/release/portcullis".into());
    let good = good_upstream().await;
    let faults = faulty_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, config(good, faults, 0)).unwrap();

    let mut child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--status-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--access-log",
            "off",
            "--workers",
            "2",
        ])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (build it: cargo build --release)"));
    let pid = child.id();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&log);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(l);
        }
    });
    let find = |marker: &str| -> Option<SocketAddr> {
        log.lock().unwrap().iter().find_map(|l| {
            let i = l.find(marker)?;
            l[i + marker.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    let started = Instant::now();
    let (gw, tls) = loop {
        if let (Some(a), Some(t)) = (find("proxy listening addr="), find("tls listening addr=")) {
            break (a, t);
        }
        assert!(
            started.elapsed() < WAIT,
            "gateway did not start:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("soak: {minutes} min, {clients} clients, gateway pid {pid} on {gw} (TLS {tls})");

    let counts = Arc::new(Counts::default());
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (counts, errors, stop) = (Arc::clone(&counts), Arc::clone(&errors), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(WAIT, exchange(i, gw, tls)).await {
                    Ok(Ok(true)) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Ok(false)) => counts.injected.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) => {
                        errors.lock().unwrap().push(e);
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("kind {}: no answer within {WAIT:?}", i % 10));
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Reloads every 3 s: a changed config, then SIGHUP.
    let reloads = {
        let (stop, cfg) = (Arc::clone(&stop), cfg.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(3)).await;
                n += 1;
                std::fs::write(&cfg, config(good, faults, n)).unwrap();
                let _ = std::process::Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status();
            }
            n
        })
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut crashed = None;
    println!("     s  rss_kib  fds  requests_ok  injected  failed");
    while Instant::now() < end {
        let next = Instant::now() + sample;
        while Instant::now() < next.min(end) {
            if let Ok(Some(status)) = child.try_wait() {
                crashed = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if crashed.is_some() {
            break;
        }
        let at = started.elapsed().as_secs();
        let (rss, fds) = proc_figures(pid).unwrap_or((0, 0));
        let ok = counts.ok.load(Ordering::Relaxed);
        println!(
            "{at:>6}  {rss:>7}  {fds:>3}  {ok:>11}  {:>8}  {:>6}",
            counts.injected.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed)
        );
        samples.push((at, rss, fds, ok));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let reloads = reloads.await.unwrap_or(0);
    let generation_live = crashed.is_none();
    let _ = child.kill();
    let _ = child.wait();

    let failed = counts.failed.load(Ordering::Relaxed);
    // From minute 2 (the first minute warms pools, caches and the allocator).
    let later: Vec<_> = samples.iter().filter(|s| s.0 >= 110).collect();
    let span = |f: &dyn Fn(&Sample) -> u64| {
        let v: Vec<u64> = later.iter().map(|s| f(s)).collect();
        (
            v.iter().copied().min().unwrap_or(0),
            v.iter().copied().max().unwrap_or(0),
        )
    };
    let (rss_min, rss_max) = span(&|s| s.1);
    let (fd_min, fd_max) = span(&|s| s.2 as u64);
    // Flat: RSS within 4 MiB or 10 %, fds within what the clients' connections in
    // flight can explain.
    let rss_flat = rss_max - rss_min <= (rss_min / 10).max(4096);
    let fd_flat = fd_max - fd_min <= 4 * clients + 8;
    println!(
        "requests: {} ok, {} injected faults answered as documented, {failed} failed; {reloads} reloads; crashes: {}",
        counts.ok.load(Ordering::Relaxed),
        counts.injected.load(Ordering::Relaxed),
        crashed.map_or("0".to_string(), |s| format!("1 ({s})"))
    );
    println!(
        "from minute 2: RSS {rss_min}..{rss_max} KiB ({}), fds {fd_min}..{fd_max} ({})",
        if rss_flat { "flat" } else { "GROWING" },
        if fd_flat { "flat" } else { "GROWING" }
    );
    for e in errors.lock().unwrap().iter().take(20) {
        println!("failed: {e}");
    }
    if !generation_live || failed > 0 || !rss_flat || !fd_flat || later.is_empty() {
        std::process::exit(1);
    }
}
