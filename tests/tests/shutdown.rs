//! SIGTERM stops services in reverse dependency order, with stop-timeout then SIGKILL for a
//! service that ignores SIGTERM; the process log survives sysmgr's SIGKILL, and no service
//! outlives a SIGKILLed sysmgr.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sysmgr_tests::{Lab, alive, wait_for};

#[test]
fn orderly_shutdown_with_a_sigterm_ignoring_service() {
    let mut lab = Lab::new("1s");
    lab.service("base", &["--notify"], "readiness = \"notify\"\n");
    lab.service(
        "stubborn",
        &["--notify", "--ignore-sigterm"],
        "readiness = \"notify\"\ndepends-on = [\"base\"]\nstop-timeout = \"1s\"\n",
    );
    lab.boot();
    let base = lab.wait_running("base", None);
    let stubborn = lab.wait_running("stubborn", None);
    let t = Instant::now();
    lab.signal(Signal::SIGTERM);
    assert_eq!(lab.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited for the stop timeout"
    );
    assert!(!alive(base) && !alive(stubborn));
    // Boot again (with no services) to read what the process log kept.
    std::fs::remove_file(lab.path("base.toml")).expect("rm");
    std::fs::remove_file(lab.path("stubborn.toml")).expect("rm");
    lab.boot();
    let s = lab.records("stubborn");
    let b = lab.records("base");
    assert_eq!(s.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!(
        s[0]["death"]["Stopped"]["signal"], 9,
        "stubborn needed SIGKILL: {s:?}"
    );
    assert_eq!(
        b[0]["death"]["Stopped"]["code"], 0,
        "base exited on SIGTERM: {b:?}"
    );
    assert!(
        s[0]["seq"].as_u64() < b[0]["seq"].as_u64(),
        "dependent stopped first"
    );
    assert!(b[0]["ended_ms"].as_u64() >= s[0]["ended_ms"].as_u64());
    let sys: Vec<String> = lab
        .records("sysmgr")
        .iter()
        .map(|r| r["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(sys, ["boot", "shutdown", "boot"]);
}

#[test]
fn service_output_goes_to_capped_log_files() {
    let mut lab = Lab::new("1s");
    lab.write(
        "sysmgr.toml",
        &(std::fs::read_to_string(lab.config()).expect("cfg").replace(
            "supervisors = 1\n",
            "supervisors = 1\nlog-max-bytes = 100000\n",
        )),
    );
    lab.service(
        "chatty",
        &["--spew", "350000", "--stderr", "hello on stderr"],
        "",
    );
    lab.boot();
    let out = lab.path("data/logs/chatty.stdout.log");
    let rotated = lab.path("data/logs/chatty.stdout.log.1");
    wait_for(Duration::from_secs(5), "stdout written", || {
        let a = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let b = std::fs::metadata(&rotated).map(|m| m.len()).unwrap_or(0);
        (a + b >= 50_000 && b > 0).then_some(())
    });
    // Let the spew finish: a rotation is always followed by the write that recreates the log.
    wait_for(
        Duration::from_secs(5),
        "stdout log after the last rotation",
        || {
            std::fs::metadata(&out)
                .ok()
                .filter(|m| m.len() > 0)
                .map(|_| ())
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::metadata(&out).expect("log").len() <= 100_000);
    assert!(std::fs::metadata(&rotated).expect("rotated").len() <= 100_000);
    let log = lab.service_log_when("chatty", |l| l.contains("hello on stderr"));
    assert!(log.contains("hello on stderr"), "{log:?}");
}

#[test]
fn process_log_survives_sigkill_of_sysmgr_and_services_die_with_it() {
    let mut lab = Lab::new("1s");
    let orphan = lab.path("orphan.pid").display().to_string();
    lab.service(
        "victim",
        &["--notify"],
        "readiness = \"notify\"\n[ha.single-sup.primary]\naction = \"stateless\"\nmax-retries = 5\nmin-lifetime = \"1s\"\n",
    );
    // A service whose grandchild outlives it briefly: it is orphaned to sysmgr.
    lab.service("parent", &["--orphan", &orphan], "");
    lab.boot();
    let pid = lab.wait_running("victim", None);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let pid2 = lab.wait_running("victim", Some(pid));
    let before = lab.json(&["show", "processes", "log"]);
    // Kill sysmgr itself: its services must die with it (PDEATHSIG).
    lab.signal(Signal::SIGKILL);
    lab.wait_exit(Duration::from_secs(5));
    wait_for(Duration::from_secs(3), "service death", || {
        (!alive(pid2)).then_some(())
    });
    lab.boot();
    let after = lab.json(&["show", "processes", "log"]);
    let n = before["records"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        before["records"].as_array().expect("records")[..],
        after["records"].as_array().expect("records")[..n],
        "log intact after SIGKILL"
    );
    let v = lab.records("victim");
    assert_eq!(v[0]["pid"].as_i64(), Some(pid as i64));
    assert_eq!(v[0]["death"]["Signal"]["signal"], 9);
    assert_eq!(v[0]["new_pid"].as_i64(), Some(pid2 as i64));
    // The new boot runs a new victim.
    let pid3 = lab.wait_running("victim", None);
    assert_ne!(pid3, pid2);
}

#[test]
fn a_log_file_that_blocks_holds_neither_restarts_nor_the_cli() {
    use std::io::Read;
    let mut lab = Lab::new("1s");
    lab.service(
        "chatty",
        &["--spew", "200000", "--stderr", "hello on stderr", "--notify"],
        "readiness = \"notify\"\n[ha.single-sup.primary]\naction = \"stateless\"\nmax-retries = 5\nmin-lifetime = \"1s\"\n",
    );
    // (Ready once its spew is in the pipe.) Its stdout log is a FIFO nobody reads yet: opening it for writing blocks (as a stalled
    // disk would).
    let fifo = lab.path("data/logs/chatty.stdout.log");
    std::fs::create_dir_all(lab.path("data/logs")).expect("logs dir");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    lab.boot();
    let pid = lab.wait_running("chatty", None);
    // The CLI answers, and a SIGKILLed service is restarted, while the log writer is stuck.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let pid2 = lab.wait_running("chatty", Some(pid));
    let recs = lab.records("chatty");
    assert_eq!(
        recs[0]["new_pid"].as_i64(),
        Some(i64::from(pid2)),
        "{recs:?}"
    );

    // Once the FIFO is read, what both instances wrote comes out: each its start line and
    // 200,000 x's, less whatever had to be dropped (and then the file says how much).
    let accounted = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let said: usize = text
            .lines()
            .filter_map(|l| l.strip_prefix("[sysmgr: "))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .sum();
        (got.iter().filter(|b| **b == b'x').count(), said)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::open(fifo).expect("open the FIFO");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        loop {
            let (x, said) = accounted(&got);
            let text = String::from_utf8_lossy(&got);
            if (x + said >= 400_000 && text.contains("started (stateless"))
                || t0.elapsed() > Duration::from_secs(10)
            {
                break;
            }
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(got);
    });
    let got = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the log writer goes on once the file is read");
    let (x, said) = accounted(&got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        (400_000..=400_200).contains(&(x + said)),
        "{x} x's, {said} bytes said dropped"
    );
    assert!(text.contains(&format!("sysmgr-demo pid {pid} started (fresh")));
    assert!(text.contains(&format!("sysmgr-demo pid {pid2} started (stateless")));
    let log = lab.service_log_when("chatty", |l| l.contains("hello on stderr"));
    assert!(log.contains("hello on stderr"), "{log:?}");
}

#[test]
fn a_stderr_nobody_reads_holds_neither_restarts_nor_the_cli() {
    use std::os::fd::AsRawFd;
    let mut lab = Lab::new("1s");
    lab.service(
        "victim",
        &["--notify"],
        "readiness = \"notify\"\n[ha.single-sup.primary]\naction = \"stateless\"\nmax-retries = 100\nmin-lifetime = \"1s\"\n",
    );
    // sysmgr's stderr: a pipe of one page that this test never reads (a stuck journal).
    let (r, w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let log = std::fs::File::create(lab.path("sysmgr.log")).expect("log");
    lab.boot_with_stderr(log, std::process::Stdio::from(w));
    let mut pid = lab.wait_running("victim", None);
    for _ in 0..20 {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
        pid = lab.wait_running("victim", Some(pid));
    }
    // sysmgr had more to say than the pipe holds: the pipe is full, and everything went on.
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(r.as_raw_fd(), libc::FIONREAD, &mut queued) };
    // (Full: no room for another line, which the kernel writes whole or not at all.)
    assert!(
        queued > 4096 - 512,
        "sysmgr's stderr pipe should be full: {queued}"
    );
    let kills = lab
        .records("victim")
        .iter()
        .filter(|r| r["death"]["Signal"]["signal"] == 9)
        .count();
    assert_eq!(kills, 20);
    // Once read, the lines come out, the LOG_ERR line of every kill among them.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&got)
            .matches("SERVICE_CRASHED")
            .count()
            < 20
        {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(got.len());
    });
    let read = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("every LOG_ERR line once stderr is read");
    // More than twice what the pipe holds: sysmgr went on logging while it was full.
    assert!(read > 8192, "{read} bytes");
}
