//! Persistent MTS queues and dead letters in the supervisor's sled database.
//!
//! A persistent message sent with CONFIRM is confirmed once it is on disk (and applied by the
//! standby, when there is one). Its confirmation goes out from a thread of its own after a group
//! commit: every confirmation waiting shares one flush, and the broker's thread (the
//! supervisor's) never waits for the disk or the standby.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use mts::frame::{Frame, Header};

use super::{DeadLetter, Msg, Outbox};

/// A confirmation held until the flush that covers its message.
struct Confirm {
    h: Header,
    outbox: Arc<Outbox>,
}

/// `mts/queue`: key = SAP (4 bytes BE) + seq (8 bytes BE), value = the encoded [`Msg`].
/// `mts/dead`: key = seq, value = the encoded [`DeadLetter`].
#[derive(Clone)]
pub struct QueueStore {
    store: pss::Store,
    queue: sled::Tree,
    dead: sled::Tree,
    /// Dead letters are written on the supervisor's thread while a restart waits.
    flusher: crate::flusher::Flusher,
    confirms: Sender<Confirm>,
}

fn key(sap: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&sap.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
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
        Ok(QueueStore {
            store: store.clone(),
            queue: store.tree("mts/queue")?,
            dead: store.tree("mts/dead")?,
            flusher,
            confirms,
        })
    }

    pub fn next_id(&self) -> Result<u64, sled::Error> {
        self.store.next_id()
    }

    /// Err(why) while this supervisor must take no writes ([`pss::Store::may_write`]).
    pub fn may_write(&self) -> Result<(), String> {
        self.store.may_write()
    }

    pub fn put(&self, m: &Msg) -> Result<(), String> {
        let v = mts::codec::encode(m).map_err(|e| e.to_string())?;
        let k = key(m.dst_sap, m.seq);
        self.queue.insert(k, v.clone()).map_err(|e| e.to_string())?;
        self.store
            .replicate(&self.queue, false, vec![(k.to_vec(), Some(v))]);
        Ok(())
    }

    /// Answer the message of `h` (just `put`) on `outbox` once it is on disk.
    pub fn confirm_when_flushed(&self, h: &Header, outbox: Arc<Outbox>) {
        if let Err(e) = self.confirms.send(Confirm { h: *h, outbox }) {
            let Confirm { h, outbox } = e.0;
            let f = Frame::error_to(&h, 0, "persistent queue flush failed: no flusher thread");
            outbox.push(&f.header, &f.payload);
        }
    }

    pub fn remove(&self, sap: u32, seq: u64) {
        let k = key(sap, seq);
        if let Err(e) = self.queue.remove(k) {
            tracing::error!("mts/queue remove: {e}");
        }
        self.store
            .replicate(&self.queue, false, vec![(k.to_vec(), None)]);
    }

    /// Every persistent message of a SAP, oldest first.
    pub fn load(&self, sap: u32) -> Vec<Msg> {
        self.queue
            .scan_prefix(sap.to_be_bytes())
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| mts::codec::decode(&v).ok())
            .collect()
    }

    pub fn drop_sap(&self, sap: u32) {
        for k in self
            .queue
            .scan_prefix(sap.to_be_bytes())
            .keys()
            .filter_map(|k| k.ok())
        {
            let _ = self.queue.remove(&k);
            self.store
                .replicate(&self.queue, false, vec![(k.to_vec(), None)]);
        }
    }

    pub fn put_dead(&self, d: &DeadLetter) {
        match mts::codec::encode(d) {
            Ok(v) => {
                if let Err(e) = self.dead.insert(d.seq.to_be_bytes(), v.clone()) {
                    tracing::error!("mts/dead insert: {e}");
                }
                self.store.replicate(
                    &self.dead,
                    false,
                    vec![(d.seq.to_be_bytes().to_vec(), Some(v))],
                );
                self.flusher.dirty();
            }
            Err(e) => tracing::error!("mts/dead encode: {e}"),
        }
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| mts::codec::decode(&v).ok())
            .collect()
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
