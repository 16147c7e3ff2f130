//! The HA policy engine: a pure state machine.
//!
//! `(service HA state, event, clock) -> (state, decision)`. No fork, no signals, no sockets: the
//! supervisor feeds it failures and ticks and carries out what it decides, so every escalation
//! path of DESIGN.md §3 is a plain unit test below.
//!
//! Semantics (NX-OS service-level HA):
//! - a failure is handled by the current policy level (primary, then secondary, then default);
//! - each restart under a policy is an *attempt*; it succeeds once the new instance has run for
//!   the policy's `min-lifetime`, which resets the level and the retry count;
//! - a policy that has used its `max-retries` attempts has failed, and the next level applies;
//! - no policy left (or none defined): switchover with two supervisors, reset with one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Action, FailureWindow, HaPolicies, Policy, StartKind};

/// Which policy of a service is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Level {
    #[default]
    Primary,
    Secondary,
    /// Both policies failed or none was defined: the supervisor default applies.
    Default,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Primary => "primary",
            Level::Secondary => "secondary",
            Level::Default => "default",
        }
    }
    fn next(self) -> Level {
        match self {
            Level::Primary => Level::Secondary,
            _ => Level::Default,
        }
    }
}

/// Per-service HA state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HaState {
    pub level: Level,
    /// Restart attempts made under the current level's policy.
    pub attempts: u32,
    /// The running attempt: when its instance started and the min-lifetime it must reach.
    pub attempt: Option<(Instant, Duration)>,
}

/// What the supervisor must do about a whole supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupAction {
    Switchover,
    Reset,
}

/// Why a supervisor-level action was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupReason {
    /// A policy says so.
    Policy,
    /// Every defined policy failed, or none was defined.
    PoliciesExhausted,
    /// A switchover was asked for with a single supervisor.
    NoStandby,
    /// Several services failed within the failure window.
    MultipleFailures,
}

/// The engine's answer to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart the service; `retries_left` after this attempt.
    Restart {
        kind: StartKind,
        level: Level,
        policy: Policy,
        retries_left: u32,
    },
    /// Policy `none`: leave it down.
    LeaveDown { level: Level },
    /// Switch over or reset the supervisor.
    Supervisor {
        action: SupAction,
        level: Level,
        reason: SupReason,
    },
}

/// The policy of a level (the default level has none).
pub fn policy_at(ha: &HaPolicies, level: Level) -> Option<Policy> {
    match level {
        Level::Primary => ha.primary,
        Level::Secondary => ha.secondary,
        Level::Default => None,
    }
}

fn supervisor(action: SupAction, supervisors: u8, level: Level, reason: SupReason) -> Decision {
    if action == SupAction::Switchover && supervisors < 2 {
        return Decision::Supervisor {
            action: SupAction::Reset,
            level,
            reason: SupReason::NoStandby,
        };
    }
    Decision::Supervisor {
        action,
        level,
        reason,
    }
}

impl HaState {
    /// A running attempt that has reached its min-lifetime resets the counters.
    fn settle(&mut self, now: Instant) -> bool {
        match self.attempt {
            Some((t, min)) if now.saturating_duration_since(t) >= min => {
                *self = HaState::default();
                true
            }
            _ => false,
        }
    }

    /// The service failed at `now` (exit, crash or unresponsive).
    pub fn on_failure(&mut self, ha: &HaPolicies, supervisors: u8, now: Instant) -> Decision {
        if self.attempt.is_none() {
            // The instance was a fresh start, not a restart attempt: begin at the primary policy.
            *self = HaState::default();
        } else {
            self.settle(now);
        }
        self.attempt = None;
        loop {
            if self.level == Level::Default {
                let action = if supervisors >= 2 {
                    SupAction::Switchover
                } else {
                    SupAction::Reset
                };
                return supervisor(
                    action,
                    supervisors,
                    Level::Default,
                    SupReason::PoliciesExhausted,
                );
            }
            let Some(p) = policy_at(ha, self.level) else {
                self.level = self.level.next();
                self.attempts = 0;
                continue;
            };
            match p.action {
                Action::Stateful | Action::Stateless => {
                    if self.attempts < p.max_retries {
                        self.attempts += 1;
                        let kind = if p.action == Action::Stateful {
                            StartKind::Stateful
                        } else {
                            StartKind::Stateless
                        };
                        return Decision::Restart {
                            kind,
                            level: self.level,
                            policy: p,
                            retries_left: p.max_retries - self.attempts,
                        };
                    }
                    self.level = self.level.next();
                    self.attempts = 0;
                }
                Action::None => return Decision::LeaveDown { level: self.level },
                Action::Switchover => {
                    return supervisor(
                        SupAction::Switchover,
                        supervisors,
                        self.level,
                        SupReason::Policy,
                    );
                }
                Action::Reset => {
                    return supervisor(
                        SupAction::Reset,
                        supervisors,
                        self.level,
                        SupReason::Policy,
                    );
                }
            }
        }
    }

