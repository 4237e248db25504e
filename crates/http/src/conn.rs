//! The listener's connection limits: a cap on open connections (the one over it is closed at
//! once) and an idle timeout on each, so that whoever can reach the port cannot take the
//! descriptors the pool needs to restart workers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The metrics listener: a cap on open connections and an idle timeout on each.
pub(crate) struct Capped {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
    /// Conditions logged when they begin, not once per connection.
    full: bool,
    failing: bool,
}

impl Capped {
    /// The next connection within the cap; those over it are closed as they come.
    pub(crate) async fn accept(&mut self) -> (IdleStream, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => {
                    self.failing = false;
                    accepted
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(error = %e, "accepting metrics connections fails");
                        self.failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                if !self.full {
                    tracing::warn!(
                        max = self.max,
                        "metrics connections at their limit; refusing more"
                    );
                    self.full = true;
                }
                continue;
            };
            self.full = false;
            return (IdleStream::new(stream, slot, self.idle), peer);
        }
    }
}

/// A connection that fails with `TimedOut` once neither side has moved a byte for `idle`,
/// and gives its slot back when dropped.
pub(crate) struct IdleStream {
    io: TcpStream,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    _slot: OwnedSemaphorePermit,
}

impl IdleStream {
    fn new(io: TcpStream, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        Self {
            io,
            timer: Box::pin(tokio::time::sleep(idle)),
            idle,
            _slot: slot,
        }
    }

    /// Passes on a result of the stream, restarting the clock when it moved; a pending one
    /// becomes an error once the clock runs out.
    fn watch<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                let next = Instant::now() + self.idle;
                self.timer.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle metrics connection",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for IdleStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.watch(cx, polled)
    }
}

impl AsyncWrite for IdleStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}
impl Capped {
    pub(crate) fn new(listener: TcpListener, max: usize, idle: Duration) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max.max(1))),
            max,
            idle,
            full: false,
            failing: false,
        }
    }
}
