//! The `portcullis` command: parse flags, set up logging, hand off to the library.

use clap::{Args, Parser, Subcommand};
use portcullis::cli;
use std::process::ExitCode;

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
    Run(RunArgs),
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match cli.command {
        Command::Check(a) => cli::check(a.config),
        Command::Health(a) => cli::health(&a.status_listen, a.timeout_ms),
        Command::Explain(a) => {
            cli::explain(a.config.config, &a.headers, a.client_ip, &a.method, &a.url)
        }
        Command::Run(a) => {
            let opts = cli::RunOptions {
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
            };
            cli::run(opts)
        }
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}