    /// The restarted instance chosen by the last [`Decision::Restart`] is running since `now`.
    pub fn on_restarted(&mut self, policy: &Policy, now: Instant) {
        self.attempt = Some((now, policy.min_lifetime));
    }

    /// Time passes; returns true when a restart attempt just succeeded (counters reset).
    pub fn on_tick(&mut self, now: Instant) -> bool {
        self.settle(now)
    }

    /// When [`HaState::on_tick`] next has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.attempt.map(|(t, min)| t + min)
    }

    /// Attempts left under the policy in force.
    pub fn retries_left(&self, ha: &HaPolicies) -> Option<u32> {
        policy_at(ha, self.level).map(|p| p.max_retries.saturating_sub(self.attempts))
    }
}

/// Several services failing within a short window means the supervisor itself is sick.
#[derive(Debug, Default)]
pub struct FailureTracker {
    recent: VecDeque<(Instant, String)>,
}

impl FailureTracker {
    /// Record a failure; true when `cfg.services` distinct services failed within `cfg.window`.
    pub fn record(&mut self, cfg: &FailureWindow, service: &str, now: Instant) -> bool {
        self.recent.push_back((now, service.to_string()));
        while let Some((t, _)) = self.recent.front() {
            if now.saturating_duration_since(*t) > cfg.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let mut names: Vec<&str> = self.recent.iter().map(|(_, s)| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len() as u32 >= cfg.services
    }

    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(240);

    fn p(action: Action, max_retries: u32) -> Option<Policy> {
        Some(Policy {
            action,
            max_retries,
            min_lifetime: MIN,
        })
    }

    fn ha(primary: Option<Policy>, secondary: Option<Policy>) -> HaPolicies {
        HaPolicies { primary, secondary }
    }

    /// Fail, then (if restarted) immediately run the new instance; return the decision.
    fn fail(s: &mut HaState, h: &HaPolicies, sups: u8, now: Instant) -> Decision {
        let d = s.on_failure(h, sups, now);
        if let Decision::Restart { policy, .. } = d {
            s.on_restarted(&policy, now);
        }
        d
    }

    fn kind(d: Decision) -> Option<StartKind> {
        match d {
            Decision::Restart { kind, .. } => Some(kind),
            _ => None,
        }
    }

    #[test]
    fn stateful_then_stateless_then_reset_with_one_supervisor() {
        let h = ha(p(Action::Stateful, 2), p(Action::Stateless, 1));
        let mut s = HaState::default();
        let t = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(kind(fail(&mut s, &h, 1, t)), Some(StartKind::Stateful));
        assert_eq!(
            kind(fail(&mut s, &h, 1, t + second)),
            Some(StartKind::Stateful)
        );
        assert_eq!(
            kind(fail(&mut s, &h, 1, t + 2 * second)),
            Some(StartKind::Stateless)
        );
        assert_eq!(s.level, Level::Secondary);
        let d = fail(&mut s, &h, 1, t + 3 * second);
        assert_eq!(
            d,
            Decision::Supervisor {
                action: SupAction::Reset,
                level: Level::Default,
                reason: SupReason::PoliciesExhausted
            }
        );
    }

    #[test]
    fn exhausted_policies_switch_over_with_two_supervisors() {
        let h = ha(p(Action::Stateful, 1), None);
        let mut s = HaState::default();
        let t = Instant::now();
        assert!(kind(fail(&mut s, &h, 2, t)).is_some());
        let d = fail(&mut s, &h, 2, t + Duration::from_secs(1));
        assert!(matches!(
            d,
            Decision::Supervisor {
                action: SupAction::Switchover,
                ..
            }
        ));
    }

    #[test]
    fn no_policy_defined_means_reset_or_switchover_at_once() {
        let mut s = HaState::default();
        let now = Instant::now();
        assert!(matches!(
            s.on_failure(&HaPolicies::default(), 1, now),
            Decision::Supervisor {
                action: SupAction::Reset,
                ..
            }
        ));
        let mut s = HaState::default();
        assert!(matches!(
            s.on_failure(&HaPolicies::default(), 2, now),
            Decision::Supervisor {
                action: SupAction::Switchover,
                ..
            }
        ));
    }

    #[test]
    fn switchover_policy_with_one_supervisor_becomes_reset() {
        let h = ha(p(Action::Switchover, 0), None);
        let d = HaState::default().on_failure(&h, 1, Instant::now());
        assert_eq!(
            d,
            Decision::Supervisor {
                action: SupAction::Reset,
                level: Level::Primary,
                reason: SupReason::NoStandby
            }
        );
    }

    #[test]
    fn reset_policy_is_obeyed_on_first_failure() {
        let h = ha(p(Action::Reset, 0), p(Action::Stateless, 5));
        let d = HaState::default().on_failure(&h, 2, Instant::now());
        assert_eq!(
            d,
            Decision::Supervisor {
                action: SupAction::Reset,
                level: Level::Primary,
                reason: SupReason::Policy
            }
        );
    }

    #[test]
    fn none_policy_leaves_service_down() {
        let h = ha(p(Action::None, 0), None);
        assert_eq!(
            HaState::default().on_failure(&h, 1, Instant::now()),
            Decision::LeaveDown {
                level: Level::Primary
            }
        );
    }

    #[test]
    fn surviving_min_lifetime_resets_the_retry_count_on_tick() {
        let h = ha(p(Action::Stateful, 2), None);
        let mut s = HaState::default();
        let t = Instant::now();
        fail(&mut s, &h, 1, t);
        fail(&mut s, &h, 1, t + Duration::from_secs(1));
        assert_eq!(s.retries_left(&h), Some(0));
        assert_eq!(s.deadline(), Some(t + Duration::from_secs(1) + MIN));
        assert!(!s.on_tick(t + MIN)); // not yet: counted from the restart, not from the first failure
        assert!(s.on_tick(t + Duration::from_secs(1) + MIN));
        assert_eq!(s.retries_left(&h), Some(2));
        assert_eq!(s.deadline(), None);
        // The next failure is handled by the primary policy again.
        assert_eq!(
            kind(fail(&mut s, &h, 1, t + 2 * MIN)),
            Some(StartKind::Stateful)
        );
        assert_eq!(s.attempts, 1);
    }

    #[test]
    fn surviving_min_lifetime_counts_even_without_a_tick() {
        let h = ha(p(Action::Stateful, 1), p(Action::Stateless, 1));
        let mut s = HaState::default();
        let t = Instant::now();
        fail(&mut s, &h, 1, t);
        // The restarted instance ran past min-lifetime, and no tick came before it failed.
        assert_eq!(
            kind(fail(&mut s, &h, 1, t + MIN + Duration::from_secs(1))),
            Some(StartKind::Stateful)
        );
        assert_eq!(s.level, Level::Primary);
    }

    #[test]
    fn a_short_lived_attempt_counts_as_failed() {
        let h = ha(p(Action::Stateful, 1), p(Action::Stateless, 1));
        let mut s = HaState::default();
        let t = Instant::now();
        fail(&mut s, &h, 1, t);
        assert_eq!(
            kind(fail(&mut s, &h, 1, t + MIN - Duration::from_millis(1))),
            Some(StartKind::Stateless)
        );
    }

    #[test]
    fn zero_retries_skip_to_the_next_policy() {
        let h = ha(p(Action::Stateful, 0), p(Action::Stateless, 2));
        let d = HaState::default().on_failure(&h, 1, Instant::now());
        assert!(matches!(
            d,
            Decision::Restart {
                kind: StartKind::Stateless,
                level: Level::Secondary,
                retries_left: 1,
                ..
            }
        ));
    }

    #[test]
    fn secondary_without_primary_is_used_directly() {
        let h = ha(None, p(Action::Stateless, 1));
        let d = HaState::default().on_failure(&h, 1, Instant::now());
        assert!(matches!(
            d,
            Decision::Restart {
                level: Level::Secondary,
                ..
            }
        ));
    }

    #[test]
    fn failure_window_counts_distinct_services() {
        let cfg = FailureWindow {
            services: 3,
            window: Duration::from_secs(10),
        };
        let mut f = FailureTracker::default();
        let t = Instant::now();
        assert!(!f.record(&cfg, "a", t));
        assert!(!f.record(&cfg, "a", t + Duration::from_secs(1)));
        assert!(!f.record(&cfg, "b", t + Duration::from_secs(2)));
        assert!(f.record(&cfg, "c", t + Duration::from_secs(3)));
        let mut f = FailureTracker::default();
        f.record(&cfg, "a", t);
        f.record(&cfg, "b", t + Duration::from_secs(1));
        assert!(
            !f.record(&cfg, "c", t + Duration::from_secs(12)),
            "a and b fell out of the window"
        );
    }
}
