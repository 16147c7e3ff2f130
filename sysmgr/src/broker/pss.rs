//! SAP `pss`: requests are served on threads of their own (each service's on one of them, in
//! the order they arrive), and answered on the connection that sent them; a large checkpoint
//! never stalls the broker, and two services' writes overlap inside sled. A connection may be
//! handed to its service's request thread, which then reads it itself (`pss_conn.rs`).
//! `durable` writes are acknowledged by a flusher thread after a group commit (every writer
//! waiting at that moment shares one sync of the write-ahead log, `pss/src/wal.rs`); a
//! checkpoint thread starts the log afresh when it is a quarter full or a second old. These
//! threads write their answers straight into the caller's socket when it is free.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use mts::frame::{Frame, Header};
use pss::proto::{Durability, Request, Response};
use pss::server::{Caller, Server};
use tokio::sync::oneshot;

use super::pss_conn::{Adopted, Bell};
use super::{Identity, Outbox};

/// Work for a PSS request thread.
pub(super) enum Job {
    Request(Req),
    /// A connection for the thread to read itself.
    Adopt(Adopted),
}

/// One request the broker read.
pub(super) struct Req {
    h: Header,
    payload: Vec<u8>,
    /// The caller's service, or None for an operator.
    service: Option<String>,
    outbox: Arc<Outbox>,
}

impl Req {
    pub(super) fn serve(self, server: &Server, commit: &Sender<Held>) {
        let Req {
            h,
            payload,
            service,
            outbox,
        } = self;
        serve_request(server, commit, &h, &payload, service.as_deref(), &outbox);
    }
}

/// A durable write applied, its answer held until the next flush.
pub(super) struct Held {
    h: Header,
    answer: Response,
    outbox: Arc<Outbox>,
}

/// The checkpoint thread waits for the write-ahead log to want one (it is woken by the log);
/// after a failed checkpoint it waits this long before the next try.
const CHECKPOINT_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Request threads: a 4 KB write spends tens of µs inside sled, so two services' writes
/// overlap on two CPUs.
const WORKERS: usize = 2;

/// At most this many connections are read by the request threads themselves; more stay with
/// the broker (a service needs one, and there are a few dozen services at most).
const DIRECT_MAX: usize = 64;

/// The request thread of a service: always the same one, so its requests are answered in the
/// order it sent them, and its keys (which only it writes) are written and streamed to the
/// standby in that order too. Operators' requests (reads) go to the first.
fn worker(service: Option<&str>, workers: usize) -> usize {
    let h = service.map_or(0, |s| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    });
    (h % workers as u64) as usize
}

/// A request thread: its queue and its doorbell.
#[derive(Clone)]
struct Worker {
    jobs: Sender<Job>,
    bell: Arc<Bell>,
}

/// The PSS server, its request threads and its group-commit flusher thread.
#[derive(Clone)]
pub struct PssHandle {
    pub server: Server,
    workers: Vec<Worker>,
    /// Connections read by the request threads now.
    direct: Arc<AtomicUsize>,
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        tracing::error!(error = %e, thread = name, "cannot start a PSS thread");
    }
}

