//! Echo repair: a neighbor gets what it missed.
//!
//! Flooding over QUIC streams loses packets when a connection dies (its queue, the batch being
//! written and whatever QUIC had not delivered go with it), while a neighbor is down, and when
//! a neighbor's queue overflows. Each of those marks the neighbor as owed from a position in
//! the node's packet log (`Neighbor::owe_from`): at a connection's end, the position of
//! `OWED_WINDOW_FACTOR` idle timeouts ago (nothing older can still be unacknowledged in a
//! connection that lived); for a queue overflow, the batch that did not fit; for a new
//! neighbor, the whole log. While a connection is up, this loop offers the owed packets' IDs
//! (`PeerRequest::EchoHave`, a page at a time, only while the neighbor's queue has room), the
//! neighbor answers with the ones its seen-cache lacks (`EchoWant`), and those are queued on
//! the echo stream like any forwarded packet. The pull is the same one lazy push uses for its
//! grafts. What left the log before it could be offered is counted
//! (`echomesh_echo_repair_missed_total`): the log's bounds (`echo.log_bytes`, `echo.log_secs`)
//! are the bounds of this guarantee.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;
pub use crate::limits::MAX_OFFER;
use crate::limits::MAX_SCAN;
pub use crate::limits::OWED_WINDOW_FACTOR;
use crate::limits::REPAIR_TICK as TICK;
use crate::metrics::DropReason;
use crate::peer::rpc::{self, RpcError};
use crate::peer::Neighbor;
use crate::wire::{self, MsgId, PeerReply, PeerRequest};

/// Mark what a neighbor may have lost with a connection that just ended.
pub fn connection_ended(ctx: &Ctx, n: &Neighbor) {
    let window = Duration::from_millis(ctx.cfg.peer.idle_timeout_ms) * OWED_WINDOW_FACTOR;
    let since = Instant::now()
        .checked_sub(window)
        .unwrap_or_else(Instant::now);
    n.owe_from(ctx.router.log_position_at(since));
}

/// Offer a neighbor what it is owed, for as long as `conn` lives.
pub async fn run(ctx: Arc<Ctx>, n: Arc<Neighbor>, conn: quinn::Connection) {
    if n.version() < wire::since::ECHO_REPAIR {
        return;
    }
    let room = ctx.cfg.limits.neighbor_queue_bytes / 2;
    loop {
        while n.is_owed() && n.queue.bytes() < room && conn.close_reason().is_none() {
            let guard = n.repairing.lock().await;
            let Some(from) = n.take_owed() else { break };
            match page(&ctx, &n, from).await {
                Ok(Some(next)) => n.owe_from(next),
                Ok(None) => {}
                Err(e) => {
                    n.owe_from(from);
                    tracing::debug!(neighbor = %n.id, error = %e, "echo repair offer failed; will retry");
                    drop(guard);
                    break;
                }
            }
        }
        tokio::select! {
            _ = conn.closed() => return,
            _ = ctx.shutdown.cancelled() => return,
            _ = n.repair_wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Offer one page from `from`; returns where the next page starts, or `None` when caught up.
async fn page(ctx: &Ctx, n: &Neighbor, from: u64) -> Result<Option<u64>, RpcError> {
    let m = &ctx.metrics;
    let offer = ctx.router.offers(from, n.id, MAX_OFFER, MAX_SCAN);
    if offer.missed > 0 {
        m.echo_repair_missed.inc_by(offer.missed);
        tracing::warn!(neighbor = %n.id, missed = offer.missed,
            "packets owed to a neighbor left the packet log before they could be offered (raise echo.log_bytes / echo.log_secs?)");
    }
    if !offer.ids.is_empty() {
        let ids: Vec<MsgId> = offer.ids.iter().map(|(_, id)| MsgId(*id)).collect();
        let wanted = match rpc::call(ctx, n, &PeerRequest::EchoHave(ids)).await? {
            PeerReply::EchoWant(idx) => idx,
            other => return Err(RpcError::Io(format!("unexpected answer {other:?}"))),
        };
        m.echo_repair_offered.inc_by(offer.ids.len() as u64);
        let want: Vec<(u64, [u8; 32])> = wanted
            .iter()
            .filter_map(|&i| offer.ids.get(i as usize).copied())
            .collect();
        if !want.is_empty() {
            let packets = ctx.router.logged(&want);
            let dropped = n.queue.push_all(&packets);
            m.echo_repair_resent.inc_by(packets.len() as u64 - dropped);
            tracing::debug!(neighbor = %n.id, offered = offer.ids.len(), resent = packets.len(), "echo repair");
            if dropped > 0 {
                m.count_drop(DropReason::NeighborQueueFull, dropped);
                // Offer the page again once the queue has room.
                return Ok(Some(from));
            }
        }
    }
    Ok((offer.next < ctx.router.log_head()).then_some(offer.next))
}
