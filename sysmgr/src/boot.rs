//! `sysmgr boot`: from a validated lab to a running supervisor.

use tokio::sync::mpsc;

use crate::config;
use crate::error::SysmgrError;
use crate::supervisor::{BootOptions, Exit, Supervisor};

/// Environment variable a reset sets across its re-exec.
pub const REEXEC_ENV: &str = "SYSMGR_REEXEC";

/// Supervisor reset: the same PID (so PID 1 stays PID 1), fresh everything else. Returns only
/// when the re-exec failed.
pub fn reexec_reset() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let argv: Vec<String> = std::env::args().collect();
    std::process::Command::new("/proc/self/exe")
        .arg0(argv.first().map_or("sysmgr", String::as_str))
        .args(argv.iter().skip(1))
        .env(REEXEC_ENV, "reset")
        .exec()
}

/// Boot once; returns how this boot ended. The caller re-execs on [`Exit::Reset`].
pub fn boot(opts: BootOptions) -> Result<Exit, SysmgrError> {
    let lab = config::load(&opts.config, opts.data_dir.as_deref())?;
    let after_reset = std::env::var(REEXEC_ENV).is_ok_and(|v| v == "reset");
    pss::keep_io_buffers_mapped();
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
