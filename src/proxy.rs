//! The life of one request (see `lib.rs`): snapshot, client IP, normalised path,
//! route, plugin chain, upstream exchange, response hooks, access log.

use crate::access_log::{self, LoggedBody, Record};
use crate::body::{self, Body, ResponseBody};
use crate::config::model::Route;
use crate::config::snapshot::{ChainLink, CompiledRoute, Snapshot, UpstreamTarget};
pub use crate::context::{Listener, captures_json};
use crate::error::GatewayError;
pub use crate::error::SERVER;
use crate::ipset::{IpSet, real_client_ip};
use crate::path;
use crate::plugins::{AuthState, Flow, RequestCtx, UpstreamOverrides};
use crate::router::{RequestInfo, RouteMatch};
use crate::upstream;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The most of a request body a plugin may buffer (key-auth's `key_in_body`).
const BUFFERED_BODY_LIMIT: usize = 8 << 20;
/// The most of a request body request-termination's `echo` reads.
const ECHO_BODY_LIMIT: usize = 1 << 20;

const VIA_11: &str = concat!("1.1 portcullis/", env!("CARGO_PKG_VERSION"));
const VIA_2: &str = concat!("2 portcullis/", env!("CARGO_PKG_VERSION"));
const VIA_10: &str = concat!("1.0 portcullis/", env!("CARGO_PKG_VERSION"));

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PATH: HeaderName = HeaderName::from_static("x-forwarded-path");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-kong-request-id");
static X_UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-kong-upstream-latency");
static X_PROXY_LATENCY: HeaderName = HeaderName::from_static("x-kong-proxy-latency");
static X_RESPONSE_LATENCY: HeaderName = HeaderName::from_static("x-kong-response-latency");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY: HeaderName = HeaderName::from_static("proxy");

/// Process-wide settings that do not change on reload (they come from flags).
pub struct Settings {
    pub trusted_ips: IpSet,
    pub real_ip_header: HeaderName,
    pub real_ip_recursive: bool,
    pub access_log: access_log::Format,
    /// Request and connection limits (see `server::Limits`).
    pub limits: crate::limits::Limits,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            trusted_ips: IpSet::default(),
            real_ip_header: X_REAL_IP.clone(),
            real_ip_recursive: false,
            access_log: access_log::Format::Combined,
            limits: crate::limits::Limits::default(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Shared state of a running gateway.
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub settings: Settings,
    pub clients: upstream::ClientCache,
    pub status: std::sync::Mutex<ReloadStatus>,
    /// Counters and histograms behind the status listener's /metrics.
    pub metrics: crate::metrics::Metrics,
    /// The HTTPS listener's certificate, re-read on every reload (None: no TLS listener).
    pub tls: Option<Arc<crate::tls::ServerCerts>>,
    /// One permit per open client connection, across the proxy listeners.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Set when shutdown starts: /health answers 503 while requests drain.
    pub draining: AtomicBool,
    /// Plugin state that outlives reloads (rate-limiting counters, Redis clients);
    /// bound to each new snapshot before it serves (`reload.rs`).
    pub rate_limits: crate::plugins::rate_limiting::Store,
}

impl Gateway {
    /// A gateway serving `snapshot`, without a TLS certificate (set `tls` before
    /// sharing it to serve HTTPS).
    pub fn new(snapshot: Snapshot, settings: Settings, clients: upstream::ClientCache) -> Gateway {
        let permits = settings
            .limits
            .max_connections
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let metrics = crate::metrics::Metrics::new();
        let rate_limits =
            crate::plugins::rate_limiting::Store::new(metrics.ratelimit_redis_errors());
        rate_limits.bind(snapshot.rate_limiting());
        let status = ReloadStatus::initial(&snapshot);
        Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            settings,
            clients,
            status: std::sync::Mutex::new(status),
            metrics,
            rate_limits,
            tls: None,
            connections: Arc::new(tokio::sync::Semaphore::new(permits)),
            draining: AtomicBool::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The outcome of reloads so far (`reload.rs` writes it, /status reads it); the
/// generation in force is the snapshot's.
#[derive(Default, Clone)]
pub struct ReloadStatus {
    /// Every error of the last rejected reload, one `file:line:col: message` per line;
    /// cleared by the next reload that succeeds or finds the file unchanged.
    pub last_reload_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Reloads that found the file identical to the running config (nothing swapped).
    pub reloads_unchanged: u64,
    /// The latest config loads, oldest first (the dashboard's reload history).
    pub history: std::collections::VecDeque<ReloadRecord>,
}

/// Config loads the reload history keeps (the oldest are dropped).
pub const RELOAD_HISTORY: usize = 50;

/// One config load, as the dashboard's reload history shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadRecord {
    pub at: std::time::SystemTime,
    /// The generation serving after this load (the old one when it failed).
    pub generation: u64,
    /// The sha256 of the config serving after this load.
    pub hash: String,
    pub outcome: ReloadOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The first load, at start.
    Initial,
    Reloaded,
    /// The file went back to the running config after a failed reload.
    Unchanged,
    /// Rejected: every error, `file:line:col: message`.
    Failed(Vec<String>),
}

impl ReloadStatus {
    /// The status of a gateway that just loaded `snap`: its load is the history's first entry.
    pub fn initial(snap: &Snapshot) -> ReloadStatus {
        let mut st = ReloadStatus::default();
        st.record(ReloadRecord {
            at: snap.loaded_at,
            generation: snap.generation,
            hash: snap.config_hash.clone(),
            outcome: ReloadOutcome::Initial,
        });
        st
    }

    /// Appends `r` to the history, dropping the oldest past [`RELOAD_HISTORY`].
    pub fn record(&mut self, r: ReloadRecord) {
        if self.history.len() >= RELOAD_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(r);
    }
}

/// A cheap unique request id (32 hex digits): a per-process random prefix and a counter.
pub(crate) fn request_id() -> String {
    RequestId::next().as_str().to_string()
}

/// A request id on the stack: no formatting or allocation until it is used.
#[derive(Clone, Copy)]
pub(crate) struct RequestId([u8; 32]);

impl RequestId {
    pub(crate) fn next() -> RequestId {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            let u = uuid::Uuid::new_v4().as_u128();
            (u >> 64) as u64 ^ u as u64
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // splitmix64 scrambles the counter so ids don't look sequential.
        let mut z = n.wrapping_add(seed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let mut out = [0u8; 32];
        let mut put = |at: usize, v: u64| {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for i in 0..16 {
                out[at + i] = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
            }
        };
        put(0, seed);
        put(16, z);
        RequestId(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("0")
    }

    fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).unwrap_or(HeaderValue::from_static("0"))
    }
}

/// Latencies in whole milliseconds as header values: small ones (nearly all of them)
/// come from a table built once, so a request formats no numbers.
fn millis_value(ms: u128) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let table = SMALL.get_or_init(|| (0u16..256).map(HeaderValue::from).collect());
    match usize::try_from(ms).ok().and_then(|i| table.get(i)) {
        Some(v) => v.clone(),
        None => HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn basic_user(h: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let dec = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(dec).ok()?;
    s.split_once(':').map(|(u, _)| u.to_string())
}

/// Entry point from the server for every request.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
    listener: Listener,
) -> Response<LoggedBody> {
    let start = Instant::now();
    let snap = gw.snapshot.load_full();
    let rid = RequestId::next();
    let request_id = rid.as_str();
    let client_ip = real_client_ip(
        peer.ip(),
        &gw.settings.trusted_ips,
        &gw.settings.real_ip_header,
        gw.settings.real_ip_recursive,
        req.headers(),
    );
    let log_format = gw.settings.access_log;
    let record = (log_format != access_log::Format::Off).then(|| {
        Box::new(Record {
            format: log_format,
            client_ip,
            remote_user: basic_user(req.headers()),
            method: req.method().as_str().to_string(),
            // As on the request line: nginx logs an absolute-form target as sent.
            target: if req.version() < Version::HTTP_2 && req.uri().scheme().is_some() {
                req.uri().to_string()
            } else {
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into())
            },
            version: version_str(req.version()),
            status: 0,
            referer: header_str(req.headers(), &header::REFERER),
            user_agent: header_str(req.headers(), &header::USER_AGENT),
            route: None,
            service: None,
            request_id: request_id.to_string(),
            start,
            upstream_ms: None,
            mcp: None,
        })
    });

    let ex = Exchange {
        gw: &gw,
        snap: &snap,
        peer,
        client_ip,
        listener,
        request_id,
        start,
    };
    let mut info = Info::default();
    // Kong's phases; the log phase runs when the response body ends (`log`).
    let mut resp = match ex.phases(req, &mut info).await {
        ControlFlow::Continue(resp) => resp,
        ControlFlow::Break(resp) => resp.map(ResponseBody::Other),
    };
    gateway_headers(resp.headers_mut(), &mut info, rid, start);
    log(resp, info, record, &gw, &snap, start)
}

/// The response headers the gateway adds to every answer (the end of Kong's
/// header_filter): those plugins set in the access phase, the request id, `Server`
/// and the latency headers.
fn gateway_headers(h: &mut HeaderMap, info: &mut Info, rid: RequestId, start: Instant) {
    if let Some(extra) = info.response_headers.take() {
        // Set by plugins in the access phase (rate-limiting's X-RateLimit-*).
        let mut last: Option<HeaderName> = None;
        for (name, value) in extra.0 {
            match name {
                Some(name) => {
                    h.insert(name.clone(), value);
                    last = Some(name);
                }
                None => {
                    if let Some(name) = &last {
                        h.append(name.clone(), value);
                    }
                }
            }
        }
    }
    h.insert(X_REQUEST_ID.clone(), rid.header_value());
    match info.upstream_ms {
        Some(up) => {
            if !h.contains_key(header::SERVER) {
                h.insert(header::SERVER, HeaderValue::from_static(SERVER));
            }
            h.insert(X_UPSTREAM_LATENCY.clone(), millis_value(up));
            h.insert(
                X_PROXY_LATENCY.clone(),
                millis_value(info.proxy_ms.unwrap_or(0)),
            );
        }
        None => {
            h.insert(header::SERVER, HeaderValue::from_static(SERVER));
            h.insert(
                X_RESPONSE_LATENCY.clone(),
                millis_value(start.elapsed().as_millis()),
            );
        }
    }
}

/// log: the access log line and the metrics, written when the response body ends.
fn log(
    resp: Response<ResponseBody>,
    mut info: Info,
    mut record: Option<Box<Record>>,
    gw: &Gateway,
    snap: &Snapshot,
    start: Instant,
) -> Response<LoggedBody> {
    // Counted when the body ends, with the access log line (Kong's log phase).
    let finish = crate::metrics::Finish {
        handles: match info.metrics.take() {
            Some(h) => h,
            None => Arc::clone(
                snap.no_route_metrics
                    .get_or_init(|| gw.metrics.route("", "")),
            ),
        },
        status: resp.status().as_u16(),
        start,
        upstream: info.upstream_time,
    };
    if let Some(r) = record.as_mut() {
        r.status = resp.status().as_u16();
        r.route = info.route;
        r.service = info.service;
        r.upstream_ms = info.upstream_ms;
        r.mcp = info.mcp;
    }
    resp.map(|b| LoggedBody::new(b, record, finish))
}

fn header_str(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

#[derive(Default)]
struct Info {
    // Shared with the compiled route: no per-request copy of the names.
    route: Option<Arc<str>>,
    service: Option<Arc<str>>,
    upstream_ms: Option<u128>,
    /// The same, precise, for the latency histogram.
    upstream_time: Option<Duration>,
    proxy_ms: Option<u128>,
    /// The matched route's metric series.
    metrics: Option<Arc<crate::metrics::RouteHandles>>,
    /// Response headers plugins set in the access phase.
    response_headers: Option<crate::plugins::ResponseHeaders>,
    /// mcp-policy: method, tool/resource/prompt name, allowed.
    mcp: Option<(String, Option<String>, bool)>,
}

struct Exchange<'a> {
    gw: &'a Gateway,
    snap: &'a Snapshot,
    peer: SocketAddr,
    client_ip: IpAddr,
    listener: Listener,
    request_id: &'a str,
    start: Instant,
}

/// A phase's outcome: `Continue` with what the next phase needs, or `Break` with the
/// answer that ends the request (its header filters already run). No boxing: the
/// answer moves up by value.
type Phase<T> = ControlFlow<Response<Body>, T>;

/// What the rewrite phase found: the request's Host (owned, a cheap refcounted clone,
/// so plugins may change the headers later) and its normalised path.
struct Rewritten {
    host: Option<HeaderValue>,
    normalized: Vec<u8>,
}

/// The route a request matched.
struct Routed<'a> {
    m: RouteMatch,
    compiled: &'a CompiledRoute,
    route: &'a Route,
}

/// What the access phase leaves for the upstream request and the response phases.
struct Accessed {
    /// The raw request target, before plugins change anything (X-Forwarded-Path).
    raw_uri: Uri,
    /// The body, when a plugin of the chain read it (plugins may have changed it).
    buffered: Option<Bytes>,
    /// The body still to stream, when no plugin read it.
    stream: Option<Incoming>,
    overrides: UpstreamOverrides,
    consumer: Option<usize>,
    /// What mcp-policy judged; its filter is the body filter.
    mcp: Option<crate::mcp::Exchange>,
}

/// What the response phases still read of a request that went upstream.
struct Sent {
    /// Errors after sending negotiate their body from these two headers.
    accept: Option<HeaderValue>,
    content_type: Option<HeaderValue>,
    /// Only the few request headers response hooks read (CORS), not a full copy.
    req_headers: Option<HeaderMap>,
    /// The client's half of an upgrade (WebSocket) tunnel.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl<'a> Exchange<'a> {
    fn error(&self, e: GatewayError, req_headers: &HeaderMap, method: &Method) -> Response<Body> {
        e.response(req_headers, method == Method::HEAD, self.request_id)
    }

    /// Kong's phases in order; a phase that answers (`Break`) ends the request there.
    async fn phases(
        &self,
        req: Request<Incoming>,
        info: &mut Info,
    ) -> Phase<Response<ResponseBody>> {
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        // rewrite: nginx's checks, the Host, the normalised path
        let rw = self.rewrite(&parts, &method)?;
        let host = rw.host.as_ref().and_then(|v| v.to_str().ok());
        // access: the route, then the plugin chain
        let routed = self.route(&parts, &method, host, &rw.normalized, info)?;
        let mut access = self
            .access(&routed, &mut parts, body, &method, info)
            .await?;
        // balancer: the upstream request, sent
        let (upstream, up_req, sent) =
            self.upstream_request(&routed, &rw, host, parts, &method, &mut access)?;
        let result = self.balancer(upstream, up_req, info).await;
        // header_filter, body_filter (log: `handle`'s, when the body ends)
        let (mut rparts, rbody) =
            self.header_filter(&routed, upstream, &access, sent, &method, result, info)?;
        let body = body_filter(access.mcp, &mut rparts, rbody);
        ControlFlow::Continue(Response::from_parts(rparts, body))
    }

    /// rewrite: nginx's limits and checks (it refuses these before anything else
    /// runs), the Host, and Kong's path normalisation.
    fn rewrite(&self, parts: &http::request::Parts, method: &Method) -> Phase<Rewritten> {
        let bad = |e| ControlFlow::Break(self.error(e, &parts.headers, method));
        if let Some(e) = self.gw.settings.limits.check_head(parts) {
            return bad(e);
        }
        if method == Method::TRACE {
            return bad(GatewayError::MethodNotAllowed);
        }
        // Two Host lines are refused, as nginx does ("client sent duplicate host
        // header"): routing and the upstream could each pick a different one.
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host_val: Option<HeaderValue> = match (hosts.next(), hosts.next()) {
            (Some(h), None) if h.to_str().is_ok() => Some(h.clone()),
            (Some(_), _) => return bad(GatewayError::BadRequest),
            (None, _) => parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        let host_raw: Option<&str> = host_val.as_ref().and_then(|v| v.to_str().ok());
        if host_raw.is_some_and(|h| !path::valid_host(h)) {
            return bad(GatewayError::BadRequest);
        }
        if host_raw.is_none() && parts.version == Version::HTTP_11 {
            return bad(GatewayError::BadRequest);
        }
        if path::check_nginx_uri(parts.uri.path()).is_err() {
            return bad(GatewayError::BadRequest);
        }
        let normalized = match path::normalize(parts.uri.path()) {
            Ok(p) if !path::has_overlong_utf8(&p) => p,
            _ => return bad(GatewayError::BadRequest),
        };
        ControlFlow::Continue(Rewritten {
            host: host_val,
            normalized,
        })
    }

    /// Routing (the start of Kong's access phase): the route, its names for the log
    /// and metrics, and the protocol check (an https-only route hit over plain http).
    fn route(
        &self,
        parts: &http::request::Parts,
        method: &Method,
        host_raw: Option<&str>,
        normalized: &[u8],
        info: &mut Info,
    ) -> Phase<Routed<'a>> {
        let found = self.snap.router.find(&RequestInfo {
            method: method.as_str(),
            host: host_raw,
            listener_port: self.listener.port,
            path: normalized,
            headers: &parts.headers,
            query: parts.uri.query(),
            tls: self.listener.tls,
            client_ip: Some(self.client_ip),
            client_port: Some(self.peer.port()),
        });
        let Some(m) = found else {
            let mut resp = self.error(GatewayError::NoRoute, &parts.headers, method);
            run_header_filters(
                &self.snap.global_chain,
                None,
                method,
                &parts.headers,
                resp.headers_mut(),
            );
            return ControlFlow::Break(resp);
        };
        let snap: &'a Snapshot = self.snap;
        let Some(compiled) = snap.routes.get(m.route) else {
            return ControlFlow::Break(self.error(GatewayError::Internal, &parts.headers, method));
        };
        let route: &'a Route = &snap.config.routes[compiled.index];
        info.route = Some(Arc::clone(&compiled.name));
        info.service = compiled.upstream.as_ref().map(|u| Arc::clone(&u.name));
        info.metrics = Some(Arc::clone(compiled.metrics.get_or_init(|| {
            self.gw.metrics.route(
                Arc::clone(&compiled.name),
                compiled
                    .upstream
                    .as_ref()
                    .map_or_else(|| Arc::from(""), |u| Arc::clone(&u.name)),
            )
        })));

        let forwarded_https = self.gw.settings.trusted_ips.contains(self.peer.ip())
            && parts
                .headers
                .get(&X_FORWARDED_PROTO)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let is_https = self.listener.tls || forwarded_https;
        if !is_https && !route.http && route.https {
            let resp = if route.https_redirect_status_code == 426 {
                self.error(GatewayError::HttpsRequired, &parts.headers, method)
            } else {
                let host = host_raw.map(strip_port).unwrap_or("");
                let target = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let mut r = Response::new(body::empty());
                *r.status_mut() = StatusCode::from_u16(route.https_redirect_status_code)
                    .unwrap_or(StatusCode::MOVED_PERMANENTLY);
                if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{target}")) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                r
            };
            return ControlFlow::Break(resp);
        }
        ControlFlow::Continue(Routed { m, compiled, route })
    }

    /// access: the body, buffered only when a plugin of the chain reads it, then the
    /// plugins in priority order; the first answer wins.
    async fn access(
        &self,
        routed: &Routed<'a>,
        parts: &mut http::request::Parts,
        body: Incoming,
        method: &Method,
        info: &mut Info,
    ) -> Phase<Accessed> {
        let Routed { m, compiled, route } = routed;
        let chain: &[ChainLink] = &compiled.chain;
        let raw_uri = parts.uri.clone();

        let mut buffered: Option<Bytes> = None;
        let mut stream: Option<Incoming> = Some(body);
        if chain.iter().any(|l| l.plugin.needs_body())
            && let Some(b) = stream.take()
        {
            let read = http_body_util::Limited::new(b, BUFFERED_BODY_LIMIT).collect();
            let limit = self.gw.settings.limits.body_timeout;
            let read = if limit.is_zero() {
                Ok(read.await)
            } else {
                tokio::time::timeout(limit, read).await
            };
            match read {
                Ok(Ok(c)) => buffered = Some(c.to_bytes()),
                // nginx's client_body_timeout: 408.
                Err(_) => {
                    let resp = crate::error::render(
                        crate::error::Format::from_accept_or_type(&parts.headers),
                        StatusCode::REQUEST_TIMEOUT,
                        "Request Timeout",
                        self.request_id,
                        method == Method::HEAD,
                    );
                    return ControlFlow::Break(resp);
                }
                Ok(Err(_)) => {
                    let resp = crate::error::render(
                        crate::error::Format::from_accept_or_type(&parts.headers),
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Request Entity Too Large",
                        self.request_id,
                        method == Method::HEAD,
                    );
                    return ControlFlow::Break(resp);
                }
            }
        }

        let mut auth = AuthState::default();
        let mut overrides = UpstreamOverrides::default();
        let mut answer: Option<Flow> = None;
        let mut mcp: Option<crate::mcp::Exchange> = None;
        {
            let mut ctx = RequestCtx {
                method,
                uri: &mut parts.uri,
                headers: &mut parts.headers,
                body: buffered.as_mut(),
                client_ip: self.client_ip,
                request_id: self.request_id,
                consumers: &self.snap.consumers,
                auth: &mut auth,
                captures: &m.captures,
                upstream: &mut overrides,
                service: route
                    .service
                    .map(|s| self.snap.config.services[s].id.as_str()),
                extensions: &mut parts.extensions,
                mcp: &mut mcp,
            };
            let mut last: Option<&'static str> = None;
            for link in chain {
                let name = link.plugin.name();
                // Per plugin name, the most specific entry that applies to the
                // consumer known at this point (auth plugins run before the others).
                if last == Some(name) || !link.runs_for(ctx.auth.consumer) {
                    continue;
                }
                last = Some(name);
                let mut flow = link.plugin.access(&mut ctx);
                if let Flow::Wait(fetch) = flow {
                    // e.g. signing keys: fetched on this request's task, then decide.
                    fetch.await;
                    flow = link.plugin.access(&mut ctx);
                }
                match flow {
                    Flow::Continue => {}
                    other => {
                        answer = Some(other);
                        break;
                    }
                }
            }
        }
        let consumer = auth.consumer;
        info.response_headers = parts.extensions.remove::<crate::plugins::ResponseHeaders>();
        // mcp-policy's verdicts: counted now, logged with the request.
        if let Some(ex) = &mcp {
            self.gw.metrics.mcp(&compiled.name, ex);
            info.mcp = ex
                .summary()
                .map(|(m, n, ok)| (m.into(), n.map(Into::into), ok));
        }
        let mut resp = match answer {
            None | Some(Flow::Continue) => {
                return ControlFlow::Continue(Accessed {
                    raw_uri,
                    buffered,
                    stream,
                    overrides,
                    consumer,
                    mcp,
                });
            }
            // A plugin that still cannot decide after its wait: a bug, not the
            // client's fault, and never a pass.
            Some(Flow::Wait(_)) => self.error(GatewayError::Internal, &parts.headers, method),
            Some(Flow::Respond(resp)) => resp,
            Some(Flow::Echo { status, message }) => {
                let raw = match (buffered, stream) {
                    (Some(b), _) => Some(b),
                    (None, Some(s)) => http_body_util::Limited::new(s, ECHO_BODY_LIMIT)
                        .collect()
                        .await
                        .ok()
                        .map(|c| c.to_bytes()),
                    (None, None) => None,
                };
                crate::plugins::request_termination::echo(
                    status,
                    message.as_deref(),
                    parts,
                    raw,
                    self.listener,
                    &m.captures,
                    route,
                    compiled
                        .upstream
                        .as_ref()
                        .and(route.service)
                        .map(|s| &self.snap.config.services[s]),
                )
                .await
            }
        };
        run_header_filters(chain, consumer, method, &parts.headers, resp.headers_mut());
        ControlFlow::Break(resp)
    }

    /// The upstream request (the first half of Kong's balancer phase): the service,
    /// the strip_path/service path join (or a plugin's path), the forwarded headers,
    /// the body as plugins left it.
    fn upstream_request(
        &self,
        routed: &Routed<'a>,
        rw: &Rewritten,
        host_raw: Option<&str>,
        mut parts: http::request::Parts,
        method: &Method,
        access: &mut Accessed,
    ) -> Phase<(&'a UpstreamTarget, Request<Body>, Sent)> {
        let Routed { m, compiled, route } = routed;
        let chain: &[ChainLink] = &compiled.chain;
        let Some(upstream) = compiled.upstream.as_ref() else {
            let mut resp = self.error(GatewayError::NoService, &parts.headers, method);
            run_header_filters(
                chain,
                access.consumer,
                method,
                &parts.headers,
                resp.headers_mut(),
            );
            return ControlFlow::Break(resp);
        };

        let escaped = path::escape(&rw.normalized);
        let (joined, escaped_match) = path::strip_and_join(
            upstream.path.as_deref(),
            &rw.normalized,
            &escaped,
            m.matched_len,
            route.strip_path,
        );
        // A plugin's set_path (request-transformer replace.uri) replaces the join.
        let target = access.overrides.path.take().unwrap_or(joined);
        // Origin-form: the connection is chosen by the service's scheme and authority.
        // A path that comes out as the client sent it (no strip, no service path, already
        // normal) keeps the client's parsed path and query instead of being parsed again.
        let uri = match parts.uri.path_and_query() {
            Some(pq) if pq.path() == target => http::Uri::from(pq.clone()),
            _ => {
                let mut target = target;
                if let Some(q) = parts.uri.query() {
                    target.push('?');
                    target.push_str(q);
                }
                match http::Uri::builder().path_and_query(target).build() {
                    Ok(u) => u,
                    Err(_) => {
                        return ControlFlow::Break(self.error(
                            GatewayError::BadRequest,
                            &parts.headers,
                            method,
                        ));
                    }
                }
            }
        };

        // Kept for an error answer's content negotiation: one pass over the names
        // (standard ones compare as numbers) costs less than two lookups.
        let (mut accept, mut content_type) = (None, None);
        for (name, value) in &parts.headers {
            if name == header::ACCEPT {
                accept.get_or_insert_with(|| value.clone());
            } else if name == header::CONTENT_TYPE {
                content_type.get_or_insert_with(|| value.clone());
            }
        }
        let needs_req_headers = chain.iter().any(|l| l.plugin.has_header_filter());
        let req_headers = needs_req_headers.then(|| {
            let mut kept = HeaderMap::new();
            for name in &crate::plugins::RESPONSE_PHASE_REQUEST_HEADERS {
                for v in parts.headers.get_all(name) {
                    kept.append(name.clone(), v.clone());
                }
            }
            kept
        });

        let prefix = match escaped_match {
            Some(n) if route.strip_path && n > 0 => {
                let p = &escaped[..n.min(escaped.len())];
                (p != "/").then(|| p.to_string())
            }
            _ => None,
        };
        // A WebSocket (or other) upgrade: the client's half of the tunnel, and the
        // protocol it asks for, taken before hop-by-hop headers are stripped.
        let upgrade = upgrade_request(&parts.headers, parts.version);
        let client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        let mut headers = parts.headers;
        let version = parts.version;
        self.upstream_headers(
            &mut headers,
            host_raw,
            route.preserve_host,
            &upstream.host_header,
            access.raw_uri.path(),
            prefix.as_deref(),
            version,
        );
        if let Some(host) = access.overrides.host.take() {
            headers.insert(header::HOST, host);
        }
        if let Some(proto) = &upgrade {
            headers.insert(header::UPGRADE, proto.clone());
            headers.insert(
                header::CONNECTION,
                HeaderValue::from_static("keep-alive, Upgrade"),
            );
        }
        let up_body = match (access.buffered.take(), access.stream.take()) {
            (Some(b), _) => {
                // Plugins may have changed the body: its length is the new one.
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                body::full(b)
            }
            // No body at all (a GET): nothing to box or poll.
            (None, Some(s)) if http_body::Body::is_end_stream(&s) => body::empty(),
            (None, Some(s)) => s
                .map_err(|e| Box::new(upstream::ClientBodyError(e)) as crate::body::BoxError)
                .boxed(),
            (None, None) => body::empty(),
        };
        let mut up_req = Request::new(up_body);
        *up_req.method_mut() = access
            .overrides
            .method
            .take()
            .unwrap_or_else(|| method.clone());
        *up_req.uri_mut() = uri;
        *up_req.headers_mut() = headers;
        *up_req.version_mut() = Version::HTTP_11;
        ControlFlow::Continue((
            upstream,
            up_req,
            Sent {
                accept,
                content_type,
                req_headers,
                client_upgrade,
            },
        ))
    }

    /// balancer: sends to the service's pool (retries included), timed.
    async fn balancer(
        &self,
        upstream: &UpstreamTarget,
        up_req: Request<Body>,
        info: &mut Info,
    ) -> Result<Response<Incoming>, (GatewayError, crate::body::BoxError)> {
        let sent_at = Instant::now();
        info.proxy_ms = Some(sent_at.duration_since(self.start).as_millis());
        let result = upstream::send(
            &upstream.client,
            upstream.pool,
            upstream.scheme == http::uri::Scheme::HTTPS,
            &upstream.authority,
            up_req,
            upstream.retries,
        )
        .await;
        let upstream_time = sent_at.elapsed();
        info.upstream_ms = Some(upstream_time.as_millis());
        info.upstream_time = Some(upstream_time);
        result
    }

    /// header_filter: the upstream's response head (hop-by-hop headers dropped, `Via`
    /// added) or the gateway's error for a failed send, then the plugins' response
    /// hooks (CORS). An accepted upgrade becomes a tunnel here.
    #[allow(clippy::too_many_arguments)]
    fn header_filter(
        &self,
        routed: &Routed<'a>,
        upstream: &UpstreamTarget,
        access: &Accessed,
        sent: Sent,
        method: &Method,
        result: Result<Response<Incoming>, (GatewayError, crate::body::BoxError)>,
        info: &mut Info,
    ) -> Phase<(http::response::Parts, Incoming)> {
        let chain: &[ChainLink] = &routed.compiled.chain;
        let consumer = access.consumer;
        let req_headers = sent.req_headers.unwrap_or_default();
        match result {
            Ok(resp) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_side) = sent.client_upgrade
                {
                    return ControlFlow::Break(self.tunnel(
                        resp,
                        client_side,
                        upstream.read_timeout,
                        chain,
                        consumer,
                        method,
                        &req_headers,
                    ));
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // 101 without an upgrade request: not something we can relay.
                    let mut r = self.error(GatewayError::UpstreamInvalid, &req_headers, method);
                    run_header_filters(chain, consumer, method, &req_headers, r.headers_mut());
                    return ControlFlow::Break(r);
                }
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                // Via and the gateway's own headers, at once.
                rparts.headers.reserve(6);
                let via = match rparts.headers.get(header::VIA) {
                    Some(v) => HeaderValue::from_str(&format!(
                        "{}, {VIA_11}",
                        String::from_utf8_lossy(v.as_bytes())
                    ))
                    .unwrap_or(HeaderValue::from_static(VIA_11)),
                    None => HeaderValue::from_static(VIA_11),
                };
                rparts.headers.insert(header::VIA, via);
                run_header_filters(chain, consumer, method, &req_headers, &mut rparts.headers);
                ControlFlow::Continue((rparts, rbody))
            }
            Err((kind, err)) => {
                // The client's body broke mid-stream (upstream::ClientBodyError): the
                // client's fault, not counted against the upstream.
                let client_fault = matches!(kind, GatewayError::BadRequest);
                tracing::warn!(
                    route = routed.route.display_name(),
                    service = &*upstream.name,
                    error = %err,
                    "{}",
                    if client_fault {
                        "client request body failed; upstream request aborted"
                    } else {
                        "upstream request failed"
                    }
                );
                info.upstream_ms = None;
                info.upstream_time = None;
                if !client_fault {
                    self.gw.metrics.upstream_error(&upstream.name, &kind);
                }
                let mut negotiate = HeaderMap::new();
                if let Some(a) = sent.accept {
                    negotiate.insert(header::ACCEPT, a);
                }
                if let Some(c) = sent.content_type {
                    negotiate.insert(header::CONTENT_TYPE, c);
                }
                let mut resp = self.error(kind, &negotiate, method);
                run_header_filters(chain, consumer, method, &req_headers, resp.headers_mut());
                ControlFlow::Break(resp)
            }
        }
    }

    /// Relays an accepted upgrade: answers the client 101 with the upstream's headers,
    /// then copies bytes both ways until either side closes. The upstream socket's
    /// read timeout (reset by writes) makes `read_timeout` an idle timeout.
    #[allow(clippy::too_many_arguments)]
    fn tunnel(
        &self,
        mut resp: Response<Incoming>,
        client_side: hyper::upgrade::OnUpgrade,
        idle: std::time::Duration,
        chain: &[ChainLink],
        consumer: Option<usize>,
        method: &Method,
        req_headers: &HeaderMap,
    ) -> Response<Body> {
        let upstream_side = hyper::upgrade::on(&mut resp);
        let (mut rparts, _) = resp.into_parts();
        let route = self.request_id.to_string();
        tokio::spawn(async move {
            match tokio::join!(client_side, upstream_side) {
                (Ok(c), Ok(u)) => {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    match tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        Ok((up, down)) => {
                            tracing::debug!(request_id = route.as_str(), up, down, "tunnel closed")
                        }
                        Err(e) => tracing::debug!(
                            request_id = route.as_str(),
                            error = %e,
                            idle_timeout_ms = idle.as_millis() as u64,
                            "tunnel ended"
                        ),
                    }
                }
                (c, u) => tracing::warn!(
                    request_id = route.as_str(),
                    client = c.err().map(|e| e.to_string()),
                    upstream = u.err().map(|e| e.to_string()),
                    "upgrade failed"
                ),
            }
        });
        // Keep Connection/Upgrade: they are what makes this a 101 for the client.
        for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
            rparts.headers.remove(name);
        }
        rparts.headers.remove(header::TRANSFER_ENCODING);
        run_header_filters(chain, consumer, method, req_headers, &mut rparts.headers);
        Response::from_parts(rparts, body::empty())
    }

    #[allow(clippy::too_many_arguments)]
    fn upstream_headers(
        &self,
        h: &mut HeaderMap,
        host_raw: Option<&str>,
        preserve_host: bool,
        upstream_host: &HeaderValue,
        raw_path: &str,
        prefix: Option<&str>,
        version: Version,
    ) {
        strip_hop_by_hop(h);
        // One pass over the client's names tells which of those set below it sent:
        // most requests carry none, and then nothing is looked up, joined or removed.
        let sent = Forwarded::scan(h);
        if sent.proxy {
            h.remove(&PROXY);
        }
        // Room for what is added below, at once rather than doubling on the way.
        h.reserve(8);

        let trusted = self.gw.settings.trusted_ips.contains(self.peer.ip());
        // X-Forwarded-For: the client's list plus the TCP peer, else the real IP.
        let client_ip = ip_value(self.client_ip);
        let xff = match sent.xff.then(|| joined(h, &X_FORWARDED_FOR)).flatten() {
            Some(list) => HeaderValue::from_str(&format!("{list}, {}", self.peer.ip())).ok(),
            None => Some(client_ip.clone()),
        };
        if let Some(v) = xff {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        h.insert(X_REAL_IP.clone(), client_ip);
        // A trusted proxy's own X-Forwarded-* values are kept.
        let set = |h: &mut HeaderMap, name: &HeaderName, present: bool, value: HeaderValue| {
            if !trusted || !present {
                h.insert(name.clone(), value);
            }
        };
        set(
            h,
            &X_FORWARDED_PROTO,
            sent.proto,
            HeaderValue::from_static(if self.listener.tls { "https" } else { "http" }),
        );
        if let Some(host) = host_raw {
            let bare = strip_port(host);
            let v = if bare.bytes().any(|b| b.is_ascii_uppercase()) {
                HeaderValue::from_str(&bare.to_ascii_lowercase())
            } else {
                HeaderValue::from_str(bare)
            };
            if let Ok(v) = v {
                set(h, &X_FORWARDED_HOST, sent.host, v);
            }
        }
        set(
            h,
            &X_FORWARDED_PORT,
            sent.port,
            port_value(self.listener.port),
        );
        if let Ok(v) = HeaderValue::from_str(raw_path) {
            set(h, &X_FORWARDED_PATH, sent.path, v);
        }
        match prefix.and_then(|p| HeaderValue::from_str(p).ok()) {
            Some(v) => set(h, &X_FORWARDED_PREFIX, sent.prefix, v),
            None => {
                if !trusted && sent.prefix {
                    h.remove(&X_FORWARDED_PREFIX);
                }
            }
        }
        // Host
        match (preserve_host, host_raw) {
            (true, Some(host)) => {
                if let Ok(v) = HeaderValue::from_str(host) {
                    h.insert(header::HOST, v);
                }
            }
            _ => {
                h.insert(header::HOST, upstream_host.clone());
            }
        }
        // Via
        let ours = match version {
            Version::HTTP_2 => VIA_2,
            Version::HTTP_10 => VIA_10,
            _ => VIA_11,
        };
        let via = match sent.via.then(|| joined(h, &header::VIA)).flatten() {
            Some(v) => HeaderValue::from_str(&format!("{v}, {ours}"))
                .unwrap_or(HeaderValue::from_static(ours)),
            None => HeaderValue::from_static(ours),
        };
        h.insert(header::VIA, via);
    }
}

