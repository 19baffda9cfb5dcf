//! `echomeshctl bench ozone`: N `echomesh-node` processes in one cluster (full mesh, real QUIC, real
//! RocksDB with synced writes), C clients depositing M messages of S bytes through node 0 —
//! each acknowledged only after W durable copies — then every ozone fetched back through node
//! 1 (merged from the replicas).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;
use echomesh_proto::ozone::OzoneProof;
use echomesh_proto::wire::{MsgId, Position};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct OzoneBenchArgs {
    /// Cluster members (all linked to each other).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Messages deposited in total (at each point of a `--clients` sweep).
    #[arg(long, default_value_t = 2_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent depositing clients, each with its own ozone and one deposit in flight. A
    /// list (`1,4,16`) sweeps: each point runs on the same cluster, with fresh ozones.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    clients: Vec<u64>,
    /// Copies of each ozone (`ozone.replicas`; at most --nodes).
    #[arg(long, default_value_t = crate::local_mesh::BENCH_REPLICAS)]
    replicas: usize,
    /// Copies synced before a deposit is acknowledged (`ozone.write_quorum`; at most
    /// --replicas).
    #[arg(long, default_value_t = crate::local_mesh::BENCH_WRITE_QUORUM)]
    write_quorum: usize,
}

/// The per-ozone message quota the bench gives its nodes (`ozone.max_messages_per_ozone`, the
/// shipped default): one client's deposits must fit in its ozone.
const BENCH_OZONE_QUOTA: u64 = 10_000;

/// Upper bounds (ms) of the deposit-latency histogram's buckets; the last one is open.
pub const LATENCY_BUCKETS_MS: [f64; 9] =
    [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, f64::INFINITY];

