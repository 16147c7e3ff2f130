//! Starting one instance of a service: descriptors, environment, fork/exec, output pumps.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::unistd::{Gid, Pid, Uid};
use tokio::sync::watch;

use crate::config::{ServicePolicy, StartKind, search_path};
use crate::error::SysmgrError;
use crate::outlog::{self, ServiceLogs, Tail};
use crate::spawn::SpawnSpec;

/// Variables sysmgr sets itself; never inherited from sysmgr's own environment.
const RESERVED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "SYSMGR_SERVICE",
    "SYSMGR_START",
    "SYSMGR_START_COUNT",
    "SYSMGR_SOCKET",
    "SYSMGR_SUPERVISOR",
    "SYSMGR_REEXEC",
    "SYSMGR_STARTED_NICE",
];

/// A running instance.
pub struct Instance {
    pub pid: Pid,
    pub started: Instant,
    pub started_ms: u64,
    pub kind: StartKind,
    pub ready: bool,
    pub last_heartbeat: Instant,
    /// Set when sysmgr sent SIGABRT for missed heartbeats: (when, silence in ms).
    pub abort_sent: Option<(Instant, u64)>,
    /// Set when sysmgr killed it for not becoming ready in time.
    pub start_timed_out: bool,
    /// The service said `STOPPING=1`: it is shutting down by itself.
    pub stopping: bool,
    pub stderr_tail: Arc<Mutex<Tail>>,
    pub stderr_done: watch::Receiver<bool>,
}

/// What the spawner needs besides the policy.
pub struct StartEnv<'a> {
    pub supervisor: &'a str,
    pub socket: &'a std::path::Path,
    pub notify_socket: &'a std::path::Path,
    pub start_count: u32,
    pub dev_null: &'a OwnedFd,
    pub logs: &'a ServiceLogs,
}

fn ids(p: &ServicePolicy) -> Option<(Option<Uid>, Option<Gid>)> {
    if p.user.is_none() && p.group.is_none() {
        return None;
    }
    let user = p
        .user
        .as_deref()
        .and_then(|u| nix::unistd::User::from_name(u).ok().flatten());
    let gid = match &p.group {
        Some(g) => nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .map(|g| g.gid),
        None => user.as_ref().map(|u| u.gid),
    };
    Some((user.map(|u| u.uid), gid))
}

/// Fork and exec one instance, handing it `fds` (name, fd) as `LISTEN_FDS`.
pub fn start(
    p: &ServicePolicy,
    kind: StartKind,
    env: &StartEnv<'_>,
    fds: &[(String, OwnedFd)],
) -> Result<Instance, SysmgrError> {
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| SysmgrError::Sys {
            step: "pipe2",
            source,
        })
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && k != "PATH")
        .filter(|(k, _)| !p.env.contains_key(k))
        .collect();
    let path = std::env::join_paths(search_path())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !p.env.contains_key("PATH") {
        vars.push(("PATH".into(), path));
    }
    vars.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.push(("SYSMGR_SERVICE".into(), p.name.clone()));
    vars.push(("SYSMGR_SUPERVISOR".into(), env.supervisor.to_string()));
    vars.push(("SYSMGR_SOCKET".into(), env.socket.display().to_string()));
    vars.push(("SYSMGR_START".into(), kind.word().into()));
    vars.push(("SYSMGR_START_COUNT".into(), env.start_count.to_string()));
    vars.push((
        "NOTIFY_SOCKET".into(),
        env.notify_socket.display().to_string(),
    ));
    if let Some(hb) = p.heartbeat {
        vars.push(("WATCHDOG_USEC".into(), hb.interval.as_micros().to_string()));
    }
    if !fds.is_empty() {
        vars.push(("LISTEN_FDS".into(), fds.len().to_string()));
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        vars.push(("LISTEN_FDNAMES".into(), names.join(":")));
    }
    let pass: Vec<_> = fds.iter().map(|(_, f)| f.as_raw_fd()).collect();
    let mut spec = SpawnSpec::new(
        &p.program,
        &p.command,
        &vars,
        &p.working_dir,
        [env.dev_null, &out_w, &err_w],
        pass,
        ids(p),
    )?
    .with_nice(p.nice.unwrap_or_else(crate::boot::started_nice));
    let pid = spec.spawn()?;
    let started = Instant::now();
    drop((out_w, err_w));
    let tail = Arc::new(Mutex::new(Tail::default()));
    outlog::pump(out_r, env.logs.stdout.clone(), None);
    let stderr_done = outlog::pump(err_r, env.logs.stderr.clone(), Some(tail.clone()));
    Ok(Instance {
        pid,
        started,
        started_ms: crate::proclog::now_ms(),
        kind,
        ready: false,
        last_heartbeat: started,
        abort_sent: None,
        start_timed_out: false,
        stopping: false,
        stderr_tail: tail,
        stderr_done,
    })
}
