//! Orphaned grandchildren are reaped: as a subreaper, and as PID 1 of a pid namespace.

use std::time::Duration;

use sysmgr_tests::{Lab, is_root, proc_state, wait_for};

#[test]
fn orphans_are_reaped_as_subreaper() {
    let mut lab = Lab::new("1s");
    let pidfile = lab.path("orphan.pid").display().to_string();
    lab.service("forker", &["--orphan", &pidfile], "");
    lab.boot();
    let g: i32 = wait_for(Duration::from_secs(5), "orphan pid", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    // The grandchild's parent exits at once (the pid file may be read before it has);
    // sysmgr (subreaper) adopts it.
    let daemon = lab.daemon_pid();
    wait_for(
        Duration::from_secs(2),
        "grandchild adopted by sysmgr",
        || {
            let s = std::fs::read_to_string(format!("/proc/{g}/stat")).ok()?;
            let ppid = s[s.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse::<i32>()
                .ok()?;
            (ppid == daemon).then_some(())
        },
    );
    // It exits after 300 ms and must not stay a zombie.
    wait_for(Duration::from_secs(3), "grandchild reaped", || {
        proc_state(g).is_none().then_some(())
    });
}

/// Host pids of every process in the pid namespace of `pid`.
fn namespace_members(pid: i32) -> Vec<i32> {
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("ns link");
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ns))
        .collect()
}

#[test]
fn zombie_grandchildren_reaped_under_pid1() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for unshare --pid (CI runs as root)");
        return;
    }
    let mut lab = Lab::new("1s");
    let pidfile = lab.path("orphan.pid").display().to_string();
    lab.service(
        "forker",
        &["--orphan", &pidfile, "--notify"],
        "readiness = \"notify\"\n",
    );
    lab.service("steady", &["--notify"], "readiness = \"notify\"\n");
    lab.wrapper = vec![
        "unshare".into(),
        "--pid".into(),
        "--fork".into(),
        "--mount-proc".into(),
    ];
    lab.boot();
    // sysmgr is the child of `unshare`, PID 1 in its namespace.
    let unshare = lab.daemon_pid();
    let sysmgr = wait_for(Duration::from_secs(5), "sysmgr under unshare", || {
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rfind(')')
                        .is_some_and(|i| s[i + 2..].split(' ').nth(1) == Some(&unshare.to_string()))
                })
            })
    });
    let status = std::fs::read_to_string(format!("/proc/{sysmgr}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(
        nspid.split_whitespace().last() == Some("1"),
        "sysmgr is PID 1 in its namespace: {nspid}"
    );
    let g_ns: i32 = wait_for(Duration::from_secs(5), "orphan pid", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    assert!(g_ns > 1);
    lab.wait_running("forker", None);
    // After the grandchild exits (300 ms) nothing in the namespace may be a zombie.
    std::thread::sleep(Duration::from_millis(800));
    wait_for(Duration::from_secs(3), "no zombies", || {
        let zombies: Vec<i32> = namespace_members(sysmgr)
            .into_iter()
            .filter(|p| proc_state(*p) == Some('Z'))
            .collect();
        zombies.is_empty().then_some(())
    });
    // The namespace holds sysmgr and its two services, nothing else.
    assert_eq!(
        namespace_members(sysmgr).len(),
        3,
        "members: {:?}",
        namespace_members(sysmgr)
    );
    // Orderly shutdown as PID 1.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sysmgr),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert_eq!(lab.wait_exit(Duration::from_secs(10)), Some(0));
}
