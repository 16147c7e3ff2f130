//! The control path: MTS frames to the built-in SAP `sysmgr` over sysmgr's Unix socket.
//!
//! The kernel says who is connecting (`SO_PEERCRED`); the supervisor decides what that peer may
//! do. A frame that does not decode closes its connection with a logged reason; the daemon and
//! every other connection carry on.

pub mod proto;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use mts::frame::{DEFAULT_MAX_PAYLOAD, Frame};
use mts::{MtsError, codec, sap};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::error::SysmgrError;
use crate::supervisor::ControlMsg;

/// Control requests are small; anything bigger is not a control request.
const MAX_REQUEST: u32 = 1 << 20;

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

/// Accept connections forever, each in its own task.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<ControlMsg>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, tx).await
                        && !matches!(e, MtsError::Closed)
                    {
                        tracing::warn!("control connection closed: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::error!("accept on control socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

async fn connection(mut stream: UnixStream, tx: mpsc::Sender<ControlMsg>) -> Result<(), MtsError> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    loop {
        let frame =
            mts::io::read_frame_async(&mut stream, MAX_REQUEST.min(DEFAULT_MAX_PAYLOAD)).await?;
        let h = frame.header;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if h.dst_sap != sap::SYSMGR || h.opcode != proto::OP_CONTROL {
            let e = Frame::error_to(
                &h,
                id,
                &format!(
                    "no handler for SAP {} opcode {} (the broker is not built yet)",
                    h.dst_sap, h.opcode
                ),
            );
            mts::io::write_frame_async(&mut stream, &e).await?;
            continue;
        }
        let req: proto::Request = match codec::decode(&frame.payload) {
            Ok(r) => r,
            Err(e) => {
                let reply = Frame::error_to(&h, id, &format!("malformed control request: {e}"));
                let _ = mts::io::write_frame_async(&mut stream, &reply).await;
                return Err(e);
            }
        };
        let (rtx, rrx) = oneshot::channel();
        if tx
            .send(ControlMsg {
                cred: peer,
                req,
                reply: rtx,
            })
            .await
            .is_err()
        {
            return Err(MtsError::Closed);
        }
        let reply = match rrx.await {
            Ok(Ok(resp)) => Frame::response_to(&h, id, codec::encode(&resp)?),
            Ok(Err(text)) => Frame::error_to(&h, id, &text),
            Err(_) => Frame::error_to(&h, id, "supervisor is shutting down"),
        };
        mts::io::write_frame_async(&mut stream, &reply).await?;
    }
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
