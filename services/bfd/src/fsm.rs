//! One BFD session (RFC 5880 §6.8), sans-IO: packets and clock ticks in, [`Action`]s out.
//!
//! The owner feeds [`Session::on_packet`] and [`Session::on_timer`] (at or after
//! [`Session::deadline`]) and carries out the actions in order. A [`Action::Checkpoint`] comes
//! first in a batch whenever the state that a restarted instance needs ([`Snapshot`]) changed, so
//! the owner can write it before the packets that reveal it leave.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::packet::{ControlPacket, Diag, State};

/// RFC 5880 §6.8.3: below Up, transmit no faster than once a second.
pub const SLOW_TX_US: u32 = 1_000_000;

/// What the operator (or a client over MTS) asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    /// Desired minimum transmit interval, µs.
    pub desired_min_tx: u32,
    /// Required minimum receive interval, µs.
    pub required_min_rx: u32,
    pub detect_mult: u8,
}

/// Everything a restarted instance needs to carry on as if nothing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub local_disc: u32,
    pub remote_disc: u32,
    pub state: State,
    pub remote_state: State,
    pub diag: Diag,
    pub timers: Timers,
    /// The desired min TX currently advertised (the slow rate below Up).
    pub desired_min_tx: u32,
    pub remote_min_rx: u32,
    pub remote_desired_min_tx: u32,
    pub remote_detect_mult: u8,
    pub remote_demand: bool,
    /// A Poll Sequence is running; the values in force before it began.
    pub poll: Option<Before>,
    pub admin_down: bool,
    /// Transitions out of Up since the session was created.
    pub flaps: u32,
    /// Wall clock (ms since the epoch) of the last state change.
    pub last_change_ms: u64,
}

/// Timer values that stay in force until a Poll Sequence ends (§6.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Before {
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The snapshot changed: write it before sending what follows.
    Checkpoint,
    Send(ControlPacket),
    StateChange {
        from: State,
        to: State,
        diag: Diag,
    },
}

/// Counters for `show bfd neighbors details`; not checkpointed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rx: u64,
    pub tx: u64,
    pub polls_sent: u64,
    pub finals_sent: u64,
}

