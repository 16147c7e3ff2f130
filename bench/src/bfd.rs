//! BFD restart on the wire: SIGKILL of `bfd` → the first Control packet of the new instance, as
//! the peer's interface sees it (AF_PACKET with kernel receive timestamps), against the
//! Detection Time it must beat and the steady-state packet interval.
//!
//! Run inside the peer's network namespace by `bench/run-bfd-restart.sh`:
//! `sysmgr-bench bfd-restart --iface IF --from OUR_ADDR [--kills N] [--detect-ms MS]`.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::restart::pct;

fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The pid of the running `bfd` (by /proc/PID/comm), other than `not`.
fn bfd_pid(not: Option<i32>) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if Some(pid) == not {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if comm.trim() == "bfd" && !zombie {
            return Some(pid);
        }
    }
    None
}

/// Capture BFD Control packets (UDP to 3784) from `from` on `iface`; send their kernel receive
/// time (CLOCK_REALTIME, ns) down `tx`.
fn capture(iface: &str, from: Ipv4Addr, tx: mpsc::Sender<i128>) -> Result<()> {
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let ifindex = nix::net::if_::if_nametoindex(iface).with_context(|| format!("no {iface}"))?;
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value that we then fill in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: the address pointer and size describe `sll`.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        bail!("bind {iface}: {}", std::io::Error::last_os_error());
    }
    let one: i32 = 1;
    // SAFETY: `one` outlives the call; its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const i32).cast(),
            4,
        );
    }
    let mut buf = [0u8; 2048];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 16];
        // SAFETY: msghdr is plain data; every pointer set below refers to a live local buffer.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: see above.
        let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
        if n < 0 {
            bail!("recvmsg: {}", std::io::Error::last_os_error());
        }
        let mut ts = None;
        // SAFETY: the walk stays within the control bytes the kernel filled in.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    ts = Some(i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let p = &buf[..n as usize];
        if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        if src != from || p.len() < ihl + 8 {
            continue;
        }
        let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
        if dport == 3784
            && let Some(t) = ts
            && tx.send(t).is_err()
        {
            return Ok(());
        }
    }
}

fn stats(name: &str, v: &mut [f64], detect: f64) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = pct(v, 0.50);
    let p99 = pct(v, 0.99);
    format!(
        "| {name} | {} | {med:.2} | {p99:.2} | {:.2} | {:.2} | {:.3} |",
        v.len(),
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
        p99 / detect,
    )
}

pub fn main(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut iface = String::new();
    let mut from = Ipv4Addr::UNSPECIFIED;
    let mut kills = 100usize;
    let mut detect_ms = 150.0f64;
    while let Some(a) = args.next() {
        let v = args.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--iface" => iface = v,
            "--from" => from = v.parse()?,
            "--kills" => kills = v.parse()?,
            "--detect-ms" => detect_ms = v.parse()?,
            _ => bail!("unknown argument {a}"),
        }
    }
    let (tx, rx) = mpsc::channel();
    let cap_if = iface.clone();
    std::thread::spawn(move || {
        if let Err(e) = capture(&cap_if, from, tx) {
            eprintln!("capture: {e:#}");
        }
    });
    // Steady state first: the packets are flowing.
    let mut all: Vec<i128> = Vec::new();
    for _ in 0..10 {
        all.push(
            rx.recv_timeout(Duration::from_secs(5))
                .context("no BFD packets from the session")?,
        );
    }
    let mut to_first = Vec::new();
    let mut silence = Vec::new();
    // Anchor: gaps between consecutive packets while nothing is killed (jittered 75–100 %).
    let mut steady = Vec::new();
    let mut prev = all.last().copied();
    let mut pid = bfd_pid(None).context("no bfd process")?;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for k in 0..kills {
        // The new instance runs; kill at a random point of the transmit cycle.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let settle = Instant::now() + Duration::from_millis(200 + seed % 50);
        let mut take = |t: i128| {
            if let Some(p) = prev {
                steady.push((t - p) as f64 / 1e6);
            }
            prev = Some(t);
            all.push(t);
        };
        while Instant::now() < settle {
            if let Ok(t) = rx.recv_timeout(Duration::from_millis(5)) {
                take(t);
            }
        }
        while let Ok(t) = rx.try_recv() {
            take(t);
        }
        let last_before = *all.last().context("no packet")?;
        let t_kill = realtime_ns();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        // A packet received 200 µs after the kill cannot come from the killed process (and a
        // restart takes milliseconds), so the first such packet is the new instance's.
        let first = loop {
            let t = rx
                .recv_timeout(Duration::from_secs(3))
                .with_context(|| format!("kill {k}: no packet within 3 s"))?;
            all.push(t);
            if t >= t_kill + 200_000 {
                break t;
            }
        };
        prev = Some(first);
        to_first.push((first - t_kill) as f64 / 1e6);
        silence.push((first - last_before) as f64 / 1e6);
        let end = Instant::now() + Duration::from_secs(3);
        pid = loop {
            if let Some(p) = bfd_pid(Some(pid)) {
                break p;
            }
            if Instant::now() > end {
                bail!("kill {k}: no new bfd process");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
    }
    println!("\nBFD restart on the wire, {kills} SIGKILLs of bfd, session at 50 ms x 3:");
    println!(
        "| measure | n | median ms | p99 ms | min ms | max ms | p99 / detection time ({detect_ms} ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "{}",
        stats(
            "SIGKILL → first packet of the new instance",
            &mut to_first,
            detect_ms
        )
    );
    println!(
        "{}",
        stats(
            "peer's silence: last packet before the kill → first after",
            &mut silence,
            detect_ms
        )
    );
    println!(
        "{}",
        stats(
            "anchor: steady-state gap between packets (no kill)",
            &mut steady,
            detect_ms
        )
    );
    Ok(())
}
