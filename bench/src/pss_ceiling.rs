//! The transport's ceiling for the PSS benchmark: a server process that stores nothing.
//!
//! Each writer sends what a checkpoint write carries (a 90 B key and a 4 KB value, framed) over
//! a Unix socket and waits for an 8-byte answer, as PSS's writers do; the server reads it and
//! answers at once. No store, no log, no broker: what any server that acknowledges each write
//! over a socket pays on this machine, and so the most that PSS (or Redis) could reach here.
//! Two servers: one thread reading every connection through `poll` (Redis's design), and a
//! thread per connection (both vCPUs serve).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pss::{KEY_LEN, Numbers, Reaped, VALUE_LEN, key, summarize, threads_tput};

const ANSWER: [u8; 8] = [1, 0, 0, 0, 0, 0, 0, 0];

/// Read one framed request (u32 length, then that many bytes) into `buf`. Ok(false): the
/// writer closed the connection.
fn read_request(s: &mut UnixStream, buf: &mut Vec<u8>) -> Result<bool> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > 1 << 20 {
        bail!("a request of {n} bytes");
    }
    buf.resize(n, 0);
    s.read_exact(buf)?;
    Ok(true)
}

/// `pss-ceiling-server SOCKET threads|poll`: the storeless server.
pub fn server(mut args: impl Iterator<Item = String>) -> Result<()> {
    let path = args.next().context("socket path")?;
    let mode = args.next().context("threads or poll")?;
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    match mode.as_str() {
        "threads" => {
            for conn in listener.incoming() {
                let mut s = conn?;
                std::thread::spawn(move || -> Result<()> {
                    let mut buf = Vec::new();
                    while read_request(&mut s, &mut buf)? {
                        s.write_all(&ANSWER)?;
                    }
                    Ok(())
                });
            }
            Ok(())
        }
        "poll" => poll_server(listener),
        other => bail!("unknown server mode {other}"),
    }
}

/// One thread, every connection through `poll`; a connection's request is read whole once it
/// starts arriving (the writer sends it in one call).
fn poll_server(listener: UnixListener) -> Result<()> {
    use std::os::fd::AsFd;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    listener.set_nonblocking(true)?;
    let mut conns: Vec<UnixStream> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let ready: Vec<bool> = {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                conns
                    .iter()
                    .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
            );
            poll(&mut fds, PollTimeout::NONE)?;
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut closed = Vec::new();
        for (i, c) in conns.iter_mut().enumerate() {
            if !ready[i + 1] {
                continue;
            }
            if read_request(c, &mut buf)? {
                c.write_all(&ANSWER)?;
            } else {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            conns.remove(i);
        }
        if ready[0] {
            while let Ok((c, _)) = listener.accept() {
                c.set_nonblocking(false)?;
                conns.push(c);
            }
        }
    }
}

fn put(s: &mut UnixStream, req: &mut Vec<u8>, k: &str, v: &[u8]) -> Result<()> {
    req.clear();
    req.extend_from_slice(&((k.len() + v.len()) as u32).to_le_bytes());
    req.extend_from_slice(k.as_bytes());
    req.extend_from_slice(v);
    s.write_all(req)?;
    let mut answer = [0u8; 8];
    s.read_exact(&mut answer)?;
    Ok(())
}

fn start(dir: &Path, mode: &str) -> Result<(Reaped, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("ceiling-{mode}.sock"));
    let child = Command::new(std::env::current_exe()?)
        .arg("pss-ceiling-server")
        .arg(&path)
        .arg(mode)
        .stdout(Stdio::null())
        .spawn()?;
    let server = Reaped(child);
    let end = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&path).is_err() {
        if Instant::now() > end {
            bail!("the ceiling server did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((server, path))
}

/// One writer's latencies, then 16 writers' throughput, against one server design.
fn run_one(dir: &Path, mode: &str, n1: usize, n16: usize) -> Result<Numbers> {
    let (_server, path) = start(dir, mode)?;
    let value = vec![0x42u8; VALUE_LEN];
    let mut req = Vec::with_capacity(4 + KEY_LEN + VALUE_LEN);
    let mut s = UnixStream::connect(&path)?;
    let mut lat = Vec::with_capacity(n1);
    for i in 0..n1 {
        let t = Instant::now();
        put(&mut s, &mut req, &key(0, i), &value)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(s);
    let tput = threads_tput(n16, |w| {
        let mut s = UnixStream::connect(&path)?;
        let mut req = Vec::with_capacity(4 + KEY_LEN + VALUE_LEN);
        for i in 0..n16 {
            put(&mut s, &mut req, &key(w, i), &value)?;
        }
        Ok(())
    })?;
    Ok(summarize(lat, tput))
}

/// The two designs' numbers.
pub struct Ceiling {
    pub poll: Numbers,
    pub threads: Numbers,
}

/// Both designs, one after the other.
pub fn run(dir: &Path, n1: usize, n16: usize) -> Result<Ceiling> {
    Ok(Ceiling {
        poll: run_one(dir, "poll", n1, n16)?,
        threads: run_one(dir, "threads", n1, n16)?,
    })
}
