//! Service stdout/stderr: read from pipes, written to size-capped files in the data dir.
//!
//! Each stream goes to `logs/<service>.<stream>.log`; past the cap the file rotates to `.1`
//! (one generation kept). The last stderr lines are kept in memory for core records.
//!
//! The pipes are read on the supervisor's thread; the files are written by one [`LogWriter`]
//! thread. A log file that blocks (a stalled or full disk, a FIFO nobody reads) holds that
//! thread, never the supervisor's, which goes on reaping and restarting. What services write
//! meanwhile waits in memory up to [`CHUNKS`] reads, then is dropped, counted, and the file
//! says how much when it takes writes again; the service itself is never held up.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

/// Reads (up to 64 KB each) waiting for the log writer before output is dropped.
pub const CHUNKS: usize = 256;

/// Lines of stderr kept for a core record.
pub const TAIL_LINES: usize = 20;

/// A size-capped log file.
pub struct CappedFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl CappedFile {
    pub fn new(path: PathBuf, max: u64) -> CappedFile {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        CappedFile {
            path,
            file: None,
            size,
            max,
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        if self.size + data.len() as u64 > self.max && self.size > 0 {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, old);
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = &mut self.file
            && f.write_all(data).is_ok()
        {
            self.size += data.len() as u64;
        }
    }
}

/// The last lines of a stream.
#[derive(Default)]
pub struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                if self.lines.len() == TAIL_LINES {
                    self.lines.pop_front();
                }
                self.lines.push_back(line);
            } else if self.partial.len() < 4096 {
                self.partial.push(b);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            v.push(String::from_utf8_lossy(&self.partial).into_owned());
        }
        v
    }
}

/// One stream's log file and what was dropped on its way there.
pub struct LogSink {
    /// The file's path, outside the lock a blocked writer holds (for the drop warning).
    path: PathBuf,
    file: Mutex<CappedFile>,
    /// Bytes read from the service and dropped because the writer was behind.
    dropped: AtomicU64,
}

impl LogSink {
    pub fn new(path: PathBuf, max: u64) -> LogSink {
        LogSink {
            file: Mutex::new(CappedFile::new(path.clone(), max)),
            path,
            dropped: AtomicU64::new(0),
        }
    }
}

/// A read for a file: the sink, the bytes dropped since the sink's previous chunk, the data.
type Chunk = (Arc<LogSink>, u64, Vec<u8>);

/// The thread that writes services' output to their files (see the module's doc).
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Chunk>,
}

