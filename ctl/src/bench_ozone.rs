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
    /// Messages deposited in total.
    #[arg(long, default_value_t = 2_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent depositing clients, each with its own ozone.
    #[arg(long, default_value_t = 4)]
    clients: u64,
}

#[derive(Debug, Serialize)]
pub struct OzoneBenchReport {
    pub nodes: usize,
    pub messages: u64,
    pub size: usize,
    pub clients: u64,
    pub replicas: usize,
    pub write_quorum: usize,
    /// Deposits acknowledged as durable (W copies) per second, all clients together.
    pub deposits_per_sec: f64,
    pub deposit_p50_ms: f64,
    pub deposit_p99_ms: f64,
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

pub async fn run(
    a: &OzoneBenchArgs,
    node_bin: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if a.nodes < 2 || a.nodes > 16 {
        bail!("--nodes must be between 2 and 16");
    }
    if a.clients == 0 || a.messages < a.clients {
        bail!("need at least one message per client");
    }
    let bin = crate::local_mesh::node_binary(node_bin)?;
    let mut edges = Vec::new();
    for i in 0..a.nodes {
        for j in i + 1..a.nodes {
            edges.push((i, j));
        }
    }
    let mesh = crate::local_mesh::LocalMesh::start(&bin, a.nodes, &edges).await?;
    let nodes = &mesh.nodes;
    let (replicas, write_quorum) = (
        crate::local_mesh::BENCH_REPLICAS.min(a.nodes),
        crate::local_mesh::BENCH_WRITE_QUORUM.min(a.nodes),
    );
    let endpoint = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse()?)?;
    let per_client = a.messages / a.clients;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..a.clients {
        let s = echomesh_client::connect(
            &endpoint,
            nodes[0].quic_addr(),
            Some(nodes[0].id),
            "bench-ozone",
        );
        let mut s = s.await?;
        let size = a.size;
        tasks.spawn(async move {
            let addr = OzoneProof::from_secret(format!("bench-{c}").as_bytes()).address();
            let mut lat = Vec::with_capacity(per_client as usize);
            for i in 0..per_client {
                let mut v = vec![0u8; size.max(16)];
                v[..8].copy_from_slice(&c.to_be_bytes());
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
    for c in 0..a.clients {
        let proof = OzoneProof::from_secret(format!("bench-{c}").as_bytes());
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
    let report = OzoneBenchReport {
        nodes: a.nodes,
        messages: per_client * a.clients,
        size: a.size,
        clients: a.clients,
        replicas,
        write_quorum,
        deposits_per_sec: lat.len() as f64 / deposit_secs.max(1e-9),
        deposit_p50_ms: percentile(&lat, 0.5),
        deposit_p99_ms: percentile(&lat, 0.99),
        fetched,
        fetch_messages_per_sec: fetched as f64 / fetch_secs,
        fetch_mib_per_sec: bytes as f64 / fetch_secs / 1048576.0,
    };
    drop(mesh);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
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
            "deposits {:.0}/s acknowledged durable; latency p50 {:.2} ms p99 {:.2} ms",
            report.deposits_per_sec, report.deposit_p50_ms, report.deposit_p99_ms
        );
        println!(
            "fetch {} messages: {:.0} messages/s, {:.1} MiB/s",
            report.fetched, report.fetch_messages_per_sec, report.fetch_mib_per_sec
        );
    }
    Ok(if report.fetched == report.messages {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "echomeshctl: fetched {} of {} deposits",
            report.fetched, report.messages
        );
        ExitCode::FAILURE
    })
}
