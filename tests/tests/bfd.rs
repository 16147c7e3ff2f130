//! BFD under sysmgr against real peers no one here wrote: FRR's bfdd and BIRD's bfd protocol,
//! each in its own network namespace, joined to ours by a veth pair (packets never leave these
//! namespaces). 50 ms × 3 everywhere: 150 ms detection.
//!
//! ```text
//!   ns bfdN-frr  vf0 10.20N.1.2 ──veth── vs0 10.20N.1.1  ns bfdN-sut (sysmgr → bfd)
//!   ns bfdN-bird vb0 10.20N.2.2 ──veth── vs1 10.20N.2.1
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sysmgr_tests::netns::{Bird, Frr, Netns, veth};
use sysmgr_tests::{Lab, bin, is_root, wait_for};

/// One topology at a time: the timing assertions should not compete for the two CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

const DETECT_MS: u64 = 150;

struct BfdLab {
    // Drop order: sysmgr first, then the peers' namespaces.
    lab: Lab,
    frr: Frr,
    bird: Bird,
    /// Our address, as FRR and BIRD name their sessions.
    frr_peer: String,
    bird_peer: String,
    /// FRR's and BIRD's addresses, as we name ours.
    frr_addr: String,
    bird_addr: String,
    frr_ns: Netns,
    bird_ns: Netns,
    _sut: Netns,
}

fn setup(n: u8) -> BfdLab {
    let sut = Netns::new(&format!("bfd{n}-sut"));
    let frr_ns = Netns::new(&format!("bfd{n}-frr"));
    let bird_ns = Netns::new(&format!("bfd{n}-bird"));
    let net = 200 + u16::from(n);
    let a = |x: u8, h: u8| format!("10.{net}.{x}.{h}");
    veth(
        &sut,
        "vs0",
        &format!("{}/24", a(1, 1)),
        &frr_ns,
        "vf0",
        &format!("{}/24", a(1, 2)),
    );
    veth(
        &sut,
        "vs1",
        &format!("{}/24", a(2, 1)),
        &bird_ns,
        "vb0",
        &format!("{}/24", a(2, 2)),
    );

    let mut lab = Lab::new("1s");
    let frr = Frr::start(
        &frr_ns,
        &lab.path("frr"),
        &format!(
            "bfd\n peer {} local-address {} interface vf0\n  receive-interval 50\n  \
             transmit-interval 50\n  detect-multiplier 3\n !\n!\n",
            a(1, 1),
            a(1, 2)
        ),
    );
    let bird = Bird::start(
        &bird_ns,
        &lab.path("bird"),
        &format!(
            "router id {};\nprotocol device {{}}\nprotocol bfd peerbfd {{\n  debug {{ states, events }};\n  \
             interface \"vb0\" {{ min rx interval 50 ms; min tx interval 50 ms; multiplier 3; }};\n  \
             neighbor {} dev \"vb0\" local {};\n}}\n",
            a(2, 2),
            a(2, 1),
            a(2, 2)
        ),
    );
    lab.write(
        "bfd.conf",
        &format!(
            "[defaults]\ndesired-min-tx = \"50ms\"\nrequired-min-rx = \"50ms\"\nmultiplier = 3\n\
             [[session]]\npeer = \"{}\"\nlocal = \"{}\"\ninterface = \"vs0\"\n",
            a(1, 2),
            a(1, 1),
        ),
    );
    // The BIRD session is not configured: a client service asks bfd for it over MTS, as BGP
    // will, and reports the answer and every session event.
    lab.service(
        "bgp-sim",
        &[
            "--notify",
            "--bfd-client",
            &format!("bgp-sim:{}:{}:vs1", a(2, 2), a(2, 1)),
            "--report",
            "client.log",
        ],
        "depends-on = [\"bfd\"]\nreadiness = \"notify\"\n[saps]\nbgp-sim = 120\n",
    );
    lab.write(
        "bfd.toml",
        &format!(
            "command = [{:?}, \"--config\", \"bfd.conf\"]\nrestart = [\"stateful\", \"stateless\"]\n\
             readiness = \"notify\"\nheartbeat = {{ interval = \"1s\", misses = 3 }}\n\
             [saps]\nbfd = 110\n\
             [ha.single-sup.primary]\naction = \"stateful\"\nmax-retries = 1000\nmin-lifetime = \"1s\"\n",
            bin("bfd").display().to_string()
        ),
    );
    lab.wrapper = sut.wrapper();
    lab.boot();
    let l = BfdLab {
        lab,
        frr,
        bird,
        frr_peer: a(1, 1),
        bird_peer: a(2, 1),
        frr_addr: a(1, 2),
        bird_addr: a(2, 2),
        frr_ns,
        bird_ns,
        _sut: sut,
    };
    l.wait_all_up(Duration::from_secs(15));
    l
}

