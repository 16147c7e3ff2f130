//! The MTS broker: SAPs, queues that wait for their receiver, acks, redelivery, dead letters.
//!
//! This is the synchronous core; [`conn`] runs one reader and one writer task per connection and
//! calls into it. The supervisor tells it when instances start and die. Persistent messages live
//! in sled (`mts/segments`, written behind by [`writer`]) from when they are queued until they
//! are acked (or delivered, when no ack is asked), so they survive a sysmgr restart; dead
//! letters are kept in `mts/dead`.
//!
//! Message identity: the broker gives every message a `seq` unique across restarts (sled's id
//! generator) and delivers it with `msg_id = seq`; acks and responses quote that id. For a
//! request, the broker remembers where the response goes and puts the requester's own id back.

pub mod conn;
pub mod outbox;
pub mod pss;
mod pss_conn;
mod store;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use mts::frame::{Flags, Header};
use mts::sap;
use serde::{Deserialize, Serialize};

use crate::proclog::now_ms;
pub use outbox::Outbox;
pub use store::QueueStore;

pub type ConnId = u64;

/// Who a connection is, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A process sysmgr spawned for this service (or a descendant of one).
    Service(String),
    /// uid 0 or a member of the admin group: the CLI.
    Operator,
    /// Anyone else: refused, with this reason.
    Refused(String),
}

/// Per-queue limits (queued + pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_messages: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// A message held by the broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Msg {
    pub seq: u64,
    pub src_sap: u32,
    pub dst_sap: u32,
    pub opcode: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
    /// Consecutive crashes of the receiver while this message was delivered and unacked.
    pub crashes: u8,
    /// Delivered before, to an instance that did not ack it.
    pub redelivered: bool,
    pub enqueued_ms: u64,
}

impl Msg {
    fn persistent(&self) -> bool {
        Flags(self.flags).has(Flags::PERSISTENT)
    }
    fn needs_ack(&self) -> bool {
        Flags(self.flags).has(Flags::NEEDS_ACK)
    }
}

/// A quarantined message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub seq: u64,
    pub sap: String,
    pub service: String,
    pub src_sap: u32,
    pub opcode: u32,
    pub bytes: usize,
    pub time_ms: u64,
    pub reason: String,
}

struct Sap {
    name: String,
    owner: Option<String>,
    conn: Option<ConnId>,
    queue: VecDeque<Msg>,
    pending: BTreeMap<u64, Msg>,
    bytes: usize,
    subs: BTreeSet<u32>,
}

impl Sap {
    fn new(name: &str, owner: Option<&str>) -> Sap {
        Sap {
            name: name.into(),
            owner: owner.map(str::to_string),
            conn: None,
            queue: VecDeque::new(),
            pending: BTreeMap::new(),
            bytes: 0,
            subs: BTreeSet::new(),
        }
    }
    fn depth(&self) -> usize {
        self.queue.len() + self.pending.len()
    }
}

struct ConnState {
    identity: Identity,
    outbox: Arc<Outbox>,
    ephemeral: u32,
}

/// One row of `show mts sap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SapRow {
    pub number: u32,
    pub name: String,
    pub owner: String,
    pub bound: bool,
    pub subscriptions: Vec<u32>,
}

/// One row of `show mts queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRow {
    pub sap: u32,
    pub name: String,
    pub depth: usize,
    pub bytes: usize,
    pub pending_acks: usize,
    pub persistent: usize,
    pub oldest_age_ms: Option<u64>,
    /// Persistent messages since boot written to sled (`persistent_written`), and delivered
    /// (and acked, when asked) before the writer got to them, so never written
    /// (`persistent_delivered_unwritten`). See [`QueueStore`].
    #[serde(default)]
    pub persistent_written: u64,
    #[serde(default)]
    pub persistent_delivered_unwritten: u64,
}

