//! Scheduling priority: sysmgr runs ahead of its services (`nice` in sysmgr.toml, -10 by
//! default); a service runs at its policy's `nice`, or at the nice sysmgr was started with, also
//! after a supervisor reset; a nice that cannot be taken is an error said where it happens.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use sysmgr_tests::{Lab, bin, is_root, wait_for};

/// The nice value of a process or thread (`/proc/.../stat`, field 19).
fn nice_of(stat_path: &str) -> Option<i32> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    s[s.rfind(')')? + 2..].split(' ').nth(16)?.parse().ok()
}

/// The nice of every thread of `pid`.
fn thread_nices(pid: i32) -> Vec<(String, i32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| {
            let tid = e.ok()?.file_name().to_str()?.to_string();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((
                comm.trim().to_string(),
                nice_of(&format!("/proc/{pid}/task/{tid}/stat"))?,
            ))
        })
        .collect()
}

fn own_nice() -> i32 {
    nice_of("/proc/self/stat").expect("own nice")
}

/// Boot `lab` expecting it refused; returns sysmgr's stderr.
fn refused(lab: &Lab) -> String {
    let out = Command::new(bin("sysmgr"))
        .args(["boot", "--config"])
        .arg(lab.config())
        .output()
        .expect("boot");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

/// A sysmgr.toml whose third line is `line` is refused with `want` at sysmgr.toml's path.
fn sysmgr_toml_refused(line: &str, want: &str) {
    let lab = Lab::new("1s");
    lab.write(
        "sysmgr.toml",
        &format!("name = \"sup-t\"\ndata-dir = \"data\"\n{line}\n"),
    );
    let err = refused(&lab);
    let want = format!("{}:{want}", lab.config().display());
    assert!(err.contains(&want), "missing {want:?} in:\n{err}");
}

#[test]
fn nice_out_of_range_is_an_error_with_its_place() {
    sysmgr_toml_refused("nice = -21", "3:8: `nice` = -21 is out of range -20..=19");

    let lab = Lab::new("1s");
    lab.service("svc", &[], "nice = 20");
    lab.service("other", &[], "nice = \"low\"");
    let err = refused(&lab);
    for want in [
        format!(
            "{}:2:8: `nice` = 20 is out of range -20..=19",
            lab.path("svc.toml").display()
        ),
        format!("{}:2:8: `nice`", lab.path("other.toml").display()),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("2 error(s); nothing was started"), "{err}");
}

#[test]
fn pss_poll_out_of_range_is_an_error_with_its_place() {
    sysmgr_toml_refused(
        "pss-poll-us = 1001",
        "3:15: `pss-poll-us` = 1001 is out of range 0..=1000",
    );
}

#[test]
fn sysmgr_runs_ahead_of_its_services_and_they_keep_their_own_nice_across_a_reset() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to lower nice values (CI runs as root)");
        return;
    }
    let started = own_nice();
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    let counter = lab.path("count").display().to_string();
    lab.service("plain", &[], "");
    lab.service("low", &[], "nice = 5");
    lab.service("high", &[], "nice = -3");
    // Crashes once, with no HA policy: the default for one supervisor is a supervisor reset.
    lab.service(
        "crasher",
        &[
            "--crash-after",
            "300",
            "--crash-times",
            "1",
            "--counter",
            &counter,
            "--report",
            &report,
        ],
        "",
    );
    lab.boot();
    let sysmgr = lab.daemon_pid();
    let check = |lab: &Lab, when: &str| {
        let threads = thread_nices(sysmgr);
        assert!(threads.len() > 3, "{threads:?}");
        for (comm, n) in &threads {
            assert_eq!(
                *n, -10,
                "{when}: sysmgr thread {comm} at nice {n}: {threads:?}"
            );
        }
        for (svc, want) in [("plain", started), ("low", 5), ("high", -3)] {
            let pid = lab.wait_running(svc, None);
            assert_eq!(
                nice_of(&format!("/proc/{pid}/stat")),
                Some(want),
                "{when}: {svc}"
            );
        }
    };
    check(&lab, "first boot");
    // The reset re-execs sysmgr (already at -10 then); the services still get their own nice.
    wait_for(Duration::from_secs(20), "second crasher start", || {
        (lab.report("report").len() >= 2).then_some(())
    });
    wait_for(Duration::from_secs(10), "boot after the reset", || {
        lab.records("sysmgr")
            .iter()
            .any(|r| r["action"] == "boot after supervisor reset")
            .then_some(())
    });
    let crasher = lab.wait_running("crasher", None);
    assert_eq!(
        nice_of(&format!("/proc/{crasher}/stat")),
        Some(started),
        "crasher after the reset"
    );
    check(&lab, "after the reset");
}

#[test]
fn a_nice_that_cannot_be_taken_is_said_and_the_rest_runs() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to run sysmgr as another uid (CI runs as root)");
        return;
    }
    // sysmgr as uid 65534: it may not lower its own nice (it says so and runs), and a service
    // asking for a negative nice fails with its reason on its stderr.
    let mut lab = Lab::new("1s");
    lab.service("plain", &[], "");
    // Left down when it fails (the default would reset the supervisor, again and again).
    lab.service(
        "greedy",
        &[],
        "nice = -5\n[ha.single-sup.primary]\naction = \"none\"\n",
    );
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(lab.path(""))
        .status()
        .expect("chown");
    assert!(status.success());
    std::fs::set_permissions(lab.path(""), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    lab.wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]
    .map(String::from)
    .to_vec();
    lab.boot();
    let started = own_nice();
    let log = lab.wait_log("running at nice");
    assert!(
        log.contains(&format!("running at nice {started}, not -10")),
        "{log}"
    );
    let plain = lab.wait_running("plain", None);
    assert_eq!(nice_of(&format!("/proc/{plain}/stat")), Some(started));
    let err = lab.service_log_when("greedy", |l| l.contains("cannot run this service"));
    assert!(
        err.contains("sysmgr: cannot run this service at nice -5"),
        "{err}"
    );
    wait_for(Duration::from_secs(10), "greedy's failure recorded", || {
        lab.records("greedy")
            .iter()
            .any(|r| r.to_string().contains("122"))
            .then_some(())
    });
}
