//! The bridge's shared state: every live Echo connection with its queue and identities, the
//! outgoing links the operator configured, and the frame memory. Frames from an Echo
//! connection and Echo frames from the mesh meet here: each is remembered once, then fanned
//! out to every other connection (filtered for clients with identities). Drivers (`link`,
//! `listen`, `dial`) own the sockets; this module never waits.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use echomesh_proto::bridge::{FilterInput, FrameMemory, Identities, Verdict};

use crate::config::BridgeSection;
use crate::metrics::Metrics;
use crate::outq::OutQueue;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Accepted on the Echo listener.
    In,
    /// Dialed by this node (an outgoing link).
    Out,
}

/// One live Echo connection.
pub struct Link {
    pub key: u64,
    pub direction: Direction,
    pub remote: SocketAddr,
    /// SHA-256 of the certificate the other side presented (TLS), if any.
    pub peer_cert: Option<[u8; 32]>,
    /// The configured link this connection serves (outgoing links).
    pub outgoing: Option<String>,
    /// A server (Spot-On-Lite): unfiltered stream, no identities. Outgoing links are
    /// neighbors from the start; incoming connections become one with an allowed `0111`.
    neighbor: AtomicBool,
    identities: Mutex<Identities>,
    pub queue: OutQueue<Bytes>,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub since: Instant,
    /// Private-server login (SmokeStack's `0097a`/`0097b`).
    pub login: Mutex<Login>,
    /// A Smoke retrieval is being answered on this connection (one at a time).
    pub retrieving: AtomicBool,
}

/// A client's private-server login state.
#[derive(Debug, Default)]
pub struct Login {
    pub authenticated: bool,
    /// The challenge sent last, and when.
    pub challenge: Option<(String, Instant)>,
}

impl Link {
    pub fn is_neighbor(&self) -> bool {
        self.neighbor.load(Ordering::Relaxed)
    }

    pub fn identities(&self) -> std::sync::MutexGuard<'_, Identities> {
        lock(&self.identities)
    }

    pub fn login(&self) -> std::sync::MutexGuard<'_, Login> {
        lock(&self.login)
    }

    fn admits(&self, input: &mut Option<Option<FilterInput>>, frame: &[u8], now: Instant) -> bool {
        if self.is_neighbor() {
            return true;
        }
        let ids = self.identities();
        if ids.is_empty() {
            return true;
        }
        let input =
            input.get_or_insert_with(|| match echomesh_proto::bridge::frame::classify(frame) {
                Ok(echomesh_proto::bridge::Frame::Data { content }) => {
                    FilterInput::from_content(content)
                }
                _ => None,
            });
        ids.admits(input.as_ref(), now)
    }
}

/// The state of a configured outgoing link, for the admin API.
#[derive(Debug, Clone)]
pub struct OutgoingState {
    pub url: echomesh_proto::bridge::EchoUrl,
    /// `static` (configuration) or `admin`.
    pub origin: &'static str,
    pub state: LinkState,
    pub since: Instant,
    pub last_error: Option<String>,
    /// The live connection's key, when up.
    pub link: Option<u64>,
    /// The certificate's SHA-256 seen (or pinned) last.
    pub cert_sha256: Option<[u8; 32]>,
    /// Stops this link's dialer (removal through the API).
    pub stop: tokio_util::sync::CancellationToken,
}

/// What an allowed `0111` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    Done,
    Already,
    /// `bridge.max_links` reached: the connection stays a filtered client.
    LinksFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Up,
    Down,
}

impl LinkState {
    pub fn label(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

pub struct Hub {
    pub cfg: BridgeSection,
    memory: Mutex<FrameMemory>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    outgoing: Mutex<BTreeMap<String, OutgoingState>>,
    metrics: Arc<Metrics>,
    /// SHA-256 of the Echo listener's certificate (TLS listener only).
    pub listener_cert: Mutex<Option<[u8; 32]>>,
    pub listen_addr: Mutex<Option<SocketAddr>>,
    full_warned: AtomicBool,
}

impl Hub {
    pub fn new(cfg: BridgeSection, metrics: Arc<Metrics>) -> Self {
        Hub {
            memory: Mutex::new(FrameMemory::new(
                std::time::Duration::from_secs(cfg.memory_secs),
                cfg.memory_frames,
            )),
            cfg,
            links: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(BTreeMap::new()),
            metrics,
            listener_cert: Mutex::new(None),
            listen_addr: Mutex::new(None),
            full_warned: AtomicBool::new(false),
        }
    }

    /// Remember a frame by its ID; counts duplicates and refusals.
    pub fn remember(&self, id: [u8; 32], from_mesh: bool, now: Instant) -> Verdict {
        let (v, len) = {
            let mut m = lock(&self.memory);
            let v = m.remember(id, now);
            (v, m.len())
        };
        let b = &self.metrics.bridge;
        b.memory_entries.set(len as i64);
        match v {
            Verdict::New => self.full_warned.store(false, Ordering::Relaxed),
            Verdict::Duplicate => b
                .duplicates
                .with_label_values(&[if from_mesh { "mesh" } else { "link" }])
                .inc(),
            Verdict::Full => {
                b.dropped.with_label_values(&["memory_full"]).inc();
                // Once per spell of refusals, not once per frame.
                if !self.full_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                    capacity = self.cfg.memory_frames,
                    "Echo frame memory is full of frames younger than bridge.memory_secs; refusing new Echo frames (raise bridge.memory_frames)"
                    );
                }
            }
        }
        v
    }

