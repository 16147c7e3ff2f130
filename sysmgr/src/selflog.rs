//! sysmgr's own output (its tracing log and the LOG_ERR lines), written to stderr by a thread of
//! its own.
//!
//! stderr may be a file on a stalled disk or a pipe nobody drains (a stuck journal): written
//! from the supervisor's thread, the next log line held that thread, and with it every restart
//! and the CLI. Lines wait in memory up to [`LINES`], then are dropped and counted; the next
//! line that gets through is preceded by how many.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// Lines waiting for stderr before they are dropped.
pub const LINES: usize = 4096;

enum Msg {
    /// Lines dropped just before this one, and the line.
    Line(u64, Vec<u8>),
    /// Answer once everything before is written.
    Flush(SyncSender<()>),
}

struct Out {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

fn out() -> &'static Out {
    static OUT: OnceLock<Out> = OnceLock::new();
    OUT.get_or_init(|| {
        let (tx, rx) = sync_channel(LINES);
        // Without the thread every line is counted as dropped; nothing blocks.
        let _ = std::thread::Builder::new()
            .name("stderr".into())
            .spawn(move || run(&rx, &mut std::io::stderr()));
        Out {
            tx,
            dropped: AtomicU64::new(0),
        }
    })
}

fn run(rx: &Receiver<Msg>, w: &mut impl Write) {
    while let Ok(m) = rx.recv() {
        match m {
            Msg::Line(lost, b) => {
                if lost > 0 {
                    let _ = writeln!(
                        w,
                        "[sysmgr: {lost} lines of its own log dropped: stderr did not take writes]"
                    );
                }
                let _ = w.write_all(&b);
            }
            Msg::Flush(done) => {
                let _ = w.flush();
                let _ = done.send(());
            }
        }
    }
}

/// Queue one line (with its newline) for stderr, or drop and count it.
pub fn line(bytes: Vec<u8>) {
    let o = out();
    let lost = o.dropped.swap(0, Ordering::Relaxed);
    if o.tx.try_send(Msg::Line(lost, bytes)).is_err() {
        o.dropped.fetch_add(lost + 1, Ordering::Relaxed);
    }
}

/// Wait up to `limit` for every queued line to be written (before exit or re-exec).
pub fn flush(limit: Duration) {
    let end = Instant::now() + limit;
    let (done, wait) = sync_channel(1);
    let mut m = Msg::Flush(done);
    loop {
        match out().tx.try_send(m) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < end => {
                m = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = wait.recv_timeout(end.saturating_duration_since(Instant::now()));
}

/// A `tracing_subscriber` writer: each event is formatted into a buffer, queued whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

/// One event's text; queued when tracing drops it.
pub struct EventBuf(Vec<u8>);

impl Write for EventBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuf {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            line(std::mem::take(&mut self.0));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = EventBuf;
    fn make_writer(&'a self) -> EventBuf {
        EventBuf(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_order_and_a_drop_is_said_before_the_next_line() {
        let (tx, rx) = sync_channel(8);
        tx.send(Msg::Line(0, b"one\n".to_vec())).expect("send");
        tx.send(Msg::Line(3, b"two\n".to_vec())).expect("send");
        let (done, wait) = sync_channel(1);
        tx.send(Msg::Flush(done)).expect("send");
        drop(tx);
        let mut out = Vec::new();
        run(&rx, &mut out);
        wait.recv().expect("flushed");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "one\n[sysmgr: 3 lines of its own log dropped: stderr did not take writes]\ntwo\n"
        );
    }
}
