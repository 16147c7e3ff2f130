//! A blocking MTS client, for a service (or a thread of one) that runs without an async
//! runtime: each call does its reading and writing on the calling thread.
//!
//! ```no_run
//! # fn demo() -> Result<(), mts::MtsError> {
//! use std::time::Duration;
//! let mut c = mts::blocking::Client::connect_from_env()?;
//! let me = c.bind("bfd")?;                              // a SAP declared in bfd.toml
//! loop {
//!     let m = c.recv()?;                                // Err(Closed) when sysmgr goes away
//!     if m.is_request() {
//!         let text: String = m.decode()?;
//!         c.respond(&m, &text.len())?;                  // written at once
//!     }
//!     c.ack(&[m.id()]);                                 // written with the next call that waits
//! #   let _ = (me, Duration::ZERO);
//! }
//! # }
//! ```
//!
//! It speaks what [`crate::client::Client`] speaks, on a connection of its own. The
//! difference is the wake-ups: with the async client, a frame that arrives wakes a runtime
//! thread in `epoll_wait`, whose reader task then hands it to the task that waits for it; here
//! the thread that waits for it sleeps in `read(2)` on the socket and the frame wakes it
//! alone. Frames that need no answer (`send_nowait`, `ack`, `publish`) are gathered and
//! written with the next call that writes or waits, so a loop of them turns into large
//! writes. Bytes read are kept until they make a whole frame, so a deadline that runs out
//! leaves the connection usable; an answer that comes after its deadline arrives through
//! [`Client::recv`], as with the async client.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{BROKER_DEADLINE, Incoming, header, socket_from_env};
use crate::frame::{DEFAULT_MAX_PAYLOAD, Flags, Frame, HEADER_LEN, Header, next_frame};
use crate::{MtsError, codec, proto, sap};

/// What a read waits for.
enum Wait {
    /// A message for [`Client::recv`], until `Some(deadline)`.
    Message(Option<Instant>),
    /// The answer to the request with this id, until the deadline.
    Answer(u64, Instant),
}

/// A connection to sysmgr's MTS broker, used by one thread at a time.
pub struct Client {
    sock: UnixStream,
    /// Bytes read, `buf[start..end]` not yet taken as frames.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Frames not written yet (no one waits for them).
    out: Vec<u8>,
    next_id: u64,
    /// Messages read while waiting for an answer, for [`Client::recv`].
    incoming: VecDeque<Incoming>,
    /// The socket's receive timeout as last set (a `setsockopt` only when it changes).
    timeout: Option<Duration>,
}

impl Client {
    /// Connect to `SYSMGR_SOCKET` (set by sysmgr for every service).
    pub fn connect_from_env() -> Result<Client, MtsError> {
        Client::connect(&socket_from_env()?)
    }

