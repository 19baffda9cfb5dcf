//! The node's ozone service: what a client's deposit, fetch and acknowledgement do.
//!
//! Quorum: R = min(`ozone.replicas`, cluster size) and W = min(`ozone.write_quorum`, R), the
//! cluster being this node and the neighbors that announced the same cluster name. A deposit is
//! acknowledged only when W replicas hold it durably. Replication between members is the next
//! step (see docs/OZONES.md): until it lands, this node is the only copy it can vouch for, so a
//! deposit that needs W > 1 is refused with `NotDurable` instead of being acknowledged weaker
//! than promised. A single-node cluster, or `write_quorum = 1`, works today.

use std::sync::Arc;

use bytes::Bytes;

use super::store::{DepositOutcome, OzoneError, StoredMessage};
use super::{OzoneAddr, OzoneProof};
use crate::echo::EchoPacket;
use crate::node::Ctx;
use crate::router::Origin;
use crate::store::StoreError;
use crate::tags;
use crate::wire::Position;

/// Largest page of a fetch, in bytes of payload.
pub const MAX_FETCH_BYTES: usize = 1 << 20;
/// Most messages per fetch page.
pub const MAX_FETCH_MESSAGES: u32 = 512;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Ozone(#[from] OzoneError),
    #[error("the proof does not open this ozone (wrong secret?)")]
    WrongProof,
    #[error("only {copies} of the {needed} durable copies this cluster requires can be made here (ozone.write_quorum; replication between cluster members is not in this build yet): not acknowledged, nothing stored")]
    NotDurable { copies: usize, needed: usize },
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn label(&self) -> &'static str {
        match self {
            ServiceError::Ozone(e) => e.label(),
            ServiceError::WrongProof => "wrong_proof",
            ServiceError::NotDurable { .. } => "not_durable",
            ServiceError::Store(_) => "storage",
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (R, W) for the cluster as this node knows it now.
pub fn quorum(ctx: &Ctx) -> (usize, usize) {
    let peers = ctx
        .neighbors()
        .all()
        .iter()
        .filter(|n| n.cluster().as_deref() == Some(ctx.cfg.cluster.as_str()))
        .count();
    let r = ctx.cfg.ozone.replicas.min(peers + 1);
    (r, ctx.cfg.ozone.write_quorum.min(r))
}

async fn blocking<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&super::store::OzoneStore) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || f(&c.ozones))
        .await
        .map_err(|e| ServiceError::Store(StoreError::Task(e.to_string())))?
}

/// Deposit a payload; on success, also flood it tagged for the ozone so live readers get it.
pub async fn deposit(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    payload: Bytes,
) -> Result<(StoredMessage, usize), ServiceError> {
    let m = &ctx.metrics;
    let (_, w) = quorum(ctx);
    let now = now_ms();
    let msg = StoredMessage {
        addr,
        seq: ctx.ozones.next_seq(now),
        id: *blake3::hash(&payload).as_bytes(),
        expires_ms: now.saturating_add(ctx.ozones.limits().retention_ms),
        payload,
    };
    let result = if w > 1 {
        Err(ServiceError::NotDurable {
            copies: 1,
            needed: w,
        })
    } else {
        let m2 = msg.clone();
        blocking(ctx, move |s| Ok(s.deposit_blocking(&m2)?)).await
    };
    match result {
        Ok(outcome) => {
            let label = match outcome {
                DepositOutcome::Stored => "stored",
                DepositOutcome::Duplicate => "duplicate",
                DepositOutcome::Acknowledged => "acknowledged",
            };
            m.ozone_deposits.with_label_values(&[label]).inc();
            tracing::debug!(ozone = %addr.short(), id = %hex::encode(&msg.id[..4]), seq = msg.seq, outcome = label, "ozone deposit");
            m.ozone_bytes.set(ctx.ozones.total_bytes() as i64);
            if outcome == DepositOutcome::Stored {
                let tag = addr.tag(tags::epoch_of(now / 1000));
                let pkt =
                    EchoPacket::new(msg.payload.clone(), ctx.cfg.echo.default_hops, Some(tag));
                ctx.router.dispatch(Origin::Client, vec![pkt]);
            }
            Ok((msg, 1))
        }
        Err(e) => {
            m.ozone_deposits.with_label_values(&[e.label()]).inc();
            tracing::info!(ozone = %addr.short(), reason = e.label(), "deposit refused: {e}");
            Err(e)
        }
    }
}

fn check_proof(ctx: &Ctx, addr: &OzoneAddr, proof: &OzoneProof) -> Result<(), ServiceError> {
    if proof.opens(addr) {
        return Ok(());
    }
    ctx.metrics.ozone_proof_failures.inc();
    tracing::info!(ozone = %addr.short(), "refusing ozone access with a wrong proof");
    Err(ServiceError::WrongProof)
}

/// One page of an ozone, oldest first; `true` when more follow.
pub async fn fetch(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    proof: OzoneProof,
    after: Option<Position>,
    limit: u32,
) -> Result<(Vec<StoredMessage>, bool), ServiceError> {
    check_proof(ctx, &addr, &proof)?;
    let limit = limit.clamp(1, MAX_FETCH_MESSAGES) as usize;
    let after = after.map(|p| (p.seq, p.id.0));
    let mut page = blocking(ctx, move |s| {
        Ok(s.fetch_blocking(&addr, after, limit + 1, MAX_FETCH_BYTES)?)
    })
    .await?;
    let more = page.len() > limit;
    page.truncate(limit);
    ctx.metrics.ozone_fetches.inc();
    Ok((page, more))
}

/// Acknowledge (delete) messages; returns how many were removed.
pub async fn ack(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    proof: OzoneProof,
    ids: Vec<[u8; 32]>,
) -> Result<u64, ServiceError> {
    check_proof(ctx, &addr, &proof)?;
    let asked = ids.len();
    let removed = blocking(ctx, move |s| Ok(s.ack_blocking(&addr, &ids, now_ms())?)).await?;
    tracing::debug!(ozone = %addr.short(), asked, removed, "ozone acknowledgement");
    ctx.metrics.ozone_acks.inc_by(removed);
    ctx.metrics.ozone_bytes.set(ctx.ozones.total_bytes() as i64);
    Ok(removed)
}

/// Evict what outlived its retention (housekeeping).
pub async fn sweep(ctx: &Arc<Ctx>) {
    match blocking(ctx, |s| Ok(s.sweep_expired_blocking(now_ms(), 10_000)?)).await {
        Ok(sw) => {
            if sw.messages > 0 {
                ctx.metrics
                    .ozone_evictions
                    .with_label_values(&["retention"])
                    .inc_by(sw.messages);
                tracing::info!(
                    messages = sw.messages,
                    bytes = sw.bytes,
                    "evicted ozone messages past their retention"
                );
            }
            ctx.metrics.ozone_bytes.set(ctx.ozones.total_bytes() as i64);
        }
        Err(e) => tracing::error!(error = %e, "ozone retention sweep failed"),
    }
}
