//! The packet log: the packets this node accepted recently, in the order it accepted them,
//! each with a node-local sequence number. Sans-IO, bounded in bytes and in age.
//!
//! It is the one memory behind both ways of making good what a connection lost:
//! - neighbor repair: a neighbor that was down, or whose queue overflowed, is offered the IDs
//!   of what was forwarded after a position (`offers`), pulls what its seen-cache lacks, and is
//!   sent those packets from here (`get`) — the same pull lazy push uses for its grafts;
//! - client resume: a client that lost its connection subscribes again "after position P"
//!   and is replayed what matched its filter since (`replay`).
//!
//! Positions carry the log's `epoch` (random per process): a position from before a restart is
//! recognisably stale. Entries leave by age or when the byte bound is reached (oldest first);
//! a caller whose position fell off the tail learns how many entries it missed.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{EchoPacket, IdMap, PacketId};

/// Bytes one entry costs beyond its packet's own `cost()` (time, source, bookkeeping, and its
/// place in the ID index).
const ENTRY_OVERHEAD: usize = 104;

/// A position in one node's log: every entry with `seq < self.seq` is before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub epoch: u64,
    pub seq: u64,
}

struct Entry<S> {
    at: Instant,
    from: Option<S>,
    /// The broadcast tree it travels on (`broadcast::TreeKey`).
    tree: u64,
    /// Whether the packet may travel on (it is stored as forwarded, `hops_left` already
    /// decremented).
    forward: bool,
    pkt: EchoPacket,
}

/// What an offer walk found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Offer {
    /// Log positions and IDs of the packets offered (the position finds a wanted one again
    /// without an index).
    pub ids: Vec<(u64, PacketId)>,
    /// Where the next walk continues.
    pub next: u64,
    /// Entries between the asked position and the log's tail that were already gone.
    pub missed: u64,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replay {
    pub packets: Vec<(u64, EchoPacket)>,
    /// Entries already gone (position older than the log's tail, or from another epoch: then
    /// `stale_epoch` is set and the count is unknown).
    pub missed: u64,
    pub stale_epoch: bool,
    /// The position after the last entry looked at (the head unless `max_bytes` stopped it).
    pub next: u64,
}

pub struct PacketLog<S> {
    entries: VecDeque<Entry<S>>,
    /// Where each forwardable packet is (what a graft asks for by ID); kept only where grafts
    /// come (lazy push): a flooding node announces nothing, so nothing is grafted from it.
    index: Option<IdMap<u64>>,
    first_seq: u64,
    bytes: usize,
    max_bytes: usize,
    ttl: Duration,
    epoch: u64,
    evicted: u64,
}

fn entry_cost(p: &EchoPacket) -> usize {
    p.cost() + ENTRY_OVERHEAD
}

impl<S: Copy + PartialEq> PacketLog<S> {
    pub fn new(max_bytes: usize, ttl: Duration, epoch: u64) -> Self {
        PacketLog {
            entries: VecDeque::new(),
            index: Some(IdMap::default()),
            first_seq: 0,
            bytes: 0,
            max_bytes,
            ttl,
            epoch,
            evicted: 0,
        }
    }

    /// Keep the ID index (`find`) or not (then `find` finds nothing; positions still work).
    pub fn indexed(mut self, yes: bool) -> Self {
        self.index = yes.then(IdMap::default);
        self
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position after the newest entry.
    pub fn head(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    pub fn head_position(&self) -> LogPosition {
        LogPosition {
            epoch: self.epoch,
            seq: self.head(),
        }
    }

    /// The oldest position still held.
    pub fn tail(&self) -> u64 {
        self.first_seq
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries that left by age or by the byte bound, since the start (for a metric).
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Record an accepted packet of broadcast tree `tree` (as forwarded when `forward`);
    /// returns its sequence number.
    pub fn push(
        &mut self,
        pkt: EchoPacket,
        from: Option<S>,
        tree: u64,
        forward: bool,
        now: Instant,
    ) -> u64 {
        let seq = self.head();
        self.bytes += entry_cost(&pkt);
        if let (true, Some(ix)) = (forward, &mut self.index) {
            ix.insert(pkt.id, seq);
        }
        self.entries.push_back(Entry {
            at: now,
            from,
            tree,
            forward,
            pkt,
        });
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            self.pop_oldest();
        }
        seq
    }

    fn pop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            if let Some(MapEntry::Occupied(o)) = self.index.as_mut().map(|ix| ix.entry(e.pkt.id)) {
                if *o.get() == self.first_seq {
                    o.remove();
                }
            }
            self.bytes -= entry_cost(&e.pkt);
            self.first_seq += 1;
            self.evicted += 1;
        }
    }

