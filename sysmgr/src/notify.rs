//! The sd_notify server: one datagram socket per service, bound before the service's first fork.
//!
//! A socket per service means a message is attributed to its service by the socket it arrives
//! on, even when the sender is a short-lived helper (`systemd-notify` run from a shell) or an
//! instance that crashed right after sending `FDSTORE=1`. `SO_PASSCRED` still gives the sender's
//! pid for the logs.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    setsockopt, socket, sockopt,
};

/// Errors of the notify sockets.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify socket {path}: {step}: {source}")]
    Socket {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// One received notification.
#[derive(Debug)]
pub struct NotifyMsg {
    /// Sender pid from SCM_CREDENTIALS.
    pub pid: Option<i32>,
    /// `KEY=VALUE` assignments in order.
    pub fields: Vec<(String, String)>,
    /// Descriptors that came with it (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors (too many, or out of buffer space).
    pub truncated: bool,
}

impl NotifyMsg {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Bind a non-blocking datagram socket at `path` (replacing a stale file).
pub fn bind_socket(path: &Path) -> Result<OwnedFd, NotifyError> {
    let err = |step, source| NotifyError::Socket {
        path: path.to_path_buf(),
        step,
        source,
    };
    let _ = std::fs::remove_file(path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| err("socket", e))?;
    let addr = UnixAddr::new(path).map_err(|e| err("address", e))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| err("bind", e))?;
    setsockopt(&fd, sockopt::PassCred, &true).map_err(|e| err("SO_PASSCRED", e))?;
    // Services may run as other users; the socket must accept their datagrams.
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    // Room for a burst of FDSTORE messages.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    Ok(fd)
}

/// Largest notification text accepted (systemd uses PIPE_BUF-ish limits too).
const MAX_TEXT: usize = 8192;
/// SCM_MAX_FD.
const MAX_FDS: usize = 253;

/// Receive one datagram without blocking; `Ok(None)` when the queue is empty.
pub fn recv(fd: &OwnedFd) -> nix::Result<Option<NotifyMsg>> {
    let mut buf = vec![0u8; MAX_TEXT];
    let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(nix::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = NotifyMsg {
        pid: None,
        fields: Vec::new(),
        fds: Vec::new(),
        truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
    };
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::ScmCredentials(cred) => out.pid = Some(cred.pid()),
            ControlMessageOwned::ScmRights(fds) => {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                out.fds
                    .extend(fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
            _ => {}
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]);
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once('=') {
            out.fields.push((k.to_string(), v.to_string()));
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn parses_fields_credentials_and_fds() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("n.sock");
        let fd = bind_socket(&path).expect("bind");
        assert!(recv(&fd).expect("recv").is_none());
        // SAFETY: test only; points NOTIFY_SOCKET at our socket for the client helper.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        use std::os::fd::AsFd;
        assert!(
            mts::notify::notify_with_fds("FDSTORE=1\nFDNAME=sess\n", &[r.as_fd()]).expect("send")
        );
        let m = recv(&fd).expect("recv").expect("a message");
        assert_eq!(m.get("FDSTORE"), Some("1"));
        assert_eq!(m.get("FDNAME"), Some("sess"));
        assert_eq!(m.pid, Some(std::process::id() as i32));
        assert_eq!(m.fds.len(), 1);
        let s = UnixDatagram::unbound().expect("sock");
        s.send_to(b"READY=1\nSTATUS=up and running", &path)
            .expect("send");
        let m = recv(&fd).expect("recv").expect("msg");
        assert_eq!(m.get("READY"), Some("1"));
        assert_eq!(m.get("STATUS"), Some("up and running"));
    }
}
