//! What the subcommands do, kept out of `main.rs` so tests can reach it.

use crate::access_log;
use crate::config;
use crate::ipset::IpSet;
use crate::proxy::{Gateway, Settings};
use crate::server;
use crate::upstream::ClientCache;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The default config, compiled into the binary: served when no file is named and
/// ./gateway.yaml does not exist.
pub const EMBEDDED_CONFIG: &str = include_str!("../gateway.yaml");
pub const EMBEDDED_NAME: &str = "<embedded gateway.yaml>";

/// Where the config comes from: the flag/env, else KONG_DECLARATIVE_CONFIG, else
/// ./gateway.yaml, else the embedded copy (None). An empty value counts as unset:
/// `PORTCULLIS_CONFIG=` is how a compose file clears the image's default so that
/// Supabase's KONG_DECLARATIVE_CONFIG applies.
pub fn config_path(flag: Option<String>) -> Option<String> {
    if let Some(p) = flag
        && !p.is_empty()
    {
        return Some(p);
    }
    if let Ok(p) = std::env::var("KONG_DECLARATIVE_CONFIG")
        && !p.is_empty()
    {
        return Some(p);
    }
    if std::path::Path::new("gateway.yaml").exists() {
        return Some("gateway.yaml".into());
    }
    None
}

pub fn check(flag: Option<String>) -> ExitCode {
    let (name, text) = match config_path(flag) {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(t) => (p, t),
            Err(e) => {
                eprintln!("{p}:1:1: cannot read the config file: {e}");
                return ExitCode::from(1);
            }
        },
        None => (EMBEDDED_NAME.to_string(), EMBEDDED_CONFIG.to_string()),
    };
    match config::load_config(&name, &text) {
        Ok(cfg) => {
            println!(
                "{name}: OK ({} services, {} routes, {} plugins, {} consumers)",
                cfg.services.len(),
                cfg.routes.len(),
                cfg.plugins.len(),
                cfg.consumers.len()
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in &errs.0 {
                println!("{e}");
            }
            eprintln!("{name}: {} error(s)", errs.0.len());
            ExitCode::from(1)
        }
    }
}

pub struct RunOptions {
    pub config: Option<String>,
    pub listen: String,
    pub status_listen: String,
    pub trusted_ips: Option<String>,
    pub real_ip_header: Option<String>,
    pub real_ip_recursive: bool,
    pub access_log: String,
    /// HTTPS listener address, or "off".
    pub tls_listen: String,
    /// PEM certificate chain and private key; neither: a self-signed certificate.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub drain_timeout: Duration,
    pub limits: server::Limits,
    /// Worker threads serving the proxy listeners (each its own runtime).
    pub workers: usize,
    /// The dashboard on the status listener: off, or who may see it.
    pub dashboard: crate::dashboard::Options,
}

/// `--workers`: a positive count; unset: the cores this process may run on (its CPU
/// affinity and cgroup quota), as nginx's `worker_processes auto`.
pub fn parse_workers(v: Option<&str>) -> Result<usize, String> {
    match v.map(str::trim) {
        None | Some("auto") => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!(
                "'{s}' is not a number of workers between 1 and 1024 (or 'auto')"
            )),
        },
    }
}

/// A flag value in seconds (`30`, `0.5`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("'{s}' is not a number of seconds"))
}

/// The certificate files, when both or neither are given (an empty value is unset).
fn tls_files(o: &RunOptions) -> Result<Option<(String, String)>, String> {
    let set = |v: &Option<String>| v.clone().filter(|p| !p.trim().is_empty());
    match (set(&o.tls_cert), set(&o.tls_key)) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err("--tls-cert needs --tls-key (or KONG_SSL_CERT_KEY)".into()),
        (None, Some(_)) => Err("--tls-key needs --tls-cert (or KONG_SSL_CERT)".into()),
    }
}

