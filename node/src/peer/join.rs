//! Invite/join over ALPN `echomesh-join/1`: the joiner dials the inviter, pinning it by the
//! token's fingerprint, and presents the token's secret; the inviter pins the joiner's
//! certificate. Both persist the new neighbor and start peering.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::ctx::Ctx;
use crate::echo::EchoMode;
use crate::invite::{InviteToken, TokenError};
use crate::metrics::HandshakeReason;
use crate::store::{NeighborOrigin, NeighborRecord};
use crate::transport;
use crate::wire::{self, close, JoinRefusal, JoinRequest, JoinResponse};
use echomesh_client::tls;
use echomesh_proto::clock::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("this token was made by this node; run `join` on the other node")]
    OwnToken,
    #[error("cannot reach the inviting node at {addr}: {msg}")]
    Unreachable { addr: String, msg: String },
    #[error("the node at {addr} is not the one that made the invite (fingerprint mismatch); check the address")]
    WrongNode { addr: String },
    #[error("the inviting node refused: {}", .0.explain())]
    Refused(JoinRefusal),
    #[error("join protocol error: {0}")]
    Protocol(String),
    #[error("could not record the neighbor locally: {0}")]
    Local(String),
}

/// Joiner side: use `token` to pin ourselves to the inviter, then peer with it.
#[tracing::instrument(name = "join", skip_all)]
pub async fn join(ctx: &Arc<Ctx>, token: &str) -> Result<NeighborRecord, JoinError> {
    let t = InviteToken::decode(token, unix_now())?;
    if t.id == ctx.identity.id {
        return Err(JoinError::OwnToken);
    }
    let unreachable = |msg: String| JoinError::Unreachable {
        addr: t.addr.clone(),
        msg,
    };
    let remote = transport::resolve(&t.addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (cfg, verifier) = transport::dial_config(
        Some(&ctx.identity),
        Some(t.id),
        wire::ALPN_JOIN,
        &ctx.cfg.peer.tuning(),
    )
    .map_err(|e| JoinError::Protocol(e.to_string()))?;
    let connecting = ctx
        .endpoint
        .connect_with(cfg, remote, transport::SERVER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    let timeout = Duration::from_millis(ctx.cfg.peer.handshake_timeout_ms);
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if verifier.observed().1 {
                ctx.metrics
                    .handshake_failed(HandshakeReason::WrongFingerprint);
                return Err(JoinError::WrongNode {
                    addr: t.addr.clone(),
                });
            }
            return Err(unreachable(e.to_string()));
        }
        Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
    };
    let req = JoinRequest {
        version: wire::PROTOCOL_VERSION,
        secret: t.secret,
        advertise: Some(ctx.advertise.clone()),
        cluster: ctx.cfg.cluster.clone(),
    };
    let resp = tokio::time::timeout(timeout, async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut frame = wire::encode(&req).map_err(|e| e.to_string())?.to_vec();
        // Optional: inviters that predate it answer without reading it.
        if let Some(tc) = crate::telemetry::trace_context() {
            let _ = wire::encode_into(&tc, &mut frame);
        }
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let mut buf = Vec::new();
        echomesh_client::framing::read_frame::<_, JoinResponse>(&mut recv, 64 * 1024, &mut buf)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "inviter closed the stream without answering".to_string())
    })
    .await
    .map_err(|_| JoinError::Protocol("no answer to the join request".into()))?
    .map_err(JoinError::Protocol)?;
    conn.close(quinn::VarInt::from_u32(close::NORMAL), b"joined");
    match resp {
        JoinResponse::Refused { reason } => Err(JoinError::Refused(reason)),
        JoinResponse::Accepted { node_id, cluster } => {
            if node_id != t.id {
                return Err(JoinError::Protocol(
                    "inviter answered with another node ID".into(),
                ));
            }
            if cluster != ctx.cfg.cluster {
                tracing::warn!(their_cluster = %cluster, our_cluster = %ctx.cfg.cluster,
                    "joined a node of another cluster: echo packets flow, ozones are not shared");
            }
            let rec = NeighborRecord {
                id: t.id,
                addr: Some(t.addr.clone()),
                mode: EchoMode::Full,
                origin: NeighborOrigin::Joined,
                added_unix: unix_now(),
            };
            crate::peer::session::add_neighbor(ctx, rec.clone())
                .await
                .map_err(|e| JoinError::Local(format!("{e:#}")))?;
            tracing::info!(neighbor = %t.id, addr = %t.addr, "joined; neighbor pinned");
            Ok(rec)
        }
    }
}

