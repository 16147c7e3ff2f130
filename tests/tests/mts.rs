//! The MTS broker end to end: queues that wait for a restarting receiver, redelivery, persistent
//! messages across a SIGKILL of sysmgr, poison quarantine, identity, bad frames, limits.

use std::time::Duration;

use mts::Flags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sysmgr_tests::{Lab, MtsConn, wait_for};

const RX: u32 = 100;
const ACK: u8 = Flags::NEEDS_ACK;

/// A lab with `gate` (ready only with `gate_ready`) and `rx` (SAP rx = 100) depending on it.
fn lab(gate_ready: bool, extra_sysmgr: &str) -> Lab {
    lab_with(gate_ready, extra_sysmgr, &[])
}

/// [`lab`], rx started with `extra` arguments too.
fn lab_with(gate_ready: bool, extra_sysmgr: &str, extra: &[&str]) -> Lab {
    let lab = Lab::new("1s");
    if !extra_sysmgr.is_empty() {
        lab.write(
            "sysmgr.toml",
            &(std::fs::read_to_string(lab.config()).expect("cfg") + extra_sysmgr),
        );
    }
    gate(&lab, gate_ready);
    let report = lab.path("report").display().to_string();
    let args = [
        "--mts-bind",
        "rx",
        "--mts-try-bind",
        "other",
        "--report",
        &report,
    ];
    lab.service(
        "rx",
        &[&args[..], extra].concat(),
        "depends-on = [\"gate\"]\nrestart = [\"stateful\", \"stateless\"]\n[saps]\nrx = 100\n[ha.single-sup.primary]\naction = \"stateful\"\nmax-retries = 5\nmin-lifetime = \"1s\"\n",
    );
    lab.service("owner", &[], "[saps]\nother = 101\n");
    lab
}

fn gate(lab: &Lab, ready: bool) {
    lab.gate(ready.then_some(1500));
}

/// The `show mts queues` row of SAP rx.
fn rx_queue(lab: &Lab) -> serde_json::Value {
    let q = lab.json(&["show", "mts", "queues"]);
    q.as_array()
        .expect("rows")
        .iter()
        .find(|r| r["name"] == "rx")
        .expect("rx queue")
        .clone()
}

/// Wait until rx reports that it bound its SAP.
fn wait_bound(lab: &Lab, secs: u64) {
    wait_for(Duration::from_secs(secs), "rx bound", || {
        lab.report("report")
            .iter()
            .any(|l| l.starts_with("bound rx"))
            .then_some(())
    });
}

fn received(lab: &Lab) -> Vec<String> {
    lab.report("report")
        .into_iter()
        .filter(|l| l.starts_with("recv "))
        .collect()
}

