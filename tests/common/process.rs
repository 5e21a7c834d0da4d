//! The real `portcullis` binary as a child process: the one way tests start it.
//!
//! ```ignore
//! let g = GatewayProcess::run()
//!     .config_yaml(&yaml)
//!     .args(["--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"])
//!     .env("PORTCULLIS_TLS_LISTEN", "off")
//!     .start();
//! get(g.proxy_addr(), "/x").await;
//! ```
//!
//! The child starts with a cleared environment (PATH and NO_COLOR only, plus what the
//! test adds), in its own temp dir unless told otherwise. stdout and stderr are read on
//! threads from the start, so pipes never fill and `log()` is always the output so far.
//! `start` waits (bounded) for the expected "listening addr=" lines and reads the
//! addresses from them. Dropping a `GatewayProcess` kills and reaps the child and then
//! removes its temp dir, also when the test panics.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Start-up: spawn to "listening" (debug build, 2 shared cores).
pub const START_WAIT: Duration = Duration::from_secs(20);

/// Lines of one of the child's pipes, read on a thread so the pipe never fills.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn read_from(pipe: impl Read + Send + 'static) -> (Lines, std::thread::JoinHandle<()>) {
        let lines = Lines::default();
        let sink = lines.clone();
        let t = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap().push(line);
            }
        });
        (lines, t)
    }
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn text(&self) -> String {
        self.all().join("\n")
    }
}

/// The addresses logged on lines containing `marker` (`... proxy listening addr=…`).
pub fn logged_addrs(lines: &[String], marker: &str) -> Vec<SocketAddr> {
    lines
        .iter()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let rest = &l[l.find("addr=")? + 5..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '\u{1b}')
                .unwrap_or(rest.len());
            rest[..end].trim_matches('"').parse().ok()
        })
        .collect()
}

/// What `start` waits for before it returns.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub proxies: usize,
    pub tls: usize,
    pub status: bool,
}

/// How to start the gateway; `start` (or `finish` for a run expected to end by itself).
pub struct GatewayBuilder {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    config: Option<Config>,
    ready: Ready,
    capture_stdout: bool,
    start_wait: Duration,
    hint: String,
}

enum Config {
    Yaml(String),
    File(PathBuf),
}

/// A running (or exited) gateway process; killed, reaped and cleaned up on drop.
pub struct GatewayProcess {
    child: Child,
    proxy: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    status: Option<SocketAddr>,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// stdout lines already handed out by `next_stdout_line`.
    seen: usize,
    dir: tempfile::TempDir,
}

/// A run that ended by itself (`check`, or `run` refusing to start).
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl GatewayProcess {
    /// `portcullis run …`.
    pub fn run() -> GatewayBuilder {
        let mut b = GatewayProcess::command(BIN);
        b.arg("run");
        b
    }

    /// `portcullis` with no subcommand yet (`check`, `health`, …).
    pub fn bin() -> GatewayBuilder {
        GatewayProcess::command(BIN)
    }

    /// Another program that ends up exec'ing the gateway (a wrapper script, `unshare`).
    /// The environment still starts cleared; `PORTCULLIS_BIN` names the binary.
    pub fn command(program: impl AsRef<OsStr>) -> GatewayBuilder {
        let mut env = vec![(OsString::from("NO_COLOR"), OsString::from("1"))];
        if let Some(p) = std::env::var_os("PATH") {
            env.push(("PATH".into(), p));
        }
        GatewayBuilder {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env,
            cwd: None,
            config: None,
            ready: Ready {
                proxies: 1,
                tls: 0,
                status: true,
            },
            capture_stdout: true,
            start_wait: START_WAIT,
            hint: String::new(),
        }
    }
}

