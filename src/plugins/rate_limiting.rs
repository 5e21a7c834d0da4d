//! rate-limiting (PRIORITY 910): Kong's fixed-window limits per second, minute, hour,
//! day, month and year, counted per identifier (consumer, credential, IP, service,
//! header or path), locally or in Redis shared by every replica.
//!
//! ```text
//! access ─ identifier ─ window starts (UTC) ─┬─ local:  sharded counters, check + count
//!                                             ├─ redis, sync_rate -1: one Lua script per request
//!                                             │   (check every period, count only if all pass:
//!                                             │   exact across replicas), awaited via Flow::Wait
//!                                             └─ redis, sync_rate ≥ 0: local counting, a task
//!                                                 pushes the deltas every sync_rate seconds
//!        ─ headers (Kong's algorithm) ─ 429 + Retry-After, or Continue with the headers
//! ```
//!
//! Counters live outside the snapshot, in [`Store`] on the gateway, keyed by the
//! plugin's scope and a hash of its config: [`Store::bind`] hands a reloaded plugin the
//! counters of its unchanged predecessor, so a reload does not reset anyone's limit.
//! Memory is bounded: a counter whose windows are all over is dropped, and each plugin
//! keeps at most [`MAX_IDENTIFIERS`] identifiers (the least recently seen go first).

use super::{Flow, RequestCtx, ResponseHeaders};
use crate::error::{Format, render};
use crate::yaml::raw::{Node, Pos, Value};
use crate::yaml::walk::Ctx;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use sha2::Digest;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

/// Distinct identifiers one plugin counts at most (per replica); beyond, the least
/// recently seen are forgotten. About 200 bytes each.
pub const MAX_IDENTIFIERS: usize = 1 << 16;
const SHARDS: usize = 64;
const PER_SHARD: usize = MAX_IDENTIFIERS / SHARDS;
/// One warning per this interval while Redis fails (per Redis server).
const WARN_EVERY_SECS: i64 = 10;
/// After a failed connection, fail fast for this long before trying Redis again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// `sync_rate: 0`: flush as soon as possible, coalescing what arrives meanwhile.
const MIN_SYNC: Duration = Duration::from_millis(10);

// ------------------------------------------------------------------ periods

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

