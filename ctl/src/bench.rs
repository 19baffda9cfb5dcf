//! `echomeshctl bench`: start N `echomesh-node` processes over real QUIC on 127.0.0.1 (ring
//! plus chords), flood M packets of S bytes from node 0 through a client session, and measure
//! what the subscribers on every other node receive. The figures are those of the binary
//! operators run.

use std::process::ExitCode;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::wire::{ClientEvent, SubscribeFilter};
use serde::Serialize;

use crate::local_mesh::{node_binary, LocalMesh};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// `ozone`: the offline-mailbox benchmark instead of the flood benchmark.
    #[command(subcommand)]
    what: Option<BenchWhat>,
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Packets to flood from node 0.
    #[arg(long, default_value_t = 10_000)]
    packets: u64,
    /// Payload size in bytes (at least 16).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Offered rate in packets/s (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How the nodes forward: flood or lazy (echo.broadcast).
    #[arg(long, default_value_t = echomesh_proto::broadcast::Mode::Flood)]
    broadcast: echomesh_proto::broadcast::Mode,
    /// Give up waiting for deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 10)]
    idle_timeout: u64,
    /// The `echomesh-node` binary to run (default: the one next to `echomeshctl`).
    #[arg(long, global = true, value_name = "PATH")]
    pub node_bin: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// Replicated ozone deposits (acknowledged after W durable copies) and fetches.
    Ozone(crate::bench_ozone::OzoneBenchArgs),
    /// SmokeStack services: the per-frame storage-tag search, storing ozone copies, and a
    /// retrieval releasing them.
    Smoke(crate::bench_smoke::SmokeBenchArgs),
    /// Hold N subscribed client sessions to a running node from this one process (for
    /// measuring the node's memory with many clients: scripts/measure-footprint).
    Clients(crate::bench_clients::ClientsBenchArgs),
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub nodes: usize,
    pub broadcast: echomesh_proto::broadcast::Mode,
    pub packets: u64,
    pub size: usize,
    pub links: usize,
    pub expected: u64,
    pub delivered: u64,
    pub duplicates_delivered: u64,
    /// Duplicate receptions dropped by the mesh per delivered packet.
    pub duplicates_per_delivery: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Packets delivered per second per receiving node.
    pub delivered_per_sec: f64,
    pub offered_per_sec: f64,
    pub seconds: f64,
    pub drops: u64,
    /// Drops summed over the nodes, by reason (`echomesh_packets_dropped_total`).
    pub drops_by_reason: std::collections::BTreeMap<String, u64>,
    /// CPU per injected packet, from the first injection to the last delivery: all nodes
    /// together (each packet crosses all of them) and the bench's clients.
    pub cpu_per_packet: crate::local_mesh::CpuCost,
}

/// Ring plus chords: i–(i+1) for all i, and i–(i+N/2) for i < N/2. Degree 2–3, cycles of
/// several lengths, so duplicates arise as they do in real meshes.
pub fn topology(n: usize) -> Vec<(usize, usize)> {
    let mut edges = std::collections::BTreeSet::new();
    if n < 2 {
        return Vec::new();
    }
    let mut add = |i: usize, j: usize| {
        if i != j {
            edges.insert((i.min(j), i.max(j)));
        }
    };
    for i in 0..n {
        add(i, (i + 1) % n);
    }
    for i in 0..n / 2 {
        add(i, i + n / 2);
    }
    edges.into_iter().collect()
}

