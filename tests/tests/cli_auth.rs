//! Only operators may use the CLI; everyone else gets a clear refusal.

use std::os::unix::process::CommandExt;
use std::process::Command;

use sysmgr_tests::{Lab, bin, is_root};

#[test]
fn non_admin_uid_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to run the CLI as another uid (CI runs as root)");
        return;
    }
    let mut lab = Lab::new("1s");
    lab.service("svc", &[], "");
    lab.boot();
    let out = Command::new(bin("sysmgr"))
        .args(["show", "processes", "--config"])
        .arg(lab.config())
        .env_remove("SYSMGR_SOCKET")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied: uid 65534 is not a sysmgr operator"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Root is an operator.
    assert!(lab.cli(&["show", "processes"]).status.success());
}

#[test]
fn unknown_service_and_malformed_requests_are_clear_errors() {
    let mut lab = Lab::new("1s");
    lab.service("svc", &[], "");
    lab.boot();
    let out = lab.cli(&["restart", "service", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such service: nope"));
    // A garbage frame closes that connection only; the daemon carries on.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(lab.socket()).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n......................................")
        .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(lab.cli(&["show", "processes"]).status.success());
    assert!(
        lab.daemon_log().contains("bad frame magic"),
        "{}",
        lab.daemon_log()
    );
}