const PERIODS: [Period; 6] = [
    Period::Second,
    Period::Minute,
    Period::Hour,
    Period::Day,
    Period::Month,
    Period::Year,
];

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
            Period::Year => "year",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Kong's EXPIRATION table: the window length used for RateLimit-Reset and key TTLs
    /// (a month counts as 30 days, a year as 365, as in Kong).
    fn expiration(self) -> i64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
            Period::Day => 86400,
            Period::Month => 2_592_000,
            Period::Year => 31_536_000,
        }
    }

    /// Start (unix seconds) of the UTC window holding `now`.
    fn window_start(self, now: i64) -> i64 {
        use chrono::{Datelike, TimeZone, Utc};
        let fixed = |len: i64| now - now.rem_euclid(len);
        match self {
            Period::Second => now,
            Period::Minute => fixed(60),
            Period::Hour => fixed(3600),
            Period::Day => fixed(86400),
            Period::Month | Period::Year => {
                let Some(dt) = chrono::DateTime::from_timestamp(now, 0) else {
                    return fixed(86400);
                };
                let month = if self == Period::Month { dt.month() } else { 1 };
                Utc.with_ymd_and_hms(dt.year(), month, 1, 0, 0, 0)
                    .single()
                    .map(|d| d.timestamp())
                    .unwrap_or_else(|| fixed(86400))
            }
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------ config

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBy {
    Consumer,
    Credential,
    Ip,
    Service,
    Header,
    Path,
}

#[derive(Clone, PartialEq)]
pub struct RedisConf {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: i64,
    pub timeout: Duration,
    pub ssl: bool,
    pub ssl_verify: bool,
    pub server_name: Option<String>,
}

impl fmt::Debug for RedisConf {
    // The password stays out of logs and `explain`; the fingerprint hashes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConf")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("timeout", &self.timeout)
            .field("ssl", &self.ssl)
            .field("ssl_verify", &self.ssl_verify)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl RedisConf {
    /// Identifies one Redis server and login: plugins with the same one share a client.
    fn fingerprint(&self) -> String {
        let text = format!(
            "{}|{}|{:?}|{:?}|{}|{}|{}|{}|{:?}",
            self.host,
            self.port,
            self.username,
            self.password,
            self.database,
            self.timeout.as_millis(),
            self.ssl,
            self.ssl_verify,
            self.server_name
        );
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        let addr = if self.ssl {
            redis::ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: !self.ssl_verify,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut settings = redis::RedisConnectionInfo::default().set_db(self.database);
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        use redis::IntoConnectionInfo;
        let info = addr.into_connection_info()?.set_redis_settings(settings);
        redis::Client::open(info)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    Local,
    Redis(RedisConf),
}

#[derive(Debug)]
pub struct RateLimiting {
    /// The configured periods in order (second first) with their limits.
    limits: Vec<(Period, f64)>,
    limit_by: LimitBy,
    header_name: Option<HeaderName>,
    path: Option<String>,
    policy: Policy,
    fault_tolerant: bool,
    hide_client_headers: bool,
    error_code: StatusCode,
    error_message: String,
    /// None: every request asks Redis (`sync_rate` -1); Some: batching interval.
    sync: Option<Duration>,
    /// Hash of everything above: part of the counters' identity.
    fingerprint: String,
    /// The counters, handed over by [`Store::bind`] (or private, if never bound).
    bound: OnceLock<Arc<Bound>>,
}

const WHAT: &str = "plugin 'rate-limiting'.config";

fn number(ctx: &mut Ctx<'_>, n: Option<&Node>, what: &str) -> Option<f64> {
    match n {
        None
        | Some(Node {
            value: Value::Null, ..
        }) => None,
        Some(n) => match &n.value {
            Value::Str(s) => match ctx.substitute(s, n.pos).trim().parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => {
                    ctx.err(n.pos, format!("{what}: expected a number, found '{s}'"));
                    None
                }
            },
            _ => ctx.number(n, what),
        },
    }
}

/// Kong's number formatting for limits in messages (`%.1f`).
fn one_decimal(v: f64) -> String {
    format!("{v:.1}")
}

pub fn decode(config: Option<&Node>, pos: Pos, ctx: &mut Ctx<'_>) -> Option<RateLimiting> {
    let periods_msg = format!(
        "{WHAT}: at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'"
    );
    let Some(config) = config.filter(|c| !matches!(c.value, Value::Null)) else {
        ctx.err(pos, periods_msg);
        return None;
    };
    let mut f = ctx.fields(config, WHAT)?;
    let before = ctx.errors.len();

    let mut limits = Vec::new();
    for p in PERIODS {
        let node = f.get(p.name());
        let what = format!("{WHAT}.{}", p.name());
        if let Some(v) = number(ctx, node, &what) {
            if v <= 0.0 {
                ctx.err(
                    node.map(|n| n.pos).unwrap_or(pos),
                    format!("{what}: value must be greater than 0"),
                );
            } else {
                limits.push((p, v));
            }
        }
    }
    if limits.is_empty() && ctx.errors.len() == before {
        ctx.err(f.pos, periods_msg);
    }
    // Kong: a longer period may not have a lower limit than a shorter one.
    for (i, &(short, v1)) in limits.iter().enumerate() {
        for &(long, v2) in &limits[i + 1..] {
            if v2 < v1 {
                ctx.err(
                    f.key_pos(long.name()).unwrap_or(f.pos),
                    format!(
                        "{WHAT}: The limit for {}({}) cannot be lower than the limit for {}({})",
                        long.name(),
                        one_decimal(v2),
                        short.name(),
                        one_decimal(v1)
                    ),
                );
            }
        }
    }

    let limit_by_node = f.get("limit_by");
    let limit_by = match ctx.opt_string(limit_by_node, &format!("{WHAT}.limit_by")) {
        None => LimitBy::Consumer,
        Some(s) => match s.as_str() {
            "consumer" => LimitBy::Consumer,
            "credential" => LimitBy::Credential,
            "ip" => LimitBy::Ip,
            "service" => LimitBy::Service,
            "header" => LimitBy::Header,
            "path" => LimitBy::Path,
            other => {
                ctx.err(
                    limit_by_node.map(|n| n.pos).unwrap_or(pos),
                    format!(
                        "{WHAT}.limit_by: expected one of: consumer, credential, ip, service, header, path (found '{other}')"
                    ),
                );
                LimitBy::Consumer
            }
        },
    };
    let header_node = f.get("header_name");
    let header_name = match ctx.opt_string(header_node, &format!("{WHAT}.header_name")) {
        None => None,
        Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                ctx.err(
                    header_node.map(|n| n.pos).unwrap_or(pos),
                    format!("{WHAT}.header_name: invalid header name '{h}'"),
                );
                None
            }
        },
    };
    let path = ctx.opt_string(f.get("path"), &format!("{WHAT}.path"));
    let lb_pos = f
        .key_pos("limit_by")
        .or(limit_by_node.map(|n| n.pos))
        .unwrap_or(f.pos);
    if limit_by == LimitBy::Header && header_name.is_none() && ctx.errors.len() == before {
        ctx.err(
            lb_pos,
            format!("{WHAT}: No header name provided (limit_by 'header' needs header_name)"),
        );
    }
    if limit_by == LimitBy::Path && path.is_none() {
        ctx.err(
            lb_pos,
            format!("{WHAT}: No path provided (limit_by 'path' needs path)"),
        );
    }

    let fault_tolerant = ctx.opt_bool(
        f.get("fault_tolerant"),
        &format!("{WHAT}.fault_tolerant"),
        true,
    );
    let hide_client_headers = ctx.opt_bool(
        f.get("hide_client_headers"),
        &format!("{WHAT}.hide_client_headers"),
        false,
    );
    let error_code = match ctx.opt_int(f.get("error_code"), &format!("{WHAT}.error_code"), 100, 599)
    {
        None => StatusCode::TOO_MANY_REQUESTS,
        Some(c) => StatusCode::from_u16(c as u16).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
    };
    let error_message = ctx
        .opt_string(f.get("error_message"), &format!("{WHAT}.error_message"))
        .unwrap_or_else(|| "API rate limit exceeded".to_string());
    let sync_node = f.get("sync_rate");
    let sync = match number(ctx, sync_node, &format!("{WHAT}.sync_rate")) {
        None => None,
        Some(-1.0) => None,
        Some(v) if v >= 0.0 => Some(Duration::from_secs_f64(v).max(MIN_SYNC)),
        Some(_) => {
            ctx.err(
                sync_node.map(|n| n.pos).unwrap_or(pos),
                format!("{WHAT}.sync_rate: -1 (synchronous) or a number of seconds ≥ 0"),
            );
            None
        }
    };

    let redis = decode_redis(&mut f, ctx);
    let policy_node = f.get("policy");
    let policy = match ctx.opt_string(policy_node, &format!("{WHAT}.policy")) {
        None => Policy::Local,
        Some(s) => {
            let at = policy_node.map(|n| n.pos).unwrap_or(pos);
            match s.as_str() {
                "local" => Policy::Local,
                "redis" => match redis {
                    Some(r) => Policy::Redis(r),
                    None => {
                        ctx.err(
                            at,
                            format!(
                                "{WHAT}.policy: 'redis' needs redis.host (or the legacy redis_host)"
                            ),
                        );
                        Policy::Local
                    }
                },
                "cluster" => {
                    ctx.err(
                        at,
                        format!(
                            "{WHAT}.policy: 'cluster' keeps counters in Kong's database, which a DB-less gateway does not have; use 'local' or 'redis'"
                        ),
                    );
                    Policy::Local
                }
                other => {
                    ctx.err(
                        at,
                        format!(
                            "{WHAT}.policy: expected one of: local, cluster, redis (found '{other}')"
                        ),
                    );
                    Policy::Local
                }
            }
        }
    };
    f.finish(ctx, WHAT);
    if ctx.errors.len() != before {
        return None;
    }
    let mut plugin = RateLimiting {
        limits,
        limit_by,
        header_name,
        path,
        policy,
        fault_tolerant,
        hide_client_headers,
        error_code,
        error_message,
        sync,
        fingerprint: String::new(),
        bound: OnceLock::new(),
    };
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{:?}|{}",
        plugin.limits,
        plugin.limit_by,
        plugin.header_name,
        plugin.path,
        plugin.policy,
        match &plugin.policy {
            Policy::Redis(r) => r.fingerprint(),
            Policy::Local => String::new(),
        },
        plugin.fault_tolerant,
        plugin.hide_client_headers,
        plugin.error_code,
        plugin.sync,
        plugin.error_message
    );
    plugin.fingerprint = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    Some(plugin)
}

/// The `redis` record, with the legacy flat `redis_*` fields of older files filling
/// whatever the record leaves unset. None when no host is given.
fn decode_redis(f: &mut crate::yaml::walk::Fields<'_>, ctx: &mut Ctx<'_>) -> Option<RedisConf> {
    let record = f.get("redis").filter(|n| !matches!(n.value, Value::Null));
    let mut rf = match record {
        Some(n) => ctx.fields(n, &format!("{WHAT}.redis")),
        None => None,
    };
    let rwhat = format!("{WHAT}.redis");
    // (record field, legacy field)
    let mut pick = |name: &str| -> (Option<&Node>, String) {
        let from_record = rf.as_mut().and_then(|r| r.get(name));
        let legacy = f.get(&format!("redis_{name}"));
        match from_record.filter(|n| !matches!(n.value, Value::Null)) {
            Some(n) => (Some(n), format!("{rwhat}.{name}")),
            None => (legacy, format!("{WHAT}.redis_{name}")),
        }
    };
    let (n, w) = pick("host");
    let host = ctx.opt_string(n, &w);
    let (n, w) = pick("port");
    let port = ctx.opt_int(n, &w, 0, 65535).unwrap_or(6379) as u16;
    let (n, w) = pick("username");
    let username = ctx.opt_string(n, &w);
    let (n, w) = pick("password");
    let password = ctx.opt_string(n, &w);
    let (n, w) = pick("database");
    let database = ctx.opt_int(n, &w, 0, i64::from(i32::MAX)).unwrap_or(0);
    let (n, w) = pick("timeout");
    let timeout_ms = ctx.opt_int(n, &w, 0, i64::from(i32::MAX)).unwrap_or(2000);
    let (n, w) = pick("ssl");
    let ssl = ctx.opt_bool(n, &w, false);
    let (n, w) = pick("ssl_verify");
    let ssl_verify = ctx.opt_bool(n, &w, false);
    let (sn_node, w) = pick("server_name");
    let server_name = ctx.opt_string(sn_node, &w);
    // Fields of Kong's shared Redis record that a single connection has no use for
    // are accepted and ignored, so Kong files load unchanged.
    for ignored in [
        "connect_timeout",
        "send_timeout",
        "read_timeout",
        "keepalive_pool_size",
        "keepalive_backlog",
    ] {
        let _ = rf.as_mut().and_then(|r| r.get(ignored));
    }
    if let Some(r) = rf {
        r.finish(ctx, &rwhat);
    }
    let host = host?;
    if let Some(sn) = &server_name
        && !sn.eq_ignore_ascii_case(&host)
    {
        ctx.err(
            sn_node.map(|n| n.pos).unwrap_or(f.pos),
            format!(
                "{WHAT}.redis.server_name: a TLS server name other than redis.host ('{host}') is not supported; set host to the name the certificate carries"
            ),
        );
    }
    Some(RedisConf {
        host,
        port,
        username,
        password,
        database,
        timeout: Duration::from_millis(timeout_ms.max(1) as u64),
        ssl,
        ssl_verify,
        server_name,
    })
}

// ------------------------------------------------------------------ headers

struct PeriodHeaders {
    limit: HeaderName,
    remaining: HeaderName,
}

fn period_headers(p: Period) -> &'static PeriodHeaders {
    static ALL: OnceLock<Vec<PeriodHeaders>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        PERIODS
            .iter()
            .map(|p| {
                let cap = p.name();
                PeriodHeaders {
                    limit: HeaderName::from_bytes(format!("x-ratelimit-limit-{cap}").as_bytes())
                        .unwrap_or(HeaderName::from_static("x-ratelimit-limit")),
                    remaining: HeaderName::from_bytes(
                        format!("x-ratelimit-remaining-{cap}").as_bytes(),
                    )
                    .unwrap_or(HeaderName::from_static("x-ratelimit-remaining")),
                }
            })
            .collect()
    });
    &all[p.index()]
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn num_value(v: f64) -> HeaderValue {
    if v.fract() == 0.0 && (0.0..9.0e15).contains(&v) {
        HeaderValue::from(v as u64)
    } else {
        HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
    }
}

