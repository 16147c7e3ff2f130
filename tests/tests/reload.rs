//! SIGHUP / `sysmgr reload` touch only services whose policy changed; an invalid reload changes
//! nothing.

use std::time::Duration;

use sysmgr_tests::{Lab, alive, wait_for};

#[test]
fn reload_touches_only_changed_services() {
    let mut lab = Lab::new("1s");
    lab.service("same", &["--notify"], "readiness = \"notify\"\n");
    lab.service(
        "edited",
        &["--notify", "--status", "v1"],
        "readiness = \"notify\"\n",
    );
    lab.service("gone", &[], "");
    lab.boot();
    let same = lab.wait_running("same", None);
    let edited = lab.wait_running("edited", None);
    let gone = lab.wait_running("gone", None);

    // An invalid policy: the reload is refused with the error and nothing changes.
    lab.write("broken.toml", "command = 5\n");
    let out = lab.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("broken.toml:1:11: `command` must be an array of strings"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(lab.path("broken.toml")).expect("rm");

    lab.service(
        "edited",
        &["--notify", "--status", "v2"],
        "readiness = \"notify\"\n",
    );
    lab.service("added", &["--notify"], "readiness = \"notify\"\n");
    std::fs::remove_file(lab.path("gone.toml")).expect("rm");
    // A comment-only change is not a change.
    lab.write(
        "same.toml",
        &(std::fs::read_to_string(lab.path("same.toml")).expect("read") + "# just a comment\n"),
    );
    lab.signal(nix::sys::signal::Signal::SIGHUP);
    let edited2 = lab.wait_running("edited", Some(edited));
    lab.wait_running("added", None);
    wait_for(Duration::from_secs(5), "gone stopped", || {
        (!alive(gone)).then_some(())
    });
    assert_eq!(
        lab.pid_of("same"),
        Some(same),
        "unchanged service untouched"
    );
    assert!(alive(same));
    assert_eq!(
        lab.json(&[
            "show", "system", "internal", "sysmgr", "service", "name", "edited"
        ])["status"],
        "v2"
    );
    assert!(
        lab.json(&["show", "processes"])
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["name"] != "gone")
    );
    assert_ne!(edited2, edited);
}
