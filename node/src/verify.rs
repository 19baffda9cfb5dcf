//! Control packets (key bundles, node announcements) are verified before they are flooded on:
//! the router hands them over on a bounded channel, one task per kind checks them one at a
//! time, and only those that changed something travel further (which also ends every flood).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::router::Origin;

/// Verify the packets handed over on `rx` with `verify`, and flood on those it returns. Runs
/// until the node stops.
pub async fn run<F, Fut>(
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<(Origin, Vec<EchoPacket>)>,
    verify: F,
) where
    F: Fn(Arc<Ctx>, Origin, EchoPacket) -> Fut,
    Fut: Future<Output = Option<EchoPacket>>,
{
    loop {
        let (origin, packets) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            next = rx.recv() => match next {
                Some(x) => x,
                None => return,
            },
        };
        for pkt in packets {
            if let Some(pkt) = verify(ctx.clone(), origin, pkt).await {
                ctx.router.forward_verified(origin, vec![pkt]);
            }
        }
    }
}
