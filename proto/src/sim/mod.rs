//! A deterministic simulator of a mesh: N nodes, each running the node's own echo engine
//! ([`crate::echo::EchoEngine`], the seen-cache) and broadcast machine ([`crate::broadcast`]),
//! over a simulated network, in one process. Same seed, same output (the event queue breaks
//! ties by insertion order; nothing iterates a hash map).
//!
//! The network model follows what the real transport does. Neighbor links are QUIC streams:
//! a lost datagram is retransmitted after about 1.5 round trips, so loss shows as delay, and
//! the stream stays in order (a late message holds back the ones behind it). A message that
//! needs more than [`MAX_RETRANSMITS`] transmissions stands for sustained loss: the connection
//! dies (what it carried is lost), both ends notice after the failure-detection delay, and the
//! link is dialed again after a back-off; when it is up again each end offers what it accepted
//! since shortly before the link went down (echo repair), and the other pulls what it lacks.
//! Crashed nodes stop; their neighbors notice after the detection delay. A partition cuts
//! every link between two halves for a while, then heals (the links reconnect as above).
//! Per-link latency is fixed per link (uniform in a range) plus jitter.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::broadcast::{Broadcast, BroadcastConfig, Mode, Out, TreeKey};
use crate::echo::{EchoConfig, EchoEngine, EchoMode, EchoPacket, PacketId, Source};

pub mod detect;

/// The simulators' event queue: events in time order (µs since `base`), ties in insertion
/// order, so the same seed replays the same run; slots are reused.
pub(crate) struct Queue<E> {
    base: Instant,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slots: Vec<Option<E>>,
    free: Vec<usize>,
}

impl<E> Queue<E> {
    pub(crate) fn new(base: Instant) -> Self {
        Queue {
            base,
            seq: 0,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Simulated time `us` as an `Instant` for the machines.
    pub(crate) fn at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    /// An `Instant` from a machine as simulated µs, rounded up (a timer must not fire before
    /// it is due).
    pub(crate) fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base)
            .as_nanos()
            .div_ceil(1000) as u64
    }

    pub(crate) fn schedule(&mut self, at: u64, e: E) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(e);
                s
            }
            None => {
                self.slots.push(Some(e));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    /// The next event and its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, E)> {
        while let Some(Reverse((at, _, slot))) = self.heap.pop() {
            if let Some(e) = self.slots[slot].take() {
                self.free.push(slot);
                return Some((at, e));
            }
        }
        None
    }
}

/// Transmissions of one message before its connection is considered dead.
pub const MAX_RETRANSMITS: u32 = 6;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    /// Average links per node (random graph, connected).
    pub degree: usize,
    pub packets: usize,
    /// Datagram loss on every link, percent.
    pub loss_pct: f64,
    /// Nodes that crash during the run, percent (never an origin).
    pub crash_pct: f64,
    /// Cut the mesh in two halves for a while, then heal.
    pub partition: bool,
    pub broadcast: Mode,
    pub seed: u64,
    pub payload_bytes: usize,
    /// One-way latency of a link, uniform in this range, plus up to `jitter_ms`.
    pub latency_ms: (u64, u64),
    pub jitter_ms: u64,
    /// Packets are injected at this rate (packets/s over the whole mesh).
    pub rate: u64,
    /// How long a dead link or node takes to be noticed by its neighbors.
    pub detect_ms: u64,
    /// A dropped connection is dialed again after this long.
    pub redial_ms: u64,
    /// Lazy push: how long an announced packet may take over the tree before it is pulled.
    pub graft_timeout_ms: u64,
}

impl SimConfig {
    pub fn new(nodes: usize, degree: usize, packets: usize, broadcast: Mode, seed: u64) -> Self {
        SimConfig {
            nodes,
            degree,
            packets,
            loss_pct: 0.0,
            crash_pct: 0.0,
            partition: false,
            broadcast,
            seed,
            payload_bytes: 256,
            latency_ms: (5, 40),
            jitter_ms: 5,
            rate: 2_000,
            detect_ms: 1_000,
            redial_ms: 200,
            graft_timeout_ms: BroadcastConfig::new(Mode::Lazy).graft_timeout.as_millis() as u64,
        }
    }
}

