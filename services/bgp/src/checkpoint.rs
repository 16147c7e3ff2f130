//! PSS checkpoints of the sessions and the RIBs (private scope, `fast` durability).
//!
//! The Adj-RIBs are checkpointed as logs of the UPDATE messages themselves, the way a
//! database keeps a write-ahead log: one key per message, not one per prefix, so a full table
//! costs a few hundred keys instead of a hundred thousand (sled rewrites a node per insert).
//! When a log outgrows what it describes it is compacted into a snapshot.
//!
//! Keys (text, so `sysmgr show pss service bgp --key K` reads them):
//! - `session/<peer>`: [`SessionCk`], what a session negotiated, on every state change;
//! - `in/<peer>/snap/<n>`: Adj-RIB-In snapshot, chunks of (attributes, prefixes);
//! - `in/<peer>/log/<seq>`: every UPDATE received after the snapshot, as received (and the
//!   withdrawals a Graceful Restart sweep made, as UPDATEs of our own);
//! - `out/<peer>/log/<seq>`: every UPDATE sent on the current session (compaction replaces
//!   the log with the packed Adj-RIB-Out);
//! - `rx/<peer>`: the stream offset through which received messages are applied (the bytes
//!   after it are still in the kernel: peek, apply, checkpoint, consume);
//! - `tx/<peer>/<offset>`: every message of the current connection from the moment it is
//!   recorded until the kernel has all of it, so a restarted speaker writes what is missing.
//!
//! The Loc-RIB is not stored: best-path selection over the restored Adj-RIBs-In rebuilds it.
//! The owner loop collects each batch's operations ([`Ckpt`]) and hands them to [`writer`], a
//! task on its own MTS connection that merges whatever queued meanwhile into one PSS write, so
//! ingest never waits for sled. A batch is never split, so a compaction is atomic.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

use fib::proto::Prefix;
use pss::client::{ByteBuf, Bytes, Pss, decode, encode};
use pss::proto::{Durability, Op, Request, Response, Scope};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::rib::Attrs;

/// Merging stops at this many operations (one frame stays far below MTS's limit).
const MERGE_OPS: usize = 20_000;
/// Prefixes per snapshot chunk.
const SNAP_CHUNK: usize = 10_000;
/// A log is compacted once it holds more than this many bytes and more than twice what a
/// snapshot of its table would take (8 bytes a prefix, roughly).
const COMPACT_MIN_BYTES: usize = 1 << 20;

/// What a session negotiated, independent of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCk {
    pub state: String,
    pub router_id: Option<Ipv4Addr>,
    pub four_octet: bool,
    pub local_addr: Option<Ipv4Addr>,
    /// The peer's Graceful Restart capability, if it offered it.
    pub gr: Option<crate::wire::Gr>,
    pub flaps: u32,
    /// Negotiated hold time, seconds.
    pub hold: u16,
    pub enhanced_refresh: bool,
    pub ipv6: bool,
    /// End-of-RIB received, per family.
    pub eor4: bool,
    pub eor6: bool,
    /// Established since (Unix ms), for the uptime a resumed session shows.
    pub up_since_ms: u64,
    /// The kernel's (consumed, written) counters at the connection's stream offset 0.
    pub kernel_base: (u64, u64),
}

/// Which Adj-RIB a log belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    In,
    Out,
}

impl Side {
    fn word(self) -> &'static str {
        match self {
            Side::In => "in",
            Side::Out => "out",
        }
    }
}

pub fn session_key(peer: Ipv4Addr) -> String {
    format!("session/{peer}")
}
fn log_key(side: Side, peer: Ipv4Addr, seq: u64) -> String {
    format!("{}/{peer}/log/{seq:016x}", side.word())
}
fn snap_key(peer: Ipv4Addr, n: u32) -> String {
    format!("in/{peer}/snap/{n:08x}")
}
fn rx_key(peer: Ipv4Addr) -> String {
    format!("rx/{peer}")
}
fn tx_key(peer: Ipv4Addr, offset: u64) -> String {
    format!("tx/{peer}/{offset:016x}")
}

