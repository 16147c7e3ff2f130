//! A connection's outgoing bytes: the broker appends whole frames, one writer task drains them.
//!
//! Appending under a mutex and waking the writer with a stored permit batches naturally: while
//! the writer is in `write_all`, every frame routed meanwhile joins the next single write.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use mts::frame::Header;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    notify: Notify,
    closed: AtomicBool,
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

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Bytes waiting (for tests and `show`).
    pub fn pending_bytes(&self) -> usize {
        self.buf.lock().map(|b| b.len()).unwrap_or(0)
    }
}
