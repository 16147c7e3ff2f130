//! Two supervisors on one host (issue 9, first slice): the flock arbiter and its epoch, the
//! standby's copy of the active's store, takeover when the active dies or stalls, and the
//! operator's switchover.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sysmgr_tests::netns::{Bird, KernelWatch, Netns, veth};
use sysmgr_tests::{Lab, MtsConn, bin, is_root, wait_for};

/// Two labs sharing a lock file, each with the demo `store` service; `sup-1` is booted
/// first, so it is the active.
fn pair() -> (Lab, Lab) {
    pair_with(|lab| {
        lab.service(
            "store",
            &[
                "--notify",
                "--pss-stream",
                "--report",
                &lab.path("store.report").display().to_string(),
            ],
            "readiness = \"notify\"\nrestart = [\"stateful\", \"stateless\"]\n",
        );
    })
}

fn pair_with(services: impl Fn(&Lab)) -> (Lab, Lab) {
    let a = Lab::new("1s");
    let b = Lab::new("1s");
    let lock = a.path("active.lock");
    for (me, other, lab, peer_lab) in [("sup-1", "sup-2", &a, &b), ("sup-2", "sup-1", &b, &a)] {
        lab.write(
            "sysmgr.toml",
            &format!(
                "name = \"{me}\"\ndata-dir = \"data\"\nsupervisors = 2\n[lab]\nmin-lifetime-floor = \"1s\"\n\
                 [redundancy]\nlock-file = {:?}\nlink = {:?}\npeer = \"{other}\"\npeer-link = {:?}\n\
                 heartbeat = \"50ms\"\ndead-after = \"500ms\"\nstandby-restart-delay = \"1s\"\n",
                lock.display().to_string(),
                lab.path("repl.sock").display().to_string(),
                peer_lab.path("repl.sock").display().to_string(),
            ),
        );
        services(lab);
    }
    (a, b)
}

/// Boot `a`, wait until it is the active, then boot `b` (the standby).
fn boot_in_order(a: &mut Lab, b: &mut Lab) {
    a.boot();
    wait_for(Duration::from_secs(10), "sup-1 active", || {
        (role(a).as_deref() == Some("Active")).then_some(())
    });
    b.boot();
}

fn status(lab: &Lab) -> Option<serde_json::Value> {
    lab.redundancy()
}

fn role(lab: &Lab) -> Option<String> {
    lab.role()
}

fn store_row(lab: &Lab) -> Option<serde_json::Value> {
    let v = lab.json(&["show", "processes"]);
    v.as_array()?.iter().find(|r| r["name"] == "store").cloned()
}

