//! Hot reload, black box: the real `portcullis` binary on 127.0.0.1:0 with a config in
//! a temp dir, real upstreams, real HTTP. Every way a file changes (rename over it,
//! in-place write, SIGHUP, Kubernetes symlink swap) takes effect within 2 s; every kind
//! of invalid file is rejected while the old routes keep serving; reloads drop no
//! request, and streams opened before a reload finish after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use bytes::Bytes;
use common::process::GatewayProcess;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sha2::Digest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The promise: a change is live within 2 s.
const TAKES_EFFECT: Duration = Duration::from_secs(2);
const UNSET_VAR: &str = "PORTCULLIS_RELOAD_TEST_UNSET_VAR";

// ---------------------------------------------------------------------------------
// The gateway process

struct Proc {
    p: GatewayProcess,
    proxy: SocketAddr,
    status: SocketAddr,
}

/// Starts `portcullis run` (with `--config config` if given, in `cwd`) and waits,
/// bounded, for both listeners to be logged.
async fn start(config: Option<&Path>, cwd: &Path) -> Proc {
    start_with(config, cwd, &[]).await
}

async fn start_with(config: Option<&Path>, cwd: &Path, extra: &[&str]) -> Proc {
    let mut cmd = GatewayProcess::run();
    cmd.args(extra)
        .loopback()
        .args(["--access-log", "off"])
        .cwd(cwd)
        .discard_stdout();
    if let Some(c) = config {
        cmd.config_file(c);
    }
    let p = cmd.start();
    Proc {
        proxy: p.proxy_addr(),
        status: p.status_addr(),
        p,
    }
}

impl Proc {
    async fn status(&self) -> serde_json::Value {
        let r = get(self.status, "/status").await;
        assert_eq!(r.status, 200);
        r.json()
    }

    async fn generation(&self) -> u64 {
        self.status().await["generation"].as_u64().unwrap()
    }

    fn log_text(&self) -> String {
        self.p.stderr_text()
    }

    fn sighup(&self) {
        self.p.signal("HUP");
    }

    /// Polls until the gateway's /status shows `generation` (bounded by `limit`).
    async fn wait_generation(&self, generation: u64, limit: Duration) {
        let ok = poll(limit, || async { self.generation().await == generation }).await;
        assert!(
            ok,
            "generation {generation} not reached within {limit:?}; status {}\n{}",
            self.status().await,
            self.log_text()
        );
    }

    /// Polls until `path` answers `status` on the proxy (bounded by `limit`).
    async fn wait_route(&self, path: &str, status: u16, limit: Duration) {
        let ok = poll(limit, || async {
            try_get(self.proxy, path).await.ok() == Some(status)
        })
        .await;
        assert!(
            ok,
            "{path} did not answer {status} within {limit:?}; status {}\n{}",
            self.status().await,
            self.log_text()
        );
    }

    async fn wait_log(&self, needle: &str) {
        let ok = poll(WAIT, || async { self.log_text().contains(needle) }).await;
        assert!(
            ok,
            "no log line containing {needle:?}:\n{}",
            self.log_text()
        );
    }
}

/// Calls `cond` until it is true or `limit` passes; true if it became true.
async fn poll<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET on a fresh connection that reports failures instead of panicking.
async fn try_get(addr: SocketAddr, target: &str) -> Result<u16, String> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        request(&mut sender, target).await
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    target: &str,
) -> Result<u16, String> {
    let req = Request::get(target)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

// ---------------------------------------------------------------------------------
// Config files

/// One service (`a` → `up`) with one route per path.
fn cfg(up: SocketAddr, paths: &[&str]) -> String {
    let mut y = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: a\n    url: http://{up}/\n    routes:\n"
    );
    for p in paths {
        y.push_str(&format!("      - paths: [{p}]\n"));
    }
    y
}

fn sha256(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// What editors do: write a temp file beside it, then rename it over the config.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_file_name(".gateway.yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `echo >`-style: truncate and write the same inode.
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn setup(text: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, text).unwrap();
    Setup { dir, config }
}