/// What a run measured (`echomeshctl sim --json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub nodes: usize,
    pub degree: usize,
    pub packets: usize,
    pub broadcast: Mode,
    pub seed: u64,
    pub loss_pct: f64,
    pub crashed: usize,
    pub partition: bool,
    /// Deliveries / expected deliveries (expected: every node connected to the origin at the
    /// end, among those that did not crash).
    pub delivered_ratio: f64,
    pub expected: u64,
    pub delivered: u64,
    /// Packets received again after their first delivery, per delivery (RMR).
    pub duplicates_per_delivery: f64,
    pub hops_p50: u32,
    pub hops_p99: u32,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Bytes sent per node on average (payloads plus control messages).
    pub bytes_per_node: u64,
    pub grafts: u64,
    pub prunes: u64,
    /// Connections that died of sustained loss and were dialed again.
    pub reconnects: u64,
    /// Simulated time until the last event, seconds.
    pub sim_secs: f64,
}

#[derive(Debug, Clone)]
enum Wire {
    Push {
        id: PacketId,
        hops: u32,
    },
    IHave {
        tree: TreeKey,
        ids: Vec<PacketId>,
        urgent: bool,
    },
    Graft {
        tree: TreeKey,
        ids: Vec<PacketId>,
    },
    Prune {
        tree: TreeKey,
    },
}

impl Wire {
    fn bytes(&self, payload: usize) -> u64 {
        (match self {
            Wire::Push { .. } => payload + 80,
            Wire::IHave { ids, .. } | Wire::Graft { ids, .. } => 16 + 32 * ids.len(),
            Wire::Prune { .. } => 16,
        }) as u64
    }
}

#[derive(Debug)]
enum Event {
    Inject {
        node: usize,
        packet: usize,
    },
    Arrive {
        to: usize,
        from: usize,
        conn: u64,
        wire: Wire,
    },
    Timer {
        node: usize,
    },
    Crash {
        node: usize,
    },
    /// `node` notices that its link to `peer` (connection `conn`) is gone.
    Noticed {
        node: usize,
        peer: usize,
        conn: u64,
    },
    /// The link between `a` and `b` is dialed again.
    Redial {
        a: usize,
        b: usize,
    },
    PartitionStart,
    PartitionHeal,
}

/// One direction of a link.
#[derive(Debug, Clone)]
struct Half {
    peer: usize,
    latency_us: u64,
    /// The stream stays in order: nothing arrives before this.
    last_arrival: u64,
    /// The live connection's number (both directions share it); messages of an older one are
    /// lost. `None`: down.
    conn: Option<u64>,
    /// When it went down (for the repair offer when it comes back).
    down_at: u64,
    /// The connection died but neither end has noticed yet: nothing gets through.
    dying: bool,
}

struct Node {
    engine: EchoEngine,
    bcast: Broadcast<usize>,
    links: Vec<Half>,
    crashed: bool,
    /// Accepted packets (time, id), for repair offers after a reconnection.
    accepted: Vec<(u64, PacketId)>,
    timer_at: Option<u64>,
    bytes_sent: u64,
}

fn packet_id(i: usize) -> PacketId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    id[31] = 0xEC;
    id
}

fn packet_index(id: &PacketId) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    u64::from_le_bytes(b) as usize
}

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    queue: Queue<Event>,
    nodes: Vec<Node>,
    next_conn: u64,
    /// Per packet: origin, injection time, first delivery (time, hops) per node.
    origin: Vec<usize>,
    injected_at: Vec<u64>,
    first: Vec<Vec<(u64, u32)>>,
    duplicates: u64,
    reconnects: u64,
    partition_side: Vec<bool>,
    partitioned: bool,
    /// Per origin: each node's parent in the shortest-latency tree over the whole graph (the
    /// topology map every node has from announcements, with link RTTs).
    spt: std::collections::BTreeMap<usize, Vec<usize>>,
    latency: Vec<Vec<(usize, u64)>>,
}

const NEVER: u64 = u64::MAX;

