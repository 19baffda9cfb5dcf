//! Chaos harness: real `echomesh-node` processes as separate hosts, faults injected under
//! them, and checkers that judge what clients observed against DESIGN.md's guarantees.
//!
//! - [`Lab`]: the nodes, their network and the fault switches. As root it puts every node in
//!   a network namespace of its own ([`netns`]) and injects loss and partitions with nftables;
//!   otherwise (or with `ECHOMESH_CHAOS_NET=loopback`) nodes listen on 127.47.K.x and every
//!   link goes through a [`proxy`], which then does loss and partitions too, and it says so.
//!   Delay and jitter always come from the proxy (no `tc netem` on these kernels).
//! - [`history`]: what clients sent, had acknowledged and received, and the checkers.
//! - Schedules are drawn from one seed (`ECHOMESH_CHAOS_SEED`, else random), printed at the
//!   start and again, with the faults injected, when a scenario fails.

pub mod history;
pub mod netns;
pub mod proxy;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::{Host, TestNode};

/// One lab at a time per process: scenarios are heavy and must not share two cores.
static ONE_LAB: Mutex<()> = Mutex::new(());
static NEXT_LAB: AtomicU8 = AtomicU8::new(0);

pub const QUIC_PORT: u16 = 4710;

/// How the nodes are separated.
pub enum Net {
    Netns(netns::Netns),
    Loopback { k: u8 },
}

/// What to build.
pub struct LabSpec {
    pub nodes: usize,
    /// Undirected neighbor links.
    pub links: Vec<(usize, usize)>,
    /// Links that go through a delay proxy even in namespaces: (a, b, delay ms, jitter ms).
    pub delayed: Vec<(usize, usize, u32, u32)>,
    /// TOML given to every node (`--config`).
    pub config: String,
    /// Use 127.47.K.x and the proxy even where namespaces work (tests the fallback).
    pub force_loopback: bool,
}

struct Link {
    a: usize,
    b: usize,
    /// Proxies for a's dial to b and b's dial to a, when the link is proxied.
    proxies: Option<(proxy::Proxy, proxy::Proxy)>,
}

pub struct Lab {
    pub seed: u64,
    pub rng: rand::rngs::StdRng,
    // Field order is drop order: nodes before their network, runtime (proxies) last.
    pub nodes: Vec<TestNode>,
    links: Vec<Link>,
    pub net: Net,
    pub rt: tokio::runtime::Runtime,
    pub client: quinn::Endpoint,
    fingerprints: Vec<String>,
    events: Mutex<Vec<(Duration, String)>>,
    started: Instant,
    name: String,
    _root: tempfile::TempDir,
    _one: MutexGuard<'static, ()>,
}

/// The seed of this run: `ECHOMESH_CHAOS_SEED` or a fresh one.
fn seed() -> u64 {
    match std::env::var("ECHOMESH_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ECHOMESH_CHAOS_SEED={s:?} is not a number")),
        Err(_) => rand::rng().random(),
    }
}

/// The seeds a multi-seed scenario runs: `ECHOMESH_CHAOS_SEEDS` (comma-separated; the soak
/// passes many), else `ECHOMESH_CHAOS_SEED` alone, else `default` (the CI profile's fixed ones).
pub fn seeds(default: &[u64]) -> Vec<u64> {
    if let Ok(list) = std::env::var("ECHOMESH_CHAOS_SEEDS") {
        return list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("ECHOMESH_CHAOS_SEEDS: {s:?} is not a number"))
            })
            .collect();
    }
    if std::env::var("ECHOMESH_CHAOS_SEED").is_ok() {
        return vec![seed()];
    }
    default.to_vec()
}

