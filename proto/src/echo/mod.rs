//! The echo engine: flooding with duplicate suppression, as a sans-IO state machine.
//!
//! The engine takes packets with their source and the current time and decides, per packet,
//! whether it is a duplicate, whether to deliver it locally and whether to forward it. It owns
//! no sockets, tasks or clocks; `peer` and `client` drive it.

mod log;
mod seen;

pub use log::{LogPosition, Offer, PacketLog, Replay};
pub use seen::SeenCache;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A packet ID: blake3 of the payload.
pub type PacketId = [u8; 32];

/// A hash map keyed by packet ID, with a fast randomly seeded hasher (IDs of packets not yet
/// verified may be chosen by a neighbor, so the hasher stays keyed).
pub type IdMap<V> = std::collections::HashMap<PacketId, V, foldhash::fast::RandomState>;

/// An echo packet as it travels the mesh. The payload is opaque ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoPacket {
    #[serde(with = "crate::wire::bytes32")]
    pub id: PacketId,
    pub hops_left: u8,
    /// Ozone tag (epoch-rotating, derived from the ozone address), if any.
    #[serde(with = "crate::wire::opt_bytes32")]
    pub tag: Option<[u8; 32]>,
    pub payload: Bytes,
}

impl EchoPacket {
    pub fn new(payload: Bytes, hops_left: u8, tag: Option<[u8; 32]>) -> Self {
        EchoPacket {
            id: *blake3::hash(&payload).as_bytes(),
            hops_left,
            tag,
            payload,
        }
    }

    /// Bytes this packet accounts for in queues (payload plus fixed overhead).
    pub fn cost(&self) -> usize {
        self.payload.len() + 80
    }

    /// This packet with a payload buffer of its own. Payloads of one accepted batch share a
    /// buffer ([`share_buffer`]); a holder that keeps only some of a batch's packets beyond
    /// the packet log (a client with a tag filter, a graft's answer) takes a copy, so that
    /// what it holds is what its byte bound counts.
    pub fn detached(&self) -> EchoPacket {
        EchoPacket {
            payload: Bytes::copy_from_slice(&self.payload),
            ..self.clone()
        }
    }
}

/// Copy the payloads of `packets` end to end into one new buffer and point each packet at its
/// part: one allocation per batch instead of one per payload (and one more at each payload's
/// first clone), and nothing else stays alive with them: not the frame they were decoded from
/// (whose duplicates are gone), not the other packets' earlier buffers. The packets of a batch
/// travel together (the packet log and the neighbor queues keep them in order and release them
/// in order), so the buffer lives about as long as any one of them.
pub fn share_buffer(packets: &mut [EchoPacket]) {
    let total: usize = packets.iter().map(|p| p.payload.len()).sum();
    if total == 0 {
        return;
    }
    let mut buf = bytes::BytesMut::with_capacity(total);
    for p in packets.iter() {
        buf.extend_from_slice(&p.payload);
    }
    let all = buf.freeze();
    let mut at = 0;
    for p in packets.iter_mut() {
        let len = p.payload.len();
        p.payload = all.slice(at..at + len);
        at += len;
    }
}

/// Whether packets from a neighbor are forwarded to the other neighbors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EchoMode {
    /// Deliver locally and forward to every other neighbor.
    #[default]
    Full,
    /// Deliver locally only (Spot-On's half echo).
    Half,
}

impl std::fmt::Display for EchoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EchoMode::Full => "full",
            EchoMode::Half => "half",
        })
    }
}

impl std::str::FromStr for EchoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(EchoMode::Full),
            "half" => Ok(EchoMode::Half),
            other => Err(format!("unknown echo mode {other:?}: use full or half")),
        }
    }
}

/// Where a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Injected by a client session on this node.
    Client,
    /// Received from a neighbor with this echo mode.
    Neighbor(EchoMode),
}

/// Why a packet was refused before it reached the seen-cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// `id` is not blake3 of the payload.
    BadId,
    /// Payload larger than `max_payload_bytes`.
    TooLarge,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BadId => "bad_id",
            Rejection::TooLarge => "too_large",
        }
    }
}

