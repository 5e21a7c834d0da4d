//! Talking to upstream services: keep-alive HTTP/1.1 connections (http, and https
//! through rustls, see `tls`) with Kong's timeouts, retries on connect failure, and
//! classification of failures into the gateway's errors (502 / 503 / 504).
//!
//! Timeouts are per socket operation (nginx's proxy_connect/read/send_timeout), never
//! a deadline on the whole exchange, so long streams live as long as bytes flow.
//!
//! Connections are pooled **per thread** (nginx's per-worker `keepalive`): each worker
//! runtime sends on connections whose tasks run on that same thread, so a request never
//! wakes another thread. A connection is taken out of the pool while its request is
//! sent and goes back as soon as the response head arrives; it is reused once hyper
//! says it is ready again (the previous response fully read). Connections idle for
//! [`POOL_IDLE_TIMEOUT`] are dropped when next looked at.

use crate::body::{Body, BoxError};
use crate::error::GatewayError;
use crate::idle_timeout::IdleTimeoutConnector;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

// TLS over the timeout stream: the timeouts apply to the socket under TLS.
type Connector = HttpsConnector<IdleTimeoutConnector<HttpConnector<Resolver>>>;

/// How one group of services reaches its upstreams: the connector (timeouts, TLS
/// verification) and the identity of its connection pools.
#[derive(Clone)]
pub struct UpstreamClient {
    /// Unique per cached client: pools are keyed by it, so services with other
    /// timeouts never share a connection.
    id: u64,
    connector: Connector,
}

/// (connect, read, write) timeouts, and whether https certificates are verified.
type ClientKey = (Duration, Duration, Duration, bool);

/// The most a response head from an upstream may take (Supabase gives Kong 160 KiB
/// proxy buffers for large upstream headers; this leaves room beyond that), counted
/// as [`head_size`] does. Enforced exactly on the parsed head: hyper's own read-buffer
/// limit (which cuts anywhere between its size and twice that, with how the reads
/// arrive) is set well above it so that it only stops heads far larger.
pub const MAX_UPSTREAM_HEAD: usize = 1 << 20;

/// hyper's read buffer for upstream connections: a head up to [`MAX_UPSTREAM_HEAD`]
/// always fits, with up to as much again of whitespace on the wire.
const UPSTREAM_READ_BUF: usize = 2 * MAX_UPSTREAM_HEAD;

/// A response head's size as counted against [`MAX_UPSTREAM_HEAD`]: the status line
/// `HTTP/1.1 NNN reason\r\n`, `name: value\r\n` per header line, and the blank line.
pub fn head_size<B>(resp: &Response<B>) -> usize {
    let reason = resp
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes().len())
        .unwrap_or_else(|| resp.status().canonical_reason().map_or(0, str::len));
    let mut size = "HTTP/1.1 200 \r\n".len() + reason + 2;
    for (name, value) in resp.headers() {
        size += name.as_str().len() + 2 + value.len() + 2;
    }
    size
}

/// The error for a head over the limit (a 502, as any invalid upstream answer).
#[derive(Debug)]
pub struct HeadTooLarge(pub usize);

impl std::fmt::Display for HeadTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "upstream response head of {} bytes is over the {MAX_UPSTREAM_HEAD}-byte limit",
            self.0
        )
    }
}

impl std::error::Error for HeadTooLarge {}

/// An idle upstream connection older than this is closed instead of reused.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per upstream and thread (nginx's `keepalive`); more are
/// closed once their exchange is over.
const POOL_MAX_PER_HOST: usize = 1024;

