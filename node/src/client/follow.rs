//! A subscribed client session that survives its node being drained: when the node sends
//! `Redirect`, the follower connects to a suggested node and subscribes there *before* it lets
//! the old session go (make before break), keeps reading the old one for [`LINGER`] so that
//! nothing in flight is lost, and drops packets it has already delivered (bounded memory of
//! recent IDs), so the application sees every packet once.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::connect::{connect_any, ClientError, ClientReader, ClientSession, ClientWriter};
use crate::echo::EchoPacket;
use crate::identity::NodeId;
use crate::wire::{ClientEvent, SubscribeFilter};

/// How long the old session is still read after moving.
pub const LINGER: Duration = Duration::from_secs(2);
/// Packet IDs remembered to drop duplicates across a move.
pub const RECENT_IDS: usize = 65_536;

/// What [`Follower::next`] yields.
#[derive(Debug)]
pub enum Followed {
    Event(ClientEvent),
    /// The session moved to another node (`HOST:PORT#FINGERPRINT`).
    Moved {
        to: String,
        reason: String,
    },
}

enum Source {
    Current(Result<Option<ClientEvent>, ClientError>),
    Old(Result<Option<ClientEvent>, ClientError>),
    LingerOver,
}

struct Old {
    conn: quinn::Connection,
    /// Kept open: finishing it would end the node's side of the session at once and drop
    /// what it still had queued for us.
    _writer: ClientWriter,
    reader: ClientReader,
    until: Instant,
}

pub struct Follower {
    endpoint: quinn::Endpoint,
    agent: String,
    filter: Option<SubscribeFilter>,
    pub node_id: NodeId,
    conn: quinn::Connection,
    writer: ClientWriter,
    reader: ClientReader,
    old: Option<Old>,
    /// A redirect being followed: kept until the move completes, so that a `next` cancelled
    /// mid-move resumes it on the next call.
    pending_move: Option<(Vec<String>, String)>,
    recent: RecentIds,
}

impl Follower {
    /// Wrap a connected session. `filter` is what the session is subscribed to (re-sent to
    /// the node it moves to).
    pub fn new(
        endpoint: quinn::Endpoint,
        session: ClientSession,
        agent: &str,
        filter: Option<SubscribeFilter>,
    ) -> Self {
        let node_id = session.node_id;
        let (conn, writer, reader) = session.split();
        Follower {
            endpoint,
            agent: agent.into(),
            filter,
            node_id,
            conn,
            writer,
            reader,
            old: None,
            pending_move: None,
            recent: RecentIds::new(RECENT_IDS),
        }
    }

    /// The current session's writer (requests go to the node the follower is on now).
    pub fn writer(&mut self) -> &mut ClientWriter {
        &mut self.writer
    }

    /// Change the subscription (kept for the next move). The node confirms with `Subscribed`.
    pub async fn subscribe(&mut self, filter: SubscribeFilter) -> Result<(), ClientError> {
        self.filter = Some(filter.clone());
        self.writer.subscribe(filter).await
    }

    /// Remember packets delivered outside the follower (before it was made).
    pub fn mark_seen(&mut self, id: [u8; 32]) -> bool {
        self.recent.insert(id)
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"done");
        if let Some(o) = &self.old {
            o.conn.close(0u32.into(), b"done");
        }
    }

    /// The next event: deliveries without packets already delivered, replies, or a move.
    /// `None` when the node ended the session. Cancellation safe.
    pub async fn next(&mut self) -> Result<Option<Followed>, ClientError> {
        loop {
            if let Some((nodes, reason)) = self.pending_move.clone() {
                let to = self.move_to(&nodes).await;
                self.pending_move = None;
                return Ok(Some(Followed::Moved { to: to?, reason }));
            }
            // Both readers are cancellation safe, so whichever loses the race keeps its place.
            let src = {
                let (reader, old) = (&mut self.reader, &mut self.old);
                let linger = old.as_ref().map(|o| o.until);
                let old_next = async {
                    match old.as_mut() {
                        Some(o) => o.reader.next_event().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ev = reader.next_event() => Source::Current(ev),
                    ev = old_next => Source::Old(ev),
                    _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => Source::LingerOver,
                }
            };
            let ev = match src {
                Source::Current(ev) => ev?,
                Source::Old(Ok(Some(ClientEvent::Deliver(batch)))) => {
                    if let Some(b) = self.fresh(batch) {
                        return Ok(Some(Followed::Event(ClientEvent::Deliver(b))));
                    }
                    continue;
                }
                Source::Old(Ok(Some(ClientEvent::Redirect { .. } | ClientEvent::Subscribed))) => {
                    continue
                }
                Source::Old(Ok(Some(other))) => return Ok(Some(Followed::Event(other))),
                Source::Old(Ok(None) | Err(_)) | Source::LingerOver => {
                    self.drop_old();
                    continue;
                }
            };
            match ev {
                Some(ClientEvent::Deliver(batch)) => {
                    if let Some(b) = self.fresh(batch) {
                        return Ok(Some(Followed::Event(ClientEvent::Deliver(b))));
                    }
                }
                Some(ClientEvent::Redirect { nodes, reason }) => {
                    self.pending_move = Some((nodes, reason));
                }
                other => return Ok(other.map(Followed::Event)),
            }
        }
    }

    fn fresh(&mut self, mut batch: Vec<EchoPacket>) -> Option<Vec<EchoPacket>> {
        batch.retain(|p| self.recent.insert(p.id));
        (!batch.is_empty()).then_some(batch)
    }

    fn drop_old(&mut self) {
        if let Some(o) = self.old.take() {
            o.conn.close(0u32.into(), b"moved");
        }
    }

    /// Connect to a suggested node and subscribe there; only then let the current session
    /// linger and go.
    async fn move_to(&mut self, nodes: &[String]) -> Result<String, ClientError> {
        let (mut s, to) = connect_any(&self.endpoint, nodes, &self.agent).await?;
        if let Some(f) = self.filter.clone() {
            s.subscribe(f).await?;
        }
        self.drop_old();
        let node_id = s.node_id;
        let (conn, writer, reader) = s.split();
        let old_conn = std::mem::replace(&mut self.conn, conn);
        let old_writer = std::mem::replace(&mut self.writer, writer);
        let old_reader = std::mem::replace(&mut self.reader, reader);
        self.old = Some(Old {
            conn: old_conn,
            _writer: old_writer,
            reader: old_reader,
            until: Instant::now() + LINGER,
        });
        self.node_id = node_id;
        Ok(to)
    }
}

/// A bounded set of recently seen packet IDs (oldest forgotten first).
struct RecentIds {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    cap: usize,
}

impl RecentIds {
    fn new(cap: usize) -> Self {
        RecentIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// True when `id` was not seen before.
    fn insert(&mut self, id: [u8; 32]) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_are_bounded_and_forget_the_oldest() {
        let mut r = RecentIds::new(3);
        for i in 0..3u8 {
            assert!(r.insert([i; 32]));
        }
        assert!(!r.insert([1; 32]));
        assert!(r.insert([9; 32]));
        assert_eq!(r.set.len(), 3);
        assert!(r.insert([0; 32]), "the oldest was forgotten");
    }
}
