//! A UDP relay in front of a node: loses, delays, reorders (jitter) and blocks datagrams in
//! each direction. This kernel has no `tc netem`, so delay and jitter always come from here;
//! when network namespaces are unavailable, loss and partitions come from here too.
//!
//! One proxy serves one dialing node: datagrams from its (single, latest) client address go to
//! the upstream node from a socket of the proxy's own, and answers come back the same way. Every
//! datagram it does not pass on is counted by reason.

use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Datagrams waiting for their delay, per direction; beyond this they are dropped (counted).
const MAX_DELAYED: usize = 32_768;

/// The faults of one direction of one proxy, changed while it runs.
#[derive(Default)]
pub struct Faults {
    /// Loss in parts per thousand.
    pub loss_permille: AtomicU32,
    pub delay_ms: AtomicU32,
    pub jitter_ms: AtomicU32,
    pub blocked: AtomicBool,
    pub passed: AtomicU64,
    pub lost: AtomicU64,
    pub blocked_drops: AtomicU64,
    pub overflow_drops: AtomicU64,
}

impl Faults {
    pub fn set_loss_percent(&self, pct: u32) {
        self.loss_permille.store(pct * 10, Ordering::Relaxed);
    }

    pub fn set_delay(&self, delay_ms: u32, jitter_ms: u32) {
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
        self.jitter_ms.store(jitter_ms, Ordering::Relaxed);
    }

    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.set_loss_percent(0);
        self.set_delay(0, 0);
        self.set_blocked(false);
    }
}

pub struct Proxy {
    /// Where the dialing node sends to (its neighbor spec names this address).
    pub addr: SocketAddr,
    /// Faults towards the upstream node.
    pub to_upstream: Arc<Faults>,
    /// Faults back towards the dialing node.
    pub to_client: Arc<Faults>,
}

/// Start a proxy on `bind_ip` (any port) relaying to `upstream`. Its tasks run until the
/// runtime they were spawned on shuts down.
pub async fn start(bind_ip: IpAddr, upstream: SocketAddr, seed: u64) -> std::io::Result<Proxy> {
    let listen = Arc::new(UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?);
    let up = Arc::new(UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?);
    up.connect(upstream).await?;
    let proxy = Proxy {
        addr: listen.local_addr()?,
        to_upstream: Arc::new(Faults::default()),
        to_client: Arc::new(Faults::default()),
    };
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();

    // client → upstream
    let tx_up = delayer(up.clone(), None, proxy.to_upstream.clone());
    {
        let (listen, faults, client) = (listen.clone(), proxy.to_upstream.clone(), client.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = listen.recv_from(&mut buf).await {
                *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                pass(&faults, &mut rng, &tx_up, &buf[..n]);
            }
        });
    }
    // upstream → client
    let tx_back = delayer(
        listen.clone(),
        Some(client.clone()),
        proxy.to_client.clone(),
    );
    {
        let (up, faults) = (up.clone(), proxy.to_client.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut buf = vec![0u8; 65_536];
            loop {
                match up.recv(&mut buf).await {
                    Ok(n) => pass(&faults, &mut rng, &tx_back, &buf[..n]),
                    // The upstream node is down (ICMP port unreachable): keep relaying.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        });
    }
    Ok(proxy)
}

/// Decide one datagram's fate and hand it to the sender with its due time.
fn pass(
    f: &Faults,
    rng: &mut rand::rngs::StdRng,
    tx: &mpsc::Sender<(Instant, Vec<u8>)>,
    data: &[u8],
) {
    if f.blocked.load(Ordering::Relaxed) {
        f.blocked_drops.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let loss = f.loss_permille.load(Ordering::Relaxed);
    if loss > 0 && rng.random_range(0..1000) < loss {
        f.lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let delay = f.delay_ms.load(Ordering::Relaxed) as u64;
    let jitter = f.jitter_ms.load(Ordering::Relaxed) as u64;
    let extra = if jitter > 0 {
        rng.random_range(0..=jitter)
    } else {
        0
    };
    let due = Instant::now() + Duration::from_millis(delay + extra);
    if tx.try_send((due, data.to_vec())).is_err() {
        f.overflow_drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// A task that sends datagrams when they are due (reordering them when jitter says so).
/// `to` = None: the socket is connected; Some: send to the latest client address.
fn delayer(
    sock: Arc<UdpSocket>,
    to: Option<Arc<Mutex<Option<SocketAddr>>>>,
    faults: Arc<Faults>,
) -> mpsc::Sender<(Instant, Vec<u8>)> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(MAX_DELAYED);
    tokio::spawn(async move {
        // Min-heap by due time; the sequence number keeps equal due times in arrival order.
        let mut heap: BinaryHeap<std::cmp::Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
        let mut seq = 0u64;
        loop {
            let next_due = heap.peek().map(|std::cmp::Reverse((d, _, _))| *d);
            tokio::select! {
                m = rx.recv() => match m {
                    Some((due, data)) => {
                        seq += 1;
                        heap.push(std::cmp::Reverse((due, seq, data)));
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
            }
            let now = Instant::now();
            while heap
                .peek()
                .is_some_and(|std::cmp::Reverse((d, _, _))| *d <= now)
            {
                let Some(std::cmp::Reverse((_, _, data))) = heap.pop() else {
                    break;
                };
                let sent = match &to {
                    None => sock.send(&data).await,
                    Some(c) => {
                        let addr = *c.lock().unwrap_or_else(|p| p.into_inner());
                        match addr {
                            Some(a) => sock.send_to(&data, a).await,
                            None => Ok(0),
                        }
                    }
                };
                // A send error (upstream down) is what the network would do too: a loss.
                match sent {
                    Ok(_) => faults.passed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => faults.lost.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    tx
}