/// Clients keyed by their timeouts and TLS verification, shared by every service with
/// the same settings and kept across reloads, so connection pools survive a config
/// change. Each client speaks both http and https (pools are per scheme and authority).
#[derive(Default, Clone)]
pub struct ClientCache {
    inner: Arc<Mutex<HashMap<ClientKey, UpstreamClient>>>,
    /// CA certificates trusted beside the system's (tests; private CAs).
    extra_roots: Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl ClientCache {
    /// A cache whose verifying clients also trust `roots` (PEM or DER CA certificates).
    pub fn with_extra_roots(roots: Vec<rustls::pki_types::CertificateDer<'static>>) -> ClientCache {
        ClientCache {
            inner: Arc::default(),
            extra_roots: Arc::new(roots),
        }
    }

    /// A client that verifies https certificates.
    pub fn get(&self, connect: Duration, read: Duration, write: Duration) -> UpstreamClient {
        self.get_with_verify(connect, read, write, true)
    }

    /// `verify: false` is a service's `tls_verify: false`: any certificate is accepted.
    pub fn get_with_verify(
        &self,
        connect: Duration,
        read: Duration,
        write: Duration,
        verify: bool,
    ) -> UpstreamClient {
        let mut map = match self.inner.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry((connect, read, write, verify))
            .or_insert_with(|| build_client(connect, read, write, verify, &self.extra_roots))
            .clone()
    }
}

fn build_client(
    connect: Duration,
    read: Duration,
    write: Duration,
    verify: bool,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> UpstreamClient {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let mut http = HttpConnector::new_with_resolver(Resolver(GaiResolver::new()));
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect));
    // Read and write timeouts on the socket, under TLS (a write restarts the read
    // clock: nginx starts the read timer once the request is sent).
    let conn = IdleTimeoutConnector::new(http, read, write);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config(verify, extra_roots))
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    UpstreamClient {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        connector,
    }
}

impl UpstreamClient {
    /// The id of this client's pool for `authority` over http or https: the same
    /// destination always gets the same id (kept across reloads), so a request finds
    /// its pool by a number instead of hashing the authority.
    pub fn pool_id(&self, https: bool, authority: &Authority) -> u64 {
        type Ids = HashMap<(u64, bool, String), u64>;
        static IDS: std::sync::OnceLock<Mutex<Ids>> = std::sync::OnceLock::new();
        let mut ids = match IDS.get_or_init(Mutex::default).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = ids.len() as u64 + 1;
        *ids.entry((self.id, https, authority.as_str().to_ascii_lowercase()))
            .or_insert(next)
    }
}

/// One pool: a client's connections to one scheme and authority.
struct PoolKey<'a> {
    /// From [`UpstreamClient::pool_id`].
    id: u64,
    https: bool,
    authority: &'a Authority,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

thread_local! {
    /// This thread's upstream connections (see the module doc).
    static POOL: RefCell<rustc_hash::FxHashMap<u64, Vec<Idle>>> =
        RefCell::new(rustc_hash::FxHashMap::default());
}

/// A connection of this thread's pool that can take a request now, if any.
fn checkout(key: &PoolKey) -> Option<http1::SendRequest<Body>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.get_mut(&key.id)?;
        let mut i = list.len();
        // Most recently returned first: the likeliest to be ready and warm.
        while i > 0 {
            i -= 1;
            let idle = &list[i];
            if idle.tx.is_closed() || idle.since.elapsed() > POOL_IDLE_TIMEOUT {
                list.swap_remove(i);
                continue;
            }
            if idle.tx.is_ready() {
                return Some(list.swap_remove(i).tx);
            }
        }
        None
    })
}

/// Back into this thread's pool once its response head has arrived.
fn checkin(key: &PoolKey, tx: http1::SendRequest<Body>) {
    if tx.is_closed() {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.entry(key.id).or_default();
        if list.len() >= POOL_MAX_PER_HOST {
            list.retain(|i| !i.tx.is_closed());
            if list.len() >= POOL_MAX_PER_HOST {
                return;
            }
        }
        list.push(Idle {
            tx,
            since: Instant::now(),
        });
    });
}