pub struct Session {
    s: Snapshot,
    /// When the next periodic packet is due (`None`: not transmitting).
    next_tx: Option<Instant>,
    /// When the Detection Time runs out (`None`: nothing received yet).
    detect_at: Option<Instant>,
    rng: u64,
    pub counters: Counters,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Session {
    /// A new session in Down, transmitting at the slow rate from now.
    pub fn new(local_disc: u32, timers: Timers, now: Instant, seed: u64) -> Session {
        let s = Snapshot {
            local_disc,
            remote_disc: 0,
            state: State::Down,
            remote_state: State::Down,
            diag: Diag::None,
            timers,
            desired_min_tx: timers.desired_min_tx.max(SLOW_TX_US),
            // §6.8.1: initialised to 1 so that the first packets go out.
            remote_min_rx: 1,
            remote_desired_min_tx: 0,
            remote_detect_mult: 0,
            remote_demand: false,
            poll: None,
            admin_down: false,
            flaps: 0,
            last_change_ms: wall_ms(),
        };
        Session {
            s,
            next_tx: Some(now),
            detect_at: None,
            rng: seed | 1,
            counters: Counters::default(),
        }
    }

    /// Resume from a checkpoint: transmit at once, and give the peer a full Detection Time.
    pub fn restore(s: Snapshot, now: Instant, seed: u64) -> Session {
        let mut me = Session {
            s,
            next_tx: Some(now),
            detect_at: None,
            rng: seed | 1,
            counters: Counters::default(),
        };
        if me.s.remote_disc != 0 {
            me.detect_at = Some(now + me.detection_time());
        }
        me
    }

    pub fn snapshot(&self) -> Snapshot {
        self.s
    }

    pub fn state(&self) -> State {
        self.s.state
    }

    pub fn local_disc(&self) -> u32 {
        self.s.local_disc
    }

    /// The earliest instant at which [`Session::on_timer`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.next_tx, self.detect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Negotiated transmit interval (before jitter).
    pub fn tx_interval(&self) -> Duration {
        let tx = match self.s.poll {
            // An increase takes effect only when the Poll Sequence ends.
            Some(b) => self.s.desired_min_tx.min(b.desired_min_tx),
            None => self.s.desired_min_tx,
        };
        Duration::from_micros(u64::from(tx.max(self.s.remote_min_rx)))
    }

    /// Detection Time in asynchronous mode (§6.8.4).
    pub fn detection_time(&self) -> Duration {
        let rx = match self.s.poll {
            // A reduction takes effect only when the Poll Sequence ends.
            Some(b) => self.s.timers.required_min_rx.max(b.required_min_rx),
            None => self.s.timers.required_min_rx,
        };
        let mult = u64::from(self.s.remote_detect_mult.max(1));
        Duration::from_micros(mult * u64::from(rx.max(self.s.remote_desired_min_tx)))
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter only needs to be decorrelated, not secret.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// §6.8.7: 75–100 % of the interval (75–90 % with a multiplier of 1).
    fn jittered(&mut self, base: Duration) -> Duration {
        let top = if self.s.timers.detect_mult == 1 {
            90
        } else {
            100
        };
        let pct = 75 + self.random() % (top - 75 + 1);
        base * pct as u32 / 100
    }

    fn packet(&self) -> ControlPacket {
        ControlPacket {
            diag: self.s.diag,
            state: self.s.state,
            poll: self.s.poll.is_some(),
            fin: false,
            cpi: false,
            demand: false,
            detect_mult: self.s.timers.detect_mult,
            my_disc: self.s.local_disc,
            your_disc: self.s.remote_disc,
            desired_min_tx: self.s.desired_min_tx,
            required_min_rx: self.s.timers.required_min_rx,
            required_min_echo_rx: 0,
        }
    }

    fn transmitting(&self) -> bool {
        if self.s.remote_min_rx == 0 {
            return false;
        }
        // §6.8.7: a remote system in Demand mode gets no periodic packets once both are Up,
        // except while we poll.
        !(self.s.remote_demand
            && self.s.state == State::Up
            && self.s.remote_state == State::Up
            && self.s.poll.is_none())
    }

    fn set_state(&mut self, to: State, diag: Diag, out: &mut Vec<Action>) {
        let from = self.s.state;
        if from == to {
            return;
        }
        self.s.state = to;
        self.s.diag = diag;
        self.s.last_change_ms = wall_ms();
        if from == State::Up {
            self.s.flaps += 1;
        }
        // §6.8.3: slow rate below Up, the configured rate (announced with a Poll) in Up.
        let want = if to == State::Up {
            self.s.timers.desired_min_tx
        } else {
            self.s.timers.desired_min_tx.max(SLOW_TX_US)
        };
        if want != self.s.desired_min_tx {
            if to == State::Up {
                self.start_poll();
            }
            self.s.desired_min_tx = want;
        }
        if to != State::Up && from == State::Up {
            self.s.poll = None;
        }
        out.push(Action::StateChange { from, to, diag });
    }

    fn start_poll(&mut self) {
        if self.s.poll.is_none() {
            self.s.poll = Some(Before {
                desired_min_tx: self.s.desired_min_tx,
                required_min_rx: self.s.timers.required_min_rx,
            });
        }
    }

    /// Wrap a handler: checkpoint first if the snapshot changed.
    fn batch(&mut self, f: impl FnOnce(&mut Session, &mut Vec<Action>)) -> Vec<Action> {
        let before = self.s;
        let mut out = Vec::new();
        f(self, &mut out);
        if self.s != before {
            out.insert(0, Action::Checkpoint);
        }
        out
    }

    /// A valid packet for this session arrived (§6.8.6, after the session was selected).
    pub fn on_packet(&mut self, now: Instant, p: &ControlPacket) -> Vec<Action> {
        self.batch(|me, out| {
            me.counters.rx += 1;
            me.s.remote_disc = p.my_disc;
            me.s.remote_state = p.state;
            me.s.remote_demand = p.demand;
            me.s.remote_min_rx = p.required_min_rx;
            me.s.remote_desired_min_tx = p.desired_min_tx;
            me.s.remote_detect_mult = p.detect_mult;
            if p.fin && me.s.poll.is_some() {
                me.s.poll = None;
            }
            me.detect_at = Some(now + me.detection_time());
            if me.s.admin_down {
                return;
            }
            if p.state == State::AdminDown {
                if me.s.state != State::Down {
                    me.set_state(State::Down, Diag::NeighborSignaledSessionDown, out);
                }
            } else {
                match (me.s.state, p.state) {
                    (State::Down, State::Down) => me.set_state(State::Init, Diag::None, out),
                    (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                        me.set_state(State::Up, Diag::None, out)
                    }
                    (State::Up, State::Down) => {
                        me.set_state(State::Down, Diag::NeighborSignaledSessionDown, out)
                    }
                    _ => {}
                }
            }
            if p.poll {
                // Answer at once, without waiting for the periodic packet (§6.8.7).
                let mut f = me.packet();
                f.poll = false;
                f.fin = true;
                me.counters.finals_sent += 1;
                me.counters.tx += 1;
                out.push(Action::Send(f));
            }
            if out.iter().any(|a| matches!(a, Action::StateChange { .. })) {
                // Tell the peer about the change now rather than at the next tick.
                me.next_tx = Some(now);
            }
            if me.next_tx.is_none() && me.transmitting() {
                me.next_tx = Some(now);
            }
            // A faster rate (the peer lowered its RequiredMinRx, say) applies from now, not after
            // a packet scheduled at the old, slower rate.
            if let Some(at) = me.next_tx {
                let iv = me.tx_interval();
                if at > now + iv {
                    let d = me.jittered(iv);
                    me.next_tx = Some(now + d);
                }
            }
        })
    }

    /// The clock reached [`Session::deadline`].
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        self.batch(|me, out| {
            if let Some(at) = me.detect_at
                && now >= at
            {
                me.detect_at = None;
                // §6.8.1: the remote discriminator is forgotten after a silent Detection Time.
                me.s.remote_disc = 0;
                me.s.remote_min_rx = 1;
                me.s.remote_demand = false;
                if matches!(me.s.state, State::Init | State::Up) {
                    me.set_state(State::Down, Diag::ControlDetectionTimeExpired, out);
                }
            }
            if let Some(at) = me.next_tx
                && now >= at
            {
                me.next_tx = None;
            }
            if me.next_tx.is_none() && me.transmitting() {
                if me.s.poll.is_some() {
                    me.counters.polls_sent += 1;
                }
                me.counters.tx += 1;
                out.push(Action::Send(me.packet()));
                let d = me.jittered(me.tx_interval());
                me.next_tx = Some(now + d);
            }
        })
    }

    /// New configured timers; in Up they are announced with a Poll Sequence (§6.8.3).
    pub fn set_timers(&mut self, now: Instant, t: Timers) -> Vec<Action> {
        self.batch(|me, _| {
            if t == me.s.timers {
                return;
            }
            if me.s.state == State::Up {
                me.start_poll();
                me.s.desired_min_tx = t.desired_min_tx;
            } else {
                me.s.desired_min_tx = t.desired_min_tx.max(SLOW_TX_US);
            }
            me.s.timers = t;
            me.next_tx = Some(now);
        })
    }

    /// Administratively disable (AdminDown, §6.8.16) or re-enable the session.
    pub fn set_admin_down(&mut self, now: Instant, down: bool) -> Vec<Action> {
        self.batch(|me, out| {
            if down == me.s.admin_down {
                return;
            }
            me.s.admin_down = down;
            if down {
                me.set_state(State::AdminDown, Diag::AdministrativelyDown, out);
            } else {
                me.set_state(State::Down, Diag::None, out);
            }
            me.next_tx = Some(now);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Timers = Timers {
        desired_min_tx: 50_000,
        required_min_rx: 50_000,
        detect_mult: 3,
    };

    fn peer(state: State, your: u32) -> ControlPacket {
        ControlPacket {
            state,
            detect_mult: 3,
            my_disc: 99,
            your_disc: your,
            desired_min_tx: 50_000,
            required_min_rx: 50_000,
            ..Default::default()
        }
    }

    fn sends(a: &[Action]) -> Vec<ControlPacket> {
        a.iter()
            .filter_map(|x| match x {
                Action::Send(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn up_session(t0: Instant) -> Session {
        let mut s = Session::new(7, FAST, t0, 1);
        s.on_packet(t0, &peer(State::Down, 0));
        s.on_packet(t0, &peer(State::Up, 7));
        assert_eq!(s.state(), State::Up);
        s
    }

    #[test]
    fn first_packet_goes_out_at_once_in_down_at_the_slow_rate() {
        let t0 = Instant::now();
        let mut s = Session::new(7, FAST, t0, 1);
        let p = sends(&s.on_timer(t0));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].state, State::Down);
        assert_eq!(p[0].your_disc, 0);
        assert_eq!(p[0].desired_min_tx, SLOW_TX_US);
        let next = s.deadline().expect("next tx");
        assert!(next >= t0 + Duration::from_millis(750) && next <= t0 + Duration::from_secs(1));
    }

    #[test]
    fn three_way_handshake_down_init_up() {
        let t0 = Instant::now();
        let mut s = Session::new(7, FAST, t0, 1);
        let a = s.on_packet(t0, &peer(State::Down, 0));
        assert_eq!(a[0], Action::Checkpoint);
        assert!(a.contains(&Action::StateChange {
            from: State::Down,
            to: State::Init,
            diag: Diag::None
        }));
        s.on_packet(t0, &peer(State::Init, 7));
        assert_eq!(s.state(), State::Up);
    }

    #[test]
    fn going_up_switches_to_the_fast_rate_with_a_poll_until_final() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        let p = sends(&s.on_timer(t0));
        assert!(p[0].poll && p[0].desired_min_tx == 50_000);
        // The increase rule does not apply to a decrease: fast at once.
        assert_eq!(s.tx_interval(), Duration::from_millis(50));
        let mut f = peer(State::Up, 7);
        f.fin = true;
        s.on_packet(t0, &f);
        assert!(!sends(&s.on_timer(t0 + Duration::from_millis(60)))[0].poll);
    }

    #[test]
    fn poll_is_answered_with_final_at_once() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        let mut p = peer(State::Up, 7);
        p.poll = true;
        let out = sends(&s.on_packet(t0, &p));
        assert_eq!(out.len(), 1);
        assert!(out[0].fin && !out[0].poll);
    }

    #[test]
    fn detection_time_expiry_goes_down_and_forgets_the_remote() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        assert_eq!(s.detection_time(), Duration::from_millis(150));
        let a = s.on_timer(t0 + Duration::from_millis(149));
        assert!(!a.iter().any(|x| matches!(x, Action::StateChange { .. })));
        let a = s.on_timer(t0 + Duration::from_millis(150));
        assert!(a.contains(&Action::StateChange {
            from: State::Up,
            to: State::Down,
            diag: Diag::ControlDetectionTimeExpired
        }));
        assert_eq!(s.snapshot().remote_disc, 0);
        assert_eq!(s.snapshot().flaps, 1);
        assert_eq!(s.snapshot().desired_min_tx, SLOW_TX_US);
    }

    #[test]
    fn neighbor_down_and_admin_down_take_the_session_down() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        s.on_packet(t0, &peer(State::Down, 7));
        assert_eq!(s.snapshot().diag, Diag::NeighborSignaledSessionDown);
        let mut s = up_session(t0);
        s.on_packet(t0, &peer(State::AdminDown, 7));
        assert_eq!(s.state(), State::Down);
    }

    #[test]
    fn down_ignores_an_up_peer_so_a_stateless_restart_is_one_flap() {
        let t0 = Instant::now();
        let mut s = Session::new(8, FAST, t0, 1);
        s.on_packet(t0, &peer(State::Up, 7));
        assert_eq!(s.state(), State::Down);
    }

    #[test]
    fn restore_resumes_up_with_same_discriminators_and_sends_at_once() {
        let t0 = Instant::now();
        let s = up_session(t0);
        let snap = s.snapshot();
        let t1 = t0 + Duration::from_millis(30);
        let mut r = Session::restore(snap, t1, 2);
        let p = sends(&r.on_timer(t1));
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].state, p[0].my_disc, p[0].your_disc),
            (State::Up, 7, 99)
        );
        // A full Detection Time from the restart, not from the last packet before it.
        assert!(
            r.on_timer(t1 + Duration::from_millis(140))
                .iter()
                .all(|a| !matches!(a, Action::StateChange { .. }))
        );
    }

    #[test]
    fn raising_timers_in_up_keeps_the_old_rate_until_final() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        let mut f = peer(State::Up, 7);
        f.fin = true;
        s.on_packet(t0, &f);
        let slow = Timers {
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            detect_mult: 3,
        };
        s.set_timers(t0, slow);
        assert_eq!(s.tx_interval(), Duration::from_millis(50));
        s.on_packet(t0, &f);
        assert_eq!(s.tx_interval(), Duration::from_millis(300));
    }

    #[test]
    fn a_faster_peer_rate_reschedules_the_next_packet() {
        let t0 = Instant::now();
        let mut s = Session::new(7, FAST, t0, 1);
        let mut slow = peer(State::Down, 0);
        slow.required_min_rx = 1_000_000;
        slow.desired_min_tx = 1_000_000;
        s.on_packet(t0, &slow);
        s.on_timer(t0);
        assert!(s.deadline().expect("tx") > t0 + Duration::from_millis(500));
        // Both Up, the peer polls with 50 ms: our next packet is due within 50 ms.
        s.on_packet(t0, &peer(State::Up, 7));
        let mut p = peer(State::Up, 7);
        p.poll = true;
        s.on_packet(t0, &p);
        assert!(s.deadline().expect("tx") <= t0 + Duration::from_millis(50));
    }

    #[test]
    fn jitter_stays_within_75_to_100_percent() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        for _ in 0..1000 {
            let d = s.jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(75) && d <= Duration::from_millis(100));
        }
    }

    #[test]
    fn unchanged_state_needs_no_checkpoint() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        let mut f = peer(State::Up, 7);
        f.fin = true;
        s.on_packet(t0, &f);
        let a = s.on_packet(t0 + Duration::from_millis(40), &peer(State::Up, 7));
        assert!(!a.contains(&Action::Checkpoint));
    }

    #[test]
    fn admin_down_is_announced_and_ignores_the_peer() {
        let t0 = Instant::now();
        let mut s = up_session(t0);
        s.set_admin_down(t0, true);
        let p = sends(&s.on_timer(t0));
        assert_eq!(p[0].state, State::AdminDown);
        assert_eq!(p[0].diag, Diag::AdministrativelyDown);
        s.on_packet(t0, &peer(State::Up, 7));
        assert_eq!(s.state(), State::AdminDown);
    }
}
