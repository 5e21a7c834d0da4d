//! The `portcullis` command: parse flags, set up logging, hand off to the library.

use clap::{Args, Parser, Subcommand};
use portcullis::cli;
use std::process::ExitCode;

// Per-thread caches suit one runtime per core; glibc malloc/free was ~8 % of a
// proxied request's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A Kong-compatible access gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run(Box<RunArgs>),
    /// Validate a config file: exit 0 if valid, else 1 listing every error.
    Check(ConfigArg),
    /// Show what the gateway would do with a request, without sending anything.
    Explain(ExplainArgs),
    /// Exit 0 when the running gateway's status listener answers /health (for
    /// container healthchecks: the image has no curl).
    Health(HealthArgs),
}

#[derive(Args)]
struct HealthArgs {
    /// The gateway's status listener.
    #[arg(
        long,
        env = "PORTCULLIS_STATUS_LISTEN",
        default_value = "127.0.0.1:8100"
    )]
    status_listen: String,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Request header, repeatable: -H 'Origin: https://app.example'
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// The client address plugins such as ip-restriction see.
    #[arg(long, default_value = "127.0.0.1")]
    client_ip: std::net::IpAddr,
    /// Request body (mcp-policy judges it), e.g. -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute_sql"}}'; @FILE reads a file.
    #[arg(short = 'd', long = "body")]
    body: Option<String>,
    /// HTTP method, e.g. GET.
    method: String,
    /// The URL as the client would send it, e.g. http://localhost:8000/mcp
    url: String,
}

