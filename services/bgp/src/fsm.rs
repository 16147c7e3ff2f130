//! The BGP session FSM of RFC 4271 §8, sans-IO: [`Event`]s in (named as the RFC numbers them),
//! [`Action`]s out. The owner carries out the actions (connect, send, start timers) and feeds
//! the results back as events. Timers are deadlines the owner watches ([`Fsm::deadline`]).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn word(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

/// RFC 4271 §8.1 events (the ones this speaker uses), with their RFC numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 1 / 4: start; `passive` waits for the peer to connect.
    ManualStart { passive: bool },
    /// 2
    ManualStop,
    /// 9
    ConnectRetryTimerExpires,
    /// 10
    HoldTimerExpires,
    /// 11
    KeepaliveTimerExpires,
    /// 16 / 17: the TCP connection is up (ours acked, or theirs accepted).
    TcpConnectionConfirmed,
    /// 18
    TcpConnectionFails,
    /// 19: a valid OPEN; `hold` is the peer's proposed hold time.
    BgpOpen { hold: u16 },
    /// 21 / 22: a bad header or OPEN, with the NOTIFICATION (code, subcode) to send.
    BgpOpenMsgErr { code: u8, subcode: u8 },
    /// 23: connection collision (§6.8) and this session's connection lost: NOTIFICATION Cease
    /// / Connection Collision Resolution, and the connection goes.
    OpenCollisionDump,
    /// 25
    NotifMsg,
    /// 26
    KeepAliveMsg,
    /// 27
    UpdateMsg,
    /// 28: an UPDATE error that resets the session (RFC 7606 says which ones).
    UpdateMsgErr { code: u8, subcode: u8 },
    /// RFC 5882 §10.2: the BFD session to the peer went down; the session is reset at once
    /// (NOTIFICATION Cease / BFD Down, RFC 9384), without Graceful Restart.
    BfdDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection.
    Disconnect,
    SendOpen,
    SendKeepalive,
    SendNotification {
        code: u8,
        subcode: u8,
    },
    /// The session reached Established: send the Adj-RIB-Out.
    Established,
    /// The session left Established: the peer's routes go (or go stale under GR).
    Down,
    /// Apply the UPDATE that produced this event.
    ProcessUpdate,
}

/// NOTIFICATION codes used here (RFC 4271 §4.5).
pub const HOLD_TIMER_EXPIRED: u8 = 4;
pub const FSM_ERROR: u8 = 5;
pub const CEASE: u8 = 6;

#[derive(Debug, Clone)]
pub struct Fsm {
    pub state: State,
    /// Our configured hold time (seconds); the session uses min(ours, theirs).
    pub hold_time: u16,
    pub passive: bool,
    pub connect_retry: Duration,
    pub connect_retry_counter: u32,
    /// Negotiated hold time (seconds), 0 = no keepalives.
    pub negotiated_hold: u16,
    connect_retry_at: Option<Instant>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    /// Established since (for `show bgp summary`).
    pub up_since: Option<Instant>,
    pub flaps: u32,
}

