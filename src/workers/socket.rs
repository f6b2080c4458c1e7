//! A client's or a server's socket (TCP or Unix-domain). On a worker it is in
//! the worker's own epoll set ([`super::event_loop`]) and its reads and writes
//! are direct system calls; anywhere else (the control thread, which opens
//! some servers and probes health; tests) it is a tokio socket on the current
//! runtime. [`Socket::rehome`] moves it to the worker it is used on.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use rustix::net::{RecvFlags, SendFlags, Shutdown};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::event_loop::{self, Place, READABLE, WRITABLE};

pub struct Socket(Io);

enum Io {
    Own(Own),
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// A socket in a worker's epoll set.
struct Own {
    // Dropped first: closing the fd takes it out of the epoll set before
    // its slot is given back.
    fd: Std,
    place: Place,
}

enum Std {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl AsFd for Std {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Std::Tcp(s) => s.as_fd(),
            Std::Unix(s) => s.as_fd(),
        }
    }
}

/// One expression over the three kinds of socket: ours, and tokio's two,
/// which have the same methods but no trait in common.
macro_rules! each {
    ($io:expr, $own:ident => $o:expr, $s:ident => $t:expr) => {
        match $io {
            Io::Own($own) => $o,
            Io::Tcp($s) => $t,
            Io::Unix($s) => $t,
        }
    };
}

/// Bytes one `recv` takes at most: they land on the stack and are copied
/// into the caller's buffer (safe code cannot receive into uninitialised
/// spare capacity; the copy of a typical reply is a few dozen instructions).
pub const CHUNK: usize = 16 * 1024;

impl Socket {
    /// A connected TCP socket, for use on the thread this runs on.
    pub fn from_std(tcp: std::net::TcpStream) -> io::Result<Socket> {
        tcp.set_nonblocking(true)?;
        Socket::adopt(Std::Tcp(tcp))
    }

    /// A tokio TCP socket, moved to this worker's epoll set if this is a worker.
    pub fn from_tcp(tcp: tokio::net::TcpStream) -> io::Result<Socket> {
        match super::current() {
            0 => Ok(Socket(Io::Tcp(tcp))),
            _ => Socket::adopt(Std::Tcp(tcp.into_std()?)),
        }
    }

    /// A tokio Unix-domain socket, as [`Socket::from_tcp`].
    pub fn from_unix(unix: tokio::net::UnixStream) -> io::Result<Socket> {
        match super::current() {
            0 => Ok(Socket(Io::Unix(unix))),
            _ => Socket::adopt(Std::Unix(unix.into_std()?)),
        }
    }

    /// The same socket, in the epoll set of the worker this runs on (or on
    /// tokio's reactor off the workers). An error leaves it closed.
    pub fn rehome(self) -> io::Result<Socket> {
        let fd = match self.0 {
            Io::Own(own) => {
                let Own { fd, place } = own;
                place.home.remove(fd.as_fd())?;
                fd
            }
            Io::Tcp(s) => Std::Tcp(s.into_std()?),
            Io::Unix(s) => Std::Unix(s.into_std()?),
        };
        Socket::adopt(fd)
    }

    /// `fd` must be non-blocking already: tokio's sockets are (`into_std`
    /// keeps the mode), and so is a socket moved between workers, which
    /// then costs no `ioctl` for it.
    fn adopt(fd: Std) -> io::Result<Socket> {
        match event_loop::register(fd.as_fd()) {
            Some(place) => Ok(Socket(Io::Own(Own { fd, place: place? }))),
            None => Ok(Socket(match fd {
                Std::Tcp(s) => Io::Tcp(tokio::net::TcpStream::from_std(s)?),
                Std::Unix(s) => Io::Unix(tokio::net::UnixStream::from_std(s)?),
            })),
        }
    }

    /// Ready when a read may return something (or EOF).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(&self.0,
            own => own.poll_ready(READABLE, cx).map(Ok),
            s => s.poll_read_ready(cx)
        )
    }

    /// Reads what has arrived into `buf`'s spare room, without waiting: `0`
    /// if nothing has (or at EOF: the async read that follows reports it).
    /// A read shorter than the room drained the socket, so the next poll
    /// waits for an event instead of paying an empty `recv`.
    pub fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let room = room(buf);
        // Short against the room the buffer had: with none (tokio's
        // `try_read_buf` then makes a little), no read counts as short.
        let spare = buf.capacity() - buf.len();
        each!(&self.0,
            own => {
                if !own.place.source.is(READABLE) {
                    return Ok(0);
                }
                zero_if_blocked(own.recv(room, |got| buf.extend_from_slice(got)))
            },
            s => {
                // A short read is reported to `try_io` as `WouldBlock`, which
                // clears tokio's readiness as an async read would.
                let mut got = 0;
                let tried = s.try_io(Interest::READABLE, || {
                    got = s.try_read_buf(buf)?;
                    if got > 0 && got < spare {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                match tried {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                    _ => Ok(got),
                }
            }
        )
    }

    /// Reads into `buf` what has arrived (at most its spare room, or what
    /// one `recv` takes), waiting until something has: `0` at EOF.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let room = room(buf);
        each!(&self.0,
            own => own.poll_io(READABLE, cx, |_| {
                own.recv(room, |got| buf.extend_from_slice(got))
            }),
            s => loop {
                std::task::ready!(s.poll_read_ready(cx))?;
                match s.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return Poll::Ready(done),
                }
            }
        )
    }

    /// How much of `bytes` the socket took at once; `0` when it would block.
    pub fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        each!(&self.0,
            own => {
                if !own.place.source.is(WRITABLE) {
                    return Ok(0);
                }
                zero_if_blocked(own.send(bytes))
            },
            s => zero_if_blocked(s.try_io(Interest::WRITABLE, || send_raw(s, bytes)))
        )
    }

    /// Bytes waiting to be read, left in the socket.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let peek =
            |fd: BorrowedFd<'_>, buf: &mut [u8]| Ok(rustix::net::recv(fd, buf, RecvFlags::PEEK)?.0);
        each!(&self.0,
            own => poll_fn(|cx| own.poll_io(READABLE, cx, |fd| peek(fd, &mut *buf))).await,
            s => loop {
                s.readable().await?;
                match s.try_io(Interest::READABLE, || peek(s.as_fd(), &mut *buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
            }
        )
    }

    /// Whether the socket has nothing to read and is not closed, as an idle
    /// server's must be: a pending byte is a FATAL (terminated backend) and
    /// a zero-byte read is EOF. Costs a system call only when the socket was
    /// seen readable since it last would have blocked.
    pub fn quiet(&self) -> bool {
        let peek = |fd: BorrowedFd<'_>| {
            let mut byte = [0u8; 1];
            rustix::net::recv(fd, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT)
        };
        let would_block = |r: rustix::io::Result<_>| matches!(r, Err(rustix::io::Errno::AGAIN));
        each!(&self.0,
            own => !own.place.source.is(READABLE) || would_block(peek(own.fd.as_fd())),
            // tokio's readiness first: a socket it has not seen readable is quiet.
            s => match s.try_io(Interest::READABLE, || Ok(())) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                _ => would_block(peek(s.as_fd())),
            }
        )
    }
}