/// Check a packet's integrity. Done outside the engine lock (it hashes the payload).
pub fn validate(pkt: &EchoPacket, max_payload: usize) -> Result<(), Rejection> {
    if pkt.payload.len() > max_payload {
        return Err(Rejection::TooLarge);
    }
    if blake3::hash(&pkt.payload).as_bytes() != &pkt.id {
        return Err(Rejection::BadId);
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub seen_ttl: Duration,
    pub seen_capacity: usize,
    /// Packets from clients carry at most this many hops.
    pub max_hops: u8,
}

/// What happened to one batch, for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub forwarded: u64,
    pub expired_evictions: u64,
    pub capacity_evictions: u64,
}

/// The flooding state machine.
pub struct EchoEngine {
    cfg: EchoConfig,
    seen: SeenCache,
}

impl EchoEngine {
    pub fn new(cfg: EchoConfig, start: Instant) -> Self {
        let seen = SeenCache::new(cfg.seen_capacity, cfg.seen_ttl, start);
        EchoEngine { cfg, seen }
    }

    /// Process a batch of validated packets from `source`.
    ///
    /// Packets seen before are dropped. New packets are appended to `deliver` (for local
    /// subscribers and storage) and, when they may travel further, to `forward` with
    /// `hops_left` decremented.
    pub fn on_batch(
        &mut self,
        source: Source,
        packets: Vec<EchoPacket>,
        now: Instant,
        deliver: &mut Vec<EchoPacket>,
        forward: &mut Vec<EchoPacket>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let (exp, cap) = self.seen.expire(now);
        out.expired_evictions += exp;
        out.capacity_evictions += cap;
        for mut pkt in packets {
            if source == Source::Client {
                pkt.hops_left = pkt.hops_left.min(self.cfg.max_hops);
            }
            match self.seen.insert(&pkt.id, now) {
                seen::Insert::Duplicate => {
                    out.duplicates += 1;
                    continue;
                }
                seen::Insert::New { evicted } => out.capacity_evictions += evicted,
            }
            out.accepted += 1;
            let may_forward = match source {
                Source::Client | Source::Neighbor(EchoMode::Full) => pkt.hops_left > 0,
                Source::Neighbor(EchoMode::Half) => false,
            };
            if may_forward {
                let mut fwd = pkt.clone();
                fwd.hops_left -= 1;
                forward.push(fwd);
                out.forwarded += 1;
            }
            deliver.push(pkt);
        }
        out
    }

    /// Remove packets whose ID is already in the seen-cache, without recording anything;
    /// returns how many. Lets the caller skip integrity checks of duplicates, which are the
    /// majority of what a well-connected node receives.
    pub fn drop_seen(&self, packets: &mut Vec<EchoPacket>) -> u64 {
        let before = packets.len();
        packets.retain(|p| !self.seen.contains(&p.id));
        (before - packets.len()) as u64
    }

    /// Expire old seen-cache entries; call periodically when idle.
    pub fn tick(&mut self, now: Instant) -> (u64, u64) {
        self.seen.expire(now)
    }

    /// Record `id` as seen without accepting a packet (one its verifier refused for good).
    pub fn remember(&mut self, id: &PacketId, now: Instant) {
        let _ = self.seen.insert(id, now);
    }

    /// Whether this ID was accepted recently (a repair offer asks this).
    pub fn has_seen(&self, id: &PacketId) -> bool {
        self.seen.contains(id)
    }

    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(cap: usize, ttl_s: u64) -> (EchoEngine, Instant) {
        let t0 = Instant::now();
        let e = EchoEngine::new(
            EchoConfig {
                seen_ttl: Duration::from_secs(ttl_s),
                seen_capacity: cap,
                max_hops: 16,
            },
            t0,
        );
        (e, t0)
    }

    fn pkt(n: u32, hops: u8) -> EchoPacket {
        EchoPacket::new(Bytes::from(n.to_be_bytes().to_vec()), hops, None)
    }

