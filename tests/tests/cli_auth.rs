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
    lab.wait_log("bad frame magic");
}

#[test]
fn members_of_the_admin_group_are_operators() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to create a group and switch uid (CI runs as root)");
        return;
    }
    let group = format!("sysmgr-t{}", std::process::id());
    let added = Command::new("groupadd")
        .arg(&group)
        .status()
        .expect("groupadd");
    assert!(added.success(), "groupadd {group}");
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("groupdel").arg(&self.0).status();
        }
    }
    let _cleanup = Cleanup(group.clone());
    let gid = nix::unistd::Group::from_name(&group)
        .expect("lookup")
        .expect("group exists")
        .gid
        .as_raw();
    let mut lab = Lab::new("1s");
    lab.write(
        "sysmgr.toml",
        &(std::fs::read_to_string(lab.config()).expect("cfg").replace(
            "supervisors = 1\n",
            &format!("supervisors = 1\nadmin-group = \"{group}\"\n"),
        )),
    );
    lab.service("svc", &[], "");
    lab.boot();
    let as_nobody = |gid: u32| {
        Command::new(bin("sysmgr"))
            .args(["show", "processes", "--config"])
            .arg(lab.config())
            .env_remove("SYSMGR_SOCKET")
            .uid(65534)
            .gid(gid)
            .output()
            .expect("run as nobody")
    };
    let member = as_nobody(gid);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert!(String::from_utf8_lossy(&member.stdout).contains("svc"));
    let stranger = as_nobody(65534);
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains(&format!(
        "operators are uid 0 and members of group \"{group}\""
    )));
}
