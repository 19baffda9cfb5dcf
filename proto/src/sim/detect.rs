//! Failure detection at scale: N members on a random graph, each watching its neighbors with
//! the node's own [`Member`] machine, fed by heartbeat datagrams over a simulated network that
//! loses them (datagrams are never retransmitted, as on the real links) and delays them (a
//! fixed latency per link plus jitter). Some members crash at random times (and, with
//! `restart`, come back 5–10 s later and dial their neighbors); some are slow: now and then
//! they stall (send, hear and judge nothing) for up to 0.7 s, and when they run again their
//! tick notices the pause ([`MemberEvent::Paused`]), as the node's does. A member whose
//! detector fails a neighbor that is in fact alive dials it again after a back-off, as the node
//! does. Watchers poll their machines on the node's cadence ([`POLL`]).
//!
//! The report: how long each watcher of a crashed member took to mark it failed (from the
//! crash), how many watchers never did before the end, how often a live member was suspected
//! or failed (false alarms), whether slow members accused anyone, and whether restarted members
//! are alive again everywhere. Same seed, same report.

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::membership::{Change, Detector, Event as MemberEvent, Member, CONFIRM};
use crate::wire::PROTOCOL_VERSION;

/// How often a node runs its members' timers (the node's liveness tick).
pub const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct DetectConfig {
    pub nodes: usize,
    /// Average neighbors per member (a connected random graph).
    pub degree: usize,
    /// Heartbeat datagrams lost on every link, percent.
    pub loss_pct: f64,
    /// Members that crash during the run, percent (at least one when above 0).
    pub crash_pct: f64,
    /// Simulated seconds.
    pub secs: u64,
    pub seed: u64,
    pub detector: Detector,
    /// One-way latency of a link, uniform in this range, plus up to `jitter_ms`.
    pub latency_ms: (u64, u64),
    pub jitter_ms: u64,
    /// A falsely failed member is dialed again after this long.
    pub redial_ms: u64,
    /// Crashed members start again 5–10 s after their crash (if the run lasts).
    pub restart: bool,
    /// Members that stall now and then (every 5–15 s, for 100–700 ms), percent.
    pub slow_pct: f64,
}

impl DetectConfig {
    pub fn new(nodes: usize, degree: usize, secs: u64, seed: u64) -> Self {
        DetectConfig {
            nodes,
            degree,
            loss_pct: 0.0,
            crash_pct: 0.0,
            secs,
            seed,
            detector: Detector::default(),
            latency_ms: (5, 40),
            jitter_ms: 5,
            redial_ms: 200,
            restart: false,
            slow_pct: 0.0,
        }
    }
}

/// What a run measured (`echomeshctl sim --detector --json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DetectReport {
    pub nodes: usize,
    pub degree: usize,
    pub seed: u64,
    pub loss_pct: f64,
    pub secs: u64,
    pub heartbeat_ms: u64,
    pub suspect_ms: u64,
    pub fail_ms: u64,
    pub crashed: usize,
    /// Watchers of crashed members that marked them failed.
    pub detections: u64,
    /// Watchers of crashed members that had not marked them failed at the end.
    pub missed: u64,
    /// From the crash to the verdict, over all detections.
    pub detect_p50_ms: f64,
    pub detect_p99_ms: f64,
    pub detect_max_ms: f64,
    /// Live members suspected, and failed, by a watcher.
    pub false_suspicions: u64,
    pub false_failures: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_lost: u64,
    /// Crashed members that started again, and watchers that still saw one of them failed at
    /// the end.
    pub restarted: usize,
    pub rejoin_missing: u64,
    /// Slow members, their stalls, the suspicions others raised against them while they
    /// stalled, and those they raised themselves against members that are not slow (without
    /// loss, 0: their own pause is not held against anyone).
    pub slow: usize,
    pub stalls: u64,
    pub suspicions_of_slow: u64,
    pub suspicions_by_slow: u64,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// `node` sends a heartbeat to each neighbor.
    Beat {
        node: usize,
    },
    Arrive {
        to: usize,
        from: usize,
    },
    Poll {
        node: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Redial {
        node: usize,
        peer: usize,
    },
    Stall {
        node: usize,
    },
    Resume {
        node: usize,
        stalled_us: u64,
    },
}

struct Watch {
    peer: usize,
    latency_us: u64,
    member: Member,
}