/// Which of the headers the gateway sets upstream the client sent itself.
#[derive(Default)]
struct Forwarded {
    proxy: bool,
    xff: bool,
    proto: bool,
    host: bool,
    port: bool,
    path: bool,
    prefix: bool,
    via: bool,
}

impl Forwarded {
    fn scan(h: &HeaderMap) -> Forwarded {
        let mut f = Forwarded::default();
        for name in h.keys() {
            let n = name.as_str();
            // Every name we look for is `proxy`, `via` or starts with `x-`.
            if let Some(rest) = n.strip_prefix("x-forwarded-") {
                match rest {
                    "for" => f.xff = true,
                    "proto" => f.proto = true,
                    "host" => f.host = true,
                    "port" => f.port = true,
                    "path" => f.path = true,
                    "prefix" => f.prefix = true,
                    _ => {}
                }
            } else if name == header::VIA {
                f.via = true;
            } else if n == "proxy" {
                f.proxy = true;
            }
        }
        f
    }
}

thread_local! {
    /// The last client address and listener port formatted on this thread: one
    /// client's keep-alive requests (and a worker's one port) format them once.
    static LAST_IP: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
    static LAST_PORT: std::cell::RefCell<Option<(u16, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `key`'s header value from a one-entry per-thread cache, made by `make` on a miss.
fn cached_value<K: Copy + PartialEq + 'static>(
    cache: &'static std::thread::LocalKey<std::cell::RefCell<Option<(K, HeaderValue)>>>,
    key: K,
    make: impl FnOnce(K) -> HeaderValue,
) -> HeaderValue {
    cache.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, v)) = last.as_ref()
            && *cached == key
        {
            return v.clone();
        }
        let v = make(key);
        *last = Some((key, v.clone()));
        v
    })
}

