//! A connection's outgoing bytes: the broker appends whole frames, one writer task drains them
//! ([`mts::outbox`]: frames routed while the writer is in `write_all` join its next single
//! write), and the PSS threads write their answers straight into the socket when it is free.

use std::ops::Deref;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Delivery to a connection pauses while this much is waiting to be written; the messages stay
/// in their queue (where the queue limits apply) until the writer catches up.
pub const HIGH_WATER: usize = 4 << 20;

/// [`mts::outbox::Outbox`] (queued frames, the writer's batching, direct writes of answers)
/// with the broker's flow control on top.
#[derive(Default)]
pub struct Outbox {
    inner: mts::outbox::Outbox,
    /// Delivery stopped at the high-water mark and must be resumed once drained.
    throttled: AtomicBool,
}

impl Deref for Outbox {
    type Target = mts::outbox::Outbox;
    fn deref(&self) -> &mts::outbox::Outbox {
        &self.inner
    }
}

impl Outbox {
    /// An outbox that may write answers straight into `socket`.
    pub fn new(socket: &impl AsFd) -> Outbox {
        Outbox {
            inner: mts::outbox::Outbox::new(socket),
            throttled: AtomicBool::new(false),
        }
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
}