// ------------------------------------------------------------------ identifiers

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Ident {
    Ip(IpAddr),
    Text(Box<str>),
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ident::Ip(ip) => write!(f, "{ip}"),
            Ident::Text(t) => f.write_str(t),
        }
    }
}

/// Usage of each period before this request, and the period that stops it.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    used: [u64; 6],
    stop: Option<Period>,
}

// ------------------------------------------------------------------ local counters

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start: i64,
    /// Local mode: the count. Batched Redis mode: increments not yet pushed.
    count: u64,
    /// Batched Redis mode: the total Redis reported at the last sync.
    synced: u64,
}

#[derive(Debug)]
struct Entry {
    windows: [Window; 6],
    last_seen: i64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Ident, Entry>,
}

/// One plugin's counters: sharded so that requests on different cores rarely meet on
/// the same lock, and each lock is held for a few map operations only.
struct Counters {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, id: &Ident) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(id) as usize;
        &self.shards[h % SHARDS]
    }

    /// Kong's check then count, under one lock: usage before this request for every
    /// period; when no period is exhausted the request is counted in all of them.
    fn check_and_count(&self, id: Ident, now: i64, limits: &[(Period, f64)]) -> Usage {
        let mut shard = self
            .shard(&id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.map.contains_key(&id) && shard.map.len() >= PER_SHARD {
            evict(&mut shard.map, now, limits);
        }
        let entry = shard.map.entry(id).or_insert_with(|| Entry {
            windows: [Window::default(); 6],
            last_seen: now,
        });
        entry.last_seen = now;
        let mut usage = Usage::default();
        for &(p, limit) in limits {
            let w = &mut entry.windows[p.index()];
            let start = p.window_start(now);
            if w.start != start {
                *w = Window {
                    start,
                    count: 0,
                    synced: 0,
                };
            }
            let used = w.count + w.synced;
            usage.used[p.index()] = used;
            if limit - used as f64 <= 0.0 {
                usage.stop = Some(p);
            }
        }
        if usage.stop.is_none() {
            for &(p, _) in limits {
                entry.windows[p.index()].count += 1;
            }
        }
        usage
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

/// Makes room in a full shard: first every identifier whose windows are all over,
/// then, if that is not enough, the least recently seen eighth.
fn evict(map: &mut HashMap<Ident, Entry>, now: i64, limits: &[(Period, f64)]) {
    map.retain(|_, e| {
        limits
            .iter()
            .any(|&(p, _)| e.windows[p.index()].start == p.window_start(now))
    });
    if map.len() < PER_SHARD {
        return;
    }
    let mut seen: Vec<i64> = map.values().map(|e| e.last_seen).collect();
    let cut = seen.len() / 8;
    let (_, nth, _) = seen.select_nth_unstable(cut);
    let threshold = *nth;
    let mut budget = cut.max(1);
    map.retain(|_, e| {
        if budget > 0 && e.last_seen <= threshold {
            budget -= 1;
            false
        } else {
            true
        }
    });
}

// ------------------------------------------------------------------ Redis

/// One Redis server (and login), shared by every plugin that names it and kept across
/// reloads: one multiplexed connection that reconnects by itself.
pub struct RedisTarget {
    conf: RedisConf,
    client: Option<redis::Client>,
    manager: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    /// Unix millis before which a new connection is not attempted.
    retry_at: AtomicI64,
    /// Unix seconds of the last warning.
    warned_at: AtomicI64,
    errors: Counter,
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl RedisTarget {
    fn new(conf: RedisConf, errors: Counter) -> RedisTarget {
        let client = conf.client();
        if let Err(e) = &client {
            tracing::error!(host = conf.host.as_str(), port = conf.port, error = %e, "rate-limiting: invalid Redis settings");
        }
        RedisTarget {
            conf,
            client: client.ok(),
            manager: tokio::sync::OnceCell::new(),
            retry_at: AtomicI64::new(0),
            warned_at: AtomicI64::new(i64::MIN),
            errors,
        }
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        if now_millis() < self.retry_at.load(Ordering::Relaxed) {
            return Err("Redis unreachable (waiting before the next attempt)".into());
        }
        let Some(client) = self.client.clone() else {
            return Err("invalid Redis settings".into());
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.conf.timeout))
            .set_response_timeout(Some(self.conf.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200));
        let result = self
            .manager
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    self.conf.timeout,
                    redis::aio::ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| "timed out connecting to Redis".to_string())?
                .map_err(|e| e.to_string())
            })
            .await;
        match result {
            Ok(m) => Ok(m.clone()),
            Err(e) => {
                self.retry_at.store(
                    now_millis() + RETRY_AFTER_FAILURE.as_millis() as i64,
                    Ordering::Relaxed,
                );
                Err(e)
            }
        }
    }

    /// Counts a failure and logs it, at most once per interval.
    fn failed(&self, error: &str) {
        self.errors.inc();
        let now = now_secs();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_SECS
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                host = self.conf.host.as_str(),
                port = self.conf.port,
                error,
                "rate-limiting: Redis unavailable (this warning repeats at most every {WARN_EVERY_SECS} s)"
            );
        }
    }
}

