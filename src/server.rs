//! Listeners: the proxy listeners (HTTP/1.1 and HTTP/2 on one port, cleartext with h2
//! prior knowledge, or TLS with ALPN `h2`/`http/1.1`), their limits, and the status
//! listener (/health, /status, /metrics, and the `dashboard`), with graceful shutdown.
//!
//! Limits, with nginx's answers as Kong gives them:
//! - request head (request line + headers) over `max_header_bytes` → 400
//!   `Request header or cookie too large` (nginx's 494); request target over
//!   `max_uri_bytes` → 414 `URI too long`. Both are checked on the parsed request
//!   (`Limits::check_head`); a head that doesn't even fit hyper's read buffer (sized to
//!   the same limit) makes hyper answer a bare 431 itself, which [`ConnIo`] rewrites on
//!   the wire into the same Kong 400 (and hyper's bare 400/414 into Kong's).
//! - `header_timeout`: a connection must complete its TLS handshake and first request
//!   head within it, and every later HTTP/1.1 request head too (this is also the idle
//!   keep-alive timeout, like nginx's client_header_timeout + keepalive_timeout); then
//!   it is closed without an answer, as nginx does. The first head is timed by the
//!   connection task, later ones by the `watchdog` from the end of the previous
//!   response (no timer reset per request).
//! - `max_connections`: at the limit the listeners stop accepting, so new connections
//!   wait in the kernel's accept queue (nginx's worker_connections); one is accepted
//!   for every one that closes. WebSocket tunnels count until they close.
//! - `idle_timeout`: an HTTP/2 connection with no stream open gets GOAWAY;
//!   `send_timeout`: a response the client does not take (socket or HTTP/2 window) closes
//!   the connection. Both are watched per connection by `watchdog`, a few times per
//!   timeout.
//! - HTTP/2: concurrent streams, pending-accept resets (rapid reset), local error resets
//!   and the per-stream send buffer are hyper's/h2's own limits, set from `Limits`;
//!   SETTINGS and PING floods are back-pressured by h2 (one answer pending at a time),
//!   CONTINUATION floods bounded by the header list size.

use crate::body::{self, Body};
use crate::error::GatewayError;
pub use crate::limits::Limits;
use crate::metrics::{ConnectionError, OpenConnection};
use crate::proxy::{self, Gateway, Listener};
use crate::watchdog::{Activity, Gated, Verdict};
use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

/// hyper refuses a read buffer below this (and panics when asked).
const HYPER_MIN_BUF: usize = 8192;

impl Limits {
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        let mut h1 = b.http1();
        // The header timeout is the connection task's (its first deadline, then the
        // `watchdog`), not a timer hyper resets for every request head.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(self.max_header_bytes.max(HYPER_MIN_BUF));
        // Room above the limit so `check_head` answers (HPACK counts 32 bytes more
        // per header than the request does).
        let h2_list = self
            .max_header_bytes
            .saturating_mul(2)
            .saturating_add(16 * 1024);
        let mut h2 = b.http2();
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(h2_list).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(self.h2_max_pending_resets)
            .max_local_error_reset_streams(self.h2_max_error_resets)
            .max_send_buf_size(self.h2_max_send_buffer.min(u32::MAX as usize));
        if !self.h2_keepalive.is_zero() {
            h2.keep_alive_interval(self.h2_keepalive)
                .keep_alive_timeout(Duration::from_secs(20));
        }
        b
    }
}

/// Serves the proxy over cleartext HTTP (HTTP/1.1, and HTTP/2 with prior knowledge)
/// on `listener` until `shutdown` completes, then drains.
pub async fn run(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve(gw, listener, None, shutdown).await
}

/// Serves the proxy over TLS with `gw.tls`'s certificate (ALPN h2 and http/1.1).
pub async fn run_tls(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let Some(certs) = gw.tls.clone() else {
        return Err(io::Error::other("no TLS certificate configured"));
    };
    let cfg = certs.server_config().map_err(io::Error::other)?;
    serve(
        gw,
        listener,
        Some(tokio_rustls::TlsAcceptor::from(cfg)),
        shutdown,
    )
    .await
}