    /// Expire old memory entries and identities; refresh the gauges.
    pub fn tick(&self, now: Instant) {
        let len = {
            let mut m = lock(&self.memory);
            m.expire(now);
            m.len()
        };
        self.metrics.bridge.memory_entries.set(len as i64);
        let mut ids = 0;
        let mut clients = 0;
        for l in self.links() {
            let mut i = l.identities();
            i.expire(now);
            ids += i.len();
            if !l.is_neighbor() {
                clients += 1;
            }
        }
        self.metrics.bridge.identities.set(ids as i64);
        self.metrics.bridge.clients.set(clients);
        let mut counts = [0i64; 3];
        for o in lock(&self.outgoing).values() {
            counts[o.state as usize] += 1;
        }
        let incoming = self
            .links()
            .iter()
            .filter(|l| l.is_neighbor() && l.direction == Direction::In)
            .count() as i64;
        let g = &self.metrics.bridge.links;
        g.with_label_values(&["connecting"])
            .set(counts[LinkState::Connecting as usize]);
        g.with_label_values(&["up"])
            .set(counts[LinkState::Up as usize] + incoming);
        g.with_label_values(&["down"])
            .set(counts[LinkState::Down as usize]);
    }

    /// Queue a frame on every connection except `except`, filtered by identities.
    pub fn fan_out(&self, frame: &Bytes, except: Option<u64>, now: Instant) {
        let mut input = None;
        let mut dropped = 0u64;
        for l in self.links() {
            if Some(l.key) == except || !l.admits(&mut input, frame, now) {
                continue;
            }
            if l.queue.push_all(std::slice::from_ref(frame)) > 0 {
                dropped += 1;
                tracing::debug!(remote = %l.remote, "Echo connection's queue full; frame dropped for it");
            }
        }
        if dropped > 0 {
            self.metrics
                .bridge
                .dropped
                .with_label_values(&["queue_full"])
                .inc_by(dropped);
        }
    }

    pub fn add_link(&self, link: Arc<Link>) {
        lock(&self.links).insert(link.key, link);
    }

    pub fn remove_link(&self, key: u64) {
        if let Some(l) = lock(&self.links).remove(&key) {
            l.queue.close();
        }
    }

    pub fn links(&self) -> Vec<Arc<Link>> {
        lock(&self.links).values().cloned().collect()
    }

    pub fn link(&self, key: u64) -> Option<Arc<Link>> {
        lock(&self.links).get(&key).cloned()
    }

    /// Echo links: configured outgoing ones and incoming neighbors.
    fn link_count(&self) -> usize {
        let incoming = lock(&self.links)
            .values()
            .filter(|l| l.direction == Direction::In && l.is_neighbor())
            .count();
        lock(&self.outgoing).len() + incoming
    }

    /// Mark an incoming connection as an Echo neighbor (its `0111` was allowed), unless
    /// `bridge.max_links` Echo links exist already.
    pub fn promote(&self, link: &Link) -> Promotion {
        if link.is_neighbor() {
            return Promotion::Already;
        }
        if self.link_count() >= self.cfg.max_links {
            return Promotion::LinksFull;
        }
        link.neighbor.store(true, Ordering::Relaxed);
        Promotion::Done
    }

    pub fn new_link(
        &self,
        key: u64,
        direction: Direction,
        remote: SocketAddr,
        peer_cert: Option<[u8; 32]>,
        outgoing: Option<String>,
    ) -> Arc<Link> {
        Arc::new(Link {
            key,
            direction,
            remote,
            peer_cert,
            neighbor: AtomicBool::new(direction == Direction::Out),
            identities: Mutex::new(Identities::new(
                std::time::Duration::from_secs(self.cfg.identity_lifetime_secs),
                self.cfg.max_identities_per_connection,
            )),
            queue: OutQueue::new(self.cfg.queue_bytes),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            since: Instant::now(),
            outgoing,
            login: Mutex::new(Login::default()),
            retrieving: AtomicBool::new(false),
        })
    }

    // Outgoing links (configured).

    /// Register an outgoing link; `Err` says why not (exists, or `bridge.max_links`).
    pub fn add_outgoing(&self, id: String, st: OutgoingState) -> Result<(), String> {
        if lock(&self.outgoing).contains_key(&id) {
            return Err(format!(
                "an Echo link to {} exists already ({id})",
                st.url.addr
            ));
        }
        if self.link_count() >= self.cfg.max_links {
            return Err(format!(
                "this node has bridge.max_links ({}) Echo links already; remove one or raise the limit",
                self.cfg.max_links
            ));
        }
        lock(&self.outgoing).insert(id, st);
        Ok(())
    }

    pub fn update_outgoing(&self, id: &str, f: impl FnOnce(&mut OutgoingState)) {
        if let Some(s) = lock(&self.outgoing).get_mut(id) {
            f(s);
        }
    }

    pub fn remove_outgoing(&self, id: &str) -> Option<OutgoingState> {
        let st = lock(&self.outgoing).remove(id)?;
        st.stop.cancel();
        Some(st)
    }

    pub fn outgoing(&self) -> Vec<(String, OutgoingState)> {
        lock(&self.outgoing)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
