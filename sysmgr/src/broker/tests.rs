use std::sync::Arc;

use mts::frame::{Flags, HEADER_LEN, Header};

use super::*;

fn broker() -> Broker {
    let mut b = Broker::new(
        Limits {
            max_messages: 3,
            max_bytes: 1000,
        },
        None,
    );
    b.set_saps(&[
        ("bgp".into(), 100, "bgp".into()),
        ("fib".into(), 101, "fib".into()),
    ]);
    b
}

fn frames(o: &Outbox) -> Vec<(Header, Vec<u8>)> {
    let buf = o.take(Vec::new());
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&buf[at..at + HEADER_LEN]);
        let h = Header::decode(&h, u32::MAX).expect("header");
        let end = at + HEADER_LEN + h.len as usize;
        out.push((h, buf[at + HEADER_LEN..end].to_vec()));
        at = end;
    }
    out
}

pub(super) fn msg(src: u32, dst: u32, id: u64, flags: u8, body: &[u8]) -> (Header, Vec<u8>) {
    let h = Header {
        flags: Flags(flags),
        len: body.len() as u32,
        src_sap: src,
        dst_sap: dst,
        opcode: 7,
        msg_id: id,
        reply_to: 0,
    };
    (h, body.to_vec())
}

fn service(b: &mut Broker, name: &str) -> (ConnId, Arc<Outbox>) {
    let o = Arc::new(Outbox::default());
    let (c, _) = b.connect(Identity::Service(name.into()), o.clone());
    (c, o)
}

#[test]
fn messages_wait_for_the_receiver_and_arrive_in_order() {
    let mut b = broker();
    let (fib, fo) = service(&mut b, "fib");
    b.bind(fib, "fib").expect("bind fib");
    for i in 0..3u8 {
        let (h, p) = msg(101, 100, i as u64, 0, &[i]);
        b.route(fib, h, p);
    }
    assert_eq!(b.queues()[0].depth, 3, "queued while bgp is down");
    assert!(frames(&fo).is_empty(), "no error to the sender");
    let (bgp, bo) = service(&mut b, "bgp");
    b.bind(bgp, "bgp").expect("bind");
    let got: Vec<u8> = frames(&bo).iter().map(|(_, p)| p[0]).collect();
    assert_eq!(got, [0, 1, 2]);
    assert_eq!(b.queues()[0].depth, 0);
}

#[test]
fn a_batch_names_each_connection_it_queued_frames_for_once() {
    let mut b = broker();
    let (bgp, bo) = service(&mut b, "bgp");
    b.bind(bgp, "bgp").expect("bind");
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op.clone());
    b.begin_batch(Vec::new());
    for i in 0..3u8 {
        let (h, p) = msg(mts::sap::CLI, 100, i as u64, 0, &[i]);
        b.route(cli, h, p);
    }
    // An error for the sender joins the batch too.
    let (h, p) = msg(mts::sap::CLI, 999, 9, 0, b"?");
    b.route(cli, h, p);
    let touched: Vec<ConnId> = b.end_batch().into_iter().map(|(c, _)| c).collect();
    assert_eq!(touched, [bgp, cli]);
    let got: Vec<u8> = frames(&bo).iter().map(|(_, p)| p[0]).collect();
    assert_eq!(
        got,
        [0, 1, 2],
        "queued in order, for the batch's end to write"
    );
    assert!(frames(&op)[0].0.flags.has(Flags::ERROR));
    // Outside a batch nothing is recorded.
    let (h, p) = msg(mts::sap::CLI, 100, 4, 0, &[4]);
    b.route(cli, h, p);
    assert!(b.end_batch().is_empty());
    assert_eq!(frames(&bo).len(), 1);
}

#[test]
fn unacked_message_is_redelivered_to_the_next_instance_and_ack_clears_it() {
    let mut b = broker();
    let (bgp, bo) = service(&mut b, "bgp");
    b.bind(bgp, "bgp").expect("bind");
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op);
    let (h, p) = msg(mts::sap::CLI, 100, 1, Flags::NEEDS_ACK, b"x");
    b.route(cli, h, p);
    let f = frames(&bo);
    assert_eq!(f.len(), 1);
    assert!(!f[0].0.flags.has(Flags::REDELIVERY));
    assert_eq!(b.queues()[0].pending_acks, 1);
    // The receiver crashes before acking: the next instance gets it again, marked.
    b.disconnect(bgp);
    assert!(b.service_exited("bgp", true).is_empty());
    let (bgp2, bo2) = service(&mut b, "bgp");
    b.bind(bgp2, "bgp").expect("bind");
    let f2 = frames(&bo2);
    assert_eq!(f2.len(), 1);
    assert!(f2[0].0.flags.has(Flags::REDELIVERY));
    assert_eq!(f2[0].0.msg_id, f[0].0.msg_id);
    b.ack(bgp2, &[f2[0].0.msg_id]);
    assert_eq!(b.queues()[0].pending_acks, 0);
    assert_eq!(b.queues()[0].bytes, 0);
}

