//! A PSS request thread's loop: the requests the broker hands it, and the connections it reads
//! itself.
//!
//! A service's client may ask (`OP_PSS_DIRECT`) that the rest of its connection be read by
//! the request thread of its service, the one that serves all of that service's requests: a
//! request then wakes one thread of sysmgr, not the broker's and then this one. The thread
//! sleeps in `epoll_wait` on those connections and on a doorbell the broker rings when it
//! queues a request while the thread sleeps. Each service's requests still go through one
//! thread, in the order each connection sent them.
//!
//! After answering a request itself, the thread can poll for the next one (`pss-poll-us`, off
//! by default) before it sleeps: a writer that sends its next write as soon as it has its
//! answer then finds the thread awake, and a write costs one wake-up (the writer's), not two.
//! On a VM whose idle vCPUs halt, each wake-up of a halted vCPU costs tens of µs. The thread
//! stops polling when it sees gaps longer than the poll, so a service that writes now and then
//! costs it one poll, not one per write.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use mts::frame::{DEFAULT_MAX_PAYLOAD, Flags, Frame, HEADER_LEN, Header, next_frame};
use mts::sap;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{MsgFlags, recv};
use pss::proto::OP_PSS;
use pss::server::Server;
use tokio::sync::oneshot;

use super::Outbox;
use super::pss::{Held, Job, serve_request};

/// A request thread's doorbell: rung by whoever queues a job while the thread sleeps.
pub(super) struct Bell {
    fd: EventFd,
    sleeping: AtomicBool,
}

impl Bell {
    pub(super) fn new() -> std::io::Result<Bell> {
        Ok(Bell {
            fd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            sleeping: AtomicBool::new(false),
        })
    }

    /// A job was queued: wake the thread if it sleeps (one write of the eventfd, not one per job).
    pub(super) fn ring(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.fd.write(1);
        }
    }
}

/// A connection handed to a request thread.
pub(super) struct Adopted {
    /// The `OP_PSS_DIRECT` request, answered by the thread before anything else.
    pub h: Header,
    /// A duplicate of the connection's socket (non-blocking).
    pub fd: OwnedFd,
    pub outbox: Arc<Outbox>,
    pub service: Option<String>,
    /// What the broker had read past the request.
    pub rest: Vec<u8>,
    /// Told when the thread is done with the connection (Err: why it closed it).
    pub done: oneshot::Sender<Result<(), String>>,
}

struct Conn {
    fd: OwnedFd,
    outbox: Arc<Outbox>,
    service: Option<String>,
    buf: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The thread's state: its connections (by epoll token - 1) and what serving needs.
struct Loop<'a> {
    server: &'a Server,
    commit: &'a Sender<Held>,
    epoll: Epoll,
    conns: Vec<Option<Conn>>,
    count: &'a AtomicUsize,
    chunk: Vec<u8>,
    /// A request on one of the thread's connections was answered by the thread itself since
    /// it last waited (a durable write's answer comes from the group commit instead).
    answered: bool,
}

/// Whether to poll before sleeping, and for how long: a caller that writes again as soon as
/// it has its answer finds the thread awake. It polls only after answering a request itself,
/// and only while the idle gaps it sees are shorter than the poll: a service that writes now
/// and then costs it one poll, after which it sleeps at once until a gap is short again.
struct Poll {
    budget: Duration,
    /// The last idle gap (from the end of a pass to the next event) was within the budget.
    short: bool,
    /// Waits that polled.
    #[cfg(test)]
    polls: u32,
}

impl Poll {
    fn new(budget: Duration) -> Poll {
        Poll {
            budget,
            short: true,
            #[cfg(test)]
            polls: 0,
        }
    }