/// Checks every period and counts the request only if none is exhausted, atomically:
/// replicas sharing the Redis admit exactly the limit between them.
/// KEYS: one per period; ARGV: the limits, then the TTLs. Returns the usage before
/// this request per period, then the 1-based index of the period that stopped it (0).
const CHECK_AND_COUNT: &str = r"
local n = #KEYS
local out = {}
local stop = 0
for i = 1, n do
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  out[i] = v
  if tonumber(ARGV[i]) - v <= 0 then stop = i end
end
if stop == 0 then
  for i = 1, n do
    if redis.call('INCR', KEYS[i]) == 1 then
      redis.call('EXPIRE', KEYS[i], ARGV[n + i])
    end
  end
end
out[n + 1] = stop
return out
";

fn script() -> &'static redis::Script {
    static S: OnceLock<redis::Script> = OnceLock::new();
    S.get_or_init(|| redis::Script::new(CHECK_AND_COUNT))
}

fn redis_key(prefix: &str, id: &Ident, start: i64, p: Period) -> String {
    format!("{prefix}:{id}:{start}:{}", p.name())
}

// ------------------------------------------------------------------ bound state

/// What one plugin instance counts with; outlives reloads that keep its config.
pub struct Bound {
    counters: Counters,
    /// `portcullis:ratelimit:<route id>:<service id>:<consumer id>`: the plugin's scope
    /// in every Redis key, so two plugins never share a counter.
    key_prefix: String,
    redis: Option<Arc<RedisTarget>>,
    flusher: AtomicBool,
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl Bound {
    fn new(key_prefix: String, redis: Option<Arc<RedisTarget>>) -> Bound {
        Bound {
            counters: Counters::new(),
            key_prefix,
            redis,
            flusher: AtomicBool::new(false),
        }
    }

    /// Identifiers currently counted (for tests and the memory bound).
    pub fn identifiers(&self) -> usize {
        self.counters.len()
    }

    /// Batched mode: pushes the increments counted since the last sync and takes back
    /// Redis's totals (which include the other replicas' increments).
    async fn flush(&self, limits: &[(Period, f64)], fault_tolerant: bool) {
        let Some(target) = &self.redis else { return };
        let now = now_secs();
        let mut batch: Vec<(Ident, Period, i64, u64)> = Vec::new();
        for shard in self.counters.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, e) in s.map.iter_mut() {
                for &(p, _) in limits {
                    let w = &mut e.windows[p.index()];
                    if w.count > 0 && w.start == p.window_start(now) {
                        batch.push((id.clone(), p, w.start, w.count));
                        // Counted as synced until Redis answers with the true total.
                        w.synced += w.count;
                        w.count = 0;
                    }
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (id, p, start, delta) in &batch {
            let key = redis_key(&self.key_prefix, id, *start, *p);
            pipe.cmd("INCRBY").arg(&key).arg(*delta);
            pipe.cmd("EXPIRE").arg(&key).arg(p.expiration()).ignore();
        }
        let result: Result<Vec<u64>, String> = async {
            let mut conn = target.connection().await?;
            tokio::time::timeout(target.conf.timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| "Redis timed out".to_string())?
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(totals) => {
                for ((id, p, start, _), total) in batch.iter().zip(totals) {
                    let mut s = self
                        .counters
                        .shard(id)
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if let Some(e) = s.map.get_mut(id) {
                        let w = &mut e.windows[p.index()];
                        if w.start == *start {
                            w.synced = w.synced.max(total);
                        }
                    }
                }
            }
            Err(e) => {
                // Kong drops what it could not push; so do we (the local count keeps
                // limiting this replica until the window ends).
                target.failed(&e);
                if !fault_tolerant {
                    tracing::debug!("rate-limiting: batched increments lost: {e}");
                }
            }
        }
    }
}

/// The gateway's rate-limiting state across reloads.
pub struct Store {
    bound: Mutex<HashMap<String, Arc<Bound>>>,
    redis: Mutex<HashMap<String, Arc<RedisTarget>>>,
    redis_errors: Counter,
}

impl Store {
    /// `redis_errors` counts Redis failures (the metric behind /metrics).
    pub fn new(redis_errors: Counter) -> Store {
        Store {
            bound: Mutex::new(HashMap::new()),
            redis: Mutex::new(HashMap::new()),
            redis_errors,
        }
    }

    /// Gives every rate-limiting plugin of a snapshot its counters (`plugins`: each with
    /// its scope, "route:service:consumer" ids, as `Snapshot::rate_limiting` lists them):
    /// those of the previous snapshot's plugin with the same scope and config, or new
    /// ones. Counters and Redis clients no plugin of the snapshot uses are released
    /// (in-flight requests on the old snapshot keep theirs until they finish). Call
    /// before the snapshot serves.
    pub fn bind<'a>(&self, plugins: impl IntoIterator<Item = (String, &'a RateLimiting)>) {
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        let mut redis = self.redis.lock().unwrap_or_else(PoisonError::into_inner);
        let mut used_bound = Vec::new();
        let mut used_redis = Vec::new();
        for (scope, p) in plugins {
            let identity = format!("{scope}|{}", p.fingerprint);
            let target = match &p.policy {
                Policy::Local => None,
                Policy::Redis(conf) => {
                    let key = conf.fingerprint();
                    let t = redis
                        .entry(key.clone())
                        .or_insert_with(|| {
                            Arc::new(RedisTarget::new(conf.clone(), self.redis_errors.clone()))
                        })
                        .clone();
                    used_redis.push(key);
                    Some(t)
                }
            };
            let b = bound
                .entry(identity.clone())
                .or_insert_with(|| {
                    Arc::new(Bound::new(format!("portcullis:ratelimit:{scope}"), target))
                })
                .clone();
            let _ = p.bound.set(b);
            used_bound.push(identity);
        }
        bound.retain(|k, _| used_bound.contains(k));
        redis.retain(|k, _| used_redis.contains(k));
    }
}