    /// Drop entries older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        while let Some(e) = self.entries.front() {
            if now.saturating_duration_since(e.at) <= self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    /// The packet at `seq`, as it would be forwarded, and its tree, if still held and still
    /// `id`.
    pub fn get(&self, seq: u64, id: &PacketId) -> Option<(&EchoPacket, u64)> {
        let e = self
            .entries
            .get(usize::try_from(seq.checked_sub(self.first_seq)?).ok()?)?;
        (e.pkt.id == *id).then_some((&e.pkt, e.tree))
    }

    /// A forwardable packet by ID (what a neighbor grafts), and its tree.
    pub fn find(&self, id: &PacketId) -> Option<(&EchoPacket, u64)> {
        let seq = *self.index.as_ref()?.get(id)?;
        self.get(seq, id)
    }

    /// The first position accepted at or after `t` (the head when nothing was).
    pub fn position_at(&self, t: Instant) -> u64 {
        self.first_seq + self.entries.partition_point(|e| e.at < t) as u64
    }

    /// IDs of forwardable packets from `from` on that did not come from `exclude`: at most
    /// `max` of them, looking at no more than `max_scan` entries.
    pub fn offers(&self, from: u64, exclude: S, max: usize, max_scan: usize) -> Offer {
        let mut out = Offer {
            missed: self.first_seq.saturating_sub(from),
            ..Offer::default()
        };
        let start = from.max(self.first_seq);
        let mut seq = start;
        let start_idx = ((start - self.first_seq) as usize).min(self.entries.len());
        for e in self.entries.range(start_idx..).take(max_scan) {
            if out.ids.len() >= max {
                break;
            }
            if e.forward && e.from != Some(exclude) {
                out.ids.push((seq, e.pkt.id));
            }
            seq += 1;
        }
        out.next = seq;
        out
    }

