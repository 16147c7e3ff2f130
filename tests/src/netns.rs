//! Network namespaces and veth pairs for the interop tests, removed on drop. Packets stay
//! inside these namespaces (the project's network rule).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::wait_for;

/// Run a command that must succeed.
pub fn run(prog: &str, args: &[&str]) -> Output {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace with `lo` up and RFC 5881 source ports; deleted (and everything in it
/// killed) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", name]);
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=49152 65535"]);
        ns
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Run a command inside the namespace (must succeed).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// The prefix that runs a program inside the namespace (for `Lab::wrapper`).
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// A command that runs `prog` inside the namespace.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `ip monitor` on a namespace's kernel tables, to see what was deleted while it ran.
pub struct KernelWatch {
    child: std::process::Child,
}

impl KernelWatch {
    /// Watch `objects` (e.g. `["route", "nexthop"]`); give it a moment before acting.
    pub fn start(ns: &Netns, objects: &[&str]) -> KernelWatch {
        let child = Command::new("ip")
            .args(["-n", &ns.name, "monitor"])
            .args(objects)
            .stdout(Stdio::piped())
            .spawn()
            .expect("ip monitor");
        std::thread::sleep(Duration::from_millis(200));
        KernelWatch { child }
    }

    /// Stop watching; the `Deleted ...` lines seen.
    pub fn deleted(mut self) -> Vec<String> {
        use std::io::Read;
        let _ = self.child.kill();
        let mut seen = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut seen);
        }
        let _ = self.child.wait();
        seen.lines()
            .filter(|l| l.starts_with("Deleted"))
            .map(str::to_string)
            .collect()
    }
}

/// A veth pair between two namespaces, with an address (CIDR) on each end, both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    );
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// FRR's zebra and bfdd inside a namespace.
pub struct Frr {
    pub dir: PathBuf,
}

impl Frr {
    /// Start zebra and bfdd with `bfdd_conf` and wait until vtysh answers.
    pub fn start(ns: &Netns, dir: &Path, bfdd_conf: &str) -> Frr {
        Frr::start_daemons(ns, dir, &[("bfdd", bfdd_conf)])
    }

    /// Start zebra, then each (daemon, configuration) given, and wait until vtysh answers.
    pub fn start_daemons(ns: &Netns, dir: &Path, daemons: &[(&str, &str)]) -> Frr {
        std::fs::create_dir_all(dir).expect("frr dir");
        std::fs::write(dir.join("zebra.conf"), "hostname peer-frr\n").expect("zebra.conf");
        for (daemon, conf) in daemons {
            std::fs::write(
                dir.join(format!("{daemon}.conf")),
                format!(
                    "hostname peer-frr\nlog file {}/{daemon}.log\n!\n{conf}",
                    dir.display()
                ),
            )
            .expect("daemon conf");
        }
        run("chown", &["-R", "frr:frr", &dir.display().to_string()]);
        let d = dir.display().to_string();
        let names: Vec<&str> = std::iter::once("zebra")
            .chain(daemons.iter().map(|(n, _)| *n))
            .collect();
        for daemon in names {
            let mut a: Vec<String> = vec![
                format!("/usr/lib/frr/{daemon}"),
                "-d".into(),
                "-u".into(),
                "frr".into(),
                "-g".into(),
                "frr".into(),
                "-P".into(),
                "0".into(),
                "--vty_socket".into(),
                d.clone(),
                "-z".into(),
                format!("{d}/zserv.api"),
                "-i".into(),
                format!("{d}/{daemon}.pid"),
                "-f".into(),
                format!("{d}/{daemon}.conf"),
            ];
            if daemon == "bfdd" {
                a.push("--bfdctl".into());
                a.push(format!("{d}/bfdd.sock"));
            }
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            ns.exec(&refs);
            if daemon == "zebra" {
                // bfdd learns interfaces from zebra: a session on an interface zebra has not
                // announced yet is refused ("specified interface doesn't exist").
                wait_for(Duration::from_secs(10), "zebra to listen", || {
                    dir.join("zserv.api").exists().then_some(())
                });
            }
        }
        let frr = Frr {
            dir: dir.to_path_buf(),
        };
        wait_for(Duration::from_secs(10), "FRR to answer", || {
            frr.try_vtysh("show version").map(|_| ())
        });
        frr
    }

    fn try_vtysh(&self, cmd: &str) -> Option<String> {
        let o = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn vtysh(&self, cmd: &str) -> String {
        self.try_vtysh(cmd)
            .unwrap_or_else(|| panic!("vtysh -c {cmd:?} failed"))
    }

    /// `show bfd peers json`, the entry of `peer`.
    pub fn peer(&self, peer: &str) -> serde_json::Value {
        self.find(&self.vtysh("show bfd peers json"), peer)
    }

    /// (session-up, session-down) events of `peer` from `show bfd peers counters`.
    pub fn counters(&self, peer: &str) -> (u64, u64) {
        let v = self.find(&self.vtysh("show bfd peers counters json"), peer);
        (
            v["session-up"].as_u64().expect("session-up"),
            v["session-down"].as_u64().expect("session-down"),
        )
    }

    fn find(&self, json: &str, peer: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(json).expect("vtysh json");
        v.as_array()
            .and_then(|a| a.iter().find(|p| p["peer"] == peer).cloned())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// BIRD inside a namespace.
pub struct Bird {
    pub dir: PathBuf,
}

impl Bird {
    pub fn start(ns: &Netns, dir: &Path, conf: &str) -> Bird {
        std::fs::create_dir_all(dir).expect("bird dir");
        let d = dir.display().to_string();
        std::fs::write(
            dir.join("bird.conf"),
            format!("log \"{d}/bird.log\" all;\ntimeformat log \"%F %T.%6f\";\n{conf}"),
        )
        .expect("bird.conf");
        ns.exec(&[
            "bird",
            "-c",
            &format!("{d}/bird.conf"),
            "-s",
            &format!("{d}/ctl"),
            "-P",
            &format!("{d}/pid"),
        ]);
        let b = Bird {
            dir: dir.to_path_buf(),
        };
        wait_for(Duration::from_secs(10), "BIRD to answer", || {
            b.try_birdc("show status").map(|_| ())
        });
        b
    }

    fn try_birdc(&self, cmd: &str) -> Option<String> {
        let o = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.join("ctl"))
            .args(cmd.split_whitespace())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn birdc(&self, cmd: &str) -> String {
        self.try_birdc(cmd)
            .unwrap_or_else(|| panic!("birdc {cmd:?} failed"))
    }

    /// The state column of `show bfd sessions` for `peer`.
    pub fn bfd_state(&self, peer: &str) -> Option<String> {
        self.birdc("show bfd sessions")
            .lines()
            .find(|l| l.split_whitespace().next() == Some(peer))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
    }

    /// The log lines where a BFD session went down (needs `debug { states }`).
    pub fn down_events(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("bird.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("changed state from Up to"))
            .map(str::to_string)
            .collect()
    }
}

/// A thread that has entered `ns` and runs `f` (its sockets live in that namespace).
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}
