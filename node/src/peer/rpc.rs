//! Request/response between neighbors: one QUIC bidirectional stream per request, opened on
//! the existing peer connection after the hello. The echo stream is never blocked by them, the
//! number in flight is bounded by QUIC's stream limit, and each has a deadline.

use std::sync::Arc;

use tracing::Instrument;

use crate::ctx::Ctx;
use crate::peer::Neighbor;

use crate::identity::NodeId;
pub use crate::limits::RPC_TIMEOUT;
use crate::wire::{self, PeerReply, PeerRequest};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("neighbor {0} is not connected")]
    NotConnected(String),
    #[error("neighbor did not answer within {RPC_TIMEOUT:?}")]
    Timeout,
    #[error("request failed: {0}")]
    Io(String),
    #[error("neighbor refused: {0}")]
    Refused(String),
}

/// Send one request to a neighbor and wait for its answer.
pub async fn call(ctx: &Ctx, n: &Neighbor, req: &PeerRequest) -> Result<PeerReply, RpcError> {
    let conn = n
        .connection()
        .ok_or_else(|| RpcError::NotConnected(n.id.short()))?;
    let max = ctx.cfg.limits.max_frame_bytes;
    let fut = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| RpcError::Io(e.to_string()))?;
        let mut frame = wire::encode(req)
            .map_err(|e| RpcError::Io(e.to_string()))?
            .to_vec();
        if let Some(tc) = crate::telemetry::trace_context() {
            let _ = wire::encode_into(&tc, &mut frame);
        }
        send.write_all(&frame)
            .await
            .map_err(|e| RpcError::Io(e.to_string()))?;
        let _ = send.finish();
        let mut buf = Vec::new();
        match echomesh_client::framing::read_frame::<_, PeerReply>(&mut recv, max, &mut buf).await {
            Ok(Some(PeerReply::Error { message })) => Err(RpcError::Refused(message)),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(RpcError::Io("stream closed without an answer".into())),
            Err(e) => Err(RpcError::Io(e.to_string())),
        }
    };
    tokio::time::timeout(RPC_TIMEOUT, fut)
        .await
        .map_err(|_| RpcError::Timeout)?
}

/// One request to several neighbors at once: the calls run concurrently while the caller does
/// its local part, then their answers are collected one by one as they arrive.
pub struct FanOut {
    calls: tokio::task::JoinSet<(NodeId, Result<PeerReply, RpcError>)>,
}

impl FanOut {
    /// Send `req` to each of `peers`; each call runs in the span `span` makes for it.
    pub fn start(
        ctx: &Arc<Ctx>,
        peers: impl IntoIterator<Item = Arc<Neighbor>>,
        req: &PeerRequest,
        span: impl Fn(&Neighbor) -> tracing::Span,
    ) -> Self {
        let mut calls = tokio::task::JoinSet::new();
        for n in peers {
            let (ctx, req, span) = (ctx.clone(), req.clone(), span(&n));
            calls.spawn(async move { (n.id, call(&ctx, &n, &req).await) }.instrument(span));
        }
        FanOut { calls }
    }

    /// Run `call` for each of `peers` concurrently, each in the span `span` makes for it (a
    /// request that is not one plain `rpc::call`, e.g. a replication lane).
    pub fn spawn<F, Fut>(
        peers: impl IntoIterator<Item = Arc<Neighbor>>,
        span: impl Fn(&Neighbor) -> tracing::Span,
        call: F,
    ) -> Self
    where
        F: Fn(Arc<Neighbor>) -> Fut,
        Fut: std::future::Future<Output = Result<PeerReply, RpcError>> + Send + 'static,
    {
        let mut calls = tokio::task::JoinSet::new();
        for n in peers {
            let (id, span) = (n.id, span(&n));
            let fut = call(n);
            calls.spawn(async move { (id, fut.await) }.instrument(span));
        }
        FanOut { calls }
    }

    /// The next answer, or `None` when every call has answered or failed.
    pub async fn next(&mut self) -> Option<(NodeId, Result<PeerReply, RpcError>)> {
        loop {
            match self.calls.join_next().await? {
                Ok(answer) => return Some(answer),
                // A call task that panicked: counted as no answer.
                Err(e) => tracing::error!(error = %e, "RPC task failed"),
            }
        }
    }

    /// Stop waiting; the calls still in flight finish on their own.
    pub fn detach_all(&mut self) {
        self.calls.detach_all();
    }
}
