//! The dashboard in a real browser: Debian's headless Chromium, driven over the
//! DevTools protocol (a WebSocket, a handful of methods), against the real binary
//! serving Supabase's kong.yml. The page renders every route, its traffic chart moves
//! after requests, a rejected edit shows in the reload history with its file:line,
//! and the explain form gives the CLI's verdict. Leaves a screenshot at
//! `target/dashboard.png`.
//!
//! Needs `chromium` (Debian package chromium; scripts/test installs it) or
//! PORTCULLIS_TEST_CHROMIUM naming the browser binary; fails naming the package if
//! neither is there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod dashboard_support;

use dashboard_support::{Gateway, SUPABASE_ENV, WAIT, cli, get, verdict};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_TEST_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the dashboard browser test needs headless Chromium: install the Debian package \
         chromium (apt-get install -y chromium; scripts/test does it) or set \
         PORTCULLIS_TEST_CHROMIUM to a Chromium binary"
    );
}

/// A headless Chromium with its DevTools endpoint on a loopback port, killed on drop.
struct Browser {
    child: Child,
    ws_url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start() -> Browser {
        let bin = chromium_binary();
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install the Debian package chromium",
                    bin.display()
                )
            });
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + WAIT;
        let ws_url = loop {
            let text = log.lock().unwrap().clone();
            if let Some(i) = text.find("DevTools listening on ") {
                let rest = &text[i + "DevTools listening on ".len()..];
                break rest.lines().next().unwrap().trim().to_string();
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("chromium exited ({st}):\n{text}");
            }
            assert!(Instant::now() < deadline, "chromium did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(ws_url.starts_with("ws://127.0.0.1:"), "{ws_url}");
        Browser {
            child,
            ws_url,
            _profile: profile,
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol session on one page (flattened target session).
struct Page {
    ws: Ws,
    next: u64,
    session: Option<String>,
}

impl Page {
    async fn open(browser: &Browser) -> Page {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&browser.ws_url))
            .await
            .expect("DevTools connect timed out")
            .expect("DevTools connect failed");
        let mut p = Page {
            ws,
            next: 0,
            session: None,
        };
        let target = p
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = p
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        p.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        p.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        p
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("DevTools send failed");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools connection closed")
                .expect("DevTools read failed");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            // Events (no id) and other answers are not ours.
            if v["id"] != id {
                continue;
            }
            if let Some(e) = v.get("error") {
                panic!("{method} failed: {e}");
            }
            return v["result"].clone();
        }
    }

    /// Evaluates `expr` in the page (awaiting promises); its JSON value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (not null/false/0/""), up to [`WAIT`].
    async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.eval(expr).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({expr} = {v})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every route name in Supabase's kong.yml, read with a YAML parser of its own.
fn kong_route_names(yaml: &str) -> Vec<String> {
    let doc: Value = serde_saphyr::from_str(yaml).unwrap();
    doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["routes"].as_array().cloned().unwrap_or_default())
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// The test binary lives in `<target>/debug/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let yaml = std::fs::read_to_string("tests/fixtures/supabase/kong.yml").unwrap();
    let names = kong_route_names(&yaml);
    assert_eq!(names.len(), 21);
    let gw = Gateway::start("kong.yml", &yaml, SUPABASE_ENV, &[]);
    let file = gw.config.to_str().unwrap().to_string();
    let browser = Browser::start();
    let mut page = Page::open(&browser).await;
    let url = format!("{}/", gw.status_url());
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_for(
        "the first render",
        "document.body && document.body.dataset.ready === '1'",
    )
    .await;

    // Every route of kong.yml is a row; /mcp is highlighted with its state.
    let rows = page
        .wait_for(
            "21 route rows",
            "(() => { const r = [...document.querySelectorAll('#routes tbody tr')].map(t => t.dataset.route); return r.length === 21 ? r : null })()",
        )
        .await;
    let mut shown: Vec<String> = serde_json::from_value(rows).unwrap();
    let mut want = names.clone();
    shown.sort();
    want.sort();
    assert_eq!(shown, want);
    let mcp = page
        .eval("document.querySelector('.mcp-state[data-route=\"mcp\"]').textContent")
        .await;
    let api_mcp = get(gw.status, "/api/routes").json()["mcp"].clone();
    let state = api_mcp
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["route"] == "mcp")
        .unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(mcp.as_str().unwrap().ends_with(&state), "{mcp} vs {state}");
    let mcp_row_class = page
        .eval("document.querySelector('#routes tr[data-route=\"mcp\"]').className")
        .await;
    assert!(
        mcp_row_class.as_str().unwrap().contains("mcp"),
        "{mcp_row_class}"
    );

    // The chart moves after traffic.
    let before: f64 = page
        .eval("Number(document.getElementById('traffic-chart').dataset.total)")
        .await
        .as_f64()
        .unwrap();
    let proxy = gw.proxy;
    tokio::task::spawn_blocking(move || {
        // Spread over a few seconds (pacing, not synchronisation) so the chart has a shape.
        for i in 0..40 {
            if i % 10 == 9 {
                std::thread::sleep(Duration::from_millis(700));
            }
            // Studio's catch-all asks for basic auth; /mcp is closed: answered by the
            // gateway itself, so no upstream is needed.
            let path = if i % 2 == 0 { "/nothing-here" } else { "/mcp" };
            let r = get(proxy, path);
            assert!((400..500).contains(&r.status), "{path}: {}", r.status);
        }
    })
    .await
    .unwrap();
    let after = page
        .wait_for(
            "the chart to show the traffic",
            &format!(
                "(() => {{ const c = document.getElementById('traffic-chart'); const t = Number(c.dataset.total); return t > {before} && c.querySelectorAll('polygon').length > 0 ? t : 0 }})()"
            ),
        )
        .await;
    assert!(after.as_f64().unwrap() > before);

    // The explain form gives the CLI's verdict.
    let target = "http://localhost:8000/mcp";
    page.eval(&format!(
        "(() => {{ document.getElementById('x-method').value = 'GET'; document.getElementById('x-url').value = {}; document.getElementById('x-submit').click(); return true }})()",
        json!(target)
    ))
    .await;
    let shown = page
        .wait_for(
            "the explain verdict",
            "(() => { const v = document.getElementById('x-verdict'); return v.dataset.done === '1' ? v.textContent : null })()",
        )
        .await;
    let (code, out) = cli(&["explain", "--config", &file, "GET", target], SUPABASE_ENV);
    assert_eq!(code, 0, "{out}");
    assert_eq!(shown, format!("verdict: {}", verdict(&out)));

    // A rejected edit shows in the reload history with the error's file:line:col.
    std::fs::write(&gw.config, format!("{yaml}\nservices: [\n")).unwrap();
    let (code, check) = cli(&["check", "--config", &file], SUPABASE_ENV);
    assert_eq!(code, 1, "{check}");
    let first_error = check.lines().next().unwrap().to_string();
    let pos = first_error
        .strip_prefix(&format!("{file}:"))
        .and_then(|r| r.split(':').next())
        .and_then(|l| l.parse::<u32>().ok());
    assert!(pos.is_some(), "no file:line in {first_error}");
    let history = page
        .wait_for(
            "the rejected reload in the history",
            "(() => { const r = document.querySelector('#reloads tbody tr.failed'); return r ? r.textContent : null })()",
        )
        .await;
    assert!(
        history.as_str().unwrap().contains(&first_error),
        "{history} lacks {first_error}"
    );

    // The screenshot, as a test artefact (and for the README).
    page.eval("window.scrollTo(0, 0)").await;
    let height = page
        .eval("Math.ceil(document.documentElement.scrollHeight)")
        .await
        .as_u64()
        .unwrap();
    let shot = page
        .call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": 1400, "height": height.min(4000), "scale": 1}}),
        )
        .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let out = target_dir().join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    drop(browser);
}