/// The most a read into `buf` may take: its spare room, or one chunk when it
/// has none (it grows; a read of zero bytes would look like EOF).
fn room(buf: &BytesMut) -> usize {
    match buf.capacity() - buf.len() {
        0 => CHUNK,
        room => room,
    }
}

impl Own {
    /// Whether this runs on the socket's worker. Reads and writes must: the
    /// readiness they clear is set by that worker's loop without a lock, and
    /// a clear from another thread could undo an event it just marked (a
    /// pooled server is moved first, [`Socket::rehome`]).
    fn at_home(&self) -> bool {
        self.place.home.id == super::current()
    }

    /// Ready that way, or the task is registered to be woken when it is.
    fn poll_ready(&self, way: u8, cx: &mut Context<'_>) -> Poll<()> {
        debug_assert!(self.at_home(), "a socket polled off its worker");
        let source = &self.place.source;
        if source.is(way) {
            return Poll::Ready(());
        }
        let waiter = if way == READABLE {
            &source.reader
        } else {
            &source.writer
        };
        waiter.register(cx.waker());
        // An event marked between the check and the registration.
        if source.is(way) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Runs `call` once the socket is ready that way, and again after each
    /// `EAGAIN` (which clears the readiness), within the task's budget.
    fn poll_io<T>(
        &self,
        way: u8,
        cx: &mut Context<'_>,
        mut call: impl FnMut(BorrowedFd<'_>) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            std::task::ready!(self.poll_ready(way, cx));
            if !event_loop::proceed(cx) {
                return Poll::Pending;
            }
            match call(self.fd.as_fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.place.source.clear(way),
                done => return Poll::Ready(done),
            }
        }
    }

    /// One `recv` of at most `room` bytes, handed to `put`. `EAGAIN` and a
    /// read shorter than asked (the socket is drained) clear the readiness.
    fn recv(&self, room: usize, put: impl FnOnce(&[u8])) -> io::Result<usize> {
        debug_assert!(self.at_home(), "a socket read off its worker");
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let asked = room.min(CHUNK);
        match rustix::net::recv(&self.fd, &mut chunk[..asked], RecvFlags::empty()) {
            Ok(((got, _), _)) => {
                if !got.is_empty() && got.len() < asked {
                    self.place.source.clear(READABLE);
                }
                put(got);
                Ok(got.len())
            }
            Err(e) => {
                if e == rustix::io::Errno::AGAIN {
                    self.place.source.clear(READABLE);
                }
                Err(e.into())
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        debug_assert!(self.at_home(), "a socket written off its worker");
        let sent = send_raw(&self.fd, bytes);
        if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.place.source.clear(WRITABLE);
        }
        sent
    }
}

/// One `send` system call, made directly (rustix), not through glibc's
/// wrapper, which as a thread cancellation point costs two calls around the
/// system call (about 40 instructions). `EAGAIN` comes back as `WouldBlock`.
fn send_raw(socket: impl AsFd, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(socket, bytes, SendFlags::NOSIGNAL)?)
}

/// A non-blocking try's count, `0` when it would block (the async path takes over).
fn zero_if_blocked(tried: io::Result<usize>) -> io::Result<usize> {
    match tried {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        each!(&mut self.get_mut().0,
            own => own
                .poll_io(READABLE, cx, |_| own.recv(room, |got| buf.put_slice(got)))
                .map_ok(drop),
            s => Pin::new(s).poll_read(cx, buf)
        )
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(&mut self.get_mut().0,
            own => own.poll_io(WRITABLE, cx, |fd| send_raw(fd, bytes)),
            s => Pin::new(s).poll_write(cx, bytes)
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(&mut self.get_mut().0,
            _own => Poll::Ready(Ok(())),
            s => Pin::new(s).poll_flush(cx)
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(&mut self.get_mut().0,
            own => Poll::Ready(match rustix::net::shutdown(&own.fd, Shutdown::Write) {
                // Already closed by the peer: nothing left to shut.
                Err(rustix::io::Errno::NOTCONN) | Ok(()) => Ok(()),
                Err(e) => Err(e.into()),
            }),
            s => Pin::new(s).poll_shutdown(cx)
        )
    }
}