impl Sim {
    fn at(&self, us: u64) -> Instant {
        self.queue.at(us)
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.queue.schedule(at, e);
    }

    fn link_index(&self, a: usize, b: usize) -> Option<usize> {
        self.nodes[a].links.iter().position(|h| h.peer == b)
    }

    /// Send `wire` from `a` to `b` over their live connection, if any.
    fn send(&mut self, a: usize, b: usize, wire: Wire) {
        let Some(li) = self.link_index(a, b) else {
            return;
        };
        let h = &self.nodes[a].links[li];
        let Some(conn) = h.conn else { return };
        let (latency, dying) = (h.latency_us, h.dying);
        self.nodes[a].bytes_sent += wire.bytes(self.cfg.payload_bytes);
        if dying || self.cut(a, b) {
            return; // lost with the connection; its ends notice after the detection delay
        }
        let p = self.cfg.loss_pct / 100.0;
        let mut delay = latency + self.rng.random_range(0..=self.cfg.jitter_ms * 1000);
        let mut tries = 1;
        while p > 0.0 && self.rng.random_bool(p.min(0.99)) {
            tries += 1;
            // A retransmission after about 1.5 round trips.
            delay += 3 * latency;
            if tries > MAX_RETRANSMITS {
                self.connection_died(a, b, conn);
                return;
            }
        }
        let h = &mut self.nodes[a].links[li];
        let arrive = (self.now + delay).max(h.last_arrival);
        h.last_arrival = arrive;
        self.schedule(
            arrive,
            Event::Arrive {
                to: b,
                from: a,
                conn,
                wire,
            },
        );
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.partitioned && self.partition_side[a] != self.partition_side[b]
    }

