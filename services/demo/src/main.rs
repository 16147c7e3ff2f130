//! `sysmgr-demo`: the demo service of the default lab and the fixture of the tests.
//!
//! It speaks sd_notify like any systemd daemon and can misbehave on demand: crash, exit with a
//! code, hang without heartbeats, ignore SIGTERM, orphan a grandchild, flood stdout, and keep a
//! descriptor in sysmgr's fd store across a stateful restart. See `--help`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const HELP: &str = "sysmgr-demo [options]
  --notify              send READY=1 once started
  --ready-delay MS      wait before READY=1
  --heartbeat           send WATCHDOG=1 at a third of WATCHDOG_USEC
  --hang-after MS       stop heartbeats and everything else after MS
  --crash-after MS      die of SIGSEGV after MS
  --crash-times N       crash only while this service has started fewer than N+1 times
                        (counted in --counter FILE)
  --counter FILE        start counter file
  --exit-after MS       exit after MS with --code (default 1)
  --code N
  --ignore-sigterm      ignore SIGTERM
  --orphan FILE         fork a grandchild that outlives its parent (pid written to FILE)
  --spew BYTES          write BYTES to stdout at start
  --stderr TEXT         write TEXT as a line to stderr at start
  --fdstore             keep a memfd in sysmgr's fd store; report it when handed back
  --report FILE         append one line per start: pid, start kind, count, fds
  --status TEXT         STATUS= text
  --notify-fd N         write a newline to descriptor N once started (s6 readiness)
  --mts-bind NAME       bind MTS SAP NAME and receive: report each message; ack what needs it,
                        except \"hold\" (acked only when redelivered); crash on \"poison\";
                        answer requests with \"echo:TEXT\"
  --mts-try-bind NAME   also try to bind SAP NAME and report the outcome
  --mts-blocking        do --mts-bind with the blocking MTS client
  --pss-counter         on start, report the private \"count\" checkpoint, then store count+1
                        (durable) in private and shared-local scope
  --pss-peek SVC        report reading SVC's private and shared-local \"count\" and writing
  --pss-stream          report which checkpoints c/N survived (count, max, contiguous), then
                        keep writing c/N+1, c/N+2, ... durably, reporting \"acked N\" after each ack
  --pss-stream-pause MS with --pss-stream: wait MS milliseconds between writes
  --pss-txn-loop        keep committing 50 keys with the same value in one transaction each;
                        on start, report whether all 50 agree
  --pss-blocking SVC    with the blocking PSS client: report what b/2 held at start, then
                        write, read, commit a transaction, fail a CAS, scan, and read SVC's
                        private and shared-local \"count\", reporting each outcome on one line
  --bfd-client SAP:PEER:LOCAL:IF
                        bind SAP, subscribe to bfd's session events and ask bfd for a 50 ms x 3
                        session to PEER (again after bfd starts without its state); report the
                        answer and every event
  --stamp FILE          (benchmark) append \"PID CLOCK_MONOTONIC-ns\" taken at the first instruction

Started as `run` (a symlink in a daemontools/runit/s6 service directory), the options are read
from ./run.args, one per line, so no shell sits between a supervisor and the service.";

fn mono_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