#[test]
fn poison_in_flight_at_two_consecutive_crashes_is_quarantined() {
    let mut b = broker();
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op);
    let (h, p) = msg(mts::sap::CLI, 100, 1, Flags::NEEDS_ACK, b"poison");
    b.route(cli, h, p);
    let (h, p) = msg(mts::sap::CLI, 100, 2, Flags::NEEDS_ACK, b"fine");
    b.route(cli, h, p);
    for round in 0..2 {
        let (c, o) = service(&mut b, "bgp");
        b.bind(c, "bgp").expect("bind");
        let f = frames(&o);
        assert!(!f.is_empty());
        // The second message is acked each time; the first kills the receiver.
        if let Some((h, _)) = f.iter().find(|(_, p)| p == b"fine") {
            b.ack(c, &[h.msg_id]);
        }
        let dead = b.service_exited("bgp", true);
        assert_eq!(dead.len(), round, "quarantined only at the second crash");
    }
    assert_eq!(b.dead_letters().len(), 1);
    assert_eq!(b.dead_letters()[0].bytes, 6);
    let (c, o) = service(&mut b, "bgp");
    b.bind(c, "bgp").expect("bind");
    assert!(
        frames(&o).is_empty(),
        "the third instance does not get the poison"
    );
}

#[test]
fn a_clean_stop_does_not_count_as_a_crash() {
    let mut b = broker();
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op);
    let (h, p) = msg(mts::sap::CLI, 100, 1, Flags::NEEDS_ACK, b"m");
    b.route(cli, h, p);
    for _ in 0..3 {
        let (c, _o) = service(&mut b, "bgp");
        b.bind(c, "bgp").expect("bind");
        assert!(b.service_exited("bgp", false).is_empty());
    }
    assert_eq!(b.queues()[0].depth, 1);
}

#[test]
fn stateless_start_drops_non_persistent_messages() {
    let mut b = broker();
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op);
    let (h, p) = msg(mts::sap::CLI, 100, 1, 0, b"a");
    b.route(cli, h, p);
    b.service_starting("bgp", false);
    assert_eq!(b.queues()[0].depth, 1, "stateful keeps everything");
    b.service_starting("bgp", true);
    assert_eq!(b.queues()[0].depth, 0);
}

#[test]
fn queue_limits_give_the_sender_a_clear_error() {
    let mut b = broker();
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op.clone());
    for i in 0..4 {
        let (h, p) = msg(mts::sap::CLI, 100, i, 0, b"z");
        b.route(cli, h, p);
    }
    let f = frames(&op);
    assert_eq!(f.len(), 1);
    assert!(f[0].0.flags.has(Flags::ERROR));
    assert_eq!(f[0].0.reply_to, 3);
    assert!(
        String::from_utf8_lossy(&f[0].1)
            .contains("queue of SAP bgp (100) is full: 3 messages (limit 3)")
    );
    let (h, p) = msg(mts::sap::CLI, 101, 9, 0, &[0u8; 1001]);
    b.route(cli, h, p);
    assert!(String::from_utf8_lossy(&frames(&op)[0].1).contains("exceeds the limit of 1000 bytes"));
}

#[test]
fn services_cannot_bind_or_send_as_another_service() {
    let mut b = broker();
    let (fib, fo) = service(&mut b, "fib");
    assert!(
        b.bind(fib, "bgp")
            .expect_err("not its SAP")
            .contains("not declared by service \"fib\"")
    );
    let (h, p) = msg(100, 101, 1, 0, b"spoof");
    b.route(fib, h, p);
    let f = frames(&fo);
    assert!(f[0].0.flags.has(Flags::ERROR));
    assert!(String::from_utf8_lossy(&f[0].1).contains("has not bound SAP 100"));
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op);
    assert!(
        b.bind(cli, "bgp").is_err(),
        "operators do not bind service SAPs"
    );
}

