//! FDSTORE=1 descriptors come back after a stateful restart and not after a stateless one.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sysmgr_tests::{Lab, wait_for};

#[test]
fn stored_fd_survives_stateful_but_not_stateless_restart() {
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    lab.service(
        "keeper",
        &["--notify", "--fdstore", "--report", &report],
        r#"restart = ["stateful", "stateless"]
readiness = "notify"
[ha.single-sup.primary]
action = "stateful"
max-retries = 10
min-lifetime = "1s"
"#,
    );
    lab.boot();
    let pid1 = lab.wait_running("keeper", None);
    wait_for(Duration::from_secs(5), "fd stored", || {
        let d = lab.json(&[
            "show", "system", "internal", "sysmgr", "service", "name", "keeper",
        ]);
        (d["stored_fds"].as_array()?.len() == 1).then_some(())
    });
    // Crash: the policy restarts it stateful, with the memfd handed back as LISTEN_FDS.
    kill(Pid::from_raw(pid1), Signal::SIGKILL).expect("kill");
    let pid2 = lab.wait_running("keeper", Some(pid1));
    wait_for(Duration::from_secs(5), "second report", || {
        (lab.report("report").len() >= 2).then_some(())
    });
    let r = lab.report("report");
    assert!(
        r[0].contains("kind=fresh") && r[0].contains("fds=[stored-new]"),
        "{r:?}"
    );
    assert!(r[1].contains(&format!("pid={pid2} kind=stateful")), "{r:?}");
    assert!(
        r[1].contains(&format!("fds=[demo-state=token-from-{pid1}]")),
        "LISTEN_FDS with the stored memfd: {r:?}"
    );

    // Operator stateful restart keeps it too.
    let out = lab.cli(&["restart", "service", "keeper"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid3 = lab.wait_running("keeper", Some(pid2));
    wait_for(Duration::from_secs(5), "third report", || {
        (lab.report("report").len() >= 3).then_some(())
    });
    assert!(
        lab.report("report")[2].contains(&format!(
            "pid={pid3} kind=stateful count=3 fds=[demo-state=token-from-{pid1}]"
        )),
        "{:?}",
        lab.report("report")
    );

    // A stateless restart closes the stored descriptors: the new instance gets none.
    let out = lab.cli(&["restart", "service", "keeper", "--stateless"]);
    assert!(out.status.success());
    let pid4 = lab.wait_running("keeper", Some(pid3));
    wait_for(Duration::from_secs(5), "fourth report", || {
        (lab.report("report").len() >= 4).then_some(())
    });
    let r = lab.report("report");
    assert!(
        r[3].contains(&format!("pid={pid4} kind=stateless")) && r[3].contains("fds=[stored-new]"),
        "{r:?}"
    );
    let recs = lab.records("keeper");
    assert_eq!(recs[1]["action"], "operator restart (stateful)");
    assert_eq!(recs[2]["action"], "operator restart (stateless)");
}
