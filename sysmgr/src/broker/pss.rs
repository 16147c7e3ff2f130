//! SAP `pss`: requests are served on threads of their own (each service's on one of them, in
//! the order they arrive), and answered on the connection that sent them; a large checkpoint
//! never stalls the broker, and two services' writes overlap inside sled. `durable` writes are
//! acknowledged by a flusher thread after a group commit (every writer waiting at that moment
//! shares one sync of the write-ahead log, `pss/src/wal.rs`); a checkpoint thread starts the
//! log afresh when it is a quarter full or a second old. These threads write their answers
//! straight into the caller's socket when it is free.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use mts::frame::{Frame, Header};
use pss::proto::{Durability, Request, Response};
use pss::server::{Caller, Server};

use super::{Identity, Outbox};

/// One request for a PSS thread.
struct Job {
    h: Header,
    payload: Vec<u8>,
    /// The caller's service, or None for an operator.
    service: Option<String>,
    outbox: Arc<Outbox>,
}

/// A durable write applied, its answer held until the next flush.
struct Held {
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

/// The PSS server, its request threads and its group-commit flusher thread.
#[derive(Clone)]
pub struct PssHandle {
    pub server: Server,
    jobs: Vec<Sender<Job>>,
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        tracing::error!(error = %e, thread = name, "cannot start a PSS thread");
    }
}

impl PssHandle {
    /// Start the request threads and the flusher thread.
    pub fn start(server: Server) -> PssHandle {
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
        let jobs = (0..WORKERS)
            .map(|_| {
                let (jobs, job_rx) = channel::<Job>();
                let (worker, commit) = (server.clone(), commit.clone());
                thread("pss", move || {
                    while let Ok(j) = job_rx.recv() {
                        serve(&worker, &commit, j);
                    }
                });
                jobs
            })
            .collect();
        PssHandle { server, jobs }
    }

    /// Take one request from a connection; the answer goes into its outbox.
    pub fn request(&self, h: &Header, payload: &[u8], identity: &Identity, outbox: &Arc<Outbox>) {
        let service = match identity {
            Identity::Service(s) => Some(s.clone()),
            Identity::Operator => None,
            Identity::Refused(r) => {
                let f = Frame::error_to(h, 0, r);
                return outbox.push(&f.header, &f.payload);
            }
        };
        let job = Job {
            h: *h,
            payload: payload.to_vec(),
            service,
            outbox: outbox.clone(),
        };
        if let Err(e) = self.jobs[worker(job.service.as_deref(), self.jobs.len())].send(job) {
            let f = Frame::error_to(h, 0, "PSS is not running");
            e.0.outbox.push(&f.header, &f.payload);
        }
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

/// Serve one request (on a PSS thread).
fn serve(server: &Server, commit: &Sender<Held>, j: Job) {
    let Job {
        h,
        payload,
        service,
        outbox,
    } = j;
    let caller = match &service {
        Some(s) => Caller::Service(s),
        None => Caller::Operator,
    };
    let req: Request = match mts::codec::decode(&payload) {
        Ok(r) => r,
        Err(e) => {
            let f = Frame::error_to(&h, 0, &format!("malformed PSS request: {e}"));
            return outbox.push_now(&f.header, &f.payload);
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
        let held = Held { h, answer, outbox };
        if let Err(e) = commit.send(held) {
            let Held { h, outbox, .. } = e.0;
            let f = Frame::error_to(&h, 0, "flush failed: the PSS flusher is not running");
            outbox.push_now(&f.header, &f.payload);
        }
        return;
    }
    let f = encode_reply(&h, res);
    outbox.push_now(&f.header, &f.payload);
}
