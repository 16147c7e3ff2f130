//! PSS crash test in the style of sled's own: a service streams durable checkpoints and records
//! every acknowledgement; sysmgr is SIGKILLed at random points and restarted; every acknowledged
//! checkpoint must be there afterwards (zero lost), and nothing out of order.

use std::time::Duration;

use nix::sys::signal::Signal;
use sysmgr_tests::{Lab, alive, wait_for};

const ITERATIONS: usize = 20;

/// A small deterministic generator (seeded from the clock, printed for reproduction).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn parse(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
}

#[test]
fn every_acknowledged_durable_checkpoint_survives_sigkill_of_sysmgr() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("crash test seed {seed}");
    let mut rng = Lcg(seed);
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    lab.service("stream", &["--pss-stream", "--report", &report], "");
    let mut max_acked = 0u64;
    let mut total_acks = 0usize;
    for iteration in 0..=ITERATIONS {
        let seen = lab.report("report").len();
        lab.boot();
        // The new instance reports what survived the previous life.
        let present = wait_for(Duration::from_secs(10), "present line", || {
            lab.report("report")[seen..]
                .iter()
                .find(|l| l.starts_with("present"))
                .cloned()
        });
        let count = parse(&present, "count=").expect("count");
        let max = parse(&present, "max=").expect("max");
        assert!(
            present.ends_with("contiguous=true"),
            "iteration {iteration}, seed {seed}: {present}"
        );
        assert!(
            max >= max_acked,
            "iteration {iteration}, seed {seed}: lost acknowledged checkpoints: acked up to {max_acked}, found {count} (max {max})"
        );
        if iteration == ITERATIONS {
            break;
        }
        // Let it stream, then kill sysmgr at an arbitrary point.
        wait_for(Duration::from_secs(10), "acks", || {
            lab.report("report")[seen..]
                .iter()
                .any(|l| l.starts_with("acked"))
                .then_some(())
        });
        std::thread::sleep(Duration::from_millis(rng.next(150)));
        let pid = lab.pid_of("stream");
        lab.signal(Signal::SIGKILL);
        lab.wait_exit(Duration::from_secs(5));
        if let Some(p) = pid {
            wait_for(Duration::from_secs(5), "writer gone", || {
                (!alive(p)).then_some(())
            });
        }
        let acks: Vec<u64> = lab.report("report")[seen..]
            .iter()
            .filter_map(|l| l.strip_prefix("acked ")?.parse().ok())
            .collect();
        total_acks += acks.len();
        max_acked = max_acked.max(acks.iter().copied().max().unwrap_or(0));
    }
    assert!(
        total_acks > ITERATIONS,
        "the writer made progress ({total_acks} acks)"
    );
    // The acknowledged writes came back through the write-ahead log, not only through what
    // sled had flushed by itself (it flushes every 500 ms; the kills come sooner).
    let applied: u64 = lab
        .daemon_log()
        .lines()
        .filter(|l| l.contains("PSS write-ahead log replayed"))
        .filter_map(|l| parse(l, "applied="))
        .sum();
    assert!(
        applied > 0,
        "no boot replayed a record of the write-ahead log"
    );
    eprintln!(
        "{ITERATIONS} kills, {total_acks} acknowledged durable checkpoints, none lost; {applied} replayed from the log"
    );
}
