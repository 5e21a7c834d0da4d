//! Talking to upstream services: pooled keep-alive HTTP/1.1 clients (http, and https
//! through rustls, see `tls`) with Kong's timeouts, retries on connect failure, and
//! classification of failures into the gateway's errors (502 / 503 / 504).
//!
//! Timeouts are per socket operation (nginx's proxy_connect/read/send_timeout), never
//! a deadline on the whole exchange, so long streams live as long as bytes flow.

use crate::body::{Body, BoxError};
use crate::error::GatewayError;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

// TLS over the timeout stream: the timeouts apply to the socket under TLS.
type Connector = HttpsConnector<TimeoutConnector<HttpConnector<Resolver>>>;
pub type UpstreamClient = Client<Connector, Body>;

/// (connect, read, write) timeouts, and whether https certificates are verified.
type ClientKey = (Duration, Duration, Duration, bool);

/// The most a response head from an upstream may take (Supabase gives Kong 160 KiB
/// proxy buffers for large upstream headers; this leaves room beyond that).
pub const MAX_UPSTREAM_HEAD: usize = 1 << 20;

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
    let mut http = HttpConnector::new_with_resolver(Resolver(GaiResolver::new()));
    http.set_nodelay(true);
    http.enforce_http(false);
    let mut conn = TimeoutConnector::new(http);
    conn.set_connect_timeout(Some(connect));
    conn.set_read_timeout(Some(read));
    conn.set_write_timeout(Some(write));
    // A long upload to a silent upstream is not a read timeout (nginx starts the
    // read timer once the request is sent).
    conn.set_reset_reader_on_write(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config(verify, extra_roots))
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .set_host(false)
        .http1_max_buf_size(MAX_UPSTREAM_HEAD)
        .build(https)
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

/// Sends `req` with up to `retries` extra attempts when the connection could not be
/// established (nothing was sent, so even a POST is safe to retry). The request body
/// is held in a shared slot so a failed connect leaves it untouched for the next try.
pub async fn send(
    client: &UpstreamClient,
    req: Request<Body>,
    retries: u32,
) -> Result<Response<Incoming>, (GatewayError, BoxError)> {
    let (parts, body) = req.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let mut attempt = 0;
    loop {
        let mut r = Request::from_parts(parts.clone(), SlotBody::new(&slot).boxed());
        *r.extensions_mut() = http::Extensions::new();
        match client.request(r).await {
            Ok(resp) => return Ok(resp),
            Err(e) => {
                let untouched = slot.lock().map(|s| s.is_some()).unwrap_or(false);
                if e.is_connect() && attempt < retries && untouched {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "upstream connect failed, retrying");
                    continue;
                }
                let kind = classify(&e);
                return Err((kind, Box::new(e)));
            }
        }
    }
}

/// A request body that takes the real body from a shared slot on first poll.
struct SlotBody {
    slot: Arc<Mutex<Option<Body>>>,
    body: Option<Body>,
    hint: SizeHint,
    end: bool,
}

impl SlotBody {
    fn new(slot: &Arc<Mutex<Option<Body>>>) -> SlotBody {
        let (hint, end) = match slot.lock() {
            Ok(s) => match s.as_ref() {
                Some(b) => (
                    http_body::Body::size_hint(b),
                    http_body::Body::is_end_stream(b),
                ),
                None => (SizeHint::with_exact(0), true),
            },
            Err(_) => (SizeHint::with_exact(0), true),
        };
        SlotBody {
            slot: Arc::clone(slot),
            body: None,
            hint,
            end,
        }
    }
}

impl http_body::Body for SlotBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.body.is_none() {
            let taken = match self.slot.lock() {
                Ok(mut s) => s.take(),
                Err(_) => None,
            };
            match taken {
                Some(b) => self.body = Some(b),
                None => return Poll::Ready(None),
            }
        }
        match self.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}