/// A connected random graph on `n` nodes in which every node has at least `min_degree`
/// neighbors: a random spanning tree, then random extra links to the nodes still short.
pub fn random_graph(n: usize, min_degree: usize, rng: &mut impl Rng) -> Vec<(usize, usize)> {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut links: Vec<(usize, usize)> = Vec::new();
    let has = |l: &[(usize, usize)], a: usize, b: usize| {
        l.iter().any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    };
    for i in 1..n {
        let parent = order[rng.random_range(0..i)];
        links.push((parent, order[i]));
    }
    let degree =
        |l: &[(usize, usize)], v: usize| l.iter().filter(|&&(a, b)| a == v || b == v).count();
    let want = min_degree.min(n.saturating_sub(1));
    for v in 0..n {
        while degree(&links, v) < want {
            // Prefer partners that are short themselves, so the graph stays sparse.
            let mut cands: Vec<usize> = (0..n).filter(|&u| u != v && !has(&links, u, v)).collect();
            cands.shuffle(rng);
            cands.sort_by_key(|&u| degree(&links, u) >= want);
            let u = cands[0];
            links.push((v.min(u), v.max(u)));
        }
    }
    links
}

impl Lab {
    /// Build the network, start every node with its neighbors and wait until all links are up.
    pub fn start(name: &str, spec: LabSpec) -> Lab {
        Lab::start_seeded(name, seed(), |_| spec)
    }

