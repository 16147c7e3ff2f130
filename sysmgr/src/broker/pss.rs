//! SAP `pss`: requests are served on a thread of their own, in the order they arrive (so one
//! connection's requests keep their order), and answered on the connection that sent them; a
//! large checkpoint never stalls the broker. `durable` writes are acknowledged after a group
//! commit (every writer waiting at that moment shares one flush).

use std::sync::Arc;

use mts::frame::{Frame, Header};
use pss::proto::{Durability, Request, Response};
use pss::server::{Caller, Server};
use tokio::sync::{mpsc, oneshot};

use super::{Identity, Outbox};

type Waiter = oneshot::Sender<Result<(), String>>;

/// One request for the PSS thread.
struct Job {
    h: Header,
    payload: Vec<u8>,
    /// The caller's service, or None for an operator.
    service: Option<String>,
    outbox: Arc<Outbox>,
}

/// The PSS server, its request thread and its group-commit flusher.
#[derive(Clone)]
pub struct PssHandle {
    pub server: Server,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl PssHandle {
    /// Start the flusher task (inside the runtime) and the request thread.
    pub fn start(server: Server) -> PssHandle {
        let (commit, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let flusher = server.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let s = flusher.clone();
                let r = match tokio::task::spawn_blocking(move || s.flush()).await {
                    Ok(Ok(pss::Replicated::GaveUp)) => {
                        super::store::standby_gave_up();
                        Ok(())
                    }
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        });
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let worker = server.clone();
        let rt = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("pss".into())
            .spawn(move || {
                while let Ok(j) = job_rx.recv() {
                    serve(&worker, &commit, &rt, j);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the PSS thread");
        }
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
        if let Err(e) = self.jobs.send(job) {
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

/// Serve one request (on the PSS thread).
fn serve(
    server: &Server,
    commit: &mpsc::UnboundedSender<Waiter>,
    rt: &tokio::runtime::Handle,
    j: Job,
) {
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
            return outbox.push(&f.header, &f.payload);
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
    if durable && matches!(res, Ok(Response::Written { .. })) {
        let (tx, rx) = oneshot::channel();
        if commit.send(tx).is_ok() {
            rt.spawn(async move {
                let f = match rx.await {
                    Ok(Ok(())) => encode_reply(&h, res),
                    Ok(Err(e)) => Frame::error_to(&h, 0, &format!("flush failed: {e}")),
                    Err(_) => Frame::error_to(&h, 0, "flush failed: sysmgr is stopping"),
                };
                outbox.push(&f.header, &f.payload);
            });
            return;
        }
    }
    let f = encode_reply(&h, res);
    outbox.push(&f.header, &f.payload);
}
