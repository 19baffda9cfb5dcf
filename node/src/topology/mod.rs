//! The mesh as this node knows it. Every node floods a signed announcement of itself (address,
//! cluster, software, protocol, whether it is in service, and its links with their RTT) every
//! [`ANNOUNCE_EVERY`] and soon after any change. Nodes verify the signature against the
//! certificate inside the announcement (the node ID is the hash of that certificate's key, so
//! nobody can announce for another node), keep the newest per node, and forward only what
//! changed their table, so a flood ends by itself.
//!
//! Bounded: at most [`MAX_NODES`] nodes, [`MAX_ANNOUNCEMENT_BYTES`] per announcement,
//! [`MAX_LINKS`] links in one, and a node's announcements are accepted only when stamped at
//! least [`MIN_ACCEPT_GAP`] apart by its own clock (its sequence number), never more than
//! [`MAX_FUTURE_MS`] ahead: a node floods at most two per second on average. The spacing is the
//! origin's, not the arrival's: two announcements delayed differently on the way (a busy
//! neighbor) may arrive close together, and dropping the newer one would hide a change until
//! the next periodic announcement. An announcement is fresh for its TTL; a node whose announcement expired,
//! or to which no live node reports a link, is shown as failed; one that said it left stays
//! "left" until it is forgotten after [`FORGET_AFTER`].

pub mod flood;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::echo::EchoMode;
use crate::identity::{self, Identity, NodeId};
use crate::wire::{self, Departure};

pub use echomesh_proto::announce::{EVERY as ANNOUNCE_EVERY, TTL_SECS};
const DOMAIN: &[u8] = b"echomesh node announcement v1\0";

/// What travels in an echo packet: the node's certificate, the encoded announcement, and the
/// node key's signature over the domain-separated announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    pub cert: Vec<u8>,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub node: NodeId,
    /// Milliseconds since the Unix epoch when made; strictly increasing per node.
    pub seq: u64,
    pub ttl_secs: u32,
    /// Where clients and peers reach the node (`HOST:PORT`).
    pub addr: String,
    pub cluster: String,
    pub software: String,
    pub protocol: u16,
    pub state: Departure,
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub peer: NodeId,
    pub up: bool,
    /// Smoothed RTT in microseconds (0 when down).
    pub rtt_us: u32,
    pub mode: EchoMode,
    /// What the peer told this node directly about leaving (`PeerRequest::Departure`).
    pub departure: Departure,
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("announcement of {0} bytes exceeds {MAX_ANNOUNCEMENT_BYTES}")]
    TooLarge(usize),
    #[error("announcement cannot be decoded: {0}")]
    Malformed(String),
    #[error("announcement signature does not verify: {0}")]
    BadSignature(String),
    #[error("topology table full ({MAX_NODES} nodes)")]
    Full,
}

impl AnnounceError {
    pub fn label(&self) -> &'static str {
        match self {
            AnnounceError::TooLarge(_) | AnnounceError::Malformed(_) => "malformed",
            AnnounceError::BadSignature(_) => "bad_signature",
            AnnounceError::Full => "full",
        }
    }
}