impl LogWriter {
    /// A writer thread that holds up to `chunks` reads before dropping.
    pub fn start(chunks: usize) -> LogWriter {
        let (tx, rx) = sync_channel::<Chunk>(chunks);
        let run = move || {
            while let Ok((sink, lost, data)) = rx.recv() {
                let mut f = sink.file.lock().unwrap_or_else(|p| p.into_inner());
                if lost > 0 {
                    f.write(
                        format!(
                            "\n[sysmgr: {lost} bytes of this service's output dropped: its log file did not take writes fast enough]\n"
                        )
                        .as_bytes(),
                    );
                }
                f.write(&data);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("svc-logs".into())
            .spawn(run)
        {
            // Without the thread every chunk is counted as dropped: output is lost, the
            // supervisor is not held up.
            tracing::error!(error = %e, "cannot start the service log writer thread");
        }
        LogWriter { tx }
    }

    /// The process's writer, started at first use.
    pub fn global() -> &'static LogWriter {
        static W: OnceLock<LogWriter> = OnceLock::new();
        W.get_or_init(|| LogWriter::start(CHUNKS))
    }

    /// Queue `data` for `sink`'s file (true), or drop and count it when the writer is behind.
    /// A queued chunk carries the count of what was dropped before it, so the file says so
    /// where it happened.
    pub fn send(&self, sink: &Arc<LogSink>, data: &[u8]) -> bool {
        let lost = sink.dropped.swap(0, Ordering::Relaxed);
        if self
            .tx
            .try_send((sink.clone(), lost, data.to_vec()))
            .is_ok()
        {
            return true;
        }
        sink.dropped
            .fetch_add(lost + data.len() as u64, Ordering::Relaxed);
        if lost == 0 {
            tracing::warn!(
                path = %sink.path.display(),
                "service output dropped: its log file does not take writes fast enough"
            );
        }
        false
    }
}

/// The per-service log files, shared by all instances of the service.
pub struct ServiceLogs {
    pub stdout: Arc<LogSink>,
    pub stderr: Arc<LogSink>,
}

impl ServiceLogs {
    pub fn new(dir: &Path, service: &str, max: u64) -> ServiceLogs {
        ServiceLogs {
            stdout: Arc::new(LogSink::new(dir.join(format!("{service}.stdout.log")), max)),
            stderr: Arc::new(LogSink::new(dir.join(format!("{service}.stderr.log")), max)),
        }
    }
}

/// Copy a pipe to a capped file (through the [`LogWriter`]) until EOF; `done` flips to true
/// at EOF.
pub fn pump(
    read: OwnedFd,
    sink: Arc<LogSink>,
    tail: Option<Arc<Mutex<Tail>>>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&read),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    tokio::spawn(async move {
        let Ok(afd) = crate::async_fd(read) else {
            let _ = tx.send(true);
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Ok(mut guard) = afd.readable().await else {
                break;
            };
            match guard.try_io(|fd| {
                nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()), &mut buf)
                    .map_err(std::io::Error::from)
            }) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    LogWriter::global().send(&sink, &buf[..n]);
                    if let Some(t) = &tail
                        && let Ok(mut t) = t.lock()
                    {
                        t.push(&buf[..n]);
                    }
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => break,
                Err(_would_block) => {}
            }
        }
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn a_blocked_log_file_holds_the_writer_not_the_sender_and_says_what_was_dropped() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f.log");
        // A FIFO nobody reads: opening it for writing blocks the writer thread.
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let w = LogWriter::start(1);
        let sink = Arc::new(LogSink::new(p.clone(), 1 << 20));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (w2, s2) = (w.clone(), sink.clone());
        std::thread::spawn(move || {
            let queued = (0..10)
                .filter(|i| w2.send(&s2, format!("c{i}\n").as_bytes()))
                .count();
            let _ = done_tx.send(queued);
        });
        let queued = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("sending never waits for the file");
        // One read taken by the blocked thread, at most one waiting: the rest dropped. What was
        // dropped is counted in the sink, or carried by the second queued chunk when the
        // thread took the first only after some were dropped: the file's marker says it (below).
        assert!(queued <= 2, "{queued}");

        let (text_tx, text_rx) = std::sync::mpsc::channel();
        let reader = p.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(reader).expect("open the FIFO");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("after") {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = text_tx.send(String::from_utf8_lossy(&got).into_owned());
        });
        // The file takes writes again: the writer drains, and a later write is queued.
        let mut refused = 0u64;
        while !w.send(&sink, b"after\n") {
            refused += 1;
            assert!(refused < 1000, "the writer never drained");
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = text_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer goes on once the file takes writes");
        assert!(text.starts_with("c0\n"), "{text:?}");
        assert!(text.ends_with("after\n"), "{text:?}");
        // Every byte sent is in the file or counted in a marker written before the next write.
        let kept = text.lines().filter(|l| l.starts_with('c')).count() as u64;
        let said: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("[sysmgr: "))
            .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(queued as u64, kept, "{text:?}");
        assert_eq!(3 * kept + said, 30 + 6 * refused, "{text:?}");
    }

    #[test]
    fn capped_file_rotates() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.log");
        let mut f = CappedFile::new(p.clone(), 100);
        for _ in 0..30 {
            f.write(b"0123456789");
        }
        assert!(std::fs::metadata(&p).expect("log").len() <= 100);
        assert!(
            std::fs::metadata(d.path().join("x.log.1"))
                .expect("rotated")
                .len()
                <= 100
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        let mut t = Tail::default();
        for i in 0..30 {
            t.push(format!("line {i}\n").as_bytes());
        }
        t.push(b"partial");
        let s = t.snapshot();
        assert_eq!(s.len(), TAIL_LINES + 1);
        assert_eq!(s[0], "line 10");
        assert_eq!(s.last().map(String::as_str), Some("partial"));
    }
}