/// Opens a connection (DNS, TCP, TLS for https) and starts its task on this thread.
async fn connect(
    client: &UpstreamClient,
    key: &PoolKey<'_>,
) -> Result<http1::SendRequest<Body>, BoxError> {
    let uri = Uri::builder()
        .scheme(if key.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        })
        .authority(key.authority.clone())
        .path_and_query("/")
        .build()?;
    let mut connector = client.connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    let io = connector.call(uri).await?;
    let (tx, conn) = http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUF)
        .writev(false)
        .handshake::<_, Body>(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(tx)
}

/// DNS failures are tagged so they can be told apart from refused connections
/// (Kong: 503 `name resolution failed` vs 502).
#[derive(Clone)]
pub struct Resolver(GaiResolver);

#[derive(Debug)]
pub struct DnsError(std::io::Error);

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "name resolution failed: {}", self.0)
    }
}

impl std::error::Error for DnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Service<Name> for Resolver {
    type Response = <GaiResolver as Service<Name>>::Response;
    type Error = DnsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DnsError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DnsError>> {
        self.0.poll_ready(cx).map_err(DnsError)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let fut = self.0.call(name);
        Box::pin(async move { fut.await.map_err(DnsError) })
    }
}

/// Maps a client error to the answer Kong would give.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> GatewayError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        // The client's body broke (bad chunk, cut short) while we streamed it: the
        // client's fault, nginx's 400, not the upstream's 502.
        if e.is::<ClientBodyError>() {
            return GatewayError::BadRequest;
        }
        if e.is::<DnsError>() {
            return GatewayError::NameResolution;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return GatewayError::UpstreamTimeout;
        }
        if e.is::<tokio::time::error::Elapsed>() {
            return GatewayError::UpstreamTimeout;
        }
        cur = e.source();
    }
    GatewayError::UpstreamInvalid
}

/// A client request body that failed while it was streamed upstream (malformed
/// chunked framing, connection cut mid-body). The upstream request is aborted, so the
/// upstream never sees it complete; `classify` makes it a 400.
#[derive(Debug)]
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Retries on a fresh connection for requests a pooled connection never took (the
/// upstream had closed it while idle): bounded so a broken upstream can't loop us.
const STALE_RETRIES: u32 = 4;

/// Sends `req` (origin-form URI) to `authority` over http or https, with up to
/// `retries` extra attempts when the connection could not be established (nothing was
/// sent, so even a POST is safe to retry). A pooled connection that turns out closed
/// before it took the request hands the request back; it is sent on another.
pub async fn send(
    client: &UpstreamClient,
    pool_id: u64,
    https: bool,
    authority: &Authority,
    mut req: Request<Body>,
    retries: u32,
) -> Result<Response<Incoming>, (GatewayError, BoxError)> {
    let key = PoolKey {
        id: pool_id,
        https,
        authority,
    };
    let mut attempt = 0;
    let mut stale = 0;
    loop {
        let mut tx = match checkout(&key) {
            Some(tx) => tx,
            // Boxed: a pool miss is rare, and inline its future would make every
            // request's future (copied whole on each move) 1.5 KB larger.
            None => match Box::pin(connect(client, &key)).await {
                Ok(tx) => tx,
                Err(e) => {
                    if attempt < retries {
                        attempt += 1;
                        tracing::debug!(attempt, error = %e, "upstream connect failed, retrying");
                        continue;
                    }
                    return Err((classify(&*e), e));
                }
            },
        };
        match tx.try_send_request(req).await {
            Ok(resp) => {
                let size = head_size(&resp);
                if size > MAX_UPSTREAM_HEAD {
                    // Not pooled: its body is never read.
                    return Err((GatewayError::UpstreamInvalid, Box::new(HeadTooLarge(size))));
                }
                checkin(&key, tx);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(back) if stale < STALE_RETRIES => {
                    stale += 1;
                    tracing::debug!(error = %e.error(), "pooled upstream connection was closed; retrying");
                    req = back;
                }
                _ => {
                    let err = e.into_error();
                    return Err((classify(&err), Box::new(err)));
                }
            },
        }
    }
}