struct Sim {
    cfg: DetectConfig,
    rng: ChaCha8Rng,
    queue: super::Queue<Event>,
    forgive: bool,
    watches: Vec<Vec<Watch>>,
    crashed_at: Vec<Option<u64>>,
    /// Stalled until (µs), for slow members.
    stalled: Vec<Option<u64>>,
    slow: Vec<bool>,
    restarted: Vec<bool>,
    detect_us: Vec<u64>,
    false_suspicions: u64,
    false_failures: u64,
    sent: u64,
    lost: u64,
    stalls: u64,
    suspicions_of_slow: u64,
    suspicions_by_slow: u64,
}

impl Sim {
    fn at(&self, us: u64) -> Instant {
        self.queue.at(us)
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.queue.schedule(at, e);
    }

    fn connected(&mut self, node: usize, i: usize, now: u64) {
        let at = self.at(now);
        self.watches[node][i].member.handle(
            MemberEvent::Connected {
                cluster: "sim".into(),
                protocol: PROTOCOL_VERSION,
                first: true,
            },
            at,
        );
    }

    fn handle(&mut self, now: u64, e: Event) {
        let hb = self.cfg.detector.heartbeat.as_micros() as u64;
        match e {
            Event::Beat { node } => {
                if self.crashed_at[node].is_some() {
                    return;
                }
                if let Some(until) = self.stalled[node] {
                    // Sends nothing while stalled; the next beat after it resumes.
                    self.schedule(until + hb, Event::Beat { node });
                    return;
                }
                for i in 0..self.watches[node].len() {
                    let (peer, lat) =
                        (self.watches[node][i].peer, self.watches[node][i].latency_us);
                    self.sent += 1;
                    if self.rng.random_bool(self.cfg.loss_pct / 100.0) {
                        self.lost += 1;
                        continue;
                    }
                    let jitter = self.rng.random_range(0..=self.cfg.jitter_ms * 1000);
                    self.schedule(
                        now + lat + jitter,
                        Event::Arrive {
                            to: peer,
                            from: node,
                        },
                    );
                }
                self.schedule(now + hb, Event::Beat { node });
            }
            Event::Arrive { to, from } => {
                // A stalled member reads nothing (conservative: the real one would read the
                // buffered heartbeats when it runs again).
                if self.crashed_at[to].is_some() || self.stalled[to].is_some() {
                    return;
                }
                let at = self.at(now);
                if let Some(w) = self.watches[to].iter_mut().find(|w| w.peer == from) {
                    w.member.handle(MemberEvent::Heard, at);
                }
            }
            Event::Poll { node } => {
                if self.crashed_at[node].is_some() {
                    return;
                }
                if let Some(until) = self.stalled[node] {
                    self.schedule(until, Event::Poll { node });
                    return;
                }
                let at = self.at(now);
                for i in 0..self.watches[node].len() {
                    let peer = self.watches[node][i].peer;
                    let change = self.watches[node][i].member.handle_timeout(at);
                    match (change, self.crashed_at[peer]) {
                        (Some(Change::Failed { .. }), Some(crash)) => {
                            self.detect_us.push(now.saturating_sub(crash));
                        }
                        (Some(Change::Failed { .. }), None) => {
                            self.false_failures += 1;
                            let redial = now + self.cfg.redial_ms * 1000;
                            self.schedule(redial, Event::Redial { node, peer });
                        }
                        (Some(Change::Suspected { .. }), None) => {
                            self.false_suspicions += 1;
                            if self.slow[node] && !self.slow[peer] {
                                self.suspicions_by_slow += 1;
                            }
                            if self.stalled[peer].is_some() {
                                self.suspicions_of_slow += 1;
                            }
                        }
                        _ => {}
                    }
                }
                self.schedule(now + POLL.as_micros() as u64, Event::Poll { node });
            }
            Event::Crash { node } => {
                self.crashed_at[node] = Some(now);
                if self.cfg.restart {
                    let back = now + self.rng.random_range(5_000_000..=10_000_000);
                    self.schedule(back, Event::Restart { node });
                }
            }
            Event::Restart { node } => {
                // A new process: fresh member records; it dials every neighbor at once, and
                // each neighbor takes the connection (a failed record comes back up).
                self.crashed_at[node] = None;
                self.restarted[node] = true;
                let at = self.at(now);
                for i in 0..self.watches[node].len() {
                    self.watches[node][i].member = Member::new(self.cfg.detector, CONFIRM, at);
                    self.connected(node, i, now);
                    let peer = self.watches[node][i].peer;
                    if self.crashed_at[peer].is_none() {
                        if let Some(j) = self.watches[peer].iter().position(|w| w.peer == node) {
                            self.connected(peer, j, now);
                        }
                    }
                }
                self.schedule(now + hb, Event::Beat { node });
                self.schedule(now + POLL.as_micros() as u64, Event::Poll { node });
            }
            Event::Stall { node } => {
                if self.crashed_at[node].is_none() && self.stalled[node].is_none() {
                    let d = self.rng.random_range(100_000..=700_000);
                    self.stalled[node] = Some(now + d);
                    self.stalls += 1;
                    self.schedule(
                        now + d,
                        Event::Resume {
                            node,
                            stalled_us: d,
                        },
                    );
                }
                let next = now + self.rng.random_range(5_000_000..=15_000_000);
                self.schedule(next, Event::Stall { node });
            }
            Event::Resume { node, stalled_us } => {
                self.stalled[node] = None;
                // Its tick runs late by the stall: the pause is forgiven.
                let at = self.at(now);
                if self.forgive {
                    for w in &mut self.watches[node] {
                        w.member
                            .handle(MemberEvent::Paused(Duration::from_micros(stalled_us)), at);
                    }
                }
            }
            Event::Redial { node, peer } => {
                if self.crashed_at[node].is_some() || self.crashed_at[peer].is_some() {
                    return;
                }
                if self.stalled[node].is_some() || self.stalled[peer].is_some() {
                    let again = now + self.cfg.redial_ms * 1000;
                    self.schedule(again, Event::Redial { node, peer });
                    return;
                }
                if let Some(i) = self.watches[node].iter().position(|w| w.peer == peer) {
                    self.connected(node, i, now);
                }
            }
        }
    }
}

