//! A subscribed client session that survives its node being drained: when the node sends
//! `Redirect`, the follower connects to a suggested node and subscribes there *before* it lets
//! the old session go (make before break), keeps reading the old one for [`LINGER`] so that
//! nothing in flight is lost, and drops packets it has already delivered (bounded memory of
//! recent IDs), so the application sees every packet once.
//!
//! It also survives a lost connection (a phone on bad mobile data): against a node of protocol
//! ≥ `since::RESUME` it subscribes with log positions (`SubscribeAt`), remembers the position
//! of the last delivery, and when the connection breaks it dials the same node again (jittered
//! backoff, for up to [`RESUME_FOR`]) and resumes after that position: the node replays what
//! the client missed from its packet log. A gap the node can no longer fill (the log moved on,
//! or the node restarted) is reported as `Lagged`, never hidden.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::echo::EchoPacket;
use crate::identity::NodeId;
use crate::session::{connect_any, ClientError, ClientReader, ClientSession, ClientWriter};
use crate::wire::{self, ClientEvent, LogPosition, SubscribeFilter};

/// How long the old session is still read after moving.
pub const LINGER: Duration = Duration::from_secs(2);
/// Packet IDs remembered to drop duplicates across a move or a resume.
pub const RECENT_IDS: usize = 262_144;
/// A position subscription that hears nothing for this long (the node sends a heartbeat every
/// `session::HEARTBEAT` when idle) is stalled: QUIC keeps the connection alive but data does
/// not get through (seen under heavy loss, with loss recovery backing off for tens of
/// seconds). The follower then dials again and resumes on a fresh connection.
pub const STALLED: Duration = Duration::from_secs(8);
/// How long a broken session is dialed again before the follower gives up.
pub const RESUME_FOR: Duration = Duration::from_secs(120);

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
    /// Where the node's packet log stands for us (positions mode only).
    position: Option<LogPosition>,
    /// Switch the current session to positions mode before reading on.
    want_positions: bool,
    /// The node speaks protocol ≥ `since::RESUME` (a broken session can be resumed).
    resumable: bool,
    remote: std::net::SocketAddr,
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
        let resumable = session.version >= wire::since::RESUME && filter.is_some();
        let (conn, writer, reader) = session.split();
        let remote = conn.remote_address();
        Follower {
            position: None,
            want_positions: resumable,
            resumable,
            remote,
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

    /// Change the subscription (kept for the next move). The node confirms with `Subscribed`
    /// (or `Resumed`, in positions mode).
    pub async fn subscribe(&mut self, filter: SubscribeFilter) -> Result<(), ClientError> {
        self.filter = Some(filter.clone());
        if self.resumable {
            self.writer.subscribe_at(filter, self.position).await
        } else {
            self.writer.subscribe(filter).await
        }
    }

    /// Note a delivery's position (only ever forward within one log epoch).
    fn advance(&mut self, at: LogPosition) {
        match self.position {
            Some(p) if p.epoch == at.epoch && p.seq >= at.seq => {}
            _ => self.position = Some(at),
        }
    }

    /// Dial the same node again after a lost connection and resume after the last position.
    async fn resume(&mut self, why: ClientError) -> Result<(), ClientError> {
        let r = super::inject::redial(
            &self.endpoint,
            self.remote,
            self.node_id,
            &self.agent,
            RESUME_FOR,
            why,
        )
        .await;
        let mut s = match r {
            Ok(s) if s.version >= wire::since::RESUME => s,
            Ok(_) => {
                return Err(ClientError::Protocol(
                    "the node was downgraded and cannot resume a session".into(),
                ))
            }
            Err(ClientError::Redirected { nodes, reason }) => {
                // It drains now: move instead.
                self.pending_move = Some((nodes, reason));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let filter = self.filter.clone().unwrap_or(SubscribeFilter::All);
        s.writer.subscribe_at(filter, self.position).await?;
        let (conn, writer, reader) = s.split();
        self.conn.close(0u32.into(), b"resumed");
        self.conn = conn;
        self.writer = writer;
        self.reader = reader;
        self.want_positions = false;
        tracing::info!(node = %self.node_id, after = ?self.position, "session resumed");
        Ok(())
    }

    /// The current connection (to read QUIC's statistics, say).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
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
            if self.want_positions {
                self.want_positions = false;
                if let Some(f) = self.filter.clone() {
                    self.writer.subscribe_at(f, None).await?;
                }
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
                let stall_guard = self.resumable && !self.want_positions;
                tokio::select! {
                    ev = reader.next_event() => Source::Current(ev),
                    _ = tokio::time::sleep(STALLED), if stall_guard => {
                        Source::Current(Err(ClientError::Io(format!(
                            "nothing from the node for {} s (stalled connection)",
                            STALLED.as_secs()
                        ))))
                    }
                    ev = old_next => Source::Old(ev),
                    _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => Source::LingerOver,
                }
            };
            let ev = match src {
                Source::Current(Err(e)) if self.resumable && matches!(e, ClientError::Io(_)) => {
                    tracing::info!(node = %self.node_id, error = %e, "session lost; resuming");
                    self.resume(e).await?;
                    continue;
                }
                Source::Current(ev) => ev?,
                Source::Old(Ok(Some(ClientEvent::Deliver(batch)))) => {
                    if let Some(b) = self.fresh(batch) {
                        return Ok(Some(Followed::Event(ClientEvent::Deliver(b))));
                    }
                    continue;
                }
                Source::Old(Ok(Some(ClientEvent::DeliverAt { packets, .. }))) => {
                    if let Some(b) = self.fresh(packets) {
                        return Ok(Some(Followed::Event(ClientEvent::Deliver(b))));
                    }
                    continue;
                }
                Source::Old(Ok(Some(
                    ClientEvent::Redirect { .. }
                    | ClientEvent::Subscribed
                    | ClientEvent::Resumed { .. },
                ))) => continue,
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
                Some(ClientEvent::DeliverAt { at, packets }) => {
                    self.advance(at);
                    if let Some(b) = self.fresh(packets) {
                        return Ok(Some(Followed::Event(ClientEvent::Deliver(b))));
                    }
                }
                Some(ClientEvent::Resumed {
                    missed, stale, at, ..
                }) => {
                    self.advance(at);
                    if missed > 0 || stale {
                        // What the node could not replay: said, not hidden.
                        return Ok(Some(Followed::Event(ClientEvent::Lagged {
                            dropped: missed,
                        })));
                    }
                    return Ok(Some(Followed::Event(ClientEvent::Subscribed)));
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
        // Positions are per node: start over in positions mode on the new one.
        self.resumable = s.version >= wire::since::RESUME && self.filter.is_some();
        self.want_positions = self.resumable;
        self.position = None;
        self.remote = s.conn.remote_address();
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