    pub fn connect(path: &Path) -> Result<Client, MtsError> {
        Ok(Client {
            sock: UnixStream::connect(path)?,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            out: Vec::new(),
            next_id: 1,
            incoming: VecDeque::new(),
            timeout: None,
        })
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Append a frame to the bytes to write; its id is set here and returned.
    fn queue(&mut self, mut h: Header, payload: &[u8]) -> u64 {
        h.msg_id = self.id();
        h.len = payload.len() as u32;
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(payload);
        h.msg_id
    }

    /// Write every frame not written yet.
    pub fn flush(&mut self) -> Result<(), MtsError> {
        if !self.out.is_empty() {
            let r = self.sock.write_all(&self.out);
            self.out.clear();
            r?;
        }
        Ok(())
    }

    /// The next whole frame in the bytes read so far.
    fn take_frame(&mut self) -> Result<Option<Incoming>, MtsError> {
        let Some((h, payload)) = next_frame(&self.buf[self.start..self.end], DEFAULT_MAX_PAYLOAD)?
        else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.start += HEADER_LEN + payload.len();
        Ok(Some(Incoming { header: h, payload }))
    }

    /// Read more bytes, blocking until `until` (None: for as long as it takes). Ok(false) when
    /// the time ran out first.
    fn fill(&mut self, until: Option<Instant>) -> Result<bool, MtsError> {
        // Room for at least the frame being read (its header tells its size) and 16 KiB more.
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 && self.buf.len() - self.end < 16 * 1024 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let want = match self.buf[self.start..self.end].first_chunk::<HEADER_LEN>() {
            Some(h) => HEADER_LEN + Header::decode(h, DEFAULT_MAX_PAYLOAD)?.len as usize,
            None => HEADER_LEN,
        };
        let need = self.start + want.max(self.end - self.start + 16 * 1024);
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        loop {
            // The socket's timeout in whole milliseconds, so that requests with the same
            // deadline set it once; a read that wakes before the deadline reads again.
            let timeout = match until {
                None => None,
                Some(t) => match t.checked_duration_since(Instant::now()) {
                    Some(d) if !d.is_zero() => {
                        let ms = Duration::from_millis(d.as_millis() as u64);
                        Some(if ms.is_zero() { d } else { ms })
                    }
                    _ => return Ok(false),
                },
            };
            if timeout != self.timeout {
                self.sock.set_read_timeout(timeout)?;
                self.timeout = timeout;
            }
            match self.sock.read(&mut self.buf[self.end..]) {
                Ok(0) if self.start == self.end => return Err(MtsError::Closed),
                Ok(0) => {
                    return Err(MtsError::Truncated {
                        got: self.end - self.start,
                        want,
                    });
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Read until what `wait` waits for arrives; what else arrives meanwhile is kept for
    /// [`Client::recv`]. Ok(None) when the deadline passed first.
    fn read_until(&mut self, wait: Wait) -> Result<Option<Incoming>, MtsError> {
        if let Wait::Message(_) = wait
            && let Some(m) = self.incoming.pop_front()
        {
            return Ok(Some(m));
        }
        self.flush()?;
        let until = match wait {
            Wait::Message(t) => t,
            Wait::Answer(_, t) => Some(t),
        };
        loop {
            while let Some(f) = self.take_frame()? {
                match wait {
                    Wait::Answer(id, _)
                        if !(f.header.flags.has(Flags::RESPONSE) && f.header.reply_to == id) =>
                    {
                        self.incoming.push_back(f);
                    }
                    _ => return Ok(Some(f)),
                }
            }
            if !self.fill(until)? {
                return Ok(None);
            }
        }
    }

    /// The next message, notification, late answer or late error. Err(Closed) when the
    /// connection closed.
    pub fn recv(&mut self) -> Result<Incoming, MtsError> {
        self.read_until(Wait::Message(None))?
            .ok_or(MtsError::Closed)
    }

    /// [`Client::recv`] for at most `timeout`: None if nothing came.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Incoming>, MtsError> {
        self.read_until(Wait::Message(Some(Instant::now() + timeout)))
    }

    /// Send a raw frame (with what is queued before it) and wait for the frame that answers it.
    fn round_trip(
        &mut self,
        h: Header,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, MtsError> {
        let until = Instant::now() + deadline;
        let id = self.queue(h, payload);
        match self.read_until(Wait::Answer(id, until))? {
            Some(m) => Frame {
                header: m.header,
                payload: m.payload,
            }
            .into_result(),
            None => Err(MtsError::Timeout(deadline)),
        }
    }

    fn broker<T: Serialize, R: DeserializeOwned>(
        &mut self,
        opcode: u32,
        v: &T,
    ) -> Result<R, MtsError> {
        let p = codec::encode(v)?;
        let h = header(sap::CLI, sap::BROKER, opcode, 0);
        codec::decode(&self.round_trip(h, &p, BROKER_DEADLINE)?)
    }

    /// Bind a SAP this service's policy declares; messages queued for it start arriving.
    pub fn bind(&mut self, name: &str) -> Result<u32, MtsError> {
        self.broker(proto::OP_BIND, &proto::Bind { name: name.into() })
    }

    /// A SAP's number by name.
    pub fn lookup(&mut self, name: &str) -> Result<u32, MtsError> {
        self.broker(proto::OP_LOOKUP, &name.to_string())
    }

    /// Receive notifications of `opcode` on bound SAP `sap`.
    pub fn subscribe(&mut self, sap: u32, opcode: u32) -> Result<(), MtsError> {
        self.broker(proto::OP_SUBSCRIBE, &proto::Subscribe { sap, opcode })
    }

    /// Send and wait until the broker has queued it (on disk, for `PERSISTENT`).
    pub fn send<T: Serialize>(
        &mut self,
        src: u32,
        dst: u32,
        opcode: u32,
        v: &T,
        flags: Flags,
    ) -> Result<(), MtsError> {
        let p = codec::encode(v)?;
        let h = header(src, dst, opcode, flags.0 | Flags::CONFIRM);
        self.round_trip(h, &p, BROKER_DEADLINE).map(|_| ())
    }

    /// Send raw bytes without waiting: written with the next call that writes or waits (or
    /// [`Client::flush`]); a refusal arrives later through [`Client::recv`].
    pub fn send_nowait(
        &mut self,
        src: u32,
        dst: u32,
        opcode: u32,
        payload: &[u8],
        flags: Flags,
    ) -> u64 {
        self.queue(header(src, dst, opcode, flags.0), payload)
    }

    /// Publish a notification to every subscriber of `opcode` (written like `send_nowait`).
    pub fn publish<T: Serialize>(&mut self, src: u32, opcode: u32, v: &T) -> Result<u64, MtsError> {
        let p = codec::encode(v)?;
        Ok(self.send_nowait(src, sap::BROADCAST, opcode, &p, Flags::default()))
    }

    /// Request/response with a deadline.
    pub fn request<T: Serialize, R: DeserializeOwned>(
        &mut self,
        src: u32,
        dst: u32,
        opcode: u32,
        v: &T,
        deadline: Duration,
    ) -> Result<R, MtsError> {
        let p = codec::encode(v)?;
        codec::decode(&self.request_raw(src, dst, opcode, &p, deadline)?)
    }

    /// Raw request/response (payload bytes in and out).
    pub fn request_raw(
        &mut self,
        src: u32,
        dst: u32,
        opcode: u32,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, MtsError> {
        self.round_trip(header(src, dst, opcode, Flags::REQUEST), payload, deadline)
    }

    /// Answer a request: written at once, after what is queued before it.
    pub fn respond_raw(&mut self, to: &Incoming, payload: &[u8]) -> Result<(), MtsError> {
        let f = Frame::response_to(&to.header, 0, Vec::new());
        self.queue(f.header, payload);
        self.flush()
    }

    pub fn respond<R: Serialize>(&mut self, to: &Incoming, v: &R) -> Result<(), MtsError> {
        self.respond_raw(to, &codec::encode(v)?)
    }

    /// Done with these messages: they will not be redelivered. Written like `send_nowait`.
    pub fn ack(&mut self, ids: &[u64]) {
        if let Ok(p) = codec::encode(&proto::Ack { ids: ids.to_vec() }) {
            self.queue(header(sap::CLI, sap::BROKER, proto::OP_ACK, 0), &p);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake broker on the other end of a socket pair: what it reads, and what it answers.
    fn pair() -> (Client, UnixStream) {
        let dir = std::env::temp_dir().join(format!("mts-blocking-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{:?}.sock", std::thread::current().id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind");
        let c = Client::connect(&path).expect("connect");
        let (s, _) = l.accept().expect("accept");
        let _ = std::fs::remove_file(&path);
        (c, s)
    }

    fn read(s: &mut UnixStream) -> Frame {
        crate::io::read_frame(s, DEFAULT_MAX_PAYLOAD).expect("frame")
    }

    #[test]
    fn an_answer_is_matched_and_what_comes_before_it_waits_for_recv() {
        let (mut c, mut s) = pair();
        let broker = std::thread::spawn(move || {
            // The ack queued before the request is written with it, in order.
            let ack = read(&mut s);
            assert_eq!(ack.header.opcode, proto::OP_ACK);
            let req = read(&mut s);
            assert!(req.header.flags.has(Flags::REQUEST));
            // A message first, then the answer split into two writes.
            let msg = Frame::request(7, 100, 3, 55, codec::encode(&"hello").expect("enc"));
            s.write_all(&msg.to_bytes()).expect("write");
            let ans = Frame::response_to(&req.header, 9, codec::encode(&42u32).expect("enc"));
            let b = ans.to_bytes();
            s.write_all(&b[..10]).expect("write");
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(&b[10..]).expect("write");
            s
        });
        c.ack(&[1, 2]);
        let n: u32 = c
            .request(sap::CLI, 100, 5, &"q", Duration::from_secs(5))
            .expect("answer");
        assert_eq!(n, 42);
        let m = c.recv().expect("the message read while waiting");
        assert_eq!(m.decode::<String>().expect("dec"), "hello");
        assert_eq!(m.id(), 55);
        drop(broker.join().expect("broker"));
        assert!(matches!(c.recv(), Err(MtsError::Closed)));
    }

    #[test]
    fn a_deadline_that_runs_out_mid_frame_leaves_the_connection_usable() {
        let (mut c, mut s) = pair();
        let big = vec![0x5a; 200 * 1024];
        let expect = big.clone();
        let broker = std::thread::spawn(move || {
            let req = read(&mut s);
            let b = Frame::response_to(&req.header, 1, big).to_bytes();
            // Half a frame, then nothing until the client has given up.
            s.write_all(&b[..1000]).expect("write");
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(&b[1000..]).expect("write");
            s
        });
        let t = Instant::now();
        let r = c.request_raw(sap::CLI, 100, 5, b"q", Duration::from_millis(100));
        assert!(matches!(r, Err(MtsError::Timeout(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_millis(290));
        // The late answer arrives whole through recv.
        let late = c.recv_timeout(Duration::from_secs(5)).expect("recv");
        let late = late.expect("the late answer");
        assert!(late.header.flags.has(Flags::RESPONSE));
        assert!(late.payload == expect);
        assert!(
            c.recv_timeout(Duration::from_millis(10))
                .expect("ok")
                .is_none()
        );
        drop(broker.join().expect("broker"));
    }

    #[test]
    fn a_bad_frame_is_an_error_not_a_panic() {
        let (mut c, mut s) = pair();
        s.write_all(&[0xee; HEADER_LEN]).expect("write");
        assert!(matches!(c.recv(), Err(MtsError::BadMagic(_))));
        let (mut c, mut s) = pair();
        let mut h = Frame::request(1, 2, 3, 4, Vec::new()).header;
        h.len = 10;
        s.write_all(&h.encode()).expect("write");
        s.write_all(&[1, 2, 3]).expect("write");
        drop(s);
        assert!(matches!(c.recv(), Err(MtsError::Truncated { .. })));
    }
}
