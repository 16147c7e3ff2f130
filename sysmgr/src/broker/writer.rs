//! The `mts-store` thread: writes persistent MTS messages to sled behind the broker.
//!
//! The broker's thread sends [`Op`]s and goes on; this thread applies them in order, a batch
//! at a time (whatever is waiting when it wakes), and applies each batch net:
//! - a message stored and removed within one batch (delivered, and acked when it asked for an
//!   ack, before it reached sled) is not written at all, as a message store that writes behind
//!   does. That is all a message delivered at once could rely on anyway: its remove followed
//!   its insert before any flush could make either durable;
//! - the messages a batch stores for one SAP are written together, in segments of up to
//!   [`SEGMENT_MESSAGES`] messages ([`SEGMENT_BYTES`]), one sled record each: sled costs about
//!   as much per record as per byte up to a few KiB (7–10 µs an insert of a 100-byte value on
//!   this machine), so one record per message made sled the limit;
//! - a segment whose messages are all removed is deleted (with its tombstones and marks);
//!   removing some of them writes a small tombstone record that lists them, so a segment
//!   drained one message at a time is never rewritten. Only a re-store after a crash (a
//!   message's crash count changes) rewrites a segment, with its tombstones and marks folded in.
//!
//! `mts/segments`: a segment's key is the SAP (4 bytes BE) + the seq of its first message (8
//! bytes BE); its value is the encoded `Vec<Msg>` in seq order. A tombstone's key is its
//! segment's key + the lowest seq it removes (8 bytes BE; a seq is removed once, so the key is
//! unique); its value is the encoded `Vec<u64>` of removed seqs. A tombstone sorts right after
//! its segment. Seqs are unique across SAPs and grow, so a SAP's segments, read in key order,
//! give its messages oldest first.
//!
//! A stored message delivered to a receiver that has not acked it yet is marked, so that after
//! a restart of sysmgr it comes back as a redelivery: a message stored in the same batch is
//! written with the mark; for one stored before, the mark waits [`MARK_DELAY`] for the ack
//! (which makes it unnecessary), or until a confirmation, and is then written as a small mark
//! record (its segment's key + a fresh id + `d`; value: the encoded `Vec<u64>` of seqs),
//! folded in when the segment is rewritten.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mts::frame::Frame;
// The writer hashes every message key a few times per batch; Fx costs much less than the
// default SipHash for these 12-byte keys, which come from this process only.
use rustc_hash::{FxHashMap, FxHashSet};

use super::Msg;
use super::store::Confirm;

/// At most this many messages in one segment...
pub const SEGMENT_MESSAGES: usize = 32;
/// ...and at most this many payload bytes (a bigger message is a segment of its own).
pub const SEGMENT_BYTES: usize = 32 * 1024;
/// The most writes the thread applies as one batch.
const MAX_BATCH: usize = 8192;
/// A delivered message's mark is written once its ack has not come for this long (an ack
/// makes it unnecessary), or with the next confirmation.
pub const MARK_DELAY: Duration = Duration::from_millis(250);

pub type Key = [u8; 12];