/// The standby has the active's store (checked while the writer is paused), runs nothing, and
/// takes over with every service started as `switchover` when the active is SIGKILLed; the
/// old active comes back as the standby.
#[test]
fn the_standby_mirrors_the_store_and_takes_over_when_the_active_dies() {
    let (mut a, mut b) = pair();
    boot_in_order(&mut a, &mut b);
    wait_for(Duration::from_secs(10), "sup-2 standby, following", || {
        let s = status(&b)?;
        (s["this"]["redundancy_state"] == "Standby" && s["operational"] == "HA").then_some(())
    });
    // The active says HA once the standby has acknowledged its copy.
    let sa = wait_for(
        Duration::from_secs(10),
        "sup-1 active with HA standby",
        || {
            let s = status(&a)?;
            (s["this"]["internal_state"] == "Active with HA standby").then_some(s)
        },
    );
    assert_eq!(sa["epoch"], 1);
    // The standby runs nothing.
    let row = store_row(&b).expect("store listed on the standby");
    assert!(row["pid"].is_null(), "the standby started a service: {row}");
    // A stream of durable checkpoints; pause the writer, then the standby must equal the active.
    let writer = wait_for(Duration::from_secs(10), "the writer", || {
        store_row(&a)?["pid"].as_i64()
    });
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(writer as i32), Signal::SIGSTOP).expect("SIGSTOP");
    wait_for(Duration::from_secs(10), "the standby caught up", || {
        let s = status(&b)?;
        let sent = s["replication_sent"].as_u64()?;
        (sent > 0 && s["replication_applied"].as_u64() == Some(sent)).then_some(())
    });
    let pa = a.json(&["show", "pss", "service", "store"]);
    let pb = b.json(&["show", "pss", "service", "store"]);
    let n = pa.as_array().map_or(0, |v| v.len());
    assert!(n > 10, "the writer wrote {n} keys: {pa}");
    assert_eq!(pa, pb, "the standby's PSS differs from the active's");
    kill(Pid::from_raw(writer as i32), Signal::SIGCONT).expect("SIGCONT");
    // SIGKILL the active: its services die with it; the standby takes over.
    let t0 = Instant::now();
    kill(Pid::from_raw(a.daemon_pid()), Signal::SIGKILL).expect("SIGKILL");
    let row = wait_for(Duration::from_secs(10), "store running on sup-2", || {
        let r = store_row(&b)?;
        (r["state"] == "running").then_some(r)
    });
    let took = t0.elapsed();
    eprintln!("SIGKILL of the active → its services running on the standby: {took:?}");
    assert!(took < Duration::from_secs(1), "takeover took {took:?}");
    assert_eq!(row["start_kind"], "switchover", "{row}");
    let sb = status(&b).expect("status");
    assert_eq!(sb["this"]["redundancy_state"], "Active", "{sb}");
    assert_eq!(sb["epoch"], 2, "{sb}");
    // The process log came over, and says what happened.
    let log = b.json(&["show", "processes", "log"]).to_string();
    assert!(log.contains("active supervisor, epoch 1"), "{log}");
    assert!(log.contains("switchover: sup-2 active, epoch 2"), "{log}");
    // Every checkpoint the writer had acknowledged before the pause is there.
    let report = b.report("store.report");
    assert!(
        report.iter().any(|l| l.contains("switchover")),
        "the writer did not start as switchover: {report:?}"
    );
    // The old active comes back as the standby of the new one.
    let _ = a.daemon.take().map(|mut d| d.wait());
    a.boot();
    wait_for(Duration::from_secs(10), "sup-1 standby", || {
        let s = status(&a)?;
        (s["this"]["redundancy_state"] == "Standby" && s["operational"] == "HA").then_some(())
    });
    assert!(store_row(&a).expect("listed")["pid"].is_null());
}

