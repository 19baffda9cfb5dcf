//! Echo bridge benchmark (`scripts/bench-bridge`): frames/s and latency from a Spot-On-Lite
//! client on SOL1 to one on SOL2, (a) through two echomesh nodes (SOL1 — A — B — SOL2, the
//! nodes dialing the daemons) and (b) with SOL2 linked to SOL1 directly, in the same run,
//! alternating, at several offered rates. Prints a table and one JSON object per line.

use std::time::{Duration, Instant};

use echomesh_tests::echo::{
    free_tcp_port, label_of, smoke_frame, EchoClient, EchoTls, Sol, SolConfig,
};
use echomesh_tests::{Plan, TestNode};

struct Path {
    name: &'static str,
    from: EchoClient,
    to: EchoClient,
}

#[derive(Debug, Default)]
struct Outcome {
    sent: usize,
    delivered: usize,
    duplicates: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `--plain`: plain TCP everywhere (daemons, clients, echomesh's links) instead of TLS.
static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn plain() -> bool {
    PLAIN.get().copied().unwrap_or(false)
}

fn sol(root: &std::path::Path, name: &str, listen: u16, peer: Option<u16>) -> Sol {
    Sol::start(
        &root.join(name),
        &SolConfig {
            listeners: vec![listen],
            peers: peer
                .map(|p| vec![format!("127.0.0.1:{p}").parse().expect("addr")])
                .unwrap_or_default(),
            congestion_lifetime: 30,
            silence: 90,
            plain: plain(),
        },
    )
}

async fn connect(sol: &Sol) -> EchoClient {
    let tls = if plain() {
        EchoTls::Plain
    } else {
        EchoTls::Any
    };
    EchoClient::connect_unfiltered(sol.listeners[0], tls)
        .await
        .expect("connect to Spot-On-Lite")
}

/// Wait until a probe crosses the path.
async fn warm(p: &mut Path) {
    for k in 0..120 {
        p.from.send(&frame(
            &format!("probe-{k}"),
            Instant::now(),
            Instant::now(),
        ));
        if p.to.recv_data(Duration::from_millis(500)).await.is_some() {
            p.to.drain_data(Duration::from_secs(2)).await;
            return;
        }
    }
    panic!("no path for {}", p.name);
}

fn frame(label: &str, t0: Instant, now: Instant) -> Vec<u8> {
    // label \0 send time (µs since t0) and padding: about a Smoke chat message's size.
    let mut data = label.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(&(now - t0).as_micros().to_be_bytes());
    data.extend_from_slice(&rand::random::<[u8; 32]>());
    data.extend(std::iter::repeat_n(0x5a, 600));
    smoke_frame(&data)
}

async fn run(p: &mut Path, rate: u32, count: usize, t0: Instant, round: usize) -> Outcome {
    let tag = format!("{}-{rate}-{round}", p.name);
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    let mut last = start;
    let mut next = tokio::time::Instant::now();
    let mut sent = 0;
    let record = |f: &[u8],
                  latencies: &mut Vec<f64>,
                  seen: &mut std::collections::HashSet<String>,
                  dups: &mut usize,
                  last: &mut Instant| {
        let Some(l) = label_of(f) else { return };
        if !l.starts_with(&tag) {
            return;
        }
        if !seen.insert(l.clone()) {
            *dups += 1;
            return;
        }
        let raw = base64_payload(f);
        let at = raw.iter().position(|&b| b == 0).map(|i| i + 1).unwrap_or(0);
        if let Ok(us) = <[u8; 16]>::try_from(&raw[at..at + 16]) {
            let sent_at = t0 + Duration::from_micros(u128::from_be_bytes(us) as u64);
            latencies.push(Instant::now().duration_since(sent_at).as_secs_f64() * 1000.0);
        }
        *last = Instant::now();
    };
    while sent < count {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                p.from.send(&frame(&format!("{tag}-{sent}"), t0, Instant::now()));
                sent += 1;
                next += gap;
            }
            f = p.to.recv_data(Duration::from_secs(3600)) => {
                if let Some(f) = f { record(&f, &mut latencies, &mut seen, &mut duplicates, &mut last); }
            }
        }
    }
    while let Some(f) = p.to.recv_data(Duration::from_secs(3)).await {
        record(&f, &mut latencies, &mut seen, &mut duplicates, &mut last);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| {
        if latencies.is_empty() {
            f64::NAN
        } else {
            latencies[((latencies.len() - 1) as f64 * q).round() as usize]
        }
    };
    Outcome {
        sent: count,
        delivered: seen.len(),
        duplicates,
        secs: last.duration_since(start).as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

fn base64_payload(f: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    match echomesh_proto::bridge::frame::classify(f) {
        Ok(echomesh_proto::bridge::Frame::Data { content }) => {
            base64::engine::general_purpose::STANDARD
                .decode(content.trim_ascii())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = arg(&args, "--frames").unwrap_or(2000);
    let _ = PLAIN.set(args.iter().any(|a| a == "--plain"));
    let rounds: usize = arg(&args, "--rounds").unwrap_or(3);
    let rates: Vec<u32> = args
        .iter()
        .position(|a| a == "--rates")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![200, 500, 1000]);
    let tmp = tempfile::tempdir().expect("tmp");
    // --keep leaves the daemons' and nodes' directories (logs) for a look afterwards.
    let root = &if args.iter().any(|a| a == "--keep") {
        let kept = tmp.keep();
        eprintln!("bench-bridge: keeping {}", kept.display());
        kept
    } else {
        tmp.path().to_path_buf()
    };
    let ports: Vec<u16> = (0..4).map(|_| free_tcp_port()).collect();
    // Direct: SOL2 dials SOL1. Bridged: A dials SOL3, B dials SOL4, A and B are neighbors.
    let sol1 = sol(root, "sol1", ports[0], None);
    let sol2 = sol(root, "sol2", ports[1], Some(ports[0]));
    let sol3 = sol(root, "sol3", ports[2], None);
    let sol4 = sol(root, "sol4", ports[3], None);
    let plan = Plan::new(root, &["a", "b"]);
    let cfg = |name: &str, port: u16| {
        let p = root.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "[bridge]\nneighbors = [\"echo+{}://127.0.0.1:{port}\"]\n",
                if plain() { "tcp" } else { "tls" }
            ),
        )
        .expect("config");
        let mut f = vec!["--config".to_string(), p.display().to_string()];
        f.extend(Plan::neighbor_flags(&[plan.spec(if name == "a" {
            1
        } else {
            0
        })]));
        f
    };
    let a = plan.start(0, &cfg("a", ports[2]));
    let b = plan.start(1, &cfg("b", ports[3]));
    a.wait_neighbor_up(&b);
    let mut direct = Path {
        name: "direct",
        from: connect(&sol1).await,
        to: connect(&sol2).await,
    };
    let mut bridged = Path {
        name: "bridged",
        from: connect(&sol3).await,
        to: connect(&sol4).await,
    };
    warm(&mut direct).await;
    warm(&mut bridged).await;
    let t0 = Instant::now();
    println!(
        "{:<8} {:>6} {:>5} {:>9} {:>5} {:>10} {:>8} {:>8} {:>6} {:>6} {:>6}",
        "path",
        "rate",
        "round",
        "delivered",
        "dups",
        "frames/s",
        "p50 ms",
        "p99 ms",
        "A in",
        "B out",
        "drops"
    );
    // What echomesh itself took in from SOL3 and wrote to SOL4, and dropped, per bridged run:
    // where a loss happened (keep-alives are not counted as frames).
    let counters = || {
        (
            a.metric("echomesh_bridge_frames_total{direction=\"in\"}"),
            b.metric("echomesh_bridge_frames_total{direction=\"out\"}"),
            a.metric("echomesh_bridge_dropped_total")
                + b.metric("echomesh_bridge_dropped_total")
                + a.metric("echomesh_packets_dropped_total")
                + b.metric("echomesh_packets_dropped_total"),
        )
    };
    for &rate in &rates {
        for round in 0..rounds {
            for p in [&mut direct, &mut bridged] {
                let before = counters();
                let o = run(p, rate, count, t0, round).await;
                let after = counters();
                let fps = o.delivered as f64 / o.secs.max(1e-9);
                let mesh = (p.name == "bridged").then_some((
                    after.0 - before.0,
                    after.1 - before.1,
                    after.2 - before.2,
                ));
                let col = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
                println!(
                    "{:<8} {:>6} {:>5} {:>5}/{:<4} {:>4} {:>10.0} {:>8.1} {:>8.1} {:>6} {:>6} {:>6}",
                    p.name, rate, round, o.delivered, o.sent, o.duplicates, fps, o.p50_ms, o.p99_ms,
                    col(mesh.map(|m| m.0)), col(mesh.map(|m| m.1)), col(mesh.map(|m| m.2))
                );
                eprintln!(
                    "{}",
                    serde_json::json!({"path": p.name, "offered_per_sec": rate, "round": round, "sent": o.sent,
                        "delivered": o.delivered, "duplicates": o.duplicates, "delivered_per_sec": fps,
                        "p50_ms": o.p50_ms, "p99_ms": o.p99_ms,
                        "echomesh_in": mesh.map(|m| m.0), "echomesh_out": mesh.map(|m| m.1),
                        "echomesh_dropped": mesh.map(|m| m.2)})
                );
            }
        }
    }
    let _keep = (&sol1, &sol2, &sol3, &sol4);
    drop::<TestNode>(a);
    drop::<TestNode>(b);
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}
