//! Restart-latency benchmark: SIGKILL of a service → first instruction of its new instance.
//!
//! One run supervises the same tiny service (`sysmgr-demo`, which stamps CLOCK_MONOTONIC at the
//! top of `main`) under sysmgr and under each anchor — s6-supervise (with its readiness
//! notification-fd), runsv, daemontools' supervise, supervisord — plus the bare fork+exec floor
//! (this driver restarting the service itself). Kills are interleaved round by round, so drift in
//! the machine's load hits every contender alike, and before each kill every service has lived
//! longer than any anchor's restart throttle (1 s), i.e. each anchor runs at its best setting.
//!
//! Usage: sysmgr-bench restart [--kills N] [--out FILE.csv]

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn mono_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Lifetime before each kill: longer than every anchor's restart throttle.
const LIVE_BEFORE_KILL: Duration = Duration::from_millis(1100);

enum Kind {
    Sysmgr,
    S6,
    Runsv,
    Supervise,
    Supervisord,
    Floor,
}

struct Contender {
    name: &'static str,
    setting: &'static str,
    kind: Kind,
    dir: PathBuf,
    stamp: PathBuf,
    /// The supervisor process (None for the floor).
    sup: Option<Child>,
    /// The floor's own child.
    floor_child: Option<i32>,
    /// Lines of the stamp file consumed so far.
    seen: usize,
    pid: i32,
    since: Instant,
    samples: Vec<f64>,
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A daemontools-style service directory whose `run` is the demo binary itself (no shell).
fn service_dir(dir: &Path, demo: &Path, stamp: &Path, extra: &[&str]) -> Result<PathBuf> {
    let svc = dir.join("svc");
    std::fs::create_dir_all(&svc)?;
    std::os::unix::fs::symlink(demo, svc.join("run"))?;
    let mut args = vec!["--stamp".to_string(), stamp.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    std::fs::write(svc.join("run.args"), args.join("\n") + "\n")?;
    Ok(svc)
}

fn detached(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
}

impl Contender {
    fn new(
        name: &'static str,
        setting: &'static str,
        kind: Kind,
        root: &Path,
    ) -> Result<Contender> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let stamp = dir.join("stamp");
        Ok(Contender {
            name,
            setting,
            kind,
            dir,
            stamp,
            sup: None,
            floor_child: None,
            seen: 0,
            pid: 0,
            since: Instant::now(),
            samples: Vec::new(),
        })
    }

    fn start(&mut self, bins: &Path) -> Result<()> {
        let demo = bins.join("sysmgr-demo");
        let stamp = self.stamp.clone();
        match self.kind {
            Kind::Sysmgr => {
                std::fs::write(
                    self.dir.join("sysmgr.toml"),
                    "name = \"bench\"\ndata-dir = \"data\"\n[lab]\nmin-lifetime-floor = \"1s\"\n[failure-window]\nservices = 100\nwindow = \"1s\"\n",
                )?;
                std::fs::write(
                    self.dir.join("svc.toml"),
                    format!(
                        "command = [{:?}, \"--stamp\", {:?}]\n[ha.single-sup.primary]\naction = \"stateless\"\nmax-retries = 1000\nmin-lifetime = \"1s\"\n",
                        demo.display().to_string(),
                        stamp.display().to_string()
                    ),
                )?;
                self.sup = Some(
                    detached(
                        Command::new(bins.join("sysmgr"))
                            .arg("boot")
                            .arg("--config")
                            .arg(self.dir.join("sysmgr.toml")),
                    )
                    .spawn()?,
                );
            }
            Kind::S6 => {
                let svc = service_dir(&self.dir, &demo, &stamp, &["--notify-fd", "3"])?;
                std::fs::write(svc.join("notification-fd"), "3\n")?;
                self.sup = Some(
                    detached(Command::new("s6-supervise").arg(&svc))
                        .spawn()
                        .context("s6-supervise")?,
                );
            }
            Kind::Runsv => {
                let svc = service_dir(&self.dir, &demo, &stamp, &[])?;
                self.sup = Some(
                    detached(Command::new("runsv").arg(&svc))
                        .spawn()
                        .context("runsv")?,
                );
            }
            Kind::Supervise => {
                let svc = service_dir(&self.dir, &demo, &stamp, &[])?;
                self.sup = Some(
                    detached(Command::new("supervise").arg(&svc))
                        .spawn()
                        .context("supervise")?,
                );
            }
            Kind::Supervisord => {
                let conf = self.dir.join("supervisord.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "[supervisord]\nnodaemon=true\nlogfile={0}/supervisord.log\npidfile={0}/supervisord.pid\n\n[program:svc]\ncommand={1} --stamp {2}\nautorestart=true\nstartsecs=1\nstartretries=1000000\nstdout_logfile=NONE\nstderr_logfile=NONE\n",
                        self.dir.display(),
                        demo.display(),
                        stamp.display()
                    ),
                )?;
                self.sup = Some(
                    detached(Command::new("supervisord").arg("-c").arg(&conf))
                        .spawn()
                        .context("supervisord")?,
                );
            }
            Kind::Floor => self.floor_spawn(&demo)?,
        }
        let (pid, _) = self.next_stamp(Duration::from_secs(10))?;
        self.pid = pid;
        self.since = Instant::now();
        Ok(())
    }