#[derive(Args)]
struct ConfigArg {
    /// Config file (Kong declarative YAML). Env: PORTCULLIS_CONFIG, else KONG_DECLARATIVE_CONFIG.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Proxy listen addresses, comma separated, or "off".
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8000")]
    listen: String,
    /// Status listener (/health, /status), or "off".
    #[arg(
        long,
        env = "PORTCULLIS_STATUS_LISTEN",
        default_value = "127.0.0.1:8100"
    )]
    status_listen: String,
    /// The read-only dashboard on the status listener: "on" (loopback: open to local
    /// clients; elsewhere only with --dashboard-user and --dashboard-password) or "off".
    #[arg(long, env = "PORTCULLIS_DASHBOARD", default_value = "on", value_parser = ["on", "off"])]
    dashboard: String,
    /// Basic-auth user of the dashboard (required with a non-loopback status listener).
    #[arg(long, env = "PORTCULLIS_DASHBOARD_USER")]
    dashboard_user: Option<String>,
    /// Basic-auth password of the dashboard; prefer the environment variable to the flag.
    #[arg(long, env = "PORTCULLIS_DASHBOARD_PASSWORD", hide_env_values = true)]
    dashboard_password: Option<String>,
    /// Trusted proxies (CIDRs, comma separated). Env: PORTCULLIS_TRUSTED_IPS, else KONG_TRUSTED_IPS.
    #[arg(long, env = "PORTCULLIS_TRUSTED_IPS")]
    trusted_ips: Option<String>,
    /// Header carrying the client address from trusted proxies. Env: PORTCULLIS_REAL_IP_HEADER, else KONG_REAL_IP_HEADER.
    #[arg(long, env = "PORTCULLIS_REAL_IP_HEADER")]
    real_ip_header: Option<String>,
    /// Walk the real-IP header right to left past trusted proxies.
    #[arg(long, env = "PORTCULLIS_REAL_IP_RECURSIVE")]
    real_ip_recursive: bool,
    /// Access log format: combined, json or off.
    #[arg(long, env = "PORTCULLIS_ACCESS_LOG", default_value = "combined")]
    access_log: String,
    /// HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN), or "off".
    #[arg(long, env = "PORTCULLIS_TLS_LISTEN", default_value = "0.0.0.0:8443")]
    tls_listen: String,
    /// PEM certificate chain for the HTTPS listener (none: self-signed). Env: PORTCULLIS_TLS_CERT, else KONG_SSL_CERT.
    #[arg(long, env = "PORTCULLIS_TLS_CERT")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert. Env: PORTCULLIS_TLS_KEY, else KONG_SSL_CERT_KEY.
    #[arg(long, env = "PORTCULLIS_TLS_KEY")]
    tls_key: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "PORTCULLIS_DRAIN_TIMEOUT", default_value = "30", value_parser = cli::parse_seconds)]
    drain_timeout: std::time::Duration,
    /// Maximum open client connections (the rest wait to be accepted).
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Maximum request line + headers, in bytes (over: 400 "Request header or cookie too large").
    #[arg(long, env = "PORTCULLIS_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    max_header_bytes: usize,
    /// Maximum request target (path and query), in bytes (over: 414 "URI too long").
    #[arg(long, env = "PORTCULLIS_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    max_uri_bytes: usize,
    /// Seconds a client gets to send a request head (and the TLS handshake); also the idle keep-alive timeout.
    #[arg(long, env = "PORTCULLIS_HEADER_TIMEOUT", default_value = "60", value_parser = cli::parse_seconds)]
    header_timeout: std::time::Duration,
    /// Seconds an HTTP/2 connection may stay without an open stream before GOAWAY (0: never).
    #[arg(long, env = "PORTCULLIS_IDLE_TIMEOUT", default_value = "60", value_parser = cli::parse_seconds)]
    idle_timeout: std::time::Duration,
    /// Seconds a response may wait for the client to take it (socket or HTTP/2 window) before the connection is closed (0: never).
    #[arg(long, env = "PORTCULLIS_SEND_TIMEOUT", default_value = "60", value_parser = cli::parse_seconds)]
    send_timeout: std::time::Duration,
    /// Seconds a request body that a plugin reads whole may take to arrive (over: 408; 0: no limit).
    #[arg(long, env = "PORTCULLIS_BODY_TIMEOUT", default_value = "60", value_parser = cli::parse_seconds)]
    body_timeout: std::time::Duration,
    /// HTTP/2 streams a client may have open at once (more are refused).
    #[arg(
        long,
        env = "PORTCULLIS_H2_MAX_CONCURRENT_STREAMS",
        default_value_t = 128
    )]
    h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before they are served (rapid reset), then GOAWAY.
    #[arg(long, env = "PORTCULLIS_H2_MAX_PENDING_RESETS", default_value_t = 20)]
    h2_max_pending_resets: usize,
    /// HTTP/2 streams the gateway may reset for the client's protocol errors, then GOAWAY.
    #[arg(long, env = "PORTCULLIS_H2_MAX_ERROR_RESETS", default_value_t = 1024)]
    h2_max_error_resets: usize,
    /// Response bytes buffered per HTTP/2 stream for a client that is not reading.
    #[arg(long, env = "PORTCULLIS_H2_MAX_SEND_BUFFER", default_value_t = 400 * 1024)]
    h2_max_send_buffer: usize,
    /// Seconds between HTTP/2 PINGs to clients (unanswered for 20 s: closed; 0: no pings).
    #[arg(long, env = "PORTCULLIS_H2_KEEPALIVE", default_value = "0", value_parser = cli::parse_seconds)]
    h2_keepalive: std::time::Duration,
    /// Worker threads, each with its own runtime, listener (SO_REUSEPORT) and upstream
    /// connections. Default: the number of cores the process may use.
    #[arg(long, env = "PORTCULLIS_WORKERS")]
    workers: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colours only on a terminal: container logs and log pipelines get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
    match cli.command {
        Command::Check(a) => cli::check(a.config),
        Command::Health(a) => cli::health(&a.status_listen, a.timeout_ms),
        Command::Explain(a) => cli::explain(
            a.config.config,
            &a.headers,
            a.client_ip,
            a.body.as_deref(),
            &a.method,
            &a.url,
        ),
        Command::Run(a) => {
            let workers = match cli::parse_workers(non_empty(a.workers).as_deref()) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("portcullis: --workers: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = cli::RunOptions {
                workers,
                dashboard: portcullis::dashboard::Options {
                    off: a.dashboard == "off",
                    user: non_empty(a.dashboard_user),
                    password: non_empty(a.dashboard_password),
                },
                config: a.config.config,
                listen: a.listen,
                status_listen: a.status_listen,
                // An empty value (compose's `${VAR:-}`) counts as unset, so the
                // KONG_* fallback still applies.
                trusted_ips: non_empty(a.trusted_ips)
                    .or_else(|| non_empty(std::env::var("KONG_TRUSTED_IPS").ok())),
                real_ip_header: non_empty(a.real_ip_header)
                    .or_else(|| non_empty(std::env::var("KONG_REAL_IP_HEADER").ok())),
                real_ip_recursive: a.real_ip_recursive
                    || std::env::var("KONG_REAL_IP_RECURSIVE").is_ok_and(|v| v == "on"),
                access_log: non_empty(Some(a.access_log)).unwrap_or_else(|| "combined".into()),
                tls_listen: a.tls_listen,
                tls_cert: non_empty(a.tls_cert)
                    .or_else(|| non_empty(std::env::var("KONG_SSL_CERT").ok())),
                tls_key: non_empty(a.tls_key)
                    .or_else(|| non_empty(std::env::var("KONG_SSL_CERT_KEY").ok())),
                drain_timeout: a.drain_timeout,
                limits: portcullis::server::Limits {
                    max_header_bytes: a.max_header_bytes,
                    max_uri_bytes: a.max_uri_bytes,
                    header_timeout: a.header_timeout,
                    max_connections: a.max_connections,
                    idle_timeout: a.idle_timeout,
                    send_timeout: a.send_timeout,
                    body_timeout: a.body_timeout,
                    h2_max_concurrent_streams: a.h2_max_concurrent_streams,
                    h2_max_pending_resets: a.h2_max_pending_resets,
                    h2_max_error_resets: a.h2_max_error_resets,
                    h2_max_send_buffer: a.h2_max_send_buffer,
                    h2_keepalive: a.h2_keepalive,
                },
            };
            cli::run(opts)
        }
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}