/// Persistent MTS messages queued on the active for a service that is not running there are
/// copied to the standby and delivered, in order, by the new active after a SIGKILL of the old
/// one; once acked they are gone from the new active's queue.
#[test]
fn persistent_messages_queued_on_the_active_are_delivered_by_the_new_active() {
    let (mut a, mut b) = pair_with(|lab| {
        // On sup-1 the gate never gets ready, so rx never runs there: its messages wait.
        lab.gate(None);
        let report = lab.path("report").display().to_string();
        lab.service(
            "rx",
            &["--mts-bind", "rx", "--report", &report],
            "depends-on = [\"gate\"]\n[saps]\nrx = 100\n",
        );
    });
    b.gate(Some(200));
    boot_in_order(&mut a, &mut b);
    wait_for(
        Duration::from_secs(10),
        "sup-1 active with HA standby",
        || {
            let s = status(&a)?;
            (s["this"]["internal_state"] == "Active with HA standby").then_some(())
        },
    );
    let mut c = MtsConn::connect(&a);
    let ack = mts::Flags::NEEDS_ACK | mts::Flags::PERSISTENT;
    let texts: Vec<String> = (0..70).map(|i| format!("m{i}")).collect();
    for t in &texts[..69] {
        c.send(100, 7, ack, t.as_bytes());
    }
    // Confirmed: on sup-1's disk and applied by sup-2, with everything before it.
    c.send_confirmed(100, &texts[69], ack).expect("confirmed");
    let q = a.json(&["show", "mts", "queues"]);
    assert_eq!(q[0]["depth"], 70, "{q}");
    kill(Pid::from_raw(a.daemon_pid()), Signal::SIGKILL).expect("SIGKILL");
    wait_for(
        Duration::from_secs(10),
        "rx got everything on sup-2",
        || {
            let got = b.report("report");
            (got.iter().filter(|l| l.starts_with("recv ")).count() >= 70).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<String> = b
        .report("report")
        .iter()
        .filter(|l| l.starts_with("recv "))
        .map(|l| l.rsplit("text=").next().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, texts, "delivered once each, in order");
    wait_for(Duration::from_secs(10), "acked on sup-2", || {
        let q = b.json(&["show", "mts", "queues"]);
        (q[0]["depth"] == 0 && q[0]["pending_acks"] == 0 && q[0]["persistent"] == 0).then_some(())
    });
    let _ = a.daemon.take().map(|mut d| d.wait());
}

/// A durable checkpoint is acknowledged only once the standby has applied it: the writer
/// streams durable checkpoints, the active is SIGKILLed at a random moment, and the new
/// active's copy holds every checkpoint the old one had acknowledged. Ten rounds, back and
/// forth.
#[test]
fn every_durable_checkpoint_acknowledged_by_the_active_is_on_the_new_active() {
    let (mut a, mut b) = pair();
    boot_in_order(&mut a, &mut b);
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("seed {rng}");
    let mut total = 0usize;
    for round in 0..10 {
        let (active, standby) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        wait_for(Duration::from_secs(10), "the standby following", || {
            let s = status(standby)?;
            (s["this"]["redundancy_state"] == "Standby" && s["operational"] == "HA").then_some(())
        });
        let seen_a = active.report("store.report").len();
        let seen_s = standby.report("store.report").len();
        wait_for(Duration::from_secs(10), "acks", || {
            active.report("store.report")[seen_a..]
                .iter()
                .any(|l| l.starts_with("acked"))
                .then_some(())
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 200));
        kill(Pid::from_raw(active.daemon_pid()), Signal::SIGKILL).expect("SIGKILL");
        let _ = active.daemon.take().map(|mut d| d.wait());
        // The writer died with its supervisor (no acknowledgement can come after this).
        let acked: Vec<u64> = active.report("store.report")[seen_a..]
            .iter()
            .filter_map(|l| l.strip_prefix("acked ")?.parse().ok())
            .collect();
        let max_acked = acked.iter().copied().max().unwrap_or(0);
        total += acked.len();
        let present = wait_for(
            Duration::from_secs(10),
            "the writer on the new active",
            || {
                standby.report("store.report")[seen_s..]
                    .iter()
                    .find(|l| l.starts_with("present"))
                    .cloned()
            },
        );
        let max: u64 = present
            .split_whitespace()
            .find_map(|w| w.strip_prefix("max=")?.parse().ok())
            .expect("max=");
        assert!(
            present.ends_with("contiguous=true"),
            "round {round}: {present}"
        );
        assert!(
            max >= max_acked,
            "round {round}: the active acknowledged checkpoint {max_acked}, the new active has up to {max}"
        );
        active.boot();
    }
    assert!(total > 100, "the writer made progress ({total} acks)");
    eprintln!("10 SIGKILLs of the active, {total} acknowledged durable checkpoints, none lost");
}

/// A stalled active (SIGSTOP) stops its heartbeats; after `dead-after` the standby fences it
/// with SIGKILL (the kernel releases its lock) and takes over. The operator's switchover hands
/// back: the active stops its services, the standby takes them, the old one follows.
#[test]
fn a_stalled_active_is_fenced_and_a_switchover_hands_over() {
    let (mut a, mut b) = pair();
    boot_in_order(&mut a, &mut b);
    wait_for(Duration::from_secs(10), "sup-2 following", || {
        (status(&b)?["operational"] == "HA").then_some(())
    });
    let pid_a = a.daemon_pid();
    kill(Pid::from_raw(pid_a), Signal::SIGSTOP).expect("SIGSTOP");
    let t0 = Instant::now();
    wait_for(Duration::from_secs(10), "sup-2 active", || {
        (role(&b).as_deref() == Some("Active")).then_some(())
    });
    eprintln!("SIGSTOP of the active → standby active: {:?}", t0.elapsed());
    let st = wait_for(Duration::from_secs(5), "the stalled active gone", || {
        a.daemon.as_mut().and_then(|d| d.try_wait().ok().flatten())
    });
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "fenced with SIGKILL"
    );
    a.daemon = None;
    wait_for(Duration::from_secs(10), "store running on sup-2", || {
        (store_row(&b)?["state"] == "running").then_some(())
    });
    assert_eq!(status(&b).expect("status")["epoch"], 2);
    // sup-1 back as standby; then the operator switches over to it.
    a.boot();
    wait_for(Duration::from_secs(10), "sup-1 following", || {
        let s = status(&a)?;
        (s["this"]["redundancy_state"] == "Standby" && s["operational"] == "HA").then_some(())
    });
    let out = b.cli(&["system", "switchover"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        Duration::from_secs(15),
        "sup-1 active with its services",
        || {
            (role(&a).as_deref() == Some("Active") && store_row(&a)?["state"] == "running")
                .then_some(())
        },
    );
    assert_eq!(status(&a).expect("status")["epoch"], 3);
    wait_for(Duration::from_secs(15), "sup-2 back as the standby", || {
        let s = status(&b)?;
        (s["this"]["redundancy_state"] == "Standby" && s["operational"] == "HA").then_some(())
    });
    assert!(store_row(&b).expect("listed")["pid"].is_null());
}

/// A switchover with a BGP peer: the new active's fib takes the routing table from the
/// replicated PSS and deletes no kernel route; its bgp re-opens the session with Graceful
/// Restart, and BIRD keeps our route (stale) until we have sent it again.
#[test]
fn a_switchover_keeps_bgp_routes_in_the_peer_and_the_kernel() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let sut = Netns::new("red1-sut");
    let bird_ns = Netns::new("red1-bird");
    veth(&sut, "vs0", "10.85.1.1/24", &bird_ns, "vb0", "10.85.1.2/24");
    let (mut a, mut b) = pair_with(|lab| {
        lab.write(
            "fib.toml",
            &format!(
                "command = [{:?}, \"--config\", \"fib.conf\"]\nreadiness = \"notify\"\n\
                 restart = [\"stateful\", \"stateless\"]\n[saps]\nfib = 130\n",
                bin("fib").display().to_string()
            ),
        );
        lab.write("fib.conf", "backend = \"kernel\"\n");
        lab.write(
            "bgp.toml",
            &format!(
                "command = [{:?}, \"--config\", \"bgp.conf\"]\nreadiness = \"notify\"\n\
                 restart = [\"stateful\", \"stateless\"]\ndepends-on = [\"fib\"]\n[saps]\nbgp = 179\n",
                bin("bgp").display().to_string()
            ),
        );
        lab.write(
            "bgp.conf",
            "router-id = \"10.85.1.1\"\nlocal-as = 65001\nhold-time = 9\nconnect-retry = \"1s\"\n\
             networks = [\"203.0.113.0/24\"]\n\
             [[neighbor]]\naddress = \"10.85.1.2\"\nremote-as = 65002\nlocal-address = \"10.85.1.1\"\n",
        );
    });
    let statics: String = (0..100)
        .map(|i| format!("  route 10.122.{i}.0/24 blackhole;\n"))
        .collect();
    let bird = Bird::start(
        &bird_ns,
        &a.path("bird"),
        &format!(
            "router id 10.85.1.2;\nprotocol device {{}}\nprotocol static st {{\n  ipv4;\n{statics}}}\n\
             protocol bgp peer1 {{\n  local 10.85.1.2 as 65002;\n  neighbor 10.85.1.1 as 65001;\n  \
             hold time 9;\n  graceful restart on;\n  error wait time 1, 10;\n  debug {{ states, routes }};\n  \
             ipv4 {{ import all; export all; next hop self; }};\n}}\n"
        ),
    );
    a.wrapper = sut.wrapper();
    b.wrapper = sut.wrapper();
    boot_in_order(&mut a, &mut b);
    wait_for(Duration::from_secs(10), "sup-2 following", || {
        (status(&b)?["operational"] == "HA").then_some(())
    });
    let kernel = || {
        let out = sut.ip(&["-j", "route", "show", "proto", "199"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len()))
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(20), "100 routes in the kernel", || {
        (kernel() == 100).then_some(())
    });
    wait_for(Duration::from_secs(10), "BIRD has our network", || {
        bird.birdc("show route 203.0.113.0/24")
            .contains("203.0.113.0/24")
            .then_some(())
    });
    // fib's table is in PSS (shared-global scope), so on the standby too.
    wait_for(
        Duration::from_secs(10),
        "fib's checkpoint on the standby",
        || {
            let s = status(&b)?;
            let sent = s["replication_sent"].as_u64()?;
            (sent > 0 && s["replication_applied"].as_u64() == Some(sent)).then_some(())
        },
    );
    let watch = KernelWatch::start(&sut, &["route"]);
    let out = a.cli(&["system", "switchover"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(20), "bgp Established on sup-2", || {
        let out = b.cli(&["show", "bgp", "summary", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["neighbors"][0]["state"] == "Established"
            && s["neighbors"][0]["end_of_rib_received"] == true)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let deleted = watch.deleted();
    assert!(deleted.is_empty(), "kernel routes deleted: {deleted:?}");
    assert_eq!(kernel(), 100);
    let row = wait_for(Duration::from_secs(5), "bgp on sup-2", || {
        let v = b.json(&["show", "processes"]);
        v.as_array()?.iter().find(|r| r["name"] == "bgp").cloned()
    });
    assert_eq!(row["start_kind"], "switchover", "{row}");
    let log = std::fs::read_to_string(bird.dir.join("bird.log")).unwrap_or_default();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("203.0.113.0/24"))
        .collect();
    assert!(
        !ours.iter().any(|l| l.contains("removed")),
        "BIRD removed our route: {ours:?}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("peer1: State changed to up"))
            .count()
            >= 2,
        "the session did not restart (Graceful Restart):\n{log}"
    );
}

/// The pid holding a `flock` on `path`, from /proc/locks.
fn lock_holder(path: &std::path::Path) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).ok()?.ino();
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .filter(|l| l.contains("FLOCK"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF"
            let (pid, dev_ino) = (f.get(4)?, f.get(5)?);
            (dev_ino.rsplit(':').next()?.parse::<u64>().ok()? == ino)
                .then(|| pid.parse().ok())
                .flatten()
        })
}

/// 200 random rounds of SIGKILL, SIGSTOP, operator switchover and reboot of the two
/// supervisors: at every step at most one of them says it is active, that one holds the
/// lock, and every change of active comes with a higher epoch.
#[test]
fn two_hundred_random_rounds_never_make_two_actives() {
    let (a, b) = pair_with(|lab| {
        lab.service("svc", &["--notify"], "readiness = \"notify\"\n");
    });
    let mut labs = [a, b];
    let lock = labs[0].path("active.lock");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("seed {seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    labs[0].boot();
    labs[1].boot();
    let alive = |l: &mut Lab| {
        l.daemon
            .as_mut()
            .is_some_and(|d| matches!(d.try_wait(), Ok(None)))
    };
    // (active index, its epoch) once settled; checks the invariants on the way.
    let mut last_epoch = 0u64;
    let mut settle = |labs: &mut [Lab; 2], what: &str| -> (usize, u64) {
        let t0 = Instant::now();
        loop {
            let roles: Vec<Option<serde_json::Value>> = labs.iter().map(status).collect();
            let actives: Vec<usize> = (0..2)
                .filter(|&i| {
                    roles[i]
                        .as_ref()
                        .is_some_and(|s| s["this"]["redundancy_state"] == "Active")
                })
                .collect();
            assert!(actives.len() <= 1, "two actives after {what}: {roles:?}");
            if let [i] = actives[..] {
                let s = roles[i].as_ref().expect("answered");
                let pid = s["this"]["pid"].as_i64().map(|p| p as i32);
                let holder = lock_holder(&lock);
                assert_eq!(
                    holder, pid,
                    "the active does not hold the lock after {what}"
                );
                let epoch = s["epoch"].as_u64().expect("epoch");
                let other = 1 - i;
                let other_alive = alive(&mut labs[other]);
                let settled = !other_alive
                    || roles[other].as_ref().is_some_and(|o| {
                        o["this"]["redundancy_state"] == "Standby" && o["operational"] == "HA"
                    });
                if settled {
                    assert!(epoch >= last_epoch, "epoch went back after {what}");
                    last_epoch = epoch;
                    return (i, epoch);
                }
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let tails: Vec<String> = labs
                    .iter_mut()
                    .map(|l| {
                        let up = alive(l);
                        let log = l.daemon_log();
                        let t: Vec<&str> = log.lines().filter(|x| !x.contains("DEBUG")).collect();
                        format!(
                            "alive {up}:\n{}",
                            t[t.len().saturating_sub(12)..].join("\n")
                        )
                    })
                    .collect();
                panic!(
                    "no settled pair after {what}: {roles:?}\n{}",
                    tails.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (mut act, mut epoch) = settle(&mut labs, "boot");
    for round in 0..200 {
        let stby = 1 - act;
        let stby_alive = alive(&mut labs[stby]);
        let what = match next() % 5 {
            0 => {
                kill(Pid::from_raw(labs[act].daemon_pid()), Signal::SIGKILL).expect("kill");
                let _ = labs[act].daemon.take().map(|mut d| d.wait());
                "SIGKILL of the active"
            }
            1 if stby_alive => {
                kill(Pid::from_raw(labs[act].daemon_pid()), Signal::SIGSTOP).expect("stop");
                "SIGSTOP of the active"
            }
            2 if stby_alive => {
                let out = labs[act].cli(&["system", "switchover"]);
                assert!(out.status.success(), "switchover: {out:?}");
                "switchover"
            }
            3 if stby_alive => {
                kill(Pid::from_raw(labs[stby].daemon_pid()), Signal::SIGKILL).expect("kill");
                let _ = labs[stby].daemon.take().map(|mut d| d.wait());
                "SIGKILL of the standby"
            }
            _ => "nothing",
        };
        // A fenced (SIGKILLed) supervisor is reaped; dead ones come back.
        for l in labs.iter_mut() {
            if let Some(d) = l.daemon.as_mut()
                && let Ok(Some(_)) = d.try_wait()
            {
                l.daemon = None;
            }
        }
        let (a2, e2) = settle(&mut labs, what);
        if a2 != act {
            assert!(
                e2 > epoch,
                "round {round}: a new active with epoch {e2} after {epoch}"
            );
        }
        act = a2;
        for l in labs.iter_mut() {
            if !alive(l) {
                let _ = l.daemon.take().map(|mut d| d.wait());
                l.boot();
            }
        }
        (act, epoch) = {
            let (a3, e3) = settle(&mut labs, "reboot");
            assert_eq!(a3, act, "round {round}: a reboot changed the active");
            (a3, e3)
        };
    }
    eprintln!("200 rounds; epoch {epoch}");
}

/// A service that also runs on the standby (`run-on-standby`): there, when it fails, it is
/// restarted after `standby-restart-delay` (NX-OS: 30 s) and no HA policy applies; the standby
/// still runs nothing else.
#[test]
fn on_the_standby_a_failed_service_is_restarted_after_the_delay_without_policies() {
    let (mut a, mut b) = pair_with(|lab| {
        lab.service("idle", &["--notify"], "readiness = \"notify\"\n");
        lab.service(
            "sb",
            &[
                "--notify",
                "--crash-after",
                "300",
                "--crash-times",
                "1",
                "--counter",
                &lab.path("sb.count").display().to_string(),
            ],
            "readiness = \"notify\"\nrun-on-standby = true\n\
             [ha.dual-sup.primary]\naction = \"stateless\"\nmax-retries = 3\nmin-lifetime = \"1s\"\n",
        );
    });
    boot_in_order(&mut a, &mut b);
    let recs = wait_for(
        Duration::from_secs(10),
        "the standby's restart of sb",
        || {
            // The process log holds the active's records too (replicated): the standby's own.
            let r: Vec<serde_json::Value> = b
                .records("sb")
                .into_iter()
                .filter(|x| x["supervisor"] == "sup-2")
                .collect();
            let second = r.iter().find(|x| {
                x["action"]
                    .as_str()
                    .is_some_and(|a| a.contains("on the standby"))
            })?;
            let row = b.json(&["show", "processes"]);
            let sb = row.as_array()?.iter().find(|x| x["name"] == "sb")?.clone();
            (sb["state"] == "running" && sb["start_count"] == 2).then(|| (second.clone(), r.len()))
        },
    );
    let (rec, n) = recs;
    assert_eq!(n, 1, "one failure on the standby");
    assert_eq!(rec["policy"], "standby: no HA policies", "{rec}");
    // The restart came a delay after the crash, not at once.
    let row = b.json(&["show", "processes"]);
    let sb = row
        .as_array()
        .expect("rows")
        .iter()
        .find(|x| x["name"] == "sb")
        .expect("sb")
        .clone();
    let ended = rec["ended_ms"].as_u64().expect("ended");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let started = now_ms - sb["uptime_ms"].as_u64().expect("uptime");
    assert!(
        started >= ended + 900,
        "restarted {} ms after the crash",
        started as i64 - ended as i64
    );
    // Nothing else runs on the standby.
    let idle = row
        .as_array()
        .expect("rows")
        .iter()
        .find(|x| x["name"] == "idle")
        .expect("idle")
        .clone();
    assert!(idle["pid"].is_null(), "{idle}");
    assert_eq!(role(&b).as_deref(), Some("Standby"));
    drop(b);
    drop(a);
}
