//! Membership and failure detection: what this node knows of each neighbor as a member of the
//! mesh, and of its own cluster (docs/MEMBERSHIP.md).
//!
//! A [`Member`] is a small machine fed by the peer layer: `Connected` (a hello arrived),
//! `Heard` (a heartbeat arrived), `Disconnected` (its last connection ended), `Departed` (it
//! said it is draining, left, or serves again) and `Paused` (this node itself did not run for
//! a while). Its [`State`] — alive, suspect, draining, left or failed — is the one
//! classification every part of the node uses: where ozone copies may go
//! ([`State::in_service`]), where clients are sent ([`State::takes_clients`]), the gauges.
//!
//! **Failure detection.** A member that speaks protocol ≥ `since::HEARTBEAT` sends a heartbeat
//! datagram every [`Detector::heartbeat`] on each connection. After [`Detector::suspect_after`]
//! without one it is *suspect* (still in the placement pool, no longer a redirect target); a
//! heartbeat clears the suspicion. After [`Detector::fail_after`] it is *failed*: the driver
//! closes its connections ([`Change::Failed`]) and dials it again with back-off. Heartbeats are
//! unreliable datagrams, so loss shows as missing heartbeats, never as delay; the thresholds
//! are many heartbeat periods long, so loss alone does not accuse anyone (at 10 % loss, twelve
//! in a row are lost with probability 10⁻¹²). Time this node itself spent not running (a
//! stalled process, a suspended VM) is not held against anyone: the driver reports it as
//! `Paused` and every silence is shortened by it (Lifeguard's "local health" idea). Older
//! members send no heartbeats and are judged by their connections (QUIC's idle timeout).
//!
//! A failed member is *confirmed* failed after [`CONFIRM`] without reconnecting
//! ([`Change::ConfirmedFailed`], one warning); a flapping link produces one `Down`/`Up` pair
//! per flap and no confirmations; flaps are counted.
//!
//! [`pool`] and [`counts`] are the cluster-level queries over many members.

use std::time::{Duration, Instant};

use crate::identity::NodeId;
use crate::wire::{since, Departure};

/// A failed member is confirmed failed (one warning) after this long without a new connection.
pub const CONFIRM: Duration = Duration::from_secs(30);

/// The failure detector's timing (`peer.heartbeat_ms`, `peer.suspect_ms`, `peer.fail_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detector {
    /// How often each side sends a heartbeat on each connection.
    pub heartbeat: Duration,
    /// Silence after which a member is suspect.
    pub suspect_after: Duration,
    /// Silence after which a member is failed (its connections are closed).
    pub fail_after: Duration,
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            heartbeat: Duration::from_millis(100),
            suspect_after: Duration::from_millis(500),
            fail_after: Duration::from_millis(1200),
        }
    }
}

impl Detector {
    /// Why these timings cannot work, if they cannot: a suspicion needs several missed
    /// heartbeats, a failure more than a suspicion.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat < Duration::from_millis(10) || self.heartbeat > Duration::from_secs(10) {
            return Err("heartbeat_ms: between 10 and 10000".into());
        }
        if self.suspect_after < self.heartbeat * 3 {
            return Err(format!(
                "suspect_ms: at least 3 heartbeats ({} ms)",
                (self.heartbeat * 3).as_millis()
            ));
        }
        if self.fail_after <= self.suspect_after || self.fail_after > Duration::from_secs(600) {
            return Err("fail_ms: more than suspect_ms and at most 600000".into());
        }
        Ok(())
    }
}