impl BfdLab {
    fn neighbors(&self) -> Vec<serde_json::Value> {
        self.lab
            .json(&["show", "bfd", "neighbors"])
            .as_array()
            .expect("rows")
            .clone()
    }

    /// Our session towards the peer at `their` address.
    fn ours(&self, their: &str) -> serde_json::Value {
        self.neighbors()
            .into_iter()
            .find(|n| n["peer"] == their)
            .unwrap_or_else(|| panic!("no session to {their}"))
    }

    fn wait_all_up(&self, timeout: Duration) {
        wait_for(timeout, "every session Up on both sides", || {
            let ours = self.neighbors();
            let all_up = ours.len() == 2 && ours.iter().all(|n| n["state"] == "Up");
            let frr = self.frr.peer(&self.frr_peer)["status"] == "up";
            let bird = self.bird.bfd_state(&self.bird_peer).as_deref() == Some("Up");
            (all_up && frr && bird).then_some(())
        });
    }

    /// (FRR session-down count, BIRD down events).
    fn peer_downs(&self) -> (u64, usize) {
        (
            self.frr.counters(&self.frr_peer).1,
            self.bird.down_events().len(),
        )
    }
}

impl Drop for BfdLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = |p: std::path::PathBuf| {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            eprintln!(
                "---- bfd stderr ----\n{}\n---- FRR bfdd ----\n{}\n---- BIRD ----\n{}",
                tail(self.lab.path("data/logs/bfd.stderr.log")),
                tail(self.lab.path("frr/bfdd.log")),
                tail(self.lab.path("bird/bird.log")),
            );
        }
    }
}

fn skip() -> bool {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return true;
    }
    false
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[test]
fn sessions_come_up_at_50ms_and_a_peer_link_down_is_detected_in_time() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let l = setup(1);
    for n in l.neighbors() {
        assert_eq!(n["tx_interval_us"], 50_000, "{n}");
        assert_eq!(n["detect_time_us"], DETECT_MS * 1000, "{n}");
        assert_eq!(n["remote_detect_mult"], 3, "{n}");
        assert!(n["source_port"].as_u64().expect("port") >= 49152, "{n}");
    }
    let f = l.frr.peer(&l.frr_peer);
    assert_eq!(f["remote-transmit-interval"], 50, "{f}");
    assert_eq!(f["remote-receive-interval"], 50, "{f}");
    let requested = l.ours(&l.bird_addr);
    assert_eq!(requested["owner"], "bgp-sim", "{requested}");
    assert!(
        l.lab
            .report("client.log")
            .contains(&format!("session Ok({})", requested["local_disc"])),
        "{:?}",
        l.lab.report("client.log")
    );
    let text = l.lab.cli(&["show", "bfd", "neighbors"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("150(3)"));

    // Pull the cable on each peer's side: we must declare Down within the Detection Time.
    for (ns, ifname, their) in [
        (&l.frr_ns, "vf0", &l.frr_addr),
        (&l.bird_ns, "vb0", &l.bird_addr),
    ] {
        let t0 = wall_ms();
        ns.ip(&["link", "set", ifname, "down"]);
        let n = wait_for(Duration::from_secs(2), "our session Down", || {
            let n = l.ours(their);
            (n["state"] == "Down").then_some(n)
        });
        let took = n["since_ms"].as_u64().expect("since") as i64 - t0 as i64;
        eprintln!("{their}: link down detected after {took} ms (detection time {DETECT_MS} ms)");
        assert_eq!(n["diag"], "ControlDetectionTimeExpired", "{n}");
        // The last packet arrived before the link went down, so Down comes at most one
        // Detection Time later, plus the timer's wake-up: on this shared two-vCPU machine a
        // runnable bfd can wait 10-25 ms for a CPU (sched_switch traces, BENCHMARKS.md). A
        // detection from anything but this Detection Time (the 1 s slow rate, a doubled
        // timer) would be hundreds of ms late.
        assert!(took <= DETECT_MS as i64 + 50, "took {took} ms: {n}");
        ns.ip(&["link", "set", ifname, "up"]);
    }
    l.wait_all_up(Duration::from_secs(15));
    // The client was told, over MTS, both ways.
    let events = l.lab.report("client.log");
    let key = format!("{}%vs1", l.bird_addr);
    for e in [
        format!("event {key} Up->Down"),
        format!("event {key} Init->Up"),
    ] {
        assert!(events.contains(&e), "{e} missing: {events:?}");
    }
}

