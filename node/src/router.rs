//! The router connects the echo engine to the I/O: it runs a batch through the engine and
//! fans the result out to neighbor queues and to subscribed client sessions, counting every
//! drop. It never waits: a full queue drops for that one destination only.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::client::subscribers::{Filter, Subscribers};
use crate::echo::{self, EchoEngine, EchoMode, EchoPacket, Offer, PacketId, PacketLog, Source};
use crate::identity::NodeId;
use crate::limits::MAX_OFFER;
use crate::metrics::{DropReason, Metrics};
use crate::peer::NeighborTable;
use crate::wire::{MsgId, TreeItem};
use echomesh_proto::broadcast::{self, Broadcast, BroadcastConfig, Mode, Out, Planner, TreeKey};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

pub use crate::limits::CONTROL_BACKLOG;
use crate::tags::Tag;

/// Where a batch entered this node.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Neighbor(NodeId, EchoMode),
    Client,
    /// A frame from an Echo connection (the bridge).
    Bridge,
}

impl Origin {
    /// The `source` label of the packet metrics.
    pub fn label(self) -> &'static str {
        match self {
            Origin::Neighbor(..) => "neighbor",
            Origin::Client => "client",
            Origin::Bridge => "bridge",
        }
    }
}

/// The echo engine, the packet log and the broadcast machine, under one lock: a packet is in
/// the log exactly when the engine accepted it, client deliveries take log positions in log
/// order, and the broadcast machine learns of each packet in the same order.
pub struct EchoState {
    pub engine: EchoEngine,
    pub log: PacketLog<NodeId>,
    bcast: Broadcast<NodeId>,
}

/// The broadcast trees of an incoming batch's packets (from a neighbor that sends them).
pub type Trees = echo::IdMap<TreeKey>;

/// What goes to which neighbor, collected under the engine lock and queued after it.
type Outgoing = BTreeMap<NodeId, Vec<TreeItem>>;

pub struct Router {
    engine: Mutex<EchoState>,
    pub neighbors: NeighborTable,
    pub subscribers: Subscribers,
    pub metrics: Arc<Metrics>,
    max_payload: usize,
    /// Plans new broadcast trees from the topology map (lazy push).
    planner: Mutex<Planner<NodeId>>,
    own_tree: TreeKey,
    mode: Mode,
    /// Wakes the broadcast timer task: a packet is newly awaited.
    broadcast_wake: Notify,
    /// The mesh's own control traffic (key bundles, node announcements): packets with these
    /// tags wait for verification by their component before they are forwarded, and are never
    /// delivered to clients.
    control: Vec<ControlChannel>,
}

/// Control packets on their way to verification: where they came from, and their trees.
pub type ControlBatch = (Origin, Vec<EchoPacket>, Trees);

/// Where packets with one fixed control tag go for verification.
pub struct ControlChannel {
    pub tag: Tag,
    pub tx: mpsc::Sender<ControlBatch>,
    /// Drop reason counted when the verifier's backlog is full.
    pub busy_reason: DropReason,
    /// Clients that subscribe to this tag by name get these packets (never `tail`'s
    /// subscribe-to-everything): the bridge's Echo frames.
    pub on_request: bool,
}

impl ControlChannel {
    /// A channel for `tag` with the standard backlog, and its receiving end.
    pub fn new(tag: Tag, busy_reason: DropReason) -> (Self, mpsc::Receiver<ControlBatch>) {
        let (tx, rx) = mpsc::channel(CONTROL_BACKLOG);
        (
            ControlChannel {
                tag,
                tx,
                busy_reason,
                on_request: false,
            },
            rx,
        )
    }
}

/// Counts returned to the injecting client.
#[derive(Debug, Default, Clone, Copy)]
pub struct Accepted {
    pub accepted: u32,
    pub duplicates: u32,
    pub rejected: u32,
}