impl Announcement {
    /// Sign and encode for flooding.
    pub fn seal(&self, identity: &Identity) -> Result<Vec<u8>, AnnounceError> {
        if self.links.len() > MAX_LINKS {
            return Err(AnnounceError::Malformed(format!(
                "{} links (at most {MAX_LINKS})",
                self.links.len()
            )));
        }
        let body =
            wire::record_to_vec(self).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        let signature = identity
            .sign(&signed_bytes(&body))
            .map_err(|e| AnnounceError::BadSignature(e.to_string()))?;
        let signed = SignedAnnouncement {
            cert: identity.cert_der.to_vec(),
            body,
            signature,
        };
        let raw =
            wire::record_to_vec(&signed).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        if raw.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnounceError::TooLarge(raw.len()));
        }
        Ok(raw)
    }

    /// Decode and verify: the signature must be by the certificate's key and the announcement
    /// must name that certificate's node.
    pub fn open(raw: &[u8]) -> Result<Announcement, AnnounceError> {
        if raw.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnounceError::TooLarge(raw.len()));
        }
        let signed: SignedAnnouncement =
            wire::decode_body(raw).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        let signer = identity::verify_signed_by_cert(
            &signed.cert,
            &signed_bytes(&signed.body),
            &signed.signature,
        )
        .map_err(|e| AnnounceError::BadSignature(e.to_string()))?;
        let ann: Announcement =
            wire::decode_body(&signed.body).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        if ann.node != signer {
            return Err(AnnounceError::BadSignature(
                "announcement names another node than its signer".into(),
            ));
        }
        if ann.links.len() > MAX_LINKS {
            return Err(AnnounceError::Malformed(format!(
                "{} links (at most {MAX_LINKS})",
                ann.links.len()
            )));
        }
        Ok(ann)
    }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

/// What `offer` did with an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Accepted,
    /// Not newer than what the table has.
    Stale,
    /// Newer, but stamped sooner after the last accepted one than `MIN_ACCEPT_GAP`.
    TooFrequent,
    /// This node's own announcement coming back.
    Own,
}

impl Offered {
    pub fn label(self) -> &'static str {
        match self {
            Offered::Accepted => "accepted",
            Offered::Stale => "stale",
            Offered::TooFrequent => "too_frequent",
            Offered::Own => "own",
        }
    }
}

struct Entry {
    ann: Announcement,
    raw: Vec<u8>,
    received: Instant,
}

impl Entry {
    fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.received) < Duration::from_secs(u64::from(self.ann.ttl_secs))
    }
}

/// A link this much slower than another counts as one hop more when broadcast trees are
/// planned.
pub const SLOW_LINK_MS: u64 = 100;

/// Announcements of the other nodes of the mesh.
pub struct Topology {
    me: NodeId,
    table: Mutex<HashMap<NodeId, Entry>>,
    /// Sequence number of this node's last announcement.
    last_seq: AtomicU64,
    /// This node's last announcement (what the others know of its links).
    last_own: Mutex<Option<Announcement>>,
    /// Something this node announces changed (a link went up or down, a drain started):
    /// wakes the announcer.
    pub local_changed: Notify,
}

impl Topology {
    pub fn new(me: NodeId) -> Self {
        Topology {
            me,
            table: Mutex::new(HashMap::new()),
            last_seq: AtomicU64::new(0),
            last_own: Mutex::new(None),
            local_changed: Notify::new(),
        }
    }

