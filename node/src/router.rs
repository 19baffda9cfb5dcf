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
        neighbors: NeighborTable,
        subscribers: Subscribers,
        metrics: Arc<Metrics>,
        max_payload: usize,
    ) -> Self {
        Router {
            engine: Mutex::new(engine),
            neighbors,
            subscribers,
            metrics,
            max_payload,
        }
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
        let duplicates = out.duplicates + early_dups;
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
        if !deliver.is_empty() {
            self.subscribers.deliver(&deliver, m);
        }
        Accepted {
            accepted: out.accepted as u32,
            duplicates: duplicates as u32,
            rejected,
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
