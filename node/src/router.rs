//! The router connects the echo engine to the I/O: it runs a batch through the engine and
//! fans the result out to neighbor queues and to subscribed client sessions, counting every
//! drop. It never waits: a full queue drops for that one destination only.

use std::sync::Mutex;
use std::time::Instant;

use crate::client::Subscribers;
use crate::echo::{self, EchoEngine, EchoMode, EchoPacket, Source};
use crate::identity::NodeId;
use crate::metrics::{drop_reason, Metrics};
use crate::peer::NeighborTable;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::tags::Tag;

/// Where a batch entered this node.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Neighbor(NodeId, EchoMode),
    Client,
}

pub struct Router {
    engine: Mutex<EchoEngine>,
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
    pub busy_reason: &'static str,
}

impl ControlChannel {
    /// A channel for `tag` with the standard backlog, and its receiving end.
    pub fn new(
        tag: Tag,
        busy_reason: &'static str,
    ) -> (Self, mpsc::Receiver<(Origin, Vec<EchoPacket>)>) {
        let (tx, rx) = mpsc::channel(CONTROL_BACKLOG);
        (
            ControlChannel {
                tag,
                tx,
                busy_reason,
            },
            rx,
        )
    }
}

/// Batches of control packets that may wait for verification, per channel.
pub const CONTROL_BACKLOG: usize = 256;

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
        neighbors: NeighborTable,
        subscribers: Subscribers,
        metrics: Arc<Metrics>,
        max_payload: usize,
        control: Vec<ControlChannel>,
    ) -> Self {
        Router {
            engine: Mutex::new(engine),
            neighbors,
            subscribers,
            metrics,
            max_payload,
            control,
        }
    }

    fn is_control(&self, tag: Option<Tag>) -> bool {
        tag.is_some_and(|t| self.control.iter().any(|c| c.tag == t))
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, EchoEngine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validate, deduplicate, deliver and forward one batch.
    pub fn dispatch(&self, origin: Origin, mut batch: Vec<EchoPacket>) -> Accepted {
        let m = &self.metrics;
        let label = match origin {
            Origin::Neighbor(..) => "neighbor",
            Origin::Client => "client",
        };
        let received = batch.len();
        m.packets_received
            .with_label_values(&[label])
            .inc_by(received as u64);
        // Duplicates are dropped first (a read of the seen-cache), so that only new packets
        // pay for the integrity check, which hashes the payload outside the engine lock.
        let early_dups = self.engine().drop_seen(&mut batch);
        m.duplicates_dropped.inc_by(early_dups);
        let mut rejected = 0u32;
        batch.retain(|p| match echo::validate(p, self.max_payload) {
            Ok(()) => true,
            Err(r) => {
                rejected += 1;
                m.count_drop(r.label(), 1);
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
                        reason = c.busy_reason,
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
        let label = match origin {
            Origin::Neighbor(..) => "neighbor",
            Origin::Client => "client",
        };
        let source = match origin {
            Origin::Neighbor(_, mode) => Source::Neighbor(mode),
            Origin::Client => Source::Client,
        };
        let mut deliver = Vec::with_capacity(batch.len());
        let mut forward = Vec::with_capacity(batch.len());
        let (out, seen_len) = {
            let mut e = self.engine();
            let out = e.on_batch(source, batch, Instant::now(), &mut deliver, &mut forward);
            (out, e.seen_len())
        };
        m.seen_cache_entries.set(seen_len as i64);
        m.packets_accepted
            .with_label_values(&[label])
            .inc_by(out.accepted);
        let duplicates = out.duplicates;
        m.duplicates_dropped.inc_by(duplicates);
        self.count_evictions(out.expired_evictions, out.capacity_evictions);
        if !forward.is_empty() {
            let from = match origin {
                Origin::Neighbor(id, _) => Some(id),
                Origin::Client => None,
            };
            self.neighbors.for_each_up(|n| {
                if Some(n.id) == from {
                    return;
                }
                let dropped = n.queue.push_all(&forward);
                m.packets_forwarded.inc_by(forward.len() as u64 - dropped);
                if dropped > 0 {
                    m.count_drop(drop_reason::NEIGHBOR_QUEUE_FULL, dropped);
                    tracing::debug!(neighbor = %n.id, dropped, "neighbor queue full");
                }
            });
        }
        deliver.retain(|p| !self.is_control(p.tag));
        if !deliver.is_empty() {
            self.subscribers.deliver(&deliver, m);
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

    /// Periodic housekeeping when traffic is idle.
    pub fn tick(&self) {
        let (exp, cap, len) = {
            let mut e = self.engine();
            let (exp, cap) = e.tick(Instant::now());
            (exp, cap, e.seen_len())
        };
        self.count_evictions(exp, cap);
        self.metrics.seen_cache_entries.set(len as i64);
    }
}
