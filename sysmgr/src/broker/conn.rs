//! One reader and one writer task per connection.
//!
//! ```text
//!   socket ──read (64 KiB batches)──▶ reader: parse frames ─┬─▶ Broker::route (sync, one lock)
//!                                                           └─▶ SAP sysmgr: supervisor channel
//!   socket ◀──write_all(batch)── writer ◀── Outbox ◀── frames routed to this connection
//! ```
//! The reader that routed a batch writes the frames it queued itself once the batch is done
//! (when the writer task is idle and the socket takes them), so a frame passing through the
//! broker costs no wake-up of another task; the writer task takes over what a full socket
//! does not take, and what other threads (PSS, confirmations) queue.
//! A frame with a bad header (magic, version, length) closes this connection with a logged
//! reason; the broker and every other connection carry on.

use std::sync::{Arc, Mutex};

use mts::frame::{DEFAULT_MAX_PAYLOAD, Flags, Frame, HEADER_LEN, Header};
use mts::{codec, sap};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::{Broker, Identity, Outbox};
use crate::control::{self, Peer, proto};
use crate::supervisor::ControlMsg;

/// Control requests are small; anything bigger is not a control request.
const MAX_CONTROL: u32 = 1 << 20;

/// Who is this peer? A service instance (or its descendant), an operator, or nobody.
pub fn resolve(b: &Broker, peer: Peer) -> Identity {
    if let Some(pid) = peer.pid.filter(|p| *p > 0) {
        for (svc, ipid) in &b.instances {
            if crate::procfs::descends_from(pid, *ipid) {
                return Identity::Service(svc.clone());
            }
        }
    }
    match control::check_operator(&peer, b.admin_group.as_deref()) {
        Ok(()) => Identity::Operator,
        Err(e) => Identity::Refused(e),
    }
}

/// Accept connections forever, each in its own tasks.
pub async fn serve(
    listener: UnixListener,
    broker: Arc<Mutex<Broker>>,
    control_tx: mpsc::Sender<ControlMsg>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (b, tx) = (broker.clone(), control_tx.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, b, tx).await {
                        tracing::warn!("MTS connection closed: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::error!("accept on MTS socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn lock(b: &Mutex<Broker>) -> std::sync::MutexGuard<'_, Broker> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connection(
    stream: UnixStream,
    broker: Arc<Mutex<Broker>>,
    control_tx: mpsc::Sender<ControlMsg>,
) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let peer = Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let outbox = Arc::new(Outbox::new(&stream));
    let (mut rd, mut wr) = mts::sock::split_tokio(stream).map_err(|e| format!("socket: {e}"))?;
    let (identity, id) = {
        let mut b = lock(&broker);
        let identity = resolve(&b, peer);
        let (id, _eph) = b.connect(identity.clone(), outbox.clone());
        (identity, id)
    };
    tracing::debug!(conn = id, ?identity, pid = ?peer.pid, "MTS connection");
    let wbox = outbox.clone();
    let wbroker = broker.clone();
    let writer = tokio::spawn(async move {
        let resume = || {
            if wbox.take_throttled() {
                lock(&wbroker).resume(id);
            }
        };
        wbox.drain(&mut wr, resume).await;
    });

    let result = read_loop(&mut rd, &broker, &control_tx, id, &identity, &outbox).await;
    lock(&broker).disconnect(id);
    outbox.close();
    let _ = writer.await;
    result
}

/// The broker, locked for one batch of frames read together: one lock for the whole batch,
/// and the frames it routes are written by this task once the batch is done
/// ([`Broker::begin_batch`]), also when the batch ends early.
struct Batch<'a> {
    broker: &'a Mutex<Broker>,
    guard: Option<std::sync::MutexGuard<'a, Broker>>,
    /// The connections to write to (kept by the caller, so its allocation is reused).
    touched: &'a mut Vec<(super::ConnId, Arc<Outbox>)>,
}

impl<'a> Batch<'a> {
    fn new(broker: &'a Mutex<Broker>, touched: &'a mut Vec<(super::ConnId, Arc<Outbox>)>) -> Self {
        Batch {
            broker,
            guard: None,
            touched,
        }
    }

    fn broker(&mut self) -> &mut Broker {
        let (broker, touched) = (self.broker, &mut *self.touched);
        self.guard.get_or_insert_with(|| {
            let mut b = lock(broker);
            b.begin_batch(std::mem::take(touched));
            b
        })
    }

