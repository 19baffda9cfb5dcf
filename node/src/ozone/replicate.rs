//! Replication lanes: the ozone copies this node sends one replica at the same time travel in
//! one `OzoneStore` request, and a few such requests are in flight at once (pipelined). With
//! group commit on the replica (`ozone::commit`), W = 2 costs about one request and one fsync
//! per group of concurrent deposits instead of one per deposit.
//!
//! A lane is started for a neighbor on its first copy (`Neighbor::replication` holds its
//! sender), ends after [`LANE_IDLE`] without copies or when the node stops, and is bounded: at
//! most [`LANE_QUEUE`] copies wait (a depositor beyond that waits for room), at most
//! [`LANE_GROUP`] copies or [`LANE_BYTES`] bytes share a request, at most [`LANE_IN_FLIGHT`]
//! requests are in flight. Each copy gets its own answer: when the replica refuses a group
//! (one copy over a quota, say), the copies are sent again one by one, so that one refusal
//! does not fail the others (deposits are idempotent: what the group stored is a duplicate).
//! A group's request runs in the span of its first copy: the replica's `ozone.store` joins
//! that deposit's trace (the others of the group are not linked).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use super::store::StoredMessage;
use crate::ctx::Ctx;
use crate::peer::rpc::{self, RpcError};
use crate::peer::table::ReplicaCopy;
use crate::peer::Neighbor;
use crate::wire::{PeerReply, PeerRequest};

/// Copies waiting in one lane at most.
const LANE_QUEUE: usize = 1024;
/// Copies in one request at most.
const LANE_GROUP: usize = 128;
/// Payload bytes in one request at most (a group always takes one copy).
const LANE_BYTES: usize = 4 << 20;
/// Requests in flight per lane at most.
const LANE_IN_FLIGHT: usize = 4;
/// A lane without copies for this long ends (and is started again by the next copy).
const LANE_IDLE: Duration = Duration::from_secs(60);

/// Store `msg` on neighbor `n` through its replication lane; the neighbor's reply for this
/// copy.
pub async fn store(
    ctx: &Arc<Ctx>,
    n: &Arc<Neighbor>,
    msg: StoredMessage,
) -> Result<PeerReply, RpcError> {
    let (reply, answer) = oneshot::channel();
    let mut copy = ReplicaCopy {
        msg,
        reply,
        span: tracing::Span::current(),
    };
    // Twice at most: a lane that just ended on its idle timeout refuses the first send.
    for _ in 0..2 {
        let tx = lane(ctx, n);
        match tx.send(copy).await {
            Ok(()) => {
                return answer
                    .await
                    .map_err(|_| RpcError::Io("replication lane stopped".into()))?
                    .map_err(RpcError::Io);
            }
            Err(mpsc::error::SendError(back)) => copy = back,
        }
    }
    Err(RpcError::Io("replication lane closed".into()))
}

/// The neighbor's lane, started if there is none.
fn lane(ctx: &Arc<Ctx>, n: &Arc<Neighbor>) -> mpsc::Sender<ReplicaCopy> {
    let mut slot = n.replication.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
        return tx.clone();
    }
    let (tx, rx) = mpsc::channel(LANE_QUEUE);
    *slot = Some(tx.clone());
    ctx.tasks.spawn(run(ctx.clone(), n.clone(), rx));
    tx
}

async fn run(ctx: Arc<Ctx>, n: Arc<Neighbor>, mut rx: mpsc::Receiver<ReplicaCopy>) {
    let in_flight = Arc::new(Semaphore::new(LANE_IN_FLIGHT));
    loop {
        // A free request slot first: copies that arrive meanwhile join the next group.
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let first = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            c = tokio::time::timeout(LANE_IDLE, rx.recv()) => match c {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            },
        };
        let mut bytes = first.msg.payload.len();
        let mut group = vec![first];
        while group.len() < LANE_GROUP && bytes < LANE_BYTES {
            let Ok(c) = rx.try_recv() else { break };
            bytes += c.msg.payload.len();
            group.push(c);
        }
        let (ctx2, n2) = (ctx.clone(), n.clone());
        let span = group[0].span.clone();
        ctx.tasks.spawn(
            async move {
                send_group(&ctx2, &n2, group).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Copies that slipped in before the lane closed still travel (or hear why not).
    rx.close();
    let mut rest = Vec::new();
    while let Ok(c) = rx.try_recv() {
        rest.push(c);
    }
    if ctx.shutdown.is_cancelled() {
        for c in rest {
            let _ = c.reply.send(Err("node stopping".into()));
        }
    } else if let Some(span) = rest.first().map(|c| c.span.clone()) {
        send_group(&ctx, &n, rest).instrument(span).await;
    }
    let mut slot = n.replication.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_some_and(|tx| tx.is_closed()) {
        *slot = None;
    }
}

async fn send_group(ctx: &Ctx, n: &Neighbor, group: Vec<ReplicaCopy>) {
    let count = group.len();
    let msgs: Vec<StoredMessage> = group.iter().map(|c| c.msg.clone()).collect();
    match rpc::call(ctx, n, &PeerRequest::OzoneStore(msgs)).await {
        Ok(PeerReply::Stored { durable }) if durable as usize == count => {
            for c in group {
                let _ = c.reply.send(Ok(PeerReply::Stored { durable: 1 }));
            }
        }
        // Refused (or fewer stored): each copy alone, to learn its own answer.
        Ok(_) | Err(RpcError::Refused(_)) if count > 1 => {
            for c in group {
                let r = rpc::call(ctx, n, &PeerRequest::OzoneStore(vec![c.msg]))
                    .await
                    .map_err(|e| e.to_string());
                let _ = c.reply.send(r);
            }
        }
        other => {
            // One copy, or the neighbor is unreachable: the same answer for every copy.
            let answer = other.map_err(|e| e.to_string());
            for c in group {
                let _ = c.reply.send(answer.clone());
            }
        }
    }
}
