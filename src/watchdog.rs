//! What a client connection is doing, for the timeouts that hyper does not enforce:
//! the HTTP/2 idle timeout (no stream open for `idle_timeout`: GOAWAY), the HTTP/1.1
//! header timeout after a response (the next request head, or the keep-alive idle time
//! before it, within `header_timeout`: else closed without an answer, as nginx does)
//! and the send timeout (a response the client does not take for `send_timeout`,
//! because it stopped reading its socket or never opens its HTTP/2 flow-control window:
//! the connection is closed, as nginx's `send_timeout` does).
//!
//! Each request holds an [`InFlight`] guard from the moment hyper hands it over until
//! its response body is dropped; the response body is wrapped in [`Tracked`], which
//! notes when it has handed a frame to hyper and not yet been asked for the next one
//! (hyper stops asking while the socket or the stream's window is full). The
//! connection task looks at [`Activity::check`] a few times per timeout: no timer per
//! request, one per connection.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One client connection's requests in flight and responses being sent.
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `started` when the last request in flight ended (0: none yet).
    idle_since: AtomicU64,
    /// Set once a request came over HTTP/2 (the idle timeout applies).
    h2: AtomicBool,
    /// HTTP/1: the one response being sent (hyper sends one at a time): 0, or 1 + the
    /// millisecond (since `started`) it last handed a frame over without being asked
    /// for the next. No allocation, lock or clock read per request.
    stall: AtomicU64,
    /// HTTP/2: each response being sent, as `stall`.
    sending: Mutex<Sending>,
}

/// The responses being sent, swept of finished ones when the list doubles.
struct Sending {
    list: Vec<Weak<AtomicU64>>,
    sweep_at: usize,
}

/// What the connection should do after a check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// HTTP/2 with no stream open for the idle timeout: send GOAWAY.
    Idle,
    /// A response has waited for the client longer than the send timeout: close.
    SendStalled,
    /// HTTP/1.1 with no request in flight for the header timeout since the last
    /// response (the next head is late, or the keep-alive connection idle): close.
    HeaderTimeout,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            stall: AtomicU64::new(0),
            sending: Mutex::new(Sending {
                list: Vec::new(),
                sweep_at: 64,
            }),
        }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request has arrived; the guard ends it when dropped.
    pub fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Wraps a response body so the send timeout sees it.
    pub fn track<B>(&self, body: B, guard: InFlight) -> Tracked<B> {
        if !self.h2.load(Ordering::Relaxed) {
            return Tracked {
                inner: body,
                stall: None,
                _guard: guard,
            };
        }
        let stall = Arc::new(AtomicU64::new(0));
        let mut sending = match self.sending.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        // Swept here too, so a busy keep-alive connection's list stays within twice
        // its responses in flight, whatever the time between two checks.
        if sending.list.len() >= sending.sweep_at {
            sending.list.retain(|w| w.strong_count() > 0);
            sending.sweep_at = (sending.list.len() * 2).max(64);
        }
        sending.list.push(Arc::downgrade(&stall));
        Tracked {
            inner: body,
            stall: Some(stall),
            _guard: guard,
        }
    }

    /// Looks at the connection against the timeouts (zero disables one). The header
    /// timeout is for HTTP/1.1 after its first response; the connection's first head is
    /// the caller's (it may share a deadline with the TLS handshake).
    pub fn check(&self, idle: Duration, send: Duration, header: Duration) -> Verdict {
        let now = self.now_ms();
        if !send.is_zero() {
            let limit = u64::try_from(send.as_millis()).unwrap_or(u64::MAX);
            let stalled = |v: u64| v != 0 && now.saturating_sub(v - 1) >= limit;
            if stalled(self.stall.load(Ordering::Relaxed)) {
                return Verdict::SendStalled;
            }
            let mut sending = match self.sending.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            let mut any = false;
            sending.list.retain(|w| match w.upgrade() {
                Some(s) => {
                    if stalled(s.load(Ordering::Relaxed)) {
                        any = true;
                    }
                    true
                }
                None => false,
            });
            if any {
                return Verdict::SendStalled;
            }
        }
        if !idle.is_zero()
            && self.h2.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
        {
            let limit = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            if now.saturating_sub(self.idle_since.load(Ordering::Relaxed)) >= limit {
                return Verdict::Idle;
            }
        }
        if !header.is_zero()
            && !self.h2.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
        {
            let since = self.idle_since.load(Ordering::Relaxed);
            let limit = u64::try_from(header.as_millis()).unwrap_or(u64::MAX);
            if since != 0 && now.saturating_sub(since) >= limit {
                return Verdict::HeaderTimeout;
            }
        }
        Verdict::Fine
    }
}

/// A request in flight on its connection (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // HTTP/2's idle timeout and HTTP/1's header timeout count from here (`max(1)`:
        // 0 means no request has ended yet).
        a.idle_since.store(a.now_ms().max(1), Ordering::Relaxed);
        if !a.h2.load(Ordering::Relaxed) {
            // HTTP/1: this request's response, sent or abandoned, stalls nothing now.
            a.stall.store(0, Ordering::Relaxed);
        }
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body whose stalls the connection's send timeout watches.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        // HTTP/2: this response's own mark; HTTP/1: None, the connection's `stall`.
        stall: Option<Arc<AtomicU64>>,
        _guard: InFlight,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        // Asked for a frame: not stalled. Handed one over with more to come: the
        // client must take it (hyper asks again once it has room) within the timeout.
        let mark = match &r {
            Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => {
                this._guard.0.now_ms().saturating_add(1)
            }
            _ => 0,
        };
        match this.stall {
            Some(own) => own.store(mark, Ordering::Relaxed),
            None => this._guard.0.stall.store(mark, Ordering::Relaxed),
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A future polled only when it woke itself. A connection task is woken for every
    /// read and write of its socket and then polls each branch of its `select!`; its
    /// timers and drain signal wrapped in this cost one atomic swap on those polls
    /// instead of a timer check and a watch-channel look each (~700 instructions per
    /// proxied request).
    pub struct Gated<F> {
        #[pin]
        inner: F,
        gate: Arc<Gate>,
        waker: std::task::Waker,
    }
}

