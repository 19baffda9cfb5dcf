//! The bridge's memory of Echo frames: every frame's ID (a hash of its exact bytes) is kept
//! for at least `ttl` whatever the load. Echo software forgets duplicates after 30–105 s and
//! has no hop count, so a frame that comes back later (several bridges into one Spot-On-Lite
//! network, slow cycles) is stopped here. When the memory is full of entries younger than
//! `ttl`, new frames are refused (counted by the caller) rather than old entries forgotten
//! early: refusing bounds memory without reopening a loop.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

pub type FrameId = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen within `ttl`: remembered now; flood it.
    New,
    /// Seen within `ttl`: drop.
    Duplicate,
    /// The memory is full of live entries: refuse the frame.
    Full,
}

#[derive(Debug)]
pub struct FrameMemory {
    order: VecDeque<(Instant, FrameId)>,
    set: HashSet<FrameId>,
    ttl: Duration,
    capacity: usize,
}

impl FrameMemory {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        FrameMemory {
            order: VecDeque::new(),
            set: HashSet::new(),
            ttl,
            capacity,
        }
    }

    pub fn remember(&mut self, id: FrameId, now: Instant) -> Verdict {
        self.expire(now);
        if self.set.contains(&id) {
            return Verdict::Duplicate;
        }
        if self.set.len() >= self.capacity {
            return Verdict::Full;
        }
        self.set.insert(id);
        self.order.push_back((now, id));
        Verdict::New
    }

    pub fn contains(&self, id: &FrameId) -> bool {
        self.set.contains(id)
    }

    /// Forget entries older than `ttl`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(t, id)) = self.order.front() {
            if now.duration_since(t) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.set.remove(&id);
            n += 1;
        }
        n
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_ttl_and_refuses_when_full() {
        let t = Instant::now();
        let ttl = Duration::from_secs(600);
        let mut m = FrameMemory::new(ttl, 2);
        assert_eq!(m.remember([1; 32], t), Verdict::New);
        assert_eq!(
            m.remember([1; 32], t + Duration::from_secs(599)),
            Verdict::Duplicate
        );
        assert_eq!(
            m.remember([2; 32], t + Duration::from_secs(1)),
            Verdict::New
        );
        // Full of live entries: the new frame is refused, the old ones stay.
        assert_eq!(
            m.remember([3; 32], t + Duration::from_secs(2)),
            Verdict::Full
        );
        assert!(m.contains(&[1; 32]));
        // After the TTL the oldest goes and there is room again.
        assert_eq!(m.remember([3; 32], t + ttl), Verdict::New);
        assert!(!m.contains(&[1; 32]));
        assert_eq!(m.remember([1; 32], t + ttl), Verdict::Full);
        assert_eq!(
            m.remember([2; 32], t + ttl + Duration::from_secs(1)),
            Verdict::New,
            "forgotten after its ttl, so new"
        );
    }
}