#[test]
fn a_hundred_sigkills_of_bfd_and_the_peers_see_no_session_down() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let l = setup(2);
    // Let the Poll Sequences of the bring-up finish, then take the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let before = l.peer_downs();
    let discs: Vec<(serde_json::Value, serde_json::Value)> = l
        .neighbors()
        .iter()
        .map(|n| (n["local_disc"].clone(), n["remote_disc"].clone()))
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut pid = l.lab.pid_of("bfd").expect("bfd running");
    let t0 = Instant::now();
    for i in 0..100 {
        // Kill at a random point of the 50 ms transmit cycle.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 60));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill bfd");
        pid = l.lab.wait_running("bfd", Some(pid));
        assert_eq!(
            l.peer_downs(),
            before,
            "a peer saw a session go down at kill {i}"
        );
    }
    eprintln!("100 SIGKILLs of bfd in {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        l.peer_downs(),
        before,
        "FRR session-down counter / BIRD down events changed"
    );
    let now: Vec<(serde_json::Value, serde_json::Value)> = l
        .neighbors()
        .iter()
        .map(|n| (n["local_disc"].clone(), n["remote_disc"].clone()))
        .collect();
    assert_eq!(now, discs, "the sessions kept their discriminators");
    for n in l.neighbors() {
        assert_eq!(n["state"], "Up", "{n}");
        assert_eq!(n["flaps"], 0, "{n}");
    }
    assert_eq!(l.frr.peer(&l.frr_peer)["status"], "up");
    assert_eq!(l.bird.bfd_state(&l.bird_peer).as_deref(), Some("Up"));
    let kills = l
        .lab
        .records("bfd")
        .iter()
        .filter(|r| r["death"]["Signal"]["signal"] == 9)
        .count();
    assert_eq!(kills, 100, "process log records every kill");
}

#[test]
fn a_stateless_restart_is_exactly_one_flap_for_each_peer() {
    if skip() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let l = setup(3);
    std::thread::sleep(Duration::from_millis(300));
    let (frr0, bird0) = l.peer_downs();
    let disc0 = l.ours(&l.frr_addr)["local_disc"].clone();
    let out = l.lab.cli(&["restart", "service", "bfd", "--stateless"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(5), "the peers to see the flap", || {
        let (f, b) = l.peer_downs();
        (f > frr0 && b > bird0).then_some(())
    });
    l.wait_all_up(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        l.peer_downs(),
        (frr0 + 1, bird0 + 1),
        "exactly one flap each"
    );
    assert_ne!(
        l.ours(&l.frr_addr)["local_disc"],
        disc0,
        "a stateless start begins new sessions"
    );
    // The client asked again for its session once bfd said it started without state.
    let log = l.lab.report("client.log");
    assert!(
        log.contains(&"bfd started stateless".to_string()),
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|x| x.starts_with("session Ok(")).count(),
        2,
        "{log:?}"
    );
    assert_eq!(l.ours(&l.bird_addr)["owner"], "bgp-sim");
}