#[derive(Default)]
struct Opts {
    notify: bool,
    ready_delay: u64,
    heartbeat: bool,
    hang_after: Option<u64>,
    crash_after: Option<u64>,
    crash_times: Option<u64>,
    counter: Option<String>,
    exit_after: Option<u64>,
    code: i32,
    ignore_sigterm: bool,
    orphan: Option<String>,
    spew: usize,
    stderr: Option<String>,
    fdstore: bool,
    report: Option<String>,
    status: Option<String>,
    notify_fd: Option<i32>,
    mts_bind: Option<String>,
    mts_try_bind: Option<String>,
    mts_blocking: bool,
    pss_counter: bool,
    pss_peek: Option<String>,
    pss_txn_loop: bool,
    pss_stream: bool,
    pss_stream_pause: u64,
    pss_blocking: Option<String>,
    bfd_client: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        code: 1,
        ..Default::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
        match a.as_str() {
            "--notify" => o.notify = true,
            "--ready-delay" => o.ready_delay = num(val(a)?)?,
            "--heartbeat" => o.heartbeat = true,
            "--hang-after" => o.hang_after = Some(num(val(a)?)?),
            "--crash-after" => o.crash_after = Some(num(val(a)?)?),
            "--crash-times" => o.crash_times = Some(num(val(a)?)?),
            "--counter" => o.counter = Some(val(a)?),
            "--exit-after" => o.exit_after = Some(num(val(a)?)?),
            "--code" => o.code = val(a)?.parse().map_err(|e| format!("--code: {e}"))?,
            "--ignore-sigterm" => o.ignore_sigterm = true,
            "--orphan" => o.orphan = Some(val(a)?),
            "--spew" => o.spew = num(val(a)?)? as usize,
            "--stderr" => o.stderr = Some(val(a)?),
            "--fdstore" => o.fdstore = true,
            "--report" => o.report = Some(val(a)?),
            "--status" => o.status = Some(val(a)?),
            "--mts-bind" => o.mts_bind = Some(val(a)?),
            "--pss-counter" => o.pss_counter = true,
            "--pss-peek" => o.pss_peek = Some(val(a)?),
            "--pss-txn-loop" => o.pss_txn_loop = true,
            "--pss-blocking" => o.pss_blocking = Some(val(a)?),
            "--pss-stream" => o.pss_stream = true,
            "--pss-stream-pause" => {
                o.pss_stream_pause = val(a)?
                    .parse()
                    .map_err(|e| format!("--pss-stream-pause: {e}"))?
            }
            "--bfd-client" => o.bfd_client = Some(val(a)?),
            "--mts-try-bind" => o.mts_try_bind = Some(val(a)?),
            "--mts-blocking" => o.mts_blocking = true,
            "--notify-fd" => {
                o.notify_fd = Some(val(a)?.parse().map_err(|e| format!("--notify-fd: {e}"))?)
            }
            "--stamp" => {
                val(a)?;
            }
            "-h" | "--help" => return Err(HELP.into()),
            other => return Err(format!("unknown option {other}\n{HELP}")),
        }
    }
    Ok(o)
}

fn append(path: &str, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

fn notify(s: &str) {
    if let Err(e) = mts::notify::notify(s) {
        eprintln!("sd_notify: {e}");
    }
}

/// Start counter: how many times this service has started (persisted in a file).
fn bump_counter(path: &str) -> u64 {
    let n = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let _ = std::fs::write(path, n.to_string());
    n
}

fn memfd_with(token: &str) -> Option<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name; we own the returned descriptor.
    let fd = unsafe { libc::memfd_create(c"sysmgr-demo-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::write(&fd, token.as_bytes()).ok()?;
    Some(fd)
}

fn read_token(fd: &OwnedFd) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: pread into our own buffer from a descriptor we own.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n <= 0 {
        String::new()
    } else {
        String::from_utf8_lossy(&buf[..n as usize]).into_owned()
    }
}

/// Fork a child that forks a grandchild and exits at once; reap the child so the grandchild is
/// orphaned and reparented to the nearest subreaper (sysmgr) or PID 1 (sysmgr too).
fn orphan(pidfile: &str) {
    // SAFETY: fork; the child only calls fork, write of a pre-built file, sleep and _exit.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: as above.
            let g = unsafe { libc::fork() };
            if g == 0 {
                std::thread::sleep(Duration::from_millis(300));
                // SAFETY: _exit in the grandchild.
                unsafe { libc::_exit(0) };
            }
            let _ = std::fs::write(pidfile, g.to_string());
            // SAFETY: _exit in the child.
            unsafe { libc::_exit(0) };
        }
        c if c > 0 => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(c), None);
        }
        _ => eprintln!("fork failed"),
    }
}

/// Where a fixture mode reports: the `--report` file, or stdout.
fn reporter(report: Option<&str>) -> impl Fn(String) + '_ {
    move |line| match report {
        Some(r) => append(r, &line),
        None => println!("{line}"),
    }
}

/// Run `body` with a connection to sysmgr's MTS on a current-thread runtime of its own; a
/// failure to connect is reported instead.
fn with_mts<F, Fut>(report: Option<&str>, body: F)
where
    F: FnOnce(mts::client::Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        match mts::client::Client::connect_from_env().await {
            Ok(c) => body(c).await,
            Err(e) => reporter(report)(format!("connect error: {e}")),
        }
    });
}

