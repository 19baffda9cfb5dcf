//! What clients did and saw, and the checkers that judge it.
//!
//! Flooding: senders record every packet the node acknowledged (`Injected`), subscribers
//! count every delivery by packet ID. The checker reports packets an expected subscriber never
//! got (loss) and packets a subscriber got more than once (duplicates delivered to a client).
//!
//! Ozones: a depositor records every attempt with its outcome (acknowledged with its copies,
//! refused, or failed in transit). The checker reads every ozone back and reports acknowledged
//! deposits that are gone, messages served twice and messages nobody deposited.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use echomesh_client::follow::{Followed, Follower};
use echomesh_client::ClientSession;
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::ozone::OzoneProof;
use echomesh_proto::wire::{ClientEvent, Position, SubscribeFilter};

use super::Lab;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Flooding

#[derive(Debug, Clone)]
pub struct Sent {
    pub id: [u8; 32],
    pub origin: usize,
    /// The scenario's phase when it was sent (the checker's expectation depends on it).
    pub phase: u32,
    pub seq: u64,
}

/// Packets acknowledged by their origin node, in order.
#[derive(Default, Clone)]
pub struct SendLog(Arc<Mutex<Vec<Sent>>>);

impl SendLog {
    pub fn all(&self) -> Vec<Sent> {
        lock(&self.0).clone()
    }
}

/// A client subscribed to every packet on one node.
pub struct Subscriber {
    pub node: usize,
    got: Arc<Mutex<HashMap<[u8; 32], u32>>>,
    lagged: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    moves: Arc<AtomicU64>,
    /// The connection the subscriber reads now (following subscribers only).
    conn: Arc<Mutex<Option<quinn::Connection>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribe on node `i`; returns once the node confirmed the subscription.
    pub fn start(lab: &Lab, node: usize) -> Subscriber {
        Subscriber::start_with(lab, node, false)
    }

    /// Subscribe on node `i` as real clients do: following the node's redirects when it
    /// drains (make-before-break; the follower drops repeats inside the move's overlap only).
    pub fn following(lab: &Lab, node: usize) -> Subscriber {
        Subscriber::start_with(lab, node, true)
    }