    /// Wait for events: first by polling (when `answered` and gaps are short), then asleep.
    fn wait(
        &mut self,
        epoll: &Epoll,
        events: &mut [EpollEvent],
        answered: bool,
    ) -> Result<usize, Errno> {
        let idle = Instant::now();
        if answered && self.short && !self.budget.is_zero() {
            #[cfg(test)]
            {
                self.polls += 1;
            }
            while idle.elapsed() < self.budget {
                match epoll.wait(events, EpollTimeout::ZERO) {
                    Ok(0) => std::hint::spin_loop(),
                    r => {
                        self.short = true;
                        return r;
                    }
                }
            }
        }
        let r = epoll.wait(events, EpollTimeout::NONE);
        self.short = idle.elapsed() <= self.budget;
        r
    }
}

/// Run a request thread until the handle's senders are gone.
pub(super) fn run(
    server: &Server,
    commit: &Sender<Held>,
    jobs: &Receiver<Job>,
    bell: &Bell,
    count: &AtomicUsize,
    poll_budget: Duration,
) {
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).and_then(|e| {
        e.add(bell.fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map(|()| e)
    }) {
        Ok(e) => e,
        Err(e) => {
            // Without epoll the thread still serves the broker's requests (and refuses
            // connections of their own, below), waking on the channel.
            tracing::error!(error = %e, "PSS request thread without epoll");
            while let Ok(j) = jobs.recv() {
                match j {
                    Job::Request(r) => r.serve(server, commit),
                    Job::Adopt(a) => refuse(a, count, "PSS cannot watch this connection"),
                }
            }
            return;
        }
    };
    let mut l = Loop {
        server,
        commit,
        epoll,
        conns: Vec::new(),
        count,
        chunk: vec![0u8; 64 * 1024],
        answered: false,
    };
    let mut poll = Poll::new(poll_budget);
    let mut events = [EpollEvent::empty(); 32];
    loop {
        loop {
            match jobs.try_recv() {
                Ok(j) => l.job(j),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        bell.sleeping.store(true, Ordering::SeqCst);
        // A job queued before `sleeping` was set rang no bell: look once more. One queued
        // after it rings the bell, which ends a poll as it ends a sleep.
        match jobs.try_recv() {
            Ok(j) => {
                bell.sleeping.store(false, Ordering::SeqCst);
                l.job(j);
                continue;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return,
        }
        let r = poll.wait(&l.epoll, &mut events, std::mem::take(&mut l.answered));
        let n = match r {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                tracing::error!(error = %e, "epoll_wait in a PSS request thread");
                std::thread::sleep(Duration::from_millis(10));
                0
            }
        };
        bell.sleeping.store(false, Ordering::SeqCst);
        for ev in &events[..n] {
            match ev.data() {
                0 => {
                    let _ = bell.fd.read();
                }
                t => l.readable(t as usize - 1),
            }
        }
    }
}

/// A connection this thread cannot watch: answered so, and closed.
fn refuse(a: Adopted, count: &AtomicUsize, why: &str) {
    count.fetch_sub(1, Ordering::SeqCst);
    let f = Frame::error_to(&a.h, 0, why);
    a.outbox.push_now(&f.header, &f.payload);
    let _ = a.done.send(Err(format!("closing a PSS connection: {why}")));
}

impl Loop<'_> {
    fn job(&mut self, j: Job) {
        match j {
            Job::Request(r) => r.serve(self.server, self.commit),
            Job::Adopt(a) => self.adopt(a),
        }
    }

    fn adopt(&mut self, a: Adopted) {
        let slot = self
            .conns
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
        let ev = EpollEvent::new(EpollFlags::EPOLLIN, slot as u64 + 1);
        if let Err(e) = self.epoll.add(a.fd.as_fd(), ev) {
            tracing::error!(error = %e, "PSS cannot watch a connection");
            return refuse(a, self.count, "PSS cannot watch this connection");
        }
        // Answered first: every answer after it comes from this thread (or the group commit).
        let ok = Frame::response_to(&a.h, 0, Vec::new());
        a.outbox.push_now(&ok.header, &ok.payload);
        self.conns[slot] = Some(Conn {
            fd: a.fd,
            outbox: a.outbox,
            service: a.service,
            buf: a.rest,
            done: a.done,
        });
        self.serve(slot);
    }

    fn readable(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match recv(c.fd.as_raw_fd(), &mut self.chunk, MsgFlags::empty()) {
            Ok(0) if c.buf.is_empty() => self.close(slot, Ok(())),
            Ok(0) => {
                let why = format!(
                    "closing a PSS connection: stream ended inside a frame ({} bytes)",
                    c.buf.len()
                );
                self.close(slot, Err(why));
            }
            Ok(n) => {
                c.buf.extend_from_slice(&self.chunk[..n]);
                self.serve(slot);
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => self.close(slot, Err(format!("read: {e}"))),
        }
    }

    /// Serve the whole frames read on a connection; a frame that does not decode closes it.
    fn serve(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut at = 0;
        let mut bad = None;
        loop {
            let (h, payload) = match next_frame(&c.buf[at..], DEFAULT_MAX_PAYLOAD) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    bad = Some(format!("closing a PSS connection: {e}"));
                    break;
                }
            };
            at += HEADER_LEN + payload.len();
            if h.flags.has(Flags::RESPONSE) {
                // Nothing on this connection asked for one.
            } else if h.dst_sap == sap::PSS && h.opcode == OP_PSS {
                self.answered |= serve_request(
                    self.server,
                    self.commit,
                    &h,
                    payload,
                    c.service.as_deref(),
                    &c.outbox,
                );
            } else {
                let f = Frame::error_to(&h, 0, "this connection carries PSS requests only");
                c.outbox.push_now(&f.header, &f.payload);
            }
        }
        c.buf.drain(..at);
        if let Some(why) = bad {
            self.close(slot, Err(why));
        }
    }

    fn close(&mut self, slot: usize, r: Result<(), String>) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.epoll.delete(c.fd.as_fd());
            self.count.fetch_sub(1, Ordering::SeqCst);
            let _ = c.done.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use mts::frame::{Frame, HEADER_LEN, Header};
    use pss::proto::{Durability, OP_PSS, OP_PSS_DIRECT, Op, Request, Response, Scope};

    use super::super::pss::PssHandle;
    use super::super::{Identity, Outbox};

    #[test]
    fn the_thread_polls_after_an_answer_only_while_the_gaps_are_shorter_than_the_poll() {
        use std::io::Read;
        use std::os::fd::AsFd;
        use std::time::Duration;

        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

        use super::Poll;
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
        epoll
            .add(b.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
            .expect("add");
        let mut events = [EpollEvent::empty(); 4];
        let mut poll = Poll::new(Duration::from_millis(20));
        let take = |b: &mut UnixStream| {
            let mut x = [0u8; 1];
            b.read_exact(&mut x).expect("read");
        };
        // Nothing was answered: no poll.
        a.write_all(b"1").expect("write");
        assert_eq!(poll.wait(&epoll, &mut events, false), Ok(1));
        assert_eq!(poll.polls, 0);
        take(&mut b);
        // Answered, and the next request is already there: the poll finds it.
        a.write_all(b"2").expect("write");
        assert_eq!(poll.wait(&epoll, &mut events, true), Ok(1));
        assert_eq!(poll.polls, 1);
        assert!(poll.short);
        take(&mut b);
        // The next one comes long after the poll gave up: a long gap...
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            a.write_all(b"3").expect("write");
            a
        });
        assert_eq!(poll.wait(&epoll, &mut events, true), Ok(1));
        assert_eq!(poll.polls, 2);
        assert!(!poll.short, "a 200 ms gap is longer than a 20 ms poll");
        take(&mut b);
        let mut a = late.join().expect("writer");
        // ...so the wait after the next answer sleeps at once, and measures a short gap...
        a.write_all(b"4").expect("write");
        assert_eq!(poll.wait(&epoll, &mut events, true), Ok(1));
        assert_eq!(poll.polls, 2, "no poll after a long gap");
        assert!(poll.short);
        take(&mut b);
        // ...after which it polls again.
        a.write_all(b"5").expect("write");
        assert_eq!(poll.wait(&epoll, &mut events, true), Ok(1));
        assert_eq!(poll.polls, 3);
    }

    fn read_frame(s: &mut UnixStream) -> Frame {
        mts::io::read_frame(s, 1 << 20).expect("a frame")
    }

    fn put(id: u64, key: &str, durability: Durability) -> Vec<u8> {
        let req = Request::Write {
            scope: Scope::Private,
            ops: vec![Op::Put {
                key: key.as_bytes().to_vec(),
                value: b"v".to_vec(),
            }],
            durability,
        };
        let body = mts::codec::encode(&req).expect("encode");
        Frame::request(mts::sap::CLI, mts::sap::PSS, OP_PSS, id, body).to_bytes()
    }

    fn answer(f: Frame) -> Response {
        mts::codec::decode(&f.into_result().expect("not an error")).expect("a response")
    }

    #[test]
    fn a_connection_read_by_its_request_thread_is_served_in_order_and_closed_on_a_bad_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = pss::Store::open(dir.path()).expect("store");
        let handle = PssHandle::start(
            pss::server::Server::new(&store).expect("server"),
            std::time::Duration::from_micros(50),
        );
        let (ours, mut client) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let outbox = std::sync::Arc::new(Outbox::new(&ours));
        let ask = Frame::request(mts::sap::CLI, mts::sap::PSS, OP_PSS_DIRECT, 1, Vec::new());
        // A request the broker read past the hand-over is served first, after the answer.
        let done = handle
            .direct(
                &ask.header,
                &Identity::Service("svc".into()),
                &outbox,
                put(2, "a", Durability::Fast),
            )
            .expect("handed over");
        let ok = read_frame(&mut client);
        assert_eq!(ok.header.reply_to, 1);
        assert_eq!(ok.into_result().expect("accepted"), Vec::<u8>::new());
        let a = read_frame(&mut client);
        assert_eq!(a.header.reply_to, 2);
        assert_eq!(answer(a), Response::Written { seq: 1 });

        // Then what the client writes: a durable write (answered after the group commit), a
        // request for another SAP (refused), and a read of what was written.
        client
            .write_all(&put(3, "b", Durability::Durable))
            .expect("write");
        let elsewhere = Frame::request(mts::sap::CLI, 99, 1, 4, b"x".to_vec());
        client.write_all(&elsewhere.to_bytes()).expect("write");
        let get = mts::codec::encode(&Request::Get {
            service: None,
            scope: Scope::Private,
            key: b"b".to_vec(),
        })
        .expect("encode");
        let get = Frame::request(mts::sap::CLI, mts::sap::PSS, OP_PSS, 5, get);
        client.write_all(&get.to_bytes()).expect("write");
        let mut answers = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let f = read_frame(&mut client);
            answers.insert(f.header.reply_to, f);
        }
        assert_eq!(
            answer(answers.remove(&3).expect("3")),
            Response::Written { seq: 2 }
        );
        let e = answers.remove(&4).expect("4").into_result();
        assert!(matches!(e, Err(mts::MtsError::Remote(r)) if r.contains("PSS requests only")));
        assert_eq!(
            answer(answers.remove(&5).expect("5")),
            Response::Value(Some(b"v".to_vec()))
        );
        assert_eq!(
            pss::server::Server::new(&store)
                .expect("server")
                .last("svc")
                .0,
            2
        );

        // A frame that does not decode ends it, with the reason.
        client.write_all(&[0xEE; HEADER_LEN]).expect("write");
        let r = done.blocking_recv().expect("the thread answers");
        assert!(matches!(r, Err(why) if why.contains("closing a PSS connection")));

        // The request thread goes on serving the broker's requests.
        let (ours2, mut client2) = UnixStream::pair().expect("pair");
        let outbox2 = std::sync::Arc::new(Outbox::new(&ours2));
        let body = put(6, "c", Durability::Fast);
        let h = Header::decode(&body[..HEADER_LEN].try_into().expect("header"), 1 << 20)
            .expect("decodes");
        handle.request(
            &h,
            &body[HEADER_LEN..],
            &Identity::Service("svc".into()),
            &outbox2,
        );
        assert_eq!(
            answer(read_frame(&mut client2)),
            Response::Written { seq: 3 }
        );
    }
}
