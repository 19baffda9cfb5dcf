//! The seen-cache: which packet IDs were accepted recently.
//!
//! Bounded in time (entries older than the TTL expire) and in entries (the oldest is evicted
//! when full). Entries are inserted in time order, so a FIFO of (id, time) gives O(1) expiry
//! and eviction next to an O(1) hash set. IDs are stored truncated to 128 bits: they are
//! verified blake3 hashes, so 128 bits keep collisions out of reach while halving memory
//! (about 50 bytes per entry; 1 M entries ≈ 50 MB). The hash set uses a randomly seeded
//! hasher so that chosen payloads cannot degrade it.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::PacketId;

pub enum Insert {
    Duplicate,
    /// Inserted; `evicted` older entries were pushed out by the capacity bound.
    New {
        evicted: u64,
    },
}

pub struct SeenCache {
    set: HashSet<u128, foldhash::fast::RandomState>,
    order: VecDeque<(u128, u32)>,
    capacity: usize,
    ttl_ms: u64,
    start: Instant,
}

fn short(id: &PacketId) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&id[..16]);
    u128::from_le_bytes(b)
}

impl SeenCache {
    pub fn new(capacity: usize, ttl: Duration, start: Instant) -> Self {
        let capacity = capacity.max(1);
        SeenCache {
            set: HashSet::with_capacity_and_hasher(capacity.min(1 << 16), Default::default()),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
            ttl_ms: ttl.as_millis().min(u128::from(u32::MAX)) as u64,
            start,
        }
    }

    fn ms(&self, now: Instant) -> u32 {
        // Saturates after ~49 days of uptime; expiry then relies on the capacity bound and
        // insertion order, which stays correct because `order` is FIFO.
        now.saturating_duration_since(self.start)
            .as_millis()
            .min(u128::from(u32::MAX)) as u32
    }

    pub fn insert(&mut self, id: &PacketId, now: Instant) -> Insert {
        let key = short(id);
        // One hash lookup: insert and learn whether it was there.
        if !self.set.insert(key) {
            return Insert::Duplicate;
        }
        let t = self.ms(now);
        self.order.push_back((key, t));
        let mut evicted = 0;
        while self.order.len() > self.capacity {
            if let Some((old, _)) = self.order.pop_front() {
                self.set.remove(&old);
                evicted += 1;
            }
        }
        Insert::New { evicted }
    }

    pub fn contains(&self, id: &PacketId) -> bool {
        self.set.contains(&short(id))
    }

    /// Drop entries older than the TTL. Returns (expired, capacity-evicted) counts.
    pub fn expire(&mut self, now: Instant) -> (u64, u64) {
        let now_ms = u64::from(self.ms(now));
        let mut expired = 0;
        while let Some(&(key, t)) = self.order.front() {
            if u64::from(t) + self.ttl_ms > now_ms {
                break;
            }
            self.order.pop_front();
            self.set.remove(&key);
            expired += 1;
        }
        // Shrink memory after a burst, so an idle node gives it back.
        if self.order.capacity() > 4 * self.order.len().max(1 << 16) {
            self.order.shrink_to(self.order.len() * 2);
            self.set.shrink_to(self.set.len() * 2);
        }
        (expired, 0)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u64) -> PacketId {
        *blake3::hash(&n.to_le_bytes()).as_bytes()
    }

    #[test]
    fn expires_by_time() {
        let t0 = Instant::now();
        let mut c = SeenCache::new(10, Duration::from_secs(1), t0);
        assert!(matches!(c.insert(&id(1), t0), Insert::New { evicted: 0 }));
        assert!(matches!(c.insert(&id(1), t0), Insert::Duplicate));
        assert_eq!(c.expire(t0 + Duration::from_millis(999)), (0, 0));
        assert_eq!(c.expire(t0 + Duration::from_millis(1000)), (1, 0));
        assert!(!c.contains(&id(1)));
    }

    proptest! {
        /// Whatever the sequence, the cache never exceeds its capacity, never reports a
        /// duplicate for an ID it does not hold, and always holds the most recent IDs.
        #[test]
        fn bounded_and_consistent(ops in proptest::collection::vec((0u64..200, 0u64..50), 1..500), cap in 1usize..64) {
            let t0 = Instant::now();
            let mut c = SeenCache::new(cap, Duration::from_millis(100), t0);
            let mut clock = 0u64;
            for (n, dt) in ops {
                clock += dt;
                let now = t0 + Duration::from_millis(clock);
                c.expire(now);
                let had = c.contains(&id(n));
                match c.insert(&id(n), now) {
                    Insert::Duplicate => prop_assert!(had),
                    Insert::New { .. } => { prop_assert!(!had); prop_assert!(c.contains(&id(n))); }
                }
                prop_assert!(c.len() <= cap);
                prop_assert_eq!(c.len(), c.order.len());
            }
        }
    }
}