impl Fsm {
    pub fn new(hold_time: u16, connect_retry: Duration) -> Fsm {
        Fsm {
            state: State::Idle,
            hold_time,
            passive: false,
            connect_retry,
            connect_retry_counter: 0,
            negotiated_hold: 0,
            connect_retry_at: None,
            hold_at: None,
            keepalive_at: None,
            up_since: None,
            flaps: 0,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        [self.connect_retry_at, self.hold_at, self.keepalive_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Which timers ran out at `now`.
    pub fn expired(&self, now: Instant) -> Vec<Event> {
        let mut v = Vec::new();
        if self.hold_at.is_some_and(|t| t <= now) {
            v.push(Event::HoldTimerExpires);
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            v.push(Event::KeepaliveTimerExpires);
        }
        if self.connect_retry_at.is_some_and(|t| t <= now) {
            v.push(Event::ConnectRetryTimerExpires);
        }
        v
    }

    fn keepalive_interval(&self) -> Option<Duration> {
        (self.negotiated_hold > 0).then(|| Duration::from_secs(u64::from(self.negotiated_hold)) / 3)
    }

    fn restart_hold(&mut self, now: Instant) {
        self.hold_at = (self.negotiated_hold > 0)
            .then(|| now + Duration::from_secs(u64::from(self.negotiated_hold)));
    }

    fn restart_keepalive(&mut self, now: Instant) {
        self.keepalive_at = self.keepalive_interval().map(|d| now + d);
    }

    /// Back to Idle after an error; the owner restarts the session after the retry time.
    fn go_idle(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.state == State::Established {
            self.flaps += 1;
            out.push(Action::Down);
        }
        out.push(Action::Disconnect);
        self.state = State::Idle;
        self.hold_at = None;
        self.keepalive_at = None;
        self.up_since = None;
        self.connect_retry_counter += 1;
        // Automatic restart (RFC 4271 event 3) after ConnectRetryTime.
        self.connect_retry_at = Some(now + self.connect_retry);
    }

    /// A session that outlived the previous instance (its socket came back from sysmgr's fd
    /// store): Established at once with the negotiated hold time, the hold timer restarted.
    /// The owner sends a KEEPALIVE at once (the pause may have eaten most of the peer's
    /// patience); the next is due an interval later.
    pub fn resume(
        &mut self,
        now: Instant,
        passive: bool,
        negotiated_hold: u16,
        up_since: Instant,
        flaps: u32,
    ) {
        self.state = State::Established;
        self.passive = passive;
        self.negotiated_hold = negotiated_hold;
        self.connect_retry_at = None;
        self.connect_retry_counter = 0;
        self.restart_hold(now);
        self.restart_keepalive(now);
        self.up_since = Some(up_since);
        self.flaps = flaps;
    }

    pub fn handle(&mut self, now: Instant, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        use Event as E;
        use State as S;
        match (self.state, ev) {
            (S::Idle, E::ManualStart { passive }) => {
                self.passive = passive;
                self.start(now, &mut out);
            }
            (S::Idle, E::ConnectRetryTimerExpires) => self.start(now, &mut out),
            (S::Idle, _) => {}
            (_, E::ManualStop) => {
                out.push(Action::SendNotification {
                    code: CEASE,
                    subcode: 2,
                });
                self.go_idle(now, &mut out);
                self.connect_retry_at = None;
            }
            (S::Connect | S::Active, E::TcpConnectionConfirmed) => {
                self.connect_retry_at = None;
                out.push(Action::SendOpen);
                // RFC 4271: a large hold time (4 minutes) until the OPEN arrives.
                self.hold_at = Some(now + Duration::from_secs(240));
                self.state = S::OpenSent;
            }
            (S::Connect, E::ConnectRetryTimerExpires) => {
                out.push(Action::Disconnect);
                out.push(Action::Connect);
                self.connect_retry_at = Some(now + self.connect_retry);
            }
            (S::Connect, E::TcpConnectionFails) => {
                self.connect_retry_at = Some(now + self.connect_retry);
                self.state = S::Active;
            }
            (S::Active, E::ConnectRetryTimerExpires) => {
                if !self.passive {
                    out.push(Action::Connect);
                    self.state = S::Connect;
                }
                self.connect_retry_at = Some(now + self.connect_retry);
            }
            (S::Active, E::TcpConnectionFails) => {
                self.connect_retry_at = Some(now + self.connect_retry);
            }
            (S::OpenSent, E::BgpOpen { hold }) => {
                self.negotiated_hold = self.hold_time.min(hold);
                out.push(Action::SendKeepalive);
                self.restart_hold(now);
                self.restart_keepalive(now);
                self.state = S::OpenConfirm;
            }
            (S::OpenSent, E::TcpConnectionFails) => {
                out.push(Action::Disconnect);
                self.hold_at = None;
                self.connect_retry_at = Some(now + self.connect_retry);
                self.state = S::Active;
            }
            (S::OpenConfirm, E::KeepAliveMsg) => {
                self.restart_hold(now);
                self.state = S::Established;
                self.up_since = Some(now);
                out.push(Action::Established);
            }
            (S::OpenConfirm | S::Established, E::KeepaliveTimerExpires) => {
                out.push(Action::SendKeepalive);
                self.restart_keepalive(now);
            }
            (S::Established, E::KeepAliveMsg) => self.restart_hold(now),
            (S::Established, E::UpdateMsg) => {
                self.restart_hold(now);
                out.push(Action::ProcessUpdate);
            }
            (_, E::HoldTimerExpires) => {
                out.push(Action::SendNotification {
                    code: HOLD_TIMER_EXPIRED,
                    subcode: 0,
                });
                self.go_idle(now, &mut out);
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::OpenCollisionDump) => {
                out.push(Action::SendNotification {
                    code: CEASE,
                    subcode: 7,
                });
                self.go_idle(now, &mut out);
            }
            (_, E::OpenCollisionDump) => {}
            (_, E::BgpOpenMsgErr { code, subcode } | E::UpdateMsgErr { code, subcode }) => {
                out.push(Action::SendNotification { code, subcode });
                self.go_idle(now, &mut out);
            }
            (_, E::NotifMsg | E::TcpConnectionFails) => self.go_idle(now, &mut out),
            (S::Connect | S::Active, E::BfdDown) => {}
            (_, E::BfdDown) => {
                out.push(Action::SendNotification {
                    code: CEASE,
                    subcode: 10,
                });
                self.go_idle(now, &mut out);
            }
            (_, E::KeepaliveTimerExpires) => self.keepalive_at = None,
            (_, E::ConnectRetryTimerExpires) => self.connect_retry_at = None,
            // Anything else in a state that does not expect it: FSM error (RFC 4271 §6.6).
            (_, _) => {
                out.push(Action::SendNotification {
                    code: FSM_ERROR,
                    subcode: 0,
                });
                self.go_idle(now, &mut out);
            }
        }
        out
    }

    /// Connection collision resolved for the peer's connection (§6.8): the session goes on
    /// over it from OpenSent (our OPEN already went out on it); its OPEN comes next.
    pub fn take_over_connection(&mut self, now: Instant) {
        self.connect_retry_at = None;
        self.keepalive_at = None;
        self.hold_at = Some(now + Duration::from_secs(240));
        self.state = State::OpenSent;
    }

    fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.connect_retry_at = Some(now + self.connect_retry);
        if self.passive {
            self.state = State::Active;
        } else {
            out.push(Action::Connect);
            self.state = State::Connect;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collision_dump_and_take_over() {
        let t0 = Instant::now();
        let mut f = Fsm::new(90, Duration::from_secs(5));
        f.handle(t0, Event::ManualStart { passive: false });
        f.handle(t0, Event::TcpConnectionConfirmed);
        assert_eq!(f.state, State::OpenSent);
        assert_eq!(
            f.handle(t0, Event::OpenCollisionDump),
            vec![
                Action::SendNotification {
                    code: CEASE,
                    subcode: 7
                },
                Action::Disconnect
            ]
        );
        assert_eq!(f.state, State::Idle);
        f.take_over_connection(t0);
        assert_eq!(f.state, State::OpenSent);
        assert_eq!(f.deadline(), Some(t0 + Duration::from_secs(240)));
        assert_eq!(
            f.handle(t0, Event::BgpOpen { hold: 9 }),
            vec![Action::SendKeepalive]
        );
        assert_eq!(f.state, State::OpenConfirm);
        // Nothing to dump in Active.
        let mut g = Fsm::new(90, Duration::from_secs(5));
        g.handle(t0, Event::ManualStart { passive: true });
        assert!(g.handle(t0, Event::OpenCollisionDump).is_empty());
        assert_eq!(g.state, State::Active);
    }

    fn established(t0: Instant) -> Fsm {
        let mut f = Fsm::new(90, Duration::from_secs(5));
        assert_eq!(
            f.handle(t0, Event::ManualStart { passive: false }),
            vec![Action::Connect]
        );
        assert_eq!(
            f.handle(t0, Event::TcpConnectionConfirmed),
            vec![Action::SendOpen]
        );
        assert_eq!(
            f.handle(t0, Event::BgpOpen { hold: 9 }),
            vec![Action::SendKeepalive]
        );
        assert_eq!(f.negotiated_hold, 9);
        assert_eq!(f.handle(t0, Event::KeepAliveMsg), vec![Action::Established]);
        f
    }

    #[test]
    fn open_keepalive_established_with_the_smaller_hold_time() {
        let t0 = Instant::now();
        let f = established(t0);
        assert_eq!(f.state, State::Established);
        assert_eq!(f.deadline(), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn keepalives_every_third_of_the_hold_time_and_hold_expiry_resets() {
        let t0 = Instant::now();
        let mut f = established(t0);
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(f.expired(t3), vec![Event::KeepaliveTimerExpires]);
        assert_eq!(
            f.handle(t3, Event::KeepaliveTimerExpires),
            vec![Action::SendKeepalive]
        );
        let t9 = t0 + Duration::from_secs(9);
        assert!(f.expired(t9).contains(&Event::HoldTimerExpires));
        let a = f.handle(t9, Event::HoldTimerExpires);
        assert_eq!(
            a,
            vec![
                Action::SendNotification {
                    code: HOLD_TIMER_EXPIRED,
                    subcode: 0
                },
                Action::Down,
                Action::Disconnect
            ]
        );
        assert_eq!((f.state, f.flaps), (State::Idle, 1));
        // Automatic restart after the connect-retry time.
        let t14 = t9 + Duration::from_secs(5);
        assert_eq!(f.expired(t14), vec![Event::ConnectRetryTimerExpires]);
        assert_eq!(
            f.handle(t14, Event::ConnectRetryTimerExpires),
            vec![Action::Connect]
        );
    }

    #[test]
    fn updates_and_keepalives_restart_the_hold_timer() {
        let t0 = Instant::now();
        let mut f = established(t0);
        let t8 = t0 + Duration::from_secs(8);
        assert_eq!(f.handle(t8, Event::UpdateMsg), vec![Action::ProcessUpdate]);
        assert!(
            !f.expired(t0 + Duration::from_secs(10))
                .contains(&Event::HoldTimerExpires)
        );
    }

    #[test]
    fn a_notification_or_lost_connection_goes_idle_and_routes_go() {
        let t0 = Instant::now();
        let mut f = established(t0);
        assert_eq!(
            f.handle(t0, Event::NotifMsg),
            vec![Action::Down, Action::Disconnect]
        );
        let mut f = established(t0);
        assert_eq!(
            f.handle(t0, Event::TcpConnectionFails),
            vec![Action::Down, Action::Disconnect]
        );
    }

    #[test]
    fn passive_peers_wait_in_active() {
        let t0 = Instant::now();
        let mut f = Fsm::new(90, Duration::from_secs(5));
        assert!(
            f.handle(t0, Event::ManualStart { passive: true })
                .is_empty()
        );
        assert_eq!(f.state, State::Active);
        assert_eq!(
            f.handle(t0, Event::TcpConnectionConfirmed),
            vec![Action::SendOpen]
        );
    }

    #[test]
    fn an_update_before_established_is_an_fsm_error() {
        let t0 = Instant::now();
        let mut f = Fsm::new(90, Duration::from_secs(5));
        f.handle(t0, Event::ManualStart { passive: false });
        f.handle(t0, Event::TcpConnectionConfirmed);
        let a = f.handle(t0, Event::UpdateMsg);
        assert_eq!(
            a[0],
            Action::SendNotification {
                code: FSM_ERROR,
                subcode: 0
            }
        );
        assert_eq!(f.state, State::Idle);
    }

    #[test]
    fn manual_stop_sends_cease() {
        let t0 = Instant::now();
        let mut f = established(t0);
        let a = f.handle(t0, Event::ManualStop);
        assert_eq!(
            a[0],
            Action::SendNotification {
                code: CEASE,
                subcode: 2
            }
        );
        assert_eq!(
            f.deadline(),
            None,
            "no automatic restart after a manual stop"
        );
    }
}
