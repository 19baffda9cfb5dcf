//! Request/response between neighbors: one QUIC bidirectional stream per request, opened on
//! the existing peer connection after the hello. The echo stream is never blocked by them, the
//! number in flight is bounded by QUIC's stream limit, and each has a deadline.

use std::time::Duration;

use crate::ctx::Ctx;
use crate::peer::Neighbor;

use crate::wire::{self, PeerReply, PeerRequest};

/// Deadline of one request, answer included.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

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