// ------------------------------------------------------------------ the plugin

/// The Redis answer for one request, filled by the future `access` waits on.
#[derive(Clone)]
struct Pending(Arc<OnceLock<Result<Usage, String>>>);

impl RateLimiting {
    fn bound(&self) -> &Arc<Bound> {
        self.bound.get_or_init(|| {
            // Never bound to a gateway (a snapshot used on its own): private counters.
            let redis = match &self.policy {
                Policy::Redis(c) => Some(Arc::new(RedisTarget::new(c.clone(), Counter::default()))),
                Policy::Local => None,
            };
            Arc::new(Bound::new(
                format!("portcullis:ratelimit:unbound:{}", &self.fingerprint[..16]),
                redis,
            ))
        })
    }

    /// The counters this plugin uses (tests and diagnostics).
    pub fn state(&self) -> &Arc<Bound> {
        self.bound()
    }

    /// Kong's `get_identifier`: falls back to the client IP when the consumer,
    /// credential, service or header is absent, or the path is not the configured one.
    fn identifier(&self, req: &RequestCtx<'_>) -> Ident {
        let text = match self.limit_by {
            LimitBy::Ip => None,
            LimitBy::Consumer => match req.auth.consumer.and_then(|c| req.consumers.list.get(c)) {
                Some(c) => Some(c.id.clone()),
                None => req.auth.credential.clone(),
            },
            LimitBy::Credential => req.auth.credential.clone(),
            LimitBy::Service => req.service.map(str::to_string),
            LimitBy::Header => self
                .header_name
                .as_ref()
                .and_then(|h| req.headers.get(h))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            LimitBy::Path => self
                .path
                .as_deref()
                .filter(|p| req.uri.path() == *p)
                .map(str::to_string),
        };
        match text {
            Some(t) if !t.is_empty() => Ident::Text(t.into_boxed_str()),
            _ => Ident::Ip(req.client_ip),
        }
    }

