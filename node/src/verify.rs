//! Control packets (key bundles, node announcements) are verified before they are flooded on:
//! the router hands them over on a bounded channel, one task per kind checks them one at a
//! time, and only those that changed something travel further (which also ends every flood).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::router::{ControlBatch, Origin};

/// What a verifier decided about one control packet.
pub enum Checked {
    /// It changed something here: flood it on.
    Forward(EchoPacket),
    /// Never useful (stale, forged, malformed): remembered as seen, so that its other copies
    /// and announcements of it do not come back to the verifier.
    Refused,
    /// Not taken now (storage failed, too early): it may be offered again.
    NotNow,
}

/// Verify the packets handed over on `rx` with `verify`, and flood on those it returns. Runs
/// until the node stops.
pub async fn run<F, Fut>(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<ControlBatch>, verify: F)
where
    F: Fn(Arc<Ctx>, Origin, EchoPacket) -> Fut,
    Fut: Future<Output = Checked>,
{
    loop {
        let (origin, packets, trees) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            next = rx.recv() => match next {
                Some(x) => x,
                None => return,
            },
        };
        for pkt in packets {
            let id = pkt.id;
            match verify(ctx.clone(), origin, pkt).await {
                Checked::Forward(pkt) => {
                    ctx.router.forward_on(origin, vec![pkt], Some(&trees));
                }
                Checked::Refused => ctx.router.refused(&id),
                Checked::NotNow => {}
            }
        }
    }
}
