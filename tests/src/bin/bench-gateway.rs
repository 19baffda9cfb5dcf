//! Gateway benchmark (`scripts/bench-gateway`): messages/s and latency from `POST
//! /v1/messages` to the delivered webhook. Three release nodes, one gateway with two
//! identities (`sender` → `receiver`, so every message makes the whole trip: seal, deposit on
//! the write quorum, mailbox notice, fetch, open, inbox write, acknowledgement, signed
//! webhook), and an in-process HTTP receiver. `--rate R` paces the senders at R messages/s
//! (default: as fast as `--concurrency` senders go). Prints one line per round and the medians.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use echomesh_tests::cluster_of_three;
use echomesh_tests::gateway::{client, TestGateway};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Arrival time per message text.
type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

/// A minimal HTTP/1.1 receiver: answers 204 to every POST (keep-alive), notes each text.
fn receiver(arrivals: Arrivals) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let arrivals = arrivals.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            first = false;
                            continue;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let now = Instant::now();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                        if let Some(t) = v["text"].as_str() {
                            arrivals.lock().unwrap().push((t.to_string(), now));
                        }
                    }
                    if w.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let messages = arg("--messages", 300);
    let rounds = arg("--rounds", 3);
    let concurrency = arg("--concurrency", 8);
    // Offered messages per second (0: as fast as the senders go).
    let rate = arg("--rate", 0);
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = cluster_of_three(root.path(), &[]);
    let spec = nodes[0].lock().unwrap().spec();
    let arrivals: Arrivals = Arc::default();
    let port = receiver(arrivals.clone());
    let secret = root.path().join("secret");
    std::fs::write(&secret, "bench-secret").expect("secret");
    let cfg = root.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[limits]\ntoken_rate = 100000.0\ntoken_burst = 100000.0\n",
    )
    .expect("cfg");
    let gw = TestGateway::start(
        &root.path().join("gateway"),
        &[
            "--config".into(),
            cfg.to_str().unwrap().into(),
            "--node".into(),
            spec,
            "--identity".into(),
            "sender".into(),
            "--identity".into(),
            "receiver".into(),
            "--webhook".into(),
            format!("http://127.0.0.1:{port}/hook"),
            "--webhook-secret-file".into(),
            secret.to_str().unwrap().into(),
        ],
    );
    let to = gw.identity_id("receiver");
    // Wait until the directory knows the receiver (the gateway published it at start).
    let warm = serde_json::json!({"from": "sender", "to": [to], "text": "warm-up"}).to_string();
    echomesh_tests::wait_for(Duration::from_secs(30), "warm-up message", || {
        let (s, _, _) = gw.post_json(&gw.token, "/v1/messages", &warm);
        (s == 202).then_some(())
    });
    echomesh_tests::wait_for(Duration::from_secs(30), "warm-up delivery", || {
        arrivals
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _)| t == "warm-up")
            .then_some(())
    });
    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for round in 0..rounds {
        arrivals.lock().unwrap().clear();
        let sent: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let start = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..concurrency)
            .map(|_| {
                let (next, sent, url, token, to) = (
                    next.clone(),
                    sent.clone(),
                    gw.url("/v1/messages"),
                    gw.token.clone(),
                    to.clone(),
                );
                std::thread::spawn(move || {
                    let c = client();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= messages {
                            return;
                        }
                        if rate > 0 {
                            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                        let text = format!("r{round}-m{i}");
                        let body = serde_json::json!({"from": "sender", "to": [to], "text": text})
                            .to_string();
                        let t0 = Instant::now();
                        let r = c
                            .post(&url)
                            .bearer_auth(&token)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .expect("POST");
                        assert_eq!(r.status().as_u16(), 202);
                        sent.lock().unwrap().push((text, t0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("sender");
        }
        let accepted_in = start.elapsed();
        echomesh_tests::wait_for(
            Duration::from_secs(600),
            "every message at the webhook",
            || (arrivals.lock().unwrap().len() >= messages).then_some(()),
        );
        let arr = arrivals.lock().unwrap().clone();
        let last = arr.iter().map(|(_, t)| *t).max().expect("arrivals");
        let total = last.duration_since(start).as_secs_f64();
        let sent = sent.lock().unwrap().clone();
        let mut lat: Vec<f64> = sent
            .iter()
            .filter_map(|(text, t0)| {
                arr.iter()
                    .find(|(t, _)| t == text)
                    .map(|(_, a)| a.duration_since(*t0).as_secs_f64() * 1000.0)
            })
            .collect();
        assert_eq!(lat.len(), messages, "every message delivered");
        let got = messages as f64 / total;
        let offered = if rate > 0 {
            rate.to_string()
        } else {
            "max".into()
        };
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        println!(
            "round {round}: {messages} messages offered at {offered}/s, accepted in {:.2} s, delivered in {total:.2} s: {got:.1} msg/s, POST→webhook p50 {p50:.0} ms p99 {p99:.0} ms",
            accepted_in.as_secs_f64()
        );
        println!(
            "{}",
            serde_json::json!({"round": round, "messages": messages, "concurrency": concurrency, "offered_per_s": offered, "msgs_per_s": got, "p50_ms": p50, "p99_ms": p99})
        );
        rates.push(got);
        p50s.push(p50);
        p99s.push(p99);
    }
    if std::env::var_os("BENCH_GATEWAY_LOG").is_some() {
        eprintln!("--- gateway log ---\n{}", gw.log_tail());
    }
    println!(
        "median of {rounds} rounds: {:.1} msg/s, p50 {:.0} ms, p99 {:.0} ms",
        pct(&mut rates, 0.5),
        pct(&mut p50s, 0.5),
        pct(&mut p99s, 0.5)
    );
}
