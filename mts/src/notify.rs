//! The client side of the sd_notify protocol, as an unmodified systemd `Type=notify` daemon
//! speaks it: `READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`, and `FDSTORE=1` + `FDNAME=…`
//! with the descriptors attached as SCM_RIGHTS. Plus the `LISTEN_FDS` hand-back.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socket,
};

use crate::MtsError;

/// First descriptor number of socket activation / fd-store hand-back (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

fn addr() -> Option<UnixAddr> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = path.as_encoded_bytes();
    if let Some(rest) = bytes.strip_prefix(b"@") {
        UnixAddr::new_abstract(rest).ok()
    } else {
        UnixAddr::new(std::path::Path::new(&path)).ok()
    }
}

/// Send one notification; `Ok(false)` when not running under a notify-capable supervisor.
pub fn notify(state: &str) -> Result<bool, MtsError> {
    notify_with_fds(state, &[])
}

/// Send one notification with descriptors attached (for `FDSTORE=1`).
pub fn notify_with_fds(state: &str, fds: &[BorrowedFd<'_>]) -> Result<bool, MtsError> {
    let Some(addr) = addr() else {
        return Ok(false);
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|source| MtsError::Notify {
        step: "socket",
        source,
    })?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(state.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg(
        sock.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::empty(),
        Some(&addr),
    )
    .map_err(|source| MtsError::Notify {
        step: "sendmsg",
        source,
    })?;
    Ok(true)
}

/// The heartbeat interval the supervisor expects (`WATCHDOG_USEC`), if any and meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Take the descriptors handed to this process (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`).
///
/// Returns (name, fd) pairs; names default to `unknown` as systemd does. Only valid once per
/// process: the descriptors become owned by the caller and marked close-on-exec.
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    let names_env = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names_env.split(':');
    (0..n)
        .map(|i| {
            let fd = LISTEN_FDS_START + i;
            // SAFETY: the supervisor placed these descriptors at 3..3+n for us and nothing else
            // in this process owns them; we take ownership exactly once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            let name = names.next().filter(|s| !s.is_empty()).unwrap_or("unknown");
            (name.to_string(), owned)
        })
        .collect()
}