    pub fn access(&self, req: &mut RequestCtx<'_>) -> Flow {
        let now = now_secs();
        // Borrowed, not cloned: no shared refcount touched per request on the local path.
        let bound = self.bound();
        match (&self.policy, self.sync) {
            (Policy::Local, _) => {
                let usage = bound
                    .counters
                    .check_and_count(self.identifier(req), now, &self.limits);
                self.decide(req, usage, now)
            }
            (Policy::Redis(_), Some(every)) => {
                self.start_flusher(bound, every);
                let usage = bound
                    .counters
                    .check_and_count(self.identifier(req), now, &self.limits);
                self.decide(req, usage, now)
            }
            (Policy::Redis(_), None) => {
                if let Some(Pending(slot)) = req.extensions.remove::<Pending>() {
                    return match slot.get() {
                        Some(Ok(usage)) => self.decide(req, *usage, now),
                        Some(Err(e)) => self.redis_failed(req, bound, e),
                        None => self.redis_failed(req, bound, "no answer from Redis"),
                    };
                }
                let slot = Arc::new(OnceLock::new());
                req.extensions.insert(Pending(Arc::clone(&slot)));
                let id = self.identifier(req);
                let limits = self.limits.clone();
                let bound = Arc::clone(bound);
                Flow::Wait(Box::pin(async move {
                    let _ = slot.set(ask_redis(&bound, &id, now, &limits).await);
                }))
            }
        }
    }

