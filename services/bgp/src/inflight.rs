//! Which UPDATE was being applied when the speaker died (DESIGN.md §4.5).
//!
//! A memfd kept in sysmgr's fd store, mapped shared: before applying a message the speaker
//! stores its stream offset in its peer's slot, after it clears it. Two stores per message, no
//! system call; the page outlives the process because sysmgr holds the descriptor, so the next
//! instance reads exactly what was in flight. A message in flight at two consecutive crashes
//! is poison.
//!
//! Slot layout (4 × u64): peer address (0 = free), in-flight offset ([`NONE`] = none),
//! offset in flight at the last crash, consecutive crashes with that offset in flight.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

pub const NONE: u64 = u64::MAX;
const SLOTS: usize = 256;
const WORDS: usize = 4;
const MAGIC: u64 = 0x6267_7069_6e66_6c31; // "bgpinfl1"
const LEN: usize = (1 + SLOTS * WORDS) * 8;

pub struct Inflight {
    fd: OwnedFd,
    map: *mut AtomicU64,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Inflight {}
unsafe impl Sync for Inflight {}

/// A peer whose message was in flight at the last crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect {
    pub peer: Ipv4Addr,
    pub offset: u64,
    /// Consecutive crashes with this message in flight (2 or more: poison).
    pub crashes: u64,
}

impl Inflight {
    /// A new page, or the previous instance's (from the fd store).
    pub fn open(previous: Option<OwnedFd>) -> std::io::Result<Inflight> {
        let fd = match previous {
            Some(fd) => fd,
            None => {
                // SAFETY: a NUL-terminated name; the new descriptor is ours.
                let raw =
                    unsafe { libc::memfd_create(c"bgp-inflight".as_ptr(), libc::MFD_CLOEXEC) };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: just created, owned by nobody else.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: plain ftruncate on our descriptor.
                if unsafe { libc::ftruncate(fd.as_raw_fd(), LEN as libc::off_t) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                fd
            }
        };
        // SAFETY: a shared mapping of LEN bytes of a file at least that long (checked below
        // for a handed-back one by the magic; a short file would fault, so check its size).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if (st.st_size as usize) < LEN {
            return Err(std::io::Error::other("in-flight page too short"));
        }
        // SAFETY: see above.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let me = Inflight { fd, map: p.cast() };
        if me.word(0).load(Ordering::Relaxed) != MAGIC {
            for i in 0..SLOTS {
                me.clear_slot(i);
            }
            me.word(0).store(MAGIC, Ordering::Release);
        }
        Ok(me)
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < 1 + SLOTS * WORDS);
        // SAFETY: in bounds of the live mapping; AtomicU64 has the alignment of the page.
        unsafe { &*self.map.add(i) }
    }

    fn slot(&self, i: usize, w: usize) -> &AtomicU64 {
        self.word(1 + i * WORDS + w)
    }

    fn clear_slot(&self, i: usize) {
        self.slot(i, 0).store(0, Ordering::Relaxed);
        self.slot(i, 1).store(NONE, Ordering::Relaxed);
        self.slot(i, 2).store(NONE, Ordering::Relaxed);
        self.slot(i, 3).store(0, Ordering::Relaxed);
    }

    fn find(&self, peer: Ipv4Addr) -> Option<usize> {
        let key = u64::from(u32::from(peer)) + 1;
        (0..SLOTS).find(|&i| self.slot(i, 0).load(Ordering::Relaxed) == key)
    }

    /// The slot of `peer` (taken if it has none); None when every slot is taken.
    pub fn slot_of(&self, peer: Ipv4Addr) -> Option<usize> {
        if let Some(i) = self.find(peer) {
            return Some(i);
        }
        let key = u64::from(u32::from(peer)) + 1;
        let i = (0..SLOTS).find(|&i| self.slot(i, 0).load(Ordering::Relaxed) == 0)?;
        self.clear_slot(i);
        self.slot(i, 0).store(key, Ordering::Release);
        Some(i)
    }

    /// A new connection: its offsets have nothing to do with the last one's.
    pub fn reset(&self, peer: Ipv4Addr) {
        if let Some(i) = self.find(peer) {
            self.clear_slot(i);
            self.slot(i, 0)
                .store(u64::from(u32::from(peer)) + 1, Ordering::Release);
        }
    }

    /// About to apply the message at `offset` from the peer of slot `i`.
    #[inline]
    pub fn begin(&self, i: usize, offset: u64) {
        self.slot(i, 1).store(offset, Ordering::Release);
    }

    /// Done with it.
    #[inline]
    pub fn end(&self, i: usize) {
        self.slot(i, 1).store(NONE, Ordering::Release);
    }

    /// At start after a crash: count, per peer, the crashes in a row that had the same message
    /// in flight, and clear the in-flight marks. Returns the peers with something in flight.
    pub fn after_crash(&self) -> Vec<Suspect> {
        let mut v = Vec::new();
        for i in 0..SLOTS {
            let key = self.slot(i, 0).load(Ordering::Acquire);
            if key == 0 {
                continue;
            }
            let now = self.slot(i, 1).swap(NONE, Ordering::AcqRel);
            if now == NONE {
                self.slot(i, 2).store(NONE, Ordering::Relaxed);
                self.slot(i, 3).store(0, Ordering::Relaxed);
                continue;
            }
            let crashes = if self.slot(i, 2).load(Ordering::Relaxed) == now {
                self.slot(i, 3).load(Ordering::Relaxed) + 1
            } else {
                1
            };
            self.slot(i, 2).store(now, Ordering::Relaxed);
            self.slot(i, 3).store(crashes, Ordering::Relaxed);
            v.push(Suspect {
                peer: Ipv4Addr::from((key - 1) as u32),
                offset: now,
                crashes,
            });
        }
        v
    }

    /// The quarantined message is behind us: forget its crash count.
    pub fn forgive(&self, peer: Ipv4Addr) {
        if let Some(i) = self.find(peer) {
            self.slot(i, 2).store(NONE, Ordering::Relaxed);
            self.slot(i, 3).store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        // SAFETY: the mapping made in open, unmapped once.
        unsafe {
            libc::munmap(self.map.cast(), LEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_in_flight_at_two_crashes_in_a_row_is_counted_twice() {
        let a = Inflight::open(None).expect("memfd");
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let i = a.slot_of(peer).expect("slot");
        a.begin(i, 4096);
        // The process dies here; the next one maps the same page.
        let fd = a.fd().try_clone().expect("dup");
        drop(a);
        let b = Inflight::open(Some(fd)).expect("reopen");
        assert_eq!(
            b.after_crash(),
            [Suspect {
                peer,
                offset: 4096,
                crashes: 1
            }]
        );
        let i = b.slot_of(peer).expect("slot");
        b.begin(i, 4096);
        assert_eq!(b.after_crash()[0].crashes, 2);
        // A crash with nothing in flight breaks the run.
        assert!(b.after_crash().is_empty());
        b.begin(i, 4096);
        assert_eq!(b.after_crash()[0].crashes, 1);
        b.begin(i, 9000);
        b.end(i);
        assert!(b.after_crash().is_empty());
    }
}
