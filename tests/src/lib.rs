//! Harness for end-to-end tests: a temp lab, the real `sysmgr` binary, its CLI.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>` of this build (the test executable lives in `target/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A workspace binary; `cargo build --workspace` must have built it.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test-all does)",
        p.display()
    );
    p
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub mod netns;

/// Poll `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A lab in a temp directory: `sysmgr.toml`, policy files, data dir.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub daemon: Option<Child>,
    /// Extra command prefix for boot (e.g. `unshare --pid --fork --mount-proc`).
    pub wrapper: Vec<String>,
    /// Extra arguments of `sysmgr boot`.
    pub boot_args: Vec<String>,
}

/// A file's text once `ok` holds for it, or as it is after 5 s.
fn file_when(path: &Path, ok: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if ok(&text) || Instant::now() >= end {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Lab {
    /// A lab whose minimum-lifetime floor is lowered to `floor` (e.g. "1s").
    pub fn new(floor: &str) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("sysmgr-t")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let lab = Lab {
            dir,
            daemon: None,
            wrapper: Vec::new(),
            boot_args: Vec::new(),
        };
        lab.write(
            "sysmgr.toml",
            &format!("name = \"sup-t\"\ndata-dir = \"data\"\nsupervisors = 1\n[lab]\nmin-lifetime-floor = \"{floor}\"\n[failure-window]\nservices = 5\nwindow = \"1s\"\n"),
        );
        lab
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).expect("write lab file");
    }

    /// Write `<name>.toml` with the demo binary as `command`, plus `extra` TOML.
    pub fn service(&self, name: &str, demo_args: &[&str], extra: &str) {
        let mut argv = vec![format!("{:?}", bin("sysmgr-demo").display().to_string())];
        argv.extend(demo_args.iter().map(|a| format!("{a:?}")));
        self.write(
            &format!("{name}.toml"),
            &format!("command = [{}]\n{extra}\n", argv.join(", ")),
        );
    }

    /// Service `gate`: READY `ms` after it starts with `Some(ms)`; never with `None`, so the
    /// services that depend on it never start.
    pub fn gate(&self, ready_after_ms: Option<u64>) {
        let delay = ready_after_ms.map(|ms| ms.to_string());
        let args: Vec<&str> = match &delay {
            Some(ms) => vec!["--notify", "--ready-delay", ms],
            None => vec![],
        };
        self.service(
            "gate",
            &args,
            "readiness = \"notify\"\nstart-timeout = \"1h\"\n",
        );
    }

    pub fn config(&self) -> PathBuf {
        self.path("sysmgr.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("data/sysmgr.sock")
    }

    /// Start `sysmgr boot` and wait until its socket answers.
    pub fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sysmgr.log"))
            .expect("log");
        let err = log.try_clone().expect("log");
        self.boot_with_stderr(log, Stdio::from(err));
    }

    /// [`Lab::boot`] with sysmgr's stderr somewhere else than `sysmgr.log`.
    pub fn boot_with_stderr(&mut self, log: std::fs::File, stderr: Stdio) {
        let mut cmd = if self.wrapper.is_empty() {
            Command::new(bin("sysmgr"))
        } else {
            let mut c = Command::new(&self.wrapper[0]);
            c.args(&self.wrapper[1..]).arg(bin("sysmgr"));
            c
        };
        cmd.arg("boot")
            .args(&self.boot_args)
            .arg("--config")
            .arg(self.config())
            // sled's own debug lines (one per log-buffer write) were half of a failing test's
            // log tail and crowded sysmgr's lines out of it.
            .env("RUST_LOG", "debug,sled=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        cmd.env_remove("SYSMGR_SOCKET");
        self.daemon = Some(cmd.spawn().expect("spawn sysmgr"));
        wait_for(Duration::from_secs(10), "sysmgr socket", || {
            if let Some(d) = &mut self.daemon
                && let Ok(Some(st)) = d.try_wait()
            {
                panic!("sysmgr exited during boot ({st}):\n{}", self.daemon_log());
            }
            self.cli(&["show", "processes"])
                .status
                .success()
                .then_some(())
        });
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.path("sysmgr.log")).unwrap_or_default()
    }

    /// A service's stderr log once `ok` holds for it (or as it is after 5 s): sysmgr copies
    /// it from the service's pipe through a writer thread, so a line the service wrote before
    /// an event the test saw may land a little after.
    pub fn service_log_when(&self, service: &str, ok: impl Fn(&str) -> bool) -> String {
        file_when(&self.path(&format!("data/logs/{service}.stderr.log")), ok)
    }

    /// The daemon's log once it contains `needle` (sysmgr writes its log from a thread of its
    /// own, so a line may land just after the event the test saw).
    pub fn wait_log(&self, needle: &str) -> String {
        let log = file_when(&self.path("sysmgr.log"), |l| l.contains(needle));
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
        log
    }

    pub fn daemon_pid(&self) -> i32 {
        self.daemon.as_ref().expect("booted").id() as i32
    }

    /// Run the CLI against this lab.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("sysmgr"))
            .args(args)
            .arg("--config")
            .arg(self.config())
            .env_remove("SYSMGR_SOCKET")
            .output()
            .expect("run cli")
    }

    /// Run a show command with `--json` and parse it.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// `show system redundancy status --json`, None while the daemon does not answer.
    pub fn redundancy(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["show", "system", "redundancy", "status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// This supervisor's redundancy state (`Active`, `Standby`, `Fenced`).
    pub fn role(&self) -> Option<String> {
        self.redundancy()
            .and_then(|s| s["this"]["redundancy_state"].as_str().map(str::to_string))
    }

    /// The process log records of one service.
    pub fn records(&self, service: &str) -> Vec<serde_json::Value> {
        let v = self.json(&["show", "processes", "log"]);
        v["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["service"] == service)
            .cloned()
            .collect()
    }

    /// The running pid of a service (None while it is down).
    pub fn pid_of(&self, service: &str) -> Option<i32> {
        let v = self.json(&["show", "processes"]);
        v.as_array()?.iter().find(|r| r["name"] == service)?["pid"]
            .as_i64()
            .map(|p| p as i32)
    }

    /// Wait until `service` runs with a pid other than `not`.
    pub fn wait_running(&self, service: &str, not: Option<i32>) -> i32 {
        wait_for(
            Duration::from_secs(10),
            &format!("{service} running"),
            || {
                let v = self.json(&["show", "processes"]);
                let r = v.as_array()?.iter().find(|r| r["name"] == service)?.clone();
                let pid = r["pid"].as_i64()? as i32;
                (r["state"] == "running" && Some(pid) != not).then_some(pid)
            },
        )
    }

    /// SIGKILL the running instance of `service` and wait for sysmgr to run the next one;
    /// returns the new pid.
    pub fn kill9(&self, service: &str) -> i32 {
        let pid = self
            .pid_of(service)
            .unwrap_or_else(|| panic!("{service} is not running"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        self.wait_running(service, Some(pid))
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.daemon_pid()), sig);
    }

    /// Wait for the daemon to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let d = self.daemon.as_mut().expect("booted");
        let st = wait_for(timeout, "sysmgr exit", || d.try_wait().ok().flatten());
        self.daemon = None;
        st.code()
    }

    /// Lines of a report file written by the demo service.
    pub fn report(&self, rel: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(rel))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = d.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "---- sysmgr log ----\n{}",
                self.daemon_log()
            );
        }
    }
}

