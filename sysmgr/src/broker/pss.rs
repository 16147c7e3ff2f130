//! SAP `pss`: requests are answered on the connection that sent them; `durable` writes are
//! acknowledged after a group commit (every writer waiting at that moment shares one flush).

use std::sync::Arc;

use mts::frame::{Frame, Header};
use pss::proto::{Durability, Request, Response};
use pss::server::{Caller, Server};
use tokio::sync::{mpsc, oneshot};

use super::{Identity, Outbox};

type Waiter = oneshot::Sender<Result<(), String>>;

/// The PSS server and its group-commit flusher.
#[derive(Clone)]
pub struct PssHandle {
    pub server: Server,
    commit: mpsc::UnboundedSender<Waiter>,
}

impl PssHandle {
    /// Start the flusher task (inside the runtime).
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
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        });
        PssHandle { server, commit }
    }

    /// Handle one request from a connection and answer into its outbox.
    pub fn request(&self, h: &Header, payload: &[u8], identity: &Identity, outbox: &Arc<Outbox>) {
        let reply = |r: Result<Response, String>| match r
            .and_then(|resp| mts::codec::encode(&resp).map_err(|e| e.to_string()))
        {
            Ok(b) => Frame::response_to(h, 0, b),
            Err(e) => Frame::error_to(h, 0, &e),
        };
        let caller = match identity {
            Identity::Service(s) => Caller::Service(s),
            Identity::Operator => Caller::Operator,
            Identity::Refused(r) => {
                let f = Frame::error_to(h, 0, r);
                return outbox.push(&f.header, &f.payload);
            }
        };
        let req: Request = match mts::codec::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                let f = Frame::error_to(h, 0, &format!("malformed PSS request: {e}"));
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
        let res = self.server.handle(caller, req).map_err(|e| e.to_string());
        if durable && matches!(res, Ok(Response::Written { .. })) {
            let (tx, rx) = oneshot::channel();
            if self.commit.send(tx).is_ok() {
                let (out, h) = (outbox.clone(), *h);
                tokio::spawn(async move {
                    let f = match rx.await {
                        Ok(Ok(())) => match res
                            .and_then(|r| mts::codec::encode(&r).map_err(|e| e.to_string()))
                        {
                            Ok(b) => Frame::response_to(&h, 0, b),
                            Err(e) => Frame::error_to(&h, 0, &e),
                        },
                        Ok(Err(e)) => Frame::error_to(&h, 0, &format!("flush failed: {e}")),
                        Err(_) => Frame::error_to(&h, 0, "flush failed: sysmgr is stopping"),
                    };
                    out.push(&f.header, &f.payload);
                });
                return;
            }
        }
        let f = reply(res);
        outbox.push(&f.header, &f.payload);
    }
}
