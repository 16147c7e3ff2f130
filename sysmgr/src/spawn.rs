//! fork/exec of one service instance.
//!
//! Everything the child needs (argv, envp, the program path, descriptors, ids, its stack) is
//! built before the child exists; the child then makes only async-signal-safe calls: `setpgid`,
//! `prctl`, `sigprocmask`, `signal`, `dup2`, `fcntl`, `close_range`, `chdir`, `setpriority`,
//! `write` (of a message built before), `setgroups/setgid/setuid`, `execve`.
//!
//! The child is created like glibc's posix_spawn does it: `clone(CLONE_VM | CLONE_VFORK)` on a
//! stack of its own, with every signal blocked around the clone and every disposition reset to
//! default in the child before it unblocks them. Sharing the address space until `execve` means
//! no page-table copy of sysmgr's (tokio + sled) memory: restart latency does not grow with
//! sysmgr's size. The parent thread is suspended until the child has exec'd or exited.
//! `LISTEN_PID` must be the child's own pid, which only the child knows: its digits are written
//! into a pre-allocated env buffer after `fork`.

use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::{Gid, Pid, Uid};

/// Errors preparing or forking a service.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("fork: {0}")]
    Fork(#[source] nix::Error),
}

const PID_DIGITS: usize = 10;

/// A ready-to-fork instance.
pub struct SpawnSpec {
    program: CString,
    /// Keeps the argv strings alive for `argv_ptrs`.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    /// NUL-terminated `K=V` buffers; the LISTEN_PID one is patched in the child.
    env: Vec<Vec<u8>>,
    env_ptrs: Vec<*const c_char>,
    listen_pid: Option<usize>,
    cwd: CString,
    stdio: [RawFd; 3],
    /// Descriptors to appear at 3, 4, … in the child.
    pass_fds: Vec<RawFd>,
    /// Scratch for moving `pass_fds` out of the way; allocated here, used in the child.
    scratch: Vec<RawFd>,
    ids: Option<(Option<Uid>, Option<Gid>)>,
    /// The child's nice value (None: sysmgr's, inherited).
    nice: Option<i32>,
    /// What the child writes to its stderr when it cannot take `nice`.
    nice_err: Vec<u8>,
    parent: Pid,
    /// Where the child writes its pid digits (inside the LISTEN_PID buffer), or null.
    pid_buf: *mut u8,
    /// The child's stack until it execs.
    stack: Vec<u8>,
}

/// Stack for the child between clone and execve.
const CHILD_STACK: usize = 64 * 1024;

fn cstr(s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul(String::from_utf8_lossy(s).into_owned()))
}

impl SpawnSpec {
    /// Prepare an instance. `env` is the complete environment; `pass_fds` will become
    /// `LISTEN_FDS` (the caller adds `LISTEN_FDS`/`LISTEN_FDNAMES`; `LISTEN_PID` is added here).
    pub fn new(
        program: &Path,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        stdio: [&OwnedFd; 3],
        pass_fds: Vec<RawFd>,
        ids: Option<(Option<Uid>, Option<Gid>)>,
    ) -> Result<SpawnSpec, SpawnError> {
        let program = cstr(program.as_os_str().as_bytes())?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(env.len() + 1);
        for (k, v) in env {
            let mut b = Vec::with_capacity(k.len() + v.len() + 2);
            b.extend_from_slice(k.as_bytes());
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            if b.contains(&0) {
                return Err(SpawnError::Nul(k.clone()));
            }
            b.push(0);
            bufs.push(b);
        }
        let listen_pid = (!pass_fds.is_empty()).then(|| {
            let mut b = b"LISTEN_PID=".to_vec();
            b.extend_from_slice(&[b'0'; PID_DIGITS]);
            b.push(0);
            bufs.push(b);
            bufs.len() - 1
        });
        let mut env_ptrs: Vec<*const c_char> =
            bufs.iter().map(|b| b.as_ptr() as *const c_char).collect();
        env_ptrs.push(std::ptr::null());
        let cwd = cstr(cwd.as_os_str().as_bytes())?;
        let scratch = vec![-1; pass_fds.len()];
        Ok(SpawnSpec {
            program,
            _argv: argv,
            argv_ptrs,
            env: bufs,
            env_ptrs,
            listen_pid,
            cwd,
            stdio: [
                stdio[0].as_raw_fd(),
                stdio[1].as_raw_fd(),
                stdio[2].as_raw_fd(),
            ],
            pass_fds,
            scratch,
            ids,
            nice: None,
            nice_err: Vec::new(),
            parent: nix::unistd::getpid(),
            pid_buf: std::ptr::null_mut(),
            stack: vec![0u8; CHILD_STACK],
        })
    }

