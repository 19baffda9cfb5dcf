//! Drain: take a node out of service without losing anything, in this order:
//! 1. not ready at once (readyz 503); new client sessions are redirected to other nodes;
//! 2. neighbors are told it is draining (they place no new ozones on it), and its next
//!    announcement says so;
//! 3. connected clients are moved to other nodes, spread over `drain_client_grace_secs`;
//! 4. every ozone it holds is handed to its owners among the other in-service members
//!    (digest-compared, so only what they lack moves);
//! 5. neighbor queues are flushed;
//! 6. neighbors are told it left (a planned absence, not a failure): "safe to stop".
//!
//! `undrain` reverses it. SIGTERM runs the same sequence with a deadline before the node exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::node::Ctx;
use crate::ozone::service;
use crate::peer::rpc;
use crate::wire::{self, Departure, PeerRequest};

pub use echomesh_proto::admin::DrainStatus;

pub struct Drain {
    status: Mutex<DrainStatus>,
    started: Mutex<Option<Instant>>,
    /// Bumped by every drain/undrain, so an older drain task stops touching the status.
    generation: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            status: Mutex::new(DrainStatus {
                phase: "serving".into(),
                ..Default::default()
            }),
            started: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }
}

impl Drain {
    pub fn status(&self) -> DrainStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(t) = *self.started.lock().unwrap_or_else(|p| p.into_inner()) {
            s.elapsed_secs = t.elapsed().as_secs();
        }
        s
    }

    /// What this node tells the mesh about itself.
    pub fn departure(&self) -> Departure {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match (s.draining, s.safe_to_stop || s.phase == "leaving") {
            (false, _) => Departure::Up,
            (true, false) => Departure::Draining,
            (true, true) => Departure::Left,
        }
    }

    fn update(&self, gen: u64, f: impl FnOnce(&mut DrainStatus)) -> bool {
        if self.generation.load(Ordering::Acquire) != gen {
            return false;
        }
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
        true
    }

    fn reset(&self, s: DrainStatus, started: Option<Instant>) -> u64 {
        let gen = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = started;
        gen
    }
}

/// Start draining (idempotent: a drain in progress keeps going).
pub fn start(ctx: &Arc<Ctx>, deadline: Duration) -> DrainStatus {
    let d = &ctx.drain;
    if ctx.draining.swap(true, Ordering::SeqCst) {
        return d.status();
    }
    ctx.metrics.ready.set(0);
    let gen = d.reset(
        DrainStatus {
            draining: true,
            phase: "moving_clients".into(),
            ..Default::default()
        },
        Some(Instant::now()),
    );
    tracing::info!(
        deadline_secs = deadline.as_secs(),
        "draining: not ready, redirecting clients, handing off ozones"
    );
    let c = ctx.clone();
    ctx.tasks.spawn(async move { run(c, deadline, gen).await });
    d.status()
}

/// Serve again.
pub fn undrain(ctx: &Arc<Ctx>) -> DrainStatus {
    let d = &ctx.drain;
    d.reset(
        DrainStatus {
            phase: "serving".into(),
            ..Default::default()
        },
        None,
    );
    ctx.draining.store(false, Ordering::SeqCst);
    ctx.metrics.ready.set(1);
    tracing::info!("undrained: serving again");
    let c = ctx.clone();
    ctx.tasks
        .spawn(async move { tell_neighbors(&c, Departure::Up).await });
    d.status()
}

/// Tell every connected neighbor that understands it what this node's state is; returns how
/// many confirmed. The next announcement carries the same news to the rest of the mesh.
pub async fn tell_neighbors(ctx: &Arc<Ctx>, d: Departure) -> usize {
    ctx.topology.local_changed.notify_one();
    let mut calls = tokio::task::JoinSet::new();
    for n in ctx.neighbors().all() {
        if !n.is_up() || n.version() < wire::since::DEPARTURE {
            continue;
        }
        let c = ctx.clone();
        calls.spawn(async move { rpc::call(&c, &n, &PeerRequest::Departure(d)).await });
    }
    let mut told = 0;
    while let Some(r) = calls.join_next().await {
        match r {
            Ok(Ok(wire::PeerReply::Noted)) => told += 1,
            Ok(Ok(other)) => tracing::info!(reply = ?other, "neighbor did not note departure"),
            Ok(Err(e)) => tracing::info!(error = %e, "cannot tell a neighbor about departure"),
            Err(e) => tracing::error!(error = %e, "departure task failed"),
        }
    }
    tracing::info!(state = d.label(), told, "told neighbors");
    told
}

/// When a neighbor connects during a drain, it hears at once that this node is leaving.
pub fn on_neighbor_up(ctx: &Arc<Ctx>, n: Arc<crate::peer::Neighbor>) {
    let d = ctx.drain.departure();
    if d == Departure::Up || n.version() < wire::since::DEPARTURE {
        return;
    }
    let c = ctx.clone();
    ctx.tasks.spawn(async move {
        if let Err(e) = rpc::call(&c, &n, &PeerRequest::Departure(d)).await {
            tracing::info!(neighbor = %n.id, error = %e, "cannot tell a neighbor about departure");
        }
    });
}

