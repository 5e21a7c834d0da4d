//! Prometheus metrics, served on the status listener's `/metrics` (OpenMetrics text,
//! which Prometheus scrapes natively), encoded by `prometheus-client`.
//!
//! One `Metrics` per gateway (no global recorder), so in-process tests each see their
//! own counts. Per-request cost: one read-locked map lookup by the route and service
//! names (no allocation once a route has been seen), atomic increments, and two
//! histogram observations when the response body ends.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `portcullis_http_requests_total` | counter | `route`, `service`, `status_class` (`2xx`…) |
//! | `portcullis_request_duration_seconds` | histogram | `route`, `service` |
//! | `portcullis_upstream_duration_seconds` | histogram | `route`, `service` |
//! | `portcullis_upstream_errors_total` | counter | `service`, `kind` |
//! | `portcullis_open_connections` | gauge | `listener` (`http`, `https`) |
//! | `portcullis_connections_total` | counter | `listener` |
//! | `portcullis_connection_errors_total` | counter | `reason` |
//! | `portcullis_config_reloads_total` | counter | `outcome` (`reloaded`, `unchanged`, `failed`) |
//! | `portcullis_config_generation` | gauge | |
//! | `portcullis_draining` | gauge | |
//! | `portcullis_mcp_requests_total` | counter | `route`, `method`, `name`, `decision` (`allowed`, `denied`) |
//!
//! `portcullis_mcp_requests_total` counts each JSON-RPC message mcp-policy judged (a
//! batch counts each). Its labels come from clients, so they are bounded: methods
//! outside MCP's own set, and names beyond the first 1000 seen, are counted as `_other`.

use crate::error::GatewayError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Latency buckets in seconds: 1 ms to 60 s (Kong's service timeouts default to 60 s).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

// Route and service names are the snapshot's own `Arc<str>`s: a series costs no copy
// of them (10,000 routes each with its series would otherwise hold ~10 copies apiece).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    service: Arc<str>,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
    service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    service: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct McpLabels {
    route: String,
    method: &'static str,
    name: String,
    decision: &'static str,
}

/// The JSON-RPC methods of MCP (2024-11-05 … 2026-07-28) that get their own label.
const MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "subscriptions/listen",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// Distinct names `portcullis_mcp_requests_total` labels before using `_other`.
const MCP_NAMES_MAX: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A classic histogram over [`BUCKETS`] (plus `+Inf`) in a fixed block of atomics,
/// encoded exactly like prometheus-client's `Histogram` (which keeps a mutex, a bucket
/// `Vec` of (bound, count) pairs and native-histogram state per series: about three
/// times the bytes, and a route has two).
#[derive(Debug, Default)]
struct HistogramData {
    /// The sum of the observed values, as `f64` bits.
    sum: AtomicU64,
    /// Per bucket (not cumulative); the last is `+Inf`. The count is their total.
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

impl HistogramData {
    fn observe(&self, v: f64) {
        // The first bucket whose bound is >= v; NaN (and anything above 60 s) in +Inf.
        let i = BUCKETS
            .iter()
            .position(|b| *b >= v)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.load(Ordering::Relaxed) == 0)
    }

    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); BUCKETS.len() + 1];
        for (i, (bound, count)) in buckets.iter_mut().enumerate() {
            if let Some(b) = BUCKETS.get(i) {
                *bound = *b;
            }
            *count = self.buckets[i].load(Ordering::Relaxed);
        }
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Every (route, service) pair's series, by labels: a reloaded config's route finds its
/// series (and counts) again here.
type RouteSeries = Arc<RwLock<HashMap<RouteLabels, Arc<RouteHandles>>>>;

/// Which of a route's series a registered metric shows.
#[derive(Clone, Copy, Debug)]
enum RouteView {
    Requests,
    Latency,
    UpstreamLatency,
}

/// `http_requests_total`, `request_duration_seconds` or `upstream_duration_seconds`, as a
/// prometheus-client `Family` would encode them: a series shows once it has counted
/// something (a `Family` member shows once created, and it is created on first use).
#[derive(Clone, Debug)]
struct RouteMetric {
    series: RouteSeries,
    view: RouteView,
}

