//! `sysmgr boot`: from a validated lab to a running supervisor.

use std::sync::atomic::{AtomicI32, Ordering};

use tokio::sync::mpsc;

use crate::config;
use crate::error::SysmgrError;
use crate::supervisor::{BootOptions, Exit, Supervisor};

/// Environment variable a reset sets across its re-exec.
pub const REEXEC_ENV: &str = "SYSMGR_REEXEC";

/// The nice sysmgr was started with, carried across a reset's re-exec (by then sysmgr runs at
/// its own).
const STARTED_NICE_ENV: &str = "SYSMGR_STARTED_NICE";

static STARTED_NICE: AtomicI32 = AtomicI32::new(0);

/// sysmgr's nice unless `sysmgr.toml` says otherwise.
const DEFAULT_NICE: i32 = -10;

/// The nice sysmgr was started with: what a service whose policy sets none runs at.
pub fn started_nice() -> i32 {
    STARTED_NICE.load(Ordering::Relaxed)
}

/// Run sysmgr (every thread it has, and so every thread it starts later) at `nice`
/// ([`DEFAULT_NICE`] unless `sysmgr.toml` sets it).
///
/// The supervisor and its broker are on the path of every MTS message and every PSS write, and
/// they restart what fails: they run ahead of the services. On one CPU a service woken by a
/// message sysmgr routes otherwise preempts sysmgr before it is done with the batch.
/// Lowering nice needs CAP_SYS_NICE: without it sysmgr runs at the nice it was started with.
fn take_priority(explicit: Option<i32>) {
    let nice = explicit.unwrap_or(DEFAULT_NICE);
    let started = std::env::var(STARTED_NICE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            nix::errno::Errno::clear();
            // SAFETY: getpriority has no memory effects; -1 is told from an error by errno.
            let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            if n == -1 && nix::errno::Errno::last_raw() != 0 {
                0
            } else {
                n
            }
        });
    STARTED_NICE.store(started, Ordering::Relaxed);
    if nice == started {
        return;
    }
    let tids: Vec<libc::id_t> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for tid in tids {
        // SAFETY: setpriority on a thread of this process; no memory effects.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } < 0 {
            let e = std::io::Error::last_os_error();
            if explicit.is_some() {
                tracing::warn!(
                    "cannot run at nice {nice} (sysmgr.toml): {e}; running at nice {started}"
                );
            } else {
                tracing::info!("running at nice {started}, not {nice} (not allowed: {e})");
            }
            return;
        }
    }
    tracing::debug!("running at nice {nice}");
}

/// Supervisor reset: the same PID (so PID 1 stays PID 1), fresh everything else. Returns only
/// when the re-exec failed.
pub fn reexec_reset() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let argv: Vec<String> = std::env::args().collect();
    std::process::Command::new("/proc/self/exe")
        .arg0(argv.first().map_or("sysmgr", String::as_str))
        .args(argv.iter().skip(1))
        .env(REEXEC_ENV, "reset")
        .env(STARTED_NICE_ENV, started_nice().to_string())
        .exec()
}

/// Boot once; returns how this boot ended. The caller re-execs on [`Exit::Reset`].
pub fn boot(opts: BootOptions) -> Result<Exit, SysmgrError> {
    let lab = config::load(&opts.config, opts.data_dir.as_deref())?;
    let after_reset = std::env::var(REEXEC_ENV).is_ok_and(|v| v == "reset");
    pss::keep_io_buffers_mapped();
    take_priority(lab.sysmgr.nice);
    if std::process::id() != 1 {
        // Orphans of our services are reparented to us, so we reap them and nothing leaks.
        nix::sys::prctl::set_child_subreaper(true).map_err(|source| SysmgrError::Sys {
            step: "PR_SET_CHILD_SUBREAPER",
            source,
        })?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SysmgrError::Io {
            step: "tokio runtime",
            path: "-".into(),
            source,
        })?;
    rt.block_on(async move {
        std::fs::create_dir_all(&lab.sysmgr.data_dir).map_err(|source| SysmgrError::Io {
            step: "create",
            path: lab.sysmgr.data_dir.clone(),
            source,
        })?;
        let listener = crate::control::bind(&lab.sysmgr.socket)?;
        // A previous life of this supervisor killed with SIGKILL may have left grandchildren
        // that escaped PDEATHSIG; they carry our socket in their environment.
        let marker = format!("SYSMGR_SOCKET={}", lab.sysmgr.socket.display());
        for pid in crate::procfs::pids_with_env(&marker) {
            tracing::warn!(pid, "killing a leftover process of a previous sysmgr life");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let sup = Supervisor::new(opts, lab)?;
        sup.record_boot(if after_reset {
            "boot after supervisor reset"
        } else {
            "boot"
        });
        let (tx, rx) = mpsc::channel(64);
        let server = tokio::spawn(crate::broker::conn::serve(listener, sup.broker(), tx));
        let exit = sup.run(rx).await;
        // The answer to the request that ended this boot (`system switchover`) still has to
        // reach its caller.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        server.abort();
        exit
    })
}
