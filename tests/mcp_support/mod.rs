//! What the MCP end-to-end tests (`tests/mcp.rs`, `tests/mcp_policy.rs`) share: where the
//! SDKs are, MCP servers started as child processes, client scripts run to a JSON result.
//!
//! Needs (scripts/test sets both up and exports the variables):
//! - `PORTCULLIS_TEST_PYTHON`: a Python with `mcp==2.3.0` (default: `.venv-mcp/bin/python`);
//! - `PORTCULLIS_TEST_NODE_MODULES`: a `node_modules` with `@modelcontextprotocol/sdk` and
//!   `@supabase/mcp-server-supabase` (default: `tests/mcp-node/node_modules`), and `node`
//!   on PATH (or `PORTCULLIS_TEST_NODE`).
//!
//! Missing either fails the test with the set-up command; nothing is skipped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

pub const SETUP: &str = "run scripts/test (it creates .venv-mcp and tests/mcp-node/node_modules), or by hand: \
python3 -m venv .venv-mcp && .venv-mcp/bin/pip install mcp==2.3.0 && (cd tests/mcp-node && npm ci), \
then export PORTCULLIS_TEST_PYTHON=$PWD/.venv-mcp/bin/python PORTCULLIS_TEST_NODE_MODULES=$PWD/tests/mcp-node/node_modules";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn python() -> PathBuf {
    let p = match std::env::var_os("PORTCULLIS_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo().join(".venv-mcp/bin/python"),
    };
    assert!(
        p.exists(),
        "no Python with the MCP SDK at {} (PORTCULLIS_TEST_PYTHON): {SETUP}",
        p.display()
    );
    p
}

pub fn node_modules() -> PathBuf {
    let p = match std::env::var_os("PORTCULLIS_TEST_NODE_MODULES") {
        Some(p) => PathBuf::from(p),
        None => repo().join("tests/mcp-node/node_modules"),
    };
    for pkg in ["@modelcontextprotocol/sdk", "@supabase/mcp-server-supabase"] {
        assert!(
            p.join(pkg).join("package.json").exists(),
            "no {pkg} under {} (PORTCULLIS_TEST_NODE_MODULES): {SETUP}",
            p.display()
        );
    }
    p
}

pub fn node() -> std::ffi::OsString {
    std::env::var_os("PORTCULLIS_TEST_NODE").unwrap_or_else(|| "node".into())
}

pub fn script(name: &str) -> PathBuf {
    repo().join("tests/mcp").join(name)
}

/// A scratch directory holding script `name` next to a `node_modules` link (ES modules
/// resolve packages next to the script).
pub fn node_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(script(name), dir.path().join(name)).unwrap();
    std::os::unix::fs::symlink(node_modules(), dir.path().join("node_modules")).unwrap();
    dir
}

/// An MCP server process that prints "PORT <n>" once bound; killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    _child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub async fn start(mut cmd: Command, what: &str, dir: Option<tempfile::TempDir>) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}: {SETUP}"));
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(p) = line.strip_prefix("PORT ") {
                    return Some(p.trim().parse::<u16>().unwrap());
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(port) = port else {
            let _ = child.start_kill();
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "{what} did not start: {}\n{SETUP}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Server {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
            _dir: dir,
        }
    }

    /// `tests/mcp/server.py` (the Python SDK server) with `args`.
    pub async fn python(args: &[&str]) -> Server {
        let mut cmd = Command::new(python());
        cmd.arg(script("server.py")).args(args);
        Server::start(cmd, "the Python MCP server", None).await
    }
}

/// What a client script printed last (JSON), or its failure output.
pub type ClientResult = Result<Value, String>;

/// Runs a client script to its end (bounded) and reads its last line as JSON.
pub async fn run(mut cmd: Command, what: &str) -> ClientResult {
    cmd.kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within 120 s"))
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}: {SETUP}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("{what}: bad output ({e}): {stdout}\n{stderr}"))
}

/// Progress events spread out as sent (~0.5 s apart), not bunched at the end.
pub fn assert_streamed(progress: &Value, what: &str) {
    assert_eq!(progress["result"], "counted to 3", "{what}");
    let s: Vec<f64> = progress["stamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(s.len(), 3, "{what}: {s:?}");
    // Sent at 0.5 s; 1.3 s leaves room for a loaded machine yet is before the end (1.5 s).
    assert!(s[0] < 1.3, "{what}: first progress late (buffered?): {s:?}");
    assert!(
        s[2] - s[0] > 0.7,
        "{what}: progress bunched (buffered?): {s:?}"
    );
}

/// A config of `services:` blocks.
pub fn services(blocks: &[String]) -> String {
    format!("_format_version: \"3.0\"\nservices:\n{}", blocks.concat())
}
