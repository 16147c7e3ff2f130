//! PSS checkpoint benchmark: latency (1 writer) and throughput (16 writers), `fast` and
//! `durable`, 90 B keys / 4 KB values, against raw sled in-process (the floor) and Redis on
//! loopback (`fast` vs Redis without persistence, `durable` vs `appendonly yes` +
//! `appendfsync always`). All in one run; the PSS writer is a real sysmgr service
//! (`sysmgr-bench pss-writer`), since only services write PSS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::restart::pct;

pub(crate) const KEY_LEN: usize = 90;
pub(crate) const VALUE_LEN: usize = 4096;
pub(crate) const WRITERS: usize = 16;

pub(crate) fn key(w: usize, i: usize) -> String {
    format!("{:0>width$}", format!("w{w}-{}", i % 1000), width = KEY_LEN)
}

pub(crate) struct Numbers {
    pub lat_med: f64,
    pub lat_p99: f64,
    pub tput: f64,
}

/// WRITERS threads, each running `one(w)`; returns their writes per second (`n16` each).
pub(crate) fn threads_tput(n16: usize, one: impl Fn(usize) -> Result<()> + Sync) -> Result<f64> {
    let t = Instant::now();
    std::thread::scope(|sc| -> Result<()> {
        let one = &one;
        let hs: Vec<_> = (0..WRITERS).map(|w| sc.spawn(move || one(w))).collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        Ok(())
    })?;
    Ok((WRITERS * n16) as f64 / t.elapsed().as_secs_f64())
}

pub(crate) fn summarize(mut lat: Vec<f64>, tput: f64) -> Numbers {
    lat.sort_by(f64::total_cmp);
    Numbers {
        lat_med: pct(&lat, 0.5),
        lat_p99: pct(&lat, 0.99),
        tput,
    }
}

// ---------- raw sled (the floor) ----------

fn sled_run(dir: &Path, durable: bool, n1: usize, n16: usize) -> Result<Numbers> {
    // sled configured as PSS configures it; `flush` is sled's flush plus the `fdatasync` of its
    // log (and any blob files) that PSS adds for a durable write, so both floors give the same
    // guarantee as the PSS mode they stand under.
    let store = pss::Store::open(dir)?;
    let db = store.tree("floor")?;
    let value = vec![0x42u8; VALUE_LEN];
    let mut lat = Vec::with_capacity(n1);
    for i in 0..n1 {
        let t = Instant::now();
        db.insert(key(0, i), value.as_slice())?;
        if durable {
            store.flush()?;
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (db, store, value) = (db.clone(), store.clone(), value.clone());
            s.spawn(move || {
                for i in 0..n16 {
                    let _ = db.insert(key(w, i), value.as_slice());
                    if durable {
                        let _ = store.flush();
                    }
                }
            });
        }
    });
    Ok(summarize(
        lat,
        (WRITERS * n16) as f64 / t.elapsed().as_secs_f64(),
    ))
}

// ---------- Redis ----------

fn redis_set(
    s: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    k: &str,
    v: &[u8],
    line: &mut String,
) -> Result<()> {
    let mut cmd =
        format!("*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n", k.len(), v.len()).into_bytes();
    cmd.extend_from_slice(v);
    cmd.extend_from_slice(b"\r\n");
    s.write_all(&cmd)?;
    line.clear();
    r.read_line(line)?;
    if !line.starts_with("+OK") {
        bail!("redis: {line}");
    }
    Ok(())
}

fn redis_conn(port: u16) -> Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let r = BufReader::new(s.try_clone()?);
    Ok((s, r))
}

