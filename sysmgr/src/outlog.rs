//! Service stdout/stderr: read from pipes, written to size-capped files in the data dir.
//!
//! Each stream goes to `logs/<service>.<stream>.log`; past the cap the file rotates to `.1`
//! (one generation kept). The last stderr lines are kept in memory for core records.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

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

/// The per-service log files, shared by all instances of the service.
pub struct ServiceLogs {
    pub stdout: Arc<Mutex<CappedFile>>,
    pub stderr: Arc<Mutex<CappedFile>>,
}

impl ServiceLogs {
    pub fn new(dir: &Path, service: &str, max: u64) -> ServiceLogs {
        ServiceLogs {
            stdout: Arc::new(Mutex::new(CappedFile::new(
                dir.join(format!("{service}.stdout.log")),
                max,
            ))),
            stderr: Arc::new(Mutex::new(CappedFile::new(
                dir.join(format!("{service}.stderr.log")),
                max,
            ))),
        }
    }
}

/// Copy a pipe to a capped file until EOF; `done` flips to true at EOF.
pub fn pump(
    read: OwnedFd,
    sink: Arc<Mutex<CappedFile>>,
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
                    if let Ok(mut s) = sink.lock() {
                        s.write(&buf[..n]);
                    }
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
