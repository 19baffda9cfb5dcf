//! Drain: taking a node out of service without losing anything, as a state machine.
//!
//! The sequence (docs/OPERATIONS.md):
//! 1. not ready at once; new client sessions are redirected to other nodes;
//! 2. neighbors are told the node is draining (they place no new ozones on it);
//! 3. subscribed clients are moved to other serving nodes, spread over a grace period;
//! 4. every ozone the node holds is handed to its owners among the other members;
//! 5. neighbor queues are flushed;
//! 6. neighbors are told it left, the mesh hears it from an announcement: "safe to stop".
//!
//! [`Drain`] holds the phase and the progress, takes [`In`] events and the time, and queues
//! [`Out`] actions for its driver (the node), which answers the queries (`ListSessions`,
//! `FindTargets`, `ListOzones`, `MeasureQueues`) and reports the results of the IO
//! (`NeighborsTold`, `HandedOff`) as events. Every answer carries the run it belongs to:
//! after an undrain or a new drain, late answers of the old run are ignored. Timers are
//! [`Drain::poll_timeout`] and [`Drain::handle_timeout`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::admin::DrainStatus;
use crate::ozone::OzoneAddr;
use crate::wire::Departure;

/// How long a drain waits to learn of another serving node before it gives up moving clients
/// (neighbors announce themselves about a second after they come up).
pub const TARGETS_WAIT: Duration = Duration::from_secs(5);
/// How often it asks again while it waits for targets.
pub const TARGETS_RETRY: Duration = Duration::from_millis(200);
/// How often queued bytes are measured while flushing.
pub const FLUSH_POLL: Duration = Duration::from_millis(50);
/// Redirect targets are refreshed every this many clients.
pub const TARGETS_REFRESH_EVERY: usize = 16;
/// At most this many redirect targets are offered to one client.
pub const MAX_REDIRECT_TARGETS: usize = 8;

/// Where a drain is. Serialised as the documented `phase` strings of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Serving,
    MovingClients,
    HandingOff,
    Flushing,
    Leaving,
    Done,
    TimedOut,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::MovingClients => "moving_clients",
            Phase::HandingOff => "handing_off",
            Phase::Flushing => "flushing",
            Phase::Leaving => "leaving",
            Phase::Done => "done",
            Phase::TimedOut => "timed_out",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A client session, as the driver names it.
pub type SessionId = u64;

/// Events into the machine. `run` is the value [`Out`] carried: answers of an older run are
/// ignored.
#[derive(Debug, Clone, PartialEq)]
pub enum In {
    /// Start draining; `grace` spreads the client moves (capped at a third of `deadline`).
    Start { deadline: Duration, grace: Duration },
    /// Serve again.
    Undrain,
    NeighborsTold {
        run: u64,
        departure: Departure,
        told: usize,
    },
    /// The subscribed client sessions (answer to [`Out::ListSessions`]).
    Sessions { run: u64, sessions: Vec<SessionId> },
    /// Serving nodes to move clients to, best first (answer to [`Out::FindTargets`]).
    Targets { run: u64, targets: Vec<String> },
    /// Whether a redirect reached the session (it may have gone meanwhile).
    Redirected { run: u64, moved: bool },
    /// The ozones this node holds (answer to [`Out::ListOzones`]).
    Ozones { run: u64, ozones: Vec<OzoneAddr> },
    /// One ozone's hand-off ended; `ok` when every owner confirmed it.
    HandedOff { run: u64, ok: bool },
    /// Bytes still queued to neighbors and clients still connected (answer to
    /// [`Out::MeasureQueues`]).
    Queues {
        run: u64,
        queued_bytes: usize,
        clients_connected: usize,
    },
}

/// Actions for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Readiness (`/readyz`) and whether new sessions are redirected.
    SetReady(bool),
    /// Tell every connected neighbor this node's state; answer `NeighborsTold`.
    TellNeighbors {
        run: u64,
        departure: Departure,
    },
    ListSessions {
        run: u64,
    },
    FindTargets {
        run: u64,
    },
    Redirect {
        run: u64,
        session: SessionId,
        targets: Vec<String>,
    },
    ListOzones {
        run: u64,
    },
    /// Hand one ozone to its owners among the other members; answer `HandedOff`.
    HandOff {
        run: u64,
        addr: OzoneAddr,
    },
    MeasureQueues {
        run: u64,
    },
    /// Announce this node's state to the mesh now.
    Announce,
    /// The drain ended in `Done` or `TimedOut`.
    Finished(Phase),
}

