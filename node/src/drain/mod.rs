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
//!
//! The sequence itself is `echomesh_proto::drain::Drain`, a state machine; this module is its
//! driver: one task that turns the machine's actions into RPCs, redirects and storage calls,
//! and feeds their results back as events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use echomesh_proto::drain::{self as machine, In, Out, Phase};

use crate::ctx::Ctx;
use crate::ozone::service;
use crate::peer::rpc::{self, FanOut};
use crate::wire::{self, Departure, PeerRequest};

pub mod state;

pub use echomesh_proto::admin::DrainStatus;
pub use state::Drain;

/// Start draining (idempotent: a drain in progress keeps going).
pub fn start(ctx: &Arc<Ctx>, deadline: Duration) -> DrainStatus {
    if !ctx.drain.is_draining() {
        tracing::info!(
            deadline_secs = deadline.as_secs(),
            "draining: not ready, redirecting clients, handing off ozones"
        );
    }
    let grace = Duration::from_secs(ctx.cfg.drain_client_grace_secs);
    ctx.drain.handle(In::Start { deadline, grace });
    ctx.drain.wake.notify_one();
    ctx.drain.status()
}

/// Serve again.
pub fn undrain(ctx: &Arc<Ctx>) -> DrainStatus {
    ctx.drain.handle(In::Undrain);
    ctx.drain.wake.notify_one();
    tracing::info!("undrained: serving again");
    ctx.drain.status()
}

/// The drain driver: runs for the node's lifetime.
pub async fn run(ctx: Arc<Ctx>) {
    let mut io: tokio::task::JoinSet<In> = tokio::task::JoinSet::new();
    loop {
        loop {
            let next = ctx.drain.machine().poll();
            let Some(action) = next else { break };
            if let Some(e) = act(&ctx, action, &mut io) {
                ctx.drain.handle(e);
            }
        }
        let timeout = ctx.drain.machine().poll_timeout();
        let sleep = async {
            match timeout {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ctx.drain.wake.notified() => {}
            Some(r) = io.join_next(), if !io.is_empty() => match r {
                Ok(e) => ctx.drain.handle(e),
                Err(e) => tracing::error!(error = %e, "drain task failed"),
            },
            _ = sleep => ctx.drain.machine().handle_timeout(Instant::now()),
        }
    }
}

/// Carry out one action: answer a query at once, or start IO whose result comes back as an
/// event through `io`.
fn act(ctx: &Arc<Ctx>, action: Out, io: &mut tokio::task::JoinSet<In>) -> Option<In> {
    match action {
        Out::SetReady(ready) => {
            ctx.metrics.ready.set(i64::from(ready));
            None
        }
        Out::TellNeighbors { run, departure } => {
            let c = ctx.clone();
            io.spawn(async move {
                let told = tell_neighbors(&c, departure).await;
                In::NeighborsTold {
                    run,
                    departure,
                    told,
                }
            });
            None
        }
        Out::ListSessions { run } => Some(In::Sessions {
            run,
            sessions: ctx.router.subscribers.subscribed(),
        }),
        Out::FindTargets { run } => Some(In::Targets {
            run,
            targets: crate::topology::flood::redirect_targets(ctx, machine::MAX_REDIRECT_TARGETS),
        }),
        Out::Redirect {
            run,
            session,
            targets,
        } => {
            let moved = ctx.router.subscribers.redirect(
                session,
                &targets,
                "this node is draining for maintenance",
            );
            if moved {
                ctx.metrics
                    .clients_redirected
                    .with_label_values(&["during_session"])
                    .inc();
            }
            Some(In::Redirected { run, moved })
        }
        Out::ListOzones { run } => {
            let c = ctx.clone();
            io.spawn(async move {
                let ozones = match service::list(&c).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "drain: cannot list the ozones to hand off");
                        Vec::new()
                    }
                };
                In::Ozones { run, ozones }
            });
            None
        }
        Out::HandOff { run, addr } => {
            let c = ctx.clone();
            io.spawn(async move {
                let ok = service::hand_off(&c, addr).await;
                In::HandedOff { run, ok }
            });
            None
        }
        Out::MeasureQueues { run } => Some(In::Queues {
            run,
            queued_bytes: ctx.neighbors().all().iter().map(|n| n.queue.bytes()).sum(),
            clients_connected: ctx.router.subscribers.sessions(),
        }),
        Out::Announce => {
            crate::topology::flood::announce_now(ctx);
            None
        }
        Out::Finished(phase) => {
            let st = ctx.drain.status();
            let level_warn = phase == Phase::TimedOut;
            if level_warn {
                tracing::warn!(phase = phase.label(), ozones = st.ozones_total, clients_moved = st.clients_moved,
                    detail = ?st.detail, "drain finished");
            } else {
                tracing::info!(
                    phase = phase.label(),
                    ozones = st.ozones_total,
                    clients_moved = st.clients_moved,
                    "drain finished"
                );
            }
            None
        }
    }
}

/// Tell every connected neighbor that understands it what this node's state is; returns how
/// many confirmed. The next announcement carries the same news to the rest of the mesh.
pub async fn tell_neighbors(ctx: &Arc<Ctx>, d: Departure) -> usize {
    ctx.topology.local_changed.notify_one();
    let listening = ctx
        .neighbors()
        .all()
        .into_iter()
        .filter(|n| n.is_up() && n.version() >= wire::since::DEPARTURE);
    let mut calls = FanOut::start(ctx, listening, &PeerRequest::Departure(d), |_| {
        tracing::Span::none()
    });
    let mut told = 0;
    while let Some((id, r)) = calls.next().await {
        match r {
            Ok(wire::PeerReply::Noted) => told += 1,
            Ok(other) => {
                tracing::info!(neighbor = %id, reply = ?other, "neighbor did not note departure")
            }
            Err(e) => {
                tracing::info!(neighbor = %id, error = %e, "cannot tell a neighbor about departure")
            }
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