// ---------------------------------------------------------------------------------
// Each way a file changes takes effect within 2 s

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_replace_takes_effect() {
    let up = echo_upstream().await;
    let s = setup(&cfg(up, &["/v1"]));
    let gw = start(Some(&s.config), s.dir.path()).await;
    let st = gw.status().await;
    assert_eq!(st["generation"], 1);
    assert_eq!(st["last_reload_error"], serde_json::Value::Null);
    assert_eq!(try_get(gw.proxy, "/v2").await, Ok(404));

    let next = cfg(up, &["/v1", "/v2"]);
    replace_by_rename(&s.config, &next);
    gw.wait_route("/v2", 200, TAKES_EFFECT).await;

    let st = gw.status().await;
    assert_eq!(st["generation"], 2);
    assert_eq!(st["config_hash"], sha256(&next));
    assert_eq!(st["last_reload_error"], serde_json::Value::Null);
    assert_eq!(st["reloads"]["ok"], 1);
    assert!(st["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(try_get(gw.proxy, "/v1").await, Ok(200));
    gw.wait_log("config reloaded trigger=\"file\" generation=2")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_edit_takes_effect() {
    let up = echo_upstream().await;
    let s = setup(&cfg(up, &["/v1"]));
    let gw = start(Some(&s.config), s.dir.path()).await;
    assert_eq!(try_get(gw.proxy, "/v2").await, Ok(404));

    let next = cfg(up, &["/v2"]);
    write_in_place(&s.config, &next);
    gw.wait_route("/v2", 200, TAKES_EFFECT).await;
    assert_eq!(try_get(gw.proxy, "/v1").await, Ok(404));
    let st = gw.status().await;
    assert_eq!(st["generation"], 2);
    assert_eq!(st["config_hash"], sha256(&next));
}

/// The config is a hard link to a file in another directory, edited there: the watch
/// on the config's directory sees nothing, so only SIGHUP can load the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let up = echo_upstream().await;
    let s = setup("");
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("real.yaml");
    std::fs::write(&real, cfg(up, &["/v1"])).unwrap();
    std::fs::remove_file(&s.config).unwrap();
    std::fs::hard_link(&real, &s.config).unwrap();
    let gw = start(Some(&s.config), s.dir.path()).await;
    assert_eq!(try_get(gw.proxy, "/v2").await, Ok(404));

    write_in_place(&real, &cfg(up, &["/v1", "/v2"]));
    gw.sighup();
    gw.wait_route("/v2", 200, TAKES_EFFECT).await;
    assert_eq!(gw.generation().await, 2);
    gw.wait_log("config reloaded trigger=\"SIGHUP\" generation=2")
        .await;

    // A second SIGHUP with nothing new: logged, nothing swapped, process alive.
    gw.sighup();
    gw.wait_log("config unchanged; nothing to reload").await;
    assert_eq!(gw.generation().await, 2);
    assert_eq!(gw.status().await["reloads"]["unchanged"], 1);
}

/// Kubernetes mounts a ConfigMap as `gateway.yaml -> ..data/gateway.yaml`,
/// `..data -> ..<timestamp>/`, and updates it by renaming a new `..data` symlink over
/// the old one, then deleting the old timestamped directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_takes_effect() {
    fn publish(dir: &Path, version: &str, text: &str) {
        let data = dir.join(format!("..{version}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("gateway.yaml"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), "2024_01", &cfg(up, &["/v1"]));
    let config = dir.path().join("gateway.yaml");
    std::os::unix::fs::symlink("..data/gateway.yaml", &config).unwrap();
    let gw = start(Some(&config), dir.path()).await;
    assert_eq!(try_get(gw.proxy, "/v2").await, Ok(404));

    publish(dir.path(), "2024_02", &cfg(up, &["/v2"]));
    std::fs::remove_dir_all(dir.path().join("..2024_01")).unwrap();
    gw.wait_route("/v2", 200, TAKES_EFFECT).await;
    assert_eq!(try_get(gw.proxy, "/v1").await, Ok(404));
    assert_eq!(gw.generation().await, 2);

    // The watch survives its target's directory being deleted: a second swap works.
    publish(dir.path(), "2024_03", &cfg(up, &["/v3"]));
    std::fs::remove_dir_all(dir.path().join("..2024_02")).unwrap();
    gw.wait_route("/v3", 200, TAKES_EFFECT).await;
    assert_eq!(gw.generation().await, 3);
}

// ---------------------------------------------------------------------------------
// Invalid files are rejected; the old config keeps serving

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_keep_old_config_and_report() {
    let up = echo_upstream().await;
    let good = cfg(up, &["/v1"]);
    let s = setup(&good);
    let gw = start(Some(&s.config), s.dir.path()).await;
    let file = s.config.display().to_string();
    // (what, file text, first error line: file:line:col: message)
    let cases = [
        (
            "bad YAML",
            format!("{good}      - paths: [/v2\n"),
            format!("{file}:7:16: unclosed bracket '['"),
        ),
        (
            "unknown plugin",
            format!("{good}    plugins:\n      - name: no-such-plugin\n"),
            format!(
                "{file}:8:15: plugin 'no-such-plugin' not enabled; add it to the 'plugins' configuration property"
            ),
        ),
        (
            "strip_paht typo",
            format!("{good}        strip_paht: true\n"),
            format!("{file}:7:9: route: unknown field 'strip_paht'"),
        ),
        (
            "bad CIDR",
            format!(
                "{good}    plugins:\n      - name: ip-restriction\n        config:\n          allow: [10.0.0.0/33]\n"
            ),
            format!(
                "{file}:10:19: plugin 'ip-restriction'.config.allow: invalid ip or cidr range: '10.0.0.0/33'"
            ),
        ),
        (
            "unset $VAR",
            format!("{good}        hosts: [${UNSET_VAR}]\n"),
            format!(
                "{file}:7:17: environment variable '{UNSET_VAR}' is not set (write $${UNSET_VAR} for a literal '$')"
            ),
        ),
    ];
    for (i, (what, text, first_error)) in cases.iter().enumerate() {
        replace_by_rename(&s.config, text);
        let ok = poll(TAKES_EFFECT, || async {
            gw.status().await["reloads"]["failed"] == i as u64 + 1
        })
        .await;
        assert!(ok, "{what}: no failed reload recorded\n{}", gw.log_text());
        let st = gw.status().await;
        let err = st["last_reload_error"].as_str().unwrap_or_default();
        assert_eq!(err.lines().next(), Some(first_error.as_str()), "{what}");
        assert_eq!(st["generation"], 1, "{what}: generation still in force");
        assert_eq!(st["config_hash"], sha256(&good), "{what}");
        assert_eq!(try_get(gw.proxy, "/v1").await, Ok(200), "{what}");
        // Logged with file:line:col, and `portcullis check` prints the same lines.
        gw.wait_log(first_error).await;
        let check = GatewayProcess::bin()
            .arg("check")
            .config_file(&s.config)
            .finish(WAIT);
        assert!(!check.status.success(), "{what}: check accepted it");
        assert_eq!(
            check.stdout.join("\n").trim_end(),
            err,
            "{what}: check and reload disagree"
        );
    }
    gw.wait_log("config reload rejected; the previous config keeps serving")
        .await;

    // A later valid file is taken and clears the error.
    let next = cfg(up, &["/v1", "/v2"]);
    replace_by_rename(&s.config, &next);
    gw.wait_route("/v2", 200, TAKES_EFFECT).await;
    let st = gw.status().await;
    assert_eq!(st["generation"], 2);
    assert_eq!(st["last_reload_error"], serde_json::Value::Null);
    assert_eq!(st["config_hash"], sha256(&next));
    assert_eq!(st["reloads"]["failed"], cases.len());
    assert_eq!(st["reloads"]["ok"], 1);

    // A deleted file is an error too, and the config keeps serving.
    std::fs::remove_file(&s.config).unwrap();
    let ok = poll(TAKES_EFFECT, || async {
        gw.status().await["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{file}:1:1: cannot read the config file")))
    })
    .await;
    assert!(ok, "deleted file not reported\n{}", gw.log_text());
    assert_eq!(try_get(gw.proxy, "/v2").await, Ok(200));
}

// ---------------------------------------------------------------------------------
// Nothing dropped

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_fail_no_request() {
    let up = echo_upstream().await;
    let configs = [cfg(up, &["/v1", "/a"]), cfg(up, &["/b", "/v1"])];
    let s = setup(&configs[0]);
    let gw = start(Some(&s.config), s.dir.path()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let proxy = gw.proxy;
    // One client on a kept-alive connection, one opening a connection per request:
    // neither may see an error while the config changes under them.
    let keep_alive = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(WAIT, request(&mut sender, "/v1/keep-alive")).await {
                    Ok(Ok(200)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("keep-alive: {other:?}"));
                        return;
                    }
                }
            }
        })
    };
    let fresh = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match try_get(proxy, "/v1/fresh").await {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.lock().unwrap().push(format!("fresh: {other:?}")),
                }
            }
        })
    };

    for i in 0..50u64 {
        let text = &configs[(i as usize + 1) % 2];
        if i % 2 == 0 {
            replace_by_rename(&s.config, text);
        } else {
            write_in_place(&s.config, text);
        }
        gw.wait_generation(i + 2, Duration::from_secs(5)).await;
    }
    let before_stop = ok.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(WAIT, keep_alive)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, fresh).await.unwrap().unwrap();

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(before_stop >= 50, "only {before_stop} requests ran");
    let st = gw.status().await;
    assert_eq!(st["generation"], 51);
    assert_eq!(st["reloads"]["ok"], 50);
    assert_eq!(st["reloads"]["failed"], 0);
}