pub struct Broker {
    saps: BTreeMap<u32, Sap>,
    by_name: HashMap<String, u32>,
    conns: HashMap<ConnId, ConnState>,
    next_conn: ConnId,
    next_ephemeral: u32,
    /// Where the response to a request goes: seq -> (requester's id, connection, its SAP).
    origins: HashMap<u64, (u64, ConnId, u32)>,
    limits: Limits,
    store: Option<QueueStore>,
    next_seq: u64,
    dead: Vec<DeadLetter>,
    /// Running instances (service -> pid), for identities.
    pub instances: HashMap<String, i32>,
    pub admin_group: Option<String>,
    /// The PSS server (SAP `pss`), once sysmgr has opened its store.
    pub pss: Option<pss::PssHandle>,
    /// While a connection's batch of frames is routed: the outboxes it queued frames in, which
    /// it writes itself once the batch is done (see [`Broker::begin_batch`]).
    batch: Option<Vec<(ConnId, Arc<Outbox>)>>,
}

/// Queue a frame for connection `conn`: inside a batch, quietly (the batch's end writes it);
/// otherwise waking the connection's writer task.
fn send(
    batch: &mut Option<Vec<(ConnId, Arc<Outbox>)>>,
    conn: ConnId,
    out: &Arc<Outbox>,
    h: &Header,
    payload: &[u8],
) {
    match batch {
        Some(touched) => {
            if out.push_quiet(h, payload) {
                touched.push((conn, out.clone()));
            }
        }
        None => out.push(h, payload),
    }
}

fn error_frame(to: &Header, reason: &str) -> (Header, Vec<u8>) {
    let f = mts::Frame::error_to(to, 0, reason);
    (f.header, f.payload)
}

