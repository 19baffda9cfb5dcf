//! A peer session over one QUIC connection: hello exchange on a bidirectional stream, then
//! echo batches in both directions on that stream until either side goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use bytes::BytesMut;

use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::limits::MAX_ECHO_BATCH_BYTES as MAX_BATCH_BYTES;
use crate::metrics::{DropReason, HandshakeReason};
use crate::peer::Neighbor;
use crate::router::{Origin, Trees};
use crate::store::{NeighborOrigin, NeighborRecord};
use crate::transport;
use crate::wire::{self, close, PeerFrame, PeerFrameRef, PeerHello, TreeItem};
use anyhow::Context as _;
use echomesh_client::tls;
use echomesh_proto::backoff::Backoff;
use echomesh_proto::broadcast::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Outbound,
    Inbound,
}

fn hello(ctx: &Ctx) -> PeerHello {
    PeerHello {
        version: wire::PROTOCOL_VERSION,
        node_id: ctx.identity.id,
        cluster: ctx.cfg.cluster.clone(),
        software: format!("echomesh-node/{}", env!("CARGO_PKG_VERSION")),
    }
}

/// Pin a neighbor, persist it unless static, and start dialing it if it has an address.
pub async fn add_neighbor(ctx: &Arc<Ctx>, rec: NeighborRecord) -> anyhow::Result<Arc<Neighbor>> {
    let n = ctx.neighbors().upsert(&rec)?;
    if rec.origin != NeighborOrigin::Static {
        ctx.store
            .put_neighbor(n.record(rec.added_unix))
            .await
            .context("persisting neighbor")?;
    }
    spawn_dialer(ctx, &n);
    Ok(n)
}

pub fn spawn_dialer(ctx: &Arc<Ctx>, n: &Arc<Neighbor>) {
    if n.claim_dialer() {
        let c = ctx.clone();
        let n = n.clone();
        ctx.tasks.spawn(async move { dial_loop(c, n).await });
    }
}

/// Keep one neighbor connected: dial when it is not up, back off with jitter on failure.
pub async fn dial_loop(ctx: Arc<Ctx>, n: Arc<Neighbor>) {
    let mut backoff = Backoff::new(
        Duration::from_millis(ctx.cfg.peer.backoff_min_ms),
        Duration::from_millis(ctx.cfg.peer.backoff_max_ms),
    );
    loop {
        // Wait while some connection (ours or theirs) is up.
        loop {
            let changed = n.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if n.is_removed() || ctx.shutdown.is_cancelled() {
                n.release_dialer();
                return;
            }
            if !n.is_up() {
                break;
            }
            tokio::select! {
                _ = ctx.shutdown.cancelled() => {}
                _ = &mut changed => {}
            }
        }
        let Some(addr) = n.addr() else {
            n.release_dialer();
            return;
        };
        n.set_dialing(true);
        let result = tokio::select! {
            _ = ctx.shutdown.cancelled() => { n.release_dialer(); return; }
            r = dial(&ctx, &n, &addr) => r,
        };
        match result {
            Ok(conn) => {
                n.set_dialing(false);
                backoff.connected(Instant::now());
                run(ctx.clone(), n.clone(), conn, Direction::Outbound).await;
            }
            Err(reason) => {
                n.set_dialing(false);
                tracing::debug!(neighbor = %n.id, %addr, %reason, "dial failed");
                n.set_error(reason);
            }
        }
        let sleep = backoff.ended(Instant::now(), rand::random::<f64>());
        let changed = n.changed.notified();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => { n.release_dialer(); return; }
            _ = tokio::time::sleep(sleep) => {}
            // Removal or an address change cuts the wait short.
            _ = changed, if !n.is_up() => {}
        }
    }
}

async fn dial(ctx: &Arc<Ctx>, n: &Arc<Neighbor>, addr: &str) -> Result<quinn::Connection, String> {
    let remote = transport::resolve(addr).await.map_err(|e| {
        ctx.metrics.handshake_failed(HandshakeReason::Unreachable);
        format!("cannot resolve {addr}: {e}")
    })?;
    let (cfg, verifier) = transport::dial_config(
        Some(&ctx.identity),
        Some(n.id),
        wire::ALPN_PEER,
        &ctx.cfg.peer.tuning(),
    )
    .map_err(|e| e.to_string())?;
    let connecting = ctx
        .endpoint
        .connect_with(cfg, remote, transport::SERVER_NAME)
        .map_err(|e| format!("cannot dial {remote}: {e}"))?;
    let timeout = Duration::from_millis(ctx.cfg.peer.handshake_timeout_ms);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            let (seen, mismatch) = verifier.observed();
            if mismatch {
                ctx.metrics
                    .handshake_failed(HandshakeReason::WrongFingerprint);
                let got = seen.map(|s| s.fingerprint()).unwrap_or_default();
                tracing::warn!(neighbor = %n.id, %remote, presented = %got,
                    "neighbor presented a different identity than pinned; refusing (was it re-installed? re-pin it)");
                Err(format!("wrong fingerprint: {remote} presented {got}"))
            } else if matches!(e, quinn::ConnectionError::TimedOut) {
                ctx.metrics.handshake_failed(HandshakeReason::Unreachable);
                Err(format!("{remote} did not answer"))
            } else {
                ctx.metrics.handshake_failed(classify(&e));
                Err(format!("handshake with {remote} failed: {e}"))
            }
        }
        Err(_) => {
            ctx.metrics.handshake_failed(HandshakeReason::Unreachable);
            Err(format!("{remote} did not answer within {timeout:?}"))
        }
    }
}

