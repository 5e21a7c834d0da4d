//! Portcullis: a Kong-compatible access gateway.
//!
//! Module map, in layers: a module imports only modules of layers below its own
//! (arrows point down; modules of one layer don't import each other). `tests/layers.rs`
//! checks it (`cargo test --test layers` names any upward import and any cycle).
//!
//! 1. leaves (no crate imports): `yaml`, the positioned YAML tree (`raw`) and the walker
//!    that collects every error with file:line:col (`walk`); `body`; `path` and `router`
//!    (Kong's path normalisation, strip_path joins, route matching); `ipset`;
//!    `watchdog`, a client connection's requests in flight for the HTTP/2 idle and
//!    send timeouts
//! 2. `error`, every gateway-made response; `mcp`, JSON-RPC/MCP reading for `mcp-policy`
//!    and its list-result filter (JSON and SSE); `idle_timeout`, upstream socket
//!    timeouts; `entities`, Kong's services, routes, consumers, credentials (no plugins);
//!    `tls`, certificates (server and upstream)
//! 3. `metrics`, the Prometheus counters behind /metrics; `limits`, request and
//!    connection limits; `consumers`, credentials compiled for lookups; `upstream`,
//!    per-thread keep-alive pools on hyper's http1 connections, retries, error classes;
//!    `jwks`, an authorization server's signing keys for `oauth2-resource`
//! 4. `context`, the per-request context plugins and Lua share (`RequestCtx`,
//!    `AuthState`, `UpstreamOverrides`, query/body helpers); `access_log`, combined/JSON
//! 5. `lua`: the Lua sandbox and Kong's PDK subset
//! 6. `plugins`: the closed plugin enum and one file per plugin, each decoding its own
//!    config from the `yaml` tree (`plugins::cors::core` holds Kong's CORS semantics)
//! 7. `config`: YAML → validated model (`decode`, `model::Config` holds the compiled
//!    plugins) → `snapshot::Snapshot` (`compile`), the immutable compiled config a
//!    request reads (`crate::snapshot` is `config::snapshot`)
//! 8. `proxy`, the life of one request; `explain`, `portcullis explain`
//! 9. `dashboard`: the read-only page and JSON on the status listener (routes, traffic
//!    sampled from `metrics`, reload history, `explain`)
//! 10. `server`: worker threads (one runtime and one SO_REUSEPORT socket per address
//!     each), listeners (HTTP/1.1 and HTTP/2, cleartext and TLS), the status endpoint,
//!     graceful shutdown; `reload`, config reloads
//! 11. `cli`: the command line
//!
//! The life of one request: the server accepts and calls `proxy::handle`, which loads
//! the snapshot once (a reload midway doesn't affect it), computes the real client IP
//! and runs `Exchange::phases`, Kong's phases in order, one function each: `rewrite`
//! (nginx's checks, the Host, the normalised path), `route` and `access` (the route,
//! 404 if none; the plugin chain in priority order, the first plugin that answers
//! wins), `upstream_request` and `balancer` (the request streamed to the service),
//! `header_filter` and `body_filter` (the response head and its hooks such as CORS; the
//! body, through mcp-policy's filter), then `gateway_headers` and `log` (the access log
//! line and metrics, written when the body is done).

pub mod access_log;
pub mod body;
pub mod cli;
pub mod config;
pub mod consumers;
pub mod context;
pub mod dashboard;
pub mod entities;
pub mod error;
pub mod explain;
#[doc(hidden)]
pub mod fuzz_api;
pub mod idle_timeout;
pub mod ipset;
pub mod jwks;
pub mod limits;
pub mod lua;
pub mod mcp;
pub mod metrics;
pub mod path;
pub mod plugins;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod watchdog;
pub mod yaml;

// `snapshot` is part of the config layer (`config::compile` builds it); this keeps the
// `snapshot::` path.
pub use config::snapshot;
// The CORS core moved beside its plugin; this keeps the `cors::` path.
pub use plugins::cors::core as cors;
