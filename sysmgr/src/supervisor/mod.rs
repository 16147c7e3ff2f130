//! The supervisor: one owner of all service state, fed by one `select!`.
//!
//! ```text
//!   SIGCHLD ──────────┐
//!   SIGTERM/INT/HUP ──┤
//!   notify sockets ───┼──▶ Supervisor (sync &mut self handlers) ──▶ fork/exec, kill, sled
//!   control requests ─┤           │
//!   timer (deadline) ─┘           └─ engine::HaState per service (pure)
//! ```
//! Everything with a deadline (start timeouts, heartbeats, stop timeouts, min-lifetime) is
//! folded into one `next_deadline`, so there is one timer.

mod events;
pub mod instance;
mod show;
mod standby;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, Lab, ServicePolicy, StartKind, SysmgrConfig};
use crate::control::proto;
use crate::engine::{FailureTracker, HaState};
use crate::error::SysmgrError;
use crate::notify::{self, NotifyMsg};
use crate::outlog::ServiceLogs;
use crate::proclog::{Death, ProcLog, ProcRecord, now_ms};
use instance::Instance;

/// Grace between SIGABRT for missed heartbeats and SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// One policy as `show` and the process log print it.
pub(crate) fn policy_text(level: &str, p: Option<&config::Policy>) -> String {
    use config::Action;
    let Some(p) = p else {
        return format!("{level}: not defined");
    };
    match p.action {
        Action::Stateful | Action::Stateless => format!(
            "{level}: {}, max-retries {}, min-lifetime {}",
            p.action.word(),
            p.max_retries,
            humantime::format_duration(p.min_lifetime)
        ),
        a => format!("{level}: {}", a.word()),
    }
}

/// How a boot of sysmgr ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Orderly shutdown (SIGTERM/SIGINT).
    Shutdown,
    /// Supervisor reset: the caller re-execs sysmgr.
    Reset,
}

/// What to do when a requested stop completes.
enum AfterStop {
    Nothing,
    Start(StartKind),
    Remove,
    Replace(Box<ServicePolicy>),
}

struct StopCtx {
    deadline: Instant,
    killed: bool,
    then: AfterStop,
    /// Why, for the process log.
    reason: &'static str,
}

/// A notify socket and the task that reads it.
struct NotifySock {
    path: PathBuf,
    fd: Arc<AsyncFd<OwnedFd>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NotifySock {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One service and everything sysmgr keeps about it.
struct Svc {
    policy: ServicePolicy,
    ha: HaState,
    inst: Option<Instance>,
    /// A start waiting for its dependencies.
    pending: Option<StartKind>,
    stop: Option<StopCtx>,
    start_count: u32,
    /// The fd store (FDSTORE=1), in the order stored.
    fdstore: Vec<(String, OwnedFd)>,
    /// Latest STATUS= text.
    status: String,
    /// Left down by policy or after a failed start.
    failed: Option<String>,
    last_failure: Option<(String, u64)>,
    notify: NotifySock,
    logs: ServiceLogs,
    /// On the standby: restart due then (no HA policies there).
    standby_restart_at: Option<Instant>,
}

enum Phase {
    Running,
    ShuttingDown(Exit),
}

/// A request to SAP `sysmgr`, with the kernel's word on who sent it.
pub struct ControlMsg {
    pub identity: crate::broker::Identity,
    pub req: proto::Request,
    pub reply: oneshot::Sender<Result<proto::Response, String>>,
}

/// Where a boot gets its configuration.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub config: PathBuf,
    pub data_dir: Option<PathBuf>,
    /// Operator's choice: a corrupt PSS database is moved aside instead of refusing to boot.
    pub move_aside_corrupt_db: bool,
}

pub struct Supervisor {
    opts: BootOptions,
    /// The MTS broker, shared with the connection tasks (same thread; never contended).
    broker: Arc<std::sync::Mutex<crate::broker::Broker>>,
    sys: SysmgrConfig,
    services: BTreeMap<String, Svc>,
    order: Vec<String>,
    log: ProcLog,
    failures: FailureTracker,
    phase: Phase,
    finished: Option<Exit>,
    dev_null: OwnedFd,
    notify_tx: mpsc::UnboundedSender<(String, NotifyMsg)>,
    notify_rx: mpsc::UnboundedReceiver<(String, NotifyMsg)>,
    log_dir: PathBuf,
    notify_dir: PathBuf,
    /// The database (the replication link reads and writes it too).
    store: pss::Store,
    /// Two supervisors: who is active, the link, the other one.
    red: Option<crate::redundancy::Red>,
    red_tx: mpsc::UnboundedSender<crate::redundancy::RedEvent>,
    red_rx: mpsc::UnboundedReceiver<crate::redundancy::RedEvent>,
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SysmgrError {
    let path = path.to_path_buf();
    move |source| SysmgrError::Io { step, path, source }
}

fn spawn_notify_reader(
    name: String,
    fd: Arc<AsyncFd<OwnedFd>>,
    tx: mpsc::UnboundedSender<(String, NotifyMsg)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            loop {
                match notify::recv(fd.get_ref()) {
                    Ok(Some(m)) => {
                        if tx.send((name.clone(), m)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "notify socket receive failed");
                        guard.clear_ready();
                        break;
                    }
                }
            }
        }
    })
}