pub fn key(sap: u32, seq: u64) -> Key {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&sap.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// A delivery mark of segment `seg` (`id`: unique across restarts).
fn mark_key(seg: &Key, id: u64) -> [u8; 21] {
    let mut k = [b'd'; 21];
    k[..12].copy_from_slice(seg);
    k[12..20].copy_from_slice(&id.to_be_bytes());
    k
}

/// A tombstone of segment `seg` whose lowest removed seq is `seq`.
fn tomb_key(seg: &Key, seq: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..12].copy_from_slice(seg);
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The segments under `prefix` (a SAP, a segment's key, or everything), in key order, each
/// without the messages its tombstones remove.
pub fn read(tree: &sled::Tree, prefix: &[u8]) -> Vec<(Key, Vec<Msg>)> {
    let mut out: Vec<(Key, Vec<Msg>)> = Vec::new();
    for (k, v) in tree.scan_prefix(prefix).filter_map(|r| r.ok()) {
        if let Ok(seg) = Key::try_from(k.as_ref()) {
            match mts::codec::decode::<Vec<Msg>>(&v) {
                Ok(msgs) => out.push((seg, msgs)),
                Err(e) => tracing::error!("mts/segments: segment {seg:02x?} does not decode: {e}"),
            }
            continue;
        }
        let mark = k.len() == 21 && k[20] == b'd';
        let seqs = match mts::codec::decode::<Vec<u64>>(&v) {
            Ok(s) if k.len() == 20 || mark => s,
            _ => {
                tracing::error!(
                    "mts/segments: record {:02x?} is neither segment, tombstone nor mark",
                    k.as_ref()
                );
                continue;
            }
        };
        if let Some((seg, msgs)) = out.last_mut()
            && seg[..] == k[..12]
        {
            if mark {
                for m in msgs.iter_mut().filter(|m| seqs.contains(&m.seq)) {
                    m.redelivered = true;
                }
            } else {
                msgs.retain(|m| !seqs.contains(&m.seq));
            }
        }
    }
    out
}

fn seq_of(key: &Key) -> u64 {
    u64::from_be_bytes([
        key[4], key[5], key[6], key[7], key[8], key[9], key[10], key[11],
    ])
}

fn sap_of(key: &Key) -> u32 {
    u32::from_be_bytes([key[0], key[1], key[2], key[3]])
}

/// A write for the writer thread, applied in the order sent.
pub enum Op {
    /// A message stored; `fresh` when it was never stored before (not a re-store after a crash).
    Put {
        msg: Msg,
        fresh: bool,
    },
    Remove(Key),
    /// Delivered, not acked yet: mark them, so that they come back as redeliveries.
    Delivered(Vec<Key>),
    DropSap(u32),
    Dead {
        key: [u8; 8],
        value: Vec<u8>,
    },
    /// Confirm once every write sent before it is applied and flushed.
    Confirm(Confirm),
    /// Answer once every write sent before it is applied.
    Sync(Sender<()>),
    /// Index the segments in the database again: they were written by the other supervisor.
    Reindex,
}

/// Of a SAP's persistent messages since boot: how many were written to sled, and how many
/// were delivered (and acked, when they asked for one) before the writer got to them, so that
/// neither their insert nor their remove was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteCounts {
    pub written: u64,
    pub delivered_unwritten: u64,
}

/// Per SAP, updated once per batch.
pub type Counts = Arc<Mutex<HashMap<u32, WriteCounts>>>;

pub fn lock<T>(c: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes sent and not applied yet, and a wake-up for senders waiting for them to drop.
#[derive(Default)]
pub struct Backlog {
    pub ops: AtomicUsize,
    pub room: tokio::sync::Notify,
}

/// Senders wait (their connection is not read) while more writes than this are waiting.
pub const MAX_BACKLOG: usize = 64 * 1024;

impl Backlog {
    pub fn behind(&self) -> bool {
        self.ops.load(Ordering::SeqCst) > MAX_BACKLOG
    }

    /// Resolves once the writer is no longer behind.
    pub async fn caught_up(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.behind() {
                return;
            }
            room.await;
        }
    }
}

/// Where each stored message is: the segment that holds it, and how many of each segment's
/// messages are still stored.
#[derive(Default)]
struct Index {
    at: FxHashMap<Key, Key>,
    live: FxHashMap<Key, usize>,
}

impl Index {
    fn build(segments: &sled::Tree) -> Index {
        let mut index = Index::default();
        for (seg, msgs) in read(segments, &[]) {
            for m in &msgs {
                index.at.insert(key(m.dst_sap, m.seq), seg);
            }
            index.live.insert(seg, msgs.len());
        }
        index
    }
}

/// What one batch does to an existing segment.
enum Change {
    Replace(Msg),
    Remove(u64),
    Delivered(u64),
}

pub struct Writer {
    store: pss::Store,
    segments: sled::Tree,
    dead: sled::Tree,
    /// Dead letters are flushed soon after they are written.
    flusher: crate::flusher::Flusher,
    confirms: Sender<Confirm>,
    counts: Counts,
    backlog: Arc<Backlog>,
    index: Index,
    /// Delivered messages not acked yet, waiting [`MARK_DELAY`] for their ack before their
    /// delivery is written.
    marks: Marks,
}

/// Deliveries whose mark waits for its ack: since when, by message, and the same in the order
/// they came, so that finding the due ones looks only at those (a receiver holding many
/// messages unacked does not make every batch look through all of them).
#[derive(Default)]
struct Marks {
    since: FxHashMap<Key, Instant>,
    /// Oldest first; an entry whose message was acked (or delivered again) since is skipped
    /// when it comes up.
    order: std::collections::VecDeque<(Instant, Key)>,
}

impl Marks {
    fn is_empty(&self) -> bool {
        self.since.is_empty()
    }

    /// Delivered at `now`, unless it already waits.
    fn add(&mut self, k: Key, now: Instant) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.since.entry(k) {
            e.insert(now);
            self.order.push_back((now, k));
        }
    }

    /// Acked, or written with its message: no mark needed.
    fn remove(&mut self, k: &Key) {
        if self.since.remove(k).is_some() && self.since.is_empty() {
            self.order.clear();
        }
    }

    fn drop_sap(&mut self, sap: u32) {
        self.since.retain(|k, _| sap_of(k) != sap);
        self.order.retain(|(_, k)| sap_of(k) != sap);
    }

    /// Take the marks due at `now` (all of them when `all`), oldest first.
    fn take_due(&mut self, now: Instant, all: bool) -> Vec<Key> {
        let mut due = Vec::new();
        while let Some(&(t, k)) = self.order.front() {
            if !all && now.duration_since(t) < MARK_DELAY {
                break;
            }
            self.order.pop_front();
            if self.since.get(&k) == Some(&t) {
                self.since.remove(&k);
                due.push(k);
            }
        }
        due
    }
}