/// [`with_mts`], the connection made PSS's own (`Pss::direct`); a refusal is reported instead.
fn with_pss<F, Fut>(report: Option<&str>, body: F)
where
    F: FnOnce(pss::client::Pss<'static>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_mts(report, |c| async move {
        match pss::client::Pss::direct(c).await {
            Ok(p) => body(p).await,
            Err(e) => reporter(report)(format!("pss connect error: {e}")),
        }
    });
}

/// `--pss-stream`: the crash-test writer.
fn pss_stream(report: Option<&str>, pause: std::time::Duration) {
    use pss::proto::{Durability, Scope};
    let say = reporter(report);
    with_pss(report, |p| async move {
        let present = match p.scan(None, Scope::Private, "c/", u32::MAX).await {
            Ok(e) => e,
            Err(e) => return say(format!("pss scan error: {e}")),
        };
        let nums: Vec<u64> = present
            .iter()
            .filter_map(|(k, _)| std::str::from_utf8(&k[2..]).ok()?.parse().ok())
            .collect();
        let max = nums.iter().copied().max().unwrap_or(0);
        let contiguous =
            nums.len() as u64 == max && nums.iter().enumerate().all(|(i, n)| *n == i as u64 + 1);
        say(format!(
            "present count={} max={max} contiguous={contiguous}",
            nums.len()
        ));
        let mut i = max;
        loop {
            i += 1;
            match p
                .put(
                    Scope::Private,
                    format!("c/{i:010}"),
                    &i,
                    Durability::Durable,
                )
                .await
            {
                Ok(_) => say(format!("acked {i}")),
                Err(e) => return say(format!("pss put error: {e}")),
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    });
}

/// The PSS modes (see `--pss-*`), reporting every step.
fn pss_demo(counter: bool, peek: Option<&str>, txn_loop: bool, report: Option<&str>) {
    use pss::proto::{Durability, Scope};
    let say = reporter(report);
    with_pss(report, |p| async move {
        if counter {
            let before: Option<u64> = match p.get(Scope::Private, "count").await {
                Ok(v) => v,
                Err(e) => return say(format!("pss get error: {e}")),
            };
            let next = before.unwrap_or(0) + 1;
            let seq = p.txn(Scope::Private).put("count", &next);
            let seq = match seq {
                Ok(t) => t.commit(Durability::Durable).await,
                Err(e) => Err(e),
            };
            let shared = p
                .put(Scope::SharedLocal, "count", &next, Durability::Durable)
                .await;
            say(format!(
                "pss count before={} after={next} seq={:?} shared={:?}",
                before.map(|b| b.to_string()).unwrap_or("none".into()),
                seq,
                shared.is_ok()
            ));
        }
        if let Some(other) = peek {
            let private: Result<Option<u64>, _> = p.get_of(other, Scope::Private, "count").await;
            let shared: Result<Option<u64>, _> = p.get_of(other, Scope::SharedLocal, "count").await;
            say(format!(
                "pss peek private={} shared={}",
                private
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|e| format!("error: {e}")),
                shared
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|e| format!("error: {e}"))
            ));
            // Writes name no owner: a write can only ever land in the writer's own keys.
            let _ = p
                .put(Scope::SharedLocal, "count", &999u64, Durability::Durable)
                .await;
            let show = |r: Result<Option<u64>, pss::PssError>| {
                r.map(|v| format!("{v:?}"))
                    .unwrap_or_else(|e| format!("error: {e}"))
            };
            let owner = show(p.get_of(other, Scope::SharedLocal, "count").await);
            let mine = show(p.get(Scope::SharedLocal, "count").await);
            say(format!("pss peek-after-write owner={owner} mine={mine}"));
        }
        if txn_loop {
            let got = p.scan(None, Scope::Private, "k/", 100).await;
            match got {
                Ok(e) => {
                    let vals: std::collections::BTreeSet<Vec<u8>> =
                        e.iter().map(|(_, v)| v.clone()).collect();
                    say(format!(
                        "pss txn keys={} distinct-values={}",
                        e.len(),
                        vals.len()
                    ));
                }
                Err(e) => say(format!("pss scan error: {e}")),
            }
            let mut i: u64 = 0;
            loop {
                i += 1;
                let mut t = p.txn(Scope::Private);
                for k in 0..50 {
                    t = match t.put(format!("k/{k:02}"), &i) {
                        Ok(t) => t,
                        Err(e) => return say(format!("pss txn error: {e}")),
                    };
                }
                if let Err(e) = t.commit(Durability::Fast).await {
                    return say(format!("pss commit error: {e}"));
                }
            }
        }
    });
}