    /// Start with a given seed and a spec drawn from it (random graphs, say).
    pub fn start_seeded(
        name: &str,
        seed: u64,
        spec: impl FnOnce(&mut rand::rngs::StdRng) -> LabSpec,
    ) -> Lab {
        let one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let spec = spec(&mut rng);
        eprintln!(
            "chaos {name}: seed {seed} (replay: ECHOMESH_CHAOS_SEED={seed} cargo test -p echomesh-tests --test chaos {name})"
        );
        let k = NEXT_LAB
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add((std::process::id() % 200) as u8);
        let forced =
            spec.force_loopback || std::env::var("ECHOMESH_CHAOS_NET").as_deref() == Ok("loopback");
        let net = match forced {
            true => {
                eprintln!("chaos {name}: loopback requested: nodes on 127.47.{k}.x, faults in the userspace proxy");
                Net::Loopback { k }
            }
            false => match netns::Netns::create(k, spec.nodes) {
                Ok(n) => Net::Netns(n),
                Err(why) => {
                    eprintln!("chaos {name}: network namespaces unavailable ({why}); falling back to 127.47.{k}.x with the userspace proxy for every fault");
                    Net::Loopback { k }
                }
            },
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let root = tempfile::tempdir().expect("tempdir");
        let fingerprints: Vec<String> = (0..spec.nodes)
            .map(|i| TestNode::init(&root.path().join(format!("n{i}"))))
            .collect();
        let host_ip = host_ip(&net);
        let client = {
            let _g = rt.enter();
            echomesh_client::transport::client_endpoint(SocketAddr::new(host_ip, 0))
                .expect("client endpoint")
        };
        let mut lab = Lab {
            seed,
            rng,
            nodes: Vec::new(),
            links: Vec::new(),
            net,
            rt,
            client,
            fingerprints,
            events: Mutex::new(Vec::new()),
            started: Instant::now(),
            name: name.into(),
            _root: root,
            _one: one,
        };
        lab.wire(&spec);
        let cfg = lab._root.path().join("chaos.toml");
        std::fs::write(&cfg, &spec.config).expect("write config");
        for i in 0..spec.nodes {
            let mut flags = vec!["--config".to_string(), cfg.display().to_string()];
            for l in lab.links.iter().filter(|l| l.a == i || l.b == i) {
                let (other, via) = match (&l.proxies, l.a == i) {
                    (Some((ab, _)), true) => (l.b, Some(ab.addr)),
                    (Some((_, ba)), false) => (l.a, Some(ba.addr)),
                    (None, true) => (l.b, None),
                    (None, false) => (l.a, None),
                };
                let addr = via.unwrap_or_else(|| lab.node_addr(other));
                flags.push("--neighbor".into());
                flags.push(format!("{addr}#{}", lab.fingerprints[other]));
            }
            let host = lab.host(i);
            let node =
                TestNode::start_on(lab._root.path(), &format!("n{i}"), &host, QUIC_PORT, &flags);
            lab.nodes.push(node);
        }
        lab.wait_links_up(Duration::from_secs(30));
        lab.log("all links up");
        lab
    }

    fn wire(&mut self, spec: &LabSpec) {
        let proxied_everywhere = matches!(self.net, Net::Loopback { .. });
        for (idx, &(a, b)) in spec.links.iter().enumerate() {
            let delay = spec
                .delayed
                .iter()
                .find(|d| (d.0, d.1) == (a, b) || (d.0, d.1) == (b, a));
            let proxies = if proxied_everywhere || delay.is_some() {
                let ip = proxy_ip(&self.net);
                let (ua, ub) = (self.node_addr(a), self.node_addr(b));
                let s = self.seed.wrapping_add(idx as u64 * 7919);
                let pair = self.rt.block_on(async {
                    let ab = proxy::start(ip, ub, s).await.expect("proxy");
                    let ba = proxy::start(ip, ua, s ^ 0xabcdef).await.expect("proxy");
                    (ab, ba)
                });
                if let Some(&(_, _, ms, jitter)) = delay {
                    for f in [
                        &pair.0.to_upstream,
                        &pair.0.to_client,
                        &pair.1.to_upstream,
                        &pair.1.to_client,
                    ] {
                        f.set_delay(ms, jitter);
                    }
                }
                Some(pair)
            } else {
                None
            };
            self.links.push(Link { a, b, proxies });
        }
    }

    /// Every fault switch of every proxy (both directions of both dials of each link).
    fn all_proxy_faults(&self) -> impl Iterator<Item = &proxy::Faults> {
        self.links
            .iter()
            .filter_map(|l| l.proxies.as_ref())
            .flat_map(|(ab, ba)| {
                [
                    &*ab.to_upstream,
                    &*ab.to_client,
                    &*ba.to_upstream,
                    &*ba.to_client,
                ]
            })
    }

    pub fn is_netns(&self) -> bool {
        matches!(self.net, Net::Netns(_))
    }

    fn host(&self, i: usize) -> Host {
        match &self.net {
            Net::Netns(n) => Host {
                netns: Some(n.ns(i).to_string()),
                ip: IpAddr::V4(n.node_ip(i)),
            },
            Net::Loopback { k } => Host {
                netns: None,
                ip: IpAddr::V4(Ipv4Addr::new(127, 47, *k, i as u8 + 1)),
            },
        }
    }

    pub fn node_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.host(i).ip, QUIC_PORT)
    }

    /// Record a fault or a step of the schedule (printed if the scenario fails).
    pub fn log(&self, what: impl Into<String>) {
        let what = what.into();
        let at = self.started.elapsed();
        eprintln!("chaos {} +{:.1}s: {what}", self.name, at.as_secs_f64());
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((at, what));
    }

    fn link(&self, a: usize, b: usize) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| (l.a, l.b) == (a, b) || (l.a, l.b) == (b, a))
    }

    /// The proxy fault switches that carry datagrams from `from` to `to`.
    fn proxy_faults(&self, from: usize, to: usize) -> Vec<&proxy::Faults> {
        match self
            .link(from, to)
            .and_then(|l| l.proxies.as_ref().map(|p| (l, p)))
        {
            // The proxy for from's dial carries from→to towards upstream; the one for to's
            // dial carries it back towards its client.
            Some((l, (ab, ba))) if l.a == from => vec![&ab.to_upstream, &ba.to_client],
            Some((_, (ab, ba))) => vec![&ba.to_upstream, &ab.to_client],
            None => vec![],
        }
    }

    /// Drop everything `from` sends to `to` (one direction of a partition).
    pub fn block(&self, from: usize, to: usize) {
        self.log(format!("block n{from} → n{to}"));
        let via_proxy = self.proxy_faults(from, to);
        for f in &via_proxy {
            f.set_blocked(true);
        }
        if let Net::Netns(n) = &self.net {
            n.block(from, to).expect("nft block");
        }
    }

    /// Cut `a` and `b` apart in both directions.
    pub fn partition(&self, a: usize, b: usize) {
        self.block(a, b);
        self.block(b, a);
    }

    /// Remove every partition.
    pub fn heal(&self) {
        self.log("heal all partitions");
        for f in self.all_proxy_faults() {
            f.set_blocked(false);
        }
        if let Net::Netns(n) = &self.net {
            n.unblock_all().expect("nft flush");
        }
    }

    /// Lose `pct` % of the datagrams between nodes (0 = none).
    pub fn set_loss(&self, pct: u32) {
        self.log(format!("loss {pct} % between nodes"));
        match &self.net {
            Net::Netns(n) => n.set_loss(pct).expect("nft loss"),
            Net::Loopback { .. } => {
                for f in self.all_proxy_faults() {
                    f.set_loss_percent(pct);
                }
            }
        }
    }

    /// Lose `pct` % of the datagrams between the clients and every node, both ways (a phone
    /// on bad mobile data). Needs namespaces: the rules live inside the node namespaces.
    pub fn set_client_loss(&self, pct: u32) {
        self.log(format!("loss {pct} % on the client legs"));
        match &self.net {
            Net::Netns(n) => n.set_client_loss(pct).expect("nft client loss"),
            Net::Loopback { .. } => {
                panic!("client-leg loss needs network namespaces (run as root)")
            }
        }
    }

    /// Datagrams the faults dropped so far (nftables counters and proxies): proof they bit.
    pub fn fault_drops(&self) -> u64 {
        let mut total = 0;
        if let Net::Netns(n) = &self.net {
            total += n.dropped();
        }
        total += self
            .all_proxy_faults()
            .map(|f| f.lost.load(Ordering::Relaxed) + f.blocked_drops.load(Ordering::Relaxed))
            .sum::<u64>();
        total
    }

    /// Datagrams the delay proxies passed (proof that delayed links carried the traffic).
    pub fn proxied_datagrams(&self) -> u64 {
        self.all_proxy_faults()
            .map(|f| f.passed.load(Ordering::Relaxed))
            .sum()
    }

    pub fn kill9(&mut self, i: usize) {
        self.log(format!("kill -9 n{i}"));
        self.nodes[i].kill9();
    }

    /// Start a killed node again on its data dir; waits for its links to come back.
    pub fn restart(&mut self, i: usize) {
        self.log(format!("restart n{i}"));
        self.nodes[i].restart();
        self.wait_links_up(Duration::from_secs(30));
        self.log(format!("n{i} back, all links up"));
    }

    /// SIGSTOP / SIGCONT: a node that hangs and comes back.
    pub fn freeze(&self, i: usize, frozen: bool) {
        self.log(format!(
            "{} n{i}",
            if frozen { "SIGSTOP" } else { "SIGCONT" }
        ));
        self.nodes[i].signal(if frozen { "-STOP" } else { "-CONT" });
    }

    /// Wait until every link is up on both ends.
    pub fn wait_links_up(&mut self, timeout: Duration) {
        self.wait_links_up_except(timeout, &[]);
    }

    /// Wait until every link but `except` (cut on purpose) is up on both ends.
    pub fn wait_links_up_except(&mut self, timeout: Duration, except: &[(usize, usize)]) {
        let n = self.nodes.len();
        let mut want: Vec<Vec<String>> = vec![Vec::new(); n];
        let cut = |a: usize, b: usize| {
            except
                .iter()
                .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
        };
        for l in self.links.iter().filter(|l| !cut(l.a, l.b)) {
            want[l.a].push(self.fingerprints[l.b].clone());
            want[l.b].push(self.fingerprints[l.a].clone());
        }
        let nodes = &self.nodes;
        crate::wait_for(timeout, "every link up", || {
            (0..n)
                .all(|i| {
                    let up: Vec<String> = nodes[i]
                        .neighbors()
                        .into_iter()
                        .filter(|v| v["state"] == "up")
                        .filter_map(|v| v["fingerprint"].as_str().map(String::from))
                        .collect();
                    want[i].iter().all(|fp| up.contains(fp))
                })
                .then_some(())
        });
    }

    /// A client session to node `i` over the lab network, pinned by fingerprint.
    pub async fn session(
        &self,
        i: usize,
    ) -> Result<echomesh_client::ClientSession, echomesh_client::ClientError> {
        connect(&self.client, self.node_addr(i), &self.fingerprints[i]).await
    }

    /// This side's address on the lab network (clients and the admin API come from it).
    pub fn client_ip(&self) -> IpAddr {
        host_ip(&self.net)
    }

    /// A raw peer connection to node `i` under `identity`, as a misbehaving neighbor makes it.
    pub async fn raw_peer(
        &self,
        i: usize,
        identity: &echomesh_client::identity::Identity,
    ) -> anyhow::Result<quinn::Connection> {
        let expected: echomesh_client::identity::NodeId = self.fingerprints[i].parse()?;
        let (cfg, _) = echomesh_client::transport::dial_config(
            Some(identity),
            Some(expected),
            echomesh_proto::wire::ALPN_PEER,
            &echomesh_client::transport::Tuning::default(),
        )?;
        Ok(self
            .client
            .connect_with(
                cfg,
                self.node_addr(i),
                echomesh_client::transport::SERVER_NAME,
            )?
            .await?)
    }

    /// Sleep a random time in `[lo, hi]` ms drawn from the seed.
    pub fn pause(&mut self, lo: u64, hi: u64) {
        let ms = self.rng.random_range(lo..=hi);
        std::thread::sleep(Duration::from_millis(ms));
    }

    /// Print every node's counters that explain a loss (drops by reason, repair, log,
    /// accepted and delivered packets): called before a checker's verdict panics.
    pub fn dump_counters(&self) {
        const KEEP: &[&str] = &[
            "echomesh_packets_dropped_total",
            "echomesh_packets_accepted_total",
            "echomesh_packets_delivered_total",
            "echomesh_echo_repair",
            "echomesh_packet_log",
            "echomesh_client_resumes_total",
            "echomesh_neighbors{",
            "echomesh_neighbor_queue_bytes",
            "echomesh_neighbor_rtt_seconds",
            "echomesh_neighbor_sent_bytes_total",
            "echomesh_neighbor_received_bytes_total",
        ];
        for (i, n) in self.nodes.iter().enumerate() {
            let Ok((_, text)) = crate::http_get(n.info.admin, "/metrics") else {
                eprintln!("  n{i}: no metrics (down?)");
                continue;
            };
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && KEEP.iter().any(|k| l.starts_with(k)))
                .filter(|l| !l.ends_with(" 0"))
                .collect();
            eprintln!("  n{i} ({}): {}", n.info.id, lines.join("; "));
            for v in n.neighbors() {
                eprintln!(
                    "    → {} {} queue {} B, QUIC {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["state"].as_str().unwrap_or("?"),
                    v["queue_bytes"],
                    v["connections"]
                );
            }
        }
    }

    /// The neighbor links, as built.
    pub fn links(&self) -> Vec<(usize, usize)> {
        self.links.iter().map(|l| (l.a, l.b)).collect()
    }

    pub fn fingerprint(&self, i: usize) -> &str {
        &self.fingerprints[i]
    }

    /// The lab's scratch directory (node data dirs, config).
    pub fn root(&self) -> &Path {
        self._root.path()
    }
}

