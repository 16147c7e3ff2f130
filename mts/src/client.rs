//! The service-side MTS client: async, typed, batching.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mts::MtsError> {
//! let mut c = mts::client::Client::connect_from_env().await?;
//! let me = c.bind("bgp").await?;                       // a SAP declared in bgp.toml
//! let fib = c.lookup("fib").await?;
//! c.send(me, fib, 10, &"route add", mts::Flags(mts::Flags::NEEDS_ACK)).await?;  // confirmed
//! while let Some(m) = c.recv().await {
//!     let text: String = m.decode()?;
//!     c.ack(&[m.id()]);                                // done with it: not redelivered
//! #   let _ = text;
//! }
//! # Ok(()) }
//! ```
//! Frames are appended to an outbox that one writer task drains, so `send_nowait` in a loop
//! turns into large writes; a request or an answer goes straight into the socket when nothing
//! is queued before it ([`crate::outbox`]). Responses are matched to requests by id;
//! everything else (messages, notifications, errors about `send_nowait` frames) arrives
//! through [`Client::recv`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{DEFAULT_MAX_PAYLOAD, Flags, Frame, HEADER_LEN, Header, next_frame};
use crate::outbox::Outbox;
use crate::{MtsError, codec, proto, sap};

/// A message delivered to this client.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Incoming {
    /// The broker's id of this message: what [`Client::ack`] takes.
    pub fn id(&self) -> u64 {
        self.header.msg_id
    }
    /// The previous instance received this and did not ack it.
    pub fn redelivered(&self) -> bool {
        self.header.flags.has(Flags::REDELIVERY)
    }
    pub fn needs_ack(&self) -> bool {
        self.header.flags.has(Flags::NEEDS_ACK)
    }
    /// The sender waits for [`Client::respond`].
    pub fn is_request(&self) -> bool {
        self.header.flags.has(Flags::REQUEST)
    }
    /// An error the broker reported about a frame sent with `send_nowait`.
    pub fn error(&self) -> Option<String> {
        self.header
            .flags
            .has(Flags::ERROR)
            .then(|| String::from_utf8_lossy(&self.payload).into_owned())
    }
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MtsError> {
        codec::decode(&self.payload)
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

/// A request sent by [`Client::request_start`], its answer still to come.
pub struct Pending {
    waiters: Waiters,
    id: u64,
    rx: oneshot::Receiver<Frame>,
}

impl Pending {
    /// The answer's payload, or the error the receiver sent, or a timeout.
    pub async fn raw(self, deadline: Duration) -> Result<Vec<u8>, MtsError> {
        let Pending { waiters, id, rx } = self;
        let res = tokio::time::timeout(deadline, rx).await;
        if let Ok(mut w) = waiters.lock() {
            w.remove(&id);
        }
        match res {
            Ok(Ok(f)) => f.into_result(),
            Ok(Err(_)) => Err(MtsError::Closed),
            Err(_) => Err(MtsError::Timeout(deadline)),
        }
    }

    /// The answer, decoded.
    pub async fn wait<R: DeserializeOwned>(self, deadline: Duration) -> Result<R, MtsError> {
        codec::decode(&self.raw(deadline).await?)
    }
}

/// sysmgr's socket, from `SYSMGR_SOCKET` (set by sysmgr for every service).
pub fn socket_from_env() -> Result<PathBuf, MtsError> {
    std::env::var_os("SYSMGR_SOCKET")
        .map(PathBuf::from)
        .ok_or_else(|| {
            MtsError::Remote("SYSMGR_SOCKET is not set: not running under sysmgr".into())
        })
}

/// The header of a frame this side starts (its id and length are set when it is sent).
pub(crate) fn header(src: u32, dst: u32, opcode: u32, flags: u8) -> Header {
    Header {
        flags: Flags(flags),
        len: 0,
        src_sap: src,
        dst_sap: dst,
        opcode,
        msg_id: 0,
        reply_to: 0,
    }
}

/// A connection to sysmgr's MTS broker.
pub struct Client {
    out: Arc<Outbox>,
    waiters: Waiters,
    next_id: AtomicU64,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Default deadline of the helpers that talk to the broker itself.
pub(crate) const BROKER_DEADLINE: Duration = Duration::from_secs(10);

impl Client {
    /// Connect to `SYSMGR_SOCKET` (set by sysmgr for every service).
    pub async fn connect_from_env() -> Result<Client, MtsError> {
        Client::connect(&socket_from_env()?).await
    }

    pub async fn connect(path: &Path) -> Result<Client, MtsError> {
        let stream = UnixStream::connect(path).await?;
        let out = Arc::new(Outbox::new(&stream));
        let (mut rd, mut wr) = crate::sock::split_tokio(stream)?;
        let waiters: Waiters = Arc::default();
        let (tx, incoming) = mpsc::unbounded_channel();
        let wout = out.clone();
        let writer = tokio::spawn(async move { wout.drain(&mut wr, || {}).await });
        let rw = waiters.clone();
        let reader = tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
            loop {
                let mut at = 0;
                loop {
                    let (h, payload) = match next_frame(&buf[at..], DEFAULT_MAX_PAYLOAD) {
                        Ok(Some((h, body))) => (h, body.to_vec()),
                        Ok(None) => break,
                        Err(_) => return,
                    };
                    at += HEADER_LEN + payload.len();
                    if h.flags.has(Flags::RESPONSE)
                        && let Some(w) = rw.lock().ok().and_then(|mut m| m.remove(&h.reply_to))
                    {
                        let _ = w.send(Frame { header: h, payload });
                        continue;
                    }
                    let _ = tx.send(Incoming { header: h, payload });
                }
                buf.drain(..at);
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        Ok(Client {
            out,
            waiters,
            next_id: AtomicU64::new(1),
            incoming,
            tasks: vec![writer, reader],
        })
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Send a raw frame now; the returned [`Pending`] waits for the frame that answers it.
    fn start(&self, mut h: Header, payload: &[u8]) -> Pending {
        h.msg_id = self.id();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(h.msg_id, tx);
        }
        self.out.push_now(&h, payload);
        Pending {
            waiters: self.waiters.clone(),
            id: h.msg_id,
            rx,
        }
    }

    /// Send a raw frame and wait for the frame that answers it.
    async fn round_trip(
        &self,
        h: Header,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, MtsError> {
        self.start(h, payload).raw(deadline).await
    }

    async fn broker<T: Serialize, R: DeserializeOwned>(
        &self,
        opcode: u32,
        v: &T,
    ) -> Result<R, MtsError> {
        let p = codec::encode(v)?;
        codec::decode(
            &self
                .round_trip(
                    header(sap::CLI, sap::BROKER, opcode, 0),
                    &p,
                    BROKER_DEADLINE,
                )
                .await?,
        )
    }

    /// Bind a SAP this service's policy declares; messages queued for it start arriving.
    pub async fn bind(&self, name: &str) -> Result<u32, MtsError> {
        self.broker(proto::OP_BIND, &proto::Bind { name: name.into() })
            .await
    }

    /// A SAP's number by name.
    pub async fn lookup(&self, name: &str) -> Result<u32, MtsError> {
        self.broker(proto::OP_LOOKUP, &name.to_string()).await
    }

    /// Receive notifications of `opcode` on bound SAP `sap`.
    pub async fn subscribe(&self, sap: u32, opcode: u32) -> Result<(), MtsError> {
        self.broker(proto::OP_SUBSCRIBE, &proto::Subscribe { sap, opcode })
            .await
    }

    /// Send and wait until the broker has queued it (on disk, for `PERSISTENT`).
    pub async fn send<T: Serialize>(
        &self,
        src: u32,
        dst: u32,
        opcode: u32,
        v: &T,
        flags: Flags,
    ) -> Result<(), MtsError> {
        let p = codec::encode(v)?;
        self.round_trip(
            header(src, dst, opcode, flags.0 | Flags::CONFIRM),
            &p,
            BROKER_DEADLINE,
        )
        .await
        .map(|_| ())
    }

    /// Send raw bytes without waiting; a refusal arrives later through [`Client::recv`].
    pub fn send_nowait(
        &self,
        src: u32,
        dst: u32,
        opcode: u32,
        payload: &[u8],
        flags: Flags,
    ) -> u64 {
        let mut h = header(src, dst, opcode, flags.0);
        h.msg_id = self.id();
        self.out.push(&h, payload);
        h.msg_id
    }

    /// Request/response with a deadline.
    pub async fn request<T: Serialize, R: DeserializeOwned>(
        &self,
        src: u32,
        dst: u32,
        opcode: u32,
        v: &T,
        deadline: Duration,
    ) -> Result<R, MtsError> {
        let p = codec::encode(v)?;
        codec::decode(
            &self
                .round_trip(header(src, dst, opcode, Flags::REQUEST), &p, deadline)
                .await?,
        )
    }

    /// Send a request now (in order with everything sent before and after it) and wait for
    /// its answer later: requests to a receiver that works through them in order can be
    /// pipelined.
    pub fn request_start<T: Serialize>(
        &self,
        src: u32,
        dst: u32,
        opcode: u32,
        v: &T,
    ) -> Result<Pending, MtsError> {
        let p = codec::encode(v)?;
        Ok(self.start(header(src, dst, opcode, Flags::REQUEST), &p))
    }

    /// Raw request/response (payload bytes in and out).
    pub async fn request_raw(
        &self,
        src: u32,
        dst: u32,
        opcode: u32,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, MtsError> {
        self.round_trip(header(src, dst, opcode, Flags::REQUEST), payload, deadline)
            .await
    }

    /// Publish a notification to every subscriber of `opcode`.
    pub fn publish<T: Serialize>(&self, src: u32, opcode: u32, v: &T) -> Result<u64, MtsError> {
        Ok(self.send_nowait(
            src,
            sap::BROADCAST,
            opcode,
            &codec::encode(v)?,
            Flags::default(),
        ))
    }

    /// Answer a request.
    pub fn respond_raw(&self, to: &Incoming, payload: &[u8]) {
        let f = Frame::response_to(&to.header, self.id(), Vec::new());
        self.out.push_now(&f.header, payload);
    }

    pub fn respond<R: Serialize>(&self, to: &Incoming, v: &R) -> Result<(), MtsError> {
        self.respond_raw(to, &codec::encode(v)?);
        Ok(())
    }

    /// Done with these messages: they will not be redelivered.
    pub fn ack(&self, ids: &[u64]) {
        if let Ok(p) = codec::encode(&proto::Ack { ids: ids.to_vec() }) {
            let mut h = header(sap::CLI, sap::BROKER, proto::OP_ACK, 0);
            h.msg_id = self.id();
            self.out.push(&h, &p);
        }
    }

    /// A message has arrived and waits for [`recv`](Self::recv).
    pub fn has_incoming(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// The next message, notification or late error; `None` when the connection closed.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }
}