async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let port = listener.local_addr()?.port();
    let info = Listener {
        port,
        tls: tls.is_some(),
    };
    let builder = Arc::new(gw.settings.limits.builder());
    // Each connection task holds a receiver: a send starts the drain, and `closed`
    // tells when the last connection has finished.
    let (drain, _) = tokio::sync::watch::channel(());
    let mut warned_full: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A permit first: at the limit, connections wait in the accept queue.
        let permit = match Arc::clone(&gw.connections).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warned_full = Some(Instant::now());
                    tracing::warn!(
                        max_connections = gw.settings.limits.max_connections,
                        "connection limit reached; new connections wait"
                    );
                }
                tokio::select! {
                    p = Arc::clone(&gw.connections).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let guard = ConnGuard {
            _permit: permit,
            _open: gw.metrics.connection_opened(info.tls),
        };
        let conn = Connection {
            gw: Arc::clone(&gw),
            builder: Arc::clone(&builder),
            peer,
            info,
        };
        let signal = drain.subscribe();
        match &tls {
            None => tokio::spawn(conn.plain(stream, guard, signal)),
            Some(acceptor) => tokio::spawn(conn.tls(acceptor.clone(), stream, guard, signal)),
        };
    }
    drop(listener);
    let _ = drain.send(());
    tokio::select! {
        _ = drain.closed() => {}
        _ = tokio::time::sleep(gw.settings.drain_timeout) => {
            tracing::warn!(
                drain_timeout_s = gw.settings.drain_timeout.as_secs_f64(),
                "drain timeout reached; closing remaining connections"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Workers: one runtime per thread, each with its own listeners
// ---------------------------------------------------------------------------------

/// Binds `addr` once per worker with `SO_REUSEPORT`, so each worker accepts on its own
/// socket and the kernel spreads connections among them (nginx's `reuseport`): no
/// request ever crosses threads. Port 0 is chosen by the first socket and shared by
/// the others.
pub fn bind_shared(addr: &str, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let mut target = first;
    let mut out = Vec::with_capacity(workers);
    for i in 0..workers.max(1) {
        let l = bind_one(target, workers > 1)?;
        if i == 0 {
            target = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: std::net::SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's own bind: a restarted gateway rebinds at once.
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The proxy's worker threads. Each runs a single-threaded runtime with its share of
/// the listeners (one socket of every address), and keeps its own upstream
/// connections (see `upstream`): thread-per-core, as nginx's workers.
pub struct Workers {
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `n` workers; `sockets` holds, per address, `n` sockets from
    /// [`bind_shared`] and whether the address serves TLS. Each worker serves until
    /// `stop` turns true, then drains its connections.
    pub fn start(
        gw: Arc<Gateway>,
        n: usize,
        sockets: Vec<(Vec<std::net::TcpListener>, bool)>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> io::Result<Workers> {
        let n = n.max(1);
        let mut per: Vec<Vec<(std::net::TcpListener, bool)>> = (0..n).map(|_| Vec::new()).collect();
        for (group, tls) in sockets {
            for (i, l) in group.into_iter().enumerate() {
                per[i % n].push((l, tls));
            }
        }
        let mut done = Vec::with_capacity(n);
        for (i, listeners) in per.into_iter().enumerate() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let gw = Arc::clone(&gw);
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-w{i}"))
                .spawn(move || {
                    worker_main(gw, listeners, stop);
                    let _ = tx.send(());
                })?;
            done.push(rx);
        }
        Ok(Workers { done })
    }

    /// Completes when every worker has drained and stopped.
    pub async fn finished(self) {
        for d in self.done {
            let _ = d.await;
        }
    }
}

fn worker_main(
    gw: Arc<Gateway>,
    listeners: Vec<(std::net::TcpListener, bool)>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let mut tasks = Vec::with_capacity(listeners.len());
        for (l, tls) in listeners {
            let l = match TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register a listener");
                    continue;
                }
            };
            let mut stop = stop.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|v| *v).await;
            };
            let gw = Arc::clone(&gw);
            tasks.push(if tls {
                tokio::spawn(run_tls(gw, l, shutdown))
            } else {
                tokio::spawn(run(gw, l, shutdown))
            });
        }
        for t in tasks {
            if let Ok(Err(e)) = t.await {
                tracing::error!(error = %e, "listener stopped");
            }
        }
    });
}

/// Keeps a connection counted (permit and open-connections gauge) while its socket
/// lives, wherever it goes: a WebSocket tunnel keeps it after hyper lets go.
struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    _open: OpenConnection,
}

struct Connection {
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    peer: std::net::SocketAddr,
    info: Listener,
}

impl Connection {
    fn deadline(&self) -> tokio::time::Instant {
        let t = self.gw.settings.limits.header_timeout;
        // Zero disables the timeout; a year stands in for "never".
        let t = if t.is_zero() {
            Duration::from_secs(365 * 86400)
        } else {
            t
        };
        tokio::time::Instant::now() + t
    }

