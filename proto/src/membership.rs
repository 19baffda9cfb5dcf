//! Membership and failure detection: what this node knows of each neighbor as a member of the
//! mesh, and of its own cluster.
//!
//! A [`Member`] is a small machine fed by the peer layer: `Connected` (a hello arrived),
//! `Disconnected` (its last connection ended: QUIC's idle timeout is the failure detector) and
//! `Departed` (it said it is draining, left, or serves again). Its [`State`] — alive, draining,
//! left or failed — is the one classification every part of the node uses: where ozone copies
//! may go ([`State::in_service`]), the cluster gauges, redirect targets.
//!
//! A member that loses its link is failed for placement at once (nothing may be written to a
//! node that cannot be reached), but it is only *confirmed* failed after a suspicion period
//! without reconnecting ([`Member::poll_timeout`] / [`Member::handle_timeout`]), so a flapping
//! link produces one `Down`/`Up` pair per flap and no failure reports; flaps are counted.
//!
//! [`pool`] and [`counts`] are the cluster-level queries over many members.

use std::time::{Duration, Instant};

use crate::identity::NodeId;
use crate::wire::Departure;

/// A down member is confirmed failed after this long without a new connection.
pub const SUSPICION: Duration = Duration::from_secs(30);

/// A member's state, as the node's gauges and placement see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Alive,
    Draining,
    Left,
    Failed,
}

impl State {
    pub const ALL: [State; 4] = [State::Alive, State::Draining, State::Left, State::Failed];

    /// The label of `echomesh_cluster_members{state}`.
    pub fn label(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Draining => "draining",
            State::Left => "left",
            State::Failed => "failed",
        }
    }

    /// Up and serving: new ozone copies may be placed on it, clients sent to it.
    pub fn in_service(self) -> bool {
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
    /// Its last connection ended.
    Disconnected,
    /// It told us its state.
    Departed(Departure),
}

/// What an event or a timer changed, for the driver to act on (and log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Up,
    Down,
    /// Down for the whole suspicion period.
    ConfirmedFailed,
    Departed(Departure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Never connected.
    Never,
    Up,
    /// Down since; `confirmed` once the suspicion period passed.
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
    suspicion: Duration,
}

impl Member {
    pub fn new(suspicion: Duration) -> Self {
        Member {
            cluster: None,
            protocol: 0,
            departure: Departure::Up,
            link: Link::Never,
            flaps: 0,
            suspicion,
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

    pub fn is_up(&self) -> bool {
        self.link == Link::Up
    }

    /// Times its link came back after going down.
    pub fn flaps(&self) -> u32 {
        self.flaps
    }

    /// Down and not back within the suspicion period.
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
            (Link::Up, Departure::Draining) => State::Draining,
            (Link::Up, Departure::Up) => State::Alive,
            (Link::Never | Link::Down { .. }, _) => State::Failed,
        }
    }

    pub fn handle(&mut self, e: Event, now: Instant) -> Option<Change> {
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
                match self.link {
                    Link::Up => None,
                    Link::Down { .. } => {
                        self.flaps += 1;
                        self.link = Link::Up;
                        Some(Change::Up)
                    }
                    Link::Never => {
                        self.link = Link::Up;
                        Some(Change::Up)
                    }
                }
            }
            Event::Disconnected => match self.link {
                Link::Up => {
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
        }
    }

    /// When [`Member::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Down {
                since,
                confirmed: false,
            } => Some(since + self.suspicion),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<Change> {
        match self.link {
            Link::Down {
                since,
                confirmed: false,
            } if now >= since + self.suspicion => {
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
) -> [(State, i64); 4] {
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
        let mut m = Member::new(S);
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
    fn a_peer_that_never_answers_again_is_confirmed_failed_after_the_suspicion_period() {
        let t0 = Instant::now();
        let mut m = Member::new(S);
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
        let mut m = Member::new(S);
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
        let mut m = Member::new(S);
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
        let mut alive = Member::new(S);
        alive.handle(hello(true), t);
        let mut draining = alive.clone();
        draining.handle(Event::Departed(Departure::Draining), t);
        let mut down = alive.clone();
        down.handle(Event::Disconnected, t);
        let mut other = Member::new(S);
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
                (State::Draining, 1),
                (State::Left, 0),
                (State::Failed, 1)
            ]
        );
    }
}