/// Connect a client session to `addr`, pinned by `fingerprint`.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: &str,
) -> Result<echomesh_client::ClientSession, echomesh_client::ClientError> {
    let id = fingerprint.parse().expect("fingerprint");
    echomesh_client::connect(ep, addr, Some(id), "chaos").await
}

fn host_ip(net: &Net) -> IpAddr {
    match net {
        Net::Netns(n) => IpAddr::V4(n.host_ip()),
        Net::Loopback { k } => IpAddr::V4(Ipv4Addr::new(127, 47, *k, 254)),
    }
}

fn proxy_ip(net: &Net) -> IpAddr {
    match net {
        Net::Netns(n) => IpAddr::V4(n.proxy_ip()),
        Net::Loopback { k } => IpAddr::V4(Ipv4Addr::new(127, 47, *k, 253)),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chaos {}: FAILED with seed {} (net: {}). Replay: ECHOMESH_CHAOS_SEED={} cargo test -p echomesh-tests --test chaos {}\nschedule:",
                self.name,
                self.seed,
                if self.is_netns() { "namespaces" } else { "loopback proxy" },
                self.seed,
                self.name
            );
            for (at, e) in self.events.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                eprintln!("  +{:.1}s {e}", at.as_secs_f64());
            }
        }
    }
}
