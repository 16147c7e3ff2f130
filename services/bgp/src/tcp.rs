//! What the kernel knows about a TCP stream, for a session that outlives its process
//! (DESIGN.md §4.2–4.3): where the receive side was consumed up to, how much of the send side
//! was written, reading without consuming (`MSG_PEEK` with `SO_PEEK_OFF`), and consuming
//! without copying (`MSG_TRUNC`).
//!
//! The kernel's counters are not quite stream offsets: `tcpi_bytes_acked` counts the SYN on
//! the side that opened the connection. So a connection's counters are read once when it is
//! new ([`positions`] before anything is written or consumed) and kept as its base.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// `SO_PEEK_OFF` (asm-generic/socket.h); TCP honours it since Linux 6.10.
const SO_PEEK_OFF: libc::c_int = 42;
/// `SIOCINQ` / `SIOCOUTQ` (linux/sockios.h: FIONREAD / TIOCOUTQ).
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid pointer and length to a live tcp_info.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    })?;
    Ok(ti)
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ write one int.
    check(unsafe { libc::ioctl(fd, req as _, &mut n) })?;
    Ok(n as u64)
}

/// Where a stream stands in the kernel, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// Bytes the application has consumed (received in order minus still queued).
    pub consumed: u64,
    /// Bytes the application has written (acknowledged plus still queued to send).
    pub written: u64,
    /// `tcpi_state` (1 = ESTABLISHED, 8 = CLOSE_WAIT, ...).
    pub state: u8,
}

/// Read both positions. Each is a difference of two counters read by separate calls; data or
/// acknowledgements arriving in between would skew it, so a reading counts only when the
/// counter read before and after agree (nothing else consumes or writes: the caller owns the
/// socket).
pub fn positions(s: &impl AsRawFd) -> io::Result<Positions> {
    let fd = s.as_raw_fd();
    for _ in 0..1000 {
        let a = info(fd)?;
        let inq = ioctl_int(fd, SIOCINQ)?;
        let outq = ioctl_int(fd, SIOCOUTQ)?;
        let b = info(fd)?;
        if a.tcpi_bytes_received == b.tcpi_bytes_received
            && a.tcpi_bytes_acked == b.tcpi_bytes_acked
        {
            return Ok(Positions {
                consumed: b.tcpi_bytes_received.saturating_sub(inq),
                written: b.tcpi_bytes_acked + outq,
                state: b.tcpi_state,
            });
        }
    }
    Err(io::Error::other("TCP counters never settled"))
}

/// Set where the next `MSG_PEEK` starts, relative to the first unconsumed byte. Consuming moves
/// it back by as much, so peeking goes on where it stopped.
pub fn set_peek_off(s: &impl AsRawFd, off: i32) -> io::Result<()> {
    // SAFETY: one int option.
    check(unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEEK_OFF,
            (&off as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Drop `n` queued bytes without copying them; they must all be queued (the caller peeked
/// them). Returns how many went (less only if the connection broke).
pub fn consume(s: &impl AsRawFd, n: u64) -> io::Result<u64> {
    let fd = s.as_raw_fd();
    let mut done = 0u64;
    while done < n {
        let want = (n - done).min(1 << 30) as usize;
        // SAFETY: MSG_TRUNC on TCP discards without touching the (null) buffer (tcp(7)).
        let r = unsafe {
            libc::recv(
                fd,
                std::ptr::null_mut(),
                want,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        done += r as u64;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn positions_peek_and_consume_on_a_loopback_stream() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut b, _) = l.accept().expect("accept");
        let base_a = positions(&a).expect("positions");
        let base_b = positions(&b).expect("positions");
        assert_eq!(
            (base_a.consumed, base_b.consumed, base_b.written),
            (0, 0, 0)
        );
        assert!(base_a.written <= 1, "the SYN, at most: {base_a:?}");
        a.write_all(b"hello world").expect("write");
        b.write_all(b"xyz").expect("write");
        let mut got = [0u8; 3];
        a.read_exact(&mut got).expect("read");
        // Everything a wrote is acknowledged soon; b has consumed nothing yet.
        let mut tries = 0;
        let p = loop {
            let p = positions(&b).expect("positions");
            let q = positions(&a).expect("positions");
            assert_eq!(q.consumed, 3);
            if q.written - base_a.written == 11 && p.written == 3 {
                break p;
            }
            tries += 1;
            assert!(tries < 1000, "{p:?} {q:?}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(p.consumed, 0);
        assert_eq!(p.state, 1);
        set_peek_off(&b, 0).expect("SO_PEEK_OFF");
        let mut buf = [0u8; 5];
        assert_eq!(b.peek(&mut buf).expect("peek"), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(b.peek(&mut buf).expect("peek"), 5);
        assert_eq!(&buf, b" worl", "the peek offset moved on");
        assert_eq!(consume(&b, 6).expect("consume"), 6);
        assert_eq!(positions(&b).expect("positions").consumed, 6);
        assert_eq!(b.peek(&mut buf[..1]).expect("peek"), 1);
        assert_eq!(&buf[..1], b"d", "consuming moved the peek offset back");
        let mut rest = String::new();
        drop(a);
        b.read_to_string(&mut rest).expect("read");
        assert_eq!(rest, "world");
    }
}
