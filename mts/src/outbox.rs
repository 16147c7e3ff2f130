//! A connection's outgoing bytes, shared by the client and the broker.
//!
//! Frames are appended under a mutex and one writer task drains them, waking on a stored
//! permit, so frames queued while the writer is in `write_all` join its next single write:
//! a sender in a loop turns into large writes.
//!
//! The broker routes a batch of frames with [`Outbox::push_quiet`] (no wake-up) and then writes
//! them itself with [`Outbox::flush_now`], so a frame passing through it costs no wake-up of a
//! writer task; the writer task takes whatever the socket does not.
//!
//! A frame whose sender is about to wait for an answer gains nothing from waiting for company.
//! [`Outbox::push_now`] writes it straight into the socket (non-blocking, from whatever thread
//! calls it) when nothing is queued and the writer is idle, which saves waking the writer task,
//! often on another CPU. Anything the socket does not take at once is queued as usual, so the
//! order of frames is always the order of the calls.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, UnixAddr, sendmsg};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::frame::{HEADER_LEN, Header};

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// The writer task holds bytes it has not finished writing: nothing may overtake them.
    busy: bool,
}

#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    closed: AtomicBool,
    /// A duplicate of the connection's socket, for [`Outbox::push_now`] (None: always queue).
    fd: Option<OwnedFd>,
}

fn frame_header(header: &Header, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = *header;
    h.len = payload.len() as u32;
    h.encode()
}