/// Whether a pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 2..].chars().next())
            .is_some_and(|st| st != 'Z'),
        Err(_) => false,
    }
}

/// State letter of a pid (R, S, Z, …), None if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rfind(')').and_then(|i| s[i + 2..].chars().next())
}

/// A blocking operator connection to the MTS broker (the test process is root: an operator).
pub struct MtsConn {
    pub stream: std::os::unix::net::UnixStream,
    next: u64,
}

impl MtsConn {
    pub fn connect(lab: &Lab) -> MtsConn {
        let stream = std::os::unix::net::UnixStream::connect(lab.socket()).expect("connect to MTS");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        MtsConn { stream, next: 1 }
    }

    /// Send one frame; returns its msg id.
    pub fn send(&mut self, dst: u32, opcode: u32, flags: u8, payload: &[u8]) -> u64 {
        let id = self.next;
        self.next += 1;
        let mut f = mts::Frame::request(mts::sap::CLI, dst, opcode, id, payload.to_vec());
        f.header.flags = mts::Flags(flags);
        mts::io::write_frame(&mut self.stream, &f).expect("write frame");
        id
    }

    pub fn read(&mut self) -> Result<mts::Frame, mts::MtsError> {
        mts::io::read_frame(&mut self.stream, mts::frame::DEFAULT_MAX_PAYLOAD)
    }

    /// Send text with CONFIRM and return the broker's answer (Ok = queued).
    pub fn send_confirmed(&mut self, dst: u32, text: &str, flags: u8) -> Result<(), String> {
        let id = self.send(dst, 7, flags | mts::Flags::CONFIRM, text.as_bytes());
        let f = self.read().expect("confirmation");
        assert_eq!(f.header.reply_to, id);
        f.into_result().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// One request to a service's SAP through the broker, as the CLI makes it; the typed answer.
pub fn ask<T: serde::Serialize, R: serde::de::DeserializeOwned>(
    lab: &Lab,
    sap: &str,
    opcode: u32,
    v: &T,
) -> R {
    let raw = sysmgr::control::request_service(
        &lab.socket(),
        sap,
        opcode,
        mts::codec::encode(v).expect("encode"),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("request {opcode} to {sap}: {e}"));
    mts::codec::decode(&raw).expect("decode answer")
}