/// A neighbor pruned `trees`: the packets of those trees still waiting in its queue are
/// announced instead of sent (under a burst a queue holds thousands; sending them would be
/// as many duplicates).
fn announce_instead(
    queue: std::collections::VecDeque<TreeItem>,
    trees: &[TreeKey],
) -> std::collections::VecDeque<TreeItem> {
    let mut out = std::collections::VecDeque::with_capacity(queue.len());
    for item in queue {
        match item {
            TreeItem::Packet { tree, packet } if trees.contains(&tree) => match out.back_mut() {
                Some(TreeItem::IHave { tree: t, ids }) if *t == tree && ids.len() < MAX_OFFER => {
                    ids.push(MsgId(packet.id))
                }
                _ => out.push_back(TreeItem::IHave {
                    tree,
                    ids: vec![MsgId(packet.id)],
                }),
            },
            other => out.push_back(other),
        }
    }
    out
}

/// The tree key of the packets `node` injects.
pub fn tree_of(node: &NodeId) -> TreeKey {
    broadcast::tree_of(&node.0)
}

impl Router {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        engine: EchoEngine,
        log: PacketLog<NodeId>,
        bcast: BroadcastConfig,
        neighbors: NeighborTable,
        subscribers: Subscribers,
        metrics: Arc<Metrics>,
        max_payload: usize,
        control: Vec<ControlChannel>,
    ) -> Self {
        Router {
            mode: bcast.mode,
            engine: Mutex::new(EchoState {
                engine,
                log,
                bcast: Broadcast::new(bcast),
            }),
            planner: Mutex::new(Planner::new(me)),
            own_tree: tree_of(&me),
            broadcast_wake: Notify::new(),
            neighbors,
            subscribers,
            metrics,
            max_payload,
            control,
        }
    }

    /// How this node forwards (`echo.broadcast`).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The tree of packets this node injects (its clients', its own announcements).
    pub fn own_tree(&self) -> TreeKey {
        self.own_tree
    }

    /// A new map of the mesh for planning trees: live links and their RTTs (µs).
    /// When it differs from the last one, every tree is planned again at its next packet.
    pub fn set_graph(&self, links: &[(NodeId, NodeId, u64)]) {
        let changed = self
            .planner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_graph(links, tree_of);
        // The planner's lock is released first: `forward_on` takes it under the engine lock.
        if changed {
            self.engine().bcast.forget_trees();
        }
    }

    /// A neighbor's link is up; `lazy`: it said it forwards by lazy push (until it says so,
    /// it is pushed every packet).
    pub fn neighbor_up(&self, id: NodeId, lazy: bool) {
        self.engine().bcast.neighbor_up(id, lazy);
    }

    /// A neighbor's last connection ended.
    pub fn neighbor_down(&self, id: NodeId) {
        self.engine().bcast.neighbor_down(id);
    }

    fn tree_for(&self, origin: Origin, trees: Option<&Trees>, id: &PacketId) -> TreeKey {
        if let Some(t) = trees.and_then(|t| t.get(id)) {
            return *t;
        }
        match origin {
            // From a neighbor that does not send trees: its own.
            Origin::Neighbor(n, _) => tree_of(&n),
            Origin::Client | Origin::Bridge => self.own_tree,
        }
    }

    /// Whether a client with filter `f` gets `p`: control packets only when they are
    /// delivered on request and `f` names their tag.
    pub(crate) fn client_gets(&self, f: &Filter, p: &EchoPacket) -> bool {
        if !self.is_control(p.tag) {
            return f.matches(p);
        }
        matches!(f, Filter::Tags(_)) && f.matches(p) && self.is_on_request(p.tag)
    }

    fn is_on_request(&self, tag: Option<Tag>) -> bool {
        tag.is_some_and(|t| self.control.iter().any(|c| c.on_request && c.tag == t))
    }

    fn is_control(&self, tag: Option<Tag>) -> bool {
        tag.is_some_and(|t| self.control.iter().any(|c| c.tag == t))
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, EchoState> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validate, deduplicate, deliver and forward one batch.
    pub fn dispatch(&self, origin: Origin, batch: Vec<EchoPacket>) -> Accepted {
        self.dispatch_on(origin, batch, None)
    }

    /// [`Router::dispatch`] for a batch whose packets' broadcast trees are known.
    pub fn dispatch_on(
        &self,
        origin: Origin,
        mut batch: Vec<EchoPacket>,
        trees: Option<&Trees>,
    ) -> Accepted {
        let m = &self.metrics;
        let label = origin.label();
        let received = batch.len();
        m.packets_received
            .with_label_values(&[label])
            .inc_by(received as u64);
        // Duplicates are dropped first (a read of the seen-cache), so that only new packets
        // pay for the integrity check, which hashes the payload outside the engine lock.
        // Under lazy push a duplicate from a neighbor may prune that link in its tree.
        let early_dups = match (self.mode, origin) {
            (Mode::Lazy, Origin::Neighbor(from, _)) => {
                let now = Instant::now();
                let mut out = Outgoing::new();
                let n = {
                    let mut st = self.engine();
                    let st = &mut *st;
                    let before = batch.len();
                    batch.retain(|p| {
                        if !st.engine.has_seen(&p.id) {
                            return true;
                        }
                        let tree = self.tree_for(origin, trees, &p.id);
                        st.bcast.on_duplicate(&p.id, tree, from, now);
                        false
                    });
                    self.collect(st, None, &mut out);
                    (before - batch.len()) as u64
                };
                self.send(out, None);
                n
            }
            _ => self.engine().engine.drop_seen(&mut batch),
        };
        m.duplicates_dropped.inc_by(early_dups);
        let mut rejected = 0u32;
        batch.retain(|p| match echo::validate(p, self.max_payload) {
            Ok(()) => true,
            Err(r) => {
                rejected += 1;
                m.count_drop(r.into(), 1);
                false
            }
        });
        if rejected > 0 {
            tracing::debug!(
                ?origin,
                rejected,
                "refused packets failing integrity checks"
            );
        }
        // Control packets (key bundles, announcements) are verified before they go anywhere.
        // What is kept gets a buffer of its own (`share_buffer`), one per batch and per
        // verifier: a neighbor's packets arrive as slices of its frame, which goes once these
        // are copied out of it.
        if batch.iter().any(|p| self.is_control(p.tag)) {
            for c in &self.control {
                let (mut mine, rest): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|p| p.tag == Some(c.tag));
                batch = rest;
                if mine.is_empty() {
                    continue;
                }
                echo::share_buffer(&mut mine);
                let n = mine.len() as u64;
                let mine_trees: Trees = mine
                    .iter()
                    .map(|p| (p.id, self.tree_for(origin, trees, &p.id)))
                    .collect();
                if c.tx.try_send((origin, mine, mine_trees)).is_err() {
                    m.count_drop(c.busy_reason, n);
                    tracing::debug!(
                        ?origin,
                        n,
                        reason = c.busy_reason.label(),
                        "verifier backlog full; dropping control packets"
                    );
                }
            }
        }
        echo::share_buffer(&mut batch);
        let mut acc = self.forward_on(origin, batch, trees);
        acc.duplicates += early_dups as u32;
        acc.rejected += rejected;
        acc
    }

    /// Deduplicate, deliver and forward packets that already passed every check.
    pub fn forward_verified(&self, origin: Origin, batch: Vec<EchoPacket>) -> Accepted {
        self.forward_on(origin, batch, None)
    }

    /// [`Router::forward_verified`] for packets whose broadcast trees are known.
    pub fn forward_on(
        &self,
        origin: Origin,
        batch: Vec<EchoPacket>,
        trees: Option<&Trees>,
    ) -> Accepted {
        let m = &self.metrics;
        let label = origin.label();
        let source = match origin {
            Origin::Neighbor(_, mode) => Source::Neighbor(mode),
            Origin::Client | Origin::Bridge => Source::Client,
        };
        let mut deliver = Vec::with_capacity(batch.len());
        let mut forward: Vec<EchoPacket> = Vec::with_capacity(batch.len());
        let from = match origin {
            Origin::Neighbor(id, _) => Some(id),
            Origin::Client | Origin::Bridge => None,
        };
        let now = Instant::now();
        let mut outgoing = Outgoing::new();
        let (out, seen_len, first_seq) = {
            let mut st = self.engine();
            let st = &mut *st;
            let out = st
                .engine
                .on_batch(source, batch, now, &mut deliver, &mut forward);
            // Log every accepted packet (as forwarded, when it may travel on): `forward` is
            // the forwardable subsequence of `deliver`, in the same order.
            st.log.expire(now);
            let first_seq = st.log.head();
            let mut fwd = forward.iter().peekable();
            let mut to_clients = Vec::with_capacity(deliver.len());
            for p in deliver.drain(..) {
                let tree = self.tree_for(origin, trees, &p.id);
                let seq = match fwd.peek() {
                    Some(f) if f.id == p.id => {
                        let seq = st.log.push((*f).clone(), from, tree, true, now);
                        // Which neighbors get it: pushed, or announced by ID. The mesh's
                        // control traffic always floods.
                        let control = self.is_control(f.tag);
                        let plan = match self.mode {
                            _ if control => None,
                            Mode::Lazy if !st.bcast.has_tree(tree) => self
                                .planner
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .children(tree)
                                .cloned(),
                            _ => None,
                        };
                        if control {
                            st.bcast.on_new_flooded(f.id, from);
                        } else {
                            st.bcast
                                .on_new_planned(f.id, tree, from, plan.as_ref(), now);
                        }
                        self.collect(st, Some((f, tree)), &mut outgoing);
                        fwd.next();
                        seq
                    }
                    _ => {
                        st.bcast.on_new_local(p.id);
                        st.log.push(p.clone(), from, tree, false, now)
                    }
                };
                if !self.is_control(p.tag) || self.is_on_request(p.tag) {
                    to_clients.push((seq, p));
                }
            }
            // Client deliveries under the same lock, so that their log positions arrive in
            // order and a resumed subscription misses nothing.
            if !to_clients.is_empty() {
                self.subscribers
                    .deliver(&to_clients, m, |f, p| self.client_gets(f, p));
            }
            m.packet_log_bytes.set(st.log.bytes() as i64);
            m.packet_log_evictions.inc_by(st.log.take_evicted());
            (out, st.engine.seen_len(), first_seq)
        };
        m.seen_cache_entries.set(seen_len as i64);
        m.packets_accepted
            .with_label_values(&[label])
            .inc_by(out.accepted);
        let duplicates = out.duplicates;
        m.duplicates_dropped.inc_by(duplicates);
        self.count_evictions(out.expired_evictions, out.capacity_evictions);
        self.send(outgoing, Some(first_seq));
        Accepted {
            accepted: out.accepted as u32,
            duplicates: duplicates as u32,
            rejected: 0,
        }
    }

    /// Turn the broadcast machine's output into queue items per neighbor. `current`: the
    /// packet just accepted (what its pushes carry); grafted packets come from the log.
    fn collect(
        &self,
        st: &mut EchoState,
        current: Option<(&EchoPacket, TreeKey)>,
        out: &mut Outgoing,
    ) {
        let m = &self.metrics;
        // Lazy push sends a batch's packets to different neighbors, and graft answers come
        // from the log: such a queue holds a part of a batch, so it gets a payload buffer of
        // its own (made once per packet, shared by its pushes). Flooding queues every packet
        // of a batch, in order, and shares the batch's buffer.
        let mut own_current: Option<EchoPacket> = None;
        while let Some(o) = st.bcast.poll_out() {
            match o {
                Out::Push { to, id } => {
                    let found = match current {
                        Some((p, tree)) if p.id == id => Some(match self.mode {
                            Mode::Flood => (p.clone(), tree),
                            Mode::Lazy => (
                                own_current.get_or_insert_with(|| p.detached()).clone(),
                                tree,
                            ),
                        }),
                        _ => st.log.find(&id).map(|(p, tree)| (p.detached(), tree)),
                    };
                    if let Some((packet, tree)) = found {
                        out.entry(to)
                            .or_default()
                            .push(TreeItem::Packet { tree, packet });
                    }
                }
                Out::IHave { to, tree, ids } => {
                    m.broadcast_sent
                        .with_label_values(&["ihave"])
                        .inc_by(ids.len() as u64);
                    let items = out.entry(to).or_default();
                    // One announcement per tree and batch.
                    match items.iter_mut().rev().find_map(|i| match i {
                        TreeItem::IHave { tree: t, ids } if *t == tree && ids.len() < MAX_OFFER => {
                            Some(ids)
                        }
                        _ => None,
                    }) {
                        Some(v) => v.extend(ids.into_iter().map(MsgId)),
                        None => items.push(TreeItem::IHave {
                            tree,
                            ids: ids.into_iter().map(MsgId).collect(),
                        }),
                    }
                }
                Out::Graft { to, tree, ids } => {
                    m.broadcast_sent
                        .with_label_values(&["graft"])
                        .inc_by(ids.len() as u64);
                    out.entry(to).or_default().push(TreeItem::Graft {
                        tree,
                        ids: ids.into_iter().map(MsgId).collect(),
                    });
                }
                Out::Prune { to, tree } => {
                    m.broadcast_sent.with_label_values(&["prune"]).inc();
                    out.entry(to).or_default().push(TreeItem::Prune { tree });
                }
            }
        }
    }

    /// Queue what `collect` gathered. A neighbor whose queue is full is owed the packets
    /// from `first_seq` on (repair offers them again), or from the log's head minus what it
    /// holds when there is no such position (a graft's answer, an announcement).
    fn send(&self, out: Outgoing, first_seq: Option<u64>) {
        if out.is_empty() {
            return;
        }
        let m = &self.metrics;
        let owed_from = first_seq.unwrap_or_else(|| self.log_tail());
        self.neighbors.for_each_up(|n| {
            let Some(items) = out.get(&n.id) else { return };
            let dropped = n.queue.push_all(items);
            let packets = items
                .iter()
                .filter(|i| matches!(i, TreeItem::Packet { .. }))
                .count() as u64;
            m.packets_forwarded.inc_by(packets.saturating_sub(dropped));
            if dropped > 0 {
                // Not lost: the repair loop offers what the neighbor lacks once there is room.
                m.count_drop(DropReason::NeighborQueueFull, dropped);
                n.owe_from(owed_from);
                tracing::debug!(neighbor = %n.id, dropped, "neighbor queue full; owed for repair");
            }
        });
    }

    fn log_tail(&self) -> u64 {
        self.engine().log.tail()
    }

    /// Lazy push's messages from a neighbor: announcements, grafts and prunes.
    pub fn on_tree_control(&self, from: NodeId, items: Vec<TreeItem>) {
        let now = Instant::now();
        let mut out = Outgoing::new();
        let mut pruned = Vec::new();
        {
            let mut st = self.engine();
            let st = &mut *st;
            for item in items {
                match item {
                    TreeItem::IHave { tree, ids } => {
                        let ids: Vec<PacketId> = ids.into_iter().map(|i| i.0).collect();
                        let engine = &st.engine;
                        st.bcast
                            .on_ihave(from, tree, &ids, |i| engine.has_seen(i), now, false);
                    }
                    TreeItem::Graft { tree, ids } => {
                        let ids: Vec<PacketId> =
                            ids.into_iter().take(MAX_OFFER).map(|i| i.0).collect();
                        let log = &st.log;
                        st.bcast
                            .on_graft(from, tree, &ids, |i| log.find(i).is_some());
                    }
                    TreeItem::Prune { tree } => {
                        st.bcast.on_prune(tree, from);
                        pruned.push(tree);
                    }
                    TreeItem::Packet { .. } => {}
                }
            }
            self.collect(st, None, &mut out);
        }
        if !pruned.is_empty() {
            if let Some(n) = self.neighbors.get(&from) {
                n.queue.rewrite(|q| announce_instead(q, &pruned));
            }
        }
        self.send(out, None);
        self.broadcast_wake.notify_one();
    }

    /// Lazy push's timers: pull what the tree did not bring in time. Runs until `stop`.
    pub async fn run_broadcast_timers(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let due = self.engine().bcast.poll_timeout();
            let wake = self.broadcast_wake.notified();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake => continue,
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            let mut out = Outgoing::new();
            {
                let mut st = self.engine();
                let st = &mut *st;
                st.bcast.handle_timeout(Instant::now());
                self.collect(st, None, &mut out);
            }
            self.send(out, None);
        }
    }

    fn count_evictions(&self, expired: u64, capacity: u64) {
        if expired > 0 {
            self.metrics
                .seen_cache_evictions
                .with_label_values(&["expired"])
                .inc_by(expired);
        }
        if capacity > 0 {
            self.metrics
                .seen_cache_evictions
                .with_label_values(&["capacity"])
                .inc_by(capacity);
        }
    }

    /// A control packet its verifier refused for good (stale, too frequent, forged): it is
    /// remembered as seen, so that copies from other neighbors, announcements of it and
    /// repair offers do not bring it back to the verifier again and again.
    pub fn refused(&self, id: &PacketId) {
        let mut st = self.engine();
        st.engine.remember(id, Instant::now());
        st.bcast.on_new_local(*id);
    }

    /// Offer walk for a neighbor's repair: IDs of forwardable packets from `from` on that did
    /// not come from `exclude`.
    pub fn offers(&self, from: u64, exclude: NodeId, max: usize, max_scan: usize) -> Offer {
        self.engine().log.offers(from, exclude, max, max_scan)
    }

    /// The logged packets (as forwarded) at these positions with their trees, as queue
    /// items, in order; gone ones are skipped.
    pub fn logged(&self, at: &[(u64, [u8; 32])]) -> Vec<TreeItem> {
        let st = self.engine();
        at.iter()
            .filter_map(|(seq, id)| st.log.get(*seq, id))
            // A few of the log's packets, kept in a neighbor's queue: their own buffers.
            .map(|(p, tree)| TreeItem::Packet {
                tree,
                packet: p.detached(),
            })
            .collect()
    }

    /// A neighbor offers packets this node may lack (echo repair): which of `ids` to pull
    /// (indexes into `ids`), decided by the broadcast machine as for any graft.
    pub fn pull_offered(&self, ids: &[[u8; 32]]) -> Vec<u32> {
        let mut st = self.engine();
        let st = &mut *st;
        let engine = &st.engine;
        st.bcast
            .pull_offered(ids, |id| engine.has_seen(id), Instant::now())
            .into_iter()
            .map(|i| i as u32)
            .collect()
    }

    /// The log position of the first packet accepted at or after `t`.
    pub fn log_position_at(&self, t: Instant) -> u64 {
        self.engine().log.position_at(t)
    }

    /// The log's head (the position after the newest packet).
    pub fn log_head(&self) -> u64 {
        self.engine().log.head()
    }

    /// Run `f` with the packet log locked: nothing is accepted (or delivered) meanwhile, so a
    /// subscription registered inside `f` continues exactly where a replay from the log ends.
    pub fn with_log<R>(&self, f: impl FnOnce(&PacketLog<NodeId>) -> R) -> R {
        f(&self.engine().log)
    }

    /// Periodic housekeeping when traffic is idle.
    pub fn tick(&self) {
        let (exp, cap, len) = {
            let mut st = self.engine();
            let now = Instant::now();
            st.log.expire(now);
            self.metrics.packet_log_bytes.set(st.log.bytes() as i64);
            self.metrics
                .packet_log_evictions
                .inc_by(st.log.take_evicted());
            let m = &self.metrics;
            m.broadcast_trees.set(st.bcast.tree_count() as i64);
            m.broadcast_awaited.set(st.bcast.missing_count() as i64);
            m.broadcast_awaited_dropped
                .inc_by(std::mem::take(&mut st.bcast.missing_dropped));
            let (exp, cap) = st.engine.tick(now);
            (exp, cap, st.engine.seen_len())
        };
        self.count_evictions(exp, cap);
        self.metrics.seen_cache_entries.set(len as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(tree: TreeKey, n: u8) -> TreeItem {
        TreeItem::Packet {
            tree,
            packet: EchoPacket::new(Bytes::from(vec![n]), 5, None),
        }
    }

    #[test]
    fn a_prune_turns_queued_packets_of_that_tree_into_one_announcement() {
        let q: std::collections::VecDeque<TreeItem> = [
            packet(1, 1),
            packet(2, 2),
            packet(1, 3),
            packet(1, 4),
            TreeItem::Prune { tree: 9 },
        ]
        .into();
        let out: Vec<TreeItem> = announce_instead(q, &[1]).into();
        let id = |n: u8| MsgId(EchoPacket::new(Bytes::from(vec![n]), 5, None).id);
        assert_eq!(
            out,
            vec![
                TreeItem::IHave {
                    tree: 1,
                    ids: vec![id(1)]
                },
                packet(2, 2),
                TreeItem::IHave {
                    tree: 1,
                    ids: vec![id(3), id(4)]
                },
                TreeItem::Prune { tree: 9 },
            ]
        );
    }
}
