//! The neighbor table: who is pinned, how to reach them, and their live connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::echo::EchoMode;
use crate::identity::NodeId;
use crate::metrics::Metrics;
use crate::outq::OutQueue;
use crate::rate::{RateLimit, TokenBucket};
use crate::store::{NeighborOrigin, NeighborRecord};
use crate::wire::{Departure, PeerHello, TreeItem};
use echomesh_proto::membership::{
    self, Change, Detector, Event as MemberEvent, Member, State as MemberState,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeighborState {
    Up,
    Connecting,
    Down,
}

impl NeighborState {
    pub fn label(self) -> &'static str {
        match self {
            NeighborState::Up => "up",
            NeighborState::Connecting => "connecting",
            NeighborState::Down => "down",
        }
    }
}

pub struct Neighbor {
    pub id: NodeId,
    pub label: String,
    /// What goes out on the echo stream: packets with their tree, and lazy push's messages.
    pub queue: OutQueue<TreeItem>,
    state: Mutex<Inner>,
    up: AtomicUsize,
    /// The key of the newest connection (0: none). Only its writer takes from `queue`: an
    /// older connection of a neighbor that came back on a new one may belong to the process
    /// that stopped, and would swallow what it took until a stateless reset or the idle
    /// timeout ended it.
    sender: tokio::sync::watch::Sender<u64>,
    /// Wakes the dialer: a connection ended, the neighbor was removed, or its address changed.
    pub changed: Notify,
    rate: Mutex<TokenBucket>,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    /// `echomesh_member_transitions_total`: every change of its member state is counted.
    transitions: prometheus::IntCounterVec,
    /// Where in the node's packet log this neighbor must be offered packets again from
    /// (`peer::repair`): it was down, its queue overflowed, or a connection died with packets
    /// in flight. `None`: it is owed nothing. A new neighbor is owed the whole log.
    resync: Mutex<Option<u64>>,
    /// Wakes the repair loop when something is owed.
    pub repair_wake: Notify,
    /// One repair page at a time per neighbor, whatever the number of connections.
    pub repairing: tokio::sync::Mutex<()>,
    /// Ozone copies on their way to this neighbor: the copies of deposits made at the same
    /// time travel in one `OzoneStore` request (`ozone::service`, which starts the lane).
    pub replication: Mutex<Option<tokio::sync::mpsc::Sender<ReplicaCopy>>>,
}

/// One ozone copy for a neighbor's replication lane, and who waits for its answer (the
/// neighbor's reply, or why there is none).
pub struct ReplicaCopy {
    pub msg: echomesh_proto::ozone::StoredMessage,
    /// The span the copy was made in: a group's request runs in its first copy's span, so
    /// the replica's `ozone.store` joins that deposit's trace.
    pub span: tracing::Span,
    pub reply: tokio::sync::oneshot::Sender<Result<crate::wire::PeerReply, String>>,
}

struct Inner {
    addr: Option<String>,
    mode: EchoMode,
    origin: NeighborOrigin,
    conns: Vec<(u64, quinn::Connection)>,
    dialing: bool,
    dialer_running: bool,
    removed: bool,
    last_error: Option<String>,
    /// The neighbor as a member of the mesh: its hello, its departure, failure detection
    /// (`echomesh_proto::membership`). Its link is up exactly while `conns` is not empty.
    member: Member,
    since: Instant,
}

/// A read-only snapshot for the admin API.
#[derive(Debug, Clone)]
pub struct NeighborView {
    pub id: NodeId,
    pub addr: Option<String>,
    pub remote: Option<std::net::SocketAddr>,
    pub mode: EchoMode,
    pub origin: NeighborOrigin,
    pub state: NeighborState,
    pub rtt: Option<Duration>,
    pub connections: usize,
    pub since: Duration,
    pub last_error: Option<String>,
    pub queue_bytes: usize,
    pub departure: Departure,
    pub version: u16,
    /// QUIC path statistics of each live connection.
    pub paths: Vec<quinn::PathStats>,
}

impl Neighbor {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feed its member machine (under the lock held in `i`), counting a change of state.
    fn member_event(&self, i: &mut Inner, e: MemberEvent, now: Instant) -> Option<Change> {
        self.member_do(i, |m| m.handle(e, now))
    }

