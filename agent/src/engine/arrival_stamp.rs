//! When a request really reached the simulated engine: the kernel's receive stamp of its
//! first bytes.
//!
//! The engine's handler runs only once hyper has read and parsed the request, which under a
//! burst of requests can be milliseconds after the bytes reached the socket. That wait is the
//! engine's (any server has it), so the engine's ground truth counts its latency from the
//! kernel's stamp (`SO_TIMESTAMPNS`, read with `recvmsg`), not from its handler.
//!
//! Each accepted connection is a [`StampedStream`] sharing an [`ArrivalStamp`] with the
//! handler (through axum's connection info). A read that starts a request notes the stamp of
//! its bytes; the handler takes it. HTTP/1.1 requests on one connection follow one another
//! (the client does not pipeline), so the first bytes read after a take belong to the next
//! request.

use std::io;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The kernel's receive instant of the request a connection is reading, shared between the
/// connection and the handler.
#[derive(Debug, Clone, Default)]
pub struct ArrivalStamp(Arc<Mutex<Option<Instant>>>);

impl ArrivalStamp {
    /// Notes the kernel's `stamp` unless a request's arrival is already noted and not yet
    /// taken (later reads of the same request keep its first).
    fn note(&self, stamp: TimeSpec) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = instant_of(stamp);
        }
    }

    /// The arrival of the request now being handled; `None` where the kernel gave no stamp.
    pub fn take(&self) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Connected<IncomingStream<'_, StampingListener>> for ArrivalStamp {
    fn connect_info(stream: IncomingStream<'_, StampingListener>) -> Self {
        stream.io().arrival.clone()
    }
}

/// A TCP listener whose connections carry kernel receive stamps (when asked), with
/// `TCP_NODELAY` set.
pub struct StampingListener {
    inner: TcpListener,
    stamp: bool,
}

impl StampingListener {
    /// Wraps a bound listener. With `stamp`, asks the kernel to stamp receives from now on:
    /// the kernel turns stamping on a moment after the first socket asks, so asking on the
    /// listener, not at the first accept, has the first request's bytes stamped too. Without
    /// it, connections read as plain sockets and no request has an arrival.
    pub fn new(inner: TcpListener, stamp: bool) -> Self {
        let stamp = stamp
            && match setsockopt(&inner, sockopt::ReceiveTimestampns, &true) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("simulated engine: the kernel will not stamp receives: {e}");
                    false
                }
            };
        Self { inner, stamp }
    }
}

impl Listener for StampingListener {
    type Io = StampedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => return (StampedStream::new(tcp, self.stamp), addr),
                // A peer that gave up before the accept: nothing to serve.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of descriptors, most likely: wait for some to close, as axum's own
                // listener does.
                Err(e) => {
                    tracing::warn!("simulated engine: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection whose reads note the kernel's receive stamp.
pub struct StampedStream {
    tcp: TcpStream,
    arrival: ArrivalStamp,
    /// Room for the kernel's stamp, one per connection, where the kernel agreed to stamp;
    /// `None`: reads are plain reads.
    control: Option<Vec<u8>>,
}

impl StampedStream {
    fn new(tcp: TcpStream, stamp: bool) -> Self {
        // Without TCP_NODELAY, Nagle holds each small SSE chunk until the previous one is
        // acknowledged, and the client's delayed ACK turns that into ~40 ms stalls.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("simulated engine: cannot set TCP_NODELAY: {e}");
        }
        // The option comes from the listener; reads go through `recvmsg` only where it did.
        let stamped = stamp
            && nix::sys::socket::getsockopt(&tcp, sockopt::ReceiveTimestampns).unwrap_or(false);
        Self {
            tcp,
            arrival: ArrivalStamp::default(),
            control: stamped.then(|| nix::cmsg_space!(TimeSpec)),
        }
    }
}

/// One `recvmsg` from `tcp` into `buf`, the kernel's stamp into `control`: the bytes read
/// and the stamp of them, if any.
fn recv_stamped(
    tcp: &TcpStream,
    control: &mut [u8],
    buf: &mut [u8],
) -> io::Result<(usize, Option<TimeSpec>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(tcp.as_raw_fd(), &mut iov, Some(control), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let stamp = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(t) => Some(t),
            _ => None,
        })
    });
    Ok((msg.bytes, stamp))
}

