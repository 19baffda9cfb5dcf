//! The NATS side of `scripts/bench-nats`: the same fan-out as `echomeshctl bench` through a
//! cluster of `nats-server` processes on 127.0.0.1 (core pub/sub, plaintext routes, no
//! deduplication). Server 0 takes M messages of S bytes from one publisher; one subscriber on
//! each other server receives them. Prints the same figures as the echomesh bench: delivered
//! per subscriber per second (from the first publish to the last delivery), latency
//! percentiles, offered rate. A minimal client of the NATS text protocol (CONNECT, SUB, PUB,
//! MSG, PING/PONG) over std TCP, so that the client costs as little as echomesh's does.
//!
//!   bench-nats [--servers 5] [--messages 100000] [--size 128] [--rate 0] [--nats-server PATH]

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn num(name: &str, default: u64) -> u64 {
    arg(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a number"))
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Connect, say CONNECT, and wait for the server's PONG (so everything before is in effect).
fn connect(port: u16) -> (BufReader<TcpStream>, BufWriter<TcpStream>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("nats-server on {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.set_nodelay(true).expect("nodelay");
    let mut r = BufReader::with_capacity(1 << 20, s.try_clone().expect("clone"));
    let mut w = BufWriter::with_capacity(1 << 16, s);
    let mut line = String::new();
    r.read_line(&mut line).expect("INFO");
    assert!(line.starts_with("INFO"), "unexpected greeting {line:?}");
    w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .expect("CONNECT");
    (r, w)
}

fn ping(r: &mut BufReader<TcpStream>, w: &mut BufWriter<TcpStream>) {
    w.write_all(b"PING\r\n").expect("PING");
    w.flush().expect("flush");
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("PONG");
        if line.starts_with("PONG") {
            return;
        }
        assert!(!line.starts_with("-ERR"), "nats-server: {line}");
    }
}

fn main() {
    let servers = num("--servers", 5) as usize;
    let messages = num("--messages", 100_000);
    let size = num("--size", 128) as usize;
    let rate = num("--rate", 0);
    let bin = arg("--nats-server", "nats-server");
    assert!(servers >= 2 && size >= 16, "--servers ≥ 2, --size ≥ 16");

    let client_ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
    let route_ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
    let routes = route_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Servers(Vec::new());
    for i in 0..servers {
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &client_ports[i].to_string()])
            .args(["--cluster_name", "bench"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", route_ports[i])])
            .args(["--routes", &routes])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e} (apt-get install nats-server)"));
        procs.0.push(child);
    }

    let start = Instant::now();
    let received: Vec<Arc<AtomicU64>> = (1..servers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut subs = Vec::new();
    for (i, count) in (1..servers).zip(received.iter().cloned()) {
        let (mut r, mut w) = connect(client_ports[i]);
        w.write_all(b"SUB bench 1\r\nSUB probe 2\r\n").expect("SUB");
        ping(&mut r, &mut w);
        // A subscriber that hears nothing for 10 s stops (NATS dropped the rest).
        r.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        subs.push(std::thread::spawn(move || {
            let mut lat: Vec<u64> = Vec::with_capacity(messages as usize);
            let mut last = start;
            let mut probed = false;
            let mut line = Vec::new();
            let mut payload = Vec::new();
            while (lat.len() as u64) < messages {
                line.clear();
                if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line.starts_with(b"PING") {
                    let _ = w.write_all(b"PONG\r\n");
                    let _ = w.flush();
                    continue;
                }
                if !line.starts_with(b"MSG ") {
                    continue;
                }
                let text = String::from_utf8_lossy(&line);
                let mut parts = text.split_whitespace();
                let subject = parts.nth(1).unwrap_or("").to_string();
                let len: usize = text
                    .split_whitespace()
                    .last()
                    .and_then(|l| l.parse().ok())
                    .expect("MSG length");
                payload.resize(len + 2, 0);
                r.read_exact(&mut payload).expect("payload");
                if subject == "probe" {
                    if !probed {
                        probed = true;
                        count.store(u64::MAX, Ordering::Release);
                    }
                    continue;
                }
                let now = Instant::now();
                let sent = u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes"));
                let at = now.duration_since(start).as_nanos() as u64;
                lat.push(at.saturating_sub(sent));
                last = now;
            }
            (lat, last)
        }));
    }

    let (_pr, mut pw) = connect(client_ports[0]);
    // Interest crosses the routes asynchronously: probe until every subscriber heard one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received
        .iter()
        .all(|c| c.load(Ordering::Acquire) == u64::MAX)
    {
        assert!(Instant::now() < deadline, "subscriptions did not propagate");
        pw.write_all(b"PUB probe 1\r\nx\r\n").expect("probe");
        pw.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut body = vec![0u8; size];
    let cpu_before = cpu_now(&procs);
    let send_started = Instant::now();
    for seq in 0..messages {
        if rate > 0 {
            let due = send_started + Duration::from_secs_f64(seq as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                pw.flush().expect("flush");
                std::thread::sleep(due - now);
            }
        }
        body[..8].copy_from_slice(&seq.to_be_bytes());
        let ts = start.elapsed().as_nanos() as u64;
        body[8..16].copy_from_slice(&ts.to_be_bytes());
        write!(pw, "PUB bench {size}\r\n").expect("PUB");
        pw.write_all(&body).expect("PUB");
        pw.write_all(b"\r\n").expect("PUB");
    }
    pw.flush().expect("flush");
    let offered = messages as f64 / send_started.elapsed().as_secs_f64().max(1e-9);

    let mut lat = Vec::new();
    let mut last = send_started;
    let mut delivered = 0u64;
    for s in subs {
        let (l, t) = s.join().expect("subscriber");
        delivered += l.len() as u64;
        lat.extend(l);
        last = last.max(t);
    }
    let cpu_after = cpu_now(&procs);
    lat.sort_unstable();
    let pct = |q: f64| -> f64 {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |ns| *ns as f64 / 1e6)
    };
    let seconds = last.duration_since(send_started).as_secs_f64().max(1e-9);
    let subscribers = (servers - 1) as f64;
    println!("nats servers {servers}  messages {messages} x {size} B");
    println!(
        "delivered {delivered}/{}  latency p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        messages * (servers as u64 - 1),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "throughput {:.0} messages/s delivered per subscriber (offered {:.0}/s)  time {:.2} s",
        delivered as f64 / subscribers / seconds,
        offered,
        seconds
    );
    let (servers_s, clients_s) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let wall = cpu_after
        .2
        .duration_since(cpu_before.2)
        .as_secs_f64()
        .max(1e-9);
    println!(
        "CPU per message: servers {:.1} µs + clients {:.1} µs ({:.2} cores busy)",
        servers_s * 1e6 / messages.max(1) as f64,
        clients_s * 1e6 / messages.max(1) as f64,
        (servers_s + clients_s) / wall
    );
}

/// CPU seconds (user and system) of the servers together and of this process, and when.
fn cpu_now(procs: &Servers) -> (f64, f64, Instant) {
    let secs = |p: procfs::ProcResult<procfs::process::Process>| {
        p.and_then(|p| p.stat())
            .map(|st| (st.utime + st.stime) as f64 / procfs::ticks_per_second() as f64)
            .expect("reading /proc")
    };
    let servers = procs
        .0
        .iter()
        .map(|c| secs(procfs::process::Process::new(c.id() as i32)))
        .sum();
    (
        servers,
        secs(procfs::process::Process::myself()),
        Instant::now(),
    )
}