fn put<T: Serialize + ?Sized>(key: String, v: &T) -> Option<Op> {
    match encode(v) {
        Ok(value) => Some(Op::Put {
            key: key.into_bytes(),
            value,
        }),
        Err(e) => {
            tracing::error!(error = %e, key, "checkpoint: cannot encode");
            None
        }
    }
}

fn del(key: String) -> Op {
    Op::Delete {
        key: key.into_bytes(),
    }
}

/// Where one log stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogPos {
    /// Sequence of the oldest entry still stored, and of the next one.
    pub first: u64,
    pub next: u64,
    pub bytes: usize,
    /// Snapshot chunks stored (Adj-RIB-In only).
    pub snaps: u32,
}

/// The operations of the current batch, and where every log stands.
#[derive(Default)]
pub struct Ckpt {
    ops: Vec<Op>,
    logs: HashMap<(Side, Ipv4Addr), LogPos>,
    /// Per peer, the (start, end) stream offsets of the recorded outgoing messages.
    tx: HashMap<Ipv4Addr, VecDeque<(u64, u64)>>,
}

impl Ckpt {
    /// Append one message to a log.
    pub fn append(&mut self, side: Side, peer: Ipv4Addr, msg: &[u8]) {
        let l = self.logs.entry((side, peer)).or_default();
        let key = log_key(side, peer, l.next);
        l.next += 1;
        l.bytes += msg.len();
        self.ops.extend(put(key, Bytes::new(msg)));
    }

    /// Delete a log and its snapshot (the session is gone, or about to be rewritten).
    pub fn forget(&mut self, side: Side, peer: Ipv4Addr) {
        let Some(l) = self.logs.remove(&(side, peer)) else {
            return;
        };
        for seq in l.first..l.next {
            self.ops.push(del(log_key(side, peer, seq)));
        }
        for n in 0..l.snaps {
            self.ops.push(del(snap_key(peer, n)));
        }
    }

    /// Whether a log should be compacted, given how many prefixes its table holds.
    pub fn wants_compaction(&self, side: Side, peer: Ipv4Addr, live: usize) -> bool {
        self.logs
            .get(&(side, peer))
            .is_some_and(|l| l.bytes > COMPACT_MIN_BYTES && l.bytes > 16 * live)
    }

