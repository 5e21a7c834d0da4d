//! The immutable, compiled configuration one request sees from start to end.
//! Built by `config::compile`, swapped atomically on reload, never mutated.

use crate::config::model::{Config, Scope, Service};
use crate::plugins::Plugin;
use crate::plugins::rate_limiting::RateLimiting;
use crate::router::Router;
use crate::upstream::{ClientCache, UpstreamClient};
use crate::yaml::raw::Pos;
use http::HeaderValue;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Snapshot {
    pub generation: u64,
    pub config_hash: String,
    pub file: String,
    pub loaded_at: SystemTime,
    pub router: Router,
    /// Indexed by the router's route index.
    pub routes: Vec<CompiledRoute>,
    /// Global plugins: they also see requests that matched no route.
    pub global_chain: Vec<ChainLink>,
    pub config: Config,
    pub consumers: crate::consumers::Consumers,
    /// The metric series of requests no route matched, looked up once.
    pub no_route_metrics: std::sync::OnceLock<Arc<crate::metrics::RouteHandles>>,
}

impl Snapshot {
    /// Every rate-limiting plugin of the config with its scope ("route:service:consumer"
    /// ids, `-` for none), in config order: what `rate_limiting::Store::bind` binds.
    pub fn rate_limiting(&self) -> impl Iterator<Item = (String, &RateLimiting)> {
        let cfg = &self.config;
        cfg.plugins.iter().filter_map(move |entry| {
            let Plugin::RateLimiting(p) = &*entry.plugin else {
                return None;
            };
            let id = |s: Option<&str>| s.unwrap_or("-").to_string();
            let scope = format!(
                "{}:{}:{}",
                id(entry.scope.route.map(|r| cfg.routes[r].id.as_str())),
                id(entry.scope.service.map(|s| cfg.services[s].id.as_str())),
                id(entry.scope.consumer.map(|c| cfg.consumers[c].id.as_str())),
            );
            Some((scope, p))
        })
    }
}

pub struct CompiledRoute {
    /// Index into `config.routes`.
    pub index: usize,
    /// The route's name (or id), for logs and metrics.
    pub name: Arc<str>,
    pub chain: Vec<ChainLink>,
    pub upstream: Option<Arc<UpstreamTarget>>,
    /// This route's metric series, looked up once (on its first request).
    pub metrics: std::sync::OnceLock<Arc<crate::metrics::RouteHandles>>,
}

#[derive(Clone)]
pub struct ChainLink {
    // `scope.consumer` set: applies only to that consumer (see `runs_for`).
    pub plugin: Arc<Plugin>,
    pub scope: Scope,
    pub pos: Pos,
}

impl ChainLink {
    /// Whether this entry applies to a request authenticated as `consumer`.
    pub fn runs_for(&self, consumer: Option<usize>) -> bool {
        self.scope.consumer.is_none() || self.scope.consumer == consumer
    }
}

/// The entries of a chain that actually run for `consumer`: per plugin name, the first
/// (most specific) entry whose consumer condition holds.
pub fn select(chain: &[ChainLink], consumer: Option<usize>) -> impl Iterator<Item = &ChainLink> {
    let mut last: Option<&'static str> = None;
    chain.iter().filter(move |l| {
        let name = l.plugin.name();
        if last == Some(name) || !l.runs_for(consumer) {
            return false;
        }
        last = Some(name);
        true
    })
}

/// A service, ready to receive requests.
pub struct UpstreamTarget {
    pub name: Arc<str>,
    /// "http" or "https" for the request URI (ws/wss map to http/https).
    pub scheme: http::uri::Scheme,
    /// `host:port` for the request URI (the connection pool key).
    pub authority: http::uri::Authority,
    /// Host header when preserve_host is off: host, plus :port unless default.
    pub host_header: HeaderValue,
    pub path: Option<String>,
    pub retries: u32,
    pub read_timeout: Duration,
    pub client: UpstreamClient,
    /// `client`'s connection pool for this scheme and authority.
    pub pool: u64,
}

impl UpstreamTarget {
    pub fn new(s: &Service, clients: &ClientCache) -> UpstreamTarget {
        let tls = s.protocol.is_tls();
        let host_for_uri = if s.host.contains(':') {
            format!("[{}]", s.host)
        } else {
            s.host.clone()
        };
        let default_port = if tls { 443 } else { 80 };
        let host_header = if s.port == default_port {
            host_for_uri.clone()
        } else {
            format!("{host_for_uri}:{}", s.port)
        };
        let authority = format!("{host_for_uri}:{}", s.port)
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid.invalid:1"));
        let client = clients.get_with_verify(
            Duration::from_millis(s.connect_timeout_ms),
            Duration::from_millis(s.read_timeout_ms),
            Duration::from_millis(s.write_timeout_ms),
            !tls || s.tls_verify != Some(false),
        );
        UpstreamTarget {
            pool: client.pool_id(tls, &authority),
            client,
            name: Arc::from(s.display_name()),
            scheme: if tls {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            authority,
            host_header: HeaderValue::from_str(&host_header)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid.invalid")),
            path: s.path.clone(),
            retries: s.retries,
            read_timeout: Duration::from_millis(s.read_timeout_ms),
        }
    }
}
