//! RFC 5881 transport: UDP 3784 in, one socket per session out (fixed source port in
//! 49152–65535, TTL 255), and the TTL of every received packet.
//!
//! Sockets are plain `std` sockets made non-blocking, so they can be handed to sysmgr's fd store
//! and come back after a stateful restart exactly as they were (same port, same options).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::BfdError;

/// Destination port of single-hop BFD Control packets.
pub const PORT: u16 = 3784;
/// RFC 5881 §4: source ports come from this range.
pub const SRC_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// RFC 5881 §5: sent with, and only accepted with, TTL 255 (GTSM).
pub const TTL: i32 = 255;
/// DSCP CS6 (network control), as routers send BFD.
const TOS_CS6: i32 = 0xc0;

fn setsockopt_int(
    fd: RawFd,
    level: i32,
    name: i32,
    v: i32,
    what: &'static str,
) -> Result<(), BfdError> {
    // SAFETY: `v` lives across the call and its size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(BfdError::Socket {
            step: what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn bind_to_device(fd: RawFd, ifname: &str) -> Result<(), BfdError> {
    // SAFETY: the name pointer and length describe a live byte slice.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(BfdError::Socket {
            step: "SO_BINDTODEVICE",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The interface index of `name` (0 if there is none).
pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or(0)
}

/// The receive socket: UDP 0.0.0.0:3784 with the TTL and the ingress interface of every packet.
pub fn rx_socket() -> Result<UdpSocket, BfdError> {
    let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).map_err(|source| {
        BfdError::Socket {
            step: "bind UDP 3784",
            source,
        }
    })?;
    let fd = s.as_raw_fd();
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1, "IP_RECVTTL")?;
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1, "IP_PKTINFO")?;
    s.set_nonblocking(true).map_err(|source| BfdError::Socket {
        step: "O_NONBLOCK",
        source,
    })?;
    Ok(s)
}

/// A session's transmit socket: bound to `local` (or any) on a free port of [`SRC_PORTS`],
/// to `ifname` when given, TTL 255, CS6.
pub fn tx_socket(
    local: Option<Ipv4Addr>,
    ifname: Option<&str>,
    seed: u64,
) -> Result<UdpSocket, BfdError> {
    let span = u64::from(SRC_PORTS.end() - SRC_PORTS.start()) + 1;
    let mut last = None;
    for i in 0..64u64 {
        let port = SRC_PORTS.start() + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
        let addr = SocketAddrV4::new(local.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
        match UdpSocket::bind(addr) {
            Ok(s) => {
                let fd = s.as_raw_fd();
                setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TTL, TTL, "IP_TTL")?;
                setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TOS, TOS_CS6, "IP_TOS")?;
                if let Some(ifn) = ifname {
                    bind_to_device(fd, ifn)?;
                }
                s.set_nonblocking(true).map_err(|source| BfdError::Socket {
                    step: "O_NONBLOCK",
                    source,
                })?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(source) => {
                return Err(BfdError::Socket {
                    step: "bind source port",
                    source,
                });
            }
        }
    }
    Err(BfdError::Socket {
        step: "bind source port",
        source: last.unwrap_or_else(|| io::Error::other("no free port")),
    })
}

/// A socket handed back by the fd store.
pub fn udp_from_fd(fd: OwnedFd) -> Result<UdpSocket, BfdError> {
    let s = UdpSocket::from(fd);
    s.set_nonblocking(true).map_err(|source| BfdError::Socket {
        step: "O_NONBLOCK",
        source,
    })?;
    Ok(s)
}

/// One received datagram with what the kernel told about it.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    /// IP TTL of the packet (`None` if the kernel did not say, which is then dropped).
    pub ttl: Option<u8>,
    /// Ingress interface index.
    pub ifindex: u32,
}

/// `recvmsg` with `IP_TTL` and `IP_PKTINFO` control messages; `WouldBlock` when empty.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut name: libc::sockaddr_in = unsafe_zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for IP_TTL (int) and IP_PKTINFO (in_pktinfo), 8-byte aligned.
    let mut cbuf = [0u64; 16];
    let mut msg: libc::msghdr = unsafe_zeroed();
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: every pointer in `msg` refers to a live local buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ttl = None;
    let mut ifindex = 0;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` bytes the kernel filled in, and
    // each payload is read unaligned with the size its type declares.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_TTL {
                let v: i32 = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ttl = u8::try_from(v).ok();
            } else if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
                let v: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ifindex = v.ipi_ifindex as u32;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
        u16::from_be(name.sin_port),
    );
    Ok(Received {
        len: n as usize,
        from,
        ttl,
        ifindex,
    })
}

fn unsafe_zeroed<T: Copy>() -> T {
    // SAFETY: only used for plain C structs (sockaddr_in, msghdr) for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receive path reports the TTL each packet arrived with (on loopback).
    #[test]
    fn recv_reports_ttl_and_interface() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        setsockopt_int(rx.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL, 1, "t").expect("ttl");
        setsockopt_int(rx.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1, "p").expect("pi");
        let to = rx.local_addr().expect("addr");
        for ttl in [255, 254, 1] {
            let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            setsockopt_int(tx.as_raw_fd(), libc::IPPROTO_IP, libc::IP_TTL, ttl, "t").expect("ttl");
            tx.send_to(b"hello", to).expect("send");
            let mut buf = [0u8; 64];
            rx.set_nonblocking(false).expect("blocking");
            let r = recv(rx.as_raw_fd(), &mut buf).or_else(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                recv(rx.as_raw_fd(), &mut buf)
            });
            let r = r.expect("recv");
            assert_eq!(&buf[..r.len], b"hello");
            assert_eq!(r.ttl, Some(ttl as u8));
            assert_eq!(r.ifindex, ifindex("lo"));
            assert_eq!(r.from.port(), tx.local_addr().expect("a").port());
        }
    }

    #[test]
    fn tx_sockets_use_rfc_5881_source_ports_and_ttl_255() {
        let s = tx_socket(Some(Ipv4Addr::LOCALHOST), None, 12345).expect("tx");
        let port = s.local_addr().expect("addr").port();
        assert!(SRC_PORTS.contains(&port), "{port}");
        let mut v: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: v and len are valid for the kernel to write.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_TTL,
                (&mut v as *mut i32).cast(),
                &mut len,
            )
        };
        assert_eq!((rc, v), (0, 255));
    }
}