    /// Replace the Adj-RIB-In log of `peer` with a snapshot of `table` (in the same batch).
    pub fn snapshot_in<'a>(
        &mut self,
        peer: Ipv4Addr,
        table: impl Iterator<Item = (&'a Prefix, &'a Arc<Attrs>)>,
    ) {
        self.forget(Side::In, peer);
        let mut groups: HashMap<&Arc<Attrs>, Vec<Prefix>> = HashMap::new();
        for (p, a) in table {
            groups.entry(a).or_default().push(*p);
        }
        let mut n = 0u32;
        for (a, ps) in groups {
            for chunk in ps.chunks(SNAP_CHUNK) {
                self.ops
                    .extend(put(snap_key(peer, n), &(a.as_ref(), chunk.to_vec())));
                n += 1;
            }
        }
        let l = self.logs.entry((Side::In, peer)).or_default();
        l.snaps = n;
    }

    /// Replace the Adj-RIB-Out log of `peer` with `msgs` (the packed Adj-RIB-Out).
    pub fn rewrite_out(&mut self, peer: Ipv4Addr, msgs: &[Vec<u8>]) {
        self.forget(Side::Out, peer);
        for m in msgs {
            self.append(Side::Out, peer, m);
        }
    }

    /// Received messages are applied through stream offset `offset`.
    pub fn rx(&mut self, peer: Ipv4Addr, offset: u64) {
        self.ops.extend(put(rx_key(peer), &offset));
    }

    /// Record an outgoing message that starts at stream offset `start` (before it is written).
    pub fn tx_record(&mut self, peer: Ipv4Addr, start: u64, msg: &[u8]) {
        self.tx
            .entry(peer)
            .or_default()
            .push_back((start, start + msg.len() as u64));
        self.ops.extend(put(tx_key(peer, start), Bytes::new(msg)));
    }

    /// The kernel has the stream through `written`: those records can go.
    pub fn tx_trim(&mut self, peer: Ipv4Addr, written: u64) {
        let Some(q) = self.tx.get_mut(&peer) else {
            return;
        };
        while let Some(&(start, end)) = q.front() {
            if end > written {
                break;
            }
            q.pop_front();
            self.ops.push(del(tx_key(peer, start)));
        }
    }

    /// The connection is gone: its records and its receive offset go.
    pub fn forget_stream(&mut self, peer: Ipv4Addr) {
        for (start, _) in self.tx.remove(&peer).unwrap_or_default() {
            self.ops.push(del(tx_key(peer, start)));
        }
        self.ops.push(del(rx_key(peer)));
    }

    pub fn session(&mut self, peer: Ipv4Addr, s: &SessionCk) {
        self.ops.extend(put(session_key(peer), s));
    }

    pub fn logs(&self) -> impl Iterator<Item = (Side, Ipv4Addr)> + '_ {
        self.logs.keys().copied()
    }

    /// The batch's operations (empty if none).
    pub fn take(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// Continue the logs a previous instance left.
    pub fn adopt(&mut self, r: &Restored) {
        for (k, l) in &r.positions {
            self.logs.insert(*k, l.clone());
        }
        for (peer, recs) in &r.tx {
            self.tx.insert(
                *peer,
                recs.iter().map(|(s, m)| (*s, s + m.len() as u64)).collect(),
            );
        }
    }
}

/// What waits for a batch to be checkpointed: messages to write (in order, per connection)
/// and received bytes to consume (through a stream offset, per connection).
#[derive(Default)]
pub struct After {
    pub sends: Vec<(mpsc::UnboundedSender<Vec<u8>>, Vec<u8>)>,
    pub consumes: Vec<(mpsc::UnboundedSender<u64>, u64)>,
}

impl After {
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.consumes.is_empty()
    }
    fn extend(&mut self, o: After) {
        self.sends.extend(o.sends);
        self.consumes.extend(o.consumes);
    }
    fn run(self) {
        for (tx, m) in self.sends {
            let _ = tx.send(m);
        }
        for (tx, off) in self.consumes {
            let _ = tx.send(off);
        }
    }
}