fn classify(e: &quinn::ConnectionError) -> HandshakeReason {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(close::UNPINNED) =>
        {
            HandshakeReason::Unpinned
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(close::VERSION) =>
        {
            HandshakeReason::Version
        }
        _ => HandshakeReason::Tls,
    }
}

/// An incoming connection that negotiated `echomesh-peer/1`: only pinned identities pass.
pub async fn serve_inbound(ctx: Arc<Ctx>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let Some(peer) = tls::peer_id(&conn) else {
        ctx.metrics.handshake_failed(HandshakeReason::NoCertificate);
        tracing::info!(%remote, "refusing peer without a certificate");
        conn.close(
            quinn::VarInt::from_u32(close::UNPINNED),
            b"peer certificate required",
        );
        return;
    };
    let Some(n) = ctx.neighbors().get(&peer) else {
        ctx.metrics.handshake_failed(HandshakeReason::Unpinned);
        tracing::warn!(%remote, fingerprint = %peer.fingerprint(),
            "refusing unpinned peer (pin it with invite/join or a static neighbor entry)");
        conn.close(quinn::VarInt::from_u32(close::UNPINNED), b"not pinned");
        return;
    };
    run(ctx, n, conn, Direction::Inbound).await;
}

async fn exchange_hello(
    ctx: &Ctx,
    n: &Neighbor,
    conn: &quinn::Connection,
    dir: Direction,
) -> Result<(quinn::SendStream, quinn::RecvStream, PeerHello), (HandshakeReason, String)> {
    let own = wire::encode(&PeerFrameRef::Hello(&hello(ctx)))
        .map_err(|e| (HandshakeReason::Hello, e.to_string()))?;
    let mut buf = Vec::new();
    let (mut send, mut recv) = match dir {
        Direction::Outbound => {
            let (mut s, r) = conn
                .open_bi()
                .await
                .map_err(|e| (HandshakeReason::Hello, e.to_string()))?;
            s.write_all(&own)
                .await
                .map_err(|e| (HandshakeReason::Hello, e.to_string()))?;
            (s, r)
        }
        Direction::Inbound => conn
            .accept_bi()
            .await
            .map_err(|e| (HandshakeReason::Hello, e.to_string()))?,
    };
    let theirs =
        match echomesh_client::framing::read_frame::<_, PeerFrame>(&mut recv, 64 * 1024, &mut buf)
            .await
        {
            Ok(Some(PeerFrame::Hello(h))) => h,
            Ok(Some(_)) => {
                return Err((HandshakeReason::Hello, "first frame was not a hello".into()))
            }
            Ok(None) => return Err((HandshakeReason::Hello, "stream closed before hello".into())),
            Err(e) => return Err((HandshakeReason::Hello, e.to_string())),
        };
    if theirs.node_id != n.id {
        return Err((
            HandshakeReason::Hello,
            "hello names another node than the certificate".into(),
        ));
    }
    if theirs.version < wire::MIN_PROTOCOL_VERSION {
        return Err((
            HandshakeReason::Version,
            format!(
                "peer speaks protocol {} (< {}); upgrade it",
                theirs.version,
                wire::MIN_PROTOCOL_VERSION
            ),
        ));
    }
    if dir == Direction::Inbound {
        send.write_all(&own)
            .await
            .map_err(|e| (HandshakeReason::Hello, e.to_string()))?;
    }
    Ok((send, recv, theirs))
}