/// An upstream that tags every response with the id of the TCP connection it came on
/// (`x-conn`), and holds streams until the test says so: `/gated-sse` sends event 0,
/// then waits for `release` before events 1 and 2; `/upload` reports `started` once the
/// request head arrives, then reads the whole body and answers its length.
struct TestUpstream {
    addr: SocketAddr,
    release: Arc<tokio::sync::Notify>,
    started: Arc<tokio::sync::Notify>,
}

async fn test_upstream() -> TestUpstream {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let (rel, sta) = (release.clone(), started.clone());
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            next_id += 1;
            let conn_id = next_id;
            let (rel, sta) = (rel.clone(), sta.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (rel, sta) = (rel.clone(), sta.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            test_handler(req, conn_id, rel, sta).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    TestUpstream {
        addr,
        release,
        started,
    }
}

async fn test_handler(
    req: Request<Incoming>,
    conn_id: u64,
    release: Arc<tokio::sync::Notify>,
    started: Arc<tokio::sync::Notify>,
) -> Response<portcullis::body::Body> {
    let path = req.uri().path().to_string();
    let builder = Response::builder().header("x-conn", conn_id.to_string());
    if path.contains("gated-sse") {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let ev = |i: u32| {
                Ok(Frame::data(Bytes::from(format!(
                    "id: {i}\ndata: event {i}\n\n"
                ))))
            };
            if tx.send(ev(0)).await.is_err() {
                return;
            }
            release.notified().await;
            for i in 1..3 {
                if tx.send(ev(i)).await.is_err() {
                    return;
                }
            }
        });
        return builder
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(tokio_stream_from(rx)).boxed())
            .unwrap();
    }
    if path.contains("upload") {
        started.notify_one();
        let mut body = req.into_body();
        let mut len = 0usize;
        while let Some(Ok(f)) = body.frame().await {
            len += f.data_ref().map_or(0, |d| d.len());
        }
        return builder
            .body(portcullis::body::full(len.to_string()))
            .unwrap();
    }
    builder.body(portcullis::body::full("ok")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_opened_before_reload_completes_after_it() {
    let up = test_upstream().await;
    let echo = echo_upstream().await;
    let s = setup(&cfg(up.addr, &["/v1"]));
    let gw = start(Some(&s.config), s.dir.path()).await;

    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/v1/gated-sse")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = String::new();
    while !got.contains("data: event 0\n\n") {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("event 0 timed out")
            .expect("stream ended before event 0")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            got.push_str(&String::from_utf8_lossy(d));
        }
    }

    // The new config no longer has /v1 at all: new requests see that...
    replace_by_rename(&s.config, &cfg(echo, &["/v2"]));
    gw.wait_route("/v2", 200, TAKES_EFFECT).await;
    assert_eq!(try_get(gw.proxy, "/v1/gated-sse").await, Ok(404));
    assert_eq!(gw.generation().await, 2);

    // ...while the stream opened on generation 1 runs to its end.
    up.release.notify_one();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("stream did not finish")
        .expect("stream failed")
        .to_bytes();
    got.push_str(&String::from_utf8_lossy(&rest));
    assert_eq!(
        got,
        "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_started_before_reload_completes_after_it() {
    let up = test_upstream().await;
    let echo = echo_upstream().await;
    let s = setup(&cfg(up.addr, &["/v1"]));
    let gw = start(Some(&s.config), s.dir.path()).await;

    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let req = Request::post("/v1/upload")
        .header("host", "localhost")
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 1000]))))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, up.started.notified())
        .await
        .expect("upload never reached the upstream");

    replace_by_rename(&s.config, &cfg(echo, &["/v2"]));
    gw.wait_route("/v2", 200, TAKES_EFFECT).await;
    assert_eq!(try_get(gw.proxy, "/v1/upload").await, Ok(404));

    tx.send(Ok(Frame::data(Bytes::from(vec![b'y'; 2000]))))
        .await
        .unwrap();
    drop(tx);
    let resp = tokio::time::timeout(WAIT, pending)
        .await
        .expect("upload response timed out")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"3000");
}

