//! Portcullis: a Kong-compatible access gateway.
//!
//! Module map:
//! - `config`: YAML → positioned tree (`raw`) → validated model (`decode`) → `Snapshot` (`compile`)
//! - `snapshot`: the immutable compiled config a request reads
//! - `path`, `router`: Kong's path normalisation, strip_path joins and route matching
//! - `plugins`: the closed plugin enum and one file per plugin (`cors`, `ipset` hold their cores)
//! - `mcp`: JSON-RPC/MCP reading for `mcp-policy`, and its list-result filter (JSON and SSE)
//! - `jwks`: an authorization server's signing keys, fetched and cached for `oauth2-resource`
//! - `proxy`: the life of one request; `upstream`: per-thread keep-alive pools on hyper's
//!   http1 connections, retries, error classes; `idle_timeout`: upstream socket timeouts
//! - `error`: every gateway-made response; `access_log`: combined/JSON lines
//! - `server`: worker threads (one runtime and one SO_REUSEPORT socket per address each),
//!   listeners (HTTP/1.1 and HTTP/2, cleartext and TLS), limits, the status
//!   endpoint, graceful shutdown; `tls`: certificates (server and upstream);
//!   `metrics`: the Prometheus counters behind /metrics
//!
//! The life of one request: the server accepts and calls `proxy::handle`, which loads
//! the snapshot once (a reload midway doesn't affect it), computes the real client IP,
//! normalises the path, asks the router for the route (404 if none), runs the route's
//! plugin chain in priority order (the first plugin that answers wins), streams the
//! request to the upstream and the response back, runs the response hooks (CORS), and
//! writes the access log line when the body is done.

pub mod access_log;
pub mod body;
pub mod cli;
pub mod config;
pub mod consumers;
pub mod cors;
pub mod error;
pub mod explain;
#[doc(hidden)]
pub mod fuzz_api;
pub mod idle_timeout;
pub mod ipset;
pub mod jwks;
pub mod lua;
pub mod mcp;
pub mod metrics;
pub mod path;
pub mod plugins;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
