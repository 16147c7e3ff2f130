//! Persistent MTS queues and dead letters in the supervisor's sled database.
//!
//! A persistent message sent with CONFIRM is confirmed once it is on disk (and applied by the
//! standby, when there is one). Its confirmation goes out from a thread of its own after a group
//! commit: every confirmation waiting shares one flush, and the broker's thread (the
//! supervisor's) never waits for the disk or the standby.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};

use mts::frame::{Frame, Header};

use super::writer::{self, Backlog, Counts, Op, WriteCounts, Writer};
use super::{DeadLetter, Msg, Outbox};

/// A confirmation held until the flush that covers its message.
pub struct Confirm {
    pub h: Header,
    pub outbox: Arc<Outbox>,
}

/// Persistent MTS messages (`mts/segments`, see [`super::writer`]) and dead letters
/// (`mts/dead`: key = seq, value = the encoded [`DeadLetter`]).
///
/// Writes go to sled on a thread of their own (`mts-store`), in the order they were made: the
/// broker's thread only sends them. The in-memory queues are what the broker serves from; sled
/// is their copy for the next boot.
#[derive(Clone)]
pub struct QueueStore {
    segments: sled::Tree,
    dead: sled::Tree,
    store: pss::Store,
    ops: Sender<Op>,
    counts: Counts,
    backlog: Arc<Backlog>,
}

impl QueueStore {
    pub fn open(
        store: &pss::Store,
        flusher: crate::flusher::Flusher,
    ) -> Result<QueueStore, pss::PssError> {
        let (confirms, held) = channel();
        let st = store.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("mts-confirm".into())
            .spawn(move || confirm_after_flush(&st, &held))
        {
            // Then confirmations fail (the channel is closed): the sender is told, nothing hangs.
            tracing::error!(error = %e, "cannot start the MTS confirmation thread");
        }
        let segments = store.tree("mts/segments")?;
        let dead = store.tree("mts/dead")?;
        let moved =
            writer::migrate(&store.tree("mts/queue")?, &segments).map_err(pss::PssError::Db)?;
        if moved > 0 {
            tracing::info!("{moved} persistent MTS messages moved from mts/queue to mts/segments");
        }
        let (ops, rx) = channel();
        let counts = Counts::default();
        let backlog = Arc::new(Backlog::default());
        let w = Writer::new(
            store.clone(),
            segments.clone(),
            dead.clone(),
            flusher,
            confirms,
            counts.clone(),
            backlog.clone(),
        );
        if let Err(e) = std::thread::Builder::new()
            .name("mts-store".into())
            .spawn(move || w.run(&rx))
        {
            // Then persistent messages are refused (the channel is closed) with this reason.
            tracing::error!(error = %e, "cannot start the MTS store thread");
        }
        Ok(QueueStore {
            segments,
            dead,
            store: store.clone(),
            ops,
            counts,
            backlog,
        })
    }

    pub fn next_id(&self) -> Result<u64, sled::Error> {
        self.store.next_id()
    }

    /// Err(why) while this supervisor must take no writes ([`pss::Store::may_write`]).
    pub fn may_write(&self) -> Result<(), String> {
        self.store.may_write()
    }

    fn write(&self, op: Op) -> Result<(), String> {
        self.backlog.ops.fetch_add(1, Ordering::SeqCst);
        self.ops.send(op).map_err(|_| {
            self.backlog.ops.fetch_sub(1, Ordering::SeqCst);
            "no MTS store thread".to_string()
        })
    }

    /// Store `m` (`fresh`: for the first time; a message re-stored after a crash is not).
    pub fn put(&self, m: &Msg, fresh: bool) -> Result<(), String> {
        self.write(Op::Put {
            msg: m.clone(),
            fresh,
        })
    }

    /// Stored messages went to their receiver, which has not acked them yet: should sysmgr
    /// restart before the acks, they come back marked as redeliveries.
    pub fn delivered(&self, sap: u32, seqs: Vec<u64>) {
        let keys = seqs.into_iter().map(|s| writer::key(sap, s)).collect();
        if let Err(e) = self.write(Op::Delivered(keys)) {
            tracing::error!("mts/segments delivered: {e}");
        }
    }

    pub fn remove(&self, sap: u32, seq: u64) {
        if let Err(e) = self.write(Op::Remove(writer::key(sap, seq))) {
            tracing::error!("mts/segments remove: {e}");
        }
    }

    /// The writer's backlog: a connection that sent persistent messages is not read while the
    /// writer is more than [`writer::MAX_BACKLOG`] writes behind.
    pub fn backlog(&self) -> Arc<Backlog> {
        self.backlog.clone()
    }