    /// The connection between `a` and `b` died: both notice after the detection delay.
    fn connection_died(&mut self, a: usize, b: usize, conn: u64) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(li) = self.link_index(x, y) {
                let h = &mut self.nodes[x].links[li];
                if h.conn == Some(conn) {
                    h.dying = true;
                }
            }
        }
        let at = self.now + self.cfg.detect_ms * 1000;
        self.schedule(
            at,
            Event::Noticed {
                node: a,
                peer: b,
                conn,
            },
        );
        self.schedule(
            at,
            Event::Noticed {
                node: b,
                peer: a,
                conn,
            },
        );
    }

    fn flush(&mut self, n: usize) {
        while let Some(o) = self.nodes[n].bcast.poll_out() {
            match o {
                Out::Push { to, id } => {
                    let idx = packet_index(&id);
                    let hops = self.first[idx][n].1;
                    self.send(n, to, Wire::Push { id, hops: hops + 1 });
                }
                Out::IHave { to, tree, ids } => self.send(
                    n,
                    to,
                    Wire::IHave {
                        tree,
                        ids,
                        urgent: false,
                    },
                ),
                Out::Graft { to, tree, ids } => self.send(n, to, Wire::Graft { tree, ids }),
                Out::Prune { to, tree } => self.send(n, to, Wire::Prune { tree }),
            }
        }
        if let Some(t) = self.nodes[n].bcast.poll_timeout() {
            // Rounded up: a timer must not fire before it is due.
            let us = self.queue.us(t);
            if self.nodes[n].timer_at.is_none_or(|cur| us < cur) {
                self.nodes[n].timer_at = Some(us);
                self.schedule(us, Event::Timer { node: n });
            }
        }
    }

    /// A packet reaches node `n` from `from` (`None`: injected by a client of `n`).
    fn receive(&mut self, n: usize, from: Option<usize>, id: PacketId, hops: u32) {
        let now = self.at(self.now);
        let pkt = EchoPacket {
            id,
            hops_left: 64,
            tag: None,
            payload: Bytes::new(),
        };
        let source = match from {
            Some(_) => Source::Neighbor(EchoMode::Full),
            None => Source::Client,
        };
        let (mut deliver, mut forward) = (Vec::new(), Vec::new());
        let out = self.nodes[n]
            .engine
            .on_batch(source, vec![pkt], now, &mut deliver, &mut forward);
        let idx = packet_index(&id);
        let tree = self.origin[idx] as TreeKey;
        if out.duplicates > 0 {
            if let Some(f) = from {
                self.duplicates += 1;
                self.nodes[n].bcast.on_duplicate(&id, tree, f, now);
            }
        } else {
            self.first[idx][n] = (self.now, hops);
            self.nodes[n].accepted.push((self.now, id));
            let plan = if self.cfg.broadcast == Mode::Lazy {
                let origin = self.origin[idx];
                let parents = spt_of(&mut self.spt, &self.latency, origin);
                let children: std::collections::BTreeSet<usize> = self.nodes[n]
                    .links
                    .iter()
                    .map(|h| h.peer)
                    .filter(|m| parents[*m] == n)
                    .collect();
                Some(children)
            } else {
                None
            };
            self.nodes[n]
                .bcast
                .on_new_planned(id, tree, from, plan.as_ref(), now);
        }
        self.flush(n);
    }

    fn link_up(&mut self, a: usize, b: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        // What the link may have lost: since shortly before it went down, and at least as far
        // back as a neighbor may still have been waiting to pull an announced packet (the
        // longest graft wait). Live nodes offer two idle timeouts (16 s) back.
        let window = 2 * self.cfg.detect_ms * 1000
            + self.nodes[a].bcast.max_graft_timeout().as_micros() as u64;
        for (x, y) in [(a, b), (b, a)] {
            let Some(li) = self.link_index(x, y) else {
                continue;
            };
            let since = self.nodes[x].links[li].down_at.saturating_sub(window);
            let h = &mut self.nodes[x].links[li];
            h.conn = Some(conn);
            h.dying = false;
            h.last_arrival = self.now;
            self.nodes[x].bcast.neighbor_up(y, true);
            // Echo repair: offer what was accepted since shortly before the link went down.
            let ids: Vec<PacketId> = self.nodes[x]
                .accepted
                .iter()
                .filter(|(t, _)| *t >= since)
                .map(|(_, id)| *id)
                .collect();
            // Grouped by tree, a page at a time.
            let mut by_tree: std::collections::BTreeMap<TreeKey, Vec<PacketId>> =
                std::collections::BTreeMap::new();
            for id in ids {
                by_tree
                    .entry(self.origin[packet_index(&id)] as TreeKey)
                    .or_default()
                    .push(id);
            }
            for (tree, ids) in by_tree {
                for chunk in ids.chunks(1024) {
                    self.send(
                        x,
                        y,
                        Wire::IHave {
                            tree,
                            ids: chunk.to_vec(),
                            urgent: true,
                        },
                    );
                }
            }
        }
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::Inject { node, packet } => {
                if self.nodes[node].crashed {
                    return;
                }
                self.injected_at[packet] = self.now;
                self.receive(node, None, packet_id(packet), 0);
            }
            Event::Arrive {
                to,
                from,
                conn,
                wire,
            } => {
                if self.nodes[to].crashed {
                    return;
                }
                let Some(li) = self.link_index(to, from) else {
                    return;
                };
                let h = &self.nodes[to].links[li];
                if h.conn != Some(conn) || h.dying {
                    return; // the connection it travelled on is gone
                }
                let now = self.at(self.now);
                match wire {
                    Wire::Push { id, hops } => self.receive(to, Some(from), id, hops),
                    Wire::IHave { tree, ids, urgent } => {
                        let node = &mut self.nodes[to];
                        let engine = &node.engine;
                        node.bcast
                            .on_ihave(from, tree, &ids, |i| engine.has_seen(i), now, urgent);
                        self.flush(to);
                    }
                    Wire::Graft { tree, ids } => {
                        let node = &mut self.nodes[to];
                        let engine = &node.engine;
                        node.bcast
                            .on_graft(from, tree, &ids, |i| engine.has_seen(i));
                        self.flush(to);
                    }
                    Wire::Prune { tree } => {
                        self.nodes[to].bcast.on_prune(tree, from);
                        self.flush(to);
                    }
                }
            }
            Event::Timer { node } => {
                if self.nodes[node].timer_at != Some(self.now) || self.nodes[node].crashed {
                    return;
                }
                self.nodes[node].timer_at = None;
                let now = self.at(self.now);
                self.nodes[node].bcast.handle_timeout(now);
                self.flush(node);
            }
            Event::Crash { node } => {
                self.nodes[node].crashed = true;
                let links: Vec<(usize, Option<u64>)> = self.nodes[node]
                    .links
                    .iter()
                    .map(|h| (h.peer, h.conn))
                    .collect();
                for (peer, conn) in links {
                    if let Some(c) = conn {
                        let at = self.now + self.cfg.detect_ms * 1000;
                        self.schedule(
                            at,
                            Event::Noticed {
                                node: peer,
                                peer: node,
                                conn: c,
                            },
                        );
                    }
                }
            }
            Event::Noticed { node, peer, conn } => {
                let Some(li) = self.link_index(node, peer) else {
                    return;
                };
                if self.nodes[node].links[li].conn != Some(conn) {
                    return;
                }
                let h = &mut self.nodes[node].links[li];
                h.conn = None;
                h.dying = false;
                h.down_at = self.now;
                self.nodes[node].bcast.neighbor_down(peer);
                self.flush(node);
                // The lower-numbered end redials once both ends have noticed.
                let other_down = self
                    .link_index(peer, node)
                    .is_some_and(|pi| self.nodes[peer].links[pi].conn != Some(conn));
                if other_down || self.nodes[peer].crashed {
                    let at = self.now + self.cfg.redial_ms * 1000;
                    self.schedule(at, Event::Redial { a: node, b: peer });
                }
            }
            Event::Redial { a, b } => {
                if self.nodes[a].crashed || self.nodes[b].crashed {
                    return;
                }
                if self.cut(a, b) {
                    let at = self.now + self.cfg.redial_ms * 1000;
                    self.schedule(at, Event::Redial { a, b });
                    return;
                }
                let up = |s: &Sim, x: usize, y: usize| {
                    s.link_index(x, y)
                        .is_some_and(|i| s.nodes[x].links[i].conn.is_some())
                };
                if !up(self, a, b) && !up(self, b, a) {
                    self.reconnects += 1;
                    self.link_up(a, b);
                    self.flush(a);
                    self.flush(b);
                }
            }
            Event::PartitionStart => {
                self.partitioned = true;
                let mut cut = Vec::new();
                for (a, node) in self.nodes.iter().enumerate() {
                    for h in &node.links {
                        if a < h.peer && self.partition_side[a] != self.partition_side[h.peer] {
                            if let Some(c) = h.conn {
                                cut.push((a, h.peer, c));
                            }
                        }
                    }
                }
                for (a, b, c) in cut {
                    self.connection_died(a, b, c);
                }
            }
            Event::PartitionHeal => self.partitioned = false,
        }
    }
}

