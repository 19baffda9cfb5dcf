//! The cluster's Smoke records travel the mesh like key bundles: echo packets with
//! [`tags::smoke_tag`], applied before they are flooded on (only a record that changed
//! something travels further, which ends every flood), and offered in full to a neighbor
//! that comes up, so a node that was down catches up.

use std::sync::Arc;

use bytes::Bytes;
use echomesh_proto::smoke::record::Record;

use super::Applied;
use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::metrics::DropReason;
use crate::peer::Neighbor;
use crate::router::Origin;
use crate::store::StoreError;
use crate::tags;
use crate::verify::Checked;

fn packet(ctx: &Ctx, r: &Record) -> EchoPacket {
    EchoPacket::new(
        Bytes::from(r.encode()),
        ctx.cfg.echo.default_hops,
        Some(tags::smoke_tag()),
    )
}

/// Apply one record packet handed over by the router; flood it on if it changed something.
pub async fn verify(ctx: Arc<Ctx>, origin: Origin, pkt: EchoPacket) -> Checked {
    let r = match Record::decode(&pkt.payload) {
        Ok(r) => r,
        Err(e) => {
            ctx.metrics
                .smoke
                .records
                .with_label_values(&["refused"])
                .inc();
            tracing::info!(?origin, error = %e, "undecodable Smoke record dropped");
            return Checked::Refused;
        }
    };
    match ctx.smoke.apply(r).await {
        Ok(Applied::Changed) => Checked::Forward(pkt),
        Ok(_) => Checked::Refused,
        Err(e) => {
            tracing::warn!(error = %e, "cannot store a Smoke record; it may be offered again");
            Checked::NotNow
        }
    }
}

/// Apply a record made here (API, captured keys, a registration) and flood it.
pub async fn publish(ctx: &Ctx, r: Record) -> Result<Applied, StoreError> {
    let pkt = packet(ctx, &r);
    let outcome = ctx.smoke.apply(r).await?;
    if outcome == Applied::Changed {
        ctx.router.forward_verified(Origin::Client, vec![pkt]);
    }
    Ok(outcome)
}

/// Offer every record to a neighbor that just came up, paced on its queue.
pub async fn sync_neighbor(ctx: Arc<Ctx>, n: Arc<Neighbor>) {
    let records = ctx.smoke.records().await;
    if records.is_empty() {
        return;
    }
    let half = ctx.cfg.limits.neighbor_queue_bytes / 2;
    for chunk in records.chunks(64) {
        if !n.wait_room(half, &ctx.shutdown).await {
            return;
        }
        let packets: Vec<EchoPacket> = chunk.iter().map(|r| packet(&ctx, r)).collect();
        let dropped = n.push_packets(&packets, ctx.router.own_tree());
        ctx.metrics
            .count_drop(DropReason::NeighborQueueFull, dropped);
    }
    tracing::debug!(neighbor = %n.id, records = records.len(), "offered the Smoke records to a neighbor");
}

/// Add the ozones of `smoke.ozones` that the cluster does not have (at start).
pub async fn add_configured_ozones(ctx: &Ctx) {
    for a in &ctx.cfg.smoke.ozones {
        let a = a.trim();
        if ctx.smoke.view().ozones.iter().any(|(x, _)| x == a) {
            continue;
        }
        let r = Record {
            key: echomesh_proto::smoke::record::ozone_key(a),
            at_ms: echomesh_proto::clock::unix_ms(),
            value: echomesh_proto::smoke::record::Value::Ozone,
        };
        match publish(ctx, r).await {
            Ok(Applied::Full) => {
                tracing::warn!(ozone = %a, "configured Smoke ozone not added: the cluster's Smoke configuration is full")
            }
            Ok(_) => tracing::info!(ozone = %a, "configured Smoke ozone added to the cluster"),
            Err(e) => {
                tracing::error!(ozone = %a, error = %e, "cannot store a configured Smoke ozone")
            }
        }
    }
}