/// Pools are keyed by timeouts in the gateway, not by snapshot: after a reload that
/// leaves the service alone, the same upstream connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_pool_survives_reload() {
    async fn conn_ids(proxy: SocketAddr, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let r = get(proxy, "/v1/pool").await;
            assert_eq!(r.status, 200);
            ids.push(r.header("x-conn").unwrap());
        }
        ids
    }
    let up = test_upstream().await;
    let s = setup(&cfg(up.addr, &["/v1"]));
    // Pools are per worker thread (each client connection lands on one worker): one
    // worker, so every request shares the same pool.
    let gw = start_with(Some(&s.config), s.dir.path(), &["--workers", "1"]).await;
    let before = conn_ids(gw.proxy, 3).await;
    assert!(
        before.iter().all(|id| *id == before[0]),
        "no keep-alive reuse even without a reload: {before:?}"
    );

    replace_by_rename(&s.config, &cfg(up.addr, &["/v1", "/v2"]));
    gw.wait_generation(2, TAKES_EFFECT).await;
    let after = conn_ids(gw.proxy, 3).await;
    assert!(
        after.iter().all(|id| *id == before[0]),
        "pooled connection {} not reused after the reload: {after:?}",
        before[0]
    );
}

// ---------------------------------------------------------------------------------
// No file: nothing to watch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_on_embedded_config_is_logged_and_ignored() {
    let cwd = tempfile::tempdir().unwrap();
    let mut gw = start(None, cwd.path()).await;
    gw.sighup();
    gw.wait_log("there is no file to reload").await;
    assert_eq!(get(gw.status, "/health").await.status, 200);
    assert!(gw.p.exited().is_none(), "SIGHUP killed it");
    let st = gw.status().await;
    assert_eq!(st["generation"], 1);
    assert_eq!(st["config_file"], "<embedded gateway.yaml>");
}
