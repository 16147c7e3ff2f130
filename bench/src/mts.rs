//! MTS benchmark: round-trip latency and one-way throughput through sysmgr's broker, against
//! the floor: a raw Unix-socket ping-pong between two processes speaking the same frames.
//!
//! The broker path crosses two sockets each way (client → sysmgr → service), the floor one, so
//! 2x the floor is the physical limit of a brokered round trip. Every path uses the same
//! blocking driver code; the receivers are `mts-echo` (a real sysmgr service on the async
//! `mts::client`), `mts-echo-blocking` (the same on `mts::blocking::Client`) and `floor-echo`
//! (a blocking loop on a raw socket). Runs alternate between the paths so machine noise hits
//! all of them.
//!
//! A third path anchors the round trip: `floor-relay`, a process that only copies bytes
//! between two sockets, in front of another `floor-echo`. It has the broker's shape (two
//! sockets each way, a process in the middle woken by both sides) and none of its work, so it
//! shows what that shape costs on the machine at hand, which the 2x above does not: on a VM
//! the cost of a round trip depends mostly on how many wake-ups cross CPUs.

use std::borrow::Cow;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mts::frame::{Flags, Frame, HEADER_LEN, Header};

use crate::restart::pct;

/// Ask the receiver how many one-way messages it counted since the last ask.
const OP_COUNT: u32 = 99;
/// Ask the receiver to bind the SAP named in the payload (one of `away1`...): the broker then
/// delivers what was queued for it.
const OP_BIND: u32 = 98;
/// SAPs the echo service declares but binds only when asked: `away1` = 101, ... (the first
/// half for messages without `NEEDS_ACK`, the second half for messages with it).
const AWAY_SAPS: u32 = 10;
const OP_DATA: u32 = 7;
const ECHO_SAP: u32 = 100;
/// The blocking client's echo service (`mts-echo-blocking`).
const ECHOB_SAP: u32 = 150;

fn read_frame(r: &mut impl Read) -> Result<Frame> {
    Ok(mts::io::read_frame(r, mts::frame::DEFAULT_MAX_PAYLOAD)?)
}

/// `mts-echo`: the receiver service, run by sysmgr (binds SAP `echo`).
pub fn echo() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = mts::client::Client::connect_from_env().await?;
        c.bind("echo").await?;
        let _ = mts::notify::notify("READY=1");
        let mut count: u64 = 0;
        while let Some(m) = c.recv().await {
            if m.is_request() && m.header.opcode == OP_BIND {
                let name = String::from_utf8_lossy(&m.payload).into_owned();
                c.bind(&name).await?;
                c.respond_raw(&m, &[]);
            } else if let Some(answer) = echo_step(&m, &mut count) {
                c.respond_raw(&m, &answer);
            } else if m.needs_ack() {
                c.ack(&[m.id()]);
            }
        }
        Ok(())
    })
}

/// `mts-echo-blocking`: the receiver service on the blocking `mts::blocking::Client` (binds
/// SAP `echob`; requests and counts only).
pub fn echo_blocking() -> Result<()> {
    let mut c = mts::blocking::Client::connect_from_env()?;
    c.bind("echob")?;
    let _ = mts::notify::notify("READY=1");
    let mut count: u64 = 0;
    loop {
        let m = match c.recv() {
            Ok(m) => m,
            Err(mts::MtsError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Some(answer) = echo_step(&m, &mut count) {
            c.respond_raw(&m, &answer)?;
        } else if m.needs_ack() {
            c.ack(&[m.id()]);
        }
    }
}

/// What both echo services do with a message (`OP_BIND` aside): a request is answered with
/// its own payload, or for `OP_COUNT` with the one-way messages counted since the last one; a
/// one-way message is counted, and None returned (the caller acks it if it asks).
fn echo_step<'m>(m: &'m mts::client::Incoming, count: &mut u64) -> Option<Cow<'m, [u8]>> {
    if !m.is_request() {
        *count += 1;
        return None;
    }
    if m.header.opcode == OP_COUNT {
        let answer = count.to_be_bytes().to_vec();
        *count = 0;
        return Some(Cow::Owned(answer));
    }
    Some(Cow::Borrowed(&m.payload))
}