impl Supervisor {
    /// Prepare a boot: validate the lab, open the database, bind sockets. Nothing is started.
    pub fn new(opts: BootOptions, lab: Lab) -> Result<Supervisor, SysmgrError> {
        let sys = lab.sysmgr;
        let data = &sys.data_dir;
        let log_dir = data.join("logs");
        let notify_dir = data.join("notify");
        for d in [data, &log_dir, &notify_dir] {
            std::fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let (store, moved) = if opts.move_aside_corrupt_db {
            pss::Store::open_or_move_aside(&data.join("db"))?
        } else {
            (pss::Store::open(&data.join("db"))?, None)
        };
        if let Some(m) = &moved {
            crate::syslog::err(
                2,
                "PSS_MOVED_ASIDE",
                &format!(
                    "The PSS database could not be used; it was moved to {} and sysmgr starts with an empty one.",
                    m.display()
                ),
            );
        }
        let r = store.replayed();
        if r.applied + r.skipped + r.out_of_order > 0 {
            tracing::info!(
                applied = r.applied,
                already_in_sled = r.skipped,
                out_of_order = r.out_of_order,
                "PSS write-ahead log replayed"
            );
        }
        let watchdog = store.start_watchdog(Duration::from_millis(500), stalled_db);
        if let Err(e) = watchdog {
            tracing::error!(error = %e, "cannot start the PSS database watchdog");
        }
        let flusher = crate::flusher::Flusher::start(&store);
        let log = ProcLog::open(&store, sys.proclog_max_records, flusher.clone())?;
        let queues = crate::broker::QueueStore::open(&store, flusher)?;
        let mut broker = crate::broker::Broker::new(sys.mts_limits, Some(queues));
        broker.pss = Some(crate::broker::pss::PssHandle::start(
            pss::server::Server::new(&store)?,
            sys.pss_poll,
        ));
        broker.admin_group = sys.admin_group.clone();
        let broker = Arc::new(std::sync::Mutex::new(broker));
        let dev_null = std::fs::File::open("/dev/null")
            .map_err(io_err("open", Path::new("/dev/null")))?
            .into();
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        let (red_tx, red_rx) = mpsc::unbounded_channel();
        let red = match &sys.redundancy {
            Some(r) => Some(
                crate::redundancy::Red::open(r.clone(), &sys.name, red_tx.clone())
                    .map_err(io_err("arbiter", &sys.path))?,
            ),
            None => None,
        };
        if let Some(r) = &red {
            store.set_write_gate(r.write_gate());
        }
        let mut s = Supervisor {
            opts,
            broker,
            sys,
            services: BTreeMap::new(),
            order: Vec::new(),
            log,
            failures: FailureTracker::default(),
            phase: Phase::Running,
            finished: None,
            dev_null,
            notify_tx,
            notify_rx,
            log_dir,
            notify_dir,
            store: store.clone(),
            red,
            red_tx,
            red_rx,
        };
        for (name, p) in lab.services {
            s.add_service(name, p)?;
        }
        s.order = config::start_order(
            &s.services
                .iter()
                .map(|(k, v)| (k.clone(), v.policy.clone()))
                .collect(),
        );
        s.declare_saps();
        Ok(s)
    }

    fn add_service(&mut self, name: String, policy: ServicePolicy) -> Result<(), SysmgrError> {
        let path = self.notify_dir.join(format!("{name}.sock"));
        let fd = notify::bind_socket(&path)?;
        let fd = Arc::new(crate::async_fd(fd).map_err(io_err("register", &path))?);
        let task = spawn_notify_reader(name.clone(), fd.clone(), self.notify_tx.clone());
        let logs = ServiceLogs::new(&self.log_dir, &name, self.sys.log_max_bytes);
        let svc = Svc {
            policy,
            ha: HaState::default(),
            inst: None,
            pending: Some(StartKind::Fresh),
            stop: None,
            start_count: 0,
            fdstore: Vec::new(),
            status: String::new(),
            failed: None,
            last_failure: None,
            notify: NotifySock { path, fd, task },
            logs,
            standby_restart_at: None,
        };
        self.services.insert(name, svc);
        Ok(())
    }

    /// The broker, for the connection tasks.
    pub fn broker(&self) -> Arc<std::sync::Mutex<crate::broker::Broker>> {
        self.broker.clone()
    }

    fn mts(&self) -> std::sync::MutexGuard<'_, crate::broker::Broker> {
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell the broker which SAPs the current policies declare.
    fn declare_saps(&self) {
        let decl: Vec<(String, u32, String)> = self
            .services
            .iter()
            .flat_map(|(n, s)| {
                s.policy
                    .saps
                    .iter()
                    .map(move |(sap, num)| (sap.clone(), *num, n.clone()))
            })
            .collect();
        let mut b = self.mts();
        b.set_saps(&decl);
        b.set_limits(self.sys.mts_limits);
        b.admin_group = self.sys.admin_group.clone();
    }

    /// Run until shutdown or reset.
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<ControlMsg>,
    ) -> Result<Exit, SysmgrError> {
        let sig = |k| signal(k).map_err(io_err("signal handler", Path::new("-")));
        let mut sigchld = sig(SignalKind::child())?;
        let mut sigterm = sig(SignalKind::terminate())?;
        let mut sigint = sig(SignalKind::interrupt())?;
        let mut sighup = sig(SignalKind::hangup())?;
        // Children may have exited before the handler existed.
        self.reap();
        self.start_redundancy();
        self.try_start_pending();
        loop {
            if let Some(exit) = self.finished {
                let _ = self.log.append(self.supervisor_record(match exit {
                    Exit::Shutdown => "shutdown",
                    Exit::Reset => "supervisor reset",
                }));
                if let Err(e) = self.log.sync_now() {
                    tracing::error!("process log flush failed: {e}");
                }
                if exit == Exit::Reset {
                    self.hand_over();
                }
                return Ok(exit);
            }
            // No timer at all when nothing is due: an armed timer makes every idle epoll_wait
            // an hrtimer sleep, which costs MTS latency on every wake-up (see BENCHMARKS.md).
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = sigchld.recv() => self.reap(),
                Some(m) = self.notify_rx.recv() => self.on_notify(&m.0, m.1),
                _ = sigterm.recv() => self.begin_shutdown(Exit::Shutdown, "SIGTERM"),
                _ = sigint.recv() => self.begin_shutdown(Exit::Shutdown, "SIGINT"),
                _ = sighup.recv() => {
                    match self.reload() {
                        Ok(s) => tracing::info!("SIGHUP: {s}"),
                        Err(e) => tracing::error!("SIGHUP reload refused, nothing changed:\n{e}"),
                    }
                }
                Some(msg) = control.recv() => self.on_control(msg),
                Some(ev) = self.red_rx.recv() => self.on_red(ev),
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.on_tick(Instant::now()),
            }
        }
    }

    fn supervisor_record(&self, action: &str) -> ProcRecord {
        ProcRecord {
            seq: 0,
            supervisor: self.sys.name.clone(),
            service: "sysmgr".into(),
            pid: std::process::id() as i32,
            start_kind: StartKind::Fresh,
            start_count: 0,
            started_ms: now_ms(),
            ended_ms: now_ms(),
            death: Death::Supervisor,
            action: action.into(),
            policy: String::new(),
            new_pid: None,
        }
    }

    /// Record the boot itself.
    pub fn record_boot(&self, action: &str) {
        if let Err(e) = self.log.append(self.supervisor_record(action)) {
            tracing::error!("process log: {e}");
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for s in self.services.values() {
            if let Some(t) = s.ha.deadline() {
                at(t);
            }
            if let Some(t) = s.standby_restart_at {
                at(t);
            }
            if let Some(stop) = &s.stop
                && !stop.killed
            {
                at(stop.deadline);
            }
            if let Some(i) = &s.inst {
                if s.policy.readiness == config::Readiness::Notify && !i.ready && !i.start_timed_out
                {
                    at(i.started + s.policy.start_timeout);
                }
                if let Some((t, _)) = i.abort_sent {
                    at(t + ABORT_GRACE);
                } else if let Some(hb) = s.policy.heartbeat {
                    at(i.last_heartbeat + hb.interval * hb.misses);
                }
            }
        }
        next
    }

    /// Send `sig` to a service's whole process group.
    fn signal_group(pid: nix::unistd::Pid, sig: Signal) {
        let _ = killpg(pid, sig);
    }

    fn stored_fd_names(&self, name: &str) -> Vec<String> {
        self.services
            .get(name)
            .map(|s| {
                s.fdstore
                    .iter()
                    .map(|(n, f)| format!("{n} (fd {})", f.as_raw_fd()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The PSS database has not completed a flush for `waited`: sled's IO pool is deadlocked
/// (sled#1412) and every write waits forever, the supervisor's own included. After 5 s it is
/// reported; after 30 s the supervisor resets itself (re-exec under the same PID, as the HA
/// action `reset` does): sled recovers what was flushed, every acknowledged durable write
/// among it, and the services start again; with two supervisors the lock goes with the old
/// image, so the standby takes over.
fn stalled_db(waited: Duration) {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if waited >= Duration::from_secs(5) && !REPORTED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        crate::syslog::err(
            2,
            "PSS_STALLED",
            "The PSS database has not completed a flush in 5 s (sled's IO pool deadlocked, sled#1412, or a very slow disk); the supervisor resets itself at 30 s.",
        );
    }
    if waited >= Duration::from_secs(30) {
        crate::syslog::err(
            2,
            "SUPERVISOR_RESET",
            "The PSS database is deadlocked: supervisor reset.",
        );
        let err = crate::boot::reexec_reset();
        crate::syslog::err(2, "SUPERVISOR_RESET", &format!("re-exec failed: {err}"));
        std::process::abort();
    }
}
