//! The I/O side of the topology: this node's own announcements (periodic, and soon after a
//! change), verifying announcements that arrive as echo packets before they are forwarded, and
//! handing the whole table to a neighbor that just came up.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use echomesh_proto::announce::Announcer;

use super::{Announcement, Link, TopologyView, ANNOUNCE_EVERY, MAX_LINKS, TTL_SECS};
use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::metrics::DropReason;
use crate::peer::{Neighbor, NeighborState};
use crate::router::Origin;
use crate::tags;
use crate::verify::Checked;
use crate::wire::{self, Departure};

use echomesh_proto::clock::unix_ms;

/// This node as it would announce itself now.
pub fn own_announcement(ctx: &Ctx, seq: u64) -> Announcement {
    let mut links: Vec<Link> = ctx
        .neighbors()
        .all()
        .iter()
        .map(|n| {
            let v = n.view();
            let up = v.state == NeighborState::Up;
            Link {
                peer: n.id,
                up,
                rtt_us: v
                    .rtt
                    .filter(|_| up)
                    .map(|r| r.as_micros().min(u128::from(u32::MAX)) as u32)
                    .unwrap_or(0),
                mode: v.mode,
                departure: v.departure,
            }
        })
        .collect();
    // Live links first if there are more than an announcement carries.
    links.sort_by_key(|l| !l.up);
    links.truncate(MAX_LINKS);
    Announcement {
        node: ctx.identity.id,
        seq,
        ttl_secs: TTL_SECS,
        addr: ctx.advertise.clone(),
        cluster: ctx.cfg.cluster.clone(),
        software: concat!("echomesh-node/", env!("CARGO_PKG_VERSION")).into(),
        protocol: wire::PROTOCOL_VERSION,
        state: ctx.drain.departure(),
        links,
    }
}

/// The topology as this node sees it now.
pub fn view(ctx: &Ctx) -> TopologyView {
    ctx.topology
        .view(&own_announcement(ctx, unix_ms()), Instant::now())
}

fn packet(ctx: &Ctx, raw: Vec<u8>) -> EchoPacket {
    EchoPacket::new(
        Bytes::from(raw),
        ctx.cfg.echo.default_hops,
        Some(tags::topology_tag()),
    )
}

/// Give the router the mesh's links as announced, to plan broadcast trees from (lazy push).
/// This node's own links count as it last announced them, not as they are now: every node
/// must plan from the same map (the RTTs it announced, not the ones it measures since).
fn replan(ctx: &Ctx) {
    if ctx.router.mode() != echomesh_proto::broadcast::Mode::Lazy {
        return;
    }
    if let Some(own) = ctx.topology.last_own() {
        ctx.router
            .set_graph(&ctx.topology.links(&own, Instant::now()));
    }
}

/// Flood this node's announcement now.
pub fn announce_now(ctx: &Ctx) {
    let seq = ctx.topology.next_seq(unix_ms());
    let own = own_announcement(ctx, seq);
    ctx.topology.set_last_own(own.clone());
    replan(ctx);
    match own.seal(&ctx.identity) {
        Ok(raw) => {
            ctx.router
                .forward_verified(Origin::Client, vec![packet(ctx, raw)]);
        }
        Err(e) => tracing::error!(error = %e, "cannot make this node's announcement"),
    }
}

/// Announce this node every `ANNOUNCE_EVERY`, and soon after each local change (the timing is
/// `echomesh_proto::announce::Announcer`).
pub async fn announce_loop(ctx: Arc<Ctx>) {
    let mut timing = Announcer::new(Instant::now());
    loop {
        if timing.poll(Instant::now()) {
            announce_now(&ctx);
        }
        let at = timing
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + ANNOUNCE_EVERY);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = ctx.topology.local_changed.notified() => timing.changed(Instant::now()),
        }
    }
}

/// Verify one announcement packet handed over by the router (`verify::run`): it travels on
/// only if it changed the table.
pub async fn verify(ctx: Arc<Ctx>, origin: Origin, pkt: EchoPacket) -> Checked {
    let result = ctx.topology.offer(&pkt.payload, Instant::now(), unix_ms());
    let label = match &result {
        Ok(o) => o.label(),
        Err(e) => e.label(),
    };
    ctx.metrics
        .topology_announcements
        .with_label_values(&[label])
        .inc();
    match result {
        Ok(super::Offered::Accepted) => {
            replan(&ctx);
            Checked::Forward(pkt)
        }
        Ok(_) => Checked::Refused,
        Err(super::AnnounceError::Full) => Checked::NotNow,
        Err(e) => {
            tracing::info!(?origin, error = %e, "node announcement refused");
            Checked::Refused
        }
    }
}

/// Give a neighbor that just came up everything this node knows, so it sees the whole mesh
/// at once instead of after the next round of announcements.
pub fn sync_neighbor(ctx: &Ctx, n: &Neighbor) {
    let packets: Vec<EchoPacket> = ctx
        .topology
        .raw_all()
        .into_iter()
        .map(|raw| packet(ctx, raw))
        .collect();
    let dropped = n.push_packets(&packets, ctx.router.own_tree());
    ctx.metrics
        .count_drop(DropReason::NeighborQueueFull, dropped);
    ctx.topology.local_changed.notify_one();
}

/// The best other nodes for a client to move to: serving nodes this node knows, in its own
/// cluster first, direct neighbors first, lowest RTT first. Each as `HOST:PORT#FINGERPRINT`.
pub fn redirect_targets(ctx: &Ctx, max: usize) -> Vec<String> {
    let now = Instant::now();
    let mut cands: Vec<(bool, u32, String)> = Vec::new();
    for n in ctx.neighbors().all() {
        // Alive: not draining, and not merely not yet failed (a suspect takes no clients).
        if !n.member_state().takes_clients() {
            continue;
        }
        let Some(ann) = ctx.topology.fresh(&n.id, now) else {
            continue;
        };
        if ann.state != Departure::Up {
            continue;
        }
        let rtt = n
            .view()
            .rtt
            .map(|r| r.as_micros().min(u128::from(u32::MAX)) as u32)
            .unwrap_or(u32::MAX);
        cands.push((
            ann.cluster != ctx.cfg.cluster,
            rtt,
            format!("{}#{}", ann.addr, n.id.fingerprint()),
        ));
    }
    cands.sort();
    cands.truncate(max);
    cands.into_iter().map(|c| c.2).collect()
}