/// Parents in `origin`'s shortest-latency tree over the configured graph (the topology map
/// with link RTTs that live nodes have from announcements), computed once per origin.
fn spt_of<'a>(
    cache: &'a mut std::collections::BTreeMap<usize, Vec<usize>>,
    latency: &[Vec<(usize, u64)>],
    origin: usize,
) -> &'a Vec<usize> {
    cache
        .entry(origin)
        .or_insert_with(|| crate::broadcast::shortest_path_parents(latency, origin))
}

/// A connected random graph: a random spanning tree, then random extra links until the
/// average degree is reached.
pub(crate) fn graph(n: usize, degree: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    if n < 2 {
        return adj;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut edges = 0usize;
    let add = |adj: &mut Vec<Vec<usize>>, a: usize, b: usize| {
        if a == b || adj[a].contains(&b) {
            return false;
        }
        adj[a].push(b);
        adj[b].push(a);
        true
    };
    for i in 1..n {
        let j = order[rng.random_range(0..i)];
        if add(&mut adj, order[i], j) {
            edges += 1;
        }
    }
    let target = (n * degree / 2).min(n * (n - 1) / 2);
    let mut tries = 0;
    while edges < target && tries < target * 20 {
        tries += 1;
        let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
        if add(&mut adj, a, b) {
            edges += 1;
        }
    }
    adj
}

pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Run one simulation.
pub fn run(cfg: &SimConfig) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let adj = graph(cfg.nodes, cfg.degree, &mut rng);
    let base = Instant::now();
    let echo = EchoConfig {
        seen_ttl: Duration::from_secs(86_400),
        seen_capacity: cfg.packets + 1,
        max_hops: 64,
    };
    let mut lat = vec![Vec::new(); cfg.nodes];
    for (a, peers) in adj.iter().enumerate() {
        for &b in peers {
            if a < b {
                let l = rng.random_range(
                    cfg.latency_ms.0 * 1000..=cfg.latency_ms.1.max(cfg.latency_ms.0) * 1000,
                );
                lat[a].push((b, l));
                lat[b].push((a, l));
            }
        }
    }
    let nodes: Vec<Node> = (0..cfg.nodes)
        .map(|i| {
            let mut bc = BroadcastConfig::new(cfg.broadcast);
            bc.graft_timeout = Duration::from_millis(cfg.graft_timeout_ms);
            let mut bcast = Broadcast::new(bc);
            let mut links: Vec<Half> = lat[i]
                .iter()
                .map(|&(peer, latency_us)| Half {
                    peer,
                    latency_us,
                    last_arrival: 0,
                    conn: None,
                    down_at: 0,
                    dying: false,
                })
                .collect();
            links.sort_by_key(|h| h.peer);
            for h in &links {
                bcast.neighbor_up(h.peer, true);
            }
            Node {
                engine: EchoEngine::new(echo.clone(), base),
                bcast,
                links,
                crashed: false,
                accepted: Vec::new(),
                timer_at: None,
                bytes_sent: 0,
            }
        })
        .collect();
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng,
        now: 0,
        queue: Queue::new(base),
        nodes,
        next_conn: 1,
        origin: vec![0; cfg.packets],
        injected_at: vec![NEVER; cfg.packets],
        first: vec![vec![(NEVER, 0); cfg.nodes]; cfg.packets],
        duplicates: 0,
        reconnects: 0,
        partition_side: Vec::new(),
        partitioned: false,
        spt: std::collections::BTreeMap::new(),
        latency: lat.clone(),
    };
    // Connection numbers: one per link, shared by both directions.
    for a in 0..cfg.nodes {
        for li in 0..sim.nodes[a].links.len() {
            let b = sim.nodes[a].links[li].peer;
            if a < b {
                let c = sim.next_conn;
                sim.next_conn += 1;
                sim.nodes[a].links[li].conn = Some(c);
                if let Some(bi) = sim.link_index(b, a) {
                    sim.nodes[b].links[bi].conn = Some(c);
                }
            }
        }
    }
    let window_us = (cfg.packets as u64 * 1_000_000 / cfg.rate.max(1)).max(1_000_000);
    // Crashes: never an origin.
    let crash_count = ((cfg.nodes as f64) * cfg.crash_pct / 100.0).round() as usize;
    let mut ids: Vec<usize> = (0..cfg.nodes).collect();
    ids.shuffle(&mut sim.rng);
    let (crashing, live) = ids.split_at(crash_count.min(cfg.nodes.saturating_sub(1)));
    let (crashing, live) = (crashing.to_vec(), live.to_vec());
    for &n in &crashing {
        let at = sim.rng.random_range(window_us / 5..=window_us * 4 / 5);
        sim.schedule(at, Event::Crash { node: n });
    }
    if cfg.partition {
        sim.partition_side = (0..cfg.nodes).map(|_| sim.rng.random_bool(0.5)).collect();
        sim.schedule(window_us * 3 / 10, Event::PartitionStart);
        sim.schedule(window_us * 6 / 10, Event::PartitionHeal);
    } else {
        sim.partition_side = vec![false; cfg.nodes];
    }
    for p in 0..cfg.packets {
        let node = live[sim.rng.random_range(0..live.len())];
        let at = sim.rng.random_range(0..window_us);
        sim.origin[p] = node;
        sim.schedule(at, Event::Inject { node, packet: p });
    }
    while let Some((at, e)) = sim.queue.pop() {
        sim.now = at;
        sim.handle(e);
    }
    report(cfg, &sim, crashing.len())
}