/// `--pss-blocking SVC`: every kind of request through the blocking client, on one line.
fn pss_blocking(other: &str, report: Option<&str>) {
    use pss::proto::{Durability, Scope};
    let say = reporter(report);
    let p = match pss::blocking::Pss::connect() {
        Ok(p) => p,
        Err(e) => return say(format!("pss blocking connect error: {e}")),
    };
    let show = |r: Result<Option<u64>, pss::PssError>| {
        r.map(|v| format!("{v:?}"))
            .unwrap_or_else(|e| format!("error: {e}"))
    };
    say(format!(
        "pss blocking start b/2={}",
        show(p.get(Scope::Private, "b/2"))
    ));
    let put = p.put(Scope::Private, "b/1", &7u64, Durability::Fast);
    let get = show(p.get(Scope::Private, "b/1"));
    let txn = p
        .txn(Scope::Private)
        .put("b/2", &8u64)
        .and_then(|t| t.put("b/3", &9u64))
        .map(|t| t.delete("b/1"))
        .and_then(|t| t.commit(Durability::Durable));
    let cas = p
        .txn(Scope::Private)
        .put("b/3", &10u64)
        .and_then(|t| t.cas("b/2", Some(&1u64), Some(&11u64)))
        .and_then(|t| t.commit(Durability::Durable));
    let after = format!(
        "{}/{}",
        show(p.get(Scope::Private, "b/2")),
        show(p.get(Scope::Private, "b/3"))
    );
    let keys = match p.scan(None, Scope::Private, "b/", 10) {
        Ok(e) => e
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
            .join(","),
        Err(e) => format!("error: {e}"),
    };
    say(format!(
        "pss blocking put={put:?} get={get} txn={txn:?} cas={} after-cas={after} scan={keys} seq={:?} private={} shared={}",
        cas.map(|s| s.to_string())
            .unwrap_or_else(|e| format!("error: {e}")),
        p.seq(),
        show(p.get_of(other, Scope::Private, "count")),
        show(p.get_of(other, Scope::SharedLocal, "count")),
    ));
}

/// `--bfd-client SAP:PEER:LOCAL:IF`: what BGP does with BFD, as a fixture.
fn bfd_client(spec: &str, report: Option<&str>) {
    use bfd::proto::{Event, OP_EVENT, OP_SESSION_ADD, SessionKey, SessionSpec};
    let say = reporter(report);
    let parts: Vec<&str> = spec.split(':').collect();
    let (Some(name), Some(Ok(peer)), Some(Ok(local)), Some(ifname)) = (
        parts.first(),
        parts.get(1).map(|p| p.parse()),
        parts.get(2).map(|p| p.parse()),
        parts.get(3),
    ) else {
        return say(format!("bad --bfd-client {spec:?}"));
    };
    let want = SessionSpec {
        key: SessionKey {
            peer,
            interface: Some(ifname.to_string()),
        },
        local: Some(local),
        timers: bfd::fsm::Timers {
            desired_min_tx: 50_000,
            required_min_rx: 50_000,
            detect_mult: 3,
        },
        owner: name.to_string(),
    };
    with_mts(report, |mut c| async move {
        let me = match c.bind(name).await {
            Ok(n) => n,
            Err(e) => return say(format!("bind error: {e}")),
        };
        if let Err(e) = c.subscribe(me, OP_EVENT).await {
            return say(format!("subscribe error: {e}"));
        }
        let ask = async |c: &mts::client::Client| {
            let bfd = c.lookup(bfd::proto::SAP_NAME).await?;
            c.request::<_, Result<u32, String>>(
                me,
                bfd,
                OP_SESSION_ADD,
                &want,
                Duration::from_secs(10),
            )
            .await
        };
        match ask(&c).await {
            Ok(r) => say(format!("session {r:?}")),
            Err(e) => say(format!("session request error: {e}")),
        }
        while let Some(m) = c.recv().await {
            match m.decode::<Event>() {
                Ok(Event::Started { start }) => {
                    say(format!("bfd started {start}"));
                    if start != "stateful" {
                        match ask(&c).await {
                            Ok(r) => say(format!("session {r:?}")),
                            Err(e) => say(format!("session request error: {e}")),
                        }
                    }
                }
                Ok(Event::StateChange { key, from, to, .. }) => {
                    say(format!("event {key} {}->{}", from.word(), to.word()))
                }
                Err(e) => say(format!("undecodable event: {e}")),
            }
        }
    });
}