    /// Answer the message of `h` (just `put`) on `outbox` once it is on disk.
    pub fn confirm_when_flushed(&self, h: &Header, outbox: Arc<Outbox>) {
        if let Err(e) = self.ops.send(Op::Confirm(Confirm { h: *h, outbox })) {
            let Op::Confirm(Confirm { h, outbox }) = e.0 else {
                return;
            };
            let f = Frame::error_to(&h, 0, "persistent queue flush failed: no flusher thread");
            outbox.push(&f.header, &f.payload);
        }
    }

    /// Wait until every write made so far is applied.
    fn sync(&self) {
        let (tx, rx) = channel();
        if self.ops.send(Op::Sync(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// A write the backlog does not count (rare ones).
    fn send(&self, op: Op, what: &str) {
        if self.ops.send(op).is_err() {
            tracing::error!("{what}: no MTS store thread");
        }
    }

    /// Index the database's segments again (they were copied in from the other supervisor).
    pub fn reindex(&self) {
        self.send(Op::Reindex, "mts/segments reindex");
        self.sync();
    }

    /// Every persistent message of a SAP, oldest first.
    pub fn load(&self, sap: u32) -> Vec<Msg> {
        self.sync();
        writer::load(&self.segments, sap)
    }

    pub fn drop_sap(&self, sap: u32) {
        self.send(Op::DropSap(sap), "mts/segments drop");
    }

    pub fn put_dead(&self, d: &DeadLetter) {
        match mts::codec::encode(d) {
            Ok(value) => {
                let key = d.seq.to_be_bytes();
                self.send(Op::Dead { key, value }, "mts/dead insert");
            }
            Err(e) => tracing::error!("mts/dead encode: {e}"),
        }
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.sync();
        self.dead
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| mts::codec::decode(&v).ok())
            .collect()
    }

    /// What became of SAP `sap`'s persistent messages so far (as far as the writer got).
    pub fn counts(&self, sap: u32) -> WriteCounts {
        writer::lock(&self.counts)
            .get(&sap)
            .copied()
            .unwrap_or_default()
    }
}

/// The confirmation thread: one flush (and standby acknowledgement) for every confirmation
/// waiting when it starts, then their answers, written straight into the senders' sockets.
///
/// As for a PSS `durable` write ([`pss::Store::commit`]), a supervisor fenced meanwhile does
/// not confirm: the message may not be on the new active, so the sender is told to send it
/// again there.
fn confirm_after_flush(store: &pss::Store, held: &Receiver<Confirm>) {
    let flush = || match store.commit() {
        Ok(r) => {
            if r == pss::Replicated::GaveUp {
                standby_gave_up();
            }
            Ok(())
        }
        Err(pss::PssError::Denied(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    };
    crate::flusher::group_commit(held, flush, |Confirm { h, outbox }, r| {
        let f = match r {
            Ok(()) => Frame::response_to(&h, 0, Vec::new()),
            Err(e) => Frame::error_to(&h, 0, &format!("not confirmed: {e}")),
        };
        outbox.push_now(&f.header, &f.payload);
    });
}

/// A durable write waited for the standby longer than `dead-after`: the link was dropped, and
/// the standby copies everything again when it reconnects.
pub fn standby_gave_up() {
    crate::syslog::err(
        2,
        "REPLICATION_STALLED",
        "The standby supervisor did not acknowledge a durable write in time; the replication link restarts with a full copy.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_put_through_the_thread_is_loaded_back_in_order() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(d.path()).expect("open");
        let qs = QueueStore::open(&store, crate::flusher::Flusher::start(&store)).expect("open");
        let m = |seq: u64| Msg {
            seq,
            src_sap: 7,
            dst_sap: 100,
            opcode: 1,
            flags: mts::frame::Flags::PERSISTENT,
            payload: vec![seq as u8; 10],
            crashes: 0,
            redelivered: false,
            enqueued_ms: 0,
        };
        for seq in 1..=1000 {
            qs.put(&m(seq), true).expect("put");
        }
        for seq in (1..=1000).filter(|s| s % 2 == 0) {
            qs.remove(100, seq);
        }
        let got: Vec<u64> = qs.load(100).iter().map(|m| m.seq).collect();
        let want: Vec<u64> = (1..=1000).filter(|s| s % 2 == 1).collect();
        assert_eq!(got, want);
        let c = qs.counts(100);
        assert_eq!(c.written + c.delivered_unwritten, 1000, "{c:?}");
        assert!(!qs.backlog().behind());
    }
}
