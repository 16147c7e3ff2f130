//! A Unix stream socket for tokio that asks epoll for readability only.
//!
//! tokio's `UnixStream` registers every socket for reading and writing. On a Unix socket the
//! kernel signals "writable" each time the peer reads what was sent, so a process that sends
//! an answer and goes back to sleep is woken again as soon as the other side has read that
//! answer, only to find nothing to do: one wasted wake-up (often on the other CPU) per frame
//! sent, in the service and in sysmgr alike. Here the socket is registered for reading only,
//! and writes go straight to the socket; only when it is full does [`WriteHalf`] register
//! (a duplicate of) it for writability, until a write is taken whole.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Split a connected stream into its halves (registered with the current tokio runtime).
pub fn split(stream: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    stream.set_nonblocking(true)?;
    let sock = Arc::new(stream);
    // SAFETY: the `Arc` keeps the socket, and so its descriptor, open for as long as the
    // `AsyncFd` holds it, and `as_raw_fd` always returns that descriptor.
    let rd = unsafe { AsyncFd::register_with_interest(sock.clone(), Interest::READABLE)? };
    Ok((ReadHalf { fd: rd }, WriteHalf { sock, wait: None }))
}

/// From a tokio stream (accepted or connected by tokio): the same socket, re-registered.
pub fn split_tokio(stream: tokio::net::UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    split(stream.into_std()?)
}

pub struct ReadHalf {
    fd: AsyncFd<Arc<UnixStream>>,
}

impl ReadHalf {
    /// Read what is there into `buf`'s spare capacity (64 KiB more first if it has none); 0
    /// at the end of the stream.
    pub async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            buf.reserve(64 * 1024);
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let spare = buf.capacity() - buf.len();
            match guard.try_io(|s| recv_into_spare(s.get_ref().as_fd(), buf)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket: wait for the next edge rather than
                    // asking the socket again (what tokio does for its own streams).
                    if n > 0 && n < spare {
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// `recv(2)` into the spare capacity of `buf`.
fn recv_into_spare(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes into memory `buf` owns, and
    // `set_len` below covers exactly the bytes it reports written.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: see above: these `n` bytes were just written by the kernel.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// The write side: non-blocking writes; writability is waited for only while the socket is
/// full. Dropping it shuts the write direction down (the peer sees the end of the stream),
/// as tokio's write half does.
pub struct WriteHalf {
    sock: Arc<UnixStream>,
    /// A duplicate of the socket registered for writability, while a write waits for room.
    wait: Option<AsyncFd<OwnedFd>>,
}

impl WriteHalf {
    fn send(&self, data: &[u8]) -> io::Result<usize> {
        let flags =
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
        nix::sys::socket::send(self.sock.as_raw_fd(), data, flags).map_err(io::Error::from)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.send(data) {
                Ok(n) => {
                    // The socket took all of it, so it has room again: stop listening for
                    // room. After a short write it is full again, and the caller is about to
                    // send the rest: keep listening.
                    if n == data.len() {
                        self.wait = None;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let w = match self.wait.take() {
                        Some(w) => w,
                        None => {
                            let dup = self.sock.as_fd().try_clone_to_owned()?;
                            // SAFETY: the `AsyncFd` owns `dup`, which stays open until it drops.
                            unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE)? }
                        }
                    };
                    let mut guard = ready!(self.wait.insert(w).poll_write_ready(cx))?;
                    // Registered after the socket filled: the first report may be stale, and
                    // the next send tells.
                    guard.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.sock.shutdown(Shutdown::Write))
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::AsyncWriteExt;

    #[tokio::test(flavor = "current_thread")]
    async fn reads_and_writes_through_a_full_socket_and_ends_the_stream_on_drop() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        let (mut rd, mut wr) = split(a).expect("split");
        // Far more than the socket buffer: the writer must wait for room, more than once.
        let big: Vec<u8> = (0..8u32 << 20).map(|i| i as u8).collect();
        let expect = big.clone();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; expect.len()];
            b.read_exact(&mut got).expect("read");
            assert!(got == expect, "bytes differ");
            b.write_all(b"done").expect("write");
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).expect("end of stream");
            rest.len()
        });
        wr.write_all(&big).await.expect("write_all");
        let mut buf = Vec::with_capacity(16);
        while buf.len() < 4 {
            assert!(rd.read_buf(&mut buf).await.expect("read") > 0);
        }
        assert_eq!(&buf[..4], b"done");
        drop(wr);
        assert_eq!(reader.join().expect("reader"), 0, "EOF after drop");
    }
}