impl GatewayBuilder {
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `--listen 127.0.0.1:0 --status-listen 127.0.0.1:0 --tls-listen off`.
    pub fn loopback(&mut self) -> &mut Self {
        self.args([
            "--listen",
            "127.0.0.1:0",
            "--status-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
        ])
    }

    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(&mut self, vars: &[(K, V)]) -> &mut Self {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Working directory (default: the process's own temp dir).
    pub fn cwd(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// `--config <tempdir>/gateway.yaml` holding `yaml`.
    pub fn config_yaml(&mut self, yaml: &str) -> &mut Self {
        self.config = Some(Config::Yaml(yaml.to_string()));
        self
    }

    /// `--config <path>`.
    pub fn config_file(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.config = Some(Config::File(path.as_ref().to_owned()));
        self
    }

    /// Ready once `proxies` proxy listeners, `tls` TLS listeners and (if `status`) the
    /// status listener are logged. Default: one proxy listener and the status listener.
    pub fn ready_when(&mut self, proxies: usize, tls: usize, status: bool) -> &mut Self {
        self.ready = Ready {
            proxies,
            tls,
            status,
        };
        self
    }

    /// Send stdout to /dev/null instead of capturing it.
    pub fn discard_stdout(&mut self) -> &mut Self {
        self.capture_stdout = false;
        self
    }

    /// Added to the panic message when the process cannot start or exits before
    /// listening (what the test needs: a tool, a privilege).
    pub fn hint(&mut self, text: &str) -> &mut Self {
        self.hint = format!(" ({text})");
        self
    }

    pub fn start_wait(&mut self, limit: Duration) -> &mut Self {
        self.start_wait = limit;
        self
    }

    /// Spawns without waiting for anything (for runs expected to fail at start).
    pub fn spawn(&self) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .current_dir(self.cwd.as_deref().unwrap_or(dir.path()))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(if self.capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        match &self.config {
            Some(Config::Yaml(y)) => {
                let p = dir.path().join("gateway.yaml");
                std::fs::write(&p, y).unwrap();
                cmd.arg("--config").arg(p);
            }
            Some(Config::File(p)) => {
                cmd.arg("--config").arg(p);
            }
            None => {}
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}{}", self.program, self.hint));
        let mut readers = Vec::new();
        let stdout = match child.stdout.take() {
            Some(p) => {
                let (l, t) = Lines::read_from(p);
                readers.push(t);
                l
            }
            None => Lines::default(),
        };
        let (stderr, t) = Lines::read_from(child.stderr.take().unwrap());
        readers.push(t);
        GatewayProcess {
            child,
            proxy: Vec::new(),
            tls: Vec::new(),
            status: None,
            stdout,
            stderr,
            readers,
            seen: 0,
            dir,
        }
    }

    /// Spawns and waits (bounded) until the expected listeners are logged.
    pub fn start(&self) -> GatewayProcess {
        let ready = self.ready;
        let limit = self.start_wait;
        let mut g = self.spawn();
        g.wait_ready(ready, limit, &self.hint);
        g
    }

    /// Runs to completion (bounded by `limit`) and returns the exit status and output.
    pub fn finish(&self, limit: Duration) -> Finished {
        let mut g = self.spawn();
        let status = g.wait_exit_blocking(limit);
        Finished {
            status,
            stdout: g.stdout.all(),
            stderr: g.stderr.text(),
        }
    }
}

impl GatewayProcess {
    fn wait_ready(&mut self, ready: Ready, limit: Duration, hint: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.stderr.all();
            self.proxy = logged_addrs(&lines, "proxy listening");
            self.tls = logged_addrs(&lines, "tls listening");
            self.status = logged_addrs(&lines, "status listening").first().copied();
            if self.proxy.len() >= ready.proxies
                && self.tls.len() >= ready.tls
                && self.status.is_some() == ready.status
                && (ready.status || self.proxy.len() + self.tls.len() > 0)
            {
                break;
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                self.join_readers(Instant::now() + Duration::from_secs(5));
                panic!(
                    "portcullis exited ({s}) before listening{hint}:\n{}",
                    self.stderr.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "portcullis not ready after {limit:?}:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.proxy.len(), ready.proxies, "{}", self.stderr.text());
    }

    /// The first proxy listener.
    pub fn proxy_addr(&self) -> SocketAddr {
        *self
            .proxy
            .first()
            .unwrap_or_else(|| panic!("no proxy listener:\n{}", self.stderr.text()))
    }

    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy
    }

    pub fn tls_addr(&self) -> SocketAddr {
        *self
            .tls
            .first()
            .unwrap_or_else(|| panic!("no tls listener:\n{}", self.stderr.text()))
    }

    pub fn status_addr(&self) -> SocketAddr {
        self.status
            .unwrap_or_else(|| panic!("no status listener:\n{}", self.stderr.text()))
    }

    /// The exit status if the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's temp dir (its cwd unless the builder named another).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// stderr so far (the gateway's own log).
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.all()
    }

    /// stdout so far (the access log, when it goes to stdout).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.all()
    }

    /// Everything logged so far: stderr, then stdout.
    pub fn log(&self) -> String {
        format!(
            "--- stderr\n{}\n--- stdout\n{}",
            self.stderr.text(),
            self.stdout.text()
        )
    }

    /// The next stdout line not yet returned by this method (bounded wait).
    pub async fn next_stdout_line(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.stdout.all();
            if lines.len() > self.seen {
                self.seen += 1;
                return lines[self.seen - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no new stdout line after {limit:?}; stdout so far: {lines:?}\nstderr:\n{}",
                self.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `sig` ("TERM", "HUP", "INT", …) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{}", sig.trim_start_matches('-')))
            .arg(self.child.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    fn join_readers(&mut self, deadline: Instant) {
        while self.readers.iter().any(|t| !t.is_finished()) {
            assert!(Instant::now() < deadline, "output pipes still open");
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.readers.drain(..) {
            t.join().unwrap();
        }
    }

    /// Polls until the process exits (then its output is read to the end), or panics
    /// after `limit` (killing it). Blocks the thread: for sync tests.
    pub fn wait_exit_blocking(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.join_readers(deadline.max(Instant::now() + Duration::from_secs(5)));
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("portcullis still running after {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `wait_exit_blocking` for async tests (yields instead of blocking the thread).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                let end = deadline.max(Instant::now() + Duration::from_secs(5));
                while self.readers.iter().any(|t| !t.is_finished()) {
                    assert!(Instant::now() < end, "output pipes still open");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("portcullis still running after {limit:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `signal(sig)`, then `wait_exit(limit)`.
    pub async fn stop(&mut self, sig: &str, limit: Duration) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(limit).await
    }

    /// Peak resident set size so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The temp dir goes with `self.dir` after this.
    }
}
