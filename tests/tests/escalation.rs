//! HA policy escalation with the real sysmgr: stateful -> stateless -> supervisor reset, retries
//! and min-lifetime, and the retry counter reset after a restart survives its min-lifetime.

use std::time::Duration;

use sysmgr_tests::{Lab, wait_for};

#[test]
fn stateful_then_stateless_then_reset() {
    let mut lab = Lab::new("1s");
    let counter = lab.path("count").display().to_string();
    let report = lab.path("report").display().to_string();
    lab.service(
        "crasher",
        &[
            "--crash-after",
            "150",
            "--crash-times",
            "4",
            "--counter",
            &counter,
            "--report",
            &report,
        ],
        r#"restart = ["stateful", "stateless"]
[ha.single-sup.primary]
action = "stateful"
max-retries = 2
min-lifetime = "3s"
[ha.single-sup.secondary]
action = "stateless"
max-retries = 1
min-lifetime = "3s"
"#,
    );
    lab.boot();
    let sysmgr_pid = lab.daemon_pid();
    // Four crashes: fresh, stateful, stateful, stateless; then the reset boots it fresh again and
    // the fifth instance (crash-times 4) stays up.
    wait_for(Duration::from_secs(20), "fifth start", || {
        (lab.report("report").len() >= 5).then_some(())
    });
    let starts: Vec<String> = lab
        .report("report")
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_string())
        .collect();
    assert_eq!(
        starts[..5],
        [
            "kind=fresh",
            "kind=stateful",
            "kind=stateful",
            "kind=stateless",
            "kind=fresh"
        ]
    );
    lab.wait_running("crasher", None);
    let actions: Vec<String> = lab
        .records("crasher")
        .iter()
        .map(|r| r["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        actions[0].starts_with("stateful restart (1 retries left)"),
        "{actions:?}"
    );
    assert!(
        actions[1].starts_with("stateful restart (0 retries left)"),
        "{actions:?}"
    );
    assert!(
        actions[2].starts_with("stateless restart (0 retries left)"),
        "{actions:?}"
    );
    assert_eq!(actions[3], "supervisor reset", "{actions:?}");
    let policies: Vec<String> = lab
        .records("crasher")
        .iter()
        .map(|r| r["policy"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(policies[0].starts_with("primary: stateful"), "{policies:?}");
    assert!(
        policies[2].starts_with("secondary: stateless"),
        "{policies:?}"
    );
    assert!(policies[3].starts_with("default"), "{policies:?}");
    // The reset stopped everything and re-exec'd sysmgr under the same pid.
    let sys: Vec<String> = lab
        .records("sysmgr")
        .iter()
        .map(|r| r["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        sys,
        ["boot", "supervisor reset", "boot after supervisor reset"]
    );
    for r in lab.records("sysmgr") {
        assert_eq!(
            r["pid"].as_i64(),
            Some(sysmgr_pid as i64),
            "reset keeps the pid"
        );
    }
    assert!(
        lab.daemon
            .as_mut()
            .map(|d| d.try_wait().ok().flatten().is_none())
            .unwrap_or(false),
        "same process still running"
    );
}

#[test]
fn retries_reset_after_min_lifetime() {
    let mut lab = Lab::new("1s");
    let counter = lab.path("count").display().to_string();
    lab.service(
        "once",
        &[
            "--crash-after",
            "100",
            "--crash-times",
            "1",
            "--counter",
            &counter,
        ],
        r#"restart = ["stateful"]
[ha.single-sup.primary]
action = "stateful"
max-retries = 1
min-lifetime = "2s"
"#,
    );
    lab.boot();
    // One crash: one stateful restart, leaving 0 retries.
    let pid = wait_for(Duration::from_secs(10), "restart", || {
        let r = lab.records("once");
        (r.len() == 1).then(|| r[0]["new_pid"].as_i64())?
    }) as i32;
    let detail = lab.json(&[
        "show", "system", "internal", "sysmgr", "service", "name", "once",
    ]);
    assert_eq!(detail["retries_left"], 0, "{detail}");
    // After min-lifetime the attempt succeeded and the count is back.
    wait_for(Duration::from_secs(5), "retries reset", || {
        (lab.json(&[
            "show", "system", "internal", "sysmgr", "service", "name", "once",
        ])["retries_left"]
            == 1)
            .then_some(())
    });
    // So a new failure is handled by the primary policy again, not escalated to a reset.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    lab.wait_running("once", Some(pid));
    let r = lab.records("once");
    assert_eq!(r.len(), 2);
    assert!(
        r[1]["action"]
            .as_str()
            .unwrap_or("")
            .starts_with("stateful restart"),
        "{r:?}"
    );
    assert!(lab.records("sysmgr").iter().all(|r| r["action"] == "boot"));
}

#[test]
fn exit_code_and_policy_none() {
    let mut lab = Lab::new("1s");
    lab.service(
        "quitter",
        &["--exit-after", "100", "--code", "7"],
        r#"[ha.single-sup.primary]
action = "none"
"#,
    );
    lab.boot();
    let rec = wait_for(Duration::from_secs(10), "record", || {
        lab.records("quitter").first().cloned()
    });
    assert_eq!(rec["death"]["Exit"], 7, "{rec}");
    assert_eq!(rec["action"], "left down (policy none)");
    let rows = lab.json(&["show", "processes"]);
    assert_eq!(rows[0]["state"], "failed");
    let log = lab.wait_log("%SYSMGR-2-SERVICE_CRASHED: Service \"quitter\"");
    assert!(log.contains("has finished with error code 7."), "{log}");
}