    /// The connection task for cleartext; `signal` changes when the drain starts.
    async fn plain(self, stream: TcpStream, guard: ConnGuard, signal: Signal) {
        let deadline = self.deadline();
        self.serve(stream, guard, deadline, signal).await;
    }

    /// The connection task for TLS: the handshake shares the first request's deadline.
    async fn tls(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        guard: ConnGuard,
        mut signal: Signal,
    ) {
        let deadline = self.deadline();
        let tls = tokio::select! {
            r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
            // Shutting down: an unfinished handshake is no request in flight.
            _ = signal.changed() => return,
        };
        match tls {
            Ok(Ok(s)) => self.serve(s, guard, deadline, signal).await,
            Ok(Err(e)) => {
                self.gw
                    .metrics
                    .connection_error(ConnectionError::TlsHandshake);
                tracing::debug!(error = %e, peer = %self.peer, "TLS handshake failed");
            }
            Err(_) => {
                self.gw
                    .metrics
                    .connection_error(ConnectionError::HeaderTimeout);
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
            }
        }
    }

    async fn serve<S>(
        self,
        stream: S,
        guard: ConnGuard,
        deadline: tokio::time::Instant,
        mut signal: Signal,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let seen = Arc::new(AtomicBool::new(false));
        let io = ConnIo {
            inner: stream,
            _guard: guard,
            pending: None,
            watch_errors: true,
            gw: Arc::clone(&self.gw),
            peer: self.peer.ip(),
        };
        let (gw, peer, info) = (Arc::clone(&self.gw), self.peer, self.info);
        let first = Arc::clone(&seen);
        let activity = Arc::new(Activity::default());
        let act = Arc::clone(&activity);
        let svc = service_fn(move |req: Request<Incoming>| {
            first.store(true, Ordering::Relaxed);
            let gw = Arc::clone(&gw);
            // Ends when the response body is dropped, or with this future when the
            // client resets the stream first.
            let in_flight = act.begin(req.version());
            let act = Arc::clone(&act);
            async move {
                let resp = proxy::handle(gw, req, peer, info).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| act.track(b, in_flight)))
            }
        });
        let limits = &self.gw.settings.limits;
        let (idle, send, header) = (
            limits.idle_timeout,
            limits.send_timeout,
            limits.header_timeout,
        );
        // A few looks per timeout: a stalled response is cut between 1 and 1.25 times
        // the send timeout after it stalled, a late head between 1 and 1.25 times the
        // header timeout after the previous response.
        let period = [idle, send, header]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min()
            .map(|d| (d / 4).max(Duration::from_millis(20)));
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + period.unwrap_or(Duration::from_secs(3600)),
            period.unwrap_or(Duration::from_secs(3600)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let mut first_deadline = true;
        let mut draining = false;
        let result = loop {
            // The timers and the drain signal, looked at only when one of them fires
            // (not on every poll the socket's reads and writes cause).
            let watch = Gated::new(async {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(deadline), if first_deadline => Event::FirstDeadline,
                    _ = signal.changed(), if !draining => Event::Drain,
                    _ = tick.tick(), if period.is_some() => Event::Tick,
                    else => std::future::pending().await,
                }
            });
            let event = tokio::select! {
                biased;
                r = conn.as_mut() => break r,
                e = watch => e,
            };
            match event {
                Event::FirstDeadline => {
                    first_deadline = false;
                    // Before any request: still in hyper's protocol detection, or an
                    // HTTP/2 connection that never sent one. Slowloris either way.
                    if !seen.load(Ordering::Relaxed) {
                        self.gw
                            .metrics
                            .connection_error(ConnectionError::HeaderTimeout);
                        tracing::debug!(%peer, "no request head within the header timeout; closing");
                        return;
                    }
                }
                Event::Drain => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                Event::Tick => match activity.check(idle, send, header) {
                    Verdict::Fine => {}
                    Verdict::Idle => {
                        if !draining {
                            draining = true;
                            self.gw
                                .metrics
                                .connection_error(ConnectionError::IdleTimeout);
                            tracing::debug!(%peer, "HTTP/2 connection idle; GOAWAY");
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    Verdict::HeaderTimeout => {
                        self.gw
                            .metrics
                            .connection_error(ConnectionError::HeaderTimeout);
                        tracing::debug!(%peer, "no request head within the header timeout; closing");
                        return;
                    }
                    Verdict::SendStalled => {
                        self.gw
                            .metrics
                            .connection_error(ConnectionError::SendTimeout);
                        tracing::debug!(%peer, "client took no response bytes within the send timeout; closing");
                        return;
                    }
                },
            }
        };
        if let Err(e) = result {
            let timeout = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout);
            if timeout {
                self.gw
                    .metrics
                    .connection_error(ConnectionError::HeaderTimeout);
            }
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

/// What woke a connection task's watch: its first head's deadline, the drain, or a
/// look at its timeouts.
enum Event {
    FirstDeadline,
    Drain,
    Tick,
}

/// Held by every connection task; changes (or closes) when the drain starts.
type Signal = tokio::sync::watch::Receiver<()>;

// ---------------------------------------------------------------------------------
// The connection's byte stream
// ---------------------------------------------------------------------------------

/// A client connection's bytes, as hyper sees them (above TLS). It holds the
/// connection's slot, and rewrites hyper's own bare error answers to request heads
/// it cannot parse or hold (431 / 414 / 400, no body) into Kong's answers, with the
/// message and request id in the body.
struct ConnIo<S> {
    inner: S,
    /// Released with the socket.
    _guard: ConnGuard,
    /// Kong's answer, replacing hyper's, being written.
    pending: Option<Bytes>,
    /// Off once the connection is upgraded (the bytes are no longer HTTP/1.1).
    watch_errors: bool,
    gw: Arc<Gateway>,
    /// For the access-log line of a request head hyper refused.
    peer: std::net::IpAddr,
}

/// hyper's automatic answer to an unusable request head: a status line, then only
/// `content-length: 0` / `date` headers, and nothing after. Our own responses always
/// carry `x-kong-request-id`, so they never look like this.
fn hyper_error_head(buf: &[u8]) -> Option<GatewayError> {
    const HEADS: [(&[u8], GatewayError); 3] = [
        (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            GatewayError::HeaderTooLarge,
        ),
        (b"HTTP/1.1 414 URI Too Long\r\n", GatewayError::UriTooLong),
        (b"HTTP/1.1 400 Bad Request\r\n", GatewayError::BadRequest),
    ];
    let (rest, err) = HEADS
        .iter()
        .find_map(|(line, e)| buf.strip_prefix(*line).map(|r| (r, e.clone())))?;
    let headers = rest.strip_suffix(b"\r\n")?;
    if headers.is_empty() {
        return Some(err);
    }
    let headers = headers.strip_suffix(b"\r\n")?;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let lower = line.to_ascii_lowercase();
        let known = lower == b"content-length: 0"
            || lower == b"connection: close"
            || lower.starts_with(b"date: ");
        if !known {
            return None;
        }
    }
    Some(err)
}

/// Kong's answer for `err` on a connection about to close: plain text (no request
/// header could be read to negotiate another type).
fn kong_error_answer(err: &GatewayError, id: &str) -> Bytes {
    let (status, msg, _) = err.parts();
    let (ctype, text) = crate::error::render_text(crate::error::Format::Plain, msg, id);
    let head = format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\nserver: {}\r\nx-kong-request-id: {id}\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        text.len(),
        proxy::SERVER,
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(text.as_bytes());
    Bytes::from(out)
}

impl<S: AsyncWrite + Unpin> ConnIo<S> {
    /// Writes out a replacement answer, if one is waiting.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(p) = self.pending.as_mut() {
            if p.is_empty() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, p))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            p.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Looks at the start of a write; true when it was hyper's error answer and has
    /// been replaced (the caller reports it written).
    fn intercept(&mut self, buf: &[u8]) -> bool {
        if !self.watch_errors {
            return false;
        }
        if buf.starts_with(b"HTTP/1.1 101 ") {
            self.watch_errors = false;
            return false;
        }
        if !buf.starts_with(b"HTTP/1.1 4") {
            return false;
        }
        let Some(err) = hyper_error_head(buf) else {
            return false;
        };
        self.gw.metrics.connection_error(match err {
            GatewayError::BadRequest => ConnectionError::BadRequest,
            _ => ConnectionError::HeaderTooLarge,
        });
        // hyper calls no service for a head it refused: the access-log line is ours.
        let id = proxy::request_id();
        let answer = kong_error_answer(&err, &id);
        let (status, msg, _) = err.parts();
        let body = answer.len()
            - answer
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |i| i + 4);
        crate::access_log::write_rejected(
            self.gw.settings.access_log,
            self.peer,
            status.as_u16(),
            body as u64,
            &id,
            msg,
        );
        self.pending = Some(answer);
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if this.intercept(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && this.intercept(first)
        {
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------
// Status listener
// ---------------------------------------------------------------------------------

/// Serves /health, /status and /metrics on `listener` until `shutdown` completes.
/// Keep it running through the proxy's drain: /health answers 503 meanwhile.
/// The dashboard is on when the listener is loopback (see [`run_status_with`]).
pub async fn run_status(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_status_with(gw, listener, crate::dashboard::Options::default(), shutdown).await
}

/// [`run_status`] with the dashboard's flags: it serves the dashboard (`/`, `/api/…`)
/// unless `dashboard::Access::decide` turns it off.
pub async fn run_status_with(
    gw: Arc<Gateway>,
    listener: TcpListener,
    dashboard: crate::dashboard::Options,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    use crate::dashboard::{Access, Dashboard};
    let access = Access::decide(&dashboard, listener.local_addr()?);
    match &access {
        Access::Off(why) => tracing::info!("{why}"),
        Access::Local => {
            tracing::info!("dashboard on the status listener (loopback, no credentials)")
        }
        Access::Basic(_) => tracing::info!("dashboard on the status listener (basic auth)"),
    }
    let dash = Arc::new(Dashboard::new(access));
    // Aborted when this returns: the sampler lives as long as the listener.
    let sampler = dash.spawn_sampler(Arc::clone(&gw));
    let _stop_sampler = AbortOnDrop(sampler);
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let gw = Arc::clone(&gw);
                let dash = Arc::clone(&dash);
                let svc = service_fn(move |req: Request<Incoming>| {
                    let gw = Arc::clone(&gw);
                    let dash = Arc::clone(&dash);
                    async move {
                        let resp = if Dashboard::owns(req.uri().path()) {
                            dash.handle(&gw, req).await
                        } else {
                            status_response(&gw, &req)
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

fn status_response(gw: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let text_resp = |status: StatusCode, ctype: &'static str, text: String| {
        let mut r = Response::new(body::full(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r
    };
    match req.uri().path() {
        "/health" if gw.is_draining() => text_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "draining\n".into(),
        ),
        "/health" => text_resp(StatusCode::OK, "text/plain; charset=utf-8", "OK\n".into()),
        "/metrics" => text_resp(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            gw.metrics.render(gw.snapshot.load().generation),
        ),
        "/status" => {
            let snap = gw.snapshot.load();
            let st = match gw.status.lock() {
                Ok(s) => s.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let loaded_at = chrono::DateTime::<chrono::Utc>::from(snap.loaded_at)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let doc = serde_json::json!({
                "server": proxy::SERVER,
                "generation": snap.generation,
                "config_hash": snap.config_hash,
                "config_file": snap.file,
                "loaded_at": loaded_at,
                "last_reload_error": st.last_reload_error,
                "reloads": {
                    "ok": st.reloads_ok,
                    "failed": st.reloads_failed,
                    "unchanged": st.reloads_unchanged,
                },
                "routes": snap.config.routes.len(),
                "services": snap.config.services.len(),
                "draining": gw.is_draining(),
            });
            text_resp(
                StatusCode::OK,
                "application/json; charset=utf-8",
                doc.to_string(),
            )
        }
        _ => text_resp(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found (try /health, /status, /metrics or the dashboard at /)\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_hyper_bare_error_heads() {
        let h = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 10:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_error_head(h), Some(GatewayError::HeaderTooLarge));
        let h = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_error_head(h), Some(GatewayError::BadRequest));
        let h = b"HTTP/1.1 414 URI Too Long\r\n\r\n";
        assert_eq!(hyper_error_head(h), Some(GatewayError::UriTooLong));
        // Ours (and relayed upstream answers) carry a request id or a body.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-kong-request-id: 1\r\n\r\n";
        assert_eq!(hyper_error_head(ours), None);
        let body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nhi";
        assert_eq!(hyper_error_head(body), None);
        assert_eq!(
            hyper_error_head(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            None
        );
        let b = kong_error_answer(&GatewayError::HeaderTooLarge, &proxy::request_id());
        let text = String::from_utf8_lossy(&b);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("\r\n\r\nRequest header or cookie too large\nrequest_id: "));
    }

    #[test]
    fn head_limits() {
        let limits = Limits {
            max_header_bytes: 100,
            max_uri_bytes: 20,
            ..Limits::default()
        };
        let parts = |target: &str, header: usize| {
            let (p, _) = Request::builder()
                .uri(target)
                .header("x", "a".repeat(header))
                .body(())
                .unwrap()
                .into_parts();
            p
        };
        assert_eq!(limits.check_head(&parts("/short", 10)), None);
        assert_eq!(
            limits.check_head(&parts("/aaaaaaaaaaaaaaaaaaaaaaa", 1)),
            Some(GatewayError::UriTooLong)
        );
        assert_eq!(
            limits.check_head(&parts("/short", 100)),
            Some(GatewayError::HeaderTooLarge)
        );
    }
}