impl PssHandle {
    /// Start the request threads and the flusher thread. A request thread polls `poll` for
    /// the next request after answering one before it sleeps (`pss_conn.rs`).
    pub fn start(server: Server, poll: std::time::Duration) -> PssHandle {
        let (commit, held) = channel::<Held>();
        let flusher = server.clone();
        thread("pss-flush", move || group_commit(&flusher, &held));
        let checkpointer = server.clone();
        thread("pss-checkpoint", move || {
            loop {
                let wait = std::time::Duration::from_secs(3600);
                if let Err(e) = checkpointer.checkpoint_when_wanted(wait) {
                    tracing::error!(error = %e, "PSS write-ahead log checkpoint failed");
                    std::thread::sleep(CHECKPOINT_RETRY);
                }
            }
        });
        let direct = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let bell = match Bell::new() {
                Ok(b) => Arc::new(b),
                Err(e) => {
                    tracing::error!(error = %e, "cannot make a PSS request thread's doorbell");
                    continue;
                }
            };
            let (jobs, job_rx) = channel::<Job>();
            let (server, commit, b, count) =
                (server.clone(), commit.clone(), bell.clone(), direct.clone());
            thread("pss", move || {
                super::pss_conn::run(&server, &commit, &job_rx, &b, &count, poll);
            });
            workers.push(Worker { jobs, bell });
        }
        PssHandle {
            server,
            workers,
            direct,
        }
    }

    /// Queue a job for the request thread of `service`; gives it back if there is none.
    fn send(&self, service: Option<&str>, job: Job) -> Result<(), Job> {
        let Some(w) = self.workers.get(worker(service, self.workers.len().max(1))) else {
            return Err(job);
        };
        w.jobs.send(job).map_err(|e| e.0)?;
        w.bell.ring();
        Ok(())
    }

    /// Take one request from a connection; the answer goes into its outbox.
    pub fn request(&self, h: &Header, payload: &[u8], identity: &Identity, outbox: &Arc<Outbox>) {
        let service = match identity {
            Identity::Service(s) => Some(s.as_str()),
            Identity::Operator => None,
            Identity::Refused(r) => {
                let f = Frame::error_to(h, 0, r);
                return outbox.push(&f.header, &f.payload);
            }
        };
        let job = Job::Request(Req {
            h: *h,
            payload: payload.to_vec(),
            service: service.map(str::to_string),
            outbox: outbox.clone(),
        });
        if self.send(service, job).is_err() {
            let f = Frame::error_to(h, 0, "PSS is not running");
            outbox.push(&f.header, &f.payload);
        }
    }

    /// `OP_PSS_DIRECT`: hand the rest of this connection to its service's request thread,
    /// which reads it itself (`rest`: what the broker read past the request). Returns what
    /// resolves when that thread is done with it (Err: why it closed it); or None, refused
    /// and answered so, and the broker goes on reading the connection.
    pub fn direct(
        &self,
        h: &Header,
        identity: &Identity,
        outbox: &Arc<Outbox>,
        rest: Vec<u8>,
    ) -> Option<oneshot::Receiver<Result<(), String>>> {
        let refuse = |why: &str| {
            let f = Frame::error_to(h, 0, why);
            outbox.push(&f.header, &f.payload);
            None
        };
        let service = match identity {
            Identity::Service(s) => Some(s.clone()),
            Identity::Operator => None,
            Identity::Refused(r) => return refuse(r),
        };
        let Some(fd) = outbox.dup_socket() else {
            return refuse("PSS cannot read this connection");
        };
        if self.direct.fetch_add(1, Ordering::SeqCst) >= DIRECT_MAX {
            self.direct.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                ?service,
                "PSS request threads already read {DIRECT_MAX} connections; this one stays with the broker"
            );
            return refuse("too many connections read by PSS itself");
        }
        let (done, rx) = oneshot::channel();
        let job = Job::Adopt(Adopted {
            h: *h,
            fd,
            outbox: outbox.clone(),
            service: service.clone(),
            rest,
            done,
        });
        if self.send(service.as_deref(), job).is_err() {
            self.direct.fetch_sub(1, Ordering::SeqCst);
            return refuse("PSS is not running");
        }
        Some(rx)
    }
}

fn encode_reply(h: &Header, r: Result<Response, String>) -> Frame {
    match r.and_then(|resp| mts::codec::encode(&resp).map_err(|e| e.to_string())) {
        Ok(b) => Frame::response_to(h, 0, b),
        Err(e) => Frame::error_to(h, 0, &e),
    }
}

/// The flusher thread: one flush for every write waiting when it starts, then their answers.
fn group_commit(server: &Server, held: &Receiver<Held>) {
    let flush = || match server.flush() {
        Ok(pss::Replicated::GaveUp) => {
            super::store::standby_gave_up();
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("flush failed: {e}")),
    };
    crate::flusher::group_commit(held, flush, |Held { h, answer, outbox }, r| {
        let f = match r {
            Ok(()) => encode_reply(&h, Ok(answer)),
            Err(e) => Frame::error_to(&h, 0, e),
        };
        outbox.push_now(&f.header, &f.payload);
    });
}

/// Decode, handle and answer one request (on a PSS request thread); a durable write's answer
/// waits for the group commit. Returns whether it was answered now.
pub(super) fn serve_request(
    server: &Server,
    commit: &Sender<Held>,
    h: &Header,
    payload: &[u8],
    service: Option<&str>,
    outbox: &Arc<Outbox>,
) -> bool {
    let caller = match service {
        Some(s) => Caller::Service(s),
        None => Caller::Operator,
    };
    let req: Request = match mts::codec::decode(payload) {
        Ok(r) => r,
        Err(e) => {
            let f = Frame::error_to(h, 0, &format!("malformed PSS request: {e}"));
            outbox.push_now(&f.header, &f.payload);
            return true;
        }
    };
    let durable = matches!(
        req,
        Request::Write {
            durability: Durability::Durable,
            ..
        }
    );
    let res = server.handle(caller, req).map_err(|e| e.to_string());
    if durable && let Ok(answer @ Response::Written { .. }) = res {
        let held = Held {
            h: *h,
            answer,
            outbox: outbox.clone(),
        };
        if let Err(e) = commit.send(held) {
            let Held { h, outbox, .. } = e.0;
            let f = Frame::error_to(&h, 0, "flush failed: the PSS flusher is not running");
            outbox.push_now(&f.header, &f.payload);
            return true;
        }
        return false;
    }
    let f = encode_reply(h, res);
    outbox.push_now(&f.header, &f.payload);
    true
}