/// `floor-echo PATH`: the same receiver over one raw socket, blocking.
pub fn floor_echo(path: &Path) -> Result<()> {
    let s = UnixStream::connect(path)?;
    let mut r = BufReader::with_capacity(256 * 1024, s.try_clone()?);
    let mut w = s;
    let mut count: u64 = 0;
    loop {
        let f = match read_frame(&mut r) {
            Ok(f) => f,
            Err(_) => return Ok(()),
        };
        if f.header.flags.has(Flags::REQUEST) {
            let body = if f.header.opcode == OP_COUNT {
                let b = count.to_be_bytes().to_vec();
                count = 0;
                b
            } else {
                f.payload.clone()
            };
            let resp = Frame::response_to(&f.header, 0, body);
            w.write_all(&resp.to_bytes())?;
        } else {
            count += 1;
        }
    }
}

/// `floor-relay UP DOWN`: the relay of the anchor row. It connects to UP (the driver),
/// takes one connection on DOWN (its own `floor-echo`), and copies bytes both ways from one
/// `poll(2)` loop: no frames, no routing, no queues. The shape of a brokered round trip (two
/// sockets each way, a process in the middle woken by both sides) with none of a broker's
/// work, so it measures what that shape costs on this machine.
pub fn floor_relay(up: &Path, down: &Path) -> Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let listener = UnixListener::bind(down)?;
    let mut a = UnixStream::connect(up)?;
    let (mut b, _) = listener.accept()?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut fds = [
            PollFd::new(a.as_fd(), PollFlags::POLLIN),
            PollFd::new(b.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = [fds[0].any() == Some(true), fds[1].any() == Some(true)];
        for (i, r) in ready.into_iter().enumerate() {
            if !r {
                continue;
            }
            let (from, to) = if i == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            let n = from.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            to.write_all(&buf[..n])?;
        }
    }
}

/// One path under test: a connected stream to its echo.
struct Path_ {
    name: &'static str,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    dst: u32,
    next: u64,
}

impl Path_ {
    fn new(name: &'static str, stream: UnixStream, dst: u32) -> Result<Path_> {
        let reader = BufReader::with_capacity(256 * 1024, stream.try_clone()?);
        Ok(Path_ {
            name,
            stream,
            reader,
            dst,
            next: 1,
        })
    }

    fn frame(&mut self, opcode: u32, flags: u8, payload: Vec<u8>) -> Frame {
        let mut f = Frame::request(mts::sap::CLI, self.dst, opcode, self.next, payload);
        self.next += 1;
        f.header.flags = Flags(flags);
        f
    }

    fn round_trip(&mut self, size: usize) -> Result<f64> {
        let f = self.frame(OP_DATA, Flags::REQUEST, vec![0xab; size]);
        let t = Instant::now();
        self.stream.write_all(&f.to_bytes())?;
        let r = read_frame(&mut self.reader)?;
        let el = t.elapsed().as_secs_f64() * 1e6;
        if r.header.reply_to != f.header.msg_id || r.payload.len() != size {
            bail!("{}: bad echo", self.name);
        }
        Ok(el)
    }

    /// A round trip the broker answers itself (LOOKUP): one hop through sysmgr, no service.
    fn broker_only(&mut self) -> Result<f64> {
        let mut f = self.frame(
            mts::proto::OP_LOOKUP,
            0,
            mts::codec::encode(&"echo".to_string())?,
        );
        f.header.dst_sap = mts::sap::BROKER;
        let t = Instant::now();
        self.stream.write_all(&f.to_bytes())?;
        let r = read_frame(&mut self.reader)?;
        let el = t.elapsed().as_secs_f64() * 1e6;
        if r.header.reply_to != f.header.msg_id {
            bail!("bad lookup answer");
        }
        Ok(el)
    }

