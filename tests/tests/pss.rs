//! PSS end to end with the real sysmgr: checkpoints across restarts, access rules, atomicity.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sysmgr_tests::{Lab, wait_for};

fn lines(lab: &Lab, prefix: &str) -> Vec<String> {
    lab.report("report")
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

fn wait_lines(lab: &Lab, prefix: &str, n: usize) -> Vec<String> {
    wait_for(Duration::from_secs(10), prefix, || {
        let l = lines(lab, prefix);
        (l.len() >= n).then_some(l)
    })
}

/// A service "owner" that stores its count (private and shared-local) and is ready 500 ms later.
fn counter_owner(lab: &mut Lab, report: &str) {
    lab.service(
        "owner",
        &[
            "--pss-counter",
            "--notify",
            "--ready-delay",
            "500",
            "--report",
            report,
        ],
        "readiness = \"notify\"\n",
    );
}

const STATEFUL: &str = "restart = [\"stateful\", \"stateless\"]\n[ha.single-sup.primary]\naction = \"stateful\"\nmax-retries = 10\nmin-lifetime = \"1s\"\n";

#[test]
fn checkpoints_survive_a_stateful_restart_and_not_a_stateless_one() {
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    lab.service("counter", &["--pss-counter", "--report", &report], STATEFUL);
    lab.boot();
    let first = wait_lines(&lab, "pss count", 1);
    assert!(
        first[0].starts_with("pss count before=none after=1 seq=Ok(1)"),
        "{first:?}"
    );
    let pid = lab.wait_running("counter", None);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let second = wait_lines(&lab, "pss count", 2);
    assert!(
        second[1].starts_with("pss count before=1 after=2 seq=Ok(3)"),
        "instance 2 reads instance 1's checkpoint: {second:?}"
    );
    let pid2 = lab.wait_running("counter", Some(pid));
    let out = lab.cli(&["restart", "service", "counter", "--stateless"]);
    assert!(out.status.success());
    lab.wait_running("counter", Some(pid2));
    let third = wait_lines(&lab, "pss count", 3);
    assert!(
        third[2].starts_with("pss count before=none after=1"),
        "stateless restart clears private state: {third:?}"
    );
}

#[test]
fn private_keys_are_private_and_shared_keys_are_read_only_for_others() {
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    counter_owner(&mut lab, &report);
    lab.service(
        "peeker",
        &["--pss-peek", "owner", "--report", &report],
        "depends-on = [\"owner\"]\n",
    );
    lab.boot();
    let peek = wait_lines(&lab, "pss peek", 1);
    assert!(peek[0].contains("private=error: permission denied: service \"peeker\" may not read the private keys of \"owner\""), "{peek:?}");
    assert!(peek[0].contains("shared=Some(1)"), "{peek:?}");
    let after = wait_lines(&lab, "pss peek-after-write", 1);
    assert_eq!(
        after[0], "pss peek-after-write owner=Some(1) mine=Some(999)",
        "shared keys are not writable by others"
    );
}

#[test]
fn a_transaction_is_all_or_nothing_across_sigkill_of_the_writer() {
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    lab.service("txn", &["--pss-txn-loop", "--report", &report], STATEFUL);
    lab.boot();
    let mut pid = lab.wait_running("txn", None);
    for round in 1..=4 {
        // Let it commit for a while, then kill it at an arbitrary point.
        std::thread::sleep(Duration::from_millis(150 + 70 * round as u64));
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
        pid = lab.wait_running("txn", Some(pid));
        let l = wait_lines(&lab, "pss txn", round + 1);
        assert_eq!(
            l[round], "pss txn keys=50 distinct-values=1",
            "round {round}: {l:?}"
        );
    }
    assert_eq!(
        lines(&lab, "pss txn")[0],
        "pss txn keys=0 distinct-values=0"
    );
}

#[test]
fn show_and_clear_pss_from_the_cli() {
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    lab.service("counter", &["--pss-counter", "--report", &report], STATEFUL);
    lab.boot();
    wait_lines(&lab, "pss count", 1);
    let rows = lab.json(&["show", "pss"]);
    let rows = rows.as_array().expect("rows");
    let private = rows
        .iter()
        .find(|r| r["service"] == "counter" && r["scope"] == "private")
        .expect("private row");
    assert_eq!(private["keys"], 1);
    assert_eq!(private["last_seq"], 2);
    assert!(private["last_ms"].as_u64().unwrap_or(0) > 0);
    let e = lab.json(&[
        "show", "pss", "service", "counter", "--scope", "private", "--key", "count",
    ]);
    assert_eq!(e.as_array().expect("entries").len(), 1, "{e}");
    assert_eq!(e[0]["key"], "count");
    let text = String::from_utf8_lossy(&lab.cli(&["show", "pss"]).stdout).into_owned();
    assert!(
        text.starts_with("Service") && text.contains("counter"),
        "{text}"
    );
    let bad = lab.cli(&["show", "pss", "service", "counter", "--scope", "nope"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope \"nope\""));
    assert!(
        lab.cli(&["clear", "pss", "service", "counter"])
            .status
            .success()
    );
    // The keys are gone; the checkpoint sequence goes on (it only ever increases), and the
    // clear took a number of its own.
    let rows = lab.json(&["show", "pss"]);
    assert!(
        rows.as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["service"] == "counter")
            .all(|r| r["keys"] == 0 && r["last_seq"].as_u64().unwrap_or(0) >= 3),
        "{rows}"
    );
}