fn texts(lab: &Lab) -> Vec<String> {
    received(lab)
        .iter()
        .map(|l| l.rsplit("text=").next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn messages_wait_for_the_receiver_and_arrive_in_order() {
    let mut lab = lab(true, "");
    lab.boot();
    let mut c = MtsConn::connect(&lab);
    for i in 0..5 {
        c.send_confirmed(RX, &format!("m{i}"), ACK).expect("queued");
    }
    let row = rx_queue(&lab);
    assert_eq!(row["depth"], 5, "waiting while rx is down: {row}");
    let sap = lab.json(&["show", "mts", "sap"]);
    assert!(
        sap.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["name"] == "rx" && r["bound"] == false && r["owner"] == "rx")
    );
    wait_for(Duration::from_secs(10), "delivery", || {
        (received(&lab).len() >= 5).then_some(())
    });
    assert_eq!(texts(&lab), ["m0", "m1", "m2", "m3", "m4"]);
    wait_for(Duration::from_secs(5), "acks", || {
        let q = lab.json(&["show", "mts", "queues"]);
        let r = q.as_array()?.iter().find(|r| r["name"] == "rx")?.clone();
        (r["depth"] == 0 && r["pending_acks"] == 0).then_some(())
    });
    // Request/response through the broker.
    let id = c.send(RX, 9, Flags::REQUEST, b"ping");
    let f = c.read().expect("response");
    assert_eq!(f.header.reply_to, id);
    assert_eq!(f.into_result().expect("ok"), b"echo:ping");
}

/// The same receiver on `mts::blocking::Client`: what waited for it arrives in order, a
/// request is answered, its neighbour's SAP is refused, and a message it held unacked comes
/// back to the next instance after a SIGKILL, marked as a redelivery.
#[test]
fn the_blocking_client_receives_in_order_answers_and_gets_redeliveries() {
    let mut lab = lab_with(true, "", &["--mts-blocking"]);
    lab.boot();
    let mut c = MtsConn::connect(&lab);
    for i in 0..3 {
        c.send_confirmed(RX, &format!("m{i}"), ACK).expect("queued");
    }
    assert_eq!(rx_queue(&lab)["depth"], 3, "waiting while rx is down");
    let pid = lab.wait_running("rx", None);
    wait_for(Duration::from_secs(10), "delivery", || {
        (received(&lab).len() >= 3).then_some(())
    });
    assert_eq!(texts(&lab), ["m0", "m1", "m2"]);
    let id = c.send(RX, 9, Flags::REQUEST, b"ping");
    let f = c.read().expect("response");
    assert_eq!(f.header.reply_to, id);
    assert_eq!(f.into_result().expect("ok"), b"echo:ping");
    let rep = lab.report("report");
    assert!(
        rep.iter().any(|l| l.starts_with(
            "bind other error: permission denied: SAP \"other\" is not declared by service \"rx\""
        )),
        "{rep:?}"
    );
    c.send_confirmed(RX, "hold", ACK).expect("queued");
    wait_for(Duration::from_secs(5), "held", || {
        texts(&lab).contains(&"hold".to_string()).then_some(())
    });
    // rx wrote the acks of m0..m2 before it waited again: only "hold" is pending.
    wait_for(Duration::from_secs(5), "one pending ack", || {
        (rx_queue(&lab)["pending_acks"] == 1).then_some(())
    });
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    wait_for(Duration::from_secs(10), "redelivery", || {
        (texts(&lab).len() == 6).then_some(())
    });
    let r = received(&lab);
    assert!(r[5].contains("redelivered=true text=hold"), "{r:?}");
    wait_for(Duration::from_secs(5), "acked", || {
        (rx_queue(&lab)["pending_acks"] == 0 && rx_queue(&lab)["depth"] == 0).then_some(())
    });
    assert_ne!(lab.pid_of("rx"), Some(pid));
}

#[test]
fn unacked_message_is_redelivered_after_sigkill_of_the_receiver() {
    let mut lab = lab(true, "");
    lab.boot();
    let pid = lab.wait_running("rx", None);
    wait_bound(&lab, 5);
    let mut c = MtsConn::connect(&lab);
    c.send_confirmed(RX, "hold", ACK).expect("queued");
    wait_for(Duration::from_secs(5), "first delivery", || {
        (received(&lab).len() == 1).then_some(())
    });
    assert!(received(&lab)[0].contains("redelivered=false text=hold"));
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    wait_for(Duration::from_secs(5), "redelivery", || {
        (received(&lab).len() == 2).then_some(())
    });
    let r = received(&lab);
    assert!(r[1].contains("redelivered=true text=hold"), "{r:?}");
    assert_eq!(
        r[0].split_whitespace().nth(1),
        r[1].split_whitespace().nth(1),
        "same message id"
    );
    wait_for(Duration::from_secs(5), "acked", || {
        let q = lab.json(&["show", "mts", "queues"]);
        (q.as_array()?.iter().find(|r| r["name"] == "rx")?["pending_acks"] == 0).then_some(())
    });
}

#[test]
fn persistent_message_survives_sigkill_of_sysmgr() {
    let mut lab = lab(false, "");
    lab.boot();
    let mut c = MtsConn::connect(&lab);
    c.send_confirmed(RX, "kept", ACK | Flags::PERSISTENT)
        .expect("queued on disk");
    // A burst the broker's writer stores together (several segments), the last one confirmed.
    let burst: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    for t in &burst[..99] {
        c.send(RX, 7, ACK | Flags::PERSISTENT, t.as_bytes());
    }
    c.send_confirmed(RX, &burst[99], ACK | Flags::PERSISTENT)
        .expect("the burst is on disk");
    c.send_confirmed(RX, "volatile", ACK)
        .expect("queued in memory");
    let row = rx_queue(&lab);
    assert_eq!(row["persistent_written"], 101, "{row}");
    assert_eq!(row["persistent_delivered_unwritten"], 0, "{row}");
    lab.signal(Signal::SIGKILL);
    lab.wait_exit(Duration::from_secs(5));
    gate(&lab, true);
    lab.boot();
    let row = rx_queue(&lab);
    assert_eq!(row["depth"], 101, "{row}");
    assert_eq!(row["persistent"], 101);
    wait_for(Duration::from_secs(10), "delivery after reboot", || {
        (received(&lab).len() >= 101).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut want = vec!["kept".to_string()];
    want.extend(burst);
    assert_eq!(texts(&lab), want);

    // Acked, then covered by a later confirmation: gone from disk too, so a second SIGKILL
    // of sysmgr brings none of them back (at most the last one, which rx may not have acked).
    wait_for(Duration::from_secs(10), "all acked", || {
        let row = rx_queue(&lab);
        (row["depth"] == 0 && row["pending_acks"] == 0).then_some(())
    });
    let mut c = MtsConn::connect(&lab);
    c.send_confirmed(RX, "last", ACK | Flags::PERSISTENT)
        .expect("confirmed");
    lab.signal(Signal::SIGKILL);
    lab.wait_exit(Duration::from_secs(5));
    lab.boot();
    wait_for(Duration::from_secs(10), "rx bound again", || {
        let bound = lab.report("report");
        (bound.iter().filter(|l| l.starts_with("bound rx")).count() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<String> = texts(&lab).split_off(want.len());
    assert!(
        after.iter().all(|t| t == "last") && !after.is_empty() && after.len() <= 2,
        "after the second reboot: {after:?}"
    );
}

#[test]
fn messages_acked_out_of_a_stored_segment_stay_gone_after_sigkill_of_sysmgr() {
    // Stored together while rx is down: one segment (or a few), some of whose messages rx
    // will hold unacked ("hold" is acked only when redelivered) while it acks the rest.
    let mut lab = lab(false, "");
    lab.boot();
    let mut c = MtsConn::connect(&lab);
    let texts_sent: Vec<String> = (0..20)
        .map(|i| match i {
            3 | 11 | 17 => "hold".to_string(),
            _ => format!("s{i}"),
        })
        .collect();
    for t in &texts_sent[..19] {
        c.send(RX, 7, ACK | Flags::PERSISTENT, t.as_bytes());
    }
    c.send_confirmed(RX, &texts_sent[19], ACK | Flags::PERSISTENT)
        .expect("the burst is on disk");
    assert_eq!(rx_queue(&lab)["persistent_written"], 20);
    lab.signal(Signal::SIGKILL);
    lab.wait_exit(Duration::from_secs(5));

    // rx takes all 20 and acks 17 of them: the writer records those removals as tombstones
    // next to the segments, which keep the three held messages.
    gate(&lab, true);
    lab.boot();
    wait_for(Duration::from_secs(10), "17 acked, 3 held", || {
        let row = rx_queue(&lab);
        (received(&lab).len() >= 20 && row["depth"] == 0 && row["pending_acks"] == 3).then_some(())
    });
    assert_eq!(texts(&lab), texts_sent);
    // A confirmed persistent message (to a SAP nobody binds) is on disk only after every
    // write before it, the tombstones included.
    let mut c = MtsConn::connect(&lab);
    c.send_confirmed(101, "sync", Flags::PERSISTENT)
        .expect("confirmed");
    lab.signal(Signal::SIGKILL);
    lab.wait_exit(Duration::from_secs(5));

    // Only the three held messages come back, in order and marked as redeliveries (they had
    // been delivered); none of the acked ones.
    lab.boot();
    wait_for(Duration::from_secs(10), "the held messages again", || {
        (received(&lab).len() >= 23).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<String> = texts(&lab).split_off(20);
    assert_eq!(after, ["hold", "hold", "hold"]);
    let ids = |r: &[String]| -> Vec<String> {
        r.iter()
            .filter(|l| l.ends_with("text=hold"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect()
    };
    let r = received(&lab);
    let (before, again) = r.split_at(20);
    assert_eq!(ids(before), ids(again), "the same three messages");
    assert!(
        again.iter().all(|l| l.contains("redelivered=true")),
        "{again:?}"
    );
    // rx acks a held message once it is redelivered.
    wait_for(
        Duration::from_secs(10),
        "acked after the redelivery",
        || {
            let row = rx_queue(&lab);
            (row["depth"] == 0 && row["pending_acks"] == 0).then_some(())
        },
    );
}

#[test]
fn poison_is_quarantined_after_two_crashes_and_the_third_instance_runs() {
    let mut lab = lab(true, "");
    lab.boot();
    let first = lab.wait_running("rx", None);
    wait_bound(&lab, 5);
    let mut c = MtsConn::connect(&lab);
    c.send_confirmed(RX, "poison", ACK).expect("queued");
    wait_for(Duration::from_secs(10), "dead letter", || {
        let d = lab.json(&["show", "mts", "dead-letter"]);
        (d.as_array()?.len() == 1).then_some(())
    });
    let third = lab.wait_running("rx", Some(first));
    c.send_confirmed(RX, "after", ACK).expect("queued");
    wait_for(Duration::from_secs(5), "third instance works", || {
        texts(&lab).contains(&"after".to_string()).then_some(())
    });
    assert_eq!(texts(&lab), ["poison", "poison", "after"]);
    assert!(received(&lab)[1].contains("redelivered=true"));
    let recs = lab.records("rx");
    assert_eq!(recs.len(), 2);
    assert!(
        recs[1]["action"]
            .as_str()
            .unwrap_or("")
            .contains("1 message(s) quarantined to the dead-letter queue"),
        "{recs:?}"
    );
    lab.wait_log("%SYSMGR-2-MTS_DEAD_LETTER");
    let d = lab.json(&["show", "mts", "dead-letter"]);
    assert_eq!(d[0]["sap"], "rx");
    assert_eq!(d[0]["bytes"], 6);
    assert_eq!(lab.pid_of("rx"), Some(third));
}

#[test]
fn identity_bad_frames_and_limits() {
    let mut lab = lab(false, "[mts]\nqueue-max-messages = 3\n");
    gate(&lab, true);
    lab.boot();
    wait_bound(&lab, 10);
    // A service cannot bind another service's SAP.
    let r = lab.report("report");
    assert!(
        r.iter().any(|l| l.contains(
            "bind other error: permission denied: SAP \"other\" is not declared by service \"rx\""
        )),
        "{r:?}"
    );
    // An operator cannot send as a service's SAP.
    let mut c = MtsConn::connect(&lab);
    let mut f = mts::Frame::request(RX, 101, 7, 1, b"spoof".to_vec());
    f.header.flags = Flags(Flags::CONFIRM);
    mts::io::write_frame(&mut c.stream, &f).expect("write");
    let e = c.read().expect("error").into_result().expect_err("refused");
    assert!(e.to_string().contains("has not bound SAP 100"), "{e}");

    // An oversized frame closes that connection only.
    let mut bad = MtsConn::connect(&lab);
    let mut h = mts::Frame::request(0xffff_0001, RX, 7, 1, Vec::new())
        .header
        .encode();
    h[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    use std::io::Write;
    bad.stream.write_all(&h).expect("write");
    assert!(matches!(bad.read(), Err(mts::MtsError::Closed)), "closed");
    // A frame that lies about its length (the stream ends inside it) too.
    let mut liar = MtsConn::connect(&lab);
    let mut h = mts::Frame::request(0xffff_0001, RX, 7, 1, Vec::new())
        .header
        .encode();
    h[4..8].copy_from_slice(&100u32.to_be_bytes());
    liar.stream.write_all(&h).expect("write");
    liar.stream.write_all(b"only ten b").expect("write");
    liar.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert!(matches!(liar.read(), Err(mts::MtsError::Closed)));
    // Everyone else carries on.
    c.send_confirmed(RX, "still works", ACK).expect("queued");
    wait_for(Duration::from_secs(5), "delivery", || {
        texts(&lab)
            .contains(&"still works".to_string())
            .then_some(())
    });
    lab.wait_log("frame payload of 4294967295 bytes exceeds the limit");
    lab.wait_log("stream ended inside a frame");

    // Queue limits: SAP other (101) has no receiver; the fourth message is refused.
    for i in 0..3 {
        c.send_confirmed(101, &format!("n{i}"), 0).expect("queued");
    }
    let e = c.send_confirmed(101, "n3", 0).expect_err("over the limit");
    assert!(
        e.contains("queue of SAP other (101) is full: 3 messages (limit 3)"),
        "{e}"
    );
}
