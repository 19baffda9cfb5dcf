//! The Echo bridge: Smoke and Spot-On clients and Spot-On-Lite daemons on an echomesh node
//! (docs/ECHO.md). The protocol without IO is `echomesh_proto::bridge`; `hub` is the shared
//! state (connections, queues, identities, frame memory); the drivers are `link` (one
//! connection), `listen` (the Echo listener) and `dial` (outgoing links).
//!
//! Echo frames cross the mesh as echo packets with the fixed bridge tag and the exact frame
//! bytes as payload (so the packet ID is a hash of those bytes). The router hands such
//! packets to [`verify`] like other control traffic: a frame new to the frame memory is
//! queued on every local Echo connection and flooded on; anything else stops here.

pub mod dial;
pub mod hub;
pub mod link;
pub mod listen;
pub mod tls;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use echomesh_proto::bridge::frame::{self, Frame, EOM};
use echomesh_proto::bridge::Verdict;

use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::router::Origin;
use crate::verify::Checked;

/// A data frame read from Echo connection `from`: remembered, queued on the other
/// connections, flooded into the mesh.
pub fn ingest(ctx: &Ctx, from: u64, f: Bytes) {
    let now = Instant::now();
    let id = *blake3::hash(&f).as_bytes();
    if ctx.bridge.remember(id, false, now) != Verdict::New {
        return;
    }
    ctx.bridge.fan_out(&f, Some(from), now);
    let pkt = EchoPacket {
        id,
        hops_left: ctx.cfg.echo.default_hops,
        tag: Some(crate::tags::bridge_tag()),
        payload: f,
    };
    ctx.router.forward_verified(Origin::Bridge, vec![pkt]);
}

/// An Echo frame from the mesh (the router's control channel for the bridge tag): a single
/// well-formed data frame, new to the frame memory, is queued on every local Echo connection
/// and flooded on.
pub async fn verify(ctx: Arc<Ctx>, origin: Origin, pkt: EchoPacket) -> Checked {
    let p = &pkt.payload;
    let single = p.len() <= ctx.bridge.cfg.max_frame_bytes
        && p.windows(EOM.len()).position(|w| w == EOM) == Some(p.len().saturating_sub(EOM.len()));
    if !single || !matches!(frame::classify(p), Ok(Frame::Data { .. })) {
        ctx.metrics
            .bridge
            .dropped
            .with_label_values(&["bad_frame"])
            .inc();
        tracing::debug!(?origin, "dropping a malformed Echo frame from the mesh");
        return Checked::Refused;
    }
    let now = Instant::now();
    if ctx.bridge.remember(pkt.id, true, now) != Verdict::New {
        return Checked::Refused;
    }
    // Each Echo connection keeps some of these frames: a copy of its own, not a part of the
    // batch's buffer.
    ctx.bridge
        .fan_out(&Bytes::copy_from_slice(&pkt.payload), None, now);
    Checked::Forward(pkt)
}

/// Whether an incoming connection may be an Echo neighbor (its `0111` is honoured): its
/// source address is in `bridge.neighbor_networks` or its certificate in `neighbor_certs`.
pub fn neighbor_allowed(ctx: &Ctx, link: &hub::Link) -> bool {
    let ip = link.remote.ip().to_canonical();
    ctx.bridge.cfg.networks().iter().any(|n| n.contains(&ip))
        || link
            .peer_cert
            .is_some_and(|c| ctx.bridge.cfg.certs().contains(&c))
}

/// Start the Echo listener (if configured) and the outgoing links from the configuration
/// and from earlier `neighbors add`.
pub async fn start(ctx: &Arc<Ctx>) -> anyhow::Result<()> {
    if let Some(addr) = ctx.bridge.cfg.listen {
        listen::start(ctx, addr).await?;
    }
    for url in &ctx.bridge.cfg.neighbors {
        dial::add(ctx, url, "static").await?;
    }
    for url in dial::persisted(ctx).await? {
        if let Err(e) = dial::add(ctx, &url, "admin").await {
            tracing::warn!(url = %url, error = %e, "cannot restore an Echo link added through the admin API");
        }
    }
    Ok(())
}