#[test]
fn request_response_is_routed_back_with_the_requester_id() {
    let mut b = broker();
    let (bgp, bo) = service(&mut b, "bgp");
    b.bind(bgp, "bgp").expect("bind");
    let op = Arc::new(Outbox::default());
    let (cli, eph) = b.connect(Identity::Operator, op.clone());
    let (h, p) = msg(mts::sap::CLI, 100, 42, Flags::REQUEST, b"q");
    b.route(cli, h, p);
    let (rq, _) = frames(&bo).remove(0);
    assert_eq!(
        rq.src_sap, eph,
        "the broker substitutes the connection's reply SAP"
    );
    assert!(rq.flags.has(Flags::REQUEST));
    let resp = mts::Frame::response_to(&rq, 5, b"answer".to_vec());
    b.route(bgp, resp.header, resp.payload);
    let f = frames(&op);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0.reply_to, 42);
    assert_eq!(f[0].1, b"answer");
}

#[test]
fn notifications_go_to_every_subscriber() {
    let mut b = broker();
    let (bgp, bo) = service(&mut b, "bgp");
    b.bind(bgp, "bgp").expect("bind");
    let (fib, fo) = service(&mut b, "fib");
    b.bind(fib, "fib").expect("bind");
    let sub = mts::codec::encode(&mts::proto::Subscribe {
        sap: 101,
        opcode: 7,
    })
    .expect("enc");
    let h = Header {
        flags: Flags(0),
        len: 0,
        src_sap: 101,
        dst_sap: mts::sap::BROKER,
        opcode: mts::proto::OP_SUBSCRIBE,
        msg_id: 1,
        reply_to: 0,
    };
    b.route(fib, h, sub);
    assert_eq!(frames(&fo).len(), 1, "subscribe answered");
    let (h, p) = msg(100, mts::sap::BROADCAST, 2, 0, b"event");
    b.route(bgp, h, p);
    let f = frames(&fo);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].1, b"event");
    assert!(frames(&bo).is_empty(), "bgp did not subscribe");
}

#[test]
fn a_slow_receiver_fills_its_queue_not_sysmgr_memory() {
    let mut b = Broker::new(
        Limits {
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
        },
        None,
    );
    b.set_saps(&[("bgp".into(), 100, "bgp".into())]);
    let (bgp, bo) = service(&mut b, "bgp");
    b.bind(bgp, "bgp").expect("bind");
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op);
    let body = vec![0u8; 64 * 1024];
    for i in 0..200 {
        let (h, p) = msg(mts::sap::CLI, 100, i, 0, &body);
        b.route(cli, h, p);
    }
    // Nobody writes bo out: delivery stopped at the high-water mark, the rest waits in the queue.
    assert!(bo.pending_bytes() < outbox::HIGH_WATER + 2 * body.len());
    let q = b.queues()[0].clone();
    assert!(q.depth > 100, "{q:?}");
    // The writer drains and resumes delivery.
    let n = frames(&bo).len();
    assert!(bo.take_throttled());
    b.resume(bgp);
    assert!(frames(&bo).len() + n > n);
}