/// Inviter side of a join connection.
pub async fn serve_inbound(ctx: Arc<Ctx>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let Some(joiner) = tls::peer_id(&conn) else {
        ctx.metrics.handshake_failed(HandshakeReason::NoCertificate);
        ctx.metrics
            .joins
            .with_label_values(&["no_certificate"])
            .inc();
        conn.close(
            quinn::VarInt::from_u32(close::UNPINNED),
            b"certificate required to join",
        );
        return;
    };
    let timeout = Duration::from_millis(ctx.cfg.peer.handshake_timeout_ms);
    let res = tokio::time::timeout(timeout, async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| ("io", e.to_string()))?;
        let mut buf = Vec::new();
        let req =
            match echomesh_client::framing::read_frame::<_, JoinRequest>(&mut recv, 4096, &mut buf)
                .await
            {
                Ok(Some(r)) => r,
                Ok(None) => return Err(("io", "closed before request".to_string())),
                Err(e) => {
                    ctx.metrics
                        .frame_errors
                        .with_label_values(&[e.kind(), "join"])
                        .inc();
                    return Err(("bad_frame", e.to_string()));
                }
            };
        let tc = echomesh_client::framing::read_frame::<_, wire::TraceContext>(
            &mut recv,
            wire::MAX_TRACE_CONTEXT_FRAME,
            &mut buf,
        )
        .await
        .ok()
        .flatten();
        let span = tracing::info_span!("join.accept", joiner = %joiner);
        crate::telemetry::follow(&span, tc.as_ref());
        let resp = match accept_join(&ctx, joiner, &req, remote)
            .instrument(span)
            .await
        {
            Ok(()) => JoinResponse::Accepted {
                node_id: ctx.identity.id,
                cluster: ctx.cfg.cluster.clone(),
            },
            Err(reason) => JoinResponse::Refused { reason },
        };
        // Counted before the answer leaves: a joiner may look at the metrics at once.
        let label = match &resp {
            JoinResponse::Accepted { .. } => "accepted",
            JoinResponse::Refused { reason } => refusal_label(*reason),
        };
        ctx.metrics.joins.with_label_values(&[label]).inc();
        let bytes = wire::encode(&resp).map_err(|e| ("io", e.to_string()))?;
        send.write_all(&bytes)
            .await
            .map_err(|e| ("io", e.to_string()))?;
        let _ = send.finish();
        Ok(resp)
    })
    .await;
    match res {
        Ok(Ok(JoinResponse::Accepted { .. })) => {}
        Ok(Ok(JoinResponse::Refused { reason })) => {
            tracing::warn!(%remote, joiner = %joiner, ?reason, "join refused");
        }
        Ok(Err((label, msg))) => {
            ctx.metrics.joins.with_label_values(&[label]).inc();
            tracing::info!(%remote, error = %msg, "join attempt failed");
        }
        Err(_) => {
            ctx.metrics.joins.with_label_values(&["timeout"]).inc();
            ctx.metrics.handshake_failed(HandshakeReason::Timeout);
        }
    }
    // Let the answer reach the joiner before the connection goes away.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    conn.close(quinn::VarInt::from_u32(close::NORMAL), b"");
}

fn refusal_label(r: JoinRefusal) -> &'static str {
    match r {
        JoinRefusal::UnknownToken => "unknown_token",
        JoinRefusal::AlreadyUsed => "token_reused",
        JoinRefusal::Expired => "token_expired",
        JoinRefusal::TooManyNeighbors => "too_many_neighbors",
        JoinRefusal::Internal => "internal",
    }
}

async fn accept_join(
    ctx: &Arc<Ctx>,
    joiner: crate::identity::NodeId,
    req: &JoinRequest,
    remote: std::net::SocketAddr,
) -> Result<(), JoinRefusal> {
    let now = unix_now();
    if joiner == ctx.identity.id {
        return Err(JoinRefusal::Internal);
    }
    if !ctx.neighbors().is_pinned(&joiner) && ctx.neighbors().len() >= ctx.cfg.limits.max_neighbors
    {
        return Err(JoinRefusal::TooManyNeighbors);
    }
    ctx.invites
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .consume(&req.secret, now)?;
    // Dial back at the address it advertises; failing that, where it came from (QUIC dials
    // from the listening socket, so that is its listening address unless NAT intervenes).
    let addr = req
        .advertise
        .clone()
        .filter(|a| transport_addr_ok(a))
        .unwrap_or_else(|| remote.to_string());
    let rec = NeighborRecord {
        id: joiner,
        addr: Some(addr.clone()),
        mode: EchoMode::Full,
        origin: NeighborOrigin::Joined,
        added_unix: now,
    };
    if let Err(e) = crate::peer::session::add_neighbor(ctx, rec).await {
        tracing::error!(error = %format!("{e:#}"), "cannot pin joining node");
        return Err(JoinRefusal::Internal);
    }
    tracing::info!(joiner = %joiner, fingerprint = %joiner.fingerprint(), %addr, "node joined; neighbor pinned");
    Ok(())
}

fn transport_addr_ok(a: &str) -> bool {
    a.len() <= 256
        && a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}