impl Writer {
    /// Index the segments the database holds.
    pub fn new(
        store: pss::Store,
        segments: sled::Tree,
        dead: sled::Tree,
        flusher: crate::flusher::Flusher,
        confirms: Sender<Confirm>,
        counts: Counts,
        backlog: Arc<Backlog>,
    ) -> Writer {
        let index = Index::build(&segments);
        Writer {
            store,
            segments,
            dead,
            flusher,
            confirms,
            counts,
            backlog,
            index,
            marks: Marks::default(),
        }
    }

    pub fn run(mut self, rx: &Receiver<Op>) {
        loop {
            let first = if self.marks.is_empty() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(MARK_DELAY)
            };
            let mut batch = match first {
                Ok(op) => vec![op],
                // Marks waiting: write those that are due.
                Err(RecvTimeoutError::Timeout) => Vec::new(),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            batch.extend(rx.try_iter().take(MAX_BATCH - 1));
            self.apply(batch);
        }
    }

    pub fn apply(&mut self, batch: Vec<Op>) {
        // Per message: was its first write in this batch a fresh store, and which is its last.
        let mut last: FxHashMap<Key, (bool, usize)> = FxHashMap::default();
        let mut delivered: FxHashSet<Key> = FxHashSet::default();
        let mut writes = 0;
        for (i, op) in batch.iter().enumerate() {
            let (k, fresh) = match op {
                Op::Put { msg, fresh } => (key(msg.dst_sap, msg.seq), *fresh),
                Op::Remove(k) => (*k, false),
                Op::Delivered(ks) => {
                    // Only messages this batch writes take the mark with them (a delivery
                    // follows its put).
                    delivered.extend(ks.iter().filter(|k| last.contains_key(*k)));
                    writes += 1;
                    continue;
                }
                _ => continue,
            };
            writes += 1;
            last.entry(k).or_insert((fresh, i)).1 = i;
        }
        let mut failed: Option<String> = None;
        let mut fresh_by_sap: BTreeMap<u32, Vec<Msg>> = BTreeMap::new();
        let mut changes: FxHashMap<Key, Vec<Change>> = FxHashMap::default();
        let mut counts: HashMap<u32, WriteCounts> = HashMap::new();
        let (mut confirms, mut syncs, mut dead) = (Vec::new(), Vec::new(), false);
        let mut reindex = false;
        let mut repl = Vec::new();
        for (i, op) in batch.into_iter().enumerate() {
            match op {
                Op::Put { mut msg, .. } => {
                    let k = key(msg.dst_sap, msg.seq);
                    // Delivered in this batch: written with the mark. (A re-store after a
                    // crash of the receiver is marked already.)
                    msg.redelivered |= delivered.contains(&k);
                    self.marks.remove(&k);
                    match last.get(&k) {
                        // A later write of this message in the batch stands.
                        Some(&(_, l)) if l != i => {}
                        Some(&(true, _)) => fresh_by_sap.entry(msg.dst_sap).or_default().push(msg),
                        _ => match self.index.at.get(&k) {
                            Some(seg) => {
                                changes.entry(*seg).or_default().push(Change::Replace(msg))
                            }
                            // Not stored (its SAP was dropped since): store it anew.
                            None => fresh_by_sap.entry(msg.dst_sap).or_default().push(msg),
                        },
                    }
                }
                Op::Remove(k) => {
                    // Acked before its delivery was marked: nothing to mark.
                    self.marks.remove(&k);
                    match last.get(&k) {
                        Some(&(true, l)) if l == i => {
                            // Stored and removed within the batch: nothing to write.
                            counts.entry(sap_of(&k)).or_default().delivered_unwritten += 1;
                        }
                        Some(&(false, l)) if l == i => {
                            if let Some(seg) = self.index.at.get(&k) {
                                changes
                                    .entry(*seg)
                                    .or_default()
                                    .push(Change::Remove(seq_of(&k)));
                            }
                        }
                        _ => {}
                    }
                }
                Op::Delivered(ks) => {
                    // Written or removed by this batch: its put carries the mark, or it is gone.
                    // Else the mark waits a little for the ack, which makes it unnecessary.
                    let now = Instant::now();
                    for k in ks.into_iter().filter(|k| !last.contains_key(k)) {
                        self.marks.add(k, now);
                    }
                }
                Op::DropSap(sap) => {
                    // What this batch was about to write for the SAP goes with it.
                    fresh_by_sap.remove(&sap);
                    changes.retain(|seg, _| sap_of(seg) != sap);
                    self.marks.drop_sap(sap);
                    if let Err(e) = self.drop_sap(sap, &mut repl) {
                        fail(&mut failed, "mts/segments remove", e);
                    }
                }
                Op::Dead { key, value } => {
                    if let Err(e) = self.dead.insert(key, value.as_slice()) {
                        fail(&mut failed, "mts/dead insert", e);
                    }
                    self.store
                        .replicate(&self.dead, false, vec![(key.to_vec(), Some(value))]);
                    dead = true;
                }
                Op::Confirm(c) => confirms.push(c),
                Op::Sync(tx) => syncs.push(tx),
                Op::Reindex => reindex = true,
            }
        }
        // Marks whose ack has not come within MARK_DELAY are written; a confirmation or a sync
        // covers every delivery before it.
        let (now, all) = (Instant::now(), !confirms.is_empty() || !syncs.is_empty());
        for k in self.marks.take_due(now, all) {
            if let Some(seg) = self.index.at.get(&k) {
                changes
                    .entry(*seg)
                    .or_default()
                    .push(Change::Delivered(seq_of(&k)));
            }
        }
        for (seg, ch) in changes {
            if let Err(e) = self.change(seg, ch, &mut repl) {
                fail(&mut failed, "mts/segments rewrite", e);
            }
        }
        for (sap, mut msgs) in fresh_by_sap {
            // In seq order: a message stored and re-stored in the batch is where its re-store was.
            msgs.sort_by_key(|m| m.seq);
            counts.entry(sap).or_default().written += msgs.len() as u64;
            if let Err(e) = self.add(msgs, &mut repl) {
                fail(&mut failed, "mts/segments insert", e);
            }
        }
        if !repl.is_empty() {
            self.store.replicate(&self.segments, false, repl);
        }
        if reindex {
            self.index = Index::build(&self.segments);
        }
        if !counts.is_empty() {
            let mut all = lock(&self.counts);
            for (sap, c) in counts {
                let a = all.entry(sap).or_default();
                a.written += c.written;
                a.delivered_unwritten += c.delivered_unwritten;
            }
        }
        if dead {
            self.flusher.dirty();
        }
        self.answer(confirms, failed.as_deref());
        for tx in syncs {
            let _ = tx.send(());
        }
        let left = self
            .backlog
            .ops
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(writes))
            })
            .unwrap_or(0)
            .saturating_sub(writes);
        if left <= MAX_BACKLOG {
            self.backlog.room.notify_waiters();
        }
    }

    /// Confirmations go to the flush thread, or get an error when a write they cover failed.
    fn answer(&self, confirms: Vec<Confirm>, failed: Option<&str>) {
        for c in confirms {
            let c = match failed {
                Some(_) => c,
                None => match self.confirms.send(c) {
                    Ok(()) => continue,
                    Err(e) => e.0,
                },
            };
            let why = failed.unwrap_or("persistent queue flush failed: no flusher thread");
            let f = Frame::error_to(&c.h, 0, why);
            c.outbox.push_now(&f.header, &f.payload);
        }
    }

    /// Store new messages of one SAP, oldest first, in as few segments as the limits allow.
    fn add(&mut self, msgs: Vec<Msg>, repl: &mut Repl) -> Result<(), sled::Error> {
        let mut seg: Vec<Msg> = Vec::new();
        let mut bytes = 0;
        for m in msgs {
            if !seg.is_empty()
                && (seg.len() >= SEGMENT_MESSAGES || bytes + m.payload.len() > SEGMENT_BYTES)
            {
                self.write_new(std::mem::take(&mut seg), repl)?;
                bytes = 0;
            }
            bytes += m.payload.len();
            seg.push(m);
        }
        if !seg.is_empty() {
            self.write_new(seg, repl)?;
        }
        Ok(())
    }

    fn write_new(&mut self, seg: Vec<Msg>, repl: &mut Repl) -> Result<(), sled::Error> {
        let k = key(seg[0].dst_sap, seg[0].seq);
        for m in &seg {
            self.index.at.insert(key(m.dst_sap, m.seq), k);
        }
        self.index.live.insert(k, seg.len());
        put(&self.segments, &k, &seg, repl)
    }

    /// Apply one batch's changes to an existing segment: delete it when nothing is left; else
    /// write a tombstone for the messages removed, or, when a message in it is re-stored,
    /// rewrite it once with what is left.
    fn change(
        &mut self,
        seg: Key,
        changes: Vec<Change>,
        repl: &mut Repl,
    ) -> Result<(), sled::Error> {
        let (mut removed, mut replaced, mut marked) = (Vec::new(), Vec::new(), Vec::new());
        for c in changes {
            match c {
                Change::Remove(seq) => removed.push(seq),
                Change::Replace(m) => replaced.push(m),
                Change::Delivered(seq) => marked.push(seq),
            }
        }
        marked.retain(|seq| !removed.contains(seq));
        let live = self.index.live.get(&seg).copied().unwrap_or(0);
        let sap = sap_of(&seg);
        for seq in &removed {
            self.index.at.remove(&key(sap, *seq));
        }
        if removed.len() >= live {
            self.index.live.remove(&seg);
            return self.delete(&seg, repl);
        }
        self.index.live.insert(seg, live - removed.len());
        if replaced.is_empty() {
            if let Some(lowest) = removed.iter().min() {
                put(&self.segments, &tomb_key(&seg, *lowest), &removed, repl)?;
            }
            if !marked.is_empty() {
                let id = self.store.next_id()?;
                put(&self.segments, &mark_key(&seg, id), &marked, repl)?;
            }
            return Ok(());
        }
        let Some((_, mut msgs)) = read(&self.segments, &seg).into_iter().next() else {
            return Ok(());
        };
        msgs.retain(|m| !removed.contains(&m.seq));
        for m in msgs.iter_mut().filter(|m| marked.contains(&m.seq)) {
            m.redelivered = true;
        }
        for n in replaced {
            if let Some(m) = msgs.iter_mut().find(|m| m.seq == n.seq) {
                *m = n;
            }
        }
        self.delete(&seg, repl)?;
        put(&self.segments, &seg, &msgs, repl)
    }

    /// Delete every record under `prefix`: a segment with its tombstones and marks, or a whole
    /// SAP's.
    fn delete(&self, prefix: &[u8], repl: &mut Repl) -> Result<(), sled::Error> {
        for k in self
            .segments
            .scan_prefix(prefix)
            .keys()
            .filter_map(|k| k.ok())
        {
            self.segments.remove(&k)?;
            repl.push((k.to_vec(), None));
        }
        Ok(())
    }

    fn drop_sap(&mut self, sap: u32, repl: &mut Repl) -> Result<(), sled::Error> {
        self.index.at.retain(|k, _| sap_of(k) != sap);
        self.index.live.retain(|k, _| sap_of(k) != sap);
        self.delete(&sap.to_be_bytes(), repl)
    }
}