fn redis_run(port: u16, n1: usize, n16: usize) -> Result<Numbers> {
    let value = vec![0x42u8; VALUE_LEN];
    let (mut s, mut r) = redis_conn(port)?;
    let mut line = String::new();
    let mut lat = Vec::with_capacity(n1);
    for i in 0..n1 {
        let t = Instant::now();
        redis_set(&mut s, &mut r, &key(0, i), &value, &mut line)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let tput = threads_tput(n16, |w| {
        let (mut s, mut r) = redis_conn(port)?;
        let mut line = String::new();
        for i in 0..n16 {
            redis_set(&mut s, &mut r, &key(w, i), &value, &mut line)?;
        }
        Ok(())
    })?;
    Ok(summarize(lat, tput))
}

/// A child process killed (and reaped) when dropped: a server the benchmark started.
pub(crate) struct Reaped(pub Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path, port: u16, durable: bool) -> Result<Reaped> {
    std::fs::create_dir_all(dir)?;
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
    ])
    .arg(dir);
    if durable {
        c.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        c.args(["--appendonly", "no"]);
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (bench/run-pss.sh installs it)")?;
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end {
            bail!("redis-server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Reaped(child))
}

// ---------- PSS through sysmgr ----------

/// `pss-writer RESULT N1 N16`: run by sysmgr as a service; measures and writes its numbers,
/// first through the async client (tokio), then through the blocking one.
pub fn writer(mut args: impl Iterator<Item = String>) -> Result<()> {
    use pss::client::Bytes;
    use pss::proto::{Durability, Scope};
    let out: PathBuf = args.next().context("result file")?.into();
    let n1: usize = args.next().context("n1")?.parse()?;
    let n16: usize = args.next().context("n16")?.parse()?;
    let modes = [("fast", Durability::Fast), ("durable", Durability::Durable)];
    let value = vec![0x42u8; VALUE_LEN];
    let mut lines = Vec::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        for (name, d) in modes {
            let p = pss::client::Pss::connect().await?;
            let mut lat = Vec::with_capacity(n1);
            for i in 0..n1 {
                let t = Instant::now();
                p.put(Scope::Private, key(0, i), Bytes::new(&value), d)
                    .await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let t = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..WRITERS {
                let value = value.clone();
                tasks.push(tokio::spawn(async move {
                    let p = pss::client::Pss::connect().await?;
                    for i in 0..n16 {
                        p.put(Scope::Private, key(w, i), Bytes::new(&value), d)
                            .await?;
                    }
                    Ok::<(), anyhow::Error>(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            let n = summarize(lat, (WRITERS * n16) as f64 / t.elapsed().as_secs_f64());
            lines.push(format!(
                "async-{name} {} {} {}",
                n.lat_med, n.lat_p99, n.tput
            ));
        }
        Ok::<(), anyhow::Error>(())
    })?;
    drop(rt);
    for (name, d) in modes {
        let p = pss::blocking::Pss::connect()?;
        let mut lat = Vec::with_capacity(n1);
        for i in 0..n1 {
            let t = Instant::now();
            p.put(Scope::Private, key(0, i), Bytes::new(&value), d)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let tput = threads_tput(n16, |w| {
            let p = pss::blocking::Pss::connect()?;
            for i in 0..n16 {
                p.put(Scope::Private, key(w, i), Bytes::new(&value), d)?;
            }
            Ok(())
        })?;
        let n = summarize(lat, tput);
        lines.push(format!(
            "blocking-{name} {} {} {}",
            n.lat_med, n.lat_p99, n.tput
        ));
    }
    std::fs::write(&out, lines.join("\n") + "\n")?;
    // Stay up so sysmgr does not apply a restart policy while the driver reads the results.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// One run's PSS numbers: through the async client and through the blocking one.
struct PssNumbers {
    async_fast: Numbers,
    async_durable: Numbers,
    blocking_fast: Numbers,
    blocking_durable: Numbers,
}

fn pss_run(dir: &Path, n1: usize, n16: usize) -> Result<PssNumbers> {
    let bins = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    std::fs::create_dir_all(dir)?;
    let result = dir.join("result");
    // SYSMGR_TOML: more top-level keys for sysmgr.toml, for an A/B of a setting
    // (`SYSMGR_TOML='pss-poll-us = 50'`).
    let extra = std::env::var("SYSMGR_TOML").map_or(String::new(), |e| e + "\n");
    std::fs::write(
        dir.join("sysmgr.toml"),
        format!("name = \"bench\"\ndata-dir = \"data\"\n{extra}"),
    )?;
    std::fs::write(
        dir.join("writer.toml"),
        format!(
            "command = [{:?}, \"pss-writer\", {:?}, \"{n1}\", \"{n16}\"]\n",
            bins.join("sysmgr-bench").display().to_string(),
            result.display().to_string()
        ),
    )?;
    let mut sysmgr = Command::new(bins.join("sysmgr"))
        .arg("boot")
        .arg("--config")
        .arg(dir.join("sysmgr.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(600);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&result)
            && t.lines().count() == 4
        {
            break t;
        }
        if Instant::now() > end {
            let _ = sysmgr.kill();
            bail!("the PSS writer did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sysmgr.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sysmgr.wait();
    let parse = |l: &str| -> Result<Numbers> {
        let v: Vec<f64> = l
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse())
            .collect::<Result<_, _>>()?;
        Ok(Numbers {
            lat_med: v[0],
            lat_p99: v[1],
            tput: v[2],
        })
    };
    let mut it = text.lines();
    Ok(PssNumbers {
        async_fast: parse(it.next().context("async fast")?)?,
        async_durable: parse(it.next().context("async durable")?)?,
        blocking_fast: parse(it.next().context("blocking fast")?)?,
        blocking_durable: parse(it.next().context("blocking durable")?)?,
    })
}

pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let quick = args.into_iter().any(|a| a == "--quick");
    let (n1, n16, d1, d16) = if quick {
        (500, 200, 100, 30)
    } else {
        (5000, 2000, 1000, 300)
    };
    // The raw-sled floor runs with the allocator settings sysmgr boots with.
    pss::keep_io_buffers_mapped();
    let root = std::env::temp_dir().join(format!("sysmgr-pss-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let _ = std::io::stdout().flush();
    let sled_fast = sled_run(&root.join("sled-fast"), false, n1, n16)?;
    let sled_durable = sled_run(&root.join("sled-durable"), true, d1, d16)?;
    let redis_fast = {
        let _r = start_redis(&root.join("redis-fast"), 16379, false)?;
        redis_run(16379, n1, n16)?
    };
    let redis_durable = {
        let _r = start_redis(&root.join("redis-durable"), 16380, true)?;
        redis_run(16380, d1, d16)?
    };
    let ceiling = crate::pss_ceiling::run(&root.join("ceiling"), n1, n16)?;
    // PSS: fast phases use n1/n16, durable phases d1/d16 -- run twice with the right counts.
    let pss_fast = pss_run(&root.join("pss-fast"), n1, n16)?;
    let pss_durable = pss_run(&root.join("pss-durable"), d1, d16)?;
    println!(
        "PSS benchmark: {KEY_LEN} B keys, {VALUE_LEN} B values; 1 writer: {n1} fast / {d1} durable writes; {WRITERS} writers: {n16} fast / {d16} durable writes each. Redis's writers, the storeless server's and PSS's blocking ones are threads on blocking sockets; the async ones are tokio tasks.\n"
    );
    println!(
        "| store | mode | 1 writer median µs | p99 µs | median vs Redis | {WRITERS} writers writes/s | vs Redis |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let row = |store: &str, mode: &str, n: &Numbers, redis: &Numbers| {
        println!(
            "| {store} | {mode} | {:.1} | {:.1} | {:.2}x | {:.0} | {:.2}x |",
            n.lat_med,
            n.lat_p99,
            n.lat_med / redis.lat_med,
            n.tput,
            n.tput / redis.tput
        );
    };
    let r = &redis_fast;
    row("raw sled in-process (floor)", "fast", &sled_fast, r);
    row(
        "**sysmgr PSS, blocking client**",
        "fast",
        &pss_fast.blocking_fast,
        r,
    );
    row("sysmgr PSS, async client", "fast", &pss_fast.async_fast, r);
    row("Redis 7, no persistence", "fast", r, r);
    row(
        "storeless server (ceiling), one thread, poll",
        "-",
        &ceiling.poll,
        r,
    );
    row(
        "storeless server (ceiling), a thread per writer",
        "-",
        &ceiling.threads,
        r,
    );
    let r = &redis_durable;
    let group = "durable (group commit)";
    row(
        "raw sled in-process (floor)",
        "durable (flush per write)",
        &sled_durable,
        r,
    );
    row(
        "**sysmgr PSS, blocking client**",
        group,
        &pss_durable.blocking_durable,
        r,
    );
    row(
        "sysmgr PSS, async client",
        group,
        &pss_durable.async_durable,
        r,
    );
    row("Redis 7, appendfsync always", "durable", r, r);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::io::stdin().read(&mut [0u8; 0]);
    Ok(())
}
