//! A service that stops sending WATCHDOG=1 is declared unresponsive, killed, and restarted.

use std::time::{Duration, Instant};

use sysmgr_tests::{Lab, wait_for};

#[test]
fn hung_service_is_detected_by_missed_heartbeats() {
    let mut lab = Lab::new("1s");
    lab.service(
        "hanger",
        &["--notify", "--heartbeat", "--hang-after", "600"],
        r#"readiness = "notify"
heartbeat = { interval = "200ms", misses = 3 }
[ha.single-sup.primary]
action = "stateless"
max-retries = 5
min-lifetime = "1s"
"#,
    );
    let t0 = Instant::now();
    lab.boot();
    let pid = lab.wait_running("hanger", None);
    // Healthy while it beats: nothing recorded in the first half second.
    std::thread::sleep(Duration::from_millis(400));
    assert!(lab.records("hanger").is_empty());
    let rec = wait_for(Duration::from_secs(10), "unresponsive record", || {
        lab.records("hanger").first().cloned()
    });
    let elapsed = t0.elapsed();
    assert_eq!(rec["pid"].as_i64(), Some(pid as i64));
    let un = &rec["death"]["Unresponsive"];
    assert_eq!(un["signal"], 6, "killed with SIGABRT: {rec}");
    assert!(un["silent_ms"].as_u64().unwrap_or(0) >= 600, "{rec}");
    assert!(
        rec["action"]
            .as_str()
            .unwrap_or("")
            .starts_with("stateless restart"),
        "{rec}"
    );
    assert!(elapsed < Duration::from_secs(8));
    lab.wait_log("%SYSMGR-2-HEARTBEAT_FAILURE: Service \"hanger\"");
    lab.wait_running("hanger", Some(pid));
}