    /// The sequence number for this node's next announcement: its clock in milliseconds, and
    /// always above the previous one.
    pub fn next_seq(&self, now_ms: u64) -> u64 {
        let mut prev = self.last_seq.load(Ordering::Acquire);
        loop {
            let next = now_ms.max(prev + 1);
            match self
                .last_seq
                .compare_exchange(prev, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// This node's last announcement, as the other nodes have it.
    pub fn last_own(&self) -> Option<Announcement> {
        self.last_own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_last_own(&self, own: Announcement) {
        *self.last_own.lock().unwrap_or_else(|p| p.into_inner()) = Some(own);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verify and keep an announcement if it is newer than what the table has.
    pub fn offer(&self, raw: &[u8], now: Instant, now_ms: u64) -> Result<Offered, AnnounceError> {
        let ann = Announcement::open(raw)?;
        if ann.node == self.me {
            return Ok(Offered::Own);
        }
        if ann.seq > now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(AnnounceError::Malformed(
                "announcement is stamped more than 10 minutes in the future".into(),
            ));
        }
        let mut t = self.table();
        match t.get(&ann.node) {
            Some(e) if e.ann.seq >= ann.seq => return Ok(Offered::Stale),
            Some(e) if ann.seq < e.ann.seq.saturating_add(MIN_ACCEPT_GAP.as_millis() as u64) => {
                return Ok(Offered::TooFrequent)
            }
            Some(_) => {}
            None => {
                t.retain(|_, e| now.duration_since(e.received) < FORGET_AFTER);
                if t.len() >= MAX_NODES {
                    return Err(AnnounceError::Full);
                }
            }
        }
        let ann = Announcement {
            ttl_secs: ann.ttl_secs.min(10 * TTL_SECS),
            ..ann
        };
        t.insert(
            ann.node,
            Entry {
                ann,
                raw: raw.to_vec(),
                received: now,
            },
        );
        Ok(Offered::Accepted)
    }

    /// Every stored announcement as received (offered to a neighbor that comes up).
    pub fn raw_all(&self) -> Vec<Vec<u8>> {
        self.table().values().map(|e| e.raw.clone()).collect()
    }

    /// The last announcement of a node, if still fresh.
    pub fn fresh(&self, id: &NodeId, now: Instant) -> Option<Announcement> {
        self.table()
            .get(id)
            .filter(|e| e.fresh(now))
            .map(|e| e.ann.clone())
    }

    /// The live links of the mesh with their weights, for planning broadcast trees: from
    /// fresh announcements and `own`; a link counts when some end reports it up and none
    /// reports it down. Its weight is one hop plus one per [`SLOW_LINK_MS`] of the higher
    /// reported RTT: every node must plan the same trees, and measured RTTs move with load
    /// (loopback links measured 10–17 ms during a burst), so finer weights made the nodes'
    /// maps disagree from one announcement to the next (measured: 0.4–0.5 duplicates per
    /// delivery instead of 0.003 in the 5-node test).
    pub fn links(&self, own: &Announcement, now: Instant) -> Vec<(NodeId, NodeId, u64)> {
        let t = self.table();
        let mut links: BTreeMap<(NodeId, NodeId), Option<u64>> = BTreeMap::new();
        let fresh = t.values().filter(|e| e.fresh(now)).map(|e| &e.ann);
        for a in std::iter::once(own).chain(fresh) {
            for l in &a.links {
                let key = if a.node < l.peer {
                    (a.node, l.peer)
                } else {
                    (l.peer, a.node)
                };
                let ms = 1 + u64::from(l.rtt_us) / 1000 / SLOW_LINK_MS;
                let e = links.entry(key).or_insert(Some(0));
                *e = match (*e, l.up) {
                    (Some(w), true) => Some(w.max(ms)),
                    _ => None,
                };
            }
        }
        links
            .into_iter()
            .filter_map(|((a, b), w)| w.map(|w| (a, b, w)))
            .collect()
    }

    /// Combine `own` (this node's current announcement, built from its live neighbor table)
    /// with everything heard, into the picture shown to operators.
    pub fn view(&self, own: &Announcement, now: Instant) -> TopologyView {
        let t = self.table();
        let mut anns: Vec<(&Announcement, bool, Duration)> = vec![(own, true, Duration::ZERO)];
        for e in t.values() {
            anns.push((&e.ann, e.fresh(now), now.duration_since(e.received)));
        }
        // Links: one per node pair. Reports from fresh announcements only; this node's own
        // report wins; otherwise "down" wins over "up" (a connection up at one end only is
        // going away).
        let mut links: BTreeMap<(NodeId, NodeId), LinkView> = BTreeMap::new();
        for (a, fresh, _) in &anns {
            if !fresh {
                continue;
            }
            for l in &a.links {
                let key = if a.node < l.peer {
                    (a.node, l.peer)
                } else {
                    (l.peer, a.node)
                };
                let mine = a.node == own.node;
                let rtt = (l.up && l.rtt_us > 0).then(|| f64::from(l.rtt_us) / 1000.0);
                let v = LinkView {
                    a: key.0.short(),
                    b: key.1.short(),
                    state: if l.up { "up" } else { "down" }.into(),
                    rtt_ms: rtt,
                    mode: l.mode,
                    reported_by: a.node.short(),
                };
                match links.get(&key) {
                    None => {
                        links.insert(key, v);
                    }
                    Some(old) if old.reported_by == own.node.short() => {}
                    Some(old) => {
                        if mine || (old.state == "up" && !l.up) {
                            links.insert(key, v);
                        }
                    }
                }
            }
        }
        let mut nodes = Vec::new();
        for (a, fresh, age) in &anns {
            let linked = links
                .iter()
                .any(|((x, y), l)| l.state == "up" && (*x == a.node || *y == a.node));
            // Its neighbors may know it left even if its own last word did not get out.
            let said_left = anns.iter().any(|(b, fresh, _)| {
                *fresh
                    && b.links
                        .iter()
                        .any(|l| l.peer == a.node && l.departure == Departure::Left)
            });
            let state = if a.node == own.node {
                a.state.label()
            } else if a.state == Departure::Left || said_left {
                "left"
            } else if !fresh || !linked {
                "failed"
            } else {
                a.state.label()
            };
            nodes.push(NodeView {
                id: a.node.short(),
                fingerprint: a.node.fingerprint(),
                addr: a.addr.clone(),
                cluster: a.cluster.clone(),
                software: a.software.clone(),
                protocol: a.protocol,
                state: state.into(),
                last_heard_secs: age.as_secs(),
                this_node: a.node == own.node,
            });
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let states: HashMap<String, String> = nodes
            .iter()
            .map(|n| (n.id.clone(), n.state.clone()))
            .collect();
        let mut links: Vec<LinkView> = links.into_values().collect();
        for l in &mut links {
            let left = |id: &str| states.get(id).is_some_and(|s| s == "left");
            if l.state == "down" && (left(&l.a) || left(&l.b)) {
                l.state = "left".into();
            }
        }
        TopologyView { nodes, links }
    }
}

pub use crate::limits::FORGET_AFTER;
pub use crate::limits::MAX_ANNOUNCEMENT_BYTES;
use crate::limits::MAX_FUTURE_MS;
pub use crate::limits::MAX_LINKS;
pub use crate::limits::MAX_NODES;
pub use crate::limits::MIN_ACCEPT_GAP;
pub use echomesh_proto::admin::{LinkView, NodeView, TopologyView};

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(id: &Identity, seq: u64, links: Vec<Link>, state: Departure) -> Announcement {
        Announcement {
            node: id.id,
            seq,
            ttl_secs: TTL_SECS,
            addr: "127.0.0.1:1".into(),
            cluster: "c".into(),
            software: "t".into(),
            protocol: wire::PROTOCOL_VERSION,
            state,
            links,
        }
    }

    fn link(peer: &Identity, up: bool) -> Link {
        Link {
            peer: peer.id,
            up,
            rtt_us: if up { 1500 } else { 0 },
            mode: EchoMode::Full,
            departure: Departure::Up,
        }
    }

    #[test]
    fn signed_announcements_verify_and_forgeries_do_not() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let raw = ann(&a, 1, vec![], Departure::Up).seal(&a).unwrap();
        assert_eq!(Announcement::open(&raw).unwrap().node, a.id);
        // b signs an announcement that claims to be a.
        let forged = ann(&a, 2, vec![], Departure::Up).seal(&b).unwrap();
        assert_eq!(
            Announcement::open(&forged).unwrap_err().label(),
            "bad_signature"
        );
        // A flipped byte anywhere is refused.
        for i in [0, raw.len() / 2, raw.len() - 1] {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            assert!(Announcement::open(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn newest_wins_rate_and_size_are_bounded() {
        let me = Identity::generate().unwrap();
        let a = Identity::generate().unwrap();
        let t = Topology::new(me.id);
        let t0 = Instant::now();
        let r1 = ann(&a, 100, vec![], Departure::Up).seal(&a).unwrap();
        let r2 = ann(&a, 200, vec![], Departure::Up).seal(&a).unwrap();
        assert_eq!(t.offer(&r1, t0, 1000).unwrap(), Offered::Accepted);
        assert_eq!(t.offer(&r1, t0, 1000).unwrap(), Offered::Stale);
        assert_eq!(t.offer(&r2, t0, 1000).unwrap(), Offered::TooFrequent);
        // Spacing is by the origin's stamps: arriving at the same instant is fine.
        let gap = MIN_ACCEPT_GAP.as_millis() as u64;
        let r2 = ann(&a, 100 + gap, vec![], Departure::Up).seal(&a).unwrap();
        assert_eq!(t.offer(&r2, t0, 1000).unwrap(), Offered::Accepted);
        assert_eq!(
            t.offer(&r1, t0 + MIN_ACCEPT_GAP * 4, 1000).unwrap(),
            Offered::Stale
        );
        let own = ann(&me, 1, vec![], Departure::Up).seal(&me).unwrap();
        assert_eq!(t.offer(&own, t0, 1000).unwrap(), Offered::Own);
        let future = ann(&a, 10_000_000_000, vec![], Departure::Up)
            .seal(&a)
            .unwrap();
        assert!(t.offer(&future, t0 + Duration::from_secs(5), 1000).is_err());
        let too_many: Vec<Link> = (0..=MAX_LINKS).map(|_| link(&me, true)).collect();
        assert!(ann(&a, 300, too_many, Departure::Up).seal(&a).is_err());
    }

    #[test]
    fn view_marks_failed_left_and_down_links() {
        let me = Identity::generate().unwrap();
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let gone = Identity::generate().unwrap();
        let t = Topology::new(me.id);
        let now = Instant::now();
        // a is linked to me and b; b says its link to `gone` is down; `gone` still claims up.
        let offer = |id: &Identity, links, st| {
            let raw = ann(id, 1, links, st).seal(id).unwrap();
            t.offer(&raw, now, 1).unwrap()
        };
        offer(&a, vec![link(&me, true), link(&b, true)], Departure::Up);
        offer(&b, vec![link(&a, true), link(&gone, false)], Departure::Up);
        offer(&gone, vec![link(&b, true)], Departure::Up);
        let own = ann(&me, 1, vec![link(&a, true)], Departure::Up);
        let v = t.view(&own, now);
        let state = |id: &Identity| {
            v.nodes
                .iter()
                .find(|n| n.id == id.id.short())
                .map(|n| n.state.clone())
                .unwrap()
        };
        assert_eq!(state(&me), "up");
        assert_eq!(state(&a), "up");
        assert_eq!(state(&b), "up");
        assert_eq!(state(&gone), "failed", "{v:?}");
        assert_eq!(v.links.len(), 3);
        // Lazy push plans from links up at some end and down at none, in hops (1.5 ms is
        // one hop): me–a and a–b; b–gone is down at b.
        let mut want = vec![
            (me.id.min(a.id), me.id.max(a.id), 1),
            (a.id.min(b.id), a.id.max(b.id), 1),
        ];
        want.sort();
        assert_eq!(t.links(&own, now), want);
        let slow = Link {
            rtt_us: 250_000,
            ..link(&a, true)
        };
        let own_slow = ann(&me, 2, vec![slow], Departure::Up);
        assert!(t
            .links(&own_slow, now)
            .contains(&(me.id.min(a.id), me.id.max(a.id), 3)));
        // `gone` says it left: shown as left, its link as left, even after expiry.
        let later = now + MIN_ACCEPT_GAP;
        let seq = 1 + MIN_ACCEPT_GAP.as_millis() as u64;
        let raw = ann(&gone, seq, vec![], Departure::Left)
            .seal(&gone)
            .unwrap();
        assert_eq!(t.offer(&raw, later, seq).unwrap(), Offered::Accepted);
        let v = t.view(&own, later + Duration::from_secs(u64::from(TTL_SECS) + 1));
        let g = v.nodes.iter().find(|n| n.id == gone.id.short()).unwrap();
        assert_eq!(g.state, "left");
        // Everyone else expired: failed.
        assert_eq!(v.count("failed"), 2);
        assert!(v.to_dot().starts_with("graph echomesh {"));
    }
}