/// A persistent message's CONFIRM waits for the flush; a supervisor fenced meanwhile does not
/// confirm (as a PSS `durable` write is not acknowledged), so the sender sends it again to
/// the new active; and while fenced it takes no new persistent message (as PSS takes no write).
#[test]
fn a_fenced_supervisor_neither_confirms_nor_takes_persistent_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ::pss::Store::open(dir.path()).expect("store");
    let fenced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = fenced.clone();
    store.set_write_gate(move || {
        if f.load(std::sync::atomic::Ordering::SeqCst) {
            Err("fenced: another supervisor may be active".into())
        } else {
            Ok(())
        }
    });
    let qs = QueueStore::open(&store, crate::flusher::Flusher::start(&store)).expect("queues");
    let answer = |seq: u64| {
        let (h, body) = msg(7, 100, seq, Flags::PERSISTENT | Flags::CONFIRM, b"x");
        qs.put(
            &Msg {
                seq,
                src_sap: 7,
                dst_sap: 100,
                opcode: 1,
                flags: h.flags.0,
                payload: body,
                crashes: 0,
                redelivered: false,
                enqueued_ms: 0,
            },
            true,
        )
        .expect("put");
        let out = Arc::new(Outbox::default());
        qs.confirm_when_flushed(&h, out.clone());
        let t0 = std::time::Instant::now();
        loop {
            let f = frames(&out);
            if let Some((h, body)) = f.into_iter().next() {
                return (h, String::from_utf8_lossy(&body).into_owned());
            }
            assert!(t0.elapsed().as_secs() < 10, "no confirmation");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let (h, _) = answer(1);
    assert!(
        h.flags.has(Flags::RESPONSE) && !h.flags.has(Flags::ERROR),
        "confirmed"
    );
    fenced.store(true, std::sync::atomic::Ordering::SeqCst);
    let (h, why) = answer(2);
    assert!(h.flags.has(Flags::ERROR), "not confirmed once fenced");
    assert!(why.contains("not confirmed: fenced"), "{why}");

    // And the broker takes no new persistent message while fenced (a plain one still goes).
    let mut b = Broker::new(
        Limits {
            max_messages: 10,
            max_bytes: 10_000,
        },
        Some(qs.clone()),
    );
    b.set_saps(&[("fib".into(), 101, "fib".into())]);
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op.clone());
    let (h, p) = msg(mts::sap::CLI, 101, 1, Flags::PERSISTENT, b"p");
    b.route(cli, h, p);
    let f = frames(&op);
    assert_eq!(f.len(), 1, "an answer to the sender");
    assert!(f[0].0.flags.has(Flags::ERROR));
    let why = String::from_utf8_lossy(&f[0].1);
    assert!(why.contains("persistent message refused: fenced"), "{why}");
    let (h, p) = msg(mts::sap::CLI, 101, 2, 0, b"plain");
    b.route(cli, h, p);
    assert!(frames(&op).is_empty(), "no error for a plain message");
    assert_eq!(b.queues()[0].depth, 1, "only the plain one is queued");
    fenced.store(false, std::sync::atomic::Ordering::SeqCst);
    let (h, p) = msg(mts::sap::CLI, 101, 3, Flags::PERSISTENT, b"p");
    b.route(cli, h, p);
    assert!(frames(&op).is_empty(), "taken again once unfenced");
    assert_eq!(b.queues()[0].depth, 2);
}

/// After a takeover, what the old active stored (copied into this supervisor's database while it
/// was the standby) is queued, delivered in order before anything newer, and removed from the
/// database once delivered; new messages get ids above the copied ones.
#[test]
fn a_new_active_delivers_what_the_old_one_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ::pss::Store::open(dir.path()).expect("store");
    let qs = QueueStore::open(&store, crate::flusher::Flusher::start(&store)).expect("queues");
    let mut b = Broker::new(
        Limits {
            max_messages: 100,
            max_bytes: 100_000,
        },
        Some(qs.clone()),
    );
    b.set_saps(&[("bgp".into(), 100, "bgp".into())]);
    // The replication link writes the old active's segment (ids from its own counter).
    let far = 1u64 << 40;
    let old: Vec<Msg> = (0..3u64)
        .map(|i| Msg {
            seq: far + i,
            src_sap: 7,
            dst_sap: 100,
            opcode: 7,
            flags: Flags::PERSISTENT,
            payload: vec![b'a' + i as u8],
            crashes: 0,
            redelivered: false,
            enqueued_ms: 0,
        })
        .collect();
    let seg = store.tree("mts/segments").expect("tree");
    seg.insert(
        super::writer::key(100, far),
        mts::codec::encode(&old).expect("encode"),
    )
    .expect("insert");
    assert_eq!(b.queues()[0].depth, 0, "the standby's broker did not know");
    // What it had loaded at its own boot, older than the copy (delivered by the old active).
    let mut stale = old[0].clone();
    stale.seq = 5;
    if let Some(s) = b.saps.get_mut(&100) {
        s.queue.push_back(stale);
    }
    b.take_over_queues();
    assert_eq!(b.queues()[0].depth, 3);
    let op = Arc::new(Outbox::default());
    let (cli, _) = b.connect(Identity::Operator, op);
    let (h, p) = msg(mts::sap::CLI, 100, 1, Flags::PERSISTENT, b"new");
    b.route(cli, h, p);
    let (bgp, bo) = service(&mut b, "bgp");
    b.bind(bgp, "bgp").expect("bind");
    let f = frames(&bo);
    let got: Vec<&[u8]> = f.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(got, [&b"a"[..], b"b", b"c", b"new"]);
    assert!(f[3].0.msg_id > far + 2, "a new id above the copied ones");
    // Delivered (no ack asked): gone from the database too, through the writer's index.
    assert!(qs.load(100).is_empty());
    assert!(seg.is_empty(), "the old active's segment was deleted");
}