impl Broker {
    pub fn new(limits: Limits, store: Option<QueueStore>) -> Broker {
        let mut b = Broker {
            saps: BTreeMap::new(),
            by_name: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            next_ephemeral: sap::FIRST_EPHEMERAL,
            origins: HashMap::new(),
            limits,
            store,
            next_seq: 1,
            dead: Vec::new(),
            instances: HashMap::new(),
            admin_group: None,
            pss: None,
            batch: None,
        };
        b.by_name.insert("sysmgr".into(), sap::SYSMGR);
        b.by_name.insert("pss".into(), sap::PSS);
        if let Some(s) = &b.store {
            b.dead = s.dead_letters();
            b.next_seq = b.dead.iter().map(|d| d.seq).max().unwrap_or(0);
        }
        b
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// A message id above every id given before and every id stored (the stored ones may come
    /// from the other supervisor, whose id counter is not ours).
    fn seq(&mut self) -> u64 {
        let id = match &self.store {
            Some(s) => s.next_id().unwrap_or(0),
            None => 0,
        };
        self.next_seq = id.max(self.next_seq + 1);
        self.next_seq
    }

    /// Become the active supervisor's broker: what the other supervisor stored (persistent
    /// messages, dead letters) was copied into our database while we were the standby, and is
    /// now ours to deliver. Queues take their persistent messages from the database again.
    pub fn take_over_queues(&mut self) {
        let Some(st) = &self.store else { return };
        st.reindex();
        self.dead = st.dead_letters();
        let mut top = self.dead.iter().map(|d| d.seq).max().unwrap_or(0);
        for (n, s) in self.saps.iter_mut() {
            let stored = st.load(*n);
            top = top.max(stored.iter().map(|m| m.seq).max().unwrap_or(0));
            let mut q: Vec<Msg> = s
                .queue
                .drain(..)
                .chain(std::mem::take(&mut s.pending).into_values())
                // What this broker loaded at boot may be older than the copy: the copy wins.
                .filter(|m| !m.persistent())
                .chain(stored)
                .collect();
            q.sort_by_key(|m| m.seq);
            s.bytes = q.iter().map(|m| m.payload.len()).sum();
            s.queue = q.into();
        }
        self.next_seq = self.next_seq.max(top);
        let saps: Vec<u32> = self.saps.keys().copied().collect();
        for n in saps {
            self.deliver(n);
        }
    }

    /// Declare the service SAPs of the current policies: (name, number, owner).
    /// Queues of SAPs that no longer exist are dropped; persistent messages kept in sled for a
    /// declared SAP are loaded.
    pub fn set_saps(&mut self, decl: &[(String, u32, String)]) {
        let keep: BTreeSet<u32> = decl.iter().map(|(_, n, _)| *n).collect();
        let gone: Vec<u32> = self
            .saps
            .keys()
            .filter(|n| !keep.contains(n))
            .copied()
            .collect();
        for n in gone {
            if let Some(sap) = self.saps.remove(&n) {
                self.by_name.remove(&sap.name);
                if let Some(s) = &self.store {
                    s.drop_sap(n);
                }
            }
        }
        for (name, n, owner) in decl {
            match self.saps.get_mut(n) {
                Some(s) => {
                    s.owner = Some(owner.clone());
                    if s.name != *name {
                        self.by_name.remove(&s.name);
                        s.name = name.clone();
                    }
                }
                None => {
                    let mut s = Sap::new(name, Some(owner));
                    if let Some(st) = &self.store {
                        for m in st.load(*n) {
                            self.next_seq = self.next_seq.max(m.seq);
                            s.bytes += m.payload.len();
                            s.queue.push_back(m);
                        }
                    }
                    self.saps.insert(*n, s);
                }
            }
            self.by_name.insert(name.clone(), *n);
        }
    }

    /// A new connection; returns its id and ephemeral SAP.
    pub fn connect(&mut self, identity: Identity, outbox: Arc<Outbox>) -> (ConnId, u32) {
        let id = self.next_conn;
        self.next_conn += 1;
        let eph = self.next_ephemeral;
        self.next_ephemeral = self
            .next_ephemeral
            .checked_add(1)
            .unwrap_or(sap::FIRST_EPHEMERAL);
        self.conns.insert(
            id,
            ConnState {
                identity,
                outbox,
                ephemeral: eph,
            },
        );
        (id, eph)
    }

    /// The connection closed. Its SAPs wait (pending messages stay pending until the instance
    /// dies or binds again).
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            c.outbox.close();
        }
        for s in self.saps.values_mut() {
            if s.conn == Some(conn) {
                s.conn = None;
            }
        }
    }

    /// Route a batch of frames read together: until [`Broker::end_batch`], frames for a
    /// connection are queued without waking its writer task, and the caller writes them
    /// itself after the batch ([`mts::outbox::Outbox::flush_now`]): one write per connection
    /// per batch, and a round trip through the broker does not wait for another task.
    /// `spare` is an empty list to record the connections in (the last batch's, reused).
    pub fn begin_batch(&mut self, spare: Vec<(ConnId, Arc<Outbox>)>) {
        debug_assert!(self.batch.is_none(), "batches do not nest");
        self.batch = Some(spare);
    }

    /// The end of a batch: the connections whose outboxes have frames to write.
    pub fn end_batch(&mut self) -> Vec<(ConnId, Arc<Outbox>)> {
        self.batch.take().unwrap_or_default()
    }

    /// Handle one frame from `conn` (everything except SAP `sysmgr`, which the caller forwards
    /// to the supervisor).
    pub fn route(&mut self, conn: ConnId, mut h: Header, payload: Vec<u8>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let out = c.outbox.clone();
        if h.flags.has(Flags::RESPONSE) {
            if let Some((orig, to, reply_sap)) = self.origins.remove(&h.reply_to)
                && let Some(dst) = self.conns.get(&to)
            {
                h.reply_to = orig;
                h.dst_sap = reply_sap;
                send(&mut self.batch, to, &dst.outbox, &h, &payload);
            }
            return;
        }
        // The source must be a SAP this connection owns (or its ephemeral one).
        let own_eph = c.ephemeral;
        if h.src_sap == sap::CLI || h.src_sap == sap::BROKER {
            h.src_sap = own_eph;
        } else if h.src_sap != own_eph
            && self
                .saps
                .get(&h.src_sap)
                .is_none_or(|s| s.conn != Some(conn))
        {
            let (eh, ep) = error_frame(
                &h,
                &format!(
                    "permission denied: this connection has not bound SAP {}",
                    h.src_sap
                ),
            );
            send(&mut self.batch, conn, &out, &eh, &ep);
            return;
        }
        let res = match h.dst_sap {
            sap::BROKER => self.broker_op(conn, &h, &payload),
            sap::PSS => Err("SAP pss: the persistent storage service is not available yet".into()),
            sap::BROADCAST => self.publish(conn, &h, payload),
            _ => self.enqueue(conn, &h, payload),
        };
        match res {
            Ok(Some(resp)) => {
                let rh = mts::Frame::response_to(&h, 0, Vec::new()).header;
                send(&mut self.batch, conn, &out, &rh, &resp);
            }
            Ok(None) => {}
            Err(e) => {
                let (eh, ep) = error_frame(&h, &e);
                send(&mut self.batch, conn, &out, &eh, &ep);
            }
        }
    }

    fn broker_op(
        &mut self,
        conn: ConnId,
        h: &Header,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        use mts::proto::*;
        match h.opcode {
            OP_BIND => {
                let b: Bind = mts::codec::decode(payload).map_err(|e| e.to_string())?;
                let n = self.bind(conn, &b.name)?;
                Ok(Some(enc(&n)))
            }
            OP_ACK => {
                let a: Ack = mts::codec::decode(payload).map_err(|e| e.to_string())?;
                self.ack(conn, &a.ids);
                Ok(None)
            }
            OP_SUBSCRIBE => {
                let s: Subscribe = mts::codec::decode(payload).map_err(|e| e.to_string())?;
                let sap = self
                    .saps
                    .get_mut(&s.sap)
                    .filter(|x| x.conn == Some(conn))
                    .ok_or_else(|| format!("SAP {} is not bound by this connection", s.sap))?;
                sap.subs.insert(s.opcode);
                Ok(Some(enc(&())))
            }
            OP_LOOKUP => {
                let name: String = mts::codec::decode(payload).map_err(|e| e.to_string())?;
                let n = self
                    .by_name
                    .get(&name)
                    .copied()
                    .ok_or_else(|| format!("no SAP named {name:?}"))?;
                Ok(Some(enc(&n)))
            }
            op => Err(format!("unknown broker opcode {op}")),
        }
    }

    /// Bind a declared SAP to this connection and deliver what waited for it.
    pub fn bind(&mut self, conn: ConnId, name: &str) -> Result<u32, String> {
        let who = match self.conns.get(&conn).map(|c| &c.identity) {
            Some(Identity::Service(s)) => s.clone(),
            _ => {
                return Err(format!(
                    "permission denied: only a service may bind a SAP ({name:?})"
                ));
            }
        };
        let n = *self
            .by_name
            .get(name)
            .ok_or_else(|| format!("no SAP named {name:?} is declared"))?;
        let sap = self
            .saps
            .get_mut(&n)
            .ok_or_else(|| format!("SAP {name:?} is built in"))?;
        if sap.owner.as_deref() != Some(who.as_str()) {
            return Err(format!(
                "permission denied: SAP {name:?} is not declared by service {who:?}"
            ));
        }
        sap.conn = Some(conn);
        // Messages delivered to an earlier connection and never acked go first, marked.
        let pending = std::mem::take(&mut sap.pending);
        for (_, mut m) in pending.into_iter().rev() {
            m.redelivered = true;
            sap.queue.push_front(m);
        }
        self.deliver(n);
        Ok(n)
    }

    pub fn ack(&mut self, conn: ConnId, ids: &[u64]) {
        for s in self.saps.values_mut().filter(|s| s.conn == Some(conn)) {
            for id in ids {
                if let Some(m) = s.pending.remove(id) {
                    s.bytes -= m.payload.len();
                    if m.persistent()
                        && let Some(st) = &self.store
                    {
                        st.remove(m.dst_sap, m.seq);
                    }
                }
            }
        }
    }

    fn admit(&self, n: u32, len: usize) -> Result<(), String> {
        let s = self
            .saps
            .get(&n)
            .ok_or_else(|| format!("no such SAP {n}"))?;
        if s.depth() >= self.limits.max_messages {
            return Err(format!(
                "queue of SAP {} ({n}) is full: {} messages (limit {})",
                s.name,
                s.depth(),
                self.limits.max_messages
            ));
        }
        if s.bytes + len > self.limits.max_bytes {
            return Err(format!(
                "queue of SAP {} ({n}) is full: {} bytes + {len} exceeds the limit of {} bytes",
                s.name, s.bytes, self.limits.max_bytes
            ));
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        conn: ConnId,
        h: &Header,
        payload: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, String> {
        if let Some(c) = self.conns.get(&conn)
            && c.ephemeral == h.dst_sap
        {
            return Err("cannot send to your own ephemeral SAP".into());
        }
        if h.dst_sap >= sap::FIRST_EPHEMERAL {
            // Another connection's reply SAP: direct, never queued.
            let (to, c) = self
                .conns
                .iter()
                .find(|(_, c)| c.ephemeral == h.dst_sap)
                .ok_or_else(|| format!("no connection owns SAP {:#x}", h.dst_sap))?;
            send(&mut self.batch, *to, &c.outbox, h, &payload);
            return Ok(h.flags.has(Flags::CONFIRM).then(Vec::new));
        }
        self.admit(h.dst_sap, payload.len())?;
        if h.flags.has(Flags::PERSISTENT)
            && let Some(st) = &self.store
        {
            // As a PSS write is: what a fenced supervisor stored may not be on the new active.
            st.may_write()
                .map_err(|e| format!("persistent message refused: {e}"))?;
        }
        let seq = self.seq();
        let m = Msg {
            seq,
            src_sap: h.src_sap,
            dst_sap: h.dst_sap,
            opcode: h.opcode,
            flags: h.flags.0 & (Flags::PERSISTENT | Flags::NEEDS_ACK | Flags::REQUEST),
            payload,
            crashes: 0,
            redelivered: false,
            enqueued_ms: now_ms(),
        };
        if h.flags.has(Flags::REQUEST) {
            self.origins.insert(seq, (h.msg_id, conn, h.src_sap));
        }
        let mut confirm_now = h.flags.has(Flags::CONFIRM);
        if m.persistent()
            && let Some(st) = &self.store
        {
            st.put(&m, true)
                .map_err(|e| format!("persistent queue write failed: {e}"))?;
            if confirm_now && let Some(c) = self.conns.get(&conn) {
                // Confirmed means on disk: the confirmation thread answers after its flush. A
                // pipelined sender confirms only its last message, so one flush commits the
                // batch.
                st.confirm_when_flushed(h, c.outbox.clone());
                confirm_now = false;
            }
        }
        let s = self.saps.get_mut(&h.dst_sap).ok_or("SAP vanished")?;
        s.bytes += m.payload.len();
        s.queue.push_back(m);
        self.deliver(h.dst_sap);
        Ok(confirm_now.then(Vec::new))
    }

    fn publish(
        &mut self,
        conn: ConnId,
        h: &Header,
        payload: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, String> {
        let targets: Vec<u32> = self
            .saps
            .iter()
            .filter(|(_, s)| s.subs.contains(&h.opcode))
            .map(|(n, _)| *n)
            .collect();
        let mut first_err = None;
        for n in targets {
            let mut hh = *h;
            hh.dst_sap = n;
            hh.flags.0 &= !(Flags::CONFIRM | Flags::REQUEST);
            if let Err(e) = self.enqueue(conn, &hh, payload.clone()) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(h.flags.has(Flags::CONFIRM).then(Vec::new)),
        }
    }

    /// Push everything queued for SAP `n` to its connection, if it has one.
    fn deliver(&mut self, n: u32) {
        let Some(s) = self.saps.get_mut(&n) else {
            return;
        };
        let Some(conn) = s.conn else { return };
        let Some(c) = self.conns.get(&conn) else {
            s.conn = None;
            return;
        };
        let mut marks = Vec::new();
        while c.outbox.has_room()
            && let Some(m) = s.queue.pop_front()
        {
            let mut flags = m.flags;
            if m.redelivered {
                flags |= Flags::REDELIVERY;
            }
            let h = Header {
                flags: Flags(flags),
                len: 0,
                src_sap: m.src_sap,
                dst_sap: m.dst_sap,
                opcode: m.opcode,
                msg_id: m.seq,
                reply_to: 0,
            };
            send(&mut self.batch, conn, &c.outbox, &h, &m.payload);
            if m.needs_ack() {
                // Marked on disk too: after a restart of sysmgr it comes back as a redelivery.
                if m.persistent() && !m.redelivered {
                    marks.push(m.seq);
                }
                s.pending.insert(m.seq, m);
            } else {
                s.bytes -= m.payload.len();
                if m.persistent()
                    && let Some(st) = &self.store
                {
                    st.remove(n, m.seq);
                }
            }
        }
        if !marks.is_empty()
            && let Some(st) = &self.store
        {
            st.delivered(n, marks);
        }
    }

    /// The writer of `conn` drained its outbox after delivery was throttled: deliver more.
    pub fn resume(&mut self, conn: ConnId) {
        let saps: Vec<u32> = self
            .saps
            .iter()
            .filter(|(_, s)| s.conn == Some(conn))
            .map(|(n, _)| *n)
            .collect();
        for n in saps {
            self.deliver(n);
        }
    }

    /// The supervisor is starting an instance of `service`; a stateless start drops its
    /// non-persistent queued and pending messages (persistent ones survive everything but an ack).
    pub fn service_starting(&mut self, service: &str, stateless: bool) {
        if !stateless {
            return;
        }
        for s in self
            .saps
            .values_mut()
            .filter(|s| s.owner.as_deref() == Some(service))
        {
            s.queue.retain(|m| m.persistent());
            s.pending.retain(|_, m| m.persistent());
            s.bytes = s
                .queue
                .iter()
                .chain(s.pending.values())
                .map(|m| m.payload.len())
                .sum();
            s.subs.clear();
        }
    }

    /// An instance of `service` ended. Unacked messages go back to the front of the queue for
    /// the next instance; one that was in flight at two consecutive crashes is quarantined.
    pub fn service_exited(&mut self, service: &str, crashed: bool) -> Vec<DeadLetter> {
        self.instances.remove(service);
        let mut dead = Vec::new();
        for (n, s) in self
            .saps
            .iter_mut()
            .filter(|(_, s)| s.owner.as_deref() == Some(service))
        {
            s.conn = None;
            if crashed {
                for m in s.queue.iter_mut() {
                    m.crashes = 0; // not in flight at this crash: the streak is broken
                }
            }
            let pending = std::mem::take(&mut s.pending);
            for (_, mut m) in pending.into_iter().rev() {
                m.redelivered = true;
                if crashed {
                    m.crashes += 1;
                }
                if m.crashes >= 2 {
                    s.bytes -= m.payload.len();
                    let d = DeadLetter {
                        seq: m.seq,
                        sap: s.name.clone(),
                        service: service.to_string(),
                        src_sap: m.src_sap,
                        opcode: m.opcode,
                        bytes: m.payload.len(),
                        time_ms: now_ms(),
                        reason: format!(
                            "in flight at {} consecutive crashes of {service}",
                            m.crashes
                        ),
                    };
                    if let Some(st) = &self.store {
                        if m.persistent() {
                            st.remove(*n, m.seq);
                        }
                        st.put_dead(&d);
                    }
                    dead.push(d);
                    continue;
                }
                if m.persistent()
                    && let Some(st) = &self.store
                {
                    let _ = st.put(&m, false);
                }
                s.queue.push_front(m);
            }
        }
        dead.reverse();
        self.dead.extend(dead.iter().cloned());
        dead
    }

    pub fn saps(&self) -> Vec<SapRow> {
        let mut v = vec![
            SapRow {
                number: sap::SYSMGR,
                name: "sysmgr".into(),
                owner: "sysmgr (built in)".into(),
                bound: true,
                subscriptions: vec![],
            },
            SapRow {
                number: sap::PSS,
                name: "pss".into(),
                owner: "sysmgr (built in)".into(),
                bound: true,
                subscriptions: vec![],
            },
        ];
        v.extend(self.saps.iter().map(|(n, s)| SapRow {
            number: *n,
            name: s.name.clone(),
            owner: s.owner.clone().unwrap_or_default(),
            bound: s.conn.is_some(),
            subscriptions: s.subs.iter().copied().collect(),
        }));
        v
    }

    pub fn queues(&self) -> Vec<QueueRow> {
        let now = now_ms();
        self.saps
            .iter()
            .map(|(n, s)| {
                let oldest = s
                    .queue
                    .iter()
                    .chain(s.pending.values())
                    .map(|m| m.enqueued_ms)
                    .min();
                let w = self
                    .store
                    .as_ref()
                    .map(|st| st.counts(*n))
                    .unwrap_or_default();
                QueueRow {
                    sap: *n,
                    name: s.name.clone(),
                    depth: s.queue.len(),
                    bytes: s.bytes,
                    pending_acks: s.pending.len(),
                    persistent: s
                        .queue
                        .iter()
                        .chain(s.pending.values())
                        .filter(|m| m.persistent())
                        .count(),
                    oldest_age_ms: oldest.map(|t| now.saturating_sub(t)),
                    persistent_written: w.written,
                    persistent_delivered_unwritten: w.delivered_unwritten,
                }
            })
            .collect()
    }

    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    mts::codec::encode(v).unwrap_or_default()
}

#[cfg(test)]
mod tests;
