//! `echomeshctl sim`: the deterministic mesh simulator of `echomesh_proto::sim`, for operators
//! (what would flooding or lazy push cost on a district of N nodes?) and for us.

use std::process::ExitCode;

use clap::Args;
use echomesh_proto::broadcast::Mode;
use echomesh_proto::membership::Detector;
use echomesh_proto::sim::detect::{self, DetectConfig, DetectReport};
use echomesh_proto::sim::{self, Report, SimConfig};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  echomeshctl sim --nodes 1000 --degree 6 --packets 10000\n  echomeshctl sim --broadcast lazy --loss 10 --crash 5 --partition --json\n  echomeshctl sim --detector --nodes 100 --loss 10 --crash 5 --secs 120\n  echomeshctl sim --detector --crash 5 --restart --slow 10\n\nThe same seed gives the same output, byte for byte. Without --broadcast, flood and lazy push run side by side on the same mesh and traffic. With --detector, the failure detector runs instead: heartbeats between neighbors, members crashing, and how fast and how falsely they are judged."
)]
pub struct SimArgs {
    /// Nodes in the simulated mesh.
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Average links per node (a connected random graph).
    #[arg(long, default_value_t = 6)]
    degree: usize,
    /// Packets injected, from random origins.
    #[arg(long, default_value_t = 2000)]
    packets: usize,
    /// Datagram loss on every link, percent (QUIC retransmits: loss shows as delay; sustained
    /// loss kills a connection, which is dialed again and repaired).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Nodes that crash during the run, percent.
    #[arg(long, default_value_t = 0.0)]
    crash: f64,
    /// Cut the mesh in two halves for a while, then heal.
    #[arg(long)]
    partition: bool,
    /// `flood` or `lazy`; both when not given.
    #[arg(long)]
    broadcast: Option<Mode>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packets per second injected over the whole mesh.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Payload bytes per packet.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Lazy push: milliseconds an announced packet may take over the tree before it is
    /// pulled (default: the node's).
    #[arg(long)]
    graft_timeout_ms: Option<u64>,
    /// Simulate the failure detector instead of broadcast: every member watches its
    /// neighbors' heartbeats (lost at --loss), --crash percent of them crash; reports how fast
    /// each crash is noticed and how often a live member is suspected or failed.
    #[arg(long)]
    detector: bool,
    /// --detector: simulated seconds.
    #[arg(long, default_value_t = 120, requires = "detector")]
    secs: u64,
    /// --detector: heartbeat period, suspicion and failure thresholds in milliseconds
    /// (default: the node's, 100/500/1200).
    #[arg(long, requires = "detector")]
    heartbeat_ms: Option<u64>,
    #[arg(long, requires = "detector")]
    suspect_ms: Option<u64>,
    #[arg(long, requires = "detector")]
    fail_ms: Option<u64>,
    /// --detector: crashed members start again 5–10 s later.
    #[arg(long, requires = "detector")]
    restart: bool,
    /// --detector: members that stall now and then (100–700 ms every 5–15 s), percent.
    #[arg(long, default_value_t = 0.0, requires = "detector")]
    slow: f64,
}