/// What the machine waits for: at most one query or IO is outstanding at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Told,
    Sessions,
    /// Targets; `retry_until` while waiting for the first serving node to be known.
    Targets {
        retry_until: Option<Instant>,
    },
    /// A retry timer before asking for targets again.
    TargetsRetry {
        at: Instant,
        retry_until: Instant,
    },
    Redirected,
    /// The pause between two client moves.
    NextClient {
        at: Instant,
    },
    Ozones,
    HandedOff,
    Queues,
    /// The pause between two queue measurements.
    NextMeasure {
        at: Instant,
    },
}

#[derive(Debug)]
pub struct Drain {
    phase: Phase,
    run: u64,
    started: Option<Instant>,
    deadline: Option<Instant>,
    waiting: Waiting,
    sessions: VecDeque<SessionId>,
    /// Index of the next client moved (to rotate targets and refresh them).
    next_client: usize,
    step: Duration,
    targets: Vec<String>,
    ozones: VecDeque<OzoneAddr>,
    failed: usize,
    status: DrainStatus,
    out: VecDeque<Out>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            phase: Phase::Serving,
            run: 0,
            started: None,
            deadline: None,
            waiting: Waiting::Nothing,
            sessions: VecDeque::new(),
            next_client: 0,
            step: Duration::ZERO,
            targets: Vec::new(),
            ozones: VecDeque::new(),
            failed: 0,
            status: DrainStatus::default(),
            out: VecDeque::new(),
        }
    }
}

impl Drain {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_draining(&self) -> bool {
        self.phase != Phase::Serving
    }

    /// What this node tells the mesh about itself.
    pub fn departure(&self) -> Departure {
        match self.phase {
            Phase::Serving => Departure::Up,
            Phase::Leaving | Phase::Done => Departure::Left,
            _ => Departure::Draining,
        }
    }

    /// The admin API's view.
    pub fn status(&self, now: Instant) -> DrainStatus {
        let mut s = self.status.clone();
        s.draining = self.is_draining();
        s.phase = self.phase;
        s.safe_to_stop = self.phase == Phase::Done;
        s.elapsed_secs = self
            .started
            .map(|t| now.saturating_duration_since(t).as_secs())
            .unwrap_or(0);
        s
    }

