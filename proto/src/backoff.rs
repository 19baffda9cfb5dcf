//! The dialer's backoff: exponential with full jitter, reset only by a connection that lived.
//!
//! A failed dial doubles the backoff (from `min` up to `max`); the wait before the next dial
//! is drawn uniformly from `[backoff/2, backoff]` so that nodes restarted together do not dial
//! in lockstep. A connection that stayed up longer than [`STABLE_AFTER`] resets the backoff;
//! one that flaps (up, then down at once) does not, so a flapping neighbor is dialed less and
//! less often. The caller draws the randomness and passes the time.

use std::time::{Duration, Instant};

/// A connection up at least this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    connected_at: Option<Instant>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            current: min,
            connected_at: None,
        }
    }

    /// The backoff the next failure waits (before jitter).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// A dial succeeded and the connection is up.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection (or the dial) ended: how long to wait before dialing again. `unit` is a
    /// uniform draw from [0, 1] (the jitter).
    pub fn ended(&mut self, now: Instant, unit: f64) -> Duration {
        if let Some(t) = self.connected_at.take() {
            if now.saturating_duration_since(t) > STABLE_AFTER {
                self.current = self.min;
            }
        }
        let half = self.current / 2;
        let wait = half + (self.current - half).mul_f64(unit.clamp(0.0, 1.0));
        self.current = (self.current * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn a_peer_that_never_answers_is_dialed_ever_less_often_up_to_the_cap() {
        let t = Instant::now();
        let mut b = Backoff::new(MIN, MAX);
        let waits: Vec<u128> = (0..8).map(|_| b.ended(t, 1.0).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        // The jitter stays within [backoff/2, backoff].
        assert_eq!(b.ended(t, 0.0), MAX / 2);
    }

    #[test]
    fn a_flapping_connection_keeps_backing_off_and_a_stable_one_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..3 {
            b.ended(t0, 1.0);
        }
        assert_eq!(b.current(), Duration::from_millis(800));
        // Up for 1 s, then down: flapping, the backoff goes on growing.
        b.connected(t0);
        assert_eq!(
            b.ended(t0 + Duration::from_secs(1), 1.0),
            Duration::from_millis(800)
        );
        assert_eq!(b.current(), Duration::from_millis(1600));
        // Up for longer than STABLE_AFTER: back to the minimum.
        let t1 = t0 + Duration::from_secs(2);
        b.connected(t1);
        assert_eq!(
            b.ended(t1 + STABLE_AFTER + Duration::from_millis(1), 1.0),
            MIN
        );
    }

    #[test]
    fn odd_settings_stay_sane() {
        let t = Instant::now();
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.ended(t, 1.0), Duration::from_millis(1));
        let mut b = Backoff::new(MAX, MIN);
        assert_eq!(b.ended(t, 1.0), MAX);
        assert_eq!(b.ended(t, 5.0), MAX, "an out-of-range draw is clamped");
    }
}