/// The monotonic instant of `stamp`, a wall-clock time the kernel took a moment ago.
fn instant_of(stamp: TimeSpec) -> Option<Instant> {
    let (now, wall) = paired_now();
    let taken = UNIX_EPOCH + Duration::from(stamp);
    // A stamp after the wall clock's now (a clock step) is taken as now.
    now.checked_sub(wall.duration_since(taken).unwrap_or_default())
}

/// The monotonic and the wall clock's now, read as one pair.
///
/// Two plain reads are as far apart as the thread was preempted between them: with a
/// thousand streams on two cores that is milliseconds, and the arrival came out that much
/// early, before the client had sent the request (on loopback a request reaches the engine
/// some 20 µs after it is sent). So the wall read is bracketed by two monotonic reads and
/// paired with their midpoint; of a few tries the tightest bracket is kept, and one of under
/// 2 µs (a clock read takes tens of nanoseconds) is taken at once.
fn paired_now() -> (Instant, SystemTime) {
    const TRIES: usize = 8;
    const TIGHT: Duration = Duration::from_micros(2);
    let read = || {
        let before = Instant::now();
        let wall = SystemTime::now();
        let width = before.elapsed();
        (width, before + width / 2, wall)
    };
    let mut best = read();
    for _ in 1..TRIES {
        if best.0 < TIGHT {
            break;
        }
        let next = read();
        if next.0 < best.0 {
            best = next;
        }
    }
    (best.1, best.2)
}

impl AsyncRead for StampedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(control) = this.control.as_mut() else {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        let tcp = &this.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match tcp.try_io(Interest::READABLE, || recv_stamped(tcp, control, unfilled)) {
                Ok((n, stamp)) => {
                    if let Some(stamp) = stamp.filter(|_| n > 0) {
                        this.arrival.note(stamp);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn each_request_read_is_stamped_once_with_the_kernels_arrival() {
        let mut listener =
            StampingListener::new(TcpListener::bind("127.0.0.1:0").await.expect("bind"), true);
        let addr = Listener::local_addr(&listener).expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = Listener::accept(&mut listener).await;
        assert!(
            server.control.is_some(),
            "the kernel stamps TCP receives on Linux"
        );
        let mut buf = [0u8; 64];
        // The kernel stamps a moment after the listener asks: wait for a first stamped read.
        let mut stamped = false;
        for _ in 0..100 {
            client.write_all(b"probe").await.expect("write");
            let n = server.read(&mut buf).await.expect("read");
            assert_eq!(&buf[..n], b"probe");
            if server.arrival.take().is_some() {
                stamped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stamped, "the kernel stamped no read within a second");

        let before = Instant::now();
        client.write_all(b"first").await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n = server.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"first");
        let first = server.arrival.take().expect("a stamp");
        // The stamp is the bytes' arrival, 30 ms before the read, not the read.
        assert!(before <= first, "stamped before it was sent");
        assert!(
            first + Duration::from_millis(25) <= Instant::now(),
            "stamped at the read, not at the arrival"
        );
        assert_eq!(server.arrival.take(), None, "taken once");

        // Bytes read before a take belong to the request not yet taken: its first stamp stays.
        client.write_all(b"second").await.expect("write");
        let n = server.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"second");
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.write_all(b"-more").await.expect("write");
        let n = server.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"-more");
        let second = server.arrival.take().expect("a stamp");
        assert!(first + Duration::from_millis(30) <= second);
        assert!(
            second + Duration::from_millis(10) <= Instant::now(),
            "the later bytes' stamp replaced the first"
        );
    }
}