    /// Unlock the broker and write what the batch queued.
    fn finish(&mut self) {
        if let Some(mut g) = self.guard.take() {
            *self.touched = g.end_batch();
        }
        for (conn, out) in self.touched.drain(..) {
            // Delivery stopped at the high-water mark resumes once the frames are out (as the
            // writer task does after its writes).
            if out.flush_now() && out.take_throttled() {
                lock(self.broker).resume(conn);
            }
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn read_loop(
    rd: &mut mts::sock::ReadHalf,
    broker: &Arc<Mutex<Broker>>,
    control_tx: &mpsc::Sender<ControlMsg>,
    id: super::ConnId,
    identity: &Identity,
    outbox: &Arc<Outbox>,
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let backlog = lock(broker).store.as_ref().map(|s| s.backlog());
    let mut touched = Vec::new();
    loop {
        let mut at = 0;
        // The connection was handed to a PSS request thread, which reads it from now on.
        let mut handed = None;
        // Whether this batch had persistent messages: then the connection is not read again
        // while the store's writer is far behind (flow control instead of a growing backlog).
        let mut persistent = false;
        {
            let mut batch = Batch::new(broker, &mut touched);
            while let Some((h, body)) = mts::frame::next_frame(&buf[at..], DEFAULT_MAX_PAYLOAD)
                .map_err(|e| format!("closing connection {id}: {e}"))?
            {
                let payload = body.to_vec();
                at += HEADER_LEN + payload.len();
                if let Identity::Refused(reason) = identity {
                    outbox.push(&Frame::error_to(&h, 0, reason).header, reason.as_bytes());
                    return Ok(());
                }
                if h.dst_sap == sap::PSS && !h.flags.has(Flags::RESPONSE) {
                    let handle = batch.broker().pss.clone();
                    // In order with what this batch routed before it.
                    batch.finish();
                    match handle {
                        Some(p) if h.opcode == pss::proto::OP_PSS_DIRECT => {
                            handed = p.direct(&h, identity, outbox, buf[at..].to_vec());
                            if handed.is_some() {
                                break;
                            }
                        }
                        Some(p) => p.request(&h, &payload, identity, outbox),
                        None => outbox.push(
                            &Frame::error_to(&h, 0, "PSS is not open").header,
                            b"PSS is not open",
                        ),
                    }
                    continue;
                }
                if h.dst_sap == sap::SYSMGR && !h.flags.has(Flags::RESPONSE) {
                    batch.finish();
                    control_request(h, payload, identity, control_tx, outbox)?;
                    continue;
                }
                persistent |= h.flags.has(Flags::PERSISTENT);
                batch.broker().route(id, h, payload);
            }
        }
        if let Some(done) = handed {
            return done
                .await
                .unwrap_or_else(|_| Err("its PSS request thread is gone".into()));
        }
        buf.drain(..at);
        if persistent && let Some(b) = backlog.as_ref().filter(|b| b.behind()) {
            b.caught_up().await;
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let n = rd
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            if !buf.is_empty() {
                return Err(format!(
                    "closing connection {id}: stream ended inside a frame ({} bytes)",
                    buf.len()
                ));
            }
            return Ok(());
        }
    }
}

/// A request to SAP `sysmgr`: hand it to the supervisor and answer when it replies.
fn control_request(
    h: Header,
    payload: Vec<u8>,
    identity: &Identity,
    control_tx: &mpsc::Sender<ControlMsg>,
    outbox: &Arc<Outbox>,
) -> Result<(), String> {
    if h.opcode != proto::OP_CONTROL || h.len > MAX_CONTROL {
        let e = Frame::error_to(&h, 0, &format!("SAP sysmgr has no opcode {}", h.opcode));
        outbox.push(&e.header, &e.payload);
        return Ok(());
    }
    let req: proto::Request = match codec::decode(&payload) {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("malformed control request: {e}");
            outbox.push(&Frame::error_to(&h, 0, &reason).header, reason.as_bytes());
            return Err(reason);
        }
    };
    let (rtx, rrx) = oneshot::channel();
    let msg = ControlMsg {
        identity: identity.clone(),
        req,
        reply: rtx,
    };
    let (tx, out) = (control_tx.clone(), outbox.clone());
    tokio::spawn(async move {
        let reply = if tx.send(msg).await.is_err() {
            Frame::error_to(&h, 0, "supervisor is shutting down")
        } else {
            match rrx.await {
                Ok(Ok(resp)) => match codec::encode(&resp) {
                    Ok(b) => Frame::response_to(&h, 0, b),
                    Err(e) => Frame::error_to(&h, 0, &e.to_string()),
                },
                Ok(Err(text)) => Frame::error_to(&h, 0, &text),
                Err(_) => Frame::error_to(&h, 0, "supervisor is shutting down"),
            }
        };
        out.push(&reply.header, &reply.payload);
    });
    Ok(())
}