    /// Packets accepted after `after` that `matches`, at most about `max_bytes` of them.
    pub fn replay(
        &self,
        after: LogPosition,
        matches: impl Fn(&EchoPacket) -> bool,
        max_bytes: usize,
    ) -> Replay {
        let mut out = Replay::default();
        let from = if after.epoch != self.epoch {
            out.stale_epoch = true;
            self.first_seq
        } else {
            out.missed = self.first_seq.saturating_sub(after.seq);
            after.seq.max(self.first_seq)
        };
        let mut seq = from;
        let mut bytes = 0;
        if from < self.head() {
            for e in self.entries.range((from - self.first_seq) as usize..) {
                if bytes >= max_bytes {
                    break;
                }
                if matches(&e.pkt) {
                    bytes += e.pkt.cost();
                    out.packets.push((seq, e.pkt.clone()));
                }
                seq += 1;
            }
        }
        out.next = seq;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(n: u32) -> EchoPacket {
        EchoPacket::new(Bytes::from(n.to_be_bytes().to_vec()), 5, None)
    }

    #[test]
    fn offers_skip_the_source_and_unforwardable_and_report_what_fell_off() {
        let t0 = Instant::now();
        let mut log: PacketLog<u8> = PacketLog::new(1 << 20, Duration::from_secs(60), 1);
        log.push(pkt(0), Some(1), 0, true, t0);
        log.push(pkt(1), Some(2), 0, true, t0);
        log.push(pkt(2), Some(2), 0, false, t0);
        log.push(pkt(3), None, 5, true, t0);
        let o = log.offers(0, 2, 10, 100);
        assert_eq!(o.ids, vec![(0, pkt(0).id), (3, pkt(3).id)]);
        assert_eq!((o.next, o.missed), (4, 0));
        // Paged: at most `max` IDs, and the walk resumes where it stopped.
        let o = log.offers(0, 9, 2, 100);
        assert_eq!(o.ids.len(), 2);
        let o2 = log.offers(o.next, 9, 2, 100);
        assert_eq!(o2.ids, vec![(3, pkt(3).id)]);
        assert_eq!(log.get(1, &pkt(1).id), Some((&pkt(1), 0)));
        assert_eq!(log.find(&pkt(3).id), Some((&pkt(3), 5)));
        assert_eq!(log.find(&pkt(2).id), None, "not forwardable");
        assert_eq!(log.get(1, &pkt(2).id), None, "position and ID must agree");
    }

    #[test]
    fn an_unindexed_log_finds_by_position_only() {
        let t0 = Instant::now();
        let mut log: PacketLog<u8> =
            PacketLog::new(1 << 20, Duration::from_secs(60), 1).indexed(false);
        log.push(pkt(0), None, 0, true, t0);
        assert_eq!(log.find(&pkt(0).id), None);
        assert_eq!(log.get(0, &pkt(0).id), Some((&pkt(0), 0)));
        assert_eq!(log.offers(0, 9, 10, 100).ids, vec![(0, pkt(0).id)]);
    }

    #[test]
    fn byte_and_age_bounds_evict_oldest_first() {
        let t0 = Instant::now();
        let one = entry_cost(&pkt(0));
        let mut log: PacketLog<u8> = PacketLog::new(3 * one, Duration::from_secs(10), 1);
        for n in 0..5 {
            log.push(pkt(n), None, 0, true, t0 + Duration::from_secs(n as u64));
        }
        assert_eq!((log.tail(), log.head(), log.len()), (2, 5, 3));
        assert!(log.get(1, &pkt(1).id).is_none());
        assert!(log.find(&pkt(1).id).is_none(), "gone from the index too");
        assert!(log.find(&pkt(2).id).is_some());
        assert_eq!(log.take_evicted(), 2);
        let o = log.offers(0, 9, 10, 100);
        assert_eq!(o.missed, 2);
        assert_eq!(o.ids.len(), 3);
        log.expire(t0 + Duration::from_secs(13) + Duration::from_millis(1));
        assert_eq!(log.tail(), 4);
        assert!(log.bytes() <= one);
        assert_eq!(log.position_at(t0 + Duration::from_secs(4)), 4);
        assert_eq!(log.position_at(t0 + Duration::from_secs(99)), 5);
    }

    #[test]
    fn replay_resumes_after_a_position_and_flags_a_stale_epoch() {
        let t0 = Instant::now();
        let mut log: PacketLog<u8> = PacketLog::new(1 << 20, Duration::from_secs(60), 7);
        for n in 0..6 {
            log.push(pkt(n), None, 0, true, t0);
        }
        let even = |p: &EchoPacket| p.payload[3] % 2 == 0;
        let r = log.replay(LogPosition { epoch: 7, seq: 3 }, even, usize::MAX);
        let got: Vec<u64> = r.packets.iter().map(|(s, _)| *s).collect();
        assert_eq!(got, vec![4]);
        assert_eq!((r.next, r.missed, r.stale_epoch), (6, 0, false));
        let r = log.replay(LogPosition { epoch: 8, seq: 3 }, |_| true, usize::MAX);
        assert!(r.stale_epoch);
        assert_eq!(r.packets.len(), 6);
        // A byte budget stops the replay early; `next` says where.
        let r = log.replay(LogPosition { epoch: 7, seq: 0 }, |_| true, 1);
        assert_eq!((r.packets.len(), r.next), (1, 1));
    }
}