/// Run one simulation.
pub fn run(cfg: &DetectConfig) -> DetectReport {
    run_with(cfg, true)
}

/// `forgive`: a member that ran again after a stall tells its machines (`Paused`); without it,
/// it would judge its neighbors by the time it did not listen.
fn run_with(cfg: &DetectConfig, forgive: bool) -> DetectReport {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let adj = super::graph(cfg.nodes, cfg.degree, &mut rng);
    let base = Instant::now();
    let mut watches: Vec<Vec<Watch>> = (0..cfg.nodes).map(|_| Vec::new()).collect();
    for (a, peers) in adj.iter().enumerate() {
        for &b in peers {
            if a < b {
                let l = rng.random_range(
                    cfg.latency_ms.0 * 1000..=cfg.latency_ms.1.max(cfg.latency_ms.0) * 1000,
                );
                for (x, y) in [(a, b), (b, a)] {
                    watches[x].push(Watch {
                        peer: y,
                        latency_us: l,
                        member: Member::new(cfg.detector, CONFIRM, base),
                    });
                }
            }
        }
    }
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng,
        queue: super::Queue::new(base),
        forgive,
        watches,
        crashed_at: vec![None; cfg.nodes],
        stalled: vec![None; cfg.nodes],
        slow: vec![false; cfg.nodes],
        restarted: vec![false; cfg.nodes],
        detect_us: Vec::new(),
        false_suspicions: 0,
        false_failures: 0,
        sent: 0,
        lost: 0,
        stalls: 0,
        suspicions_of_slow: 0,
        suspicions_by_slow: 0,
    };
    let hb = cfg.detector.heartbeat.as_micros() as u64;
    let poll = POLL.as_micros() as u64;
    for node in 0..cfg.nodes {
        for i in 0..sim.watches[node].len() {
            sim.connected(node, i, 0);
        }
        let beat = sim.rng.random_range(0..hb);
        sim.schedule(beat, Event::Beat { node });
        let tick = sim.rng.random_range(0..poll);
        sim.schedule(tick, Event::Poll { node });
    }
    // Crashes between a quarter and three quarters of the run, so every one can be detected.
    let end = cfg.secs * 1_000_000;
    let crashes = if cfg.crash_pct > 0.0 {
        ((cfg.nodes as f64 * cfg.crash_pct / 100.0).round() as usize).clamp(1, cfg.nodes - 1)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..cfg.nodes).collect();
    order.shuffle(&mut sim.rng);
    for &node in order.iter().take(crashes) {
        let at = sim.rng.random_range(end / 4..=end * 3 / 4);
        sim.schedule(at, Event::Crash { node });
    }
    // Slow members are drawn from those that never crash.
    let slow =
        ((cfg.nodes as f64 * cfg.slow_pct / 100.0).round() as usize).min(cfg.nodes - crashes);
    for &node in order.iter().skip(crashes).take(slow) {
        sim.slow[node] = true;
        let first = sim.rng.random_range(1_000_000..=15_000_000);
        sim.schedule(first, Event::Stall { node });
    }
    while let Some((at, e)) = sim.queue.pop() {
        if at > end {
            break;
        }
        sim.handle(at, e);
    }
    let watchers_of_crashed: u64 = (0..cfg.nodes)
        .filter(|&n| sim.crashed_at[n].is_some())
        .map(|n| {
            adj[n]
                .iter()
                .filter(|&&w| sim.crashed_at[w].is_none())
                .count() as u64
        })
        .sum();
    let rejoin_missing: u64 = (0..cfg.nodes)
        .filter(|&n| sim.restarted[n] && sim.crashed_at[n].is_none())
        .map(|n| {
            adj[n]
                .iter()
                .filter(|&&w| sim.crashed_at[w].is_none())
                .filter(|&&w| {
                    sim.watches[w]
                        .iter()
                        .find(|x| x.peer == n)
                        .is_some_and(|x| !x.member.is_up())
                })
                .count() as u64
        })
        .sum();
    let mut d = sim.detect_us.clone();
    d.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    DetectReport {
        nodes: cfg.nodes,
        degree: cfg.degree,
        seed: cfg.seed,
        loss_pct: cfg.loss_pct,
        secs: cfg.secs,
        heartbeat_ms: cfg.detector.heartbeat.as_millis() as u64,
        suspect_ms: cfg.detector.suspect_after.as_millis() as u64,
        fail_ms: cfg.detector.fail_after.as_millis() as u64,
        crashed: crashes,
        detections: d.len() as u64,
        missed: watchers_of_crashed.saturating_sub(d.len() as u64),
        detect_p50_ms: ms(super::percentile(&d, 0.5)),
        detect_p99_ms: ms(super::percentile(&d, 0.99)),
        detect_max_ms: ms(d.last().copied().unwrap_or(0)),
        false_suspicions: sim.false_suspicions,
        false_failures: sim.false_failures,
        heartbeats_sent: sim.sent,
        heartbeats_lost: sim.lost,
        restarted: sim.restarted.iter().filter(|&&r| r).count(),
        rejoin_missing,
        slow,
        stalls: sim.stalls,
        suspicions_of_slow: sim.suspicions_of_slow,
        suspicions_by_slow: sim.suspicions_by_slow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashed_members_are_failed_within_two_seconds_and_loss_accuses_no_one() {
        let mut c = DetectConfig::new(100, 6, 120, 7);
        c.loss_pct = 10.0;
        c.crash_pct = 5.0;
        let r = run(&c);
        assert_eq!(r.crashed, 5);
        assert!(r.detections >= 5, "{r:?}");
        assert_eq!(r.missed, 0, "{r:?}");
        assert!(r.detect_max_ms <= 2000.0, "{r:?}");
        assert!(
            r.detect_p50_ms >= c.detector.fail_after.as_millis() as f64 - 200.0,
            "{r:?}"
        );
        assert_eq!(r.false_failures, 0, "{r:?}");
        let lost = r.heartbeats_lost as f64 / r.heartbeats_sent as f64;
        assert!((0.09..0.11).contains(&lost), "{r:?}");
    }

    #[test]
    fn slow_members_accuse_no_one_and_restarted_members_are_alive_again_everywhere() {
        // No loss: every suspicion comes from a stall.
        let mut c = DetectConfig::new(60, 5, 120, 11);
        c.crash_pct = 10.0;
        c.restart = true;
        c.slow_pct = 20.0;
        let r = run(&c);
        assert_eq!((r.crashed, r.restarted, r.slow), (6, 6, 12), "{r:?}");
        assert!(r.stalls >= 12 * 5, "{r:?}");
        assert_eq!(
            r.suspicions_by_slow, 0,
            "a pause is not held against anyone: {r:?}"
        );
        assert!(
            r.suspicions_of_slow > 0,
            "a stall over 500 ms makes a suspect: {r:?}"
        );
        assert_eq!(
            r.false_failures, 0,
            "stalls of at most 0.7 s are not failures: {r:?}"
        );
        // Without the pause, the same stalls make slow members accuse their neighbors.
        let blind = run_with(&c, false);
        assert!(blind.suspicions_by_slow > 0, "{blind:?}");
        assert_eq!(r.rejoin_missing, 0, "{r:?}");
        assert_eq!(r.missed, 0, "{r:?}");
    }

    #[test]
    fn heavy_loss_shows_as_suspicions_and_the_same_seed_gives_the_same_report() {
        let mut c = DetectConfig::new(30, 4, 60, 3);
        c.loss_pct = 40.0;
        let a = run(&c);
        assert!(a.false_suspicions > 0, "{a:?}");
        assert_eq!(a, run(&c));
    }
}
