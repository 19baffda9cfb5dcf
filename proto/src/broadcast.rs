//! Which neighbors get a packet: plain flooding, or lazy push in the spirit of Plumtree
//! (Leitão, Pereira, Rodrigues, 2007) — a machine without I/O, generic over the peer type.
//!
//! **Flood**: every new packet is pushed to every neighbor but the one it came from.
//!
//! **Lazy**: for each tree (one per origin node: a tree shared by all origins is pruned by
//! packets travelling in different directions at once, which breaks it apart and makes it
//! graft and prune for ever — measured with the simulator), each neighbor is *eager* or
//! *lazy*. A new tree is planned by the caller from its topology map
//! ([`Broadcast::on_new_planned`]: only the links to this node's children in the origin's
//! shortest-latency tree start eager); without a plan it starts with every link eager. A new
//! packet is pushed to the eager ones and only its ID is announced to the lazy ones (`IHave`).
//! A packet arriving a second time over an eager link, when its first copy came over another
//! eager link, turns that link lazy at both ends (`Prune`), so where plans disagree the eager
//! links thin out to a spanning tree of first arrivals. A node that hears of a packet only by `IHave`
//! waits [`BroadcastConfig::graft_timeout`] for the tree to bring it, then asks an announcer
//! for it (`Graft`), which also makes that link eager again: the tree heals itself around
//! crashed or slow nodes. A neighbor that does not speak lazy push is always pushed to (a mixed
//! mesh floods on those links). Pulling what a neighbor missed after a reconnection is the same
//! `IHave`/`Graft` pair, without the wait ([`Broadcast::on_ihave`] with `urgent`).
//!
//! Every packet a node accepts is announced to every neighbor in one way or the other, so a
//! packet reaches every node connected to its origin as long as announcements and grafts are
//! delivered (the links are reliable QUIC streams, and a reconnection re-announces what the
//! link may have lost).
//!
//! Bounded: at most [`BroadcastConfig::max_missing`] packets awaited at once (the oldest
//! dropped, counted in [`Broadcast::missing_dropped`]), at most [`MAX_ANNOUNCERS`] announcers
//! remembered per packet, at most [`BroadcastConfig::max_trees`] trees, first arrivals
//! remembered for [`FIRST_MEMORY`] packets. docs/BROADCAST.md has the measurements behind
//! these choices.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::echo::PacketId;

/// Announcers remembered per awaited packet (graft candidates).
pub const MAX_ANNOUNCERS: usize = 8;

/// Recent packets whose first arrival link is remembered (for pruning decisions).
pub const FIRST_MEMORY: usize = 65_536;

/// The lateness estimate (a decaying maximum) loses 1/16 of itself at each observation: it
/// follows a burst at once and forgets it within a few dozen packets. Measured at 1 000 nodes,
/// 10 % loss (docs/BENCHMARKS.md): forgetting 1/64 kept the timeout near its bound after the
/// rare long retransmission, and lazy push's p99 was 1.69× flood's; 1/16 gives 1.37× at 0.067
/// duplicates per delivery (1/8: 1.35×, 0.079; 1/4: 1.35×, 0.088).
const LATENESS_DECAY: u32 = 16;

/// Recently grafted packets remembered (a later copy of one measures the tree's lateness).
pub const GRAFTED_MEMORY: usize = 4096;

/// Which tree a packet travels on: its origin node's (an opaque number).
pub type TreeKey = u64;

/// The tree key of packets a node injects: the first 8 bytes of its node ID.
pub fn tree_of(node_id: &[u8; 32]) -> TreeKey {
    let mut k = [0u8; 8];
    k.copy_from_slice(&node_id[..8]);
    u64::from_be_bytes(k)
}

/// Each node's parent in `origin`'s shortest-latency tree (Dijkstra; `adj[x]` lists `(y,
/// latency)`; ties go to the lower parent index, so every node that has the same map plans the
/// same tree). `usize::MAX`: the origin, or not connected to it.
pub fn shortest_path_parents(adj: &[Vec<(usize, u64)>], origin: usize) -> Vec<usize> {
    let n = adj.len();
    let mut dist = vec![u64::MAX; n];
    let mut parent = vec![usize::MAX; n];
    if origin >= n {
        return parent;
    }
    let mut heap = BinaryHeap::new();
    dist[origin] = 0;
    heap.push(Reverse((0u64, origin)));
    while let Some(Reverse((d, x))) = heap.pop() {
        if d > dist[x] {
            continue;
        }
        for &(y, l) in &adj[x] {
            let nd = d.saturating_add(l);
            if nd < dist[y] || (nd == dist[y] && x < parent[y]) {
                dist[y] = nd;
                parent[y] = x;
                heap.push(Reverse((nd, y)));
            }
        }
    }
    parent
}