    fn redis_failed(&self, req: &mut RequestCtx<'_>, bound: &Bound, error: &str) -> Flow {
        if let Some(t) = &bound.redis {
            t.failed(error);
        }
        if self.fault_tolerant {
            // Kong: the request passes, uncounted and without headers.
            return Flow::Continue;
        }
        Flow::Respond(render(
            Format::from_accept(req.headers),
            StatusCode::INTERNAL_SERVER_ERROR,
            "An unexpected error occurred",
            req.request_id,
            req.method == Method::HEAD,
        ))
    }

    fn start_flusher(&self, bound: &Arc<Bound>, every: Duration) {
        if bound.flusher.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            bound.flusher.store(false, Ordering::Relaxed);
            return;
        };
        let weak: Weak<Bound> = Arc::downgrade(bound);
        let limits = self.limits.clone();
        let fault_tolerant = self.fault_tolerant;
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(b) = weak.upgrade() else { break };
                b.flush(&limits, fault_tolerant).await;
            }
        });
    }

    /// Kong's header algorithm and verdict, from the usage before this request.
    fn decide(&self, req: &mut RequestCtx<'_>, usage: Usage, now: i64) -> Flow {
        let mut headers = HeaderMap::new();
        // (limit, remaining, window) of the period closest to its limit.
        let mut closest: Option<(f64, f64, i64, Period)> = None;
        let mut reset = 1;
        for &(p, limit) in &self.limits {
            let mut remaining = limit - usage.used[p.index()] as f64;
            if usage.stop.is_none() || usage.stop == Some(p) {
                remaining -= 1.0;
            }
            let remaining = remaining.max(0.0);
            let window = p.expiration();
            let better = match closest {
                None => true,
                Some((_, r, w, _)) => remaining < r || (remaining == r && window > w),
            };
            if better {
                closest = Some((limit, remaining, window, p));
                reset = (window - (now - p.window_start(now))).max(1);
            }
            if !self.hide_client_headers {
                let names = period_headers(p);
                headers.insert(names.limit.clone(), num_value(limit));
                headers.insert(names.remaining.clone(), num_value(remaining));
            }
        }
        if !self.hide_client_headers
            && let Some((limit, remaining, _, _)) = closest
        {
            headers.insert(RATELIMIT_LIMIT.clone(), num_value(limit));
            headers.insert(RATELIMIT_REMAINING.clone(), num_value(remaining));
            headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset));
        }
        if usage.stop.is_some() {
            let mut resp = render(
                Format::from_accept(req.headers),
                self.error_code,
                &self.error_message,
                req.request_id,
                req.method == Method::HEAD,
            );
            let h = resp.headers_mut();
            h.extend(headers);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(reset));
            return Flow::Respond(resp);
        }
        if !headers.is_empty() {
            match req.extensions.get_mut::<ResponseHeaders>() {
                Some(existing) => existing.0.extend(headers),
                None => {
                    req.extensions.insert(ResponseHeaders(headers));
                }
            }
        }
        Flow::Continue
    }

    pub fn explain(&self) -> String {
        let limits: Vec<String> = self
            .limits
            .iter()
            .map(|(p, l)| format!("{l}/{}", p.name()))
            .collect();
        let by = match self.limit_by {
            LimitBy::Consumer => "consumer",
            LimitBy::Credential => "credential",
            LimitBy::Ip => "ip",
            LimitBy::Service => "service",
            LimitBy::Header => "header",
            LimitBy::Path => "path",
        };
        let policy = match &self.policy {
            Policy::Local => "local".to_string(),
            Policy::Redis(r) => format!("redis {}:{}", r.host, r.port),
        };
        format!(
            "counts the request ({}, by {by}, {policy}; explain uses counters of its own)",
            limits.join(", ")
        )
    }
}