    /// The next action for the driver.
    pub fn poll(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    /// When [`Drain::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = match self.waiting {
            Waiting::TargetsRetry { at, .. }
            | Waiting::NextClient { at }
            | Waiting::NextMeasure { at } => Some(at),
            _ => None,
        };
        // The deadline matters while ozones are handed off or queues flushed.
        let deadline = match self.phase {
            Phase::HandingOff | Phase::Flushing => self.deadline,
            _ => None,
        };
        match (timer, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle(&mut self, event: In, now: Instant) {
        match event {
            In::Start { deadline, grace } => self.start(deadline, grace, now),
            In::Undrain => self.undrain(),
            other => {
                if self.answer_run(&other) == Some(self.run) && self.is_draining() {
                    self.on_answer(other, now);
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_draining() {
            return;
        }
        if matches!(self.phase, Phase::HandingOff | Phase::Flushing)
            && self.deadline.is_some_and(|d| now >= d)
        {
            self.time_out();
            return;
        }
        match self.waiting {
            Waiting::TargetsRetry { at, retry_until } if now >= at => {
                self.waiting = Waiting::Targets {
                    retry_until: Some(retry_until),
                };
                self.out.push_back(Out::FindTargets { run: self.run });
            }
            Waiting::NextClient { at } if now >= at => self.next_client_move(),
            Waiting::NextMeasure { at } if now >= at => {
                self.waiting = Waiting::Queues;
                self.out.push_back(Out::MeasureQueues { run: self.run });
            }
            _ => {}
        }
    }

    fn answer_run(&self, e: &In) -> Option<u64> {
        match e {
            In::NeighborsTold { run, .. }
            | In::Sessions { run, .. }
            | In::Targets { run, .. }
            | In::Redirected { run, .. }
            | In::Ozones { run, .. }
            | In::HandedOff { run, .. }
            | In::Queues { run, .. } => Some(*run),
            In::Start { .. } | In::Undrain => None,
        }
    }

    fn start(&mut self, deadline: Duration, grace: Duration, now: Instant) {
        if self.is_draining() {
            // Idempotent: a drain in progress keeps going.
            return;
        }
        self.run += 1;
        self.phase = Phase::MovingClients;
        self.started = Some(now);
        self.deadline = Some(now + deadline);
        self.status = DrainStatus::default();
        self.sessions.clear();
        self.ozones.clear();
        self.targets.clear();
        self.failed = 0;
        self.next_client = 0;
        self.step = grace.min(deadline / 3);
        self.out.push_back(Out::SetReady(false));
        self.out.push_back(Out::TellNeighbors {
            run: self.run,
            departure: Departure::Draining,
        });
        self.waiting = Waiting::Told;
    }

    fn undrain(&mut self) {
        self.run += 1;
        self.phase = Phase::Serving;
        self.started = None;
        self.deadline = None;
        self.status = DrainStatus::default();
        self.waiting = Waiting::Nothing;
        self.out.clear();
        self.out.push_back(Out::SetReady(true));
        self.out.push_back(Out::TellNeighbors {
            run: self.run,
            departure: Departure::Up,
        });
    }

    fn on_answer(&mut self, e: In, now: Instant) {
        let run = self.run;
        match (e, self.waiting) {
            (
                In::NeighborsTold {
                    departure, told, ..
                },
                _,
            ) => {
                self.status.neighbors_told = told;
                match (departure, self.phase) {
                    (Departure::Draining, Phase::MovingClients) => {
                        self.waiting = Waiting::Sessions;
                        self.out.push_back(Out::ListSessions { run });
                    }
                    (Departure::Left, Phase::Leaving) => {
                        self.phase = Phase::Done;
                        self.waiting = Waiting::Nothing;
                        self.out.push_back(Out::Finished(Phase::Done));
                    }
                    _ => {}
                }
            }
            (In::Sessions { sessions, .. }, Waiting::Sessions) => {
                self.status.clients_total = sessions.len();
                if sessions.is_empty() {
                    return self.hand_off();
                }
                // Spread the moves over the grace period (set in `start`).
                self.step /= sessions.len() as u32;
                self.sessions = sessions.into();
                self.waiting = Waiting::Targets {
                    retry_until: Some(now + TARGETS_WAIT.min(self.step_budget())),
                };
                self.out.push_back(Out::FindTargets { run });
            }
            (In::Targets { targets, .. }, Waiting::Targets { retry_until }) => {
                self.targets = targets;
                match retry_until {
                    Some(until) if self.targets.is_empty() && now < until => {
                        self.waiting = Waiting::TargetsRetry {
                            at: (now + TARGETS_RETRY).min(until),
                            retry_until: until,
                        };
                    }
                    _ => self.redirect_one(),
                }
            }
            (In::Redirected { moved, .. }, Waiting::Redirected) => {
                if moved {
                    self.status.clients_moved += 1;
                }
                self.next_client += 1;
                self.waiting = Waiting::NextClient {
                    at: now + self.step,
                };
            }
            (In::Ozones { ozones, .. }, Waiting::Ozones) => {
                self.status.ozones_total = ozones.len();
                self.ozones = ozones.into();
                self.next_ozone(now);
            }
            (In::HandedOff { ok, .. }, Waiting::HandedOff) => {
                if !ok {
                    self.failed += 1;
                }
                self.status.ozones_done += 1;
                self.next_ozone(now);
            }
            (
                In::Queues {
                    queued_bytes,
                    clients_connected,
                    ..
                },
                Waiting::Queues,
            ) => {
                self.status.queued_bytes = queued_bytes;
                self.status.clients_connected = clients_connected;
                if self.deadline.is_some_and(|d| now >= d) {
                    return self.time_out();
                }
                if queued_bytes > 0 {
                    self.waiting = Waiting::NextMeasure {
                        at: now + FLUSH_POLL,
                    };
                } else if self.failed > 0 {
                    self.time_out();
                } else {
                    self.phase = Phase::Leaving;
                    self.waiting = Waiting::Told;
                    // Neighbors hear it directly, the rest of the mesh from the announcement,
                    // before anyone is told it is safe to stop.
                    self.out.push_back(Out::TellNeighbors {
                        run,
                        departure: Departure::Left,
                    });
                    self.out.push_back(Out::Announce);
                }
            }
            // An answer to a question no longer asked.
            _ => {}
        }
    }

    /// A third of the drain's deadline: the most that waiting for targets may take.
    fn step_budget(&self) -> Duration {
        match (self.started, self.deadline) {
            (Some(s), Some(d)) => d.saturating_duration_since(s) / 3,
            _ => Duration::ZERO,
        }
    }

    fn next_client_move(&mut self) {
        if self.sessions.is_empty() {
            return self.hand_off();
        }
        if self.next_client % TARGETS_REFRESH_EVERY == 0 || self.targets.is_empty() {
            self.waiting = Waiting::Targets { retry_until: None };
            self.out.push_back(Out::FindTargets { run: self.run });
        } else {
            self.redirect_one();
        }
    }

    fn redirect_one(&mut self) {
        let Some(session) = self.sessions.pop_front() else {
            return self.hand_off();
        };
        if self.targets.is_empty() {
            self.status.detail = Some("no other serving node to move clients to".into());
            self.sessions.clear();
            return self.hand_off();
        }
        // Rotate the list so that clients spread over the other nodes.
        let k = self.next_client % self.targets.len();
        let targets: Vec<String> = self.targets[k..]
            .iter()
            .chain(&self.targets[..k])
            .take(MAX_REDIRECT_TARGETS)
            .cloned()
            .collect();
        self.waiting = Waiting::Redirected;
        self.out.push_back(Out::Redirect {
            run: self.run,
            session,
            targets,
        });
    }

    fn hand_off(&mut self) {
        self.phase = Phase::HandingOff;
        self.waiting = Waiting::Ozones;
        self.out.push_back(Out::ListOzones { run: self.run });
    }

    fn next_ozone(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            return self.time_out();
        }
        match self.ozones.pop_front() {
            Some(addr) => {
                self.waiting = Waiting::HandedOff;
                self.out.push_back(Out::HandOff {
                    run: self.run,
                    addr,
                });
            }
            None => {
                self.phase = Phase::Flushing;
                self.waiting = Waiting::Queues;
                self.out.push_back(Out::MeasureQueues { run: self.run });
            }
        }
    }

    fn time_out(&mut self) {
        let s = &mut self.status;
        let not_done = self.failed + s.ozones_total.saturating_sub(s.ozones_done);
        s.detail = Some(format!(
            "{not_done} of {} ozones not handed off, {} bytes still queued",
            s.ozones_total, s.queued_bytes
        ));
        self.phase = Phase::TimedOut;
        self.waiting = Waiting::Nothing;
        self.ozones.clear();
        self.out.push_back(Out::Finished(Phase::TimedOut));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(6);

    fn drain_all(d: &mut Drain) -> Vec<Out> {
        std::iter::from_fn(|| d.poll()).collect()
    }

    fn addr(i: u8) -> OzoneAddr {
        OzoneAddr([i; 32])
    }

    /// Start a drain and answer until it asks for the sessions.
    fn started(t0: Instant) -> Drain {
        let mut d = Drain::default();
        d.handle(
            In::Start {
                deadline: DEADLINE,
                grace: GRACE,
            },
            t0,
        );
        assert_eq!(
            drain_all(&mut d),
            vec![
                Out::SetReady(false),
                Out::TellNeighbors {
                    run: 1,
                    departure: Departure::Draining
                }
            ]
        );
        assert_eq!(d.departure(), Departure::Draining);
        d.handle(
            In::NeighborsTold {
                run: 1,
                departure: Departure::Draining,
                told: 2,
            },
            t0,
        );
        assert_eq!(drain_all(&mut d), vec![Out::ListSessions { run: 1 }]);
        d
    }

    /// A started drain told it has no client sessions.
    fn without_sessions(t0: Instant) -> Drain {
        let mut d = started(t0);
        d.handle(
            In::Sessions {
                run: 1,
                sessions: vec![],
            },
            t0,
        );
        d
    }

    /// A started drain with no client sessions, now handing off `ozones`.
    fn handing_off(t0: Instant, ozones: Vec<OzoneAddr>) -> Drain {
        let mut d = without_sessions(t0);
        d.handle(In::Ozones { run: 1, ozones }, t0);
        d
    }

    #[test]
    fn a_drain_moves_clients_hands_off_flushes_and_leaves() {
        let t0 = Instant::now();
        let mut d = started(t0);
        d.handle(
            In::Sessions {
                run: 1,
                sessions: vec![10, 11],
            },
            t0,
        );
        assert_eq!(drain_all(&mut d), vec![Out::FindTargets { run: 1 }]);
        let targets = vec!["a:1#x".to_string(), "b:1#y".to_string()];
        d.handle(
            In::Targets {
                run: 1,
                targets: targets.clone(),
            },
            t0,
        );
        assert_eq!(
            drain_all(&mut d),
            vec![Out::Redirect {
                run: 1,
                session: 10,
                targets: targets.clone()
            }]
        );
        d.handle(
            In::Redirected {
                run: 1,
                moved: true,
            },
            t0,
        );
        // The second client waits for its share of the grace period (6 s / 2 clients).
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        d.handle_timeout(t0 + Duration::from_secs(2));
        assert!(drain_all(&mut d).is_empty());
        let t1 = t0 + Duration::from_secs(3);
        d.handle_timeout(t1);
        // Rotated: the second client goes to the second target first.
        assert_eq!(
            drain_all(&mut d),
            vec![Out::Redirect {
                run: 1,
                session: 11,
                targets: vec![targets[1].clone(), targets[0].clone()]
            }]
        );
        d.handle(
            In::Redirected {
                run: 1,
                moved: false,
            },
            t1,
        );
        d.handle_timeout(t1 + Duration::from_secs(3));
        assert_eq!(drain_all(&mut d), vec![Out::ListOzones { run: 1 }]);
        assert_eq!(d.phase(), Phase::HandingOff);
        let t2 = t1 + Duration::from_secs(3);
        d.handle(
            In::Ozones {
                run: 1,
                ozones: vec![addr(1), addr(2)],
            },
            t2,
        );
        assert_eq!(
            drain_all(&mut d),
            vec![Out::HandOff {
                run: 1,
                addr: addr(1)
            }]
        );
        d.handle(In::HandedOff { run: 1, ok: true }, t2);
        d.handle(In::HandedOff { run: 1, ok: true }, t2);
        assert_eq!(
            drain_all(&mut d),
            vec![
                Out::HandOff {
                    run: 1,
                    addr: addr(2)
                },
                Out::MeasureQueues { run: 1 }
            ]
        );
        assert_eq!(d.phase(), Phase::Flushing);
        d.handle(
            In::Queues {
                run: 1,
                queued_bytes: 500,
                clients_connected: 1,
            },
            t2,
        );
        assert!(drain_all(&mut d).is_empty());
        d.handle_timeout(t2 + FLUSH_POLL);
        assert_eq!(drain_all(&mut d), vec![Out::MeasureQueues { run: 1 }]);
        d.handle(
            In::Queues {
                run: 1,
                queued_bytes: 0,
                clients_connected: 0,
            },
            t2 + FLUSH_POLL,
        );
        assert_eq!(
            drain_all(&mut d),
            vec![
                Out::TellNeighbors {
                    run: 1,
                    departure: Departure::Left
                },
                Out::Announce
            ]
        );
        assert_eq!(d.phase(), Phase::Leaving);
        assert_eq!(d.departure(), Departure::Left);
        assert!(!d.status(t2).safe_to_stop);
        d.handle(
            In::NeighborsTold {
                run: 1,
                departure: Departure::Left,
                told: 2,
            },
            t2,
        );
        assert_eq!(drain_all(&mut d), vec![Out::Finished(Phase::Done)]);
        let st = d.status(t0 + Duration::from_secs(10));
        assert!(st.draining && st.safe_to_stop);
        assert_eq!(st.phase, Phase::Done);
        assert_eq!((st.clients_total, st.clients_moved), (2, 1));
        assert_eq!((st.ozones_total, st.ozones_done), (2, 2));
        assert_eq!(st.elapsed_secs, 10);
        assert_eq!(st.detail, None);
    }

    #[test]
    fn an_owner_that_never_answers_ends_in_timed_out_at_the_deadline() {
        let t0 = Instant::now();
        let mut d = handing_off(t0, vec![addr(1), addr(2), addr(3)]);
        drain_all(&mut d);
        d.handle(In::HandedOff { run: 1, ok: true }, t0);
        drain_all(&mut d);
        // The hand-off of the second ozone never answers.
        assert_eq!(d.poll_timeout(), Some(t0 + DEADLINE));
        d.handle_timeout(t0 + DEADLINE - Duration::from_millis(1));
        assert_eq!(d.phase(), Phase::HandingOff);
        d.handle_timeout(t0 + DEADLINE);
        assert_eq!(drain_all(&mut d), vec![Out::Finished(Phase::TimedOut)]);
        let st = d.status(t0 + DEADLINE);
        assert_eq!(st.phase, Phase::TimedOut);
        assert!(!st.safe_to_stop);
        assert_eq!(
            st.detail.as_deref(),
            Some("2 of 3 ozones not handed off, 0 bytes still queued")
        );
        // Its late answer changes nothing.
        d.handle(In::HandedOff { run: 1, ok: true }, t0 + DEADLINE);
        assert!(drain_all(&mut d).is_empty());
        assert_eq!(d.phase(), Phase::TimedOut);
    }

    #[test]
    fn a_failed_hand_off_is_not_safe_to_stop() {
        let t0 = Instant::now();
        let mut d = handing_off(t0, vec![addr(1)]);
        d.handle(In::HandedOff { run: 1, ok: false }, t0);
        d.handle(
            In::Queues {
                run: 1,
                queued_bytes: 0,
                clients_connected: 0,
            },
            t0,
        );
        assert_eq!(d.phase(), Phase::TimedOut);
        assert_eq!(
            d.status(t0).detail.as_deref(),
            Some("1 of 1 ozones not handed off, 0 bytes still queued")
        );
    }

    #[test]
    fn with_no_serving_node_known_clients_stay_and_the_drain_goes_on() {
        let t0 = Instant::now();
        let mut d = started(t0);
        d.handle(
            In::Sessions {
                run: 1,
                sessions: vec![7],
            },
            t0,
        );
        drain_all(&mut d);
        // It asks again every 200 ms for TARGETS_WAIT, then gives up on moving clients.
        let mut now = t0;
        let mut asked = 0;
        loop {
            d.handle(
                In::Targets {
                    run: 1,
                    targets: vec![],
                },
                now,
            );
            let outs = drain_all(&mut d);
            if outs == vec![Out::ListOzones { run: 1 }] {
                break;
            }
            assert!(outs.is_empty(), "{outs:?}");
            now = d.poll_timeout().expect("a retry timer");
            d.handle_timeout(now);
            assert_eq!(drain_all(&mut d), vec![Out::FindTargets { run: 1 }]);
            asked += 1;
        }
        assert_eq!(asked, 25, "5 s / 200 ms");
        assert_eq!(now, t0 + TARGETS_WAIT);
        assert_eq!(d.phase(), Phase::HandingOff);
        let st = d.status(now);
        assert_eq!(
            st.detail.as_deref(),
            Some("no other serving node to move clients to")
        );
        assert_eq!(st.clients_moved, 0);
    }

    #[test]
    fn undrain_mid_way_serves_again_and_ignores_the_old_runs_answers() {
        let t0 = Instant::now();
        let mut d = without_sessions(t0);
        drain_all(&mut d);
        d.handle(In::Undrain, t0);
        assert_eq!(
            drain_all(&mut d),
            vec![
                Out::SetReady(true),
                Out::TellNeighbors {
                    run: 2,
                    departure: Departure::Up
                }
            ]
        );
        assert_eq!(d.departure(), Departure::Up);
        d.handle(
            In::Ozones {
                run: 1,
                ozones: vec![addr(1)],
            },
            t0,
        );
        assert!(drain_all(&mut d).is_empty());
        assert_eq!(d.status(t0).phase, Phase::Serving);
        assert!(!d.status(t0).draining);
        // A new drain is run 3; answers of run 1 still change nothing.
        d.handle(
            In::Start {
                deadline: DEADLINE,
                grace: GRACE,
            },
            t0,
        );
        drain_all(&mut d);
        d.handle(
            In::NeighborsTold {
                run: 1,
                departure: Departure::Draining,
                told: 9,
            },
            t0,
        );
        assert!(drain_all(&mut d).is_empty());
        assert_eq!(d.status(t0).neighbors_told, 0);
    }

    #[test]
    fn starting_twice_keeps_the_drain_in_progress() {
        let t0 = Instant::now();
        let mut d = started(t0);
        d.handle(
            In::Start {
                deadline: Duration::from_secs(1),
                grace: GRACE,
            },
            t0,
        );
        assert!(drain_all(&mut d).is_empty());
        assert_eq!(d.phase(), Phase::MovingClients);
    }

    #[test]
    fn phases_serialise_as_the_documented_strings() {
        for p in [
            Phase::Serving,
            Phase::MovingClients,
            Phase::HandingOff,
            Phase::Flushing,
            Phase::Leaving,
            Phase::Done,
            Phase::TimedOut,
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.label()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), p);
        }
    }
}
