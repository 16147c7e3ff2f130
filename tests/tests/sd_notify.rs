//! An unmodified sd_notify client no one here wrote: Debian's `systemd-notify`, run from a shell
//! service, for readiness, STATUS= and heartbeats; plus dependency ordering on READY=1.

use std::time::Duration;

use sysmgr_tests::{Lab, wait_for};

#[test]
fn systemd_notify_from_a_shell_service() {
    let Some(sn) = ["/usr/bin/systemd-notify", "/bin/systemd-notify"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        panic!("systemd-notify is not installed: scripts/test-all installs the `systemd` package");
    };
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    lab.write(
        "shell.toml",
        &format!(
            r#"command = ["/bin/sh", "-c", "sleep 1.5; {sn} --ready --status='shell is up'; while :; do {sn} WATCHDOG=1; sleep 0.2; done"]
readiness = "notify"
heartbeat = {{ interval = "1s", misses = 2 }}
[ha.single-sup.primary]
action = "stateless"
max-retries = 3
min-lifetime = "1s"
"#
        ),
    );
    lab.service(
        "after",
        &["--report", &report],
        "depends-on = [\"shell\"]\n",
    );
    lab.boot();
    // Not ready for the first 1.5 s, so its dependent has not started.
    let d = lab.json(&[
        "show", "system", "internal", "sysmgr", "service", "name", "shell",
    ]);
    assert_eq!(d["ready"], false, "{d}");
    assert!(lab.report("report").is_empty());
    lab.wait_running("shell", None);
    let d = lab.json(&[
        "show", "system", "internal", "sysmgr", "service", "name", "shell",
    ]);
    assert_eq!(d["status"], "shell is up");
    wait_for(Duration::from_secs(5), "dependent started", || {
        (!lab.report("report").is_empty()).then_some(())
    });
    // Heartbeats from systemd-notify keep it alive well past interval x misses.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.records("shell").is_empty(),
        "no failure: {:?}",
        lab.records("shell")
    );
}