/// A member's state, as the node's gauges and placement see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Alive,
    Suspect,
    Draining,
    Left,
    Failed,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Alive,
        State::Suspect,
        State::Draining,
        State::Left,
        State::Failed,
    ];

    /// The label of `echomesh_cluster_members{state}`.
    pub fn label(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Draining => "draining",
            State::Left => "left",
            State::Failed => "failed",
        }
    }

    /// Up and serving: new ozone copies may be placed on it. A suspect stays in the pool until
    /// it is failed, so that placement does not move copies back and forth on a lossy link.
    pub fn in_service(self) -> bool {
        matches!(self, State::Alive | State::Suspect)
    }

    /// Clients may be sent to it (a redirect target): alive, not merely not yet failed.
    pub fn takes_clients(self) -> bool {
        self == State::Alive
    }

    /// This node's own state, from what it tells the mesh.
    pub fn of_self(d: Departure) -> State {
        match d {
            Departure::Up => State::Alive,
            Departure::Draining => State::Draining,
            Departure::Left => State::Left,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection is up and its hello said this. `first`: no other connection was up.
    Connected {
        cluster: String,
        protocol: u16,
        first: bool,
    },
    /// A heartbeat arrived (on any of its connections).
    Heard,
    /// Its last connection ended.
    Disconnected,
    /// It told us its state.
    Departed(Departure),
    /// This node itself did not run for this long (its timers fired this late): that time is
    /// no evidence against anyone.
    Paused(Duration),
}

/// What an event or a timer changed, for the driver to act on (and log and count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Up,
    /// Its last connection ended.
    Down,
    /// No heartbeat for this long: suspect.
    Suspected {
        silent: Duration,
    },
    /// A suspect was heard again.
    Cleared,
    /// No heartbeat for this long: failed. The driver closes its connections.
    Failed {
        silent: Duration,
    },
    /// Failed for the whole confirmation period.
    ConfirmedFailed,
    Departed(Departure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Never connected.
    Never,
    Up {
        last_heard: Instant,
        suspect: bool,
    },
    /// Down since; `confirmed` once the confirmation period passed.
    Down {
        since: Instant,
        confirmed: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Member {
    /// The cluster named in its last hello (None before the first connection).
    cluster: Option<String>,
    /// Protocol version from its last hello (0 before the first connection).
    protocol: u16,
    departure: Departure,
    link: Link,
    flaps: u32,
    suspicions: u32,
    failures: u32,
    detector: Detector,
    confirm: Duration,
    /// When [`Member::state`] last changed.
    state_since: Instant,
}

impl Member {
    pub fn new(detector: Detector, confirm: Duration, now: Instant) -> Self {
        Member {
            cluster: None,
            protocol: 0,
            departure: Departure::Up,
            link: Link::Never,
            flaps: 0,
            suspicions: 0,
            failures: 0,
            detector,
            confirm,
            state_since: now,
        }
    }

    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    pub fn protocol(&self) -> u16 {
        self.protocol
    }

    pub fn departure(&self) -> Departure {
        self.departure
    }

    /// Its link is up (some connection is, and the detector has not failed it).
    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// It sends heartbeats, so the detector judges it (else only its connections do).
    pub fn sends_heartbeats(&self) -> bool {
        self.protocol >= since::HEARTBEAT
    }

    /// Times its link came back after going down.
    pub fn flaps(&self) -> u32 {
        self.flaps
    }

    /// Times it was suspected, and failed by the detector.
    pub fn suspicions(&self) -> u32 {
        self.suspicions
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the last heartbeat (or the connection) was heard, while the link is up.
    pub fn last_heard(&self) -> Option<Instant> {
        match self.link {
            Link::Up { last_heard, .. } => Some(last_heard),
            _ => None,
        }
    }

    /// When [`Member::state`] last changed.
    pub fn state_since(&self) -> Instant {
        self.state_since
    }

    /// Failed and not back within the confirmation period.
    pub fn is_confirmed_failed(&self) -> bool {
        matches!(
            self.link,
            Link::Down {
                confirmed: true,
                ..
            }
        )
    }

    pub fn state(&self) -> State {
        match (self.link, self.departure) {
            (_, Departure::Left) => State::Left,
            (Link::Up { .. }, Departure::Draining) => State::Draining,
            (Link::Up { suspect: true, .. }, Departure::Up) => State::Suspect,
            (Link::Up { .. }, Departure::Up) => State::Alive,
            (Link::Never | Link::Down { .. }, _) => State::Failed,
        }
    }

    pub fn handle(&mut self, e: Event, now: Instant) -> Option<Change> {
        let before = self.state();
        let change = self.apply(e, now);
        if self.state() != before {
            self.state_since = now;
        }
        change
    }

    fn apply(&mut self, e: Event, now: Instant) -> Option<Change> {
        match e {
            Event::Connected {
                cluster,
                protocol,
                first,
            } => {
                self.cluster = Some(cluster);
                self.protocol = protocol;
                // A first connection (after none) means it serves again unless it says
                // otherwise (a draining node repeats its departure on every connection). An
                // extra connection comes from the same process: what it told us stands.
                if first {
                    self.departure = Departure::Up;
                }
                let up = Link::Up {
                    last_heard: now,
                    suspect: false,
                };
                match self.link {
                    Link::Up { .. } => None,
                    Link::Down { .. } => {
                        self.flaps += 1;
                        self.link = up;
                        Some(Change::Up)
                    }
                    Link::Never => {
                        self.link = up;
                        Some(Change::Up)
                    }
                }
            }
            Event::Heard => match self.link {
                Link::Up { suspect, .. } => {
                    self.link = Link::Up {
                        last_heard: now,
                        suspect: false,
                    };
                    suspect.then_some(Change::Cleared)
                }
                // A late heartbeat of a connection the detector gave up on changes nothing.
                _ => None,
            },
            Event::Disconnected => match self.link {
                Link::Up { .. } => {
                    self.link = Link::Down {
                        since: now,
                        confirmed: false,
                    };
                    Some(Change::Down)
                }
                _ => None,
            },
            Event::Departed(d) if d != self.departure => {
                self.departure = d;
                Some(Change::Departed(d))
            }
            Event::Departed(_) => None,
            Event::Paused(d) => {
                if let Link::Up {
                    last_heard,
                    suspect,
                } = self.link
                {
                    self.link = Link::Up {
                        last_heard: (last_heard + d).min(now),
                        suspect,
                    };
                }
                None
            }
        }
    }

    /// When [`Member::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Up {
                last_heard,
                suspect,
            } if self.sends_heartbeats() => Some(
                last_heard
                    + if suspect {
                        self.detector.fail_after
                    } else {
                        self.detector.suspect_after
                    },
            ),
            Link::Down {
                since,
                confirmed: false,
            } => Some(since + self.confirm),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<Change> {
        let before = self.state();
        let change = self.timeout(now);
        if self.state() != before {
            self.state_since = now;
        }
        change
    }

    fn timeout(&mut self, now: Instant) -> Option<Change> {
        match self.link {
            Link::Up {
                last_heard,
                suspect,
            } if self.sends_heartbeats() => {
                let silent = now.saturating_duration_since(last_heard);
                if silent >= self.detector.fail_after {
                    self.failures += 1;
                    self.link = Link::Down {
                        since: now,
                        confirmed: false,
                    };
                    Some(Change::Failed { silent })
                } else if silent >= self.detector.suspect_after && !suspect {
                    self.suspicions += 1;
                    self.link = Link::Up {
                        last_heard,
                        suspect: true,
                    };
                    Some(Change::Suspected { silent })
                } else {
                    None
                }
            }
            Link::Down {
                since,
                confirmed: false,
            } if now >= since + self.confirm => {
                self.link = Link::Down {
                    since,
                    confirmed: true,
                };
                Some(Change::ConfirmedFailed)
            }
            _ => None,
        }
    }
}

/// The members of `cluster` among `members`, and where new ozone copies may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Members known (this node included), whatever their state.
    pub known: usize,
    /// Members with a live link (not this node).
    pub up: Vec<NodeId>,
    /// Members in service, this node included when it is.
    pub pool: Vec<NodeId>,
}

/// The cluster as `me` (in state `me_state`) sees it from its neighbors' member records.
pub fn pool<'a>(
    me: NodeId,
    me_state: State,
    cluster: &str,
    members: impl IntoIterator<Item = (NodeId, &'a Member)>,
) -> ClusterView {
    let mut v = ClusterView {
        known: 1,
        up: Vec::new(),
        pool: Vec::new(),
    };
    for (id, m) in members {
        if m.cluster() != Some(cluster) {
            continue;
        }
        v.known += 1;
        if m.is_up() {
            v.up.push(id);
        }
        if m.state().in_service() {
            v.pool.push(id);
        }
    }
    // A draining node places nothing on itself.
    if me_state.in_service() {
        v.pool.push(me);
    }
    v
}

/// Cluster members by state, this node included (the `echomesh_cluster_members` gauge).
pub fn counts<'a>(
    me_state: State,
    cluster: &str,
    members: impl IntoIterator<Item = &'a Member>,
) -> [(State, i64); 5] {
    let mut out = State::ALL.map(|s| (s, i64::from(s == me_state)));
    for m in members {
        if m.cluster() == Some(cluster) {
            let st = m.state();
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == st) {
                slot.1 += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(30);

    fn hello(first: bool) -> Event {
        Event::Connected {
            cluster: "c".into(),
            protocol: 3,
            first,
        }
    }

    #[test]
    fn a_new_member_is_failed_until_it_connects_then_alive() {
        let t = Instant::now();
        let mut m = Member::new(Detector::default(), S, t);
        assert_eq!(m.state(), State::Failed);
        assert_eq!(m.cluster(), None);
        assert_eq!(m.handle(hello(true), t), Some(Change::Up));
        assert_eq!(m.state(), State::Alive);
        assert_eq!((m.cluster(), m.protocol()), (Some("c"), 3));
        assert!(m.state().in_service());
        // A second connection changes nothing.
        assert_eq!(m.handle(hello(false), t), None);
    }

    #[test]
    fn a_peer_that_never_answers_again_is_confirmed_failed_after_the_confirmation_period() {
        let t0 = Instant::now();
        let mut m = Member::new(Detector::default(), S, t0);
        m.handle(hello(true), t0);
        assert_eq!(m.handle(Event::Disconnected, t0), Some(Change::Down));
        assert_eq!(
            m.state(),
            State::Failed,
            "nothing is placed on it meanwhile"
        );
        assert!(!m.is_confirmed_failed());
        assert_eq!(m.poll_timeout(), Some(t0 + S));
        assert_eq!(m.handle_timeout(t0 + S - Duration::from_millis(1)), None);
        assert_eq!(m.handle_timeout(t0 + S), Some(Change::ConfirmedFailed));
        assert!(m.is_confirmed_failed());
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(m.handle_timeout(t0 + S * 2), None, "reported once");
    }

    #[test]
    fn a_flapping_member_is_never_confirmed_failed_and_its_flaps_are_counted() {
        let t0 = Instant::now();
        let mut m = Member::new(Detector::default(), S, t0);
        m.handle(hello(true), t0);
        let mut now = t0;
        for _ in 0..10 {
            now += Duration::from_secs(5);
            assert_eq!(m.handle(Event::Disconnected, now), Some(Change::Down));
            assert_eq!(m.handle_timeout(now + S / 2), None);
            now += Duration::from_secs(5);
            assert_eq!(m.handle(hello(true), now), Some(Change::Up));
            assert_eq!(m.poll_timeout(), None);
        }
        assert_eq!(m.flaps(), 10);
        assert!(!m.is_confirmed_failed());
        assert_eq!(m.state(), State::Alive);
    }

    #[test]
    fn departures_set_the_state_and_a_new_first_connection_serves_again() {
        let t = Instant::now();
        let mut m = Member::new(Detector::default(), S, t);
        m.handle(hello(true), t);
        assert_eq!(
            m.handle(Event::Departed(Departure::Draining), t),
            Some(Change::Departed(Departure::Draining))
        );
        assert_eq!(m.state(), State::Draining);
        assert!(!m.state().in_service());
        // An extra connection from the same (draining) process keeps what it said.
        m.handle(hello(false), t);
        assert_eq!(m.state(), State::Draining);
        m.handle(Event::Departed(Departure::Left), t);
        m.handle(Event::Disconnected, t);
        assert_eq!(m.state(), State::Left, "a node that left is not failed");
        // Restarted: its first connection means it serves again.
        m.handle(hello(true), t);
        assert_eq!(m.state(), State::Alive);
        assert_eq!(m.handle(Event::Departed(Departure::Up), t), None);
    }

    #[test]
    fn the_pool_holds_members_in_service_of_this_cluster_and_this_node_unless_draining() {
        let t = Instant::now();
        let id = |i: u8| NodeId([i; 32]);
        let mut alive = Member::new(Detector::default(), S, t);
        alive.handle(hello(true), t);
        let mut draining = alive.clone();
        draining.handle(Event::Departed(Departure::Draining), t);
        let mut down = alive.clone();
        down.handle(Event::Disconnected, t);
        let mut other = Member::new(Detector::default(), S, t);
        other.handle(
            Event::Connected {
                cluster: "elsewhere".into(),
                protocol: 3,
                first: true,
            },
            t,
        );
        let members = [
            (id(1), &alive),
            (id(2), &draining),
            (id(3), &down),
            (id(4), &other),
        ];
        let v = pool(id(0), State::Alive, "c", members);
        assert_eq!(v.known, 4);
        assert_eq!(v.up, vec![id(1), id(2)]);
        assert_eq!(v.pool, vec![id(1), id(0)]);
        let v = pool(id(0), State::Draining, "c", members);
        assert_eq!(v.pool, vec![id(1)]);
        let c = counts(State::Alive, "c", members.iter().map(|(_, m)| *m));
        assert_eq!(
            c,
            [
                (State::Alive, 2),
                (State::Suspect, 0),
                (State::Draining, 1),
                (State::Left, 0),
                (State::Failed, 1)
            ]
        );
    }

    fn hello_v(protocol: u16) -> Event {
        Event::Connected {
            cluster: "c".into(),
            protocol,
            first: true,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn silence_makes_a_member_suspect_then_failed_and_a_heartbeat_clears_a_suspicion() {
        let t0 = Instant::now();
        let d = Detector::default();
        let mut m = Member::new(d, S, t0);
        m.handle(hello_v(since::HEARTBEAT), t0);
        assert!(m.sends_heartbeats());
        // Heartbeats every 100 ms: nothing happens, whenever the timer runs.
        let mut now = t0;
        for _ in 0..50 {
            now += d.heartbeat;
            m.handle(Event::Heard, now);
            assert_eq!(m.handle_timeout(now + d.heartbeat - MS), None);
        }
        assert_eq!(m.poll_timeout(), Some(now + d.suspect_after));
        assert_eq!(m.handle_timeout(now + d.suspect_after - MS), None);
        let at = now + d.suspect_after;
        assert_eq!(
            m.handle_timeout(at),
            Some(Change::Suspected {
                silent: d.suspect_after
            })
        );
        assert_eq!(m.state(), State::Suspect);
        assert_eq!(m.state_since(), at);
        assert!(m.state().in_service() && !m.state().takes_clients());
        assert_eq!(m.handle_timeout(at + MS), None, "suspected once");
        assert_eq!(m.poll_timeout(), Some(now + d.fail_after));
        // Heard again: alive.
        assert_eq!(m.handle(Event::Heard, at + 10 * MS), Some(Change::Cleared));
        assert_eq!(m.state(), State::Alive);
        now = at + 10 * MS;
        // Silent for good: suspect, then failed, and the link is down at once.
        m.handle_timeout(now + d.suspect_after);
        let failed_at = now + d.fail_after;
        assert_eq!(
            m.handle_timeout(failed_at),
            Some(Change::Failed {
                silent: d.fail_after
            })
        );
        assert_eq!(m.state(), State::Failed);
        assert!(!m.is_up() && !m.state().in_service());
        assert_eq!((m.suspicions(), m.failures()), (2, 1));
        // The connections closing and late heartbeats change nothing more.
        assert_eq!(m.handle(Event::Heard, failed_at + MS), None);
        assert_eq!(m.handle(Event::Disconnected, failed_at + MS), None);
        assert_eq!(m.poll_timeout(), Some(failed_at + S));
        // Dialed again: alive, one flap.
        assert_eq!(
            m.handle(hello_v(since::HEARTBEAT), failed_at + S / 2),
            Some(Change::Up)
        );
        assert_eq!((m.state(), m.flaps()), (State::Alive, 1));
    }

    #[test]
    fn time_this_node_did_not_run_is_not_held_against_anyone() {
        let t0 = Instant::now();
        let d = Detector::default();
        let mut m = Member::new(d, S, t0);
        m.handle(hello_v(since::HEARTBEAT), t0);
        // This node stalled for 2 s right after the last heartbeat; its timer runs late.
        let late = t0 + 2000 * MS;
        m.handle(Event::Paused(1950 * MS), late);
        assert_eq!(m.handle_timeout(late), None);
        assert_eq!(m.last_heard(), Some(t0 + 1950 * MS));
        // A pause is capped at now: it never makes a member heard in the future.
        m.handle(Event::Paused(S), late);
        assert_eq!(m.last_heard(), Some(late));
    }

    #[test]
    fn a_member_without_heartbeats_is_judged_by_its_connection_only() {
        let t0 = Instant::now();
        let mut m = Member::new(Detector::default(), S, t0);
        m.handle(hello_v(since::HEARTBEAT - 1), t0);
        assert!(!m.sends_heartbeats());
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(m.handle_timeout(t0 + S), None);
        assert_eq!(m.state(), State::Alive);
    }

    #[test]
    fn a_draining_member_stays_draining_while_suspect() {
        let t0 = Instant::now();
        let d = Detector::default();
        let mut m = Member::new(d, S, t0);
        m.handle(hello_v(since::HEARTBEAT), t0);
        m.handle(Event::Departed(Departure::Draining), t0);
        assert!(matches!(
            m.handle_timeout(t0 + d.suspect_after),
            Some(Change::Suspected { .. })
        ));
        assert_eq!(m.state(), State::Draining);
    }

    #[test]
    fn detector_timings_are_checked() {
        assert!(Detector::default().check().is_ok());
        let dflt = Detector::default();
        let d = Detector {
            suspect_after: dflt.heartbeat * 2,
            ..dflt
        };
        assert!(d.check().unwrap_err().contains("suspect_ms"));
        let d = Detector {
            fail_after: dflt.suspect_after,
            ..dflt
        };
        assert!(d.check().unwrap_err().contains("fail_ms"));
        let d = Detector {
            heartbeat: MS,
            ..dflt
        };
        assert!(d.check().unwrap_err().contains("heartbeat_ms"));
    }
}
