//! The last few minutes of the node's counters, for the console's rates and warnings
//! ("packets/s", "drops rising"): a sample every [`EVERY`], at most [`KEEP`] of them. Read from
//! the same Prometheus counters `/metrics` exports, so the console never disagrees with Grafana.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::metrics::DropReason;

pub const EVERY: Duration = Duration::from_secs(5);
/// Five minutes of samples.
pub const KEEP: usize = 61;

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub packets_in: u64,
    pub packets_out: u64,
    pub drops: BTreeMap<&'static str, u64>,
    /// Frame bytes received from and sent to each neighbor (by short ID).
    pub neighbor_bytes: BTreeMap<String, (u64, u64)>,
}

impl Sample {
    pub fn now(ctx: &Ctx) -> Sample {
        let m = &ctx.metrics;
        let packets_in = ["neighbor", "client", "bridge"]
            .iter()
            .map(|s| m.packets_received.with_label_values(&[s]).get())
            .sum();
        let packets_out = m.packets_forwarded.get() + m.packets_delivered.get();
        let drops = DropReason::ALL
            .iter()
            .map(|r| {
                let l = r.label();
                (l, m.packets_dropped.with_label_values(&[l]).get())
            })
            .collect();
        let neighbor_bytes = ctx
            .neighbors()
            .all()
            .iter()
            .map(|n| (n.id.short(), (n.bytes_in.get(), n.bytes_out.get())))
            .collect();
        Sample {
            at: Instant::now(),
            packets_in,
            packets_out,
            drops,
            neighbor_bytes,
        }
    }

    fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Packets per second in and out between two samples.
pub fn rates(old: &Sample, new: &Sample) -> (f64, f64) {
    let dt = new.at.duration_since(old.at).as_secs_f64().max(0.001);
    (
        new.packets_in.saturating_sub(old.packets_in) as f64 / dt,
        new.packets_out.saturating_sub(old.packets_out) as f64 / dt,
    )
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() >= KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The newest sample at least `age` older than `now`, or the oldest there is.
    fn back(&self, now: Instant, age: Duration) -> Option<&Sample> {
        self.samples
            .iter()
            .rev()
            .find(|s| now.duration_since(s.at) >= age)
            .or_else(|| self.samples.front())
    }

    /// Packets per second in and out over the last ~10 s, ending at `now`.
    pub fn rates(&self, now: &Sample) -> (f64, f64) {
        match self.back(now.at, Duration::from_secs(10)) {
            Some(old) => rates(old, now),
            None => (0.0, 0.0),
        }
    }

    /// Bytes per second from and to each neighbor over the last ~10 s.
    pub fn neighbor_rates(&self, now: &Sample) -> BTreeMap<String, (f64, f64)> {
        let Some(old) = self.back(now.at, Duration::from_secs(10)) else {
            return BTreeMap::new();
        };
        let dt = now.at.duration_since(old.at).as_secs_f64().max(0.001);
        now.neighbor_bytes
            .iter()
            .filter_map(|(id, (i, o))| {
                let (i0, o0) = old.neighbor_bytes.get(id)?;
                Some((
                    id.clone(),
                    (
                        i.saturating_sub(*i0) as f64 / dt,
                        o.saturating_sub(*o0) as f64 / dt,
                    ),
                ))
            })
            .collect()
    }

    /// Drops by reason over the last `window` (as far back as the history goes), and how long
    /// that really covers.
    pub fn drops(&self, now: &Sample, window: Duration) -> (BTreeMap<&'static str, u64>, Duration) {
        let Some(old) = self.back(now.at, window) else {
            return (BTreeMap::new(), Duration::ZERO);
        };
        let d = now
            .drops
            .iter()
            .map(|(k, v)| (*k, v.saturating_sub(old.drops.get(k).copied().unwrap_or(0))))
            .filter(|(_, v)| *v > 0)
            .collect();
        (d, now.at.duration_since(old.at))
    }

    /// Drops in the last minute, if more than in the minute before (a warning).
    pub fn drops_rising(&self, now: &Sample) -> Option<u64> {
        let minute = Duration::from_secs(60);
        let a = self.back(now.at, minute)?;
        let b = self.back(now.at, 2 * minute)?;
        let last = now.total_drops().saturating_sub(a.total_drops());
        let before = a.total_drops().saturating_sub(b.total_drops());
        (last > 0 && last > before).then_some(last)
    }
}

/// Sample every [`EVERY`] until the node stops.
pub async fn run(ctx: Arc<Ctx>, history: Arc<std::sync::Mutex<History>>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = Sample::now(&ctx);
        history.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, n: u64, drops: u64) -> Sample {
        Sample {
            at,
            packets_in: n,
            packets_out: 2 * n,
            drops: [("neighbor_queue_full", drops)].into_iter().collect(),
            neighbor_bytes: [("N".to_string(), (10 * n, n))].into_iter().collect(),
        }
    }

    #[test]
    fn rates_drops_and_rising_drops() {
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..30u64 {
            // 100 packets/s; drops only in the last minute.
            let drops = if i >= 18 { (i - 17) * 10 } else { 0 };
            h.push(sample(t0 + EVERY * i as u32, 500 * i, drops));
        }
        let now = sample(t0 + EVERY * 30, 500 * 30, 130);
        let (pin, pout) = h.rates(&now);
        assert!((pin - 100.0).abs() < 0.01 && (pout - 200.0).abs() < 0.01);
        let (d, span) = h.drops(&now, Duration::from_secs(60));
        assert_eq!(span, Duration::from_secs(60));
        assert_eq!(d.get("neighbor_queue_full"), Some(&120));
        assert_eq!(h.drops_rising(&now), Some(120));
        let r = h.neighbor_rates(&now)["N"];
        assert!(
            (r.0 - 1000.0).abs() < 0.01 && (r.1 - 100.0).abs() < 0.01,
            "{r:?}"
        );
        for _ in 0..KEEP + 5 {
            h.push(sample(t0, 0, 0));
        }
        assert_eq!(h.samples.len(), KEEP);
        assert_eq!(History::default().rates(&now), (0.0, 0.0));
    }
}