    /// Run the instance at `nice` rather than sysmgr's own. A value below sysmgr's needs
    /// CAP_SYS_NICE; without it the child says so on its stderr and exits 122.
    pub fn with_nice(mut self, nice: i32) -> SpawnSpec {
        self.nice = Some(nice);
        self.nice_err = format!("sysmgr: cannot run this service at nice {nice}: setpriority failed (lowering nice needs CAP_SYS_NICE)\n").into_bytes();
        self
    }

    /// Create the child and exec. Returns the child's pid; exec failures show as exit code 127.
    pub fn spawn(&mut self) -> Result<Pid, SpawnError> {
        self.pid_buf = match self.listen_pid {
            // The digits start after "LISTEN_PID=".
            Some(i) => self.env[i][11..].as_mut_ptr(),
            None => std::ptr::null_mut(),
        };
        extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
            // SAFETY: `arg` is the `SpawnSpec` whose `spawn` is suspended in clone (CLONE_VFORK)
            // until this child execs or exits; nothing else touches it meanwhile.
            unsafe { (*(arg as *mut SpawnSpec)).child() }
        }
        // 16-byte aligned top of the child's stack (stacks grow down on every Linux target here).
        let top = (self.stack.as_mut_ptr() as usize + self.stack.len()) & !15;
        // SAFETY: signals are blocked so no handler of ours can run on the child's stack in our
        // shared address space; the child resets dispositions before unblocking. The mask is
        // restored right after clone returns in the parent.
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                self as *mut SpawnSpec as *mut libc::c_void,
            );
            let errno = nix::Error::last();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(SpawnError::Fork(errno));
            }
            pid
        };
        Ok(Pid::from_raw(pid))
    }

    /// # Safety
    /// Only in the child right after clone, with all signals blocked; never returns.
    unsafe fn child(&mut self) -> ! {
        let pid_buf = self.pid_buf;
        // SAFETY: async-signal-safe libc calls on pre-built data; any failure ends in _exit.
        unsafe {
            libc::setpgid(0, 0);
            // No service outlives sysmgr: die with the parent (checked for the fork/exit race).
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != self.parent.as_raw() {
                libc::_exit(126);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // Rust ignores SIGPIPE; an ignored disposition survives exec, so restore it.
            for sig in [
                libc::SIGPIPE,
                libc::SIGCHLD,
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
                libc::SIGQUIT,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            for (target, &fd) in self.stdio.iter().enumerate() {
                if libc::dup2(fd, target as i32) < 0 {
                    libc::_exit(125);
                }
            }
            let n = self.pass_fds.len() as i32;
            for (i, &fd) in self.pass_fds.iter().enumerate() {
                let t = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3 + n);
                if t < 0 {
                    libc::_exit(125);
                }
                self.scratch[i] = t;
            }
            for (i, &fd) in self.scratch.iter().enumerate() {
                // dup2 clears close-on-exec on the target.
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    libc::_exit(125);
                }
            }
            libc::syscall(
                libc::SYS_close_range,
                (3 + n) as libc::c_uint,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            );
            if libc::chdir(self.cwd.as_ptr()) < 0 {
                libc::_exit(124);
            }
            // Before dropping privileges: a negative nice needs them.
            if let Some(nice) = self.nice
                && libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0
            {
                libc::write(2, self.nice_err.as_ptr().cast(), self.nice_err.len());
                libc::_exit(122);
            }
            if let Some((uid, gid)) = self.ids {
                if let Some(g) = gid {
                    let gids = [g.as_raw()];
                    if libc::setgroups(1, gids.as_ptr()) < 0 || libc::setgid(g.as_raw()) < 0 {
                        libc::_exit(123);
                    }
                }
                if let Some(u) = uid
                    && libc::setuid(u.as_raw()) < 0
                {
                    libc::_exit(123);
                }
            }
            if !pid_buf.is_null() {
                // Decimal, no leading zeros (C parsers may read them as octal), NUL-terminated
                // inside the pre-allocated buffer.
                let mut digits = [0u8; PID_DIGITS];
                let mut p = libc::getpid() as u32;
                let mut len = 0;
                loop {
                    digits[len] = b'0' + (p % 10) as u8;
                    len += 1;
                    p /= 10;
                    if p == 0 {
                        break;
                    }
                }
                for i in 0..len {
                    *pid_buf.add(i) = digits[len - 1 - i];
                }
                *pid_buf.add(len) = 0;
            }
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
            libc::_exit(127)
        }
    }
}