/// Set when the inner future's own wake-up arrives; wakes the task that polls it.
struct Gate {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: std::future::Future> Gated<F> {
    pub fn new(inner: F) -> Gated<F> {
        let gate = Arc::new(Gate {
            // The first poll always reaches the inner future, which registers its wakers.
            woken: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        });
        Gated {
            inner,
            waker: std::task::Waker::from(Arc::clone(&gate)),
            gate,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake-up between the two is not lost.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn idle_only_for_http2_without_streams() {
        let a = Arc::new(Activity::default());
        let ms = Duration::from_millis(1);
        // Nothing has come over HTTP/2 yet: the header timeout's business.
        assert_eq!(a.check(ms, Duration::ZERO, Duration::ZERO), Verdict::Fine);
        let g = a.begin(http::Version::HTTP_2);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.check(ms, Duration::ZERO, Duration::ZERO), Verdict::Fine);
        drop(g);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.check(ms, Duration::ZERO, Duration::ZERO), Verdict::Idle);
        assert_eq!(
            a.check(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            Verdict::Fine
        );
        let h1 = Arc::new(Activity::default());
        drop(h1.begin(http::Version::HTTP_11));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(h1.check(ms, Duration::ZERO, Duration::ZERO), Verdict::Fine);
    }

    #[tokio::test]
    async fn header_timeout_only_for_http1_between_requests() {
        let ms = Duration::from_millis(1);
        let z = Duration::ZERO;
        let a = Arc::new(Activity::default());
        // Before the first request: the connection's own first deadline decides.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.check(z, z, ms), Verdict::Fine);
        let g = a.begin(http::Version::HTTP_11);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.check(z, z, ms), Verdict::Fine, "a request in flight");
        drop(g);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.check(z, z, ms), Verdict::HeaderTimeout);
        assert_eq!(a.check(z, z, Duration::from_secs(60)), Verdict::Fine);
        assert_eq!(a.check(z, z, z), Verdict::Fine, "zero disables it");
        // HTTP/2 has its idle timeout instead.
        let h2 = Arc::new(Activity::default());
        drop(h2.begin(http::Version::HTTP_2));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(h2.check(z, z, ms), Verdict::Fine);
    }

    #[test]
    fn finished_responses_are_swept_without_a_check() {
        let a = Arc::new(Activity::default());
        let live: Vec<_> = (0..10)
            .map(|_| {
                a.track(
                    http_body_util::Empty::<Bytes>::new(),
                    a.begin(http::Version::HTTP_2),
                )
            })
            .collect();
        for _ in 0..10_000 {
            drop(a.track(
                http_body_util::Empty::<Bytes>::new(),
                a.begin(http::Version::HTTP_2),
            ));
        }
        let len = a.sending.lock().unwrap().list.len();
        assert!(len <= 64, "{len} entries for 10 live responses");
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 10);
        drop(live);
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
    }

    /// A body with two frames.
    fn two_frames() -> impl HttpBody<Data = Bytes, Error = std::io::Error> {
        http_body_util::StreamBody::new(futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]))
    }

    #[tokio::test]
    async fn a_body_not_asked_for_its_next_frame_stalls() {
        // HTTP/2 responses have marks of their own; HTTP/1's is the connection's.
        for version in [http::Version::HTTP_2, http::Version::HTTP_11] {
            let a = Arc::new(Activity::default());
            let send = Duration::from_millis(20);
            // A body with two frames: after the first, nobody asks for the second.
            let mut t = a.track(two_frames(), a.begin(version));
            let first = t.frame().await;
            assert!(first.is_some());
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(
                a.check(Duration::ZERO, send, Duration::ZERO),
                Verdict::SendStalled,
                "{version:?}"
            );
            // Asked again: fine.
            assert!(t.frame().await.is_some());
            assert!(t.frame().await.is_none());
            assert_eq!(
                a.check(Duration::ZERO, send, Duration::ZERO),
                Verdict::Fine,
                "{version:?}"
            );
            drop(t);
            assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
            // A response dropped while stalled leaves no mark behind.
            let mut t = a.track(two_frames(), a.begin(version));
            assert!(t.frame().await.is_some());
            drop(t);
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(
                a.check(Duration::ZERO, send, Duration::ZERO),
                Verdict::Fine,
                "{version:?}"
            );
        }
    }

    #[tokio::test]
    async fn gated_future_runs_on_its_own_wake_ups_only() {
        use std::future::Future;
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let counted = Arc::clone(&polls);
        let mut rx = rx;
        let inner = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut rx).poll(cx)
        });
        let mut gated = std::pin::pin!(Gated::new(inner));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        // Polled again without its own wake-up: the inner future is not touched.
        for _ in 0..10 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        tx.send(7).unwrap();
        // Its wake-up lets the next poll through, with the value.
        assert_eq!(gated.as_mut().poll(&mut cx), Poll::Ready(Ok(7)));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        // And it wakes the task that polls it.
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let task = tokio::spawn(Gated::new(rx));
        tokio::task::yield_now().await;
        tx.send(9).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(got, Ok(Ok(Ok(9)))), "{got:?}");
    }
}