    fn run(
        e: &mut EchoEngine,
        src: Source,
        p: Vec<EchoPacket>,
        now: Instant,
    ) -> (Vec<EchoPacket>, Vec<EchoPacket>, BatchOutcome) {
        let (mut d, mut f) = (Vec::new(), Vec::new());
        let o = e.on_batch(src, p, now, &mut d, &mut f);
        (d, f, o)
    }

    #[test]
    fn duplicates_are_dropped_and_hops_decrement() {
        let (mut e, t0) = engine(100, 60);
        let (d, f, o) = run(
            &mut e,
            Source::Neighbor(EchoMode::Full),
            vec![pkt(1, 3), pkt(1, 3)],
            t0,
        );
        assert_eq!((d.len(), f.len(), o.duplicates), (1, 1, 1));
        assert_eq!(f[0].hops_left, 2);
        let (d, _, o) = run(&mut e, Source::Client, vec![pkt(1, 3)], t0);
        assert!(d.is_empty());
        assert_eq!(o.duplicates, 1);
    }

    #[test]
    fn drop_seen_removes_only_known_ids_and_records_nothing() {
        let (mut e, t0) = engine(100, 60);
        run(&mut e, Source::Client, vec![pkt(1, 3)], t0);
        let mut batch = vec![pkt(1, 3), pkt(2, 3)];
        assert_eq!(e.drop_seen(&mut batch), 1);
        assert_eq!(batch, vec![pkt(2, 3)]);
        assert_eq!(e.seen_len(), 1);
    }

    #[test]
    fn zero_hops_is_delivered_not_forwarded() {
        let (mut e, t0) = engine(100, 60);
        let (d, f, _) = run(
            &mut e,
            Source::Neighbor(EchoMode::Full),
            vec![pkt(1, 0)],
            t0,
        );
        assert_eq!((d.len(), f.len()), (1, 0));
    }

    #[test]
    fn half_echo_neighbors_are_not_forwarded() {
        let (mut e, t0) = engine(100, 60);
        let (d, f, _) = run(
            &mut e,
            Source::Neighbor(EchoMode::Half),
            vec![pkt(1, 5)],
            t0,
        );
        assert_eq!((d.len(), f.len()), (1, 0));
    }

    #[test]
    fn client_hops_are_capped() {
        let (mut e, t0) = engine(100, 60);
        let (_, f, _) = run(&mut e, Source::Client, vec![pkt(1, 255)], t0);
        assert_eq!(f[0].hops_left, 15);
    }

    #[test]
    fn a_batch_shares_one_buffer_and_a_detached_packet_owns_its_own() {
        let frame = Bytes::from(b"xxFIRSTyySECONDzz".to_vec());
        let mut batch = vec![
            EchoPacket::new(frame.slice(2..7), 3, None),
            EchoPacket::new(Bytes::new(), 3, None),
            EchoPacket::new(frame.slice(9..15), 3, Some([1; 32])),
        ];
        let before = batch.clone();
        share_buffer(&mut batch);
        assert_eq!(batch, before, "same packets, same payloads");
        // Not the frame's memory any more; one buffer, end to end.
        let frame_range = frame.as_ptr_range();
        assert!(!frame_range.contains(&batch[0].payload.as_ptr()));
        assert_eq!(
            batch[0].payload.as_ptr().wrapping_add(5),
            batch[2].payload.as_ptr()
        );
        let own = batch[2].detached();
        assert_eq!(own, batch[2]);
        assert_ne!(own.payload.as_ptr(), batch[2].payload.as_ptr());
        for p in &batch {
            assert_eq!(validate(p, 100), Ok(()));
        }
    }

    #[test]
    fn validate_rejects_bad_id_and_size() {
        let mut p = pkt(1, 1);
        assert_eq!(validate(&p, 100), Ok(()));
        assert_eq!(validate(&p, 2), Err(Rejection::TooLarge));
        p.id[0] ^= 1;
        assert_eq!(validate(&p, 100), Err(Rejection::BadId));
    }
}
