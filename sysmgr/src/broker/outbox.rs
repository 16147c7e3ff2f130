//! A connection's outgoing bytes: the broker appends whole frames, one writer task drains them.
//!
//! Appending under a mutex and waking the writer with a stored permit batches naturally: while
//! the writer is in `write_all`, every frame routed meanwhile joins the next single write.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use mts::frame::Header;
use tokio::sync::Notify;

/// Delivery to a connection pauses while this much is waiting to be written; the messages stay
/// in their queue (where the queue limits apply) until the writer catches up.
pub const HIGH_WATER: usize = 4 << 20;

#[derive(Default)]
pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    notify: Notify,
    closed: AtomicBool,
    /// Delivery stopped at the high-water mark and must be resumed once drained.
    throttled: AtomicBool,
}

impl Outbox {
    /// Queue one frame for writing.
    pub fn push(&self, header: &Header, payload: &[u8]) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut h = *header;
        h.len = payload.len() as u32;
        if let Ok(mut b) = self.buf.lock() {
            b.extend_from_slice(&h.encode());
            b.extend_from_slice(payload);
        }
        self.notify.notify_one();
    }

    /// Everything queued so far (empty when nothing is).
    pub fn take(&self, spare: Vec<u8>) -> Vec<u8> {
        match self.buf.lock() {
            Ok(mut b) => std::mem::replace(&mut *b, spare),
            Err(_) => Vec::new(),
        }
    }

    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Room for more deliveries? If not, remember to resume.
    pub fn has_room(&self) -> bool {
        let room = self.pending_bytes() < HIGH_WATER;
        if !room {
            self.throttled.store(true, Ordering::Relaxed);
        }
        room
    }

    /// True once after delivery was throttled.
    pub fn take_throttled(&self) -> bool {
        self.throttled.swap(false, Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Bytes waiting (for tests and `show`).
    pub fn pending_bytes(&self) -> usize {
        self.buf.lock().map(|b| b.len()).unwrap_or(0)
    }
}
