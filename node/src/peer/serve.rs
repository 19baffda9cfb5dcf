//! Answering a neighbor's RPCs (the other end of `peer::rpc`): ozone copies, digests and
//! acknowledgements, departures, echo repair offers.

use super::rpc::RPC_TIMEOUT;
use crate::ctx::Ctx;
use crate::peer::Neighbor;
use crate::wire::{self, PeerReply, PeerRequest};
use std::sync::Arc;
use tracing::Instrument;

/// Answer the neighbor's requests on this connection until it ends.
pub async fn run(ctx: Arc<Ctx>, n: Arc<Neighbor>, conn: quinn::Connection) {
    let max = ctx.cfg.limits.max_frame_bytes;
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let ctx = ctx.clone();
        let n = n.clone();
        // QUIC's stream limit (peer.max_concurrent_bidi_streams) bounds these tasks.
        ctx.tasks.clone().spawn(async move {
            let mut buf = Vec::new();
            let req = match tokio::time::timeout(
                RPC_TIMEOUT,
                echomesh_client::framing::read_frame::<_, PeerRequest>(&mut recv, max, &mut buf),
            )
            .await
            {
                Ok(Ok(Some(r))) => r,
                Ok(Err(e)) => {
                    ctx.metrics
                        .frame_errors
                        .with_label_values(&[e.kind(), "peer"])
                        .inc();
                    tracing::warn!(neighbor = %n.id, error = %e, "bad request frame from neighbor");
                    return;
                }
                _ => return,
            };
            // An optional trace context follows the request (the sender has finished its side,
            // so this ends at once when there is none).
            let tc = tokio::time::timeout(
                RPC_TIMEOUT,
                echomesh_client::framing::read_frame::<_, wire::TraceContext>(
                    &mut recv,
                    wire::MAX_TRACE_CONTEXT_FRAME,
                    &mut buf,
                ),
            )
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
            let span = match &req {
                PeerRequest::OzoneStore(_) => tracing::info_span!("ozone.store", neighbor = %n.id),
                PeerRequest::OzoneAck { .. } => tracing::info_span!("ozone.ack", neighbor = %n.id),
                PeerRequest::OzoneFetch { .. } => {
                    tracing::info_span!("ozone.fetch", neighbor = %n.id)
                }
                PeerRequest::OzoneDigest { .. } => {
                    tracing::info_span!("ozone.digest", neighbor = %n.id)
                }
                PeerRequest::Departure(_) => {
                    tracing::info_span!("peer.departure", neighbor = %n.id)
                }
                PeerRequest::EchoHave(_) => {
                    tracing::debug_span!("echo.repair", neighbor = %n.id)
                }
                PeerRequest::KeydirDigest | PeerRequest::KeydirEntries { .. } => {
                    tracing::debug_span!("keydir.sync", neighbor = %n.id)
                }
            };
            let keydir = matches!(
                req,
                PeerRequest::KeydirDigest | PeerRequest::KeydirEntries { .. }
            );
            crate::telemetry::follow(&span, tc.as_ref());
            let reply = answer(&ctx, &n, req).instrument(span).await;
            if let Ok(b) = wire::encode(&reply) {
                if keydir {
                    ctx.metrics.keydir_sync_bytes.inc_by(b.len() as u64);
                }
                let _ = send.write_all(&b).await;
                let _ = send.finish();
            }
        });
    }
}

/// Answer one request of a neighbor.
async fn answer(ctx: &Arc<Ctx>, n: &Neighbor, req: PeerRequest) -> PeerReply {
    if let PeerRequest::Departure(d) = req {
        tracing::info!(neighbor = %n.id, state = d.label(), "neighbor announced its departure state");
        n.set_departure(d);
        ctx.topology.local_changed.notify_one();
        return PeerReply::Noted;
    }
    if let PeerRequest::EchoHave(ids) = req {
        // Echo repair is for every neighbor, federated ones included: it is plain flooding.
        let ids: Vec<[u8; 32]> = ids
            .into_iter()
            .take(crate::peer::repair::MAX_OFFER)
            .map(|i| i.0)
            .collect();
        return PeerReply::EchoWant(ctx.router.pull_offered(&ids));
    }
    // The key directory is the whole mesh's, federated neighbors included.
    match req {
        PeerRequest::KeydirDigest => return crate::keydir::flood::serve_digest(ctx).await,
        PeerRequest::KeydirEntries { buckets } => {
            return crate::keydir::flood::serve_entries(ctx, buckets).await
        }
        _ => {}
    }
    // Replication is for members of our cluster only: a federated neighbor from another
    // cluster relays echo packets but may not read, write or delete our ozones.
    if n.cluster().as_deref() == Some(ctx.cfg.cluster.as_str()) {
        crate::ozone::service::serve_peer(ctx, req).await
    } else {
        tracing::warn!(neighbor = %n.id, cluster = ?n.cluster(), "refusing an ozone request from a neighbor outside our cluster");
        PeerReply::Error {
            message: format!("not a member of cluster {:?}", ctx.cfg.cluster),
        }
    }
}