/// Run one established peer connection to the end.
async fn run(ctx: Arc<Ctx>, n: Arc<Neighbor>, conn: quinn::Connection, dir: Direction) {
    let remote = conn.remote_address();
    let timeout = Duration::from_millis(ctx.cfg.peer.handshake_timeout_ms);
    let span = tracing::info_span!("peer.handshake", neighbor = %n.id, direction = ?dir);
    let (send, recv, theirs) = match tokio::time::timeout(
        timeout,
        exchange_hello(&ctx, &n, &conn, dir).instrument(span),
    )
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err((reason, msg))) => {
            ctx.metrics.handshake_failed(reason);
            tracing::warn!(neighbor = %n.id, %remote, reason = reason.label(), error = %msg, "peer hello failed");
            n.set_error(msg);
            let code = if reason == HandshakeReason::Version {
                close::VERSION
            } else {
                close::PROTOCOL
            };
            conn.close(quinn::VarInt::from_u32(code), b"hello failed");
            return;
        }
        Err(_) => {
            ctx.metrics.handshake_failed(HandshakeReason::Timeout);
            n.set_error("hello timed out".into());
            conn.close(quinn::VarInt::from_u32(close::PROTOCOL), b"hello timeout");
            return;
        }
    };
    let key = ctx.next_conn_key();
    if !n.attach(key, conn.clone(), &theirs) {
        conn.close(quinn::VarInt::from_u32(close::REMOVED), b"neighbor removed");
        return;
    }
    // Pushed every packet until its `Broadcast` frame says it forwards by lazy push.
    ctx.router.neighbor_up(n.id, false);
    tracing::info!(neighbor = %n.id, %remote, ?dir, version = theirs.version, cluster = %theirs.cluster,
        software = %theirs.software, "neighbor up");
    ctx.tasks
        .spawn(crate::keydir::flood::sync_neighbor(ctx.clone(), n.clone()));
    ctx.tasks
        .spawn(crate::smoke::flood::sync_neighbor(ctx.clone(), n.clone()));
    crate::topology::flood::sync_neighbor(&ctx, &n);
    crate::drain::on_neighbor_up(&ctx, n.clone());
    ctx.tasks.spawn(crate::peer::serve::run(
        ctx.clone(),
        n.clone(),
        conn.clone(),
    ));
    ctx.tasks.spawn(crate::peer::repair::run(
        ctx.clone(),
        n.clone(),
        conn.clone(),
    ));
    if theirs.cluster == ctx.cfg.cluster {
        ctx.tasks
            .spawn(crate::ozone::service::sync_neighbor(ctx.clone(), n.clone()));
    }

    // The batch being written lives here, so packets caught mid-write when the connection
    // ends are counted, not silently lost.
    let mut in_flight = Vec::new();
    let reason = tokio::select! {
        r = read_loop(&ctx, &n, recv) => r,
        r = write_loop(&ctx, &n, key, send, &mut in_flight) => r,
        r = crate::peer::liveness::heartbeats(&ctx, &n, &conn) => r,
        e = conn.closed() => format!("connection closed: {e}"),
        _ = ctx.shutdown.cancelled() => "node stopping".to_string(),
    };
    conn.close(quinn::VarInt::from_u32(close::NORMAL), b"");
    // What this connection carried lately may not have arrived: offer it again (repair).
    crate::peer::repair::connection_ended(&ctx, &n);
    ctx.metrics
        .count_drop(DropReason::SendFailed, in_flight.len() as u64);
    if n.detach(key) {
        ctx.router.neighbor_down(n.id);
        let dropped = n.queue.clear();
        ctx.metrics.count_drop(DropReason::NeighborDown, dropped);
        tracing::info!(neighbor = %n.id, %remote, %reason, dropped_queued = dropped,
            departure = n.departure().label(), "neighbor down");
        n.set_error(reason);
        ctx.topology.local_changed.notify_one();
    } else {
        tracing::debug!(neighbor = %n.id, %remote, %reason, "extra connection closed");
    }
}