#[tracing::instrument(name = "drain", skip_all, fields(deadline_secs = deadline.as_secs()))]
async fn run(ctx: Arc<Ctx>, deadline: Duration, gen: u64) {
    let until = Instant::now() + deadline;
    let d = &ctx.drain;
    let told = tell_neighbors(&ctx, Departure::Draining).await;
    d.update(gen, |s| s.neighbors_told = told);

    move_clients(&ctx, gen, deadline).await;

    if !d.update(gen, |s| s.phase = "handing_off".into()) {
        return;
    }
    let addrs = service::list(&ctx).await.unwrap_or_default();
    d.update(gen, |s| s.ozones_total = addrs.len());
    let mut failed = 0usize;
    for addr in addrs {
        if Instant::now() > until || !d.update(gen, |_| {}) {
            break;
        }
        let members = service::Members::now(&ctx);
        let mut ok = !members.pool.is_empty() || members.known == 1;
        for owner in members.owners(&addr) {
            if let Some(n) = members.peers.iter().find(|n| n.id == owner) {
                if service::sync_ozone(&ctx, n, addr).await.is_err() {
                    ok = false;
                }
            }
        }
        if !ok {
            failed += 1;
        }
        d.update(gen, |s| s.ozones_done += 1);
    }
    d.update(gen, |s| s.phase = "flushing".into());
    loop {
        let queued: usize = ctx.neighbors().all().iter().map(|n| n.queue.bytes()).sum();
        let clients = ctx.router.subscribers.sessions();
        d.update(gen, |s| {
            s.queued_bytes = queued;
            s.clients_connected = clients;
        });
        if queued == 0 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let timed_out = Instant::now() > until;
    if timed_out || failed > 0 {
        d.update(gen, |s| {
            s.phase = "timed_out".into();
            s.detail = Some(format!(
                "{} of {} ozones not handed off, {} bytes still queued",
                failed + s.ozones_total.saturating_sub(s.ozones_done),
                s.ozones_total,
                s.queued_bytes
            ));
        });
    } else if d.update(gen, |s| s.phase = "leaving".into()) {
        // Neighbors hear it directly, the rest of the mesh from the announcement, before
        // anyone is told it is safe to stop.
        let told = tell_neighbors(&ctx, Departure::Left).await;
        crate::topology::flood::announce_now(&ctx);
        d.update(gen, |s| {
            s.neighbors_told = told;
            s.phase = "done".into();
            s.safe_to_stop = true;
        });
    }
    let st = d.status();
    tracing::info!(phase = %st.phase, ozones = st.ozones_total, clients_moved = st.clients_moved,
        detail = ?st.detail, "drain finished");
}

/// How long a drain waits to learn of another serving node before it gives up moving clients.
/// Neighbors announce themselves about a second after they come up, so a drain right after a
/// start would otherwise find nobody to send its clients to.
const TARGETS_WAIT: Duration = Duration::from_secs(5);

/// Redirect targets, waiting (at most `limit`, while this drain is still the current one)
/// until the topology knows at least one.
async fn wait_for_targets(ctx: &Arc<Ctx>, gen: u64, limit: Duration) -> Vec<String> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let targets = crate::topology::flood::redirect_targets(ctx, 8);
        if !targets.is_empty()
            || tokio::time::Instant::now() >= until
            || !ctx.drain.update(gen, |_| {})
        {
            return targets;
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return targets,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Redirect every subscribed client session, spread evenly over the grace period so that the
/// other nodes are not hit by all of them at once.
async fn move_clients(ctx: &Arc<Ctx>, gen: u64, deadline: Duration) {
    let d = &ctx.drain;
    let subs = &ctx.router.subscribers;
    let sessions = subs.subscribed();
    d.update(gen, |s| s.clients_total = sessions.len());
    if sessions.is_empty() {
        return;
    }
    let grace = Duration::from_secs(ctx.cfg.drain_client_grace_secs).min(deadline / 3);
    let step = grace / sessions.len() as u32;
    let mut targets = wait_for_targets(ctx, gen, TARGETS_WAIT.min(deadline / 3)).await;
    for (i, id) in sessions.into_iter().enumerate() {
        if !d.update(gen, |_| {}) {
            return;
        }
        if i % 16 == 0 || targets.is_empty() {
            targets = crate::topology::flood::redirect_targets(ctx, 8);
        }
        if targets.is_empty() {
            tracing::warn!(
                "no other serving node known; connected clients stay until the node stops"
            );
            d.update(gen, |s| {
                s.detail = Some("no other serving node to move clients to".into())
            });
            return;
        }
        // Rotate the list so that clients spread over the other nodes.
        let k = i % targets.len();
        let rotated: Vec<String> = targets[k..].iter().chain(&targets[..k]).cloned().collect();
        if subs.redirect(id, &rotated, "this node is draining for maintenance") {
            ctx.metrics
                .clients_redirected
                .with_label_values(&["during_session"])
                .inc();
            d.update(gen, |s| s.clients_moved += 1);
        }
        tokio::time::sleep(step).await;
    }
}
