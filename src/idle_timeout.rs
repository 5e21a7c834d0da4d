//! Upstream socket timeouts as nginx applies them (`proxy_read_timeout`,
//! `proxy_send_timeout`): the time a read (or write) may wait for the socket, measured
//! from when it started waiting, never a deadline on the whole exchange. A write that
//! makes progress restarts the read clock (a long upload to a silent upstream is not a
//! read timeout: nginx starts the read timer once the request is sent).
//!
//! Cheap on the hot path: a read that completes at once touches no timer, and a
//! waiting read arms one timer that is re-armed only when it fires (not re-inserted
//! into tokio's timer wheel on every read, as a per-read `Sleep::reset` would).

use crate::body::BoxError;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

/// Wraps a connector so its connections get [`IdleTimeout`] streams.
#[derive(Clone)]
pub struct IdleTimeoutConnector<C> {
    inner: C,
    read: Duration,
    write: Duration,
}

impl<C> IdleTimeoutConnector<C> {
    pub fn new(inner: C, read: Duration, write: Duration) -> Self {
        IdleTimeoutConnector { inner, read, write }
    }
}

impl<C> Service<http::Uri> for IdleTimeoutConnector<C>
where
    C: Service<http::Uri>,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = IdleTimeout<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let (read, write) = (self.read, self.write);
        Box::pin(async move {
            let io = fut.await.map_err(Into::into)?;
            Ok(IdleTimeout::new(io, read, write))
        })
    }
}

/// One direction's clock: when its current wait started, and the timer that enforces
/// it (armed lazily, possibly for an earlier deadline that is re-checked on firing).
struct Clock {
    timeout: Duration,
    /// When the current wait began; `None` while the direction makes progress.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The waker the timer was last polled with (polled again only for another task).
    waker: Option<Waker>,
}

impl Clock {
    fn new(timeout: Duration) -> Clock {
        Clock {
            timeout,
            waiting_since: None,
            timer: None,
            waker: None,
        }
    }

    fn progress(&mut self) {
        self.waiting_since = None;
    }

    /// Called when the direction would block: Ready(Err) once it has waited too long.
    fn poll_wait(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<io::Error> {
        if self.timeout.is_zero() {
            return Poll::Pending;
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let deadline = since + self.timeout;
        let timer = match &mut self.timer {
            Some(t) => t,
            None => {
                self.waker = None;
                self.timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline)))
            }
        };
        loop {
            if timer.is_elapsed() {
                if Instant::now() >= deadline {
                    self.waiting_since = None;
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("upstream {what} timed out"),
                    ));
                }
                // Fired for an earlier wait: re-arm for this one.
                timer.as_mut().reset(deadline);
                self.waker = None;
            } else if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
                self.waker = None;
            }
            if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => {
                    self.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                // Elapsed: the loop decides whether this wait has timed out.
                Poll::Ready(()) => continue,
            }
        }
    }
}

/// A connection whose reads and writes time out after waiting too long (see the
/// module doc).
pub struct IdleTimeout<S> {
    inner: S,
    read: Clock,
    write: Clock,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, read: Duration, write: Duration) -> Self {
        IdleTimeout {
            inner,
            read: Clock::new(read),
            write: Clock::new(write),
        }
    }
}

impl<S: Read + Unpin> Read for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read.progress();
                Poll::Ready(r)
            }
            Poll::Pending => this.read.poll_wait(cx, "read").map(Err),
        }
    }
}

impl<S: Write + Unpin> IdleTimeout<S> {
    /// After a write or flush: `sent` says whether request bytes went out, which
    /// restarts the read clock (a flush with nothing buffered is no progress).
    fn wrote<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        sent: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.write.progress();
                if r.as_ref().is_ok_and(sent) {
                    self.read.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.write.poll_wait(cx, "write").map(Err),
        }
    }
}

impl<S: Write + Unpin> Write for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, r, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(cx, r, |_| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.wrote(cx, r, |_| false)
    }
}

impl<S: Connection> Connection for IdleTimeout<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// hyper's Read/Write traits, driven by hand through TokioIo.
    async fn pair() -> (
        TokioIo<IdleTimeout<TokioIo<tokio::net::TcpStream>>>,
        tokio::net::TcpStream,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let io = IdleTimeout::new(
            TokioIo::new(c.unwrap()),
            Duration::from_millis(200),
            Duration::from_secs(5),
        );
        (TokioIo::new(io), s.unwrap().0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_a_read() {
        let (mut io, _peer) = pair().await;
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn flushing_nothing_does_not_postpone_a_read_timeout() {
        let (io, _peer) = pair().await;
        let mut io = io.into_inner();
        let started = Instant::now();
        // hyper's dispatch loop flushes (nothing) and reads on every wake-up: the read
        // still times out 200 ms after it began waiting.
        let wait = std::future::poll_fn(|cx| {
            let _ = Pin::new(&mut io).poll_flush(cx);
            let mut buf = [0u8; 8];
            let mut rb = hyper::rt::ReadBuf::new(&mut buf);
            match Pin::new(&mut io).poll_read(cx, rb.unfilled()) {
                Poll::Ready(Err(e)) => Poll::Ready(e),
                Poll::Ready(Ok(())) => panic!("nothing was sent"),
                Poll::Pending => Poll::Pending,
            }
        });
        let err = tokio::time::timeout(Duration::from_secs(2), wait)
            .await
            .expect("the read never timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_clock() {
        let (mut io, mut peer) = pair().await;
        let mut buf = [0u8; 8];
        // Bytes every 150 ms (under the 200 ms timeout) keep the read alive.
        for _ in 0..5 {
            let reader = io.read(&mut buf);
            let writer = async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                peer.write_all(b"x").await.unwrap();
            };
            let (n, ()) = tokio::join!(reader, writer);
            assert_eq!(n.unwrap(), 1);
        }
        // A write of ours restarts the read clock too.
        tokio::time::sleep(Duration::from_millis(150)).await;
        io.write_all(b"ping").await.unwrap();
        let reader = io.read(&mut buf);
        let writer = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            peer.write_all(b"y").await.unwrap();
        };
        let (n, ()) = tokio::join!(reader, writer);
        assert_eq!(n.unwrap(), 1);
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        // And silence after that still times out.
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