fn report(cfg: &SimConfig, sim: &Sim, crashed: usize) -> Report {
    // Who is connected to whom at the end, among the nodes that did not crash.
    let alive: Vec<bool> = sim.nodes.iter().map(|n| !n.crashed).collect();
    let mut component = vec![usize::MAX; cfg.nodes];
    let mut next = 0;
    for s in 0..cfg.nodes {
        if !alive[s] || component[s] != usize::MAX {
            continue;
        }
        let mut q = VecDeque::from([s]);
        component[s] = next;
        while let Some(x) = q.pop_front() {
            for h in &sim.nodes[x].links {
                if alive[h.peer] && component[h.peer] == usize::MAX {
                    component[h.peer] = next;
                    q.push_back(h.peer);
                }
            }
        }
        next += 1;
    }
    let (mut expected, mut delivered) = (0u64, 0u64);
    let mut latencies = Vec::new();
    let mut hops = Vec::new();
    for p in 0..cfg.packets {
        let o = sim.origin[p];
        if sim.injected_at[p] == NEVER || !alive[o] {
            continue;
        }
        for n in 0..cfg.nodes {
            if n == o || !alive[n] || component[n] != component[o] {
                continue;
            }
            expected += 1;
            let (t, h) = sim.first[p][n];
            if t != NEVER {
                delivered += 1;
                latencies.push(t - sim.injected_at[p]);
                hops.push(h);
            }
        }
    }
    latencies.sort_unstable();
    hops.sort_unstable();
    let bytes: u64 = sim.nodes.iter().map(|n| n.bytes_sent).sum();
    let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            1.0
        } else {
            (a as f64 / b as f64 * 1e6).round() / 1e6
        }
    };
    Report {
        nodes: cfg.nodes,
        degree: cfg.degree,
        packets: cfg.packets,
        broadcast: cfg.broadcast,
        seed: cfg.seed,
        loss_pct: cfg.loss_pct,
        crashed,
        partition: cfg.partition,
        delivered_ratio: ratio(delivered, expected),
        expected,
        delivered,
        duplicates_per_delivery: ratio(sim.duplicates, delivered),
        hops_p50: percentile(&hops, 0.5),
        hops_p99: percentile(&hops, 0.99),
        latency_p50_ms: ms(percentile(&latencies, 0.5)),
        latency_p99_ms: ms(percentile(&latencies, 0.99)),
        latency_max_ms: ms(latencies.last().copied().unwrap_or(0)),
        bytes_per_node: bytes / cfg.nodes.max(1) as u64,
        grafts: sim.nodes.iter().map(|n| n.bcast.grafts_sent).sum(),
        prunes: sim.nodes.iter().map(|n| n.bcast.prunes_sent).sum(),
        reconnects: sim.reconnects,
        sim_secs: (sim.now as f64 / 1e6 * 1000.0).round() / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_meshes_deliver_everything_and_lazy_push_cuts_duplicates() {
        let flood = run(&SimConfig::new(60, 6, 600, Mode::Flood, 1));
        let lazy = run(&SimConfig::new(60, 6, 600, Mode::Lazy, 1));
        assert_eq!(flood.delivered_ratio, 1.0, "{flood:?}");
        assert_eq!(lazy.delivered_ratio, 1.0, "{lazy:?}");
        assert!(flood.duplicates_per_delivery > 3.0, "{flood:?}");
        assert!(lazy.duplicates_per_delivery < 0.05, "{lazy:?}");
        assert!(
            lazy.latency_p99_ms < 1.5 * flood.latency_p99_ms,
            "{lazy:?} {flood:?}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_report() {
        let mut c = SimConfig::new(40, 4, 200, Mode::Lazy, 7);
        c.loss_pct = 10.0;
        c.crash_pct = 5.0;
        c.partition = true;
        let a = run(&c);
        assert_eq!(a, run(&c));
        assert_eq!(a.delivered_ratio, 1.0, "{a:?}");
        c.seed = 8;
        assert_ne!(a, run(&c));
    }
}