/// Plans new trees from a node's map of the mesh: the neighbors that are this node's children
/// in an origin's shortest-latency tree. Every node that has the same map plans the same
/// tree, so a planned tree's packets arrive once; maps that disagree (a link that just
/// changed) cost a few duplicates, which prune. Plans are cached per tree until the map
/// changes; at most [`MAX_PLANS`] are kept.
#[derive(Debug)]
pub struct Planner<P> {
    me: P,
    nodes: Vec<P>,
    index: BTreeMap<P, usize>,
    by_tree: BTreeMap<TreeKey, usize>,
    adj: Vec<Vec<(usize, u64)>>,
    plans: BTreeMap<TreeKey, Option<BTreeSet<P>>>,
    links: Vec<(P, P, u64)>,
}

/// Plans cached at once (the cache starts again when full).
pub const MAX_PLANS: usize = 4096;

impl<P: Ord + Copy> Planner<P> {
    pub fn new(me: P) -> Self {
        Planner {
            me,
            nodes: Vec::new(),
            index: BTreeMap::new(),
            by_tree: BTreeMap::new(),
            adj: Vec::new(),
            plans: BTreeMap::new(),
            links: Vec::new(),
        }
    }

    /// A new map: live links with their latency (any unit, the same for all), and how a
    /// node's ID maps to the tree key of the packets it injects. Returns whether it differs
    /// from the last one (then trees planned from the old map should be planned again).
    pub fn set_graph(&mut self, links: &[(P, P, u64)], key: impl Fn(&P) -> TreeKey) -> bool {
        let mut sorted = links.to_vec();
        sorted.sort();
        if sorted == self.links {
            return false;
        }
        self.links = sorted;
        let mut nodes: BTreeSet<P> = links.iter().flat_map(|l| [l.0, l.1]).collect();
        nodes.insert(self.me);
        self.nodes = nodes.into_iter().collect();
        self.index = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i))
            .collect();
        self.by_tree = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, p)| (key(p), i))
            .collect();
        self.adj = vec![Vec::new(); self.nodes.len()];
        for &(a, b, l) in links {
            if a == b {
                continue;
            }
            let (ia, ib) = (self.index[&a], self.index[&b]);
            self.adj[ia].push((ib, l.max(1)));
            self.adj[ib].push((ia, l.max(1)));
        }
        self.plans.clear();
        true
    }

    /// This node's children in `tree`'s shortest-latency tree; `None` when the map does not
    /// know the tree's origin (the tree then starts as a flood).
    pub fn children(&mut self, tree: TreeKey) -> Option<&BTreeSet<P>> {
        if !self.plans.contains_key(&tree) {
            if self.plans.len() >= MAX_PLANS {
                self.plans.clear();
            }
            // No map yet: nothing is planned.
            let me = self.index.get(&self.me).copied();
            let plan = me.zip(self.by_tree.get(&tree)).and_then(|(me, &origin)| {
                let parents = shortest_path_parents(&self.adj, origin);
                // Not connected to the origin in this map: the map is incomplete here.
                if origin != me && parents[me] == usize::MAX {
                    return None;
                }
                Some(
                    parents
                        .iter()
                        .enumerate()
                        .filter(|(_, &p)| p == me)
                        .map(|(c, _)| self.nodes[c])
                        .collect(),
                )
            });
            self.plans.insert(tree, plan);
        }
        self.plans.get(&tree).and_then(|p| p.as_ref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Flood,
    Lazy,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Flood => "flood",
            Mode::Lazy => "lazy",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flood" => Ok(Mode::Flood),
            "lazy" => Ok(Mode::Lazy),
            other => Err(format!("unknown broadcast {other:?}: use flood or lazy")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BroadcastConfig {
    pub mode: Mode,
    /// How long an announced packet may take to arrive over the tree before it is pulled.
    pub graft_timeout: Duration,
    /// After a graft, how long before the next announcer is asked.
    pub graft_retry: Duration,
    pub max_missing: usize,
    /// The longest the graft timeout grows to while the tree is late.
    pub max_graft_timeout: Duration,
    /// Trees remembered (the least recently used is forgotten; it starts again as a flood).
    pub max_trees: usize,
}

impl BroadcastConfig {
    pub fn new(mode: Mode) -> Self {
        BroadcastConfig {
            mode,
            graft_timeout: Duration::from_millis(200),
            graft_retry: Duration::from_millis(250),
            max_missing: 100_000,
            max_graft_timeout: Duration::from_secs(2),
            max_trees: 4096,
        }
    }
}

/// What the driver sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out<P> {
    /// Send the packet itself.
    Push { to: P, id: PacketId },
    /// Announce packets by ID.
    IHave {
        to: P,
        tree: TreeKey,
        ids: Vec<PacketId>,
    },
    /// Ask for packets (and make the link eager in that tree).
    Graft {
        to: P,
        tree: TreeKey,
        ids: Vec<PacketId>,
    },
    /// Make the link lazy in that tree.
    Prune { to: P, tree: TreeKey },
}

#[derive(Debug)]
struct Missing<P> {
    announcers: VecDeque<P>,
    due: Instant,
    tree: TreeKey,
    /// When the first announcement came.
    since: Instant,
    /// Grafts sent for it so far.
    grafts: u32,
}

/// One tree's lazy links (every other live link is eager).
#[derive(Debug)]
struct Tree<P> {
    lazy: BTreeSet<P>,
    used: u64,
}

impl<P> Default for Tree<P> {
    fn default() -> Self {
        Tree {
            lazy: BTreeSet::new(),
            used: 0,
        }
    }
}

#[derive(Debug)]
pub struct Broadcast<P: Ord + Copy> {
    cfg: BroadcastConfig,
    /// Live neighbors.
    peers: BTreeSet<P>,
    trees: BTreeMap<TreeKey, Tree<P>>,
    clock: u64,
    /// Neighbors that do not speak lazy push: always pushed to.
    flood_only: BTreeSet<P>,
    missing: BTreeMap<PacketId, Missing<P>>,
    timers: BTreeSet<(Instant, PacketId)>,
    out: VecDeque<Out<P>>,
    first_from: BTreeMap<PacketId, Option<P>>,
    first_order: VecDeque<PacketId>,
    pub missing_dropped: u64,
    pub grafts_sent: u64,
    pub prunes_sent: u64,
    /// Recent lateness of the tree (see [`Broadcast::graft_timeout`]).
    lateness: Duration,
    grafted: BTreeMap<PacketId, Instant>,
    grafted_order: VecDeque<PacketId>,
}

impl<P: Ord + Copy> Broadcast<P> {
    pub fn new(cfg: BroadcastConfig) -> Self {
        Broadcast {
            cfg,
            peers: BTreeSet::new(),
            trees: BTreeMap::new(),
            clock: 0,
            flood_only: BTreeSet::new(),
            missing: BTreeMap::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            first_from: BTreeMap::new(),
            first_order: VecDeque::new(),
            missing_dropped: 0,
            grafts_sent: 0,
            prunes_sent: 0,
            lateness: Duration::ZERO,
            grafted: BTreeMap::new(),
            grafted_order: VecDeque::new(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// A neighbor came up; `speaks_lazy`: its protocol has lazy push. New links start eager.
    pub fn neighbor_up(&mut self, p: P, speaks_lazy: bool) {
        self.peers.insert(p);
        for t in self.trees.values_mut() {
            t.lazy.remove(&p);
        }
        if speaks_lazy {
            self.flood_only.remove(&p);
        } else {
            self.flood_only.insert(p);
        }
    }

    pub fn neighbor_down(&mut self, p: P) {
        self.peers.remove(&p);
        for t in self.trees.values_mut() {
            t.lazy.remove(&p);
        }
        self.flood_only.remove(&p);
    }

    /// Is the link to `p` eager in `tree`?
    pub fn is_eager(&self, tree: TreeKey, p: &P) -> bool {
        self.peers.contains(p) && !self.trees.get(&tree).is_some_and(|t| t.lazy.contains(p))
    }

    /// Forget every tree's eager and lazy links (the map changed): each is planned again at
    /// its next packet.
    pub fn forget_trees(&mut self) {
        self.trees.clear();
    }

    /// Whether `tree` is known (a new one is planned by [`Broadcast::on_new_planned`]).
    pub fn has_tree(&self, tree: TreeKey) -> bool {
        self.trees.contains_key(&tree)
    }

    /// Trees remembered now.
    pub fn tree_count(&self) -> usize {
        self.trees.len()
    }

    /// The tree, created (all links eager) if new; the least recently used goes when full.
    fn tree(&mut self, key: TreeKey) -> &mut Tree<P> {
        self.clock += 1;
        if !self.trees.contains_key(&key) && self.trees.len() >= self.cfg.max_trees {
            if let Some(old) = self
                .trees
                .iter()
                .min_by_key(|(_, t)| t.used)
                .map(|(k, _)| *k)
            {
                self.trees.remove(&old);
            }
        }
        let t = self.trees.entry(key).or_default();
        t.used = self.clock;
        t
    }

    /// Packets announced but not yet received.
    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    fn lazy_mode(&self, p: &P) -> bool {
        self.cfg.mode == Mode::Lazy && !self.flood_only.contains(p)
    }

    /// The engine accepted a new packet that may travel on, from neighbor `from` (`None`: from
    /// a client of this node).
    pub fn on_new(&mut self, id: PacketId, tree: TreeKey, from: Option<P>, now: Instant) {
        self.on_new_planned(id, tree, from, None, now)
    }

    /// As [`Broadcast::on_new`], with a plan for a tree this node has not seen yet: the
    /// neighbors that are its children in the origin's shortest-path tree, as this node's
    /// topology map says (`children`). The tree then starts with only those links (and the
    /// one the packet came from) eager instead of flooding; where maps disagree, the lazy
    /// links' announcements and grafts make up for it.
    pub fn on_new_planned(
        &mut self,
        id: PacketId,
        tree: TreeKey,
        from: Option<P>,
        children: Option<&BTreeSet<P>>,
        now: Instant,
    ) {
        if let Some(m) = self.missing.remove(&id) {
            self.timers.remove(&(m.due, id));
            if m.grafts == 0 {
                // Announced first, pushed later: how late the tree is.
                self.late_by(now.saturating_duration_since(m.since));
            }
        }
        if self.cfg.mode == Mode::Lazy {
            self.remember_first(id, from);
            if let (Some(c), false) = (children, self.trees.contains_key(&tree)) {
                let lazy: BTreeSet<P> = self
                    .peers
                    .iter()
                    .filter(|p| !c.contains(p) && Some(**p) != from)
                    .copied()
                    .collect();
                self.tree(tree).lazy = lazy;
            }
        }
        if self.cfg.mode == Mode::Lazy {
            self.tree(tree); // created if new, marked used
        }
        // Disjoint borrows of the fields: no copy of the peer or lazy sets per packet.
        let lazy = match self.cfg.mode {
            Mode::Lazy => self.trees.get(&tree).map(|t| &t.lazy),
            Mode::Flood => None,
        };
        for &p in &self.peers {
            if Some(p) == from {
                continue;
            }
            let announce_only =
                !self.flood_only.contains(&p) && lazy.is_some_and(|l| l.contains(&p));
            self.out.push_back(if announce_only {
                Out::IHave {
                    to: p,
                    tree,
                    ids: vec![id],
                }
            } else {
                Out::Push { to: p, id }
            });
        }
    }

    /// A new packet that is pushed to every neighbor but `from` whatever the mode: the mesh's
    /// own control traffic (key bundles, node announcements), which is small and verified at
    /// every hop before it travels on. Its duplicates prune nothing.
    pub fn on_new_flooded(&mut self, id: PacketId, from: Option<P>) {
        if let Some(m) = self.missing.remove(&id) {
            self.timers.remove(&(m.due, id));
        }
        for &p in &self.peers {
            if Some(p) != from {
                self.out.push_back(Out::Push { to: p, id });
            }
        }
    }

    /// The engine accepted a new packet that must not travel on (from a half-echo neighbor):
    /// it only stops waiting for it.
    pub fn on_new_local(&mut self, id: PacketId) {
        if let Some(m) = self.missing.remove(&id) {
            self.timers.remove(&(m.due, id));
        }
    }

    /// Packet `id` of `tree` arrived again from `from`: prune that link in that tree — but
    /// only if the first copy came over a link that is eager in it. Copies of one origin's
    /// packets can overtake each other (jitter, a busy link): pruning on every duplicate would
    /// prune a node's links to that tree one after the other and cut it off.
    ///
    /// A duplicate of a packet this node grafted means the graft was not needed: the tree was
    /// only late, by as much as the copy took since the announcement; the graft timeout learns
    /// that lateness (grafted packets never show it otherwise).
    pub fn on_duplicate(&mut self, id: &PacketId, tree: TreeKey, from: P, now: Instant) {
        if let Some(since) = self.grafted.remove(id) {
            self.late_by(now.saturating_duration_since(since));
        }
        if !self.lazy_mode(&from) || !self.peers.contains(&from) {
            return;
        }
        match self.first_from.get(id).copied() {
            // Unknown (forgotten): no basis for a decision.
            None => return,
            // This node's own packet came back: that link is never needed for this tree.
            Some(None) => {}
            Some(Some(first)) => {
                if first == from || !self.is_eager(tree, &first) {
                    return;
                }
            }
        }
        if self.tree(tree).lazy.insert(from) {
            self.prunes_sent += 1;
            self.out.push_back(Out::Prune { to: from, tree });
        }
    }

    fn remember_first(&mut self, id: PacketId, from: Option<P>) {
        if self.first_order.len() >= FIRST_MEMORY {
            if let Some(old) = self.first_order.pop_front() {
                self.first_from.remove(&old);
            }
        }
        self.first_order.push_back(id);
        self.first_from.insert(id, from);
    }

    /// `from` pruned the link in `tree`.
    pub fn on_prune(&mut self, tree: TreeKey, from: P) {
        if self.lazy_mode(&from) && self.peers.contains(&from) {
            self.tree(tree).lazy.insert(from);
        }
    }

    /// `from` announced packets; `seen` says which this node has. Unknown ones are awaited for
    /// the graft timeout, or asked for at once when `urgent` (a reconnection's repair offer).
    pub fn on_ihave(
        &mut self,
        from: P,
        tree: TreeKey,
        ids: &[PacketId],
        seen: impl Fn(&PacketId) -> bool,
        now: Instant,
        urgent: bool,
    ) {
        if urgent {
            let want: Vec<PacketId> = self
                .pull_offered(ids, seen, now)
                .into_iter()
                .map(|i| ids[i])
                .collect();
            if !want.is_empty() {
                self.graft(from, tree, want);
            }
            return;
        }
        for id in ids {
            if seen(id) {
                continue;
            }
            if let Some(m) = self.missing.get_mut(id) {
                if m.announcers.len() < MAX_ANNOUNCERS && !m.announcers.contains(&from) {
                    m.announcers.push_back(from);
                }
                continue;
            }
            if self.missing.len() >= self.cfg.max_missing {
                if let Some(&(due, old)) = self.timers.iter().next() {
                    self.timers.remove(&(due, old));
                    self.missing.remove(&old);
                    self.missing_dropped += 1;
                }
            }
            let due = now + self.graft_timeout();
            self.missing.insert(
                *id,
                Missing {
                    announcers: VecDeque::from([from]),
                    due,
                    tree,
                    since: now,
                    grafts: 0,
                },
            );
            self.timers.insert((due, *id));
        }
    }

    /// A neighbor offers packets this node may lack and will send the ones asked for at once:
    /// echo repair after a link was down or a queue overflowed ("Nothing sent is lost"), or an
    /// urgent announcement. Which to pull is decided here for both, and a pull is a graft: an
    /// awaited packet counts as grafted (its own timer then waits `graft_retry` before asking
    /// another announcer, and a late tree copy still teaches the graft timeout). Returns the
    /// positions in `ids` of the packets to pull; the caller asks for them (a `Graft`, or the
    /// answer to the offer).
    pub fn pull_offered(
        &mut self,
        ids: &[PacketId],
        seen: impl Fn(&PacketId) -> bool,
        now: Instant,
    ) -> Vec<usize> {
        let mut want = Vec::new();
        let mut asked = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            if seen(id) || !asked.insert(*id) {
                continue;
            }
            want.push(i);
            let retry = now + self.graft_retry();
            let Some(m) = self.missing.get_mut(id) else {
                continue;
            };
            let (old_due, first, since) = (m.due, m.grafts == 0, m.since);
            m.grafts += 1;
            m.due = retry;
            self.timers.remove(&(old_due, *id));
            self.timers.insert((retry, *id));
            if first {
                self.remember_grafted(*id, since);
            }
        }
        want
    }

    fn remember_grafted(&mut self, id: PacketId, since: Instant) {
        if self.grafted_order.len() >= GRAFTED_MEMORY {
            if let Some(old) = self.grafted_order.pop_front() {
                self.grafted.remove(&old);
            }
        }
        self.grafted_order.push_back(id);
        self.grafted.insert(id, since);
    }

    fn graft(&mut self, to: P, tree: TreeKey, ids: Vec<PacketId>) {
        self.tree(tree).lazy.remove(&to);
        self.grafts_sent += ids.len() as u64;
        self.out.push_back(Out::Graft { to, tree, ids });
    }

    /// `from` asks for packets and makes the link eager in `tree`; `have` says which this
    /// node can send.
    pub fn on_graft(
        &mut self,
        from: P,
        tree: TreeKey,
        ids: &[PacketId],
        have: impl Fn(&PacketId) -> bool,
    ) {
        self.tree(tree).lazy.remove(&from);
        for id in ids {
            if have(id) {
                self.out.push_back(Out::Push { to: from, id: *id });
            }
        }
    }

    /// The longest a packet is awaited before its first graft.
    pub fn max_graft_timeout(&self) -> Duration {
        self.cfg.max_graft_timeout.max(self.cfg.graft_timeout)
    }

    /// One observation of how late the tree was (a decaying maximum).
    fn late_by(&mut self, late: Duration) {
        self.lateness = late.max(self.lateness - self.lateness / LATENESS_DECAY);
    }

    /// How long an announced packet is awaited before it is pulled: the configured graft
    /// timeout, or longer while the tree is late (queues under a burst, retransmissions):
    /// 5/4 of the recent lateness of pushed packets behind their announcements (a decaying
    /// maximum), at most [`BroadcastConfig::max_graft_timeout`]. Pulling a packet that is
    /// only late costs a duplicate and an extra eager link.
    pub fn graft_timeout(&self) -> Duration {
        (self.lateness * 5 / 4)
            .min(self.cfg.max_graft_timeout)
            .max(self.cfg.graft_timeout)
    }

    /// How long a graft's answer is awaited before the next announcer is asked: the configured
    /// retry, or the graft timeout while the tree is later than that (a congested link is
    /// slow to answer a graft too, and asking again only adds copies).
    fn graft_retry(&self) -> Duration {
        self.cfg.graft_retry.max(self.graft_timeout())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().next().map(|(t, _)| *t)
    }

    /// Pull what the tree did not bring in time, one announcer at a time.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut by_peer: BTreeMap<(P, TreeKey), Vec<PacketId>> = BTreeMap::new();
        while let Some(&(due, id)) = self.timers.iter().next() {
            if due > now {
                break;
            }
            self.timers.remove(&(due, id));
            let (timeout, retry) = (self.graft_timeout(), self.graft_retry());
            let Some(m) = self.missing.get_mut(&id) else {
                continue;
            };
            // The tree became later since it was announced: wait as long as it now takes.
            if m.grafts == 0 && m.since + timeout > now {
                m.due = m.since + timeout;
                self.timers.insert((m.due, id));
                continue;
            }
            match m.announcers.pop_front() {
                Some(p) => {
                    let first = m.grafts == 0;
                    let since = m.since;
                    m.grafts += 1;
                    by_peer.entry((p, m.tree)).or_default().push(id);
                    m.due = now + retry;
                    self.timers.insert((m.due, id));
                    if first {
                        self.remember_grafted(id, since);
                    }
                }
                None => {
                    self.missing.remove(&id);
                }
            }
        }
        for ((p, tree), ids) in by_peer {
            self.graft(p, tree, ids);
        }
    }

    pub fn poll_out(&mut self) -> Option<Out<P>> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PacketId {
        [n; 32]
    }

    fn drain(b: &mut Broadcast<u32>) -> Vec<Out<u32>> {
        std::iter::from_fn(|| b.poll_out()).collect()
    }

    #[test]
    fn flood_pushes_to_everyone_but_the_sender() {
        let t0 = Instant::now();
        let mut b = Broadcast::new(BroadcastConfig::new(Mode::Flood));
        for p in [1, 2, 3] {
            b.neighbor_up(p, true);
        }
        b.on_new(id(1), 0, Some(2), t0);
        assert_eq!(
            drain(&mut b),
            vec![
                Out::Push { to: 1, id: id(1) },
                Out::Push { to: 3, id: id(1) }
            ]
        );
        b.on_duplicate(&id(1), 0, 3, t0);
        assert!(drain(&mut b).is_empty(), "flood never prunes");
    }

    #[test]
    fn lazy_prunes_duplicates_per_tree_announces_to_lazy_links_and_grafts_on_timeout() {
        let t0 = Instant::now();
        let mut b = Broadcast::new(BroadcastConfig::new(Mode::Lazy));
        for p in [1, 2, 3] {
            b.neighbor_up(p, true);
        }
        b.neighbor_up(9, false); // an old node: always pushed to
        b.on_new(id(1), 7, Some(1), t0);
        assert_eq!(drain(&mut b).len(), 3);
        // The same packet again from 2: prune 2 in tree 7 only.
        b.on_duplicate(&id(1), 7, 2, t0);
        assert_eq!(drain(&mut b), vec![Out::Prune { to: 2, tree: 7 }]);
        b.on_duplicate(&id(1), 7, 9, t0);
        assert!(drain(&mut b).is_empty(), "never prune a flood-only link");
        assert!(!b.is_eager(7, &2) && b.is_eager(8, &2));
        // Next packet of tree 7: pushed to 3 and 9, announced to 2.
        b.on_new(id(2), 7, Some(1), t0);
        let out = drain(&mut b);
        assert!(
            out.contains(&Out::IHave {
                to: 2,
                tree: 7,
                ids: vec![id(2)]
            }),
            "{out:?}"
        );
        assert!(out.contains(&Out::Push { to: 3, id: id(2) }));
        assert!(out.contains(&Out::Push { to: 9, id: id(2) }));
        // Control traffic is pushed everywhere, and its duplicates prune nothing.
        b.on_new_flooded(id(4), Some(1));
        assert_eq!(drain(&mut b).len(), 3);
        b.on_duplicate(&id(4), 7, 3, t0);
        assert!(drain(&mut b).is_empty());
        // A packet of another tree still floods.
        b.on_new(id(3), 8, None, t0);
        assert_eq!(drain(&mut b).len(), 4);
        // This node's own packet pushed back to it: that link is pruned in its tree.
        b.on_duplicate(&id(3), 8, 1, t0);
        assert_eq!(drain(&mut b), vec![Out::Prune { to: 1, tree: 8 }]);
        b.on_new(id(9), 8, None, t0);
        drain(&mut b);
        // 3 prunes us in tree 7; then 3 and 2 announce a packet we lack; it does not come:
        // graft 3 (the first announcer), which makes 3 eager again; then 2.
        b.on_prune(7, 3);
        let seen = |_: &PacketId| false;
        b.on_ihave(3, 7, &[id(5)], seen, t0, false);
        b.on_ihave(2, 7, &[id(5)], seen, t0, false);
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_millis(200)));
        b.handle_timeout(t0 + Duration::from_millis(200));
        assert_eq!(
            drain(&mut b),
            vec![Out::Graft {
                to: 3,
                tree: 7,
                ids: vec![id(5)]
            }]
        );
        assert!(b.is_eager(7, &3));
        b.handle_timeout(t0 + Duration::from_millis(450));
        assert_eq!(
            drain(&mut b),
            vec![Out::Graft {
                to: 2,
                tree: 7,
                ids: vec![id(5)]
            }]
        );
        // It arrives: no more waiting.
        b.on_new(id(5), 7, Some(2), t0);
        drain(&mut b);
        assert_eq!(b.missing_count(), 0);
        assert_eq!(b.poll_timeout(), None);
        // A graft from a lazy peer makes it eager and sends what we have.
        b.on_prune(7, 1);
        b.on_graft(1, 7, &[id(1), id(7)], |i| *i == id(1));
        assert_eq!(drain(&mut b), vec![Out::Push { to: 1, id: id(1) }]);
        assert!(b.is_eager(7, &1));
        // A repair offer is pulled at once.
        b.on_ihave(2, 7, &[id(8), id(1)], |i| *i == id(1), t0, true);
        assert_eq!(
            drain(&mut b),
            vec![Out::Graft {
                to: 2,
                tree: 7,
                ids: vec![id(8)]
            }]
        );
    }

    #[test]
    fn planner_picks_children_in_the_origins_shortest_latency_tree() {
        // 1 - 2 (1 ms), 2 - 3 (1 ms), 1 - 3 (5 ms), 3 - 4 (1 ms): from 1, the path to 3 goes
        // through 2, so 2's children are {3}, and 3's are {4}.
        let links = [(1u32, 2, 1), (2, 3, 1), (1, 3, 5), (3, 4, 1)];
        let key = |p: &u32| u64::from(*p) + 100;
        assert_eq!(Planner::new(2u32).children(101), None, "no map yet");
        let mut at2 = Planner::new(2u32);
        assert!(at2.set_graph(&links, key));
        assert!(!at2.set_graph(&links, key), "the same map again");
        assert_eq!(at2.children(101), Some(&BTreeSet::from([3])));
        assert_eq!(at2.children(104), Some(&BTreeSet::from([1])));
        assert_eq!(at2.children(999), None, "unknown origin");
        let mut at5 = Planner::new(5u32);
        at5.set_graph(&links, key);
        assert_eq!(
            at5.children(101),
            None,
            "not connected to the origin in its map"
        );
        let mut at3 = Planner::new(3u32);
        at3.set_graph(&links, key);
        assert_eq!(at3.children(101), Some(&BTreeSet::from([4])));
        // The map changes: 1 - 3 becomes fast; 3 is now 1's child and 2 has none.
        assert!(at2.set_graph(&[(1, 2, 1), (2, 3, 1), (1, 3, 1), (3, 4, 1)], key));
        assert_eq!(at2.children(101), Some(&BTreeSet::new()));
    }

    #[test]
    fn an_offered_packet_is_pulled_once_as_a_graft_whether_awaited_or_not() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Broadcast::new(BroadcastConfig::new(Mode::Lazy));
        b.neighbor_up(1u32, true);
        b.neighbor_up(2, true);
        // id 1 is awaited (announced by 2), id 2 already seen, id 3 unknown, id 3 twice.
        b.on_ihave(2, 7, &[id(1)], |_| false, t0, false);
        let offered = [id(1), id(2), id(3), id(3)];
        let want = b.pull_offered(&offered, |i| *i == id(2), t0 + ms(50));
        assert_eq!(want, vec![0, 2]);
        assert!(drain(&mut b).is_empty(), "the caller asks for them");
        // The awaited one is not grafted again at its timeout, only after graft_retry (if
        // the offer's answer never comes), and then from its announcer.
        b.handle_timeout(t0 + ms(200));
        assert!(drain(&mut b).is_empty());
        b.handle_timeout(t0 + ms(300));
        assert_eq!(
            drain(&mut b),
            vec![Out::Graft {
                to: 2,
                tree: 7,
                ids: vec![id(1)]
            }]
        );
        // An urgent announcement goes the same way and asks with a graft.
        b.on_ihave(1, 7, &[id(4)], |_| false, t0, true);
        assert_eq!(
            drain(&mut b),
            vec![Out::Graft {
                to: 1,
                tree: 7,
                ids: vec![id(4)]
            }]
        );
    }

    #[test]
    fn a_wasted_graft_teaches_the_graft_timeout_how_late_the_tree_is() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Broadcast::new(BroadcastConfig::new(Mode::Lazy));
        b.neighbor_up(1u32, true);
        b.neighbor_up(2, true);
        assert_eq!(b.graft_timeout(), ms(200));
        b.on_ihave(2, 7, &[id(1)], |_| false, t0, false);
        b.handle_timeout(t0 + ms(200));
        assert_eq!(drain(&mut b).len(), 1, "grafted");
        b.on_new(id(1), 7, Some(2), t0 + ms(250));
        drain(&mut b);
        assert_eq!(b.graft_timeout(), ms(200), "a graft's answer says nothing");
        // The tree's own copy comes 800 ms after the announcement: wait that long (and a
        // quarter) before the next graft.
        b.on_duplicate(&id(1), 7, 1, t0 + ms(800));
        assert_eq!(b.graft_timeout(), ms(1000));
        // Never beyond the bound.
        b.on_ihave(2, 7, &[id(2)], |_| false, t0, false);
        b.handle_timeout(t0 + ms(1000));
        b.on_duplicate(&id(2), 7, 1, t0 + ms(9000));
        assert_eq!(b.graft_timeout(), ms(2000));
    }

    #[test]
    fn awaited_packets_and_trees_are_bounded() {
        let t0 = Instant::now();
        let mut cfg = BroadcastConfig::new(Mode::Lazy);
        cfg.max_missing = 4;
        cfg.max_trees = 3;
        let mut b = Broadcast::new(cfg);
        b.neighbor_up(1u32, true);
        let ids: Vec<PacketId> = (0..10).map(id).collect();
        b.on_ihave(1, 0, &ids, |_| false, t0, false);
        assert_eq!(b.missing_count(), 4);
        assert_eq!(b.missing_dropped, 6);
        for t in 0..10 {
            b.on_new(id(t as u8), t, None, t0);
        }
        assert_eq!(b.tree_count(), 3);
    }
}