/// What `--mts-bind` does with a message, once reported: the answer it sends (to a request)
/// and whether it acks. None for an error the broker reported.
fn on_message(m: &mts::client::Incoming, say: &impl Fn(String)) -> Option<(Option<Vec<u8>>, bool)> {
    let text = String::from_utf8_lossy(&m.payload).into_owned();
    if let Some(e) = m.error() {
        say(format!("error {e}"));
        return None;
    }
    say(format!(
        "recv id={} redelivered={} text={text}",
        m.id(),
        m.redelivered()
    ));
    if text == "poison" {
        // SAFETY: restore the default action and raise: a real crash by signal.
        unsafe {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            libc::raise(libc::SIGSEGV);
        }
    }
    let answer = m.is_request().then(|| format!("echo:{text}").into_bytes());
    Some((answer, m.needs_ack() && (text != "hold" || m.redelivered())))
}

/// Bind a SAP and handle what arrives (see `--mts-bind`), reporting every step.
fn mts_receiver(name: &str, other: Option<&str>, report: Option<&str>) {
    let say = reporter(report);
    with_mts(report, |mut c| async move {
        for n in std::iter::once(name).chain(other) {
            match c.bind(n).await {
                Ok(sap) => say(format!("bound {n}={sap}")),
                Err(e) if n == name => return say(format!("bind error: {e}")),
                Err(e) => say(format!("bind {n} error: {e}")),
            }
        }
        while let Some(m) = c.recv().await {
            let Some((answer, ack)) = on_message(&m, &say) else {
                continue;
            };
            if let Some(a) = answer {
                c.respond_raw(&m, &a);
            }
            if ack {
                c.ack(&[m.id()]);
            }
        }
        say("connection closed".into());
    });
}

/// `--mts-bind` with `--mts-blocking`: the same on the blocking client, on this thread.
fn mts_receiver_blocking(name: &str, other: Option<&str>, report: Option<&str>) {
    let say = reporter(report);
    let mut c = match mts::blocking::Client::connect_from_env() {
        Ok(c) => c,
        Err(e) => return say(format!("connect error: {e}")),
    };
    for n in std::iter::once(name).chain(other) {
        match c.bind(n) {
            Ok(sap) => say(format!("bound {n}={sap}")),
            Err(e) if n == name => return say(format!("bind error: {e}")),
            Err(e) => say(format!("bind {n} error: {e}")),
        }
    }
    loop {
        let m = match c.recv() {
            Ok(m) => m,
            Err(e) => return say(format!("connection closed: {e}")),
        };
        let Some((answer, ack)) = on_message(&m, &say) else {
            continue;
        };
        if ack {
            c.ack(&[m.id()]);
        }
        if let Some(a) = answer
            && let Err(e) = c.respond_raw(&m, &a)
        {
            return say(format!("connection closed: {e}"));
        }
    }
}