#[test]
fn a_corrupt_database_refuses_to_boot_unless_the_operator_moves_it_aside() {
    let mut lab = Lab::new("1s");
    let report = lab.path("report").display().to_string();
    lab.service("counter", &["--pss-counter", "--report", &report], STATEFUL);
    lab.boot();
    wait_lines(&lab, "pss count", 1);
    lab.signal(Signal::SIGTERM);
    assert_eq!(lab.wait_exit(Duration::from_secs(10)), Some(0));
    let db = lab.path("data/db");
    let boot = |lab: &Lab| {
        std::process::Command::new(sysmgr_tests::bin("sysmgr"))
            .arg("boot")
            .arg("--config")
            .arg(lab.config())
            .output()
            .expect("boot")
    };
    // Scrambled data: sled would quietly recover an empty database; sysmgr refuses.
    let data = db.join("db");
    let len = std::fs::metadata(&data).expect("db file").len() as usize;
    std::fs::write(&data, vec![0xab; len]).expect("scramble");
    let out = boot(&lab);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the PSS database at {} is corrupt", db.display())),
        "{err}"
    );
    assert!(err.contains("--move-aside-corrupt-db"), "{err}");
    // A configuration sled cannot read at all: refused too, naming the path.
    std::fs::write(db.join("conf"), b"garbage").expect("conf");
    let err = String::from_utf8_lossy(&boot(&lab).stderr).into_owned();
    // (sled either fails to open it or opens an empty one, which the sentinel catches)
    assert!(
        err.contains(&format!("PSS database at {}", db.display()))
            && err.contains("--move-aside-corrupt-db"),
        "{err}"
    );
    assert_eq!(lines(&lab, "pss count").len(), 1, "nothing started");
    // The operator's flag: moved aside, empty database, services start.
    lab.boot_args = vec!["--move-aside-corrupt-db".into()];
    lab.boot();
    let l = wait_lines(&lab, "pss count", 2);
    assert!(l[1].starts_with("pss count before=none after=1"), "{l:?}");
    let aside: Vec<_> = std::fs::read_dir(lab.path("data"))
        .expect("data")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside, not deleted");
    lab.wait_log("%SYSMGR-2-PSS_MOVED_ASIDE");
}

#[test]
fn the_blocking_client_writes_reads_and_is_refused_as_the_async_one_is() {
    let mut lab = Lab::new("1s");
    // With the PSS thread polling after each answer, which the client's requests meet.
    let toml = std::fs::read_to_string(lab.config()).expect("sysmgr.toml");
    lab.write(
        "sysmgr.toml",
        &toml.replacen(
            "supervisors = 1\n",
            "supervisors = 1\npss-poll-us = 50\n",
            1,
        ),
    );
    let report = lab.path("report").display().to_string();
    counter_owner(&mut lab, &report);
    lab.service(
        "blocking",
        &["--pss-blocking", "owner", "--report", &report],
        &format!("depends-on = [\"owner\"]\n{STATEFUL}"),
    );
    lab.boot();
    assert_eq!(
        wait_lines(&lab, "pss blocking start", 1)[0],
        "pss blocking start b/2=None"
    );
    let all = wait_lines(&lab, "pss blocking put", 1);
    assert_eq!(
        all[0],
        "pss blocking put=Ok(1) get=Some(7) txn=Ok(2) \
         cas=error: compare-and-swap failed on a key; nothing was written \
         after-cas=Some(8)/Some(9) scan=b/2,b/3 seq=Ok(2) \
         private=error: permission denied: service \"blocking\" may not read the private keys of \"owner\" \
         shared=Some(1)"
    );
    // Its checkpoints survive a stateful restart, and its sequence goes on.
    let pid = lab.wait_running("blocking", None);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    assert_eq!(
        wait_lines(&lab, "pss blocking start", 2)[1],
        "pss blocking start b/2=Some(8)"
    );
    let again = wait_lines(&lab, "pss blocking put", 2);
    assert!(again[1].starts_with("pss blocking put=Ok(3) "), "{again:?}");
}