async fn read_loop(ctx: &Ctx, n: &Neighbor, mut recv: quinn::RecvStream) -> String {
    let max = ctx.cfg.limits.max_frame_bytes;
    // Packets are decoded as slices of their frame (no allocation per payload); the router
    // keeps only the accepted ones, copied into a buffer of their own, so the frame's memory
    // is free again, and reused, by the next read.
    let mut buf = BytesMut::new();
    loop {
        let frame = match echomesh_client::framing::read_frame_bytes(&mut recv, max, &mut buf).await
        {
            Ok(Some(body)) => {
                n.bytes_in.inc_by(body.len() as u64 + 4);
                wire::decode_peer_frame(&body).map(Some)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match frame {
            Ok(Some(PeerFrame::Echo(batch))) => admit_and_dispatch(ctx, n, batch, None),
            Ok(Some(PeerFrame::Tree(items))) => on_tree_frame(ctx, n, items),
            Ok(Some(PeerFrame::Broadcast(mode))) => {
                tracing::debug!(neighbor = %n.id, %mode, "neighbor forwards by");
                ctx.router.neighbor_up(n.id, mode == Mode::Lazy);
            }
            Ok(Some(PeerFrame::Hello(_))) => {
                ctx.metrics
                    .frame_errors
                    .with_label_values(&["unexpected", "peer"])
                    .inc();
                return "protocol error: second hello".into();
            }
            Ok(None) => return "peer closed the stream".into(),
            Err(e) => {
                ctx.metrics
                    .frame_errors
                    .with_label_values(&[e.kind(), "peer"])
                    .inc();
                if e.kind() != "io" {
                    tracing::warn!(neighbor = %n.id, error = %e, "refusing bad frame from neighbor; closing connection");
                }
                return format!("frame error: {e}");
            }
        }
    }
}

/// Packets from a neighbor: what fits its rate limit goes to the router (the rest is dropped
/// and counted).
fn admit_and_dispatch(
    ctx: &Ctx,
    n: &Neighbor,
    mut packets: Vec<EchoPacket>,
    trees: Option<&Trees>,
) {
    let limited = n.admit(&mut packets, Instant::now());
    if limited > 0 {
        ctx.metrics
            .count_drop(DropReason::NeighborRateLimited, limited);
        tracing::debug!(neighbor = %n.id, limited, "neighbor over its rate limit");
    }
    if !packets.is_empty() {
        ctx.router
            .dispatch_on(Origin::Neighbor(n.id, n.mode()), packets, trees);
    }
}

/// A `Tree` batch: its packets go through the router with their trees, its lazy-push
/// messages to the broadcast machine.
fn on_tree_frame(ctx: &Ctx, n: &Neighbor, items: Vec<TreeItem>) {
    let mut packets = Vec::with_capacity(items.len());
    let mut trees = Trees::with_capacity_and_hasher(items.len(), Default::default());
    let mut control = Vec::new();
    for item in items {
        match item {
            TreeItem::Packet { tree, packet } => {
                trees.insert(packet.id, tree);
                packets.push(packet);
            }
            other => control.push(other),
        }
    }
    admit_and_dispatch(ctx, n, packets, Some(&trees));
    if !control.is_empty() {
        ctx.router.on_tree_control(n.id, control);
    }
}

async fn write_loop(
    ctx: &Ctx,
    n: &Neighbor,
    key: u64,
    mut send: quinn::SendStream,
    batch: &mut Vec<TreeItem>,
) -> String {
    // Each frame is encoded into room of about its size and split off: QUIC keeps the frame
    // itself until it is acknowledged, without a copy (an item's queue cost is at least its
    // encoded size, so the room rarely grows).
    let mut buf = BytesMut::new();
    let max_batch = MAX_BATCH_BYTES.min(ctx.cfg.limits.max_frame_bytes / 2);
    let trees = n.version() >= wire::since::LAZY_PUSH;
    if trees {
        if let Err(e) =
            wire::encode_into_bytes(&PeerFrameRef::Broadcast(ctx.router.mode()), &mut buf)
        {
            return format!("cannot encode broadcast mode: {e}");
        }
        if let Err(e) = send.write_chunk(buf.split().freeze()).await {
            return format!("send failed: {e}");
        }
    }
    let mut plain = Vec::new();
    // Only the neighbor's newest connection takes from its queue (`Neighbor::sender`): when
    // a neighbor restarts faster than the failure detector, the connection it left behind
    // stays attached until its stateless reset, and what it took would be lost.
    let mut sender = n.sender();
    loop {
        if *sender.borrow_and_update() != key {
            if sender.changed().await.is_err() {
                return "neighbor removed".into();
            }
            continue;
        }
        tokio::select! {
            taken = n.queue.pop_batch(max_batch, batch) => if taken.is_none() {
                return "queue closed".into();
            },
            // A newer connection took over while the queue was empty (cancel-safe: nothing
            // was taken).
            _ = sender.changed() => continue,
        }
        buf.clear();
        buf.reserve(batch.iter().map(TreeItem::cost).sum::<usize>() + 64);
        let encoded = if trees {
            wire::encode_into_bytes(&PeerFrameRef::Tree(batch), &mut buf)
        } else {
            // An older neighbor: plain packets (it is never sent lazy push's messages).
            plain.clear();
            plain.extend(batch.iter().filter_map(|i| match i {
                TreeItem::Packet { packet, .. } => Some(packet.clone()),
                _ => None,
            }));
            wire::encode_into_bytes(&PeerFrameRef::Echo(&plain), &mut buf)
        };
        if let Err(e) = encoded {
            ctx.metrics
                .count_drop(DropReason::SendFailed, batch.len() as u64);
            batch.clear();
            tracing::error!(error = %e, "cannot encode echo batch");
            continue;
        }
        let frame = buf.split().freeze();
        let len = frame.len();
        if let Err(e) = send.write_chunk(frame).await {
            // `batch` still holds the packets: the caller counts them as dropped.
            return format!("send failed: {e}");
        }
        batch.clear();
        n.bytes_out.inc_by(len as u64);
    }
}