fn main() {
    let t0 = mono_ns();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::args()
        .next()
        .is_some_and(|a0| a0 == "run" || a0.ends_with("/run"))
    {
        args = std::fs::read_to_string("run.args")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
    }
    if let Some(i) = args.iter().position(|a| a == "--stamp")
        && let Some(path) = args.get(i + 1)
    {
        append(path, &format!("{} {t0}", std::process::id()));
    }
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let kind = std::env::var("SYSMGR_START").unwrap_or_else(|_| "unsupervised".into());
    let count = std::env::var("SYSMGR_START_COUNT").unwrap_or_default();
    let pid = std::process::id();
    let term = Arc::new(AtomicBool::new(false));
    if o.ignore_sigterm {
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    } else if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone()) {
        eprintln!("cannot handle SIGTERM: {e}");
    }

    let listen = mts::notify::take_listen_fds();
    let mut fd_report: Vec<String> = listen
        .iter()
        .map(|(n, fd)| format!("{n}={}", read_token(fd)))
        .collect();
    if o.fdstore && listen.is_empty() {
        match memfd_with(&format!("token-from-{pid}")) {
            Some(fd) => {
                match mts::notify::notify_with_fds("FDSTORE=1\nFDNAME=demo-state", &[fd.as_fd()]) {
                    Ok(_) => fd_report.push("stored-new".into()),
                    Err(e) => eprintln!("FDSTORE: {e}"),
                }
            }
            None => eprintln!("memfd_create failed"),
        }
    }
    if let Some(r) = &o.report {
        append(
            r,
            &format!(
                "start pid={pid} kind={kind} count={count} fds=[{}]",
                fd_report.join(",")
            ),
        );
    }
    println!(
        "sysmgr-demo pid {pid} started ({kind}, start {count}), descriptors: [{}]",
        fd_report.join(",")
    );
    if let Some(t) = &o.stderr {
        eprintln!("{t}");
    }
    if o.spew > 0 {
        let chunk = vec![b'x'; 8192];
        let mut out = std::io::stdout().lock();
        let mut left = o.spew;
        while left > 0 {
            let n = left.min(chunk.len());
            if out.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
        let _ = out.flush();
    }
    if let Some(f) = &o.orphan {
        orphan(f);
    }
    if o.pss_stream {
        let report = o.report.clone();
        let pause = std::time::Duration::from_millis(o.pss_stream_pause);
        std::thread::spawn(move || pss_stream(report.as_deref(), pause));
    }
    if o.pss_counter || o.pss_peek.is_some() || o.pss_txn_loop {
        let (report, peek, counter, txn) = (
            o.report.clone(),
            o.pss_peek.clone(),
            o.pss_counter,
            o.pss_txn_loop,
        );
        std::thread::spawn(move || pss_demo(counter, peek.as_deref(), txn, report.as_deref()));
    }
    if let Some(other) = o.pss_blocking.clone() {
        let report = o.report.clone();
        std::thread::spawn(move || pss_blocking(&other, report.as_deref()));
    }
    if let Some(spec) = o.bfd_client.clone() {
        let report = o.report.clone();
        std::thread::spawn(move || bfd_client(&spec, report.as_deref()));
    }
    if let Some(name) = o.mts_bind.clone() {
        let (report, other) = (o.report.clone(), o.mts_try_bind.clone());
        let blocking = o.mts_blocking;
        std::thread::spawn(move || {
            if blocking {
                mts_receiver_blocking(&name, other.as_deref(), report.as_deref())
            } else {
                mts_receiver(&name, other.as_deref(), report.as_deref())
            }
        });
    }
    let crash_now = match (o.crash_times, &o.counter) {
        (Some(n), Some(c)) => bump_counter(c) <= n,
        (None, Some(c)) => {
            bump_counter(c);
            true
        }
        _ => true,
    };
    let hb_every = mts::notify::watchdog_interval()
        .map(|d| d / 3)
        .filter(|_| o.heartbeat);
    let mut next_hb = Instant::now();
    let mut ready_sent = !o.notify;
    if let Some(fd) = o.notify_fd {
        // SAFETY: a plain write of one byte to a descriptor the supervisor gave us.
        unsafe { libc::write(fd, b"\n".as_ptr().cast(), 1) };
    }
    if let Some(s) = &o.status {
        notify(&format!("STATUS={s}"));
    }
    loop {
        let el = started.elapsed();
        if !ready_sent && el >= Duration::from_millis(o.ready_delay) {
            notify("READY=1");
            ready_sent = true;
        }
        if term.load(Ordering::Relaxed) {
            notify("STOPPING=1");
            println!("sysmgr-demo pid {pid}: SIGTERM, exiting");
            std::process::exit(0);
        }
        if crash_now
            && let Some(ms) = o.crash_after
            && el >= Duration::from_millis(ms)
        {
            eprintln!("sysmgr-demo pid {pid}: crashing on purpose");
            // SAFETY: restore the default action and raise: a real crash by signal.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
        }
        if let Some(ms) = o.exit_after
            && el >= Duration::from_millis(ms)
        {
            eprintln!("sysmgr-demo pid {pid}: exiting with code {}", o.code);
            std::process::exit(o.code);
        }
        if let Some(ms) = o.hang_after
            && el >= Duration::from_millis(ms)
        {
            // Hung: no heartbeats, no reaction to SIGTERM flags, nothing.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if let Some(every) = hb_every
            && Instant::now() >= next_hb
        {
            notify("WATCHDOG=1");
            next_hb = Instant::now() + every;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