type Repl = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Write a segment or a tombstone, and note it for the standby.
fn put(
    tree: &sled::Tree,
    k: &[u8],
    v: &impl serde::Serialize,
    repl: &mut Repl,
) -> Result<(), sled::Error> {
    let v = match mts::codec::encode(v) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("mts/segments encode: {e}");
            return Ok(());
        }
    };
    tree.insert(k, v.as_slice())?;
    repl.push((k.to_vec(), Some(v)));
    Ok(())
}

fn fail(failed: &mut Option<String>, what: &str, e: sled::Error) {
    tracing::error!("{what}: {e}");
    failed.get_or_insert_with(|| format!("persistent queue write failed: {e}"));
}

/// Every stored message of SAP `sap`, oldest first.
pub fn load(segments: &sled::Tree, sap: u32) -> Vec<Msg> {
    read(segments, &sap.to_be_bytes())
        .into_iter()
        .flat_map(|(_, msgs)| msgs)
        .collect()
}

/// Messages stored one per record (`mts/queue`, before segments) move into segments of one.
pub fn migrate(old: &sled::Tree, segments: &sled::Tree) -> Result<usize, sled::Error> {
    let mut n = 0;
    for (k, v) in old.iter().filter_map(|r| r.ok()) {
        match mts::codec::decode::<Msg>(&v) {
            Ok(m) => {
                if let Ok(v) = mts::codec::encode(&vec![m]) {
                    segments.insert(&k, v)?;
                    n += 1;
                }
            }
            Err(e) => tracing::error!("mts/queue: a message does not decode, dropped: {e}"),
        }
        old.remove(&k)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn writer(store: &pss::Store) -> (Writer, Receiver<Confirm>) {
        let (confirms, held) = channel();
        let w = Writer::new(
            store.clone(),
            store.tree("mts/segments").expect("tree"),
            store.tree("mts/dead").expect("tree"),
            crate::flusher::Flusher::start(store),
            confirms,
            Counts::default(),
            Arc::new(Backlog::default()),
        );
        (w, held)
    }

    fn msg(sap: u32, seq: u64, body: &[u8]) -> Msg {
        Msg {
            seq,
            src_sap: 7,
            dst_sap: sap,
            opcode: 1,
            flags: mts::frame::Flags::PERSISTENT,
            payload: body.to_vec(),
            crashes: 0,
            redelivered: false,
            enqueued_ms: 0,
        }
    }

    fn put(sap: u32, seq: u64, body: &[u8], fresh: bool) -> Op {
        Op::Put {
            msg: msg(sap, seq, body),
            fresh,
        }
    }

    /// (SAP, seqs) of every segment, in key order, as a reader sees them.
    fn segments(w: &Writer) -> Vec<(u32, Vec<u64>)> {
        read(&w.segments, &[])
            .into_iter()
            .map(|(k, msgs)| (sap_of(&k), msgs.iter().map(|m| m.seq).collect()))
            .collect()
    }

    /// (segments, tombstones) as records.
    fn records(w: &Writer) -> (usize, usize) {
        let keys: Vec<usize> = w
            .segments
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| k.len())
            .collect();
        (
            keys.iter().filter(|l| **l == 12).count(),
            keys.iter().filter(|l| **l == 20).count(),
        )
    }

    fn seqs(w: &Writer, sap: u32) -> Vec<u64> {
        load(&w.segments, sap).iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_batch_is_applied_net_and_counted_per_sap() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(d.path()).expect("open");
        let (mut w, held) = writer(&store);
        // Message 1 is delivered before the writer gets to it; 2 and 3 wait in their queues.
        w.apply(vec![
            put(100, 1, b"one", true),
            put(100, 2, b"two", true),
            put(101, 3, b"three", true),
            Op::Remove(key(100, 1)),
        ]);
        assert_eq!(segments(&w), vec![(100, vec![2]), (101, vec![3])]);
        let c = |w: &Writer, sap| lock(&w.counts).get(&sap).copied().unwrap_or_default();
        let want = WriteCounts {
            written: 1,
            delivered_unwritten: 1,
        };
        assert_eq!(c(&w, 100), want);
        assert_eq!(c(&w, 101).written, 1);

        // Already on disk: a re-store after a crash and then its ack are written, not skipped;
        // a re-store alone replaces the message; a dropped SAP loses what it had, in order.
        let (tx, done) = channel();
        let mut again = msg(101, 3, b"three again");
        again.crashes = 1;
        w.apply(vec![
            put(100, 2, b"two again", false),
            Op::Remove(key(100, 2)),
            Op::Put {
                msg: again,
                fresh: false,
            },
            put(102, 4, b"four", true),
            Op::DropSap(102),
            put(102, 5, b"five", true),
            Op::Sync(tx),
        ]);
        done.try_recv()
            .expect("a sync is answered once its batch is applied");
        assert_eq!(segments(&w), vec![(101, vec![3]), (102, vec![5])]);
        let three = load(&w.segments, 101);
        assert_eq!(
            (three[0].payload.as_slice(), three[0].crashes),
            (&b"three again"[..], 1)
        );
        assert_eq!(c(&w, 100).written, 1, "a re-store is not a new message");
        assert_eq!(
            c(&w, 102).written,
            1,
            "message 4 went with its SAP, unwritten"
        );

        // A confirmation goes to the flush thread only after its batch is applied.
        let out = Arc::new(super::super::Outbox::default());
        let (h, _) = crate::broker::tests::msg(7, 100, 9, 0, b"x");
        w.apply(vec![
            put(100, 9, b"nine", true),
            Op::Confirm(Confirm { h, outbox: out }),
        ]);
        let held = held.try_recv().expect("handed to the flush thread");
        assert_eq!(held.h.msg_id, h.msg_id);
        assert_eq!(seqs(&w, 100), vec![9]);
    }

    #[test]
    fn messages_share_segments_that_shrink_as_they_are_removed() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(d.path()).expect("open");
        let (mut w, _held) = writer(&store);
        w.apply((10..110).map(|s| put(100, s, b"m", true)).collect());
        let segs = segments(&w);
        assert_eq!(
            segs.iter().map(|s| s.1.len()).collect::<Vec<_>>(),
            vec![32, 32, 32, 4]
        );
        assert_eq!(seqs(&w, 100), (10..110).collect::<Vec<_>>());
        // A big message is a segment of its own, and keeps the order.
        w.apply(vec![
            put(100, 110, &vec![1u8; SEGMENT_BYTES + 1], true),
            put(100, 111, b"m", true),
        ]);
        assert_eq!(segments(&w).len(), 6);

        // The first segment goes; what leaves the second is a tombstone, not a rewrite.
        w.apply((10..51).map(|s| Op::Remove(key(100, s))).collect());
        assert_eq!(segments(&w)[0].1, (51..74).collect::<Vec<_>>());
        assert_eq!(seqs(&w, 100), (51..112).collect::<Vec<_>>());
        assert_eq!(records(&w), (5, 1));
        let raw = w.segments.get(key(100, 42)).expect("get").expect("segment");
        assert_eq!(
            mts::codec::decode::<Vec<Msg>>(&raw).expect("decode").len(),
            32
        );
        // One at a time, as a slow receiver acks: a tombstone each.
        for s in 51..54 {
            w.apply(vec![Op::Remove(key(100, s))]);
        }
        assert_eq!(records(&w), (5, 4));
        assert_eq!(seqs(&w, 100), (54..112).collect::<Vec<_>>());
        // A re-store after a crash rewrites the segment with its tombstones folded in.
        let mut again = msg(100, 60, b"again");
        again.crashes = 1;
        w.apply(vec![Op::Put {
            msg: again,
            fresh: false,
        }]);
        assert_eq!(records(&w), (5, 0));
        assert_eq!(segments(&w)[0].1, (54..74).collect::<Vec<_>>());
        assert_eq!(load(&w.segments, 100)[6].crashes, 1);
        w.apply(vec![Op::Remove(key(100, 54))]);

        // A writer started on the same database (the next boot) knows where each message is,
        // tombstones included.
        drop(w);
        let (mut w, _held) = writer(&store);
        assert_eq!(w.index.live.get(&key(100, 42)), Some(&19));
        w.apply(
            (55..112)
                .filter(|s| s % 2 == 0)
                .map(|s| Op::Remove(key(100, s)))
                .collect(),
        );
        let odd: Vec<u64> = (55..112).filter(|s| s % 2 == 1).collect();
        assert_eq!(seqs(&w, 100), odd);
        w.apply(odd.iter().map(|s| Op::Remove(key(100, *s))).collect());
        assert_eq!(records(&w), (0, 0), "every segment and tombstone deleted");
    }

    #[test]
    fn messages_stored_one_per_record_move_into_segments() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(d.path()).expect("open");
        let old = store.tree("mts/queue").expect("tree");
        for s in [4u64, 5, 9] {
            let v = mts::codec::encode(&msg(100, s, b"old")).expect("encode");
            old.insert(key(100, s), v).expect("insert");
        }
        old.insert(key(100, 10), &b"not a message"[..])
            .expect("insert");
        let segs = store.tree("mts/segments").expect("tree");
        assert_eq!(migrate(&old, &segs).expect("migrate"), 3);
        assert!(old.is_empty());
        let (mut w, _held) = writer(&store);
        assert_eq!(seqs(&w, 100), vec![4, 5, 9]);
        w.apply(vec![Op::Remove(key(100, 5))]);
        assert_eq!(seqs(&w, 100), vec![4, 9]);
    }

    #[test]
    fn delivered_messages_are_marked_for_a_restart_of_sysmgr() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(d.path()).expect("open");
        let (mut w, _held) = writer(&store);
        let marked = |w: &Writer| -> Vec<u64> {
            load(&w.segments, 100)
                .iter()
                .filter(|m| m.redelivered)
                .map(|m| m.seq)
                .collect()
        };
        let marks = |w: &Writer| {
            w.segments
                .iter()
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.len() == 21)
                .count()
        };
        // Stored and delivered in one batch: written with the mark, no record of its own. 3 is
        // delivered and acked in the batch: never written.
        w.apply(vec![
            put(100, 1, b"a", true),
            put(100, 2, b"b", true),
            put(100, 3, b"c", true),
            put(100, 4, b"d", true),
            Op::Delivered(vec![key(100, 1), key(100, 3)]),
            Op::Remove(key(100, 3)),
        ]);
        assert_eq!(seqs(&w, 100), vec![1, 2, 4]);
        assert_eq!(marked(&w), vec![1]);
        assert_eq!(marks(&w), 0);
        // Delivered later: the mark waits for the ack a while; 4's ack comes first, so 4 is
        // never marked. 2's mark is written once it is due.
        w.apply(vec![Op::Delivered(vec![key(100, 2), key(100, 4)])]);
        w.apply(vec![Op::Remove(key(100, 4))]);
        assert_eq!(marks(&w), 0, "not due yet");
        std::thread::sleep(MARK_DELAY);
        w.apply(Vec::new());
        assert_eq!(marked(&w), vec![1, 2]);
        assert_eq!(marks(&w), 1);
        // A confirmation (here a sync) does not wait: every delivery before it is marked.
        let (tx, done) = channel();
        w.apply(vec![Op::Delivered(vec![key(100, 2)]), Op::Sync(tx)]);
        done.recv().expect("synced");
        assert_eq!(marks(&w), 2);
        // A new writer (sysmgr restarted) reads the same; a rewrite folds the mark in.
        drop(w);
        let (mut w, _held) = writer(&store);
        assert_eq!(marked(&w), vec![1, 2]);
        let mut again = msg(100, 1, b"a");
        again.crashes = 1;
        again.redelivered = true;
        w.apply(vec![Op::Put {
            msg: again,
            fresh: false,
        }]);
        assert_eq!(marked(&w), vec![1, 2]);
        assert_eq!(marks(&w), 0, "folded into the rewritten segment");
        // Acked: gone, marks and all.
        w.apply(vec![Op::Remove(key(100, 1)), Op::Remove(key(100, 2))]);
        assert!(seqs(&w, 100).is_empty());
        assert_eq!(w.segments.len(), 0);
    }

    #[tokio::test]
    async fn a_sender_waits_while_the_writer_is_behind() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(d.path()).expect("open");
        let (mut w, _held) = writer(&store);
        let b = w.backlog.clone();
        b.ops.store(MAX_BACKLOG + 2, Ordering::SeqCst);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.caught_up().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        w.apply(vec![put(100, 1, b"a", true), put(100, 2, b"b", true)]);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken once the backlog is down")
            .expect("task");
    }

    #[test]
    fn due_marks_come_oldest_first_without_the_acked_ones() {
        let (t0, k) = (Instant::now(), |s| key(100, s));
        let later = t0 + MARK_DELAY / 2;
        let mut m = Marks::default();
        m.add(k(1), t0);
        m.add(k(2), t0);
        m.add(k(1), later); // waits already: keeps its first time
        m.add(key(200, 7), t0);
        m.add(k(3), later);
        m.remove(&k(2));
        assert!(m.take_due(t0, false).is_empty());
        m.drop_sap(200);
        assert_eq!(m.take_due(t0 + MARK_DELAY, false), vec![k(1)]);
        // Acked, then delivered again: due from its second delivery, not its first.
        m.remove(&k(3));
        m.add(k(3), later + MARK_DELAY);
        assert!(m.take_due(later + MARK_DELAY, false).is_empty());
        m.add(k(4), later + MARK_DELAY);
        assert_eq!(m.take_due(later, true), vec![k(3), k(4)]);
        assert!(m.is_empty() && m.order.is_empty());
        // The last ack empties the queue too, stale entries and all.
        m.add(k(5), t0);
        m.add(k(6), t0);
        m.remove(&k(5));
        m.remove(&k(6));
        assert!(m.order.is_empty());
    }

    /// Not a test: what a batch costs while many deliveries wait for their ack (a receiver
    /// holding them). `cargo test --release -p sysmgr --lib marks_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn marks_cost() {
        for n in [1_000u64, 100_000] {
            let d = tempfile::tempdir().expect("tempdir");
            let store = pss::Store::open(d.path()).expect("open");
            let (mut w, _held) = writer(&store);
            for c in 0..n / 1000 {
                w.apply(
                    (0..1000)
                        .map(|i| put(100, 1 + c * 1000 + i, b"x", true))
                        .collect(),
                );
            }
            // Delivered, not acked: every mark waits (and is not due for MARK_DELAY).
            w.apply(vec![Op::Delivered((1..=n).map(|s| key(100, s)).collect())]);
            let t = Instant::now();
            for i in 0..200u64 {
                w.apply(vec![put(200, 1 + i, b"y", true)]);
            }
            let took = t.elapsed();
            assert_eq!(
                w.marks.since.len() as u64,
                n,
                "the marks came due during the run"
            );
            eprintln!("{n} marks waiting: 200 one-message batches took {took:?}");
        }
    }
}