impl EncodeMetric for RouteMetric {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
        for (labels, h) in map.iter() {
            match self.view {
                RouteView::Requests => {
                    for (i, c) in h.by_class.iter().enumerate() {
                        let n = c.load(Ordering::Relaxed);
                        if n == 0 {
                            continue;
                        }
                        let request = RequestLabels {
                            route: Arc::clone(&labels.route),
                            service: Arc::clone(&labels.service),
                            status_class: CLASSES[i],
                        };
                        encoder
                            .encode_family(&request)?
                            .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
                    }
                }
                RouteView::Latency if !h.total.is_empty() => {
                    h.total.encode(encoder.encode_family(labels)?)?;
                }
                RouteView::UpstreamLatency if !h.upstream.is_empty() => {
                    h.upstream.encode(encoder.encode_family(labels)?)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        match self.view {
            RouteView::Requests => MetricType::Counter,
            _ => MetricType::Histogram,
        }
    }

    fn is_empty(&self) -> bool {
        let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
        map.values().all(|h| match self.view {
            RouteView::Requests => h.by_class.iter().all(|c| c.load(Ordering::Relaxed) == 0),
            RouteView::Latency => h.total.is_empty(),
            RouteView::UpstreamLatency => h.upstream.is_empty(),
        })
    }
}

/// Why a connection was closed without a normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionError {
    /// The request head (or the TLS handshake) did not arrive within the header timeout.
    HeaderTimeout,
    /// The request head exceeded the buffer: answered 400 and closed.
    HeaderTooLarge,
    /// Unparsable request head: answered 400 and closed.
    BadRequest,
    /// The TLS handshake failed.
    TlsHandshake,
    /// An HTTP/2 connection had no stream open for the idle timeout (GOAWAY).
    IdleTimeout,
    /// The client took no response bytes within the send timeout (closed).
    SendTimeout,
}

impl ConnectionError {
    fn label(self) -> &'static str {
        match self {
            ConnectionError::HeaderTimeout => "header_timeout",
            ConnectionError::HeaderTooLarge => "header_too_large",
            ConnectionError::BadRequest => "bad_request",
            ConnectionError::TlsHandshake => "tls_handshake",
            ConnectionError::IdleTimeout => "idle_timeout",
            ConnectionError::SendTimeout => "send_timeout",
        }
    }
}

/// The outcome of one reload, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Reloaded,
    Unchanged,
    Failed,
}