impl SimArgs {
    /// What both simulations check: the mesh's size and shape, and the crashes.
    fn check_mesh(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (2..=100_000).contains(&self.nodes),
            "--nodes: between 2 and 100000"
        );
        anyhow::ensure!(self.degree >= 1, "--degree: at least 1");
        anyhow::ensure!(
            (0.0..=50.0).contains(&self.crash),
            "--crash: a percentage from 0 to 50"
        );
        Ok(())
    }

    fn config(&self, mode: Mode) -> anyhow::Result<SimConfig> {
        self.check_mesh()?;
        anyhow::ensure!(
            (1..=10_000_000).contains(&self.packets),
            "--packets: between 1 and 10000000"
        );
        // The simulator keeps each node's first delivery of each packet (16 bytes) and a
        // seen-cache entry: bound the product, not only each factor.
        anyhow::ensure!(
            self.nodes.saturating_mul(self.packets) <= 100_000_000,
            "--nodes × --packets: at most 100 million (about 4 GB of memory); {} × {} is more",
            self.nodes,
            self.packets
        );
        anyhow::ensure!(
            (0.0..=50.0).contains(&self.loss),
            "--loss: a percentage from 0 to 50"
        );
        let mut c = SimConfig::new(self.nodes, self.degree, self.packets, mode, self.seed);
        c.loss_pct = self.loss;
        c.crash_pct = self.crash;
        c.partition = self.partition;
        c.rate = self.rate.max(1);
        c.payload_bytes = self.size;
        if let Some(t) = self.graft_timeout_ms {
            c.graft_timeout_ms = t;
        }
        Ok(c)
    }

    fn detect_config(&self) -> anyhow::Result<DetectConfig> {
        self.check_mesh()?;
        anyhow::ensure!(
            (1..=86_400).contains(&self.secs),
            "--secs: between 1 and 86400"
        );
        anyhow::ensure!(
            (0.0..=90.0).contains(&self.loss),
            "--loss: a percentage from 0 to 90"
        );
        anyhow::ensure!(
            (0.0..=50.0).contains(&self.slow),
            "--slow: a percentage from 0 to 50"
        );
        let d = Detector::default();
        let ms = |v: Option<u64>, dflt: std::time::Duration| {
            v.map(std::time::Duration::from_millis).unwrap_or(dflt)
        };
        let detector = Detector {
            heartbeat: ms(self.heartbeat_ms, d.heartbeat),
            suspect_after: ms(self.suspect_ms, d.suspect_after),
            fail_after: ms(self.fail_ms, d.fail_after),
        };
        detector.check().map_err(anyhow::Error::msg)?;
        // Heartbeats are the events: bound their number (about 100 bytes each in the queue).
        let beats = self.nodes as u128 * self.degree as u128 * u128::from(self.secs) * 1000
            / detector.heartbeat.as_millis().max(1);
        anyhow::ensure!(
            beats <= 1_000_000_000,
            "--nodes × --degree × --secs / heartbeat: at most a billion heartbeats ({beats} asked)"
        );
        let mut c = DetectConfig::new(self.nodes, self.degree, self.secs, self.seed);
        c.loss_pct = self.loss;
        c.crash_pct = self.crash;
        c.detector = detector;
        c.restart = self.restart;
        c.slow_pct = self.slow;
        Ok(c)
    }
}

pub fn run(args: SimArgs, json: bool) -> anyhow::Result<ExitCode> {
    if args.detector {
        let r = detect::run(&args.detect_config()?);
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print_detect(&r);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let modes = match args.broadcast {
        Some(m) => vec![m],
        None => vec![Mode::Flood, Mode::Lazy],
    };
    let mut reports = Vec::new();
    for m in modes {
        reports.push(sim::run(&args.config(m)?));
    }
    if json {
        if reports.len() == 1 {
            println!("{}", serde_json::to_string(&reports[0])?);
        } else {
            println!("{}", serde_json::to_string(&reports)?);
        }
    } else {
        print_table(&reports);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(reports: &[Report]) {
    if let Some(r) = reports.first() {
        println!(
            "{} nodes, degree {}, {} packets, loss {} %, {} crashed{}, seed {}",
            r.nodes,
            r.degree,
            r.packets,
            r.loss_pct,
            r.crashed,
            if r.partition {
                ", partition healed"
            } else {
                ""
            },
            r.seed
        );
    }
    println!(
        "{:<6} {:>10} {:>11} {:>5} {:>9} {:>9} {:>9} {:>12} {:>8} {:>8}",
        "mode",
        "delivered",
        "dups/deliv",
        "hops",
        "p50 ms",
        "p99 ms",
        "max ms",
        "bytes/node",
        "grafts",
        "reconn"
    );
    for r in reports {
        println!(
            "{:<6} {:>9.4}% {:>11.3} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>12} {:>8} {:>8}",
            r.broadcast.to_string(),
            r.delivered_ratio * 100.0,
            r.duplicates_per_delivery,
            r.hops_p99,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.latency_max_ms,
            r.bytes_per_node,
            r.grafts,
            r.reconnects
        );
    }
}

fn print_detect(r: &DetectReport) {
    println!(
        "{} members, degree {}, loss {} %, {} s, heartbeat {} ms, suspect {} ms, fail {} ms, seed {}",
        r.nodes, r.degree, r.loss_pct, r.secs, r.heartbeat_ms, r.suspect_ms, r.fail_ms, r.seed
    );
    println!(
        "crashed {}: {} watchers noticed (missed {}), time to failed p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        r.crashed, r.detections, r.missed, r.detect_p50_ms, r.detect_p99_ms, r.detect_max_ms
    );
    println!(
        "live members: {} suspicions, {} false failures; heartbeats {} sent, {} lost",
        r.false_suspicions, r.false_failures, r.heartbeats_sent, r.heartbeats_lost
    );
    if r.restarted > 0 {
        println!(
            "restarted {}: {} watchers still saw one failed at the end",
            r.restarted, r.rejoin_missing
        );
    }
    if r.slow > 0 {
        println!(
            "slow {} ({} stalls): suspected {} times while stalled; they suspected others {} times",
            r.slow, r.stalls, r.suspicions_of_slow, r.suspicions_by_slow
        );
    }
}
