//! Two supervisors on two hosts (issue 9): two network namespaces, the replication link over
//! TCP between them, etcd (Debian's etcd-server, started here) as the arbiter.
//!
//! ```text
//!   ns rede-a  10.86.0.1 (sup-1, etcd)  ──veth──  10.86.0.2 (sup-2)  ns rede-b
//! ```

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sysmgr_tests::netns::{Netns, veth};
use sysmgr_tests::{Lab, is_root, wait_for};

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcd(ns: &Netns, dir: &std::path::Path) -> Etcd {
    let child = ns
        .command("etcd")
        .args([
            "--name",
            "t",
            "--data-dir",
            &dir.join("etcd").display().to_string(),
            "--listen-client-urls",
            "http://10.86.0.1:2379",
            "--advertise-client-urls",
            "http://10.86.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "t=http://127.0.0.1:2380",
            // etcd's lease minimum is 1.5 election timeouts (2 s by default): these timings
            // let the 1 s leases below be 1 s. One member, so nothing else depends on them.
            "--heartbeat-interval",
            "10",
            "--election-timeout",
            "100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server; scripts/test-all does)");
    let e = Etcd(child);
    wait_for(Duration::from_secs(20), "etcd healthy", || {
        ns.command("etcdctl")
            .args(["--endpoints", "http://10.86.0.1:2379", "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
            .then_some(())
    });
    e
}

/// A lab's log without the chatter.
fn important(lab: &Lab) -> String {
    lab.daemon_log()
        .lines()
        .filter(|l| !l.contains("DEBUG"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The number after `key` in a report line.
fn num(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
}

/// Which supervisor etcd names as the holder of the key (0 for sup-1, 1 for sup-2).
fn holder(ns: &Netns) -> Option<usize> {
    let out = ns
        .command("etcdctl")
        .args([
            "--endpoints",
            "http://10.86.0.1:2379",
            "get",
            "/sysmgr/active",
            "--print-value-only",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .ok()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "sup-1" => Some(0),
        "sup-2" => Some(1),
        _ => None,
    }
}

/// Two hosts, each with its own lab and the demo `svc` service.
fn hosts() -> (Netns, Netns, Lab, Lab) {
    let na = Netns::new("rede-a");
    let nb = Netns::new("rede-b");
    veth(&na, "va", "10.86.0.1/24", &nb, "vb", "10.86.0.2/24");
    let mut a = Lab::new("1s");
    let mut b = Lab::new("1s");
    for (me, other, addr, peer_addr, lab) in [
        ("sup-1", "sup-2", "10.86.0.1", "10.86.0.2", &a),
        ("sup-2", "sup-1", "10.86.0.2", "10.86.0.1", &b),
    ] {
        lab.write(
            "sysmgr.toml",
            &format!(
                "name = \"{me}\"\ndata-dir = \"data\"\nsupervisors = 2\n[lab]\nmin-lifetime-floor = \"1s\"\n\
                 [redundancy]\netcd = \"http://10.86.0.1:2379\"\nlease-ttl = \"1s\"\n\
                 link = \"tcp:{addr}:7101\"\npeer = \"{other}\"\npeer-link = \"tcp:{peer_addr}:7101\"\n\
                 heartbeat = \"100ms\"\ndead-after = \"1s\"\n"
            ),
        );
        lab.service(
            "svc",
            &["--notify", "--pss-counter"],
            "readiness = \"notify\"\n",
        );
        // A stream of durable checkpoints, reporting each acknowledgement.
        lab.service(
            "store",
            &[
                "--pss-stream",
                "--pss-stream-pause",
                "2",
                "--report",
                &lab.path("store.report").display().to_string(),
            ],
            "",
        );
    }
    a.wrapper = na.wrapper();
    b.wrapper = nb.wrapper();
    (na, nb, a, b)
}

fn svc_running(lab: &Lab) -> bool {
    lab.cli(&["show", "processes", "--json"])
        .stdout
        .windows(9)
        .any(|w| w == b"\"running\"")
}

/// Who says Active now; panics if both do.
fn one_active(labs: &[&Lab; 2], what: &str) -> Option<(usize, u64)> {
    let st: Vec<Option<serde_json::Value>> = labs.iter().map(|l| l.redundancy()).collect();
    let actives: Vec<usize> = (0..2)
        .filter(|&i| {
            st[i]
                .as_ref()
                .is_some_and(|s| s["this"]["redundancy_state"] == "Active")
        })
        .collect();
    assert!(actives.len() <= 1, "two actives ({what}): {st:?}");
    let i = *actives.first()?;
    Some((i, st[i].as_ref()?["epoch"].as_u64()?))
}

/// Wait until one is active and the other (if alive) follows it; checks at every poll that
/// never both say Active.
fn settle(labs: [&Lab; 2], what: &str) -> (usize, u64) {
    let t0 = Instant::now();
    loop {
        if let Some((i, e)) = one_active(&labs, what) {
            let other = labs[1 - i];
            let alive = other.daemon.is_some();
            // Both sides say HA: the standby has its copy, and the active knows it (so its
            // durable writes wait for the standby).
            let follows = !alive
                || (other.redundancy().is_some_and(|s| {
                    s["this"]["redundancy_state"] == "Standby" && s["operational"] == "HA"
                }) && labs[i]
                    .redundancy()
                    .is_some_and(|s| s["operational"] == "HA"));
            if follows && svc_running(labs[i]) {
                return (i, e);
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "nothing settled after {what}:\n{}\n---\n{}",
            labs[0]
                .daemon_log()
                .lines()
                .filter(|l| !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n"),
            labs[1]
                .daemon_log()
                .lines()
                .filter(|l| !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// etcd decides across hosts: 200 random rounds of SIGKILL of the active, a stalled active
/// (SIGSTOP until its lease runs out, then SIGCONT: it finds itself fenced and comes back as
/// the standby), the operator's switchover, and SIGKILL + reboot of the standby. At every
/// poll at most one says it is active, and it is the one etcd names; every new active has a
/// higher epoch, and the standby's restart changes neither.
#[test]
fn two_hosts_with_etcd_never_make_two_actives() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let (na, _nb, mut a, mut b) = hosts();
    let _etcd = etcd(&na, a.dir.path());
    a.boot();
    wait_for(Duration::from_secs(10), "sup-1 active", || {
        (a.role().as_deref() == Some("Active")).then_some(())
    });
    b.boot();
    let (mut act, mut epoch) = settle([&a, &b], "boot");
    assert_eq!(act, 0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("seed {seed}");
    let mut rng = seed;
    let rounds = 200;
    let mut total_acks = 0usize;
    let mut counts = [0usize; 4];
    for round in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // The first four rounds go through each action once.
        let pick = if round < 4 { round as u64 } else { rng % 4 };
        counts[pick as usize] += 1;
        // Where the next active's writer will report from.
        let new_from = [&a, &b][1 - act].report("store.report").len();
        let labs: [&mut Lab; 2] = if act == 0 {
            [&mut a, &mut b]
        } else {
            [&mut b, &mut a]
        };
        let [active, standby] = labs;
        let what = match pick {
            0 => {
                kill(Pid::from_raw(active.daemon_pid()), Signal::SIGKILL).expect("kill");
                let _ = active.daemon.take().map(|mut d| d.wait());
                "SIGKILL of the active"
            }
            1 => {
                let pid = Pid::from_raw(active.daemon_pid());
                kill(pid, Signal::SIGSTOP).expect("stop");
                // The standby takes over once the lease is gone; the stopped one cannot answer.
                wait_for(Duration::from_secs(15), "the standby active", || {
                    (standby.role().as_deref() == Some("Active")).then_some(())
                });
                kill(pid, Signal::SIGCONT).expect("cont");
                "SIGSTOP of the active, then SIGCONT"
            }
            2 => {
                let out = active.cli(&["system", "switchover"]);
                assert!(out.status.success(), "switchover: {out:?}");
                "switchover"
            }
            _ => {
                kill(Pid::from_raw(standby.daemon_pid()), Signal::SIGKILL).expect("kill");
                let _ = standby.daemon.take().map(|mut d| d.wait());
                standby.boot();
                "SIGKILL and reboot of the standby"
            }
        };
        if pick == 3 {
            let (a2, e2) = settle([&a, &b], what);
            assert_eq!(
                a2, act,
                "round {round}: the standby's restart moved the active"
            );
            assert_eq!(
                e2, epoch,
                "round {round}: the standby's restart moved the epoch"
            );
            assert_eq!(holder(&na), Some(act), "round {round}: etcd names another");
            continue;
        }
        let (a2, e2) = {
            // While it settles, poll for two actives.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(300) {
                let _ = one_active(&[&a, &b], what);
                std::thread::sleep(Duration::from_millis(10));
            }
            settle([&a, &b], what)
        };
        assert_ne!(a2, act, "round {round}: {what} left the same active");
        assert!(e2 > epoch, "round {round}: epoch {e2} after {epoch}");
        assert_eq!(holder(&na), Some(a2), "round {round}: etcd names another");
        // No durable checkpoint acknowledged on the old active is missing on the new one:
        // what the old writer was acknowledged (it is stopped, dead or fenced by now) against
        // what the new writer found.
        let labs = [&a, &b];
        let found = wait_for(Duration::from_secs(10), "the new writer's report", || {
            labs[a2].report("store.report")[new_from..]
                .iter()
                .find_map(|l| num(l.strip_prefix("present ")?, "max="))
        });
        let old = labs[act].report("store.report");
        let start = old
            .iter()
            .rposition(|l| l.starts_with("present"))
            .unwrap_or(0);
        let acked = old[start..]
            .iter()
            .filter_map(|l| l.strip_prefix("acked ")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        total_acks += old[start..]
            .iter()
            .filter(|l| l.starts_with("acked"))
            .count();
        assert!(
            found >= acked,
            "round {round}: {what}: checkpoint {acked} was acknowledged on the old active, the new one has up to {found}\nold writer: {:?}\nnew writer: {:?}\n=== old active's log\n{}\n=== new active's log\n{}",
            &old[start..(start + 2).min(old.len())],
            &labs[a2].report("store.report")[new_from..],
            important(labs[act]),
            important(labs[a2]),
        );
        (act, epoch) = (a2, e2);
        // A killed one comes back as the standby.
        for l in [&mut a, &mut b] {
            if l.daemon.is_none() {
                l.boot();
            }
        }
        let (a3, _) = settle([&a, &b], "reboot");
        assert_eq!(a3, act, "round {round}: a reboot changed the active");
    }
    eprintln!(
        "{rounds} rounds (kill, stall, switchover, standby restart: {counts:?}); epoch {epoch}; {total_acks} acknowledged durable checkpoints, none lost"
    );
    assert!(
        total_acks > 100,
        "the writer made progress ({total_acks} acks)"
    );
    // The fenced or re-executed one kept its services stopped while standing by.
    let standby = if act == 0 { &b } else { &a };
    assert!(!svc_running(standby), "the standby runs a service");
}
