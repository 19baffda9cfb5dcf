//! The I/O side of the key directory: verifying bundles that arrive as echo packets before
//! they are flooded on, publishing bundles from clients, and offering the directory to a
//! neighbor that just came up.

use std::sync::Arc;

use super::{Fingerprint, KeyBundle, OfferError, Offered};
use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::limits::KEYDIR_SYNC_PAGE as SYNC_PAGE;
use crate::metrics::DropReason;
use crate::peer::rpc::{self, RpcError};
use crate::peer::Neighbor;
use crate::router::Origin;
use crate::tags;
use crate::verify::Checked;
use crate::wire::{since, PeerReply, PeerRequest, MAX_KEYDIR_ENTRIES};
use bytes::Bytes;
use echomesh_proto::keydir::{sync, BundleError};

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

/// Bring a neighbor that just came up up to date with this node's directory. A neighbor of
/// protocol ≥ `since::KEYDIR_DIGEST` is offered only the bundles it lacks or holds in another
/// version, found by digest (`keydir::sync`); an older one is offered the whole directory.
/// Both ends do this, so both directions converge.
pub async fn sync_neighbor(ctx: Arc<Ctx>, n: Arc<Neighbor>) {
    let m = &ctx.metrics;
    if n.version() < since::KEYDIR_DIGEST {
        let sent = offer_all(&ctx, &n).await;
        m.keydir_syncs.with_label_values(&["full"]).inc();
        if sent > 0 {
            tracing::debug!(neighbor = %n.id, bundles = sent, "offered the whole key directory to an older neighbor");
        }
        return;
    }
    match offer_difference(&ctx, &n).await {
        Ok(0) => {
            m.keydir_syncs.with_label_values(&["in_sync"]).inc();
        }
        Ok(offered) => {
            m.keydir_syncs.with_label_values(&["differed"]).inc();
            tracing::debug!(neighbor = %n.id, bundles = offered, "offered the key-directory difference to neighbor");
        }
        Err(e) => {
            m.keydir_syncs.with_label_values(&["failed"]).inc();
            // The next time the link comes up, it is tried again; bundles published meanwhile
            // flood as usual.
            tracing::info!(neighbor = %n.id, error = %e, "key-directory sync with neighbor failed");
        }
    }
}

/// Buckets asked for in one `KeydirEntries` request.
const ENTRY_BUCKETS_PER_REQUEST: usize = 16;

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    #[error("shutting down")]
    Stopped,
}

/// Compare digests with the neighbor and offer what it lacks; returns how many bundles.
async fn offer_difference(ctx: &Ctx, n: &Neighbor) -> Result<usize, SyncError> {
    let theirs = match rpc::call(ctx, n, &PeerRequest::KeydirDigest).await? {
        PeerReply::KeydirDigest(d) => d,
        other => return Err(SyncError::Unexpected(format!("{other:?}"))),
    };
    let mine = ctx.keydir.digests().await?;
    let buckets = sync::differing(&mine, &theirs);
    let half = ctx.cfg.limits.neighbor_queue_bytes / 2;
    let mut offered = 0;
    for chunk in buckets.chunks(ENTRY_BUCKETS_PER_REQUEST) {
        let req = PeerRequest::KeydirEntries {
            buckets: chunk.to_vec(),
        };
        // A cut list (a huge bucket) only makes this offer more than needed.
        let their_entries = match rpc::call(ctx, n, &req).await? {
            PeerReply::KeydirEntries { entries, .. } => entries,
            other => return Err(SyncError::Unexpected(format!("{other:?}"))),
        };
        let (my_entries, _) = ctx.keydir.entries(chunk.to_vec(), usize::MAX).await?;
        let want = sync::to_offer(&my_entries, &their_entries);
        for page in want.chunks(SYNC_PAGE) {
            let records = ctx.keydir.records(page.to_vec()).await?;
            if !offer(ctx, n, records, half).await {
                return Err(SyncError::Stopped);
            }
            offered += page.len();
        }
    }
    Ok(offered)
}

/// Queue bundle records for a neighbor, never filling more than `half` of its queue (echo
/// traffic keeps the other half); false when the node stops first.
async fn offer(ctx: &Ctx, n: &Neighbor, records: Vec<Vec<u8>>, half: usize) -> bool {
    let bytes: usize = records.iter().map(Vec::len).sum();
    let packets: Vec<EchoPacket> = records
        .into_iter()
        .map(|raw| bundle_packet(ctx, raw))
        .collect();
    if !n.wait_room(half, &ctx.shutdown).await {
        return false;
    }
    let dropped = n.push_packets(&packets, ctx.router.own_tree());
    ctx.metrics
        .count_drop(DropReason::NeighborQueueFull, dropped);
    ctx.metrics
        .keydir_sync_offered
        .inc_by(packets.len() as u64 - dropped);
    ctx.metrics.keydir_sync_bytes.inc_by(bytes as u64);
    true
}

/// Offer the whole directory, a page at a time (a neighbor older than digest sync).
async fn offer_all(ctx: &Ctx, n: &Neighbor) -> usize {
    let half = ctx.cfg.limits.neighbor_queue_bytes / 2;
    let mut after: Option<Fingerprint> = None;
    let mut sent = 0usize;
    loop {
        let page = match ctx.keydir.page(after, SYNC_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(neighbor = %n.id, error = %e, "key directory sync stopped: storage error");
                return sent;
            }
        };
        let Some(last) = page.last().map(|(fp, _)| *fp) else {
            break;
        };
        after = Some(last);
        let n_page = page.len();
        if !offer(ctx, n, page.into_iter().map(|(_, raw)| raw).collect(), half).await {
            return sent;
        }
        sent += n_page;
    }
    sent
}

/// Answer a neighbor's `KeydirDigest`.
pub async fn serve_digest(ctx: &Ctx) -> PeerReply {
    match ctx.keydir.digests().await {
        Ok(d) => PeerReply::KeydirDigest(d),
        Err(e) => PeerReply::Error {
            message: format!("key directory: {e}"),
        },
    }
}

/// Answer a neighbor's `KeydirEntries` (at most `MAX_KEYDIR_ENTRIES`; buckets named twice
/// count once).
pub async fn serve_entries(ctx: &Ctx, mut buckets: Vec<u8>) -> PeerReply {
    buckets.sort_unstable();
    buckets.dedup();
    match ctx.keydir.entries(buckets, MAX_KEYDIR_ENTRIES).await {
        Ok((entries, complete)) => PeerReply::KeydirEntries { entries, complete },
        Err(e) => PeerReply::Error {
            message: format!("key directory: {e}"),
        },
    }
}