fn settings(o: &RunOptions) -> Result<Settings, String> {
    let mut s = Settings::default();
    if let Some(list) = &o.trusted_ips {
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        s.trusted_ips = IpSet::parse(&entries).map_err(|errs| {
            errs.into_iter()
                .map(|(_, m)| format!("--trusted-ips: {m}"))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    }
    if let Some(h) = &o.real_ip_header {
        s.real_ip_header = http::HeaderName::from_bytes(h.trim().as_bytes())
            .map_err(|_| format!("--real-ip-header: invalid header name '{h}'"))?;
    }
    s.real_ip_recursive = o.real_ip_recursive;
    s.access_log = o
        .access_log
        .parse::<access_log::Format>()
        .map_err(|e| format!("--access-log: {e}"))?;
    if o.limits.max_connections == 0 {
        return Err("--max-connections: must be at least 1".into());
    }
    if o.limits.max_header_bytes < 1024 || o.limits.max_uri_bytes < 64 {
        return Err(
            "--max-header-bytes must be at least 1024 and --max-uri-bytes at least 64".into(),
        );
    }
    if o.limits.h2_max_concurrent_streams == 0 {
        return Err("--h2-max-concurrent-streams: must be at least 1".into());
    }
    if o.limits.h2_max_send_buffer == 0 || o.limits.h2_max_send_buffer > u32::MAX as usize {
        return Err("--h2-max-send-buffer: must be between 1 and 4294967295".into());
    }
    s.limits = o.limits.clone();
    s.drain_timeout = o.drain_timeout;
    Ok(s)
}

pub fn run(o: RunOptions) -> ExitCode {
    let settings = match settings(&o) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    // An empty PORTCULLIS_LISTEN would otherwise start a gateway that proxies nothing
    // while /health says OK.
    if o.listen != "off" && o.listen.split(',').all(|a| a.trim().is_empty()) {
        eprintln!("portcullis: --listen: no address given (use 'off' for no proxy listener)");
        return ExitCode::from(2);
    }
    let tls_listen = o.tls_listen.trim().to_string();
    if tls_listen.is_empty() {
        eprintln!("portcullis: --tls-listen: no address given (use 'off' for no TLS listener)");
        return ExitCode::from(2);
    }
    let tls_files = match tls_files(&o) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    // The control runtime (reload, status listener, signals) runs on this thread; the
    // proxy listeners run on `workers` threads of their own (see `server::Workers`).
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let workers = o.workers.max(1);
    rt.block_on(async move {
        let clients = ClientCache::default();
        let path = config_path(o.config.clone());
        let loaded = match &path {
            Some(p) => config::load(p, 1, &clients),
            None => config::load_bytes(EMBEDDED_NAME, EMBEDDED_CONFIG.as_bytes(), 1, &clients),
        };
        let snap = match loaded {
            Ok(s) => s,
            Err(errs) => {
                for e in &errs.0 {
                    eprintln!("{e}");
                }
                eprintln!("portcullis: the config is invalid; not starting");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            config = snap.file.as_str(),
            routes = snap.config.routes.len(),
            hash = snap.config_hash.as_str(),
            "config loaded"
        );
        let mut gateway = Gateway::new(snap, settings, clients);
        if tls_listen != "off" {
            let certs = match &tls_files {
                Some((cert, key)) => crate::tls::ServerCerts::from_files(
                    std::path::Path::new(cert),
                    std::path::Path::new(key),
                )
                .map_err(|errs| errs.to_string()),
                None => crate::tls::ServerCerts::self_signed(),
            };
            match certs {
                Ok(c) => {
                    if c.is_self_signed() {
                        tracing::info!("no TLS certificate configured: using a self-signed one for localhost");
                    }
                    gateway.tls = Some(Arc::new(c));
                }
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("portcullis: the TLS certificate is unusable; not starting");
                    return ExitCode::from(1);
                }
            }
        }
        let gw = Arc::new(gateway);

        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = rx.clone();
        let shutdown = move || {
            let mut rx = stop.clone();
            async move {
                let _ = rx.wait_for(|v| *v).await;
            }
        };
        // Before the listeners: once they log "listening", a SIGHUP or an edit of the
        // file is already caught (SIGHUP's default action would kill the process).
        let reloader = crate::reload::spawn(
            Arc::clone(&gw),
            path.as_ref().map(std::path::PathBuf::from),
            shutdown(),
        );
        let mut sockets = Vec::new();
        if o.listen != "off" {
            for addr in o.listen.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                match server::bind_shared(addr, workers) {
                    Ok(ls) => {
                        tracing::info!(addr = %local_addr(&ls), workers, "proxy listening");
                        sockets.push((ls, false));
                    }
                    Err(e) => {
                        eprintln!("portcullis: cannot listen on {addr}: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
        }
        if tls_listen != "off" {
            match server::bind_shared(&tls_listen, workers) {
                Ok(ls) => {
                    tracing::info!(addr = %local_addr(&ls), workers, "tls listening");
                    sockets.push((ls, true));
                }
                Err(e) => {
                    eprintln!("portcullis: cannot listen on {tls_listen} (TLS): {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let pool = match server::Workers::start(Arc::clone(&gw), workers, sockets, &rx) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("portcullis: cannot start the worker threads: {e}");
                return ExitCode::from(1);
            }
        };
        // The status listener outlives the drain, answering /health 503 meanwhile.
        let (status_tx, status_rx) = tokio::sync::watch::channel(false);
        let mut status_task = None;
        if o.status_listen != "off" {
            let addr = o.status_listen.trim();
            let l = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("portcullis: cannot listen on {addr} (status): {e}");
                    return ExitCode::from(1);
                }
            };
            tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "status listening");
            let mut rx = status_rx.clone();
            status_task = Some(tokio::spawn(server::run_status_with(Arc::clone(&gw), l, o.dashboard.clone(), async move {
                let _ = rx.wait_for(|v| *v).await;
            })));
        }
        wait_for_signal().await;
        tracing::info!(
            drain_timeout_s = gw.settings.drain_timeout.as_secs_f64(),
            "shutting down: no new connections; draining in-flight requests"
        );
        gw.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        gw.metrics.set_draining(true);
        let _ = tx.send(true);
        let drained = pool.finished();
        // A second SIGTERM/SIGINT skips the rest of the drain.
        tokio::select! {
            _ = drained => tracing::info!("drained; exiting"),
            _ = wait_for_signal() => tracing::warn!("second signal: exiting without finishing the drain"),
        }
        let _ = status_tx.send(true);
        if let Some(t) = status_task {
            let _ = t.await;
        }
        let _ = reloader.await;
        ExitCode::SUCCESS
    })
}

/// The address a group of shared listeners is bound to (they share it).
fn local_addr(ls: &[std::net::TcpListener]) -> String {
    ls.first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `portcullis explain`: load the config (exactly as `run` would) and describe what
/// it would do with one request.
pub fn explain(
    flag: Option<String>,
    headers: &[String],
    client_ip: std::net::IpAddr,
    body: Option<&str>,
    method: &str,
    url: &str,
) -> ExitCode {
    let body = match body.map(|b| match b.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}")),
        None => Ok(b.as_bytes().to_vec()),
    }) {
        None => None,
        Some(Ok(b)) => Some(bytes::Bytes::from(b)),
        Some(Err(e)) => {
            eprintln!("portcullis explain: {e}");
            return ExitCode::from(2);
        }
    };
    let req = match crate::explain::request(method, url, headers, client_ip, body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            return ExitCode::from(2);
        }
    };
    let clients = ClientCache::default();
    let loaded = match config_path(flag) {
        Some(p) => config::load(&p, 1, &clients),
        None => config::load_bytes(EMBEDDED_NAME, EMBEDDED_CONFIG.as_bytes(), 1, &clients),
    };
    let snap = match loaded {
        Ok(s) => s,
        Err(errs) => {
            for e in &errs.0 {
                println!("{e}");
            }
            eprintln!("portcullis explain: the config is invalid");
            return ExitCode::from(1);
        }
    };
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    print!("{}", rt.block_on(crate::explain::explain(&snap, &req)));
    ExitCode::SUCCESS
}

/// `portcullis health`: GET /health on the status listener; exit 0 on 200.
pub fn health(status_listen: &str, timeout_ms: u64) -> ExitCode {
    use std::io::{Read, Write};
    let addr = status_listen.trim();
    if addr == "off" {
        eprintln!("portcullis health: the status listener is off");
        return ExitCode::from(1);
    }
    // A listener bound to 0.0.0.0 / [::] is reached on loopback.
    let target = addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    let timeout = std::time::Duration::from_millis(timeout_ms.max(1));
    let sock = match std::net::ToSocketAddrs::to_socket_addrs(&target)
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(s) => s,
        None => {
            eprintln!("portcullis health: invalid address '{addr}'");
            return ExitCode::from(1);
        }
    };
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(
            format!("GET /health HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut out = Vec::new();
        s.take(4096).read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })();
    match result {
        Ok(resp) if resp.starts_with("HTTP/1.1 200") => {
            println!("healthy ({target})");
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!(
                "portcullis health: unhealthy: {}",
                resp.lines().next().unwrap_or("empty answer")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("portcullis health: {target}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Builds a tokio runtime, or says why not (exit 1).
fn runtime(mut b: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    b.enable_all().build().map_err(|e| {
        eprintln!("portcullis: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}