    /// Run `f` on its member machine, counting a change of state.
    fn member_do(
        &self,
        i: &mut Inner,
        f: impl FnOnce(&mut Member) -> Option<Change>,
    ) -> Option<Change> {
        let before = i.member.state();
        let change = f(&mut i.member);
        let after = i.member.state();
        if before != after {
            self.transitions.with_label_values(&[after.label()]).inc();
        }
        change
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire) > 0
    }

    /// Wait until this neighbor's queue holds at most `bytes` (pacing a sync so that echo
    /// traffic keeps the rest); `false` when it went down or `stop` was cancelled.
    pub async fn wait_room(
        &self,
        bytes: usize,
        stop: &tokio_util::sync::CancellationToken,
    ) -> bool {
        while self.queue.bytes() > bytes {
            if !self.is_up() || stop.is_cancelled() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_up() && !stop.is_cancelled()
    }

    /// The neighbor may lack what the log holds from `seq` on: offer it again.
    pub fn owe_from(&self, seq: u64) {
        {
            let mut r = self.resync.lock().unwrap_or_else(|p| p.into_inner());
            *r = Some(r.map_or(seq, |s| s.min(seq)));
        }
        self.repair_wake.notify_one();
    }

    /// Take what is owed (the repair loop walks it and gives back where it stopped).
    pub fn take_owed(&self) -> Option<u64> {
        self.resync.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn is_owed(&self) -> bool {
        self.resync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn mode(&self) -> EchoMode {
        self.inner().mode
    }

    pub fn addr(&self) -> Option<String> {
        self.inner().addr.clone()
    }

    pub fn is_removed(&self) -> bool {
        self.inner().removed
    }

    pub fn state(&self) -> NeighborState {
        let i = self.inner();
        if !i.conns.is_empty() {
            NeighborState::Up
        } else if i.dialing {
            NeighborState::Connecting
        } else {
            NeighborState::Down
        }
    }

    pub fn set_dialing(&self, dialing: bool) {
        self.inner().dialing = dialing;
    }

    /// A live connection to this neighbor, for request/response streams: the newest. When a
    /// neighbor restarts, its old connection lingers until the idle timeout, and a request
    /// sent on it would wait for nothing.
    pub fn connection(&self) -> Option<quinn::Connection> {
        self.inner().conns.last().map(|(_, c)| c.clone())
    }

    /// Protocol version from its last hello (0 before the first connection).
    pub fn version(&self) -> u16 {
        self.inner().member.protocol()
    }

    pub fn departure(&self) -> Departure {
        self.inner().member.departure()
    }

    /// It told us its state (a `Departure` request).
    pub fn set_departure(&self, d: Departure) -> Option<Change> {
        let mut i = self.inner();
        self.member_event(&mut i, MemberEvent::Departed(d), Instant::now())
    }

    /// Alive, draining, left or failed (`echomesh_proto::membership`).
    pub fn member_state(&self) -> MemberState {
        self.inner().member.state()
    }

    /// A copy of its member record (for cluster-wide queries).
    pub fn member(&self) -> Member {
        self.inner().member.clone()
    }

    /// Run the member's failure-detection timer.
    pub fn member_timeout(&self, now: Instant) -> Option<Change> {
        let mut i = self.inner();
        self.member_do(&mut i, |m| m.handle_timeout(now))
    }

    /// A heartbeat arrived from it.
    pub fn heard(&self, now: Instant) -> Option<Change> {
        let mut i = self.inner();
        self.member_event(&mut i, MemberEvent::Heard, now)
    }

    /// This node did not run for `d`: not the neighbor's fault.
    pub fn paused(&self, d: Duration, now: Instant) {
        let mut i = self.inner();
        self.member_event(&mut i, MemberEvent::Paused(d), now);
    }

    /// The cluster named in the neighbor's last hello (None before the first connection).
    pub fn cluster(&self) -> Option<String> {
        self.inner().member.cluster().map(str::to_string)
    }

    pub fn set_error(&self, e: String) {
        self.inner().last_error = Some(e);
    }

    /// Claim the right to run this neighbor's dialer (only one at a time).
    pub fn claim_dialer(&self) -> bool {
        let mut i = self.inner();
        if i.dialer_running || i.removed || i.addr.is_none() {
            return false;
        }
        i.dialer_running = true;
        true
    }

    pub fn release_dialer(&self) {
        let mut i = self.inner();
        i.dialer_running = false;
        i.dialing = false;
    }

    /// Register an established, hello-checked connection. Returns its key, or `None` when
    /// the neighbor was removed meanwhile.
    pub fn attach(&self, key: u64, conn: quinn::Connection, hello: &PeerHello) -> bool {
        let mut i = self.inner();
        if i.removed {
            return false;
        }
        let now = Instant::now();
        // Connections of a neighbor that fell silent (suspected or failed) belong to a process
        // that stopped talking — it restarted, or its path changed. Each connection's writer
        // takes from the neighbor's one queue: a dead one left attached would swallow what is
        // queued until its idle timeout. So a new connection replaces them.
        if !i.conns.is_empty() && i.member.state() != MemberState::Alive {
            for (_, c) in i.conns.drain(..) {
                c.close(
                    quinn::VarInt::from_u32(crate::wire::close::NORMAL),
                    b"superseded by a new connection",
                );
            }
        }
        let first = i.conns.is_empty();
        if first {
            i.since = now;
        }
        // A first connection (after none) means it serves again unless it says otherwise (a
        // draining node repeats its `Departure` on every connection); an extra one comes from
        // the same process, and what it already told us stands.
        self.member_event(
            &mut i,
            MemberEvent::Connected {
                cluster: hello.cluster.clone(),
                protocol: hello.version,
                first,
            },
            now,
        );
        i.conns.push((key, conn));
        i.last_error = None;
        self.up.store(i.conns.len(), Ordering::Release);
        self.sender.send_replace(key);
        true
    }

    /// Follows which connection sends the echo stream (its key; 0 while none is up).
    pub fn sender(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sender.subscribe()
    }

    /// Forget a connection. Returns true when it was the last one (the neighbor is now down).
    pub fn detach(&self, key: u64) -> bool {
        let last = {
            let mut i = self.inner();
            i.conns.retain(|(k, _)| *k != key);
            self.up.store(i.conns.len(), Ordering::Release);
            self.sender
                .send_replace(i.conns.last().map_or(0, |(k, _)| *k));
            if i.conns.is_empty() {
                let now = Instant::now();
                i.since = now;
                self.member_event(&mut i, MemberEvent::Disconnected, now);
            }
            i.conns.is_empty()
        };
        self.changed.notify_waiters();
        last
    }

    /// Keep the packets of `batch` that fit the per-neighbor rate limit (one lock per
    /// batch); returns how many were dropped.
    pub fn admit(&self, batch: &mut Vec<crate::echo::EchoPacket>, now: Instant) -> u64 {
        let before = batch.len();
        let mut bucket = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        batch.retain(|p| bucket.try_take(p.payload.len(), now));
        (before - batch.len()) as u64
    }

    /// Queue packets of broadcast tree `tree` for this neighbor; returns how many did not fit.
    pub fn push_packets(&self, packets: &[crate::echo::EchoPacket], tree: u64) -> u64 {
        let items: Vec<TreeItem> = packets
            .iter()
            .map(|p| TreeItem::Packet {
                tree,
                packet: p.clone(),
            })
            .collect();
        self.queue.push_all(&items)
    }

    pub fn set_rate(&self, limit: RateLimit) {
        self.rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_limit(limit);
    }

    pub fn view(&self) -> NeighborView {
        let state = self.state();
        let i = self.inner();
        let newest = i.conns.last().map(|(_, c)| c);
        NeighborView {
            id: self.id,
            addr: i.addr.clone(),
            remote: newest.map(|c| c.remote_address()),
            mode: i.mode,
            origin: i.origin,
            state,
            rtt: newest.map(|c| c.rtt()),
            connections: i.conns.len(),
            since: i.since.elapsed(),
            last_error: i.last_error.clone(),
            queue_bytes: self.queue.bytes(),
            departure: i.member.departure(),
            version: i.member.protocol(),
            paths: i.conns.iter().map(|(_, c)| c.stats().path).collect(),
        }
    }

    /// Close every connection (neighbor removed or node stopping).
    pub fn close_all(&self, code: u32, reason: &[u8]) {
        let conns: Vec<_> = self.inner().conns.iter().map(|(_, c)| c.clone()).collect();
        for c in conns {
            c.close(quinn::VarInt::from_u32(code), reason);
        }
    }

    /// The persistent form of this neighbor, stamped with when it was added.
    pub fn record(&self, added_unix: u64) -> NeighborRecord {
        let i = self.inner();
        NeighborRecord {
            id: self.id,
            addr: i.addr.clone(),
            mode: i.mode,
            origin: i.origin,
            added_unix,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("neighbor limit reached ({0}); raise limits.max_neighbors or remove a neighbor")]
    Full(usize),
}

pub struct NeighborTable {
    map: RwLock<HashMap<NodeId, Arc<Neighbor>>>,
    max: usize,
    queue_bytes: usize,
    rate: Mutex<RateLimit>,
    detector: Detector,
    metrics: Arc<Metrics>,
}

impl NeighborTable {
    pub fn new(
        max: usize,
        queue_bytes: usize,
        rate: RateLimit,
        detector: Detector,
        metrics: Arc<Metrics>,
    ) -> Self {
        NeighborTable {
            map: RwLock::new(HashMap::new()),
            max,
            queue_bytes,
            rate: Mutex::new(rate),
            detector,
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Arc<Neighbor>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Arc<Neighbor>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &NodeId) -> Option<Arc<Neighbor>> {
        self.read().get(id).cloned()
    }

    /// Pin a neighbor (or update its address/mode). A known address is kept when the new
    /// record has none.
    pub fn upsert(&self, rec: &NeighborRecord) -> Result<Arc<Neighbor>, TableError> {
        let mut map = self.write();
        if let Some(n) = map.get(&rec.id) {
            let mut i = n.inner();
            if rec.addr.is_some() {
                i.addr = rec.addr.clone();
            }
            i.mode = rec.mode;
            if rec.origin != NeighborOrigin::Static || i.origin == NeighborOrigin::Static {
                i.origin = rec.origin;
            }
            drop(i);
            n.changed.notify_waiters();
            return Ok(n.clone());
        }
        if map.len() >= self.max {
            return Err(TableError::Full(self.max));
        }
        let label = rec.id.short();
        let n = Arc::new(Neighbor {
            id: rec.id,
            queue: OutQueue::new(self.queue_bytes),
            resync: Mutex::new(Some(0)),
            repair_wake: Notify::new(),
            repairing: tokio::sync::Mutex::new(()),
            replication: Mutex::new(None),
            state: Mutex::new(Inner {
                addr: rec.addr.clone(),
                mode: rec.mode,
                origin: rec.origin,
                conns: Vec::new(),
                dialing: false,
                dialer_running: false,
                removed: false,
                last_error: None,
                member: Member::new(self.detector, membership::CONFIRM, Instant::now()),
                since: Instant::now(),
            }),
            up: AtomicUsize::new(0),
            sender: tokio::sync::watch::Sender::new(0),
            changed: Notify::new(),
            rate: Mutex::new(TokenBucket::new(
                *self.rate.lock().unwrap_or_else(|p| p.into_inner()),
                Instant::now(),
            )),
            bytes_in: self
                .metrics
                .neighbor_bytes_received
                .with_label_values(&[&label]),
            bytes_out: self
                .metrics
                .neighbor_bytes_sent
                .with_label_values(&[&label]),
            transitions: self.metrics.member_transitions.clone(),
            label,
        });
        map.insert(rec.id, n.clone());
        Ok(n)
    }

    /// Unpin: close its connections and stop its dialer.
    pub fn remove(&self, id: &NodeId) -> Option<Arc<Neighbor>> {
        let n = self.write().remove(id)?;
        n.inner().removed = true;
        n.close_all(crate::wire::close::REMOVED, b"neighbor removed");
        n.queue.close();
        n.changed.notify_waiters();
        for m in [
            &self.metrics.neighbor_bytes_received,
            &self.metrics.neighbor_bytes_sent,
        ] {
            let _ = m.remove_label_values(&[&n.label]);
        }
        let _ = self.metrics.neighbor_rtt.remove_label_values(&[&n.label]);
        let _ = self
            .metrics
            .neighbor_queue_bytes
            .remove_label_values(&[&n.label]);
        Some(n)
    }

    /// A new per-neighbor rate limit, for current and future neighbors (config reload).
    pub fn set_rate_all(&self, limit: RateLimit) {
        *self.rate.lock().unwrap_or_else(|p| p.into_inner()) = limit;
        for n in self.all() {
            n.set_rate(limit);
        }
    }

    pub fn is_pinned(&self, id: &NodeId) -> bool {
        self.read().contains_key(id)
    }

    pub fn for_each_up(&self, mut f: impl FnMut(&Neighbor)) {
        for n in self.read().values() {
            if n.is_up() {
                f(n);
            }
        }
    }

    pub fn all(&self) -> Vec<Arc<Neighbor>> {
        let mut v: Vec<_> = self.read().values().cloned().collect();
        v.sort_by_key(|n| n.id);
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refresh per-neighbor gauges (RTT, queue size) and the by-state counts.
    pub fn update_gauges(&self) {
        let (mut up, mut connecting, mut down) = (0, 0, 0);
        for n in self.all() {
            let v = n.view();
            match v.state {
                NeighborState::Up => up += 1,
                NeighborState::Connecting => connecting += 1,
                NeighborState::Down => down += 1,
            }
            if let Some(rtt) = v.rtt {
                self.metrics
                    .neighbor_rtt
                    .with_label_values(&[&n.label])
                    .set(rtt.as_secs_f64());
            }
            self.metrics
                .neighbor_queue_bytes
                .with_label_values(&[&n.label])
                .set(v.queue_bytes as i64);
        }
        let g = &self.metrics.neighbors;
        g.with_label_values(&["up"]).set(up);
        g.with_label_values(&["connecting"]).set(connecting);
        g.with_label_values(&["down"]).set(down);
    }
}