async fn ask_redis(
    bound: &Bound,
    id: &Ident,
    now: i64,
    limits: &[(Period, f64)],
) -> Result<Usage, String> {
    let Some(target) = &bound.redis else {
        return Err("no Redis configured".into());
    };
    let mut invocation = script().prepare_invoke();
    for &(p, _) in limits {
        invocation.key(redis_key(&bound.key_prefix, id, p.window_start(now), p));
    }
    for &(_, limit) in limits {
        invocation.arg(limit.to_string());
    }
    for &(p, _) in limits {
        invocation.arg(p.expiration());
    }
    let mut conn = target.connection().await?;
    let answer: Vec<i64> =
        tokio::time::timeout(target.conf.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| format!("Redis did not answer within {:?}", target.conf.timeout))?
            .map_err(|e| e.to_string())?;
    if answer.len() != limits.len() + 1 {
        return Err("unexpected answer from Redis".into());
    }
    let mut usage = Usage::default();
    for (i, &(p, _)) in limits.iter().enumerate() {
        usage.used[p.index()] = answer[i].max(0) as u64;
    }
    let stop = answer[limits.len()];
    if stop > 0 {
        usage.stop = limits.get(stop as usize - 1).map(|&(p, _)| p);
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_utc() {
        // 2024-02-29T13:45:17Z
        let t = 1_709_214_317;
        assert_eq!(Period::Second.window_start(t), t);
        assert_eq!(Period::Minute.window_start(t), t - 17);
        assert_eq!(Period::Hour.window_start(t), t - 45 * 60 - 17);
        assert_eq!(Period::Day.window_start(t), 1_709_164_800);
        assert_eq!(Period::Month.window_start(t), 1_706_745_600); // 2024-02-01
        assert_eq!(Period::Year.window_start(t), 1_704_067_200); // 2024-01-01
    }

    #[test]
    fn counts_only_admitted_requests_and_bounds_memory() {
        let c = Counters::new();
        let limits = [(Period::Minute, 3.0), (Period::Hour, 5.0)];
        let ip: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let now = 1_709_214_317;
        let used: Vec<u64> = (0..5)
            .map(|_| c.check_and_count(Ident::Ip(ip), now, &limits).used[1])
            .collect();
        assert_eq!(used, vec![0, 1, 2, 3, 3]);
        // A new minute: the hour keeps its count (3), the minute starts over.
        let u = c.check_and_count(Ident::Ip(ip), now + 60, &limits);
        assert_eq!((u.used[1], u.used[2], u.stop), (0, 3, None));
        for i in 0..(MAX_IDENTIFIERS as u32 * 2) {
            c.check_and_count(Ident::Ip(IpAddr::from(i.to_be_bytes())), now, &limits);
        }
        assert!(c.len() <= MAX_IDENTIFIERS, "{} identifiers kept", c.len());
    }
}