/// Write batches in order; whatever queued while a write was in flight goes in the next one.
/// Only once a batch is in PSS do its messages go out and its received bytes leave the
/// kernel. With `clear`, first delete every key a previous life left (a fresh start).
pub async fn writer(mut rx: mpsc::UnboundedReceiver<(Vec<Op>, After)>, clear: bool) {
    // A connection of PSS's alone, read by bgp's PSS request thread in sysmgr itself.
    let pss = match mts::client::Client::connect_from_env().await {
        Ok(c) => Pss::direct(c).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let pss = match pss {
        Ok(p) => p,
        Err(e) => {
            // Without PSS the sessions still run (they just cannot survive a restart): the
            // messages and consumes of every batch go on at once.
            tracing::warn!(error = %e, "checkpoint writer: no PSS connection; no checkpoints");
            while let Some((_, after)) = rx.recv().await {
                after.run();
            }
            return;
        }
    };
    if clear {
        match old_keys(&pss).await {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!(
                    keys = keys.len(),
                    "checkpoint: clearing a previous life's keys"
                );
                for c in keys.chunks(MERGE_OPS) {
                    write(&pss, c.iter().map(|k| del(k.clone())).collect()).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checkpoint: cannot list old keys"),
        }
    }
    while let Some((mut ops, mut after)) = rx.recv().await {
        while ops.len() < MERGE_OPS
            && let Ok((more, a)) = rx.try_recv()
        {
            ops.extend(more);
            after.extend(a);
        }
        write(&pss, ops).await;
        after.run();
    }
}

async fn write(pss: &Pss<'_>, ops: Vec<Op>) {
    if ops.is_empty() {
        return;
    }
    let n = ops.len();
    match pss
        .call(&Request::Write {
            scope: Scope::Private,
            ops,
            durability: Durability::Fast,
        })
        .await
    {
        Ok(Response::Written { seq }) => tracing::trace!(ops = n, seq, "checkpoint"),
        Ok(other) => tracing::warn!(?other, "checkpoint refused"),
        Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
    }
}

async fn scan(pss: &Pss<'_>, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, pss::PssError> {
    Ok(pss
        .scan(None, Scope::Private, prefix, u32::MAX)
        .await?
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .collect())
}

async fn old_keys(pss: &Pss<'_>) -> Result<Vec<String>, pss::PssError> {
    let mut keys = Vec::new();
    for prefix in ["session/", "in/", "out/", "rx/", "tx/"] {
        // Keys only matter here; the values of a previous life are small per key.
        keys.extend(scan(pss, prefix).await?.into_iter().map(|(k, _)| k));
    }
    Ok(keys)
}

/// What a stateful restart finds.
#[derive(Debug, Default)]
pub struct Restored {
    pub sessions: HashMap<Ipv4Addr, SessionCk>,
    /// Per peer: its Adj-RIB-In snapshot, then the UPDATEs received after it, in order.
    pub snapshots: HashMap<Ipv4Addr, Vec<(Attrs, Vec<Prefix>)>>,
    pub received: HashMap<Ipv4Addr, Vec<Vec<u8>>>,
    /// Per peer: the UPDATEs of its Adj-RIB-Out log, in order.
    pub sent: HashMap<Ipv4Addr, Vec<Vec<u8>>>,
    /// Per peer: received messages applied through this stream offset.
    pub rx: HashMap<Ipv4Addr, u64>,
    /// Per peer: recorded outgoing messages (stream offset, bytes), in order.
    pub tx: HashMap<Ipv4Addr, Vec<(u64, Vec<u8>)>>,
    positions: HashMap<(Side, Ipv4Addr), LogPos>,
}

/// `<side>/<peer>/<kind>/<hex>` → (side, peer, kind, number).
fn parse_key(k: &str) -> Option<(Side, Ipv4Addr, &str, u64)> {
    let mut it = k.split('/');
    let side = match it.next()? {
        "in" => Side::In,
        "out" => Side::Out,
        _ => return None,
    };
    let peer = it.next()?.parse().ok()?;
    let kind = it.next()?;
    let n = u64::from_str_radix(it.next()?, 16).ok()?;
    Some((side, peer, kind, n))
}

/// Read the previous instance's checkpoints (on its own MTS connection).
pub async fn restore() -> Result<Restored, String> {
    let mts = mts::client::Client::connect_from_env()
        .await
        .map_err(|e| e.to_string())?;
    let pss = Pss::direct(mts).await.map_err(|e| e.to_string())?;
    let e = |e: pss::PssError| e.to_string();
    let mut r = Restored::default();
    for (k, v) in scan(&pss, "session/").await.map_err(e)? {
        if let Some(peer) = k
            .strip_prefix("session/")
            .and_then(|p| p.parse::<Ipv4Addr>().ok())
        {
            r.sessions.insert(peer, decode(&v).map_err(e)?);
        }
    }
    for prefix in ["in/", "out/"] {
        // Keys come sorted, so snapshot chunks and log entries are in order.
        for (k, v) in scan(&pss, prefix).await.map_err(e)? {
            let Some((side, peer, kind, n)) = parse_key(&k) else {
                tracing::warn!(key = k, "checkpoint: unknown key ignored");
                continue;
            };
            let pos = r.positions.entry((side, peer)).or_insert(LogPos {
                first: u64::MAX,
                ..Default::default()
            });
            match kind {
                "snap" => {
                    pos.snaps = pos.snaps.max(n as u32 + 1);
                    let chunk: (Attrs, Vec<Prefix>) = decode(&v).map_err(e)?;
                    r.snapshots.entry(peer).or_default().push(chunk);
                }
                "log" => {
                    pos.first = pos.first.min(n);
                    pos.next = pos.next.max(n + 1);
                    let msg = decode::<ByteBuf>(&v).map_err(e)?.into_vec();
                    pos.bytes += msg.len();
                    match side {
                        Side::In => r.received.entry(peer).or_default().push(msg),
                        Side::Out => r.sent.entry(peer).or_default().push(msg),
                    }
                }
                _ => tracing::warn!(key = k, "checkpoint: unknown key ignored"),
            }
        }
    }
    for (k, v) in scan(&pss, "rx/").await.map_err(e)? {
        if let Some(peer) = k.strip_prefix("rx/").and_then(|p| p.parse().ok()) {
            r.rx.insert(peer, decode(&v).map_err(e)?);
        }
    }
    for (k, v) in scan(&pss, "tx/").await.map_err(e)? {
        let mut it = k.split('/').skip(1);
        let (Some(peer), Some(off)) = (
            it.next().and_then(|p| p.parse::<Ipv4Addr>().ok()),
            it.next().and_then(|o| u64::from_str_radix(o, 16).ok()),
        ) else {
            tracing::warn!(key = k, "checkpoint: unknown key ignored");
            continue;
        };
        r.tx.entry(peer)
            .or_default()
            .push((off, decode::<ByteBuf>(&v).map_err(e)?.into_vec()));
    }
    for l in r.positions.values_mut() {
        if l.first == u64::MAX {
            l.first = l.next;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| match o {
                Op::Put { key, .. } => format!("put {}", String::from_utf8_lossy(key)),
                Op::Delete { key } => format!("del {}", String::from_utf8_lossy(key)),
                Op::Cas { key, .. } => format!("cas {}", String::from_utf8_lossy(key)),
            })
            .collect()
    }

    #[test]
    fn logs_append_forget_and_snapshot() {
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let mut c = Ckpt::default();
        c.append(Side::In, peer, b"one");
        c.append(Side::In, peer, b"two");
        assert_eq!(
            keys(&c.take()),
            [
                "put in/10.0.0.2/log/0000000000000000",
                "put in/10.0.0.2/log/0000000000000001"
            ]
        );
        let a = Arc::new(Attrs {
            origin: 0,
            as_path: vec![65001],
            as_path_len: 1,
            next_hop: peer.into(),
            local_pref: None,
            med: None,
            communities: vec![],
        });
        let table: rustc_hash::FxHashMap<Prefix, Arc<Attrs>> =
            [("10.1.0.0/16".parse::<Prefix>().expect("prefix"), a.clone())]
                .into_iter()
                .collect();
        c.snapshot_in(peer, table.iter());
        assert_eq!(
            keys(&c.take()),
            [
                "del in/10.0.0.2/log/0000000000000000",
                "del in/10.0.0.2/log/0000000000000001",
                "put in/10.0.0.2/snap/00000000"
            ]
        );
        c.append(Side::In, peer, b"three");
        c.forget(Side::In, peer);
        assert_eq!(
            keys(&c.take()),
            [
                "put in/10.0.0.2/log/0000000000000000",
                "del in/10.0.0.2/log/0000000000000000",
                "del in/10.0.0.2/snap/00000000"
            ]
        );
        assert_eq!(
            parse_key("in/10.0.0.2/log/000000000000000a"),
            Some((Side::In, peer, "log", 10))
        );
        assert_eq!(parse_key("in/10.0.0.2/log"), None);
        assert!(!c.wants_compaction(Side::In, peer, 0));
    }
}