    /// Send `n` one-way messages as fast as the socket takes them, then ask for the count:
    /// returns messages per second.
    fn throughput(&mut self, n: u64, size: usize, flags: u8) -> Result<f64> {
        let t = Instant::now();
        self.send_batched(self.dst, n, size, flags)?;
        let got = self.count()?;
        if got != n {
            bail!("{}: receiver counted {got} of {n}", self.name);
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }

    /// Write `n` one-way messages of `size` bytes to SAP `dst`, 256 frames a write.
    fn send_batched(&mut self, dst: u32, n: u64, size: usize, flags: u8) -> Result<()> {
        let batch = 256u64;
        let payload = vec![0x5a; size];
        let mut sent = 0;
        let mut buf = Vec::with_capacity((batch as usize) * (HEADER_LEN + size));
        while sent < n {
            buf.clear();
            let k = batch.min(n - sent);
            for _ in 0..k {
                let mut h: Header = self.frame(OP_DATA, flags, Vec::new()).header;
                (h.dst_sap, h.len) = (dst, size as u32);
                buf.extend_from_slice(&h.encode());
                buf.extend_from_slice(&payload);
            }
            self.stream.write_all(&buf)?;
            sent += k;
        }
        Ok(())
    }

    /// Send a request to the echo and wait for its answer (skipping nothing else: the driver's
    /// connection gets only answers).
    fn ask(&mut self, dst: u32, opcode: u32, flags: u8, payload: Vec<u8>) -> Result<Frame> {
        let mut q = self.frame(opcode, flags, payload);
        q.header.dst_sap = dst;
        self.stream.write_all(&q.to_bytes())?;
        loop {
            let r = read_frame(&mut self.reader)?;
            if r.header.flags.has(Flags::ERROR) {
                bail!("{}: {}", self.name, String::from_utf8_lossy(&r.payload));
            }
            if r.header.reply_to == q.header.msg_id {
                return Ok(r);
            }
        }
    }

    /// How many one-way messages the echo counted since the last ask.
    fn count(&mut self) -> Result<u64> {
        let r = self.ask(self.dst, OP_COUNT, Flags::REQUEST, Vec::new())?;
        let c: [u8; 8] = r
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .context("count")?;
        Ok(u64::from_be_bytes(c))
    }

    /// Persistent messages for a receiver that is away: `n` of `size` bytes to SAP `away`
    /// (declared, not bound), the last with CONFIRM, so all are in sled and on disk when it
    /// comes back. Then the echo binds `away` and the broker delivers them all; a last
    /// persistent CONFIRM message after the count is complete waits for the removals to be
    /// applied and flushed too. Returns (stored msgs/s, delivered msgs/s).
    fn away_then_back(
        &mut self,
        n: u64,
        size: usize,
        away: u32,
        name: &str,
        ack: u8,
    ) -> Result<(f64, f64)> {
        let payload = vec![0x5a; size];
        let t = Instant::now();
        self.send_batched(away, n - 1, size, Flags::PERSISTENT | ack)?;
        let confirm = Flags::PERSISTENT | Flags::CONFIRM | ack;
        self.ask(away, OP_DATA, confirm, payload.clone())?;
        let stored = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        self.ask(self.dst, OP_BIND, Flags::REQUEST, name.as_bytes().to_vec())?;
        let mut got = 0;
        while got < n {
            got += self.count()?;
            if got < n {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.ask(away, OP_DATA, confirm, payload)?;
        let back = n as f64 / t.elapsed().as_secs_f64();
        // The last one, counted.
        let end = Instant::now() + Duration::from_secs(10);
        while got < n + 1 {
            got += self.count()?;
            if Instant::now() > end {
                bail!("{}: receiver counted {got} of {}", self.name, n + 1);
            }
        }
        Ok((stored, back))
    }
}

struct Lab {
    dir: PathBuf,
    bins: PathBuf,
    sysmgr: Child,
    /// `--against`: another build's sysmgr with that build's echo service, and its dir.
    against: Option<(Child, PathBuf)>,
    /// The floor's echo, the relay and the relay's echo.
    others: Vec<Child>,
}

/// SIGTERM a sysmgr (it stops its services in order) and wait for it.
fn stop(sysmgr: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sysmgr.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sysmgr.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        stop(&mut self.sysmgr);
        if let Some((c, dir)) = &mut self.against {
            stop(c);
            let _ = std::fs::remove_dir_all(dir);
        }
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The paths under test, each its own connection: the floor, the broker, and the minimal relay
/// (and with `--against`, the other build's broker).
struct Paths {
    floor: Path_,
    broker: Path_,
    /// The broker to the echo service on the blocking client.
    blocking: Path_,
    relay: Path_,
    against: Option<Path_>,
}

impl Paths {
    /// The round-trip paths in the order of the table.
    fn all(&mut self) -> Vec<&mut Path_> {
        let mut v = vec![
            &mut self.floor,
            &mut self.broker,
            &mut self.blocking,
            &mut self.relay,
        ];
        v.extend(self.against.as_mut());
        v
    }
}

/// Start `sysmgr` (the binary) in `dir` with the echo service, and connect to it once the
/// echo answers.
fn start_broker(sysmgr: &Path, dir: &Path, policies: &[(&str, String)]) -> Result<(Child, Path_)> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("sysmgr.toml"),
        "name = \"bench\"\ndata-dir = \"data\"\n[mts]\nqueue-max-messages = 10000000\nqueue-max-bytes = 4000000000\n",
    )?;
    for (name, toml) in policies {
        std::fs::write(dir.join(format!("{name}.toml")), toml)?;
    }
    let mut child = Command::new(sysmgr)
        .arg("boot")
        .arg("--config")
        .arg(dir.join("sysmgr.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    match connect_echo(dir, "broker", ECHO_SAP) {
        Ok(p) => Ok((child, p)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context(sysmgr.display().to_string()))
        }
    }
}

/// A connection to the broker in `dir` once the echo service at `sap` answers.
fn connect_echo(dir: &Path, name: &'static str, sap: u32) -> Result<Path_> {
    let sock = dir.join("data/sysmgr.sock");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            let mut p = Path_::new(name, s, sap)?;
            if p.round_trip(8).is_ok() {
                return Ok(p);
            }
        }
        if Instant::now() > end {
            bail!("the echo service of SAP {sap} did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn setup(against: Option<&Path>) -> Result<(Lab, Paths)> {
    let bins = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("sysmgr-mts-bench-{}", std::process::id()));
    let echo_toml = |bins: &Path| {
        format!(
            "command = [{:?}, \"mts-echo\"]\nreadiness = \"notify\"\n[saps]\necho = {ECHO_SAP}\n{}",
            bins.join("sysmgr-bench").display().to_string(),
            (1..=AWAY_SAPS)
                .map(|i| format!("away{i} = {}\n", ECHO_SAP + i))
                .collect::<String>()
        )
    };
    let echob_toml = format!(
        "command = [{:?}, \"mts-echo-blocking\"]\nreadiness = \"notify\"\n[saps]\nechob = {ECHOB_SAP}\n",
        bins.join("sysmgr-bench").display().to_string(),
    );
    let (sysmgr, broker) = start_broker(
        &bins.join("sysmgr"),
        &dir,
        &[("echo", echo_toml(&bins)), ("echob", echob_toml)],
    )?;
    let mut lab = Lab {
        dir: dir.clone(),
        bins: bins.clone(),
        sysmgr,
        against: None,
        others: Vec::new(),
    };
    let against = match against {
        Some(other) => {
            let adir = dir.with_extension("against");
            let (child, mut p) =
                start_broker(&other.join("sysmgr"), &adir, &[("echo", echo_toml(other))])?;
            lab.against = Some((child, adir));
            p.name = "against";
            Some(p)
        }
        None => None,
    };
    let spawn = |lab: &mut Lab, args: &[&Path]| -> Result<()> {
        let mut c = Command::new(bins.join("sysmgr-bench"));
        lab.others.push(c.args(args).stdin(Stdio::null()).spawn()?);
        Ok(())
    };
    let accept = |path: &Path, lab: &mut Lab, args: &[&Path]| -> Result<UnixStream> {
        let listener = UnixListener::bind(path)?;
        spawn(lab, args)?;
        Ok(listener.accept()?.0)
    };
    let fpath = dir.join("floor.sock");
    let fs = accept(&fpath, &mut lab, &[Path::new("floor-echo"), &fpath])?;
    let (up, down) = (dir.join("relay-up.sock"), dir.join("relay-down.sock"));
    let rs = accept(&up, &mut lab, &[Path::new("floor-relay"), &up, &down])?;
    // The relay listens before it connects: its echo can connect now.
    spawn(&mut lab, &[Path::new("floor-echo"), &down])?;
    let paths = Paths {
        floor: Path_::new("floor", fs, 0)?,
        broker,
        blocking: connect_echo(&dir, "blocking", ECHOB_SAP)?,
        relay: Path_::new("relay", rs, 0)?,
        against,
    };
    Ok((lab, paths))
}

/// (written to sled, delivered before written) for SAP `name`, from `show mts queues`.
fn queue_counts(lab: &Lab, name: &str) -> Result<(u64, u64)> {
    let out = Command::new(lab.bins.join("sysmgr"))
        .args(["show", "mts", "queues", "--json", "--config"])
        .arg(lab.dir.join("sysmgr.toml"))
        .env_remove("SYSMGR_SOCKET")
        .output()?;
    if !out.status.success() {
        bail!("show mts queues: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .with_context(|| format!("no queue {name} in show mts queues"))?;
    let n = |k: &str| row[k].as_u64().with_context(|| format!("{k} of {name}"));
    Ok((
        n("persistent_written")?,
        n("persistent_delivered_unwritten")?,
    ))
}

/// Persistent messages for a receiver that is away, then comes back: every one is written.
fn away(lab: &Lab, broker: &mut Path_, quick: bool, rounds: usize) -> Result<()> {
    let n: u64 = if quick { 50_000 } else { 200_000 };
    let half = AWAY_SAPS / 2;
    println!("\n| path | 64 B persistent, receiver away | messages | msgs/s median | min | max |");
    println!("|---|---|---:|---:|---:|---:|");
    // Without NEEDS_ACK a message is removed when delivered; with it, the broker marks it
    // delivered (for a restart of sysmgr) and removes it when the receiver acks.
    for (first, ack, kind) in [(1, 0, ""), (1 + half, Flags::NEEDS_ACK, ", acked")] {
        let (mut stored, mut back) = (Vec::new(), Vec::new());
        for i in first..first + (rounds as u32).min(half) {
            let name = format!("away{i}");
            let (s, b) = broker.away_then_back(n, 64, ECHO_SAP + i, &name, ack)?;
            stored.push(s);
            back.push(b);
            // The check that makes these rows mean something: each message went to sled (the
            // last one, sent after the receiver is back, may not have).
            let (w, _) = queue_counts(lab, &name)?;
            if w < n {
                bail!("{name}: only {w} of {n} persistent messages were written to sled");
            }
        }
        for (what, v) in [
            ("sent and on disk (the last one confirmed)", &mut stored),
            ("delivered once it binds, removals on disk", &mut back),
        ] {
            v.sort_by(f64::total_cmp);
            println!(
                "| sysmgr broker (sled) | {what}{kind} | {n} | {:.0} | {:.0} | {:.0} |",
                pct(v, 0.5),
                v[0],
                v[v.len() - 1]
            );
        }
    }
    Ok(())
}

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (pct(v, 0.5), pct(v, 0.99))
}

pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let mut quick = false;
    let mut rt_only: Option<usize> = None;
    let mut persistent_only = false;
    let mut against: Option<PathBuf> = None;
    let mut args = args;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            // Profiling aid: only N round trips per size, no throughput runs.
            "--rt-only" => rt_only = Some(args.next().context("--rt-only N")?.parse()?),
            // Profiling aid: only the persistent throughput runs.
            "--persistent-only" => persistent_only = true,
            // A/B aid: another build (the directory of its `sysmgr` and `sysmgr-bench`, e.g.
            // a worktree's target/release): its broker and echo service as a fourth
            // round-trip path in the same run.
            "--against" => {
                // Absolute: the other lab's echo policy names its program by this path.
                let dir = args.next().context("--against BUILD_DIR")?;
                against =
                    Some(std::fs::canonicalize(&dir).with_context(|| format!("--against {dir}"))?);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let (lab, mut paths) = setup(against.as_deref())?;
    let rt_n = rt_only.unwrap_or(if quick { 2_000 } else { 20_000 });
    let rounds = if quick { 2 } else { 5 };
    println!(
        "MTS benchmark: {rt_n} round trips per size; throughput runs alternate floor/broker, {rounds} each, median reported\n"
    );
    println!("| path | size | round trip median µs | p99 µs | median / floor |");
    println!("|---|---:|---:|---:|---:|");
    for size in [64usize, 4096].into_iter().filter(|_| !persistent_only) {
        // One round trip on each path per step, the order rotating every 1000 steps, so drift
        // hits all of them and each block reaches its steady state.
        let mut all = paths.all();
        let k = all.len();
        let mut v: Vec<Vec<f64>> = vec![Vec::new(); k];
        for i in 0..rt_n {
            for j in 0..k {
                let which = (j + i / 1000) % k;
                v[which].push(all[which].round_trip(size)?);
            }
        }
        let m: Vec<(f64, f64)> = v.iter_mut().map(|x| stats(x)).collect();
        let fm = m[0].0;
        let rows = [
            "raw Unix socket (floor)",
            "sysmgr broker, service on the async client",
            "sysmgr broker, service on the blocking client",
            "(anchor) minimal relay: a process copying bytes between two sockets",
            "(A/B) sysmgr broker of the `--against` build",
        ];
        for (j, (med, p99)) in m.iter().enumerate() {
            let vs = if j == 4 {
                format!(" (this build {:.3}x of it)", m[1].0 / med)
            } else {
                String::new()
            };
            println!(
                "| {} | {size} B | {med:.1} | {p99:.1} | {:.2}x{vs} |",
                rows[j],
                med / fm
            );
        }
        if size == 64 {
            let mut o = Vec::new();
            for _ in 0..rt_n / 4 {
                o.push(paths.broker.broker_only()?);
            }
            let (om, op) = stats(&mut o);
            println!(
                "| (diagnostic) one hop: request answered by the broker itself | - | {om:.1} | {op:.1} | {:.2}x |",
                om / fm
            );
        }
    }
    if rt_only.is_some() {
        return Ok(());
    }
    println!("\n| path | message | messages | msgs/s median | min | max | vs floor |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let cases: [(&str, usize, u64, u8); 3] = [
        ("64 B", 64, if quick { 200_000 } else { 1_000_000 }, 0),
        ("4 KB", 4096, if quick { 20_000 } else { 100_000 }, 0),
        (
            "64 B persistent",
            64,
            if quick { 50_000 } else { 200_000 },
            Flags::PERSISTENT,
        ),
    ];
    for (label, size, n, flags) in cases {
        if persistent_only && flags == 0 {
            continue;
        }
        let (mut f, mut b, mut k) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            if flags == 0 {
                f.push(paths.floor.throughput(n, size, 0)?);
                k.push(paths.blocking.throughput(n, size, 0)?);
            }
            b.push(paths.broker.throughput(n, size, flags)?);
        }
        b.sort_by(f64::total_cmp);
        let bm = pct(&b, 0.5);
        if f.is_empty() {
            println!(
                "| sysmgr broker (sled) | {label} | {n} | {bm:.0} | {:.0} | {:.0} | - |",
                b[0],
                b[b.len() - 1]
            );
        } else {
            f.sort_by(f64::total_cmp);
            let fm = pct(&f, 0.5);
            println!(
                "| raw Unix socket (floor) | {label} | {n} | {fm:.0} | {:.0} | {:.0} | 1.00x |",
                f[0],
                f[f.len() - 1]
            );
            for (what, v) in [("async", &mut b), ("blocking", &mut k)] {
                v.sort_by(f64::total_cmp);
                let m = pct(v, 0.5);
                println!(
                    "| sysmgr broker, service on the {what} client | {label} | {n} | {m:.0} | {:.0} | {:.0} | {:.2}x |",
                    v[0],
                    v[v.len() - 1],
                    m / fm
                );
            }
        }
    }
    // One more, confirmed: the writer has applied everything before it. Then count it.
    let confirm = Flags::PERSISTENT | Flags::CONFIRM;
    paths
        .broker
        .ask(ECHO_SAP, OP_DATA, confirm, vec![0x5a; 64])?;
    paths.broker.count()?;
    let echo = queue_counts(&lab, "echo")?;
    println!(
        "\nOf the persistent messages to the bound receiver, {} were written to sled and {} were delivered before the broker's writer reached them, so never written ({:.1}% written).",
        echo.0,
        echo.1,
        100.0 * echo.0 as f64 / (echo.0 + echo.1).max(1) as f64
    );
    away(&lab, &mut paths.broker, quick, rounds)?;
    Ok(())
}
