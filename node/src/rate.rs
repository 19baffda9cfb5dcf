//! Token bucket limiting packets/s and bytes/s at once.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub packets_per_sec: u64,
    pub bytes_per_sec: u64,
    /// How many seconds of traffic may arrive in one burst.
    #[serde(default = "default_burst")]
    pub burst_secs: f64,
}

fn default_burst() -> f64 {
    1.0
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    packets: f64,
    bytes: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            packets: limit.packets_per_sec as f64 * limit.burst_secs,
            bytes: limit.bytes_per_sec as f64 * limit.burst_secs,
            last: now,
        }
    }

    pub fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let l = &self.limit;
        self.packets = (self.packets + dt * l.packets_per_sec as f64)
            .min(l.packets_per_sec as f64 * l.burst_secs);
        self.bytes =
            (self.bytes + dt * l.bytes_per_sec as f64).min(l.bytes_per_sec as f64 * l.burst_secs);
    }

    /// Take one packet of `bytes` if the budget allows it.
    pub fn try_take(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        if self.packets >= 1.0 && self.bytes >= bytes as f64 {
            self.packets -= 1.0;
            self.bytes -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Take `packets`/`bytes` unconditionally (may go negative) and say how long to wait
    /// until the budget is positive again. Used for backpressure on clients.
    pub fn take_and_delay(&mut self, packets: usize, bytes: usize, now: Instant) -> Duration {
        self.refill(now);
        self.packets -= packets as f64;
        self.bytes -= bytes as f64;
        let wait_p = if self.packets < 0.0 {
            -self.packets / self.limit.packets_per_sec.max(1) as f64
        } else {
            0.0
        };
        let wait_b = if self.bytes < 0.0 {
            -self.bytes / self.limit.bytes_per_sec.max(1) as f64
        } else {
            0.0
        };
        Duration::from_secs_f64(wait_p.max(wait_b).min(60.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_packets_and_bytes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                packets_per_sec: 10,
                bytes_per_sec: 1000,
                burst_secs: 1.0,
            },
            t0,
        );
        let taken = (0..100).filter(|_| b.try_take(10, t0)).count();
        assert_eq!(taken, 10);
        assert!(b.try_take(10, t0 + Duration::from_millis(100)));
        assert!(!b.try_take(10, t0 + Duration::from_millis(100)));
        let mut b = TokenBucket::new(
            RateLimit {
                packets_per_sec: 1000,
                bytes_per_sec: 100,
                burst_secs: 1.0,
            },
            t0,
        );
        assert!(b.try_take(100, t0));
        assert!(!b.try_take(1, t0));
    }

    #[test]
    fn delay_grows_with_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                packets_per_sec: 100,
                bytes_per_sec: 1 << 30,
                burst_secs: 1.0,
            },
            t0,
        );
        assert_eq!(b.take_and_delay(100, 0, t0), Duration::ZERO);
        let d = b.take_and_delay(50, 0, t0);
        assert!((d.as_secs_f64() - 0.5).abs() < 1e-6, "{d:?}");
    }
}
