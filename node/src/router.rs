//! The router connects the echo engine to the I/O: it runs a batch through the engine and
//! fans the result out to neighbor queues and to subscribed client sessions, counting every
//! drop. It never waits: a full queue drops for that one destination only.

use std::sync::Mutex;
use std::time::Instant;

use crate::client::subscribers::{Filter, Subscribers};
use crate::echo::{self, EchoEngine, EchoMode, EchoPacket, Offer, PacketLog, Source};
use crate::identity::NodeId;
use crate::metrics::{DropReason, Metrics};
use crate::peer::NeighborTable;
use std::sync::Arc;

use tokio::sync::mpsc;

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

/// The echo engine and the packet log, under one lock: a packet is in the log exactly when
/// the engine accepted it, and client deliveries take log positions in log order.
pub struct EchoState {
    pub engine: EchoEngine,
    pub log: PacketLog<NodeId>,
}

pub struct Router {
    engine: Mutex<EchoState>,
    pub neighbors: NeighborTable,
    pub subscribers: Subscribers,
    pub metrics: Arc<Metrics>,
    max_payload: usize,
    /// The mesh's own control traffic (key bundles, node announcements): packets with these
    /// tags wait for verification by their component before they are forwarded, and are never
    /// delivered to clients.
    control: Vec<ControlChannel>,
}

/// Where packets with one fixed control tag go for verification.
pub struct ControlChannel {
    pub tag: Tag,
    pub tx: mpsc::Sender<(Origin, Vec<EchoPacket>)>,
    /// Drop reason counted when the verifier's backlog is full.
    pub busy_reason: DropReason,
    /// Clients that subscribe to this tag by name get these packets (never `tail`'s
    /// subscribe-to-everything): the bridge's Echo frames.
    pub on_request: bool,
}

impl ControlChannel {
    /// A channel for `tag` with the standard backlog, and its receiving end.
    pub fn new(
        tag: Tag,
        busy_reason: DropReason,
    ) -> (Self, mpsc::Receiver<(Origin, Vec<EchoPacket>)>) {
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

impl Router {
    pub fn new(
        engine: EchoEngine,
        log: PacketLog<NodeId>,
        neighbors: NeighborTable,
        subscribers: Subscribers,
        metrics: Arc<Metrics>,
        max_payload: usize,
        control: Vec<ControlChannel>,
    ) -> Self {
        Router {
            engine: Mutex::new(EchoState { engine, log }),
            neighbors,
            subscribers,
            metrics,
            max_payload,
            control,
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
    pub fn dispatch(&self, origin: Origin, mut batch: Vec<EchoPacket>) -> Accepted {
        let m = &self.metrics;
        let label = origin.label();
        let received = batch.len();
        m.packets_received
            .with_label_values(&[label])
            .inc_by(received as u64);
        // Duplicates are dropped first (a read of the seen-cache), so that only new packets
        // pay for the integrity check, which hashes the payload outside the engine lock.
        let early_dups = self.engine().engine.drop_seen(&mut batch);
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
        if batch.iter().any(|p| self.is_control(p.tag)) {
            for c in &self.control {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|p| p.tag == Some(c.tag));
                batch = rest;
                if mine.is_empty() {
                    continue;
                }
                let n = mine.len() as u64;
                if c.tx.try_send((origin, mine)).is_err() {
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
        let mut acc = self.forward_verified(origin, batch);
        acc.duplicates += early_dups as u32;
        acc.rejected += rejected;
        acc
    }

    /// Deduplicate, deliver and forward packets that already passed every check.
    pub fn forward_verified(&self, origin: Origin, batch: Vec<EchoPacket>) -> Accepted {
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
                let seq = match fwd.peek() {
                    Some(f) if f.id == p.id => {
                        let seq = st.log.push((*f).clone(), from, true, now);
                        fwd.next();
                        seq
                    }
                    _ => st.log.push(p.clone(), from, false, now),
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
        if !forward.is_empty() {
            self.neighbors.for_each_up(|n| {
                if Some(n.id) == from {
                    return;
                }
                let dropped = n.queue.push_all(&forward);
                m.packets_forwarded.inc_by(forward.len() as u64 - dropped);
                if dropped > 0 {
                    // Not lost: the repair loop offers this batch again once there is room.
                    m.count_drop(DropReason::NeighborQueueFull, dropped);
                    n.owe_from(first_seq);
                    tracing::debug!(neighbor = %n.id, dropped, "neighbor queue full; owed for repair");
                }
            });
        }
        Accepted {
            accepted: out.accepted as u32,
            duplicates: duplicates as u32,
            rejected: 0,
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

    /// Offer walk for a neighbor's repair: IDs of forwardable packets from `from` on that did
    /// not come from `exclude`.
    pub fn offers(&self, from: u64, exclude: NodeId, max: usize, max_scan: usize) -> Offer {
        self.engine().log.offers(from, exclude, max, max_scan)
    }

    /// The logged packets (as forwarded) at these positions, in order; gone ones are skipped.
    pub fn logged(&self, at: &[(u64, [u8; 32])]) -> Vec<EchoPacket> {
        let st = self.engine();
        at.iter()
            .filter_map(|(seq, id)| st.log.get(*seq, id).cloned())
            .collect()
    }

    /// Which of `ids` this node has not seen (indexes into `ids`).
    pub fn unseen(&self, ids: &[[u8; 32]]) -> Vec<u32> {
        let st = self.engine();
        ids.iter()
            .enumerate()
            .filter(|(_, id)| !st.engine.has_seen(id))
            .map(|(i, _)| i as u32)
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
            let (exp, cap) = st.engine.tick(now);
            (exp, cap, st.engine.seen_len())
        };
        self.count_evictions(exp, cap);
        self.metrics.seen_cache_entries.set(len as i64);
    }
}
