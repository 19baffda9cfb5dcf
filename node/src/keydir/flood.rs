//! The I/O side of the key directory: verifying bundles that arrive as echo packets before
//! they are flooded on, publishing bundles from clients, and offering the directory to a
//! neighbor that just came up.

use std::sync::Arc;

use super::{Fingerprint, KeyBundle, OfferError, Offered};
use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::limits::KEYDIR_SYNC_PAGE as SYNC_PAGE;
use crate::metrics::DropReason;
use crate::peer::Neighbor;
use crate::router::Origin;
use crate::tags;
use crate::verify::Checked;
use bytes::Bytes;
use echomesh_proto::keydir::BundleError;

/// Verify one key-bundle packet handed over by the router (`verify::run`): it travels on only
/// if it changed the directory.
pub async fn verify(ctx: Arc<Ctx>, origin: Origin, pkt: EchoPacket) -> Checked {
    let bundle = match KeyBundle::decode(&pkt.payload) {
        Ok(b) => b,
        Err(e) => {
            ctx.keydir.count_rejected(&e);
            tracing::info!(?origin, error = %e, "undecodable key bundle packet dropped");
            return Checked::Refused;
        }
    };
    match ctx.keydir.offer(bundle, origin.label()).await {
        Ok(o) if o.changed() => Checked::Forward(pkt),
        Ok(_) => Checked::Refused,
        Err(OfferError::Store(_)) | Err(OfferError::Bundle(BundleError::Future(_))) => {
            Checked::NotNow
        }
        Err(_) => Checked::Refused,
    }
}

/// The echo packet that carries a bundle through the mesh.
pub fn bundle_packet(ctx: &Ctx, encoded: Vec<u8>) -> EchoPacket {
    EchoPacket::new(
        Bytes::from(encoded),
        ctx.cfg.echo.default_hops,
        Some(tags::keydir_tag()),
    )
}

/// Publish a bundle from a client: verify, store, flood. Errors are for the client.
pub async fn publish(ctx: &Ctx, bundle: KeyBundle) -> Result<Offered, OfferError> {
    let encoded = bundle
        .encode()
        .map_err(|e| OfferError::Bundle(super::BundleError::Undecodable(e.to_string())))?;
    let outcome = ctx.keydir.offer(bundle, "client").await?;
    if outcome.changed() {
        ctx.router
            .forward_verified(Origin::Client, vec![bundle_packet(ctx, encoded)]);
    }
    Ok(outcome)
}

/// Offer the whole directory to a neighbor that just came up, a page at a time, never filling
/// more than half its queue. The neighbor keeps what is new to it and floods that on; nodes
/// that were down or on the other side of a partition catch up this way.
pub async fn sync_neighbor(ctx: Arc<Ctx>, n: Arc<Neighbor>) {
    let half = ctx.cfg.limits.neighbor_queue_bytes / 2;
    let mut after: Option<Fingerprint> = None;
    let mut sent = 0usize;
    loop {
        let page = match ctx.keydir.page(after, SYNC_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(neighbor = %n.id, error = %e, "key directory sync stopped: storage error");
                return;
            }
        };
        let Some(last) = page.last().map(|(fp, _)| *fp) else {
            break;
        };
        after = Some(last);
        let packets: Vec<EchoPacket> = page
            .into_iter()
            .map(|(_, raw)| bundle_packet(&ctx, raw))
            .collect();
        // Pace on the neighbor's queue: echo traffic keeps the other half.
        if !n.wait_room(half, &ctx.shutdown).await {
            return;
        }
        let dropped = n.push_packets(&packets, ctx.router.own_tree());
        ctx.metrics
            .count_drop(DropReason::NeighborQueueFull, dropped);
        sent += packets.len() - dropped as usize;
    }
    if sent > 0 {
        tracing::debug!(neighbor = %n.id, bundles = sent, "offered key directory to neighbor");
    }
}