    /// Moves this subscriber made (redirects followed).
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    fn start_with(lab: &Lab, node: usize, follow: bool) -> Subscriber {
        let mut s = lab
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), lab.session(node)).await
            })
            .unwrap_or_else(|_| panic!("subscriber on n{node}: connect timed out"))
            .unwrap_or_else(|e| panic!("subscriber on n{node}: {e}"));
        lab.rt
            .block_on(s.subscribe(SubscribeFilter::All))
            .unwrap_or_else(|e| panic!("subscribe on n{node}: {e}"));
        let got: Arc<Mutex<HashMap<[u8; 32], u32>>> = Arc::default();
        let lagged = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let moves = Arc::new(AtomicU64::new(0));
        let count = {
            let (got, lagged) = (got.clone(), lagged.clone());
            move |ev: ClientEvent| match ev {
                ClientEvent::Deliver(pkts) => {
                    let mut g = lock(&got);
                    for p in pkts {
                        *g.entry(p.id).or_insert(0) += 1;
                    }
                }
                ClientEvent::Lagged { dropped } => {
                    lagged.fetch_add(dropped, Ordering::Relaxed);
                }
                _ => {}
            }
        };
        let conn: Arc<Mutex<Option<quinn::Connection>>> = Arc::default();
        let task = if follow {
            let (closed, moves, slot) = (closed.clone(), moves.clone(), conn.clone());
            let mut f = Follower::new(lab.client.clone(), s, "chaos", Some(SubscribeFilter::All));
            lab.rt.spawn(async move {
                loop {
                    *lock(&slot) = Some(f.connection().clone());
                    match f.next().await {
                        Ok(Some(Followed::Event(ev))) => count(ev),
                        Ok(Some(Followed::Moved { .. })) => {
                            moves.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) | Err(_) => {
                            closed.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        } else {
            let closed = closed.clone();
            lab.rt.spawn(async move {
                loop {
                    match s.next_event().await {
                        Ok(Some(ev)) => count(ev),
                        Ok(None) | Err(_) => {
                            closed.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        };
        Subscriber {
            node,
            got,
            lagged,
            closed,
            moves,
            conn,
            task,
        }
    }
    /// QUIC's view of the subscriber's current connection (following subscribers), for a
    /// failure report.
    pub fn quic_stats(&self) -> String {
        match &*lock(&self.conn) {
            Some(c) => {
                let s = c.stats();
                format!(
                    "rtt {:?}, cwnd {}, sent {} lost {} packets, {} datagrams in / {} out, closed: {:?}",
                    s.path.rtt,
                    s.path.cwnd,
                    s.path.sent_packets,
                    s.path.lost_packets,
                    s.udp_rx.datagrams,
                    s.udp_tx.datagrams,
                    c.close_reason()
                )
            }
            None => "-".into(),
        }
    }

    /// Packets received so far (distinct IDs).
    pub fn received(&self) -> usize {
        lock(&self.got).len()
    }

    /// Whether packet `id` has arrived.
    pub fn has(&self, id: &[u8; 32]) -> bool {
        self.count(id) > 0
    }

    fn count(&self, id: &[u8; 32]) -> u32 {
        lock(&self.got).get(id).copied().unwrap_or(0)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Inject `count` fresh packets at node `origin`, `batch` at a time every `every`, recording
/// each packet the node accepted. Runs on the lab's runtime; join the handle for the result.
pub fn send(
    lab: &Lab,
    log: &SendLog,
    origin: usize,
    phase: u32,
    count: u64,
    batch: usize,
    every: Duration,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    send_sized(lab, log, origin, phase, count, batch, every, 0)
}

/// One fresh packet a chaos sender injects: names its run, origin, phase and number, random
/// bytes so that every run's IDs differ, padded to at least `size` bytes.
fn chaos_packet(seed: u64, origin: usize, phase: u32, k: u64, size: usize) -> EchoPacket {
    let mut payload = format!("chaos {seed} n{origin} p{phase} #{k} ").into_bytes();
    payload.extend_from_slice(&rand::random::<[u8; 16]>());
    if payload.len() < size {
        payload.resize(size, b'.');
    }
    EchoPacket::new(Bytes::from(payload), 16, None)
}

/// The sender's side of a lab: its client endpoint, the node's address and fingerprint.
fn sender_target(lab: &Lab, origin: usize) -> (quinn::Endpoint, std::net::SocketAddr, String) {
    (
        lab.client.clone(),
        lab.node_addr(origin),
        lab.fingerprint(origin).to_string(),
    )
}

/// [`send`] with payloads padded to at least `size` bytes.
#[allow(clippy::too_many_arguments)]
pub fn send_sized(
    lab: &Lab,
    log: &SendLog,
    origin: usize,
    phase: u32,
    count: u64,
    batch: usize,
    every: Duration,
    size: usize,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    let log = log.clone();
    let (ep, addr, fp) = sender_target(lab, origin);
    let seed = lab.seed;
    lab.rt.spawn(async move {
        let mut s = super::connect(&ep, addr, &fp)
            .await
            .map_err(|e| format!("sender to n{origin}: {e}"))?;
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(every);
        while seq < count {
            tick.tick().await;
            let n = batch.min((count - seq) as usize);
            let pkts: Vec<EchoPacket> = (0..n as u64)
                .map(|k| chaos_packet(seed, origin, phase, seq + k, size))
                .collect();
            s.inject(&pkts)
                .await
                .map_err(|e| format!("inject at n{origin}: {e}"))?;
            let accepted = loop {
                match s.next_event().await {
                    Ok(Some(ClientEvent::Injected { accepted, .. })) => break accepted,
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(format!("n{origin} closed the sender's session")),
                    Err(e) => return Err(format!("sender at n{origin}: {e}")),
                }
            };
            if accepted as usize != n {
                return Err(format!(
                    "n{origin} accepted {accepted} of {n} fresh packets"
                ));
            }
            let mut l = lock(&log.0);
            for (k, p) in pkts.iter().enumerate() {
                l.push(Sent {
                    id: p.id,
                    origin,
                    phase,
                    seq: seq + k as u64,
                });
            }
            seq += n as u64;
        }
        Ok(seq)
    })
}

/// Like [`send_sized`], as real clients on a bad link send: batches pipelined and kept until
/// acknowledged, the same node dialed again when the connection breaks and every
/// unacknowledged batch sent again byte for byte (`client::inject`). A packet counts as sent
/// once the node acknowledged it, accepted or already known.
#[allow(clippy::too_many_arguments)]
pub fn send_resilient(
    lab: &Lab,
    log: &SendLog,
    origin: usize,
    phase: u32,
    count: u64,
    batch: usize,
    size: usize,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    let log = log.clone();
    let (ep, addr, fp) = sender_target(lab, origin);
    let seed = lab.seed;
    lab.rt.spawn(async move {
        // On a lossy client leg the first handshake can fail too; a resilient client dials
        // again, as it does after a lost connection.
        let s = match super::connect(&ep, addr, &fp).await {
            Ok(s) => s,
            Err(e) => echomesh_client::inject::redial(
                &ep,
                addr,
                fp.parse().expect("fingerprint"),
                "chaos",
                echomesh_client::follow::RESUME_FOR,
                e,
            )
            .await
            .map_err(|e| format!("sender to n{origin}: {e}"))?,
        };
        let batches = (0..count.div_ceil(batch as u64)).map(move |b| {
            let first = b * batch as u64;
            (first..(first + batch as u64).min(count))
                .map(|k| chaos_packet(seed, origin, phase, k, size))
                .collect::<Vec<_>>()
        });
        let mut problem = None;
        let mut seq = 0u64;
        let r = echomesh_client::inject::inject_all(
            &ep,
            s,
            "chaos",
            batches,
            Duration::from_secs(120),
            |pkts, accepted, duplicates| {
                if (accepted + duplicates) as usize != pkts.len() {
                    problem = Some(format!(
                        "n{origin} acknowledged {} of {} packets",
                        accepted + duplicates,
                        pkts.len()
                    ));
                }
                let mut l = lock(&log.0);
                for p in pkts {
                    l.push(Sent {
                        id: p.id,
                        origin,
                        phase,
                        seq,
                    });
                    seq += 1;
                }
            },
        )
        .await
        .map_err(|e| format!("inject at n{origin}: {e}"))?;
        if let Some(p) = problem {
            return Err(p);
        }
        Ok(r.reconnects)
    })
}

/// Wait (at most `timeout`) until every subscriber has every packet `expect` says it should
/// have; whether they all do.
pub fn wait_delivered(
    sent: &[Sent],
    subs: &[&Subscriber],
    expect: impl Fn(&Sent, usize) -> bool,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let complete = |sub: &Subscriber| {
        sent.iter()
            .all(|p| !expect(p, sub.node) || sub.count(&p.id) > 0)
    };
    loop {
        if subs.iter().all(|s| complete(s)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait as [`wait_delivered`] does, observe `linger` longer for late duplicates, then judge:
/// no loss, no duplicate delivered, no lag notice, no closed subscription.
pub fn check_flood(
    sent: &[Sent],
    subs: &[&Subscriber],
    expect: impl Fn(&Sent, usize) -> bool,
    timeout: Duration,
    linger: Duration,
) -> Result<FloodReport, String> {
    wait_delivered(sent, subs, &expect, timeout);
    std::thread::sleep(linger);
    let mut problems = Vec::new();
    let mut report = FloodReport::default();
    let ours: HashSet<[u8; 32]> = sent.iter().map(|p| p.id).collect();
    for sub in subs {
        let got = lock(&sub.got).clone();
        let missing: Vec<&Sent> = sent
            .iter()
            .filter(|p| expect(p, sub.node) && !got.contains_key(&p.id))
            .collect();
        let dups: Vec<u32> = got
            .iter()
            .filter(|(id, n)| **n > 1 && ours.contains(*id))
            .map(|(_, n)| *n)
            .collect();
        let expected = sent.iter().filter(|p| expect(p, sub.node)).count();
        report.expected += expected as u64;
        report.delivered += got.iter().filter(|(id, _)| ours.contains(*id)).count() as u64;
        if let Some(first) = missing.first() {
            problems.push(format!(
                "LOSS: subscriber on n{} never got {} of {expected} expected packets (first: from n{} phase {} #{})",
                sub.node,
                missing.len(),
                first.origin,
                first.phase,
                first.seq
            ));
        }
        if !dups.is_empty() {
            problems.push(format!(
                "DUPLICATES: subscriber on n{} got {} packets more than once (up to {} times)",
                sub.node,
                dups.len(),
                dups.iter().max().unwrap_or(&0)
            ));
        }
        let lagged = sub.lagged.load(Ordering::Relaxed);
        if lagged > 0 {
            problems.push(format!(
                "LAG: subscriber on n{} was told {lagged} packets were dropped for it",
                sub.node
            ));
        }
        if sub.closed.load(Ordering::Relaxed) {
            problems.push(format!("CLOSED: the subscription on n{} ended", sub.node));
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems.join("\n"))
    }
}

#[derive(Debug, Default)]
pub struct FloodReport {
    pub expected: u64,
    pub delivered: u64,
}

// ---------------------------------------------------------------------------------------------
// Ozones

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The node said the deposit is durable on this many copies.
    Acked(u8),
    /// The node refused it (not durable, quota, …): not acknowledged.
    Refused(String),
    /// The session broke or timed out before an answer: not acknowledged.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub ozone: usize,
    pub node: usize,
    pub payload: Bytes,
    pub outcome: Outcome,
}

/// Deposits into `ozones` ozones, one at a time, through whichever of the `targets` nodes is
/// next (the scenario changes the targets as it kills and restarts nodes).
pub struct Depositor {
    pub proofs: Vec<OzoneProof>,
    pub targets: Arc<Mutex<Vec<usize>>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Depositor {
    pub fn start(lab: &Lab, ozones: usize, targets: Vec<usize>, every: Duration) -> Depositor {
        Depositor::start_at(lab, ozones, targets, every, 0)
    }

    /// The same, numbering deposits from `first` (several depositors in one scenario).
    pub fn start_at(
        lab: &Lab,
        ozones: usize,
        targets: Vec<usize>,
        every: Duration,
        first: usize,
    ) -> Depositor {
        let proofs: Vec<OzoneProof> = (0..ozones)
            .map(|k| OzoneProof::from_secret(format!("chaos {} ozone {k}", lab.seed).as_bytes()))
            .collect();
        let targets = Arc::new(Mutex::new(targets));
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let addrs: Vec<_> = (0..lab.nodes.len())
            .map(|i| (lab.node_addr(i), lab.fingerprint(i).to_string()))
            .collect();
        let task = {
            let (proofs, targets, attempts, stop, ep) = (
                proofs.clone(),
                targets.clone(),
                attempts.clone(),
                stop.clone(),
                lab.client.clone(),
            );
            let seed = lab.seed;
            lab.rt.spawn(async move {
                let mut sessions: HashMap<usize, ClientSession> = HashMap::new();
                let mut k = first;
                let mut tick = tokio::time::interval(every);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let live = lock(&targets).clone();
                    if live.is_empty() {
                        continue;
                    }
                    let node = live[k % live.len()];
                    let ozone = k % proofs.len();
                    let payload = Bytes::from(format!("chaos {seed} deposit {k} ozone {ozone}"));
                    k += 1;
                    // Recorded before it is sent: if the scenario stops us mid-deposit, the
                    // attempt stays on record as unanswered (it may still have been stored).
                    let at = {
                        let mut a = lock(&attempts);
                        a.push(Attempt {
                            ozone,
                            node,
                            payload: payload.clone(),
                            outcome: Outcome::Failed("no answer yet".into()),
                        });
                        a.len() - 1
                    };
                    let outcome =
                        deposit(&mut sessions, &ep, &addrs, node, &proofs[ozone], payload).await;
                    lock(&attempts)[at].outcome = outcome;
                }
            })
        };
        Depositor {
            proofs,
            targets,
            attempts,
            stop,
            task: Some(task),
        }
    }

    pub fn set_targets(&self, t: Vec<usize>) {
        *lock(&self.targets) = t;
    }

    pub fn acked(&self) -> usize {
        lock(&self.attempts)
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
            .count()
    }

    /// Stop: the deposit in progress gets a second to finish, else it is left unanswered
    /// (not acknowledged). Returns every attempt.
    pub fn stop(mut self, lab: &Lab) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(mut t) = self.task.take() {
            let finished = lab.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(1), &mut t)
                    .await
                    .is_ok()
            });
            if !finished {
                t.abort();
            }
        }
        lock(&self.attempts).clone()
    }
}

impl Drop for Depositor {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn deposit(
    sessions: &mut HashMap<usize, ClientSession>,
    ep: &quinn::Endpoint,
    addrs: &[(std::net::SocketAddr, String)],
    node: usize,
    proof: &OzoneProof,
    payload: Bytes,
) -> Outcome {
    let limit = Duration::from_secs(10);
    let s = match sessions.entry(node) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let (addr, fp) = &addrs[node];
            match tokio::time::timeout(limit, super::connect(ep, *addr, fp)).await {
                Ok(Ok(s)) => e.insert(s),
                Ok(Err(err)) => return Outcome::Failed(format!("connect n{node}: {err}")),
                Err(_) => return Outcome::Failed(format!("connect n{node}: timed out")),
            }
        }
    };
    let r = tokio::time::timeout(limit, s.deposit(proof.address(), payload)).await;
    match r {
        Ok(Ok((_, copies))) => Outcome::Acked(copies),
        Ok(Err(echomesh_client::ClientError::Refused(m))) => Outcome::Refused(m),
        Ok(Err(e)) => {
            sessions.remove(&node);
            Outcome::Failed(e.to_string())
        }
        Err(_) => {
            sessions.remove(&node);
            Outcome::Failed("no answer within 10 s".into())
        }
    }
}

/// Every message of an ozone as node `i` serves it, oldest first.
pub async fn fetch_all(lab: &Lab, i: usize, proof: OzoneProof) -> Result<Vec<Bytes>, String> {
    let mut s = lab
        .session(i)
        .await
        .map_err(|e| format!("fetch from n{i}: {e}"))?;
    let mut out = Vec::new();
    let mut after: Option<Position> = None;
    loop {
        let (page, more) = s
            .fetch(proof, after, 256)
            .await
            .map_err(|e| format!("fetch from n{i}: {e}"))?;
        if let Some(last) = page.last() {
            after = Some(Position {
                seq: last.seq,
                id: echomesh_proto::wire::MsgId(last.id),
            });
        }
        out.extend(page.into_iter().map(|m| m.payload));
        if !more {
            return Ok(out);
        }
    }
}

/// Read every ozone back from node `reader` and judge the attempts: each acknowledged deposit
/// is served exactly once; nothing is served twice; nothing appears that nobody deposited.
pub fn check_deposits(
    lab: &Lab,
    reader: usize,
    proofs: &[OzoneProof],
    attempts: &[Attempt],
) -> Result<DepositReport, String> {
    let mut problems = Vec::new();
    let mut report = DepositReport::default();
    for (k, proof) in proofs.iter().enumerate() {
        let served = lab
            .rt
            .block_on(fetch_all(lab, reader, *proof))
            .map_err(|e| format!("cannot read ozone {k}: {e}"))?;
        let mut counts: HashMap<&Bytes, u32> = HashMap::new();
        for m in &served {
            *counts.entry(m).or_insert(0) += 1;
        }
        let mine: Vec<&Attempt> = attempts.iter().filter(|a| a.ozone == k).collect();
        let attempted: HashSet<&Bytes> = mine.iter().map(|a| &a.payload).collect();
        for a in &mine {
            if matches!(a.outcome, Outcome::Acked(_)) {
                report.acked += 1;
                if !counts.contains_key(&a.payload) {
                    problems.push(format!(
                        "ACKED BUT LOST: ozone {k}: {:?} (deposited through n{}) is not served by n{reader}",
                        String::from_utf8_lossy(&a.payload),
                        a.node
                    ));
                }
            } else if counts.contains_key(&a.payload) {
                report.unacked_but_kept += 1;
            }
        }
        for (m, n) in &counts {
            if *n > 1 {
                problems.push(format!(
                    "DUPLICATE: ozone {k}: {:?} served {n} times",
                    String::from_utf8_lossy(m)
                ));
            }
            if !attempted.contains(m) {
                problems.push(format!(
                    "FORGED: ozone {k}: {:?} was never deposited",
                    String::from_utf8_lossy(m)
                ));
            }
        }
        report.served += served.len() as u64;
    }
    report.attempts = attempts.len() as u64;
    if problems.is_empty() {
        Ok(report)
    } else {
        problems.truncate(20);
        Err(problems.join("\n"))
    }
}

#[derive(Debug, Default)]
pub struct DepositReport {
    pub attempts: u64,
    pub acked: u64,
    pub served: u64,
    /// Deposits that failed from the client's view but were kept (allowed: not a loss).
    pub unacked_but_kept: u64,
}