    /// The floor: fork + exec with everything prepared, like the leanest possible supervisor.
    fn floor_spawn(&mut self, demo: &Path) -> Result<()> {
        let prog = CString::new(demo.display().to_string())?;
        let a1 = CString::new("--stamp")?;
        let a2 = CString::new(self.stamp.display().to_string())?;
        let argv = [prog.as_ptr(), a1.as_ptr(), a2.as_ptr(), std::ptr::null()];
        // SAFETY: fork; the child only calls execv on prepared strings, then _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child, async-signal-safe calls only.
            unsafe {
                libc::execv(prog.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
        }
        if pid < 0 {
            bail!("fork failed");
        }
        self.floor_child = Some(pid);
        Ok(())
    }

    /// Wait for the next stamp line: (pid, monotonic ns).
    fn next_stamp(&mut self, timeout: Duration) -> Result<(i32, u128)> {
        let end = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.stamp).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() > self.seen {
                let line = lines[self.seen];
                self.seen += 1;
                let mut it = line.split_whitespace();
                let pid = it.next().context("pid")?.parse()?;
                let ns = it.next().context("ns")?.parse()?;
                return Ok((pid, ns));
            }
            if Instant::now() > end {
                bail!("{}: no new instance within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn kill_and_measure(&mut self, bins: &Path) -> Result<f64> {
        let t = mono_ns();
        // SAFETY: kill(2) of the service instance we are measuring.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Kind::Floor = self.kind {
            let mut st = 0;
            // SAFETY: reap our own child.
            unsafe { libc::waitpid(self.pid, &mut st, 0) };
            self.floor_spawn(&bins.join("sysmgr-demo"))?;
        }
        let (pid, ns) = self.next_stamp(Duration::from_secs(10))?;
        self.pid = pid;
        self.since = Instant::now();
        Ok((ns.saturating_sub(t)) as f64 / 1e6)
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) of the current instance.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(c) = &mut self.sup {
            let g = c.id() as i32;
            // SAFETY: kill the supervisor's process group (we started it as a group leader).
            unsafe { libc::kill(-g, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: as above.
            unsafe { libc::kill(-g, libc::SIGKILL) };
            let _ = c.wait();
        }
        // SAFETY: the service may have been in its own group; it is gone either way.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(p) = self.floor_child {
            // SAFETY: reap our own child.
            unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
        }
    }
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let mut kills = 200usize;
    let mut out: Option<PathBuf> = None;
    let mut args = args;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kills" => kills = args.next().context("--kills N")?.parse()?,
            "--out" => out = Some(args.next().context("--out FILE")?.into()),
            other => bail!("unknown argument {other}"),
        }
    }
    let bins = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let root = std::env::temp_dir().join(format!("sysmgr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut cs = vec![
        Contender::new(
            "fork+exec floor",
            "driver forks+execs after waitpid",
            Kind::Floor,
            &root,
        )?,
        Contender::new(
            "sysmgr",
            "stateless restart policy, release build",
            Kind::Sysmgr,
            &root,
        )?,
        Contender::new(
            "s6-supervise",
            "notification-fd 3 (readiness)",
            Kind::S6,
            &root,
        )?,
        Contender::new("runsv", "default", Kind::Runsv, &root)?,
        Contender::new("supervise", "daemontools default", Kind::Supervise, &root)?,
        Contender::new(
            "supervisord",
            "autorestart, startsecs=1",
            Kind::Supervisord,
            &root,
        )?,
    ];
    let _ = write_exec(
        &root.join("README"),
        "sysmgr restart-latency benchmark scratch dir\n",
    );
    for c in cs.iter_mut() {
        c.start(&bins)
            .with_context(|| format!("starting {}", c.name))?;
    }
    eprintln!(
        "all {} contenders up; {kills} kills each, interleaved",
        cs.len()
    );
    let n = cs.len();
    for round in 0..kills {
        for k in 0..n {
            let c = &mut cs[(round + k) % n];
            let lived = c.since.elapsed();
            if lived < LIVE_BEFORE_KILL {
                std::thread::sleep(LIVE_BEFORE_KILL - lived);
            }
            let ms = c.kill_and_measure(&bins)?;
            c.samples.push(ms);
        }
        if round % 20 == 19 {
            eprintln!("round {}/{kills}", round + 1);
        }
    }
    for c in cs.iter_mut() {
        c.stop();
    }
    let mut floor_median = 0.0;
    let mut rows = Vec::new();
    for c in &cs {
        let mut v = c.samples.clone();
        v.sort_by(f64::total_cmp);
        let med = pct(&v, 0.5);
        if let Kind::Floor = c.kind {
            floor_median = med;
        }
        rows.push((c.name, c.setting, med, pct(&v, 0.99), v[0], v[v.len() - 1]));
    }
    println!("| supervisor | setting | median ms | p99 ms | min ms | max ms | median / floor |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (name, setting, med, p99, min, max) in &rows {
        println!(
            "| {name} | {setting} | {med:.3} | {p99:.3} | {min:.3} | {max:.3} | {:.2}x |",
            med / floor_median
        );
    }
    if let Some(path) = out {
        let mut f = std::fs::File::create(path)?;
        writeln!(f, "supervisor,kill,ms")?;
        for c in &cs {
            for (i, s) in c.samples.iter().enumerate() {
                writeln!(f, "{},{i},{s:.4}", c.name)?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
