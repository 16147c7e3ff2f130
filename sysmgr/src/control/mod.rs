//! The control path: MTS frames to the built-in SAP `sysmgr` (served by [`crate::broker::conn`]).
//!
//! The kernel says who is connecting (`SO_PEERCRED`); operators are uid 0 and the admin group.

pub mod proto;

use std::path::Path;

use mts::frame::{DEFAULT_MAX_PAYLOAD, Frame};
use mts::{MtsError, codec, sap};
use tokio::net::UnixListener;

use crate::error::SysmgrError;

/// The peer of a connection, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

/// Operators are uid 0 and members of the admin group.
pub fn check_operator(peer: &Peer, admin_group: Option<&str>) -> Result<(), String> {
    if peer.uid == 0 {
        return Ok(());
    }
    if let Some(g) = admin_group
        && let Ok(Some(group)) = nix::unistd::Group::from_name(g)
    {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
            .ok()
            .flatten();
        let member = peer.gid == group.gid.as_raw()
            || user
                .as_ref()
                .is_some_and(|u| u.gid == group.gid || group.mem.contains(&u.name));
        if member {
            return Ok(());
        }
    }
    Err(format!(
        "permission denied: uid {} is not a sysmgr operator (operators are uid 0{})",
        peer.uid,
        admin_group
            .map(|g| format!(" and members of group {g:?}"))
            .unwrap_or_default()
    ))
}

/// Bind the control socket, refusing to steal it from a live sysmgr.
pub fn bind(path: &Path) -> Result<UnixListener, SysmgrError> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SysmgrError::AlreadyRunning(path.to_path_buf()));
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|source| SysmgrError::Io {
        step: "bind",
        path: path.to_path_buf(),
        source,
    })?;
    // Anyone may connect; who may do what is decided from SO_PEERCRED.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    Ok(l)
}

/// The CLI side: one blocking request/response.
pub fn request(socket: &Path, req: &proto::Request) -> Result<proto::Response, MtsError> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let f = Frame::request(
        sap::CLI,
        sap::SYSMGR,
        proto::OP_CONTROL,
        1,
        codec::encode(req)?,
    );
    mts::io::write_frame(&mut s, &f)?;
    let resp = mts::io::read_frame(&mut s, DEFAULT_MAX_PAYLOAD)?;
    codec::decode(&resp.into_result()?)
}

/// The CLI side of a service-specific show: resolve the service's SAP by name, send it one
/// request and wait (up to `deadline`) for its answer. A service that is restarting answers when
/// it is back, since MTS queues the request for it.
pub fn request_service(
    socket: &Path,
    sap_name: &str,
    opcode: u32,
    payload: Vec<u8>,
    deadline: std::time::Duration,
) -> Result<Vec<u8>, MtsError> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(deadline))?;
    let lookup = Frame::request(
        sap::CLI,
        sap::BROKER,
        mts::proto::OP_LOOKUP,
        1,
        codec::encode(&sap_name.to_string())?,
    );
    mts::io::write_frame(&mut s, &lookup)?;
    let dst: u32 = codec::decode(&read_reply(&mut s, 1)?.into_result()?)?;
    let mut req = Frame::request(sap::CLI, dst, opcode, 2, payload);
    req.header.flags = mts::Flags(mts::Flags::REQUEST);
    mts::io::write_frame(&mut s, &req)?;
    match read_reply(&mut s, 2) {
        Err(MtsError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(MtsError::Remote(format!(
                "service {sap_name} did not answer within {deadline:?}"
            )))
        }
        r => r?.into_result(),
    }
}

/// The response to request `id`, skipping anything else that arrives.
fn read_reply(s: &mut std::os::unix::net::UnixStream, id: u64) -> Result<Frame, MtsError> {
    loop {
        let f = mts::io::read_frame(s, DEFAULT_MAX_PAYLOAD)?;
        if f.header.reply_to == id {
            return Ok(f);
        }
    }
}