impl Outbox {
    /// An outbox that may write straight into `socket` (through a duplicate of it, which is
    /// non-blocking like the original; without one, everything is queued).
    pub fn new(socket: &impl AsFd) -> Outbox {
        Outbox {
            fd: socket.as_fd().try_clone_to_owned().ok(),
            ..Outbox::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue one frame for the writer task.
    pub fn push(&self, header: &Header, payload: &[u8]) {
        if self.is_closed() {
            return;
        }
        let h = frame_header(header, payload);
        {
            let mut st = self.lock();
            st.buf.extend_from_slice(&h);
            st.buf.extend_from_slice(payload);
        }
        self.notify.notify_one();
    }

    /// Write one frame now if the socket is free and takes it; queue what it does not take.
    pub fn push_now(&self, header: &Header, payload: &[u8]) {
        if self.is_closed() {
            return;
        }
        let h = frame_header(header, payload);
        let mut st = self.lock();
        let mut sent = 0;
        if let Some(fd) = self.fd.as_ref().filter(|_| st.buf.is_empty() && !st.busy) {
            let total = h.len() + payload.len();
            while sent < total {
                let iov = if sent < h.len() {
                    [IoSlice::new(&h[sent..]), IoSlice::new(payload)]
                } else {
                    [IoSlice::new(&payload[sent - h.len()..]), IoSlice::new(&[])]
                };
                let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                match sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, &[], flags, None) {
                    Ok(n) => sent += n,
                    Err(Errno::EINTR) => {}
                    // Full, or broken: the writer task waits for room, or finds the error.
                    Err(_) => break,
                }
            }
            if sent == total {
                return;
            }
        }
        if sent < h.len() {
            st.buf.extend_from_slice(&h[sent..]);
            st.buf.extend_from_slice(payload);
        } else {
            st.buf.extend_from_slice(&payload[sent - h.len()..]);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Queue one frame without waking the writer task: the caller writes it with
    /// [`Outbox::flush_now`] once it has queued the rest of its batch. True when the outbox had
    /// nothing queued before, so this frame is the caller's to flush.
    pub fn push_quiet(&self, header: &Header, payload: &[u8]) -> bool {
        if self.is_closed() {
            return false;
        }
        let h = frame_header(header, payload);
        let mut st = self.lock();
        let first = st.buf.is_empty();
        st.buf.extend_from_slice(&h);
        st.buf.extend_from_slice(payload);
        first
    }

    /// Write what is queued straight into the socket from the calling thread, if the writer
    /// task is idle; the writer task is woken for whatever the socket does not take. True when
    /// nothing is left queued.
    pub fn flush_now(&self) -> bool {
        let mut st = self.lock();
        if st.buf.is_empty() {
            return true;
        }
        let mut sent = 0;
        if let Some(fd) = self.fd.as_ref().filter(|_| !st.busy) {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            while sent < st.buf.len() {
                match nix::sys::socket::send(fd.as_raw_fd(), &st.buf[sent..], flags) {
                    Ok(n) => sent += n,
                    Err(Errno::EINTR) => {}
                    // Full, or broken: the writer task waits for room, or finds the error.
                    Err(_) => break,
                }
            }
        }
        st.buf.drain(..sent);
        let done = st.buf.is_empty();
        drop(st);
        if !done {
            self.notify.notify_one();
        }
        done
    }

    /// The writer task: everything queued goes to `wr`, one write per turn, until the outbox
    /// is closed or a write fails (which closes it); `written` runs after each write.
    pub async fn drain<W: AsyncWrite + Unpin>(&self, wr: &mut W, mut written: impl FnMut()) {
        let mut spare = Vec::new();
        loop {
            let mut buf = self.take(spare);
            if buf.is_empty() {
                if self.is_closed() {
                    return;
                }
                self.notify.notified().await;
                spare = buf;
                continue;
            }
            if wr.write_all(&buf).await.is_err() {
                self.close();
                return;
            }
            buf.clear();
            spare = buf;
            written();
        }
    }

    /// For the writer (and tests): everything queued so far, or an empty buffer when nothing
    /// is (and then the socket is free for [`Outbox::push_now`] until the next call returns
    /// bytes).
    pub fn take(&self, spare: Vec<u8>) -> Vec<u8> {
        let mut st = self.lock();
        let b = std::mem::replace(&mut st.buf, spare);
        st.busy = !b.is_empty();
        b
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Another duplicate of the connection's socket (for a thread that reads it itself).
    pub fn dup_socket(&self) -> Option<OwnedFd> {
        self.fd.as_ref().and_then(|f| f.try_clone().ok())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Bytes waiting for the writer task.
    pub fn pending_bytes(&self) -> usize {
        self.lock().buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn header(id: u64) -> Header {
        crate::Frame::request(1, 2, 3, id, Vec::new()).header
    }

    fn frames(bytes: &[u8]) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        let mut r = bytes;
        while !r.is_empty() {
            let f = crate::io::read_frame(&mut r, u32::MAX).expect("frame");
            out.push((f.header.msg_id, f.payload.len()));
        }
        out
    }

    #[test]
    fn frames_keep_their_order_across_direct_writes_a_full_socket_and_the_writer() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let o = Outbox::new(&a);
        // Idle: written at once, nothing queued.
        o.push_now(&header(1), &[7; 100]);
        assert_eq!(o.pending_bytes(), 0);
        // The writer holds bytes: a direct write would overtake them, so it queues.
        o.push(&header(2), &[7; 10]);
        let held = o.take(Vec::new());
        o.push_now(&header(3), &[7; 10]);
        assert_eq!(o.pending_bytes(), HEADER_LEN + 10);
        // The writer finishes, then finds frame 3 and writes it.
        std::io::Write::write_all(&mut &a, &held).expect("write");
        let rest = o.take(Vec::new());
        std::io::Write::write_all(&mut &a, &rest).expect("write");
        assert!(o.take(Vec::new()).is_empty(), "idle again");
        // A frame larger than the socket buffer: the socket takes part, the rest is queued.
        let big = vec![9u8; 8 << 20];
        o.push_now(&header(4), &big);
        let queued = o.pending_bytes();
        assert!(queued > 0 && queued < big.len(), "partly written: {queued}");
        o.push_now(&header(5), &[1; 3]);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).expect("read");
            all
        });
        a.set_nonblocking(false).expect("blocking");
        let rest = o.take(Vec::new());
        std::io::Write::write_all(&mut &a, &rest).expect("write");
        drop(o);
        drop(a);
        let all = reader.join().expect("reader");
        assert_eq!(
            frames(&all),
            vec![(1, 100), (2, 10), (3, 10), (4, big.len()), (5, 3)]
        );
    }

    #[test]
    fn quiet_frames_wait_for_flush_now_and_never_overtake_the_writer() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        let o = Outbox::new(&a);
        let mut got = Vec::new();
        let mut read = |b: &mut UnixStream| {
            let mut chunk = vec![0u8; 1 << 16];
            while let Ok(n) = b.read(&mut chunk) {
                got.extend_from_slice(&chunk[..n]);
            }
            frames(&got)
        };
        // The first quiet frame is the caller's to flush; the second joins it.
        assert!(o.push_quiet(&header(1), &[1; 10]));
        assert!(!o.push_quiet(&header(2), &[2; 20]));
        assert!(
            read(&mut b).is_empty(),
            "nothing is written before the flush"
        );
        assert!(o.flush_now());
        assert_eq!(o.pending_bytes(), 0);
        assert_eq!(read(&mut b), vec![(1, 10), (2, 20)]);
        // The writer task holds bytes: a flush leaves the quiet frame queued behind them.
        o.push(&header(3), &[3; 30]);
        let held = o.take(Vec::new());
        assert!(o.push_quiet(&header(4), &[4; 40]));
        assert!(!o.flush_now(), "queued for the writer");
        std::io::Write::write_all(&mut &a, &held).expect("write");
        let rest = o.take(Vec::new());
        std::io::Write::write_all(&mut &a, &rest).expect("write");
        assert!(o.take(Vec::new()).is_empty());
        assert!(o.flush_now(), "nothing left");
        assert_eq!(read(&mut b), vec![(1, 10), (2, 20), (3, 30), (4, 40)]);
    }
}