pub struct Metrics {
    registry: Registry,
    /// The per-route series behind `http_requests`, `request_duration` and
    /// `upstream_duration`.
    routes: RouteSeries,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Counter>,
    connection_errors: Family<ReasonLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    ratelimit_redis_errors: Counter,
    generation: Gauge,
    draining: Gauge,
    mcp: Family<McpLabels, Counter>,
    mcp_names: RwLock<std::collections::HashSet<String>>,
    /// The request counts and upstream latencies alone, for the dashboard's sampler
    /// (`dashboard::traffic`), which reads them once a second off the hot path.
    traffic: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let routes = RouteSeries::default();
        let view = |view| RouteMetric {
            series: Arc::clone(&routes),
            view,
        };
        let requests = view(RouteView::Requests);
        let latency = view(RouteView::Latency);
        let upstream_latency = view(RouteView::UpstreamLatency);
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        let connections = Family::<ListenerLabels, Counter>::default();
        let connection_errors = Family::<ReasonLabels, Counter>::default();
        let reloads = Family::<OutcomeLabels, Counter>::default();
        let generation = Gauge::default();
        let draining = Gauge::default();
        let ratelimit_redis_errors = Counter::default();
        let mcp = Family::<McpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route, service and status class (route and service are empty when no route matched)",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from the request head to the end of the response body",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time from sending the request upstream to the upstream's response head",
            Unit::Seconds,
            upstream_latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream exchanges that failed, by service and kind (invalid_response, timeout, name_resolution)",
            upstream_errors.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open on the proxy listeners",
            open_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted on the proxy listeners",
            connections.clone(),
        );
        registry.register(
            "connection_errors",
            "Client connections closed without a normal answer, by reason",
            connection_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by outcome",
            reloads.clone(),
        );
        registry.register(
            "ratelimit_redis_errors",
            "rate-limiting requests (or batched syncs) that Redis failed to answer in time or at all",
            ratelimit_redis_errors.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the config serving requests",
            generation.clone(),
        );
        registry.register(
            "draining",
            "1 while shutting down (no new connections; in-flight requests finishing)",
            draining.clone(),
        );
        registry.register(
            "mcp_requests",
            "JSON-RPC messages judged by mcp-policy, by route, method, tool/resource/prompt name and decision",
            mcp.clone(),
        );
        let mut traffic = Registry::default();
        traffic.register("http_requests", "", requests.clone());
        traffic.register_with_unit(
            "upstream_duration",
            "",
            Unit::Seconds,
            upstream_latency.clone(),
        );
        Metrics {
            registry,
            traffic,
            mcp,
            mcp_names: RwLock::new(Default::default()),
            routes,
            upstream_errors,
            open_connections,
            connections,
            connection_errors,
            reloads,
            ratelimit_redis_errors,
            generation,
            draining,
        }
    }

    /// The series of one (route, service) pair; empty strings when no route matched.
    /// Called once per route and config snapshot (the snapshot keeps the handles), so
    /// the hot path allocates nothing.
    pub fn route(
        &self,
        route: impl Into<Arc<str>>,
        service: impl Into<Arc<str>>,
    ) -> Arc<RouteHandles> {
        let labels = RouteLabels {
            route: route.into(),
            service: service.into(),
        };
        let mut map = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(labels).or_insert_with(|| {
            Arc::new(RouteHandles {
                by_class: Default::default(),
                total: HistogramData::default(),
                upstream: HistogramData::default(),
            })
        }))
    }

    pub fn upstream_error(&self, service: &str, kind: &GatewayError) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                service: service.to_string(),
                kind: kind.label(),
            })
            .inc();
    }

    /// Counts an accepted connection; the returned guard keeps it in the open gauge.
    pub fn connection_opened(&self, tls: bool) -> OpenConnection {
        let labels = ListenerLabels {
            listener: if tls { "https" } else { "http" },
        };
        self.connections.get_or_create(&labels).inc();
        let gauge = self.open_connections.get_or_create_owned(&labels);
        gauge.inc();
        OpenConnection { gauge }
    }

    pub fn connection_error(&self, e: ConnectionError) {
        self.connection_errors
            .get_or_create(&ReasonLabels { reason: e.label() })
            .inc();
    }

    pub fn reload(&self, outcome: ReloadOutcome) {
        let outcome = match outcome {
            ReloadOutcome::Reloaded => "reloaded",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Failed => "failed",
        };
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The counter of Redis failures, for rate-limiting's shared state to increment.
    pub fn ratelimit_redis_errors(&self) -> Counter {
        self.ratelimit_redis_errors.clone()
    }

    /// Counts mcp-policy's verdicts on one request's messages.
    pub fn mcp(&self, route: &str, ex: &crate::mcp::Exchange) {
        for c in &ex.calls {
            let Some(m) = c.method.as_deref() else {
                continue;
            };
            let method = MCP_METHODS
                .iter()
                .find(|k| **k == m)
                .copied()
                .unwrap_or("_other");
            let name = match &c.target {
                None => String::new(),
                Some((_, n)) => self.mcp_name(n),
            };
            self.mcp
                .get_or_create(&McpLabels {
                    route: route.to_string(),
                    method,
                    name,
                    decision: if c.allowed() { "allowed" } else { "denied" },
                })
                .inc();
        }
    }

    /// `name`, or `_other` once the label set is full.
    fn mcp_name(&self, name: &str) -> String {
        if self
            .mcp_names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(name)
        {
            return name.to_string();
        }
        let mut names = self
            .mcp_names
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if names.contains(name) || names.len() < MCP_NAMES_MAX {
            names.insert(name.to_string());
            return name.to_string();
        }
        "_other".into()
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.set(i64::from(on));
    }

    /// The exposition text; `generation` is the config generation in force.
    pub fn render(&self, generation: u64) -> String {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

impl Metrics {
    /// `http_requests_total` and `upstream_duration_seconds` in the exposition text,
    /// unprefixed: what the dashboard samples (it reads the same counters /metrics
    /// shows; the hot path does nothing more for it).
    pub fn render_traffic(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.traffic) {
            tracing::error!(error = %e, "cannot encode the traffic metrics");
        }
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Keeps one connection in `portcullis_open_connections` until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The series of one (route, service) pair: its request counts by status class and
/// its two latency histograms, in one block.
#[derive(Debug)]
pub struct RouteHandles {
    // The labels are the key of `Metrics::routes`, not repeated here.
    by_class: [AtomicU64; 5],
    total: HistogramData,
    upstream: HistogramData,
}

impl RouteHandles {
    /// Counts one finished request.
    pub fn observe(&self, status: u16, total: Duration, upstream: Option<Duration>) {
        let i = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[i].fetch_add(1, Ordering::Relaxed);
        self.total.observe(total.as_secs_f64());
        if let Some(u) = upstream {
            self.upstream.observe(u.as_secs_f64());
        }
    }
}

/// What is counted when a response body ends (or is dropped).
pub struct Finish {
    pub handles: Arc<RouteHandles>,
    pub status: u16,
    pub start: Instant,
    pub upstream: Option<Duration>,
}

impl Finish {
    pub fn done(self) {
        self.handles
            .observe(self.status, self.start.elapsed(), self.upstream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_route_and_class() {
        let m = Metrics::new();
        let h = m.route("r", "s");
        h.observe(
            200,
            Duration::from_millis(3),
            Some(Duration::from_millis(2)),
        );
        h.observe(204, Duration::from_millis(3), None);
        m.route("", "").observe(404, Duration::from_millis(1), None);
        m.upstream_error("s", &GatewayError::UpstreamTimeout);
        let conn = m.connection_opened(true);
        m.reload(ReloadOutcome::Failed);
        let text = m.render(7);
        assert!(
            text.contains(
                "portcullis_http_requests_total{route=\"r\",service=\"s\",status_class=\"2xx\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "portcullis_http_requests_total{route=\"\",service=\"\",status_class=\"4xx\"} 1"
        ));
        assert!(
            text.contains("portcullis_request_duration_seconds_count{route=\"r\",service=\"s\"} 2")
        );
        assert!(
            text.contains(
                "portcullis_upstream_duration_seconds_count{route=\"r\",service=\"s\"} 1"
            )
        );
        assert!(
            text.contains("portcullis_upstream_errors_total{service=\"s\",kind=\"timeout\"} 1")
        );
        assert!(text.contains("portcullis_open_connections{listener=\"https\"} 1"));
        assert!(text.contains("portcullis_config_reloads_total{outcome=\"failed\"} 1"));
        assert!(text.contains("portcullis_config_generation 7"));
        drop(conn);
        assert!(
            m.render(7)
                .contains("portcullis_open_connections{listener=\"https\"} 0")
        );
    }
}