#[derive(Debug, Serialize)]
pub struct OzoneBenchReport {
    pub nodes: usize,
    pub messages: u64,
    pub size: usize,
    pub clients: u64,
    /// Ozone replication as the nodes report it (`OzoneInfo`).
    pub replicas: usize,
    pub write_quorum: usize,
    /// Deposits acknowledged as durable (W copies) per second, all clients together.
    pub deposits_per_sec: f64,
    pub deposit_p50_ms: f64,
    pub deposit_p99_ms: f64,
    pub deposit_max_ms: f64,
    /// Deposits per latency bucket: `[upper bound in ms (null: open), count]`, from
    /// [`LATENCY_BUCKETS_MS`].
    pub deposit_latency_histogram: Vec<(Option<f64>, u64)>,
    /// CPU per acknowledged deposit while depositing (nodes and the bench's clients).
    pub deposit_cpu: crate::local_mesh::CpuCost,
    pub fetched: u64,
    pub fetch_messages_per_sec: f64,
    pub fetch_mib_per_sec: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn histogram(sorted: &[f64]) -> Vec<(Option<f64>, u64)> {
    let mut out = Vec::with_capacity(LATENCY_BUCKETS_MS.len());
    let mut below = 0usize;
    for upper in LATENCY_BUCKETS_MS {
        let upto = sorted.partition_point(|l| *l <= upper);
        out.push((upper.is_finite().then_some(upper), (upto - below) as u64));
        below = upto;
    }
    out
}

pub async fn run(
    a: &OzoneBenchArgs,
    node_bin: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if a.nodes < 2 || a.nodes > 16 {
        bail!("--nodes must be between 2 and 16");
    }
    if a.clients.is_empty() || a.clients.iter().any(|c| *c == 0 || a.messages < *c) {
        bail!("--clients: each point needs at least one client and one message per client");
    }
    if let Some(c) = a
        .clients
        .iter()
        .find(|c| a.messages / **c > BENCH_OZONE_QUOTA)
    {
        bail!(
            "--messages {} with {c} client(s) puts {} messages in one ozone; the nodes' \
             per-ozone quota is {BENCH_OZONE_QUOTA}: use fewer messages or more clients",
            a.messages,
            a.messages / c
        );
    }
    if a.write_quorum == 0 || a.write_quorum > a.replicas || a.replicas > a.nodes {
        bail!(
            "need 1 ≤ --write-quorum ({}) ≤ --replicas ({}) ≤ --nodes ({})",
            a.write_quorum,
            a.replicas,
            a.nodes
        );
    }
    let bin = crate::local_mesh::node_binary(node_bin)?;
    let mut edges = Vec::new();
    for i in 0..a.nodes {
        for j in i + 1..a.nodes {
            edges.push((i, j));
        }
    }
    let ozone = crate::local_mesh::ozone_config(a.replicas, a.write_quorum, BENCH_OZONE_QUOTA);
    let mesh = crate::local_mesh::LocalMesh::start_configured(&bin, a.nodes, &edges, &[], |_| {
        ozone.clone()
    })
    .await?;
    let mut reports = Vec::new();
    for (point, clients) in a.clients.iter().enumerate() {
        let report = run_point(a, &mesh, point, *clients).await?;
        if !json {
            print_report(&report);
        }
        reports.push(report);
    }
    drop(mesh);
    if json {
        if let [one] = reports.as_slice() {
            println!("{}", serde_json::to_string_pretty(one)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
    }
    let mut code = ExitCode::SUCCESS;
    for r in &reports {
        if r.fetched != r.messages {
            eprintln!(
                "echomeshctl: {} clients: fetched {} of {} deposits",
                r.clients, r.fetched, r.messages
            );
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

/// One point: `clients` clients deposit through node 0, then every ozone is read back
/// through node 1.
async fn run_point(
    a: &OzoneBenchArgs,
    mesh: &crate::local_mesh::LocalMesh,
    point: usize,
    clients: u64,
) -> anyhow::Result<OzoneBenchReport> {
    let nodes = &mesh.nodes;
    let endpoint = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse()?)?;
    let per_client = a.messages / clients;
    let secret = move |c: u64| format!("bench-{point}-{c}");

    let cpu_before = mesh.cpu()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let s = echomesh_client::connect(
            &endpoint,
            nodes[0].quic_addr(),
            Some(nodes[0].id),
            "bench-ozone",
        );
        let mut s = s.await?;
        let size = a.size;
        tasks.spawn(async move {
            let addr = OzoneProof::from_secret(secret(c).as_bytes()).address();
            let mut lat = Vec::with_capacity(per_client as usize);
            for i in 0..per_client {
                let mut v = vec![0u8; size.max(16)];
                // Unique across the points of a sweep too.
                v[..8].copy_from_slice(&(c | (point as u64) << 48).to_be_bytes());
                v[8..16].copy_from_slice(&i.to_be_bytes());
                let t = Instant::now();
                s.deposit(addr, Bytes::from(v)).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let deposit_secs = started.elapsed().as_secs_f64();
    let deposit_cpu = mesh.cpu()?.since(&cpu_before, lat.len() as u64);
    lat.sort_by(f64::total_cmp);

    let mut reader = echomesh_client::connect(
        &endpoint,
        nodes[1].quic_addr(),
        Some(nodes[1].id),
        "bench-ozone",
    )
    .await?;
    let started = Instant::now();
    let mut fetched = 0u64;
    let mut bytes = 0u64;
    for c in 0..clients {
        let proof = OzoneProof::from_secret(secret(c).as_bytes());
        let mut after = None;
        loop {
            let (page, more) = reader.fetch(proof, after, 512).await?;
            let Some(last) = page.last() else { break };
            after = Some(Position {
                seq: last.seq,
                id: MsgId(last.id),
            });
            fetched += page.len() as u64;
            bytes += page.iter().map(|m| m.payload.len() as u64).sum::<u64>();
            if !more {
                break;
            }
        }
    }
    let fetch_secs = started.elapsed().as_secs_f64().max(1e-9);
    // The replication as the nodes apply it (not as asked).
    let info = reader
        .ozone_info(OzoneProof::from_secret(secret(0).as_bytes()))
        .await?;
    let (replicas, write_quorum) = (info.replicas as usize, info.write_quorum as usize);
    Ok(OzoneBenchReport {
        nodes: a.nodes,
        messages: per_client * clients,
        size: a.size,
        clients,
        replicas,
        write_quorum,
        deposits_per_sec: lat.len() as f64 / deposit_secs.max(1e-9),
        deposit_p50_ms: percentile(&lat, 0.5),
        deposit_p99_ms: percentile(&lat, 0.99),
        deposit_max_ms: lat.last().copied().unwrap_or(0.0),
        deposit_latency_histogram: histogram(&lat),
        deposit_cpu,
        fetched,
        fetch_messages_per_sec: fetched as f64 / fetch_secs,
        fetch_mib_per_sec: bytes as f64 / fetch_secs / 1048576.0,
    })
}

fn print_report(report: &OzoneBenchReport) {
    println!(
        "{} nodes, R={} W={}; {} deposits of {} B from {} clients",
        report.nodes,
        report.replicas,
        report.write_quorum,
        report.messages,
        report.size,
        report.clients
    );
    println!(
        "deposits {:.0}/s acknowledged durable; latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        report.deposits_per_sec,
        report.deposit_p50_ms,
        report.deposit_p99_ms,
        report.deposit_max_ms
    );
    let total = report.messages.max(1) as f64;
    let buckets: Vec<String> = report
        .deposit_latency_histogram
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(upper, n)| {
            let pct = 100.0 * *n as f64 / total;
            match upper {
                Some(u) => format!("≤{u} ms {pct:.1}%"),
                None => format!(
                    ">{} ms {pct:.1}%",
                    LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.len() - 2]
                ),
            }
        })
        .collect();
    println!("latency histogram: {}", buckets.join(", "));
    let c = &report.deposit_cpu;
    println!(
        "CPU per deposit: nodes {:.0} µs + clients {:.0} µs ({:.2} cores busy)",
        c.nodes_us, c.client_us, c.cores_busy
    );
    println!(
        "fetch {} messages: {:.0} messages/s, {:.1} MiB/s",
        report.fetched, report.fetch_messages_per_sec, report.fetch_mib_per_sec
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_counts_each_latency_once_in_its_bucket() {
        let lat = [0.1, 0.5, 0.6, 3.0, 10.0, 250.0];
        let h = super::histogram(&lat);
        assert_eq!(h.len(), super::LATENCY_BUCKETS_MS.len());
        assert_eq!(h[0], (Some(0.5), 2));
        assert_eq!(h[1], (Some(1.0), 1));
        assert_eq!(h[3], (Some(5.0), 1));
        assert_eq!(h[4], (Some(10.0), 1));
        assert_eq!(h[8], (None, 1));
        assert_eq!(h.iter().map(|(_, n)| n).sum::<u64>(), lat.len() as u64);
    }
}