pub async fn run(a: BenchArgs, json: bool) -> anyhow::Result<ExitCode> {
    match &a.what {
        Some(BenchWhat::Ozone(o)) => {
            return crate::bench_ozone::run(o, a.node_bin.as_deref(), json).await
        }
        Some(BenchWhat::Smoke(s)) => {
            return crate::bench_smoke::run(s, a.node_bin.as_deref(), json).await
        }
        Some(BenchWhat::Clients(c)) => return crate::bench_clients::run(c).await,
        None => {}
    }
    if a.nodes < 2 || a.nodes > 64 {
        bail!("--nodes must be between 2 and 64");
    }
    if a.size < 16 {
        bail!("--size must be at least 16 (sequence number and timestamp)");
    }
    let report = bench(&a).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "nodes {}  links {}  packets {} x {} B  broadcast {}",
            report.nodes, report.links, report.packets, report.size, report.broadcast
        );
        println!(
            "delivered {}/{} ({:.2}%)  duplicates delivered {}",
            report.delivered,
            report.expected,
            100.0 * report.delivered as f64 / report.expected.max(1) as f64,
            report.duplicates_delivered
        );
        println!(
            "latency p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            report.p50_ms, report.p99_ms, report.max_ms
        );
        println!("throughput {:.0} packets/s delivered per node (offered {:.0}/s), {:.2} duplicate receptions per delivery",
            report.delivered_per_sec, report.offered_per_sec, report.duplicates_per_delivery);
        let reasons: Vec<String> = report
            .drops_by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        println!(
            "drops {}{}  time {:.2} s",
            report.drops,
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            report.seconds
        );
        let c = &report.cpu_per_packet;
        println!(
            "CPU per packet: nodes {:.1} µs + clients {:.1} µs ({:.2} cores busy)",
            c.nodes_us, c.client_us, c.cores_busy
        );
    }
    Ok(
        if report.delivered == report.expected && report.duplicates_delivered == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

async fn bench(a: &BenchArgs) -> anyhow::Result<BenchReport> {
    let bin = node_binary(a.node_bin.as_deref())?;
    let edges = topology(a.nodes);
    let extra = ["--broadcast".to_string(), a.broadcast.to_string()];
    let mesh = LocalMesh::start_with(&bin, a.nodes, &edges, &extra).await?;
    let nodes = &mesh.nodes;
    let endpoint =
        echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().expect("static addr"))?;
    let agent = "echomeshctl-bench";
    let mut receivers = Vec::new();
    let start = Instant::now();
    for n in nodes.iter().skip(1) {
        let mut s = echomesh_client::connect(&endpoint, n.quic_addr(), Some(n.id), agent).await?;
        s.subscribe(SubscribeFilter::All).await?;
        receivers.push(s);
    }
    let m = a.packets;
    let mut tasks = Vec::new();
    for s in receivers {
        let idle = Duration::from_secs(a.idle_timeout);
        tasks.push(tokio::spawn(
            async move { receive(s, m, start, idle).await },
        ));
    }

    let sender =
        echomesh_client::connect(&endpoint, nodes[0].quic_addr(), Some(nodes[0].id), agent).await?;
    let (_conn, mut w, mut r) = sender.split();
    let size = a.size;
    let rate = a.rate;
    let cpu_before = mesh.cpu()?;
    let send_started = Instant::now();
    let batch_size: u64 = if rate > 0 {
        (rate / 1000).clamp(1, 256)
    } else {
        256
    };
    let acks = tokio::spawn(async move {
        while let Ok(Some(ev)) = r.next_event().await {
            if let ClientEvent::Error { message, .. } = ev {
                eprintln!("bench: node refused injection: {message}");
            }
        }
    });
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(batch_size as usize);
    let filler: Vec<u8> = (0..size).map(|i| i as u8).collect();
    while seq < m {
        if rate > 0 {
            let due = send_started + Duration::from_secs_f64(seq as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        batch.clear();
        let nonce: u32 = rand::random();
        for _ in 0..batch_size.min(m - seq) {
            let mut p = filler.clone();
            p[..8].copy_from_slice(&seq.to_be_bytes());
            let ts = start.elapsed().as_nanos() as u64;
            p[8..16].copy_from_slice(&ts.to_be_bytes());
            if size >= 20 {
                p[16..20].copy_from_slice(&nonce.to_be_bytes());
            }
            batch.push(EchoPacket::new(Bytes::from(p), 16, None));
            seq += 1;
        }
        w.inject(&batch).await?;
    }
    let offered = m as f64 / send_started.elapsed().as_secs_f64().max(1e-9);

    let mut latencies = Vec::with_capacity((m as usize) * (a.nodes - 1));
    let mut delivered = 0u64;
    let mut dups = 0u64;
    let mut last = send_started;
    for t in tasks {
        let r = t.await.context("receiver task")??;
        delivered += r.delivered;
        dups += r.duplicates;
        latencies.extend(r.latencies_ns);
        if r.last > last {
            last = r.last;
        }
    }
    acks.abort();
    let cpu_per_packet = mesh.cpu()?.since(&cpu_before, m);
    let seconds = last.duration_since(send_started).as_secs_f64().max(1e-9);
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i] as f64 / 1e6
    };
    let dup_dropped = mesh.metric_sum("echomesh_duplicates_dropped_total").await? as u64;
    let drops = mesh.metric_sum("echomesh_packets_dropped_total").await? as u64;
    let drops_by_reason = mesh
        .metric_by("echomesh_packets_dropped_total", "reason")
        .await?;
    let report = BenchReport {
        nodes: a.nodes,
        broadcast: a.broadcast,
        packets: m,
        size: a.size,
        links: edges.len(),
        expected: m * (a.nodes as u64 - 1),
        delivered,
        duplicates_delivered: dups,
        duplicates_per_delivery: dup_dropped as f64 / delivered.max(1) as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map(|l| *l as f64 / 1e6).unwrap_or(0.0),
        delivered_per_sec: delivered as f64 / (a.nodes as f64 - 1.0) / seconds,
        offered_per_sec: offered,
        seconds,
        drops,
        drops_by_reason,
        cpu_per_packet,
    };
    drop(mesh);
    Ok(report)
}

struct Received {
    delivered: u64,
    duplicates: u64,
    latencies_ns: Vec<u64>,
    last: Instant,
}

async fn receive(
    s: echomesh_client::ClientSession,
    m: u64,
    start: Instant,
    idle: Duration,
) -> anyhow::Result<Received> {
    let (_conn, _w, mut r) = s.split();
    let mut seen = vec![false; m as usize];
    let mut out = Received {
        delivered: 0,
        duplicates: 0,
        latencies_ns: Vec::with_capacity(m as usize),
        last: Instant::now(),
    };
    while out.delivered < m {
        let ev = match tokio::time::timeout(idle, r.next_event()).await {
            Ok(ev) => ev?,
            Err(_) => break,
        };
        match ev {
            Some(ClientEvent::Deliver(batch)) => {
                let now = start.elapsed().as_nanos() as u64;
                for p in batch {
                    if p.payload.len() < 16 {
                        continue;
                    }
                    let seq = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or_default());
                    let ts = u64::from_be_bytes(p.payload[8..16].try_into().unwrap_or_default());
                    let Some(slot) = seen.get_mut(seq as usize) else {
                        continue;
                    };
                    if *slot {
                        out.duplicates += 1;
                        continue;
                    }
                    *slot = true;
                    out.delivered += 1;
                    out.latencies_ns.push(now.saturating_sub(ts));
                }
                out.last = Instant::now();
            }
            Some(ClientEvent::Lagged { dropped }) => {
                eprintln!("bench: a receiver lagged and lost {dropped} packets")
            }
            Some(_) => {}
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn topology_is_connected_ring_plus_chords() {
        let e = super::topology(5);
        assert_eq!(
            e,
            vec![(0, 1), (0, 2), (0, 4), (1, 2), (1, 3), (2, 3), (3, 4)]
        );
        assert_eq!(super::topology(2), vec![(0, 1)]);
    }
}
