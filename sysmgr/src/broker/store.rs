//! Persistent MTS queues and dead letters in the supervisor's sled database.

use super::{DeadLetter, Msg};

/// `mts/queue`: key = SAP (4 bytes BE) + seq (8 bytes BE), value = the encoded [`Msg`].
/// `mts/dead`: key = seq, value = the encoded [`DeadLetter`].
#[derive(Clone)]
pub struct QueueStore {
    store: pss::Store,
    queue: sled::Tree,
    dead: sled::Tree,
    /// Dead letters are written on the supervisor's thread while a restart waits.
    flusher: crate::flusher::Flusher,
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
        Ok(QueueStore {
            store: store.clone(),
            queue: store.tree("mts/queue")?,
            dead: store.tree("mts/dead")?,
            flusher,
        })
    }

    pub fn next_id(&self) -> Result<u64, sled::Error> {
        self.store.next_id()
    }

    pub fn put(&self, m: &Msg) -> Result<(), String> {
        let v = mts::codec::encode(m).map_err(|e| e.to_string())?;
        let k = key(m.dst_sap, m.seq);
        self.queue.insert(k, v.clone()).map_err(|e| e.to_string())?;
        self.store
            .replicate(&self.queue, false, vec![(k.to_vec(), Some(v))]);
        Ok(())
    }

    /// On disk, and applied by the standby supervisor when there is one.
    pub fn flush(&self) -> Result<(), String> {
        self.store.flush().map_err(|e| e.to_string())?;
        if self.store.wait_replicated() == pss::Replicated::GaveUp {
            standby_gave_up();
        }
        Ok(())
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

/// A durable write waited for the standby longer than `dead-after`: the link was dropped, and
/// the standby copies everything again when it reconnects.
pub fn standby_gave_up() {
    crate::syslog::err(
        2,
        "REPLICATION_STALLED",
        "The standby supervisor did not acknowledge a durable write in time; the replication link restarts with a full copy.",
    );
}