/// `ip` as a header value (X-Real-IP, X-Forwarded-For).
fn ip_value(ip: IpAddr) -> HeaderValue {
    cached_value(&LAST_IP, ip, |ip| {
        HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("0.0.0.0"))
    })
}

/// `port` as a header value (X-Forwarded-Port).
fn port_value(port: u16) -> HeaderValue {
    cached_value(&LAST_PORT, port, HeaderValue::from)
}

/// body_filter: the response body, through mcp-policy's list-result filter when the
/// route has one (None for every other route).
fn body_filter(
    mcp: Option<crate::mcp::Exchange>,
    rparts: &mut http::response::Parts,
    rbody: Incoming,
) -> ResponseBody {
    match mcp.and_then(|e| e.filter) {
        Some(f) => {
            let body = rbody
                .map_err(|e| Box::new(e) as crate::body::BoxError)
                .boxed();
            ResponseBody::Other(crate::mcp::filter_response(f, rparts, body))
        }
        None => ResponseBody::Upstream(rbody),
    }
}

fn run_header_filters(
    chain: &[ChainLink],
    consumer: Option<usize>,
    method: &Method,
    req: &HeaderMap,
    resp: &mut HeaderMap,
) {
    for link in crate::config::snapshot::select(chain, consumer) {
        link.plugin.header_filter(method, req, resp);
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` plus
/// an `Upgrade` header), e.g. `websocket`.
fn upgrade_request(h: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// All values of a header joined with ", " (how proxies read list headers).
fn joined(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut it = h.get_all(name).iter();
    let first = it.next()?;
    let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in it {
        s.push_str(", ");
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(s)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Removes hop-by-hop headers: the standard ones and those named in Connection.
///
/// One pass over the names first: most requests carry none of them, and a response
/// usually only `Connection: keep-alive`, so nothing is hashed or collected for them.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let (mut connection, mut te) = (false, false);
    // Which of keep-alive, proxy-connection, transfer-encoding, upgrade are present.
    let mut fixed = [false; 4];
    for name in h.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::TE {
            te = true;
        } else if name == KEEP_ALIVE {
            fixed[0] = true;
        } else if name == PROXY_CONNECTION {
            fixed[1] = true;
        } else if name == header::TRANSFER_ENCODING {
            fixed[2] = true;
        } else if name == header::UPGRADE {
            fixed[3] = true;
        }
    }
    if connection {
        // Names the client lists; keep-alive and upgrade are among the fixed ones.
        let mut listed: Vec<HeaderName> = Vec::new();
        // Split as bytes: the values are a word or two, too short for a str searcher.
        for token in h
            .get_all(header::CONNECTION)
            .iter()
            .filter(|v| v.to_str().is_ok())
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
        {
            if token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"upgrade") {
                // Removed below when present.
            } else if let Ok(n) = HeaderName::from_bytes(token) {
                listed.push(n);
            }
        }
        for n in listed {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    if fixed[0] {
        h.remove(&KEEP_ALIVE);
    }
    if fixed[1] {
        h.remove(&PROXY_CONNECTION);
    }
    if fixed[2] {
        h.remove(header::TRANSFER_ENCODING);
    }
    if fixed[3] {
        h.remove(header::UPGRADE);
    }
    if te && h.contains_key(header::TE) {
        let keep_trailers = h
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        h.remove(header::TE);
        if keep_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}
