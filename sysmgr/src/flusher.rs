//! Flushes the supervisor's database on a thread of its own.
//!
//! The supervisor's thread also runs the broker that a restarting service reconnects through.
//! An fsync there held every restart behind the disk: 0.6 ms median on this machine, but 20 ms
//! at p90 and up to 160 ms while the disk writes back other files, more than a BFD Detection
//! Time. What the supervisor's thread writes (process log, core records, dead letters) is in
//! the database at once and on disk one flush later; a reader that must only see what is on
//! disk (`show processes log`) waits for that flush without blocking the thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tokio::sync::watch;

/// A handle on the flusher thread; clones share it. The thread ends with the last handle.
#[derive(Clone)]
pub struct Flusher {
    store: pss::Store,
    /// Writes announced so far.
    written: Arc<AtomicU64>,
    /// The number of announced writes the last completed flush covered.
    flushed: watch::Receiver<u64>,
    /// At most one wake-up waits: a flush that has not started yet covers every write before it.
    poke: SyncSender<()>,
}

impl Flusher {
    pub fn start(store: &pss::Store) -> Flusher {
        let (poke, wake) = sync_channel(1);
        let (done, flushed) = watch::channel(0);
        let written = Arc::new(AtomicU64::new(0));
        let (s, w) = (store.clone(), written.clone());
        if let Err(e) = std::thread::Builder::new()
            .name("db-flush".into())
            .spawn(move || run(&s, &w, &wake, &done))
        {
            // Without the thread, writes are still flushed by sled every 500 ms and at exit.
            tracing::error!(error = %e, "cannot start the database flusher thread");
        }
        Flusher {
            store: store.clone(),
            written,
            flushed,
            poke,
        }
    }

    /// Something was written to the database: have it flushed soon.
    pub fn dirty(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
        match self.poke.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::error!("the database flusher thread is gone");
            }
        }
    }

    /// Resolves once everything announced before this call is on disk (or the flusher stopped).
    pub fn synced(&self) -> impl Future<Output = ()> + Send + 'static {
        let target = self.written.load(Ordering::SeqCst);
        let mut rx = self.flushed.clone();
        async move {
            let _ = rx.wait_for(|f| *f >= target).await;
        }
    }

    /// Flush on the calling thread (on the way out, when nothing else is left to serve).
    pub fn sync_now(&self) -> Result<(), sled::Error> {
        self.store.flush().map(|_| ())
    }
}

fn run(store: &pss::Store, written: &AtomicU64, wake: &Receiver<()>, done: &watch::Sender<u64>) {
    while wake.recv().is_ok() {
        // Read before flushing: every write counted here was applied before it was counted.
        let upto = written.load(Ordering::SeqCst);
        if let Err(e) = store.flush() {
            // The database watchdog reports a flush that stalls; a failed one is reported here,
            // and readers are not kept waiting on it.
            tracing::error!(error = %e, "database flush failed");
        }
        done.send_replace(upto);
    }
}

/// A group commit on the calling thread: every item waiting when a flush starts shares it, then
/// each is answered with the flush's result. Returns when the senders are gone.
pub fn group_commit<T>(
    held: &Receiver<T>,
    flush: impl Fn() -> Result<(), String>,
    mut answer: impl FnMut(T, &Result<(), String>),
) {
    while let Ok(first) = held.recv() {
        let mut batch = vec![first];
        batch.extend(held.try_iter());
        let r = flush();
        for item in batch {
            answer(item, &r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn synced_waits_for_a_flush_that_covers_every_earlier_write() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(d.path()).expect("open");
        let f = Flusher::start(&store);
        // Nothing written: nothing to wait for.
        f.synced().await;
        let t = store.tree("t").expect("tree");
        for i in 0u32..100 {
            t.insert(i.to_be_bytes(), &[7u8; 100][..]).expect("insert");
            f.dirty();
        }
        let wait = f.synced();
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("flushed");
        assert!(*f.flushed.borrow() >= 100);
    }
}
