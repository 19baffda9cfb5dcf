//! The failure detector's driver (the machine is `echomesh_proto::membership`): heartbeats
//! sent and heard on each neighbor connection as QUIC datagrams, and one ticker that runs every
//! member's timers, acts on the verdicts (a failed neighbor's connections are closed, so
//! placement, redirects and the dialer react as to any lost link) and notices when this node
//! itself was not running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use echomesh_proto::membership::Change;

use crate::ctx::Ctx;
use crate::peer::Neighbor;
use crate::wire::{self, close};

/// How often every member's timers run.
pub const TICK: Duration = Duration::from_millis(50);
/// A tick this late means the process did not run (stalled, suspended, starved of CPU).
const PAUSE: Duration = Duration::from_millis(250);

/// Heartbeats on one connection: sends one every `peer.heartbeat_ms`, feeds those that arrive
/// to the neighbor's member machine. Returns when the connection is lost. A neighbor older
/// than protocol `since::HEARTBEAT` neither sends nor expects them.
pub async fn heartbeats(ctx: &Ctx, n: &Neighbor, conn: &quinn::Connection) -> String {
    if n.version() < wire::since::HEARTBEAT {
        // The session already waits for the connection to close.
        return std::future::pending().await;
    }
    let beat = Bytes::from_static(wire::HEARTBEAT);
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.cfg.peer.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (sent, received) = (
        ctx.metrics.heartbeats.with_label_values(&["sent"]),
        ctx.metrics.heartbeats.with_label_values(&["received"]),
    );
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => match conn.send_datagram(beat.clone()) {
                Ok(()) => sent.inc(),
                Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                    return format!("connection lost: {e}");
                }
                Err(e) => {
                    // Datagrams refused by the peer's QUIC stack: the detector will fail it,
                    // which says more than silence would.
                    if !warned {
                        tracing::warn!(neighbor = %n.id, error = %e, "cannot send heartbeats");
                        warned = true;
                    }
                }
            },
            d = conn.read_datagram() => match d {
                Ok(d) if d.as_ref() == wire::HEARTBEAT => {
                    received.inc();
                    if n.heard(Instant::now()) == Some(Change::Cleared) {
                        tracing::info!(neighbor = %n.id, "suspect neighbor heard again: alive");
                    }
                }
                Ok(d) => {
                    ctx.metrics
                        .frame_errors
                        .with_label_values(&["unexpected", "peer"])
                        .inc();
                    tracing::debug!(neighbor = %n.id, len = d.len(), "ignoring an unknown datagram");
                }
                Err(e) => return format!("connection lost: {e}"),
            },
        }
    }
}

/// Run every member's timers every [`TICK`] until the node stops.
pub async fn run(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let late = now.saturating_duration_since(last).saturating_sub(TICK);
        last = now;
        let neighbors = ctx.neighbors().all();
        if late >= PAUSE {
            ctx.metrics.node_paused.inc();
            tracing::info!(
                late_ms = late.as_millis() as u64,
                "this node did not run for a while; not holding it against its neighbors"
            );
            for n in &neighbors {
                n.paused(late, now);
            }
        }
        for n in &neighbors {
            if let Some(change) = n.member_timeout(now) {
                on_change(&ctx, n, change);
            }
        }
    }
}

fn on_change(ctx: &Ctx, n: &Neighbor, change: Change) {
    match change {
        Change::Suspected { silent } => {
            tracing::info!(neighbor = %n.id, silent_ms = silent.as_millis() as u64,
                "neighbor suspect: no heartbeat");
        }
        Change::Failed { silent } => {
            ctx.metrics
                .failure_detection_seconds
                .observe(silent.as_secs_f64());
            tracing::warn!(neighbor = %n.id, silent_ms = silent.as_millis() as u64,
                "neighbor failed: no heartbeat; closing its connections and dialing it again");
            n.close_all(close::SILENT, b"no heartbeat");
        }
        Change::ConfirmedFailed => {
            tracing::warn!(neighbor = %n.id, "neighbor still down after {} s: confirmed failed",
                echomesh_proto::membership::CONFIRM.as_secs());
        }
        _ => {}
    }
}
