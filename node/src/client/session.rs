//! The node side of a client session: hello, then inject and subscribe requests. A session's
//! outgoing packets go through a bounded queue; a client that does not read loses packets
//! (counted, and told with `Lagged`) instead of growing the node's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::subscribers::{Filter, Subscriber};
use crate::ctx::Ctx;
use crate::keydir::{self, OfferError};
pub use crate::limits::CLIENT_HEARTBEAT as HEARTBEAT;
use crate::limits::MAX_ACK_IDS;
use crate::limits::MAX_DELIVER_BATCH;
use crate::limits::MAX_TAGS;
use crate::metrics::{DropReason, HandshakeReason, Metrics};
use crate::outq::OutQueue;
use crate::ozone::{self, service::ServiceError};
use crate::rate::TokenBucket;
use crate::router::Origin;
use crate::wire::{
    self, close, ClientErrorCode, ClientEvent, ClientEventRef, ClientRequest, MsgId,
    SubscribeFilter,
};

const READER_ENDED_BY_WRITER: &str = "writer ended";
const FRAME_ERROR: &str = "frame error";

/// Serve one client connection until it ends.
pub async fn serve(ctx: Arc<Ctx>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    // Peers get large windows; a client gets small ones, so that a slow or hostile client
    // costs the node a bounded amount of memory.
    conn.set_send_window(crate::transport::CLIENT_SEND_WINDOW);
    conn.set_receive_window(quinn::VarInt::from_u32(
        crate::transport::CLIENT_RECEIVE_WINDOW,
    ));
    let subs = &ctx.router.subscribers;
    let Some(_slot) = subs.try_open() else {
        ctx.metrics
            .connections_rejected
            .with_label_values(&["clients_full"])
            .inc();
        tracing::warn!(%remote, max = subs.max_sessions, "refusing client: session limit reached (limits.max_clients)");
        conn.close(
            quinn::VarInt::from_u32(close::BUSY),
            b"too many clients; try another node",
        );
        return;
    };
    let timeout = Duration::from_millis(ctx.cfg.peer.handshake_timeout_ms);
    let (mut send, mut recv) = match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            ctx.metrics.handshake_failed(HandshakeReason::Hello);
            conn.close(quinn::VarInt::from_u32(close::PROTOCOL), b"no hello");
            return;
        }
    };
    let mut buf = Vec::new();
    let client_version = match tokio::time::timeout(
        timeout,
        echomesh_client::framing::read_frame::<_, ClientRequest>(&mut recv, 4096, &mut buf),
    )
    .await
    {
        Ok(Ok(Some(ClientRequest::Hello { version, agent })))
            if version >= wire::MIN_PROTOCOL_VERSION =>
        {
            ctx.metrics
                .client_requests
                .with_label_values(&["hello"])
                .inc();
            tracing::debug!(%remote, version, %agent, "client session");
            version
        }
        Ok(Ok(Some(ClientRequest::Hello { version, .. }))) => {
            ctx.metrics.handshake_failed(HandshakeReason::Version);
            let ev = ClientEvent::Error {
                code: ClientErrorCode::VersionUnsupported,
                message: format!(
                    "client protocol {version} is too old; this node needs {}",
                    wire::MIN_PROTOCOL_VERSION
                ),
            };
            if let Ok(b) = wire::encode(&ev) {
                let _ = send.write_all(&b).await;
            }
            conn.close(quinn::VarInt::from_u32(close::VERSION), b"version");
            return;
        }
        other => {
            if let Ok(Err(e)) = &other {
                ctx.metrics
                    .frame_errors
                    .with_label_values(&[e.kind(), "client"])
                    .inc();
            }
            ctx.metrics.handshake_failed(HandshakeReason::Hello);
            tracing::info!(%remote, "client did not start with a hello; closing");
            conn.close(quinn::VarInt::from_u32(close::PROTOCOL), b"expected hello");
            return;
        }
    };
    if ctx.drain.is_draining() {
        refuse_while_draining(&ctx, &conn, &mut send, client_version).await;
        return;
    }
    let welcome = ClientEventRef::Welcome {
        version: wire::PROTOCOL_VERSION,
        node_id: ctx.identity.id,
        software: concat!("echomesh-node/", env!("CARGO_PKG_VERSION")),
        max_payload: u32::try_from(ctx.cfg.echo.max_payload_bytes).unwrap_or(u32::MAX),
    };
    match wire::encode(&welcome) {
        Ok(b) => {
            if send.write_all(&b).await.is_err() {
                return;
            }
        }
        Err(_) => return,
    }

    let (ctrl_tx, ctrl_rx) = mpsc::channel::<ClientEvent>(32);
    let sub = Arc::new(Subscriber {
        id: subs.next_id.fetch_add(1, Ordering::Relaxed),
        filter: RwLock::new(Filter::None),
        queue: OutQueue::new(ctx.cfg.limits.client_queue_bytes),
        positions: std::sync::atomic::AtomicBool::new(false),
        epoch: AtomicU64::new(0),
        lagged: AtomicU64::new(0),
        version: client_version,
        ctrl: ctrl_tx.downgrade(),
    });
    // The writer ends after the reader, once it has sent the reader's last words (an error
    // explaining why the session ends), so a refused client learns why.
    let session = async {
        let (r, w) = tokio::join!(
            read_requests(&ctx, &sub, &mut recv, ctrl_tx),
            write_events(&ctx.metrics, &sub, &mut send, ctrl_rx)
        );
        if r == READER_ENDED_BY_WRITER {
            w
        } else {
            r
        }
    };
    let reason = tokio::select! {
        r = session => r,
        e = conn.closed() => format!("closed: {e}"),
        _ = ctx.shutdown.cancelled() => "node stopping".into(),
    };
    if reason.starts_with(FRAME_ERROR) {
        // Let the explanation reach the client before the connection goes (bounded).
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    subs.unregister(sub.id);
    let pending = sub.queue.clear();
    if pending > 0 {
        tracing::debug!(%remote, pending, "client left with undelivered packets");
    }
    tracing::debug!(%remote, %reason, "client session ended");
    let code = if ctx.shutdown.is_cancelled() {
        close::SHUTDOWN
    } else {
        close::NORMAL
    };
    conn.close(quinn::VarInt::from_u32(code), b"");
}

async fn read_requests(
    ctx: &Arc<Ctx>,
    sub: &Arc<Subscriber>,
    recv: &mut quinn::RecvStream,
    ctrl: mpsc::Sender<ClientEvent>,
) -> String {
    let max = ctx.cfg.limits.max_frame_bytes;
    let mut buf = Vec::new();
    let bucket = Mutex::new(TokenBucket::new(ctx.cfg.limits.client_rate, Instant::now()));
    loop {
        let req = match echomesh_client::framing::read_frame::<_, ClientRequest>(
            recv, max, &mut buf,
        )
        .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return "client finished".into(),
            Err(e) => {
                ctx.metrics
                    .frame_errors
                    .with_label_values(&[e.kind(), "client"])
                    .inc();
                if e.kind() != "io" {
                    tracing::info!(error = %e, "refusing bad frame from client; closing session");
                    let _ = ctrl
                        .send(ClientEvent::Error {
                            code: ClientErrorCode::BadRequest,
                            message: e.to_string(),
                        })
                        .await;
                }
                return format!("{FRAME_ERROR}: {e}");
            }
        };
        ctx.metrics
            .client_requests
            .with_label_values(&[req.kind()])
            .inc();
        let ev = answer(ctx, sub, &bucket, req).await;
        if ctrl.send(ev).await.is_err() {
            return READER_ENDED_BY_WRITER.into();
        }
    }
}

/// Serve one request; every request has exactly one answer.
async fn answer(
    ctx: &Arc<Ctx>,
    sub: &Arc<Subscriber>,
    bucket: &Mutex<TokenBucket>,
    req: ClientRequest,
) -> ClientEvent {
    match req {
        ClientRequest::Inject(batch) => inject(ctx, bucket, batch).await,
        ClientRequest::Subscribe(filter) => match parse_filter(filter) {
            Ok(f) => {
                *sub.filter.write().unwrap_or_else(|p| p.into_inner()) = f;
                ctx.router.subscribers.register(sub.clone());
                ClientEvent::Subscribed
            }
            Err(ev) => ev,
        },
        ClientRequest::SubscribeAt { filter, after } => match parse_filter(filter) {
            Ok(f) => resume(ctx, sub, f, after),
            Err(ev) => ev,
        },
        ClientRequest::Deposit { addr, payload } => {
            match ozone::service::deposit(ctx, addr, payload, ozone::service::Notify::LiveReaders)
                .await
            {
                Ok((msg, copies)) => ClientEvent::Deposited {
                    id: MsgId(msg.id),
                    copies: copies.min(255) as u8,
                },
                Err(e) => service_error(e),
            }
        }
        ClientRequest::Fetch {
            addr,
            proof,
            after,
            limit,
        } => match ozone::service::fetch(ctx, addr, proof, after, limit).await {
            Ok((messages, more)) => ClientEvent::Fetched { messages, more },
            Err(e) => service_error(e),
        },
        ClientRequest::Ack { addr, proof, ids } => {
            let ids = ids.into_iter().take(MAX_ACK_IDS).map(|i| i.0).collect();
            match ozone::service::ack(ctx, addr, proof, ids).await {
                Ok(n) => ClientEvent::Acked {
                    removed: n.min(u64::from(u32::MAX)) as u32,
                },
                Err(e) => service_error(e),
            }
        }
        ClientRequest::OzoneInfo { addr, proof } => {
            match ozone::service::info(ctx, addr, proof).await {
                Ok(i) => ClientEvent::OzoneInfo(i),
                Err(e) => service_error(e),
            }
        }
        ClientRequest::PublishKey(bundle) => publish_key(ctx, bundle).await,
        ClientRequest::LookupKey(who) => match ctx.keydir.lookup(who).await {
            Ok(mut found) => {
                if sub.version < wire::since::MAILBOX {
                    found.retain(|b| b.format < keydir::BUNDLE_FORMAT);
                }
                ClientEvent::KeyLookup(found)
            }
            Err(e) => ClientEvent::Error {
                code: ClientErrorCode::Unavailable,
                message: format!("key directory unavailable: {e}"),
            },
        },
        ClientRequest::Hello { .. } => {
            ctx.metrics
                .frame_errors
                .with_label_values(&["unexpected", "client"])
                .inc();
            ClientEvent::Error {
                code: ClientErrorCode::BadRequest,
                message: "hello sent twice".into(),
            }
        }
    }
}

/// Inject a batch. Backpressure, not loss: a fast client is slowed down by not being read.
async fn inject(
    ctx: &Arc<Ctx>,
    bucket: &Mutex<TokenBucket>,
    batch: Vec<crate::echo::EchoPacket>,
) -> ClientEvent {
    let bytes: usize = batch.iter().map(|p| p.payload.len()).sum();
    let delay = bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take_and_delay(batch.len(), bytes, Instant::now());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let acc = ctx.router.dispatch(Origin::Client, batch);
    ClientEvent::Injected {
        accepted: acc.accepted,
        duplicates: acc.duplicates,
        rejected: acc.rejected,
    }
}

async fn publish_key(ctx: &Arc<Ctx>, bundle: keydir::KeyBundle) -> ClientEvent {
    let fp = bundle.fingerprint();
    match keydir::flood::publish(ctx, bundle).await {
        Ok(o) => {
            tracing::info!(participant = %fp.short_id(), outcome = ?o, "key bundle published by client");
            ClientEvent::KeyPublished {
                changed: o.changed(),
            }
        }
        Err(OfferError::Bundle(e)) => ClientEvent::Error {
            code: ClientErrorCode::Rejected,
            message: e.to_string(),
        },
        Err(e @ OfferError::Store(_)) => ClientEvent::Error {
            code: ClientErrorCode::Unavailable,
            message: format!("{e}; try again or use another node"),
        },
    }
}

async fn write_events(
    m: &Metrics,
    sub: &Subscriber,
    send: &mut quinn::SendStream,
    mut ctrl: mpsc::Receiver<ClientEvent>,
) -> String {
    let mut batch = Vec::new();
    let mut packets = Vec::new();
    // Each write is encoded into room of about its size and split off: QUIC keeps it until it
    // is acknowledged, without a copy, and an idle client holds no buffer.
    let mut buf = bytes::BytesMut::new();
    // Position subscriptions hear from the node at least every HEARTBEAT (an empty
    // `DeliverAt`), so that a client can tell a quiet subscription from a stalled connection.
    let mut last_at: Option<wire::LogPosition> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        buf.clear();
        tokio::select! {
            ev = ctrl.recv() => {
                let Some(ev) = ev else { return "reader ended".into() };
                let kind = match ev {
                    ClientEvent::Error { .. } => "error",
                    ClientEvent::Redirect { .. } => "redirect",
                    _ => "reply",
                };
                if let ClientEvent::Resumed { at, .. } = &ev {
                    last_at = Some(last_at.map_or(*at, |l| if l.epoch == at.epoch && l.seq > at.seq { l } else { *at }));
                }
                m.client_events.with_label_values(&[kind]).inc();
                if wire::encode_into_bytes(&ev, &mut buf).is_err() {
                    continue;
                }
            }
            _ = heartbeat.tick(), if last_at.is_some() => {
                let Some(at) = last_at else { continue };
                let ev = ClientEvent::DeliverAt { at, packets: Vec::new() };
                if wire::encode_into_bytes(&ev, &mut buf).is_err() {
                    continue;
                }
            }
            r = sub.queue.pop_batch(MAX_DELIVER_BATCH, &mut batch) => {
                if r.is_none() {
                    return "queue closed".into();
                }
                m.client_events.with_label_values(&["deliver"]).inc();
                let last = batch.last().map_or(0, |(seq, _)| *seq);
                packets.clear();
                packets.extend(batch.drain(..).map(|(_, p)| p));
                let res = if sub.positions.load(Ordering::Relaxed) {
                    let at = wire::LogPosition {
                        epoch: sub.epoch.load(Ordering::Relaxed),
                        seq: last + 1,
                    };
                    last_at = Some(at);
                    heartbeat.reset();
                    let ev = ClientEvent::DeliverAt {
                        at,
                        packets: std::mem::take(&mut packets),
                    };
                    let res = wire::encode_into_bytes(&ev, &mut buf);
                    if let ClientEvent::DeliverAt { packets: p, .. } = ev {
                        packets = p;
                    }
                    res
                } else {
                    wire::encode_into_bytes(&ClientEventRef::Deliver(&packets), &mut buf)
                };
                packets.clear();
                if res.is_err() {
                    continue;
                }
                let lagged = sub.lagged.swap(0, Ordering::Relaxed);
                if lagged > 0 {
                    m.client_events.with_label_values(&["lagged"]).inc();
                    let _ = wire::encode_into_bytes(&ClientEvent::Lagged { dropped: lagged }, &mut buf);
                }
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = send.write_chunk(buf.split().freeze()).await {
            return format!("send failed: {e}");
        }
    }
}

fn parse_filter(filter: SubscribeFilter) -> Result<Filter, ClientEvent> {
    match filter {
        SubscribeFilter::All => Ok(Filter::All),
        SubscribeFilter::Tags(tags) if tags.len() <= MAX_TAGS => {
            Ok(Filter::Tags(tags.into_iter().collect()))
        }
        SubscribeFilter::Tags(tags) => Err(ClientEvent::Error {
            code: ClientErrorCode::TooLarge,
            message: format!(
                "{} tags in one subscription; at most {MAX_TAGS}",
                tags.len()
            ),
        }),
    }
}

/// Subscribe with log positions; with `after`, first queue what matched since then. Done with
/// the packet log locked, so live deliveries continue exactly where the replay ends. What does
/// not fit the session's queue is counted as lagged (the client is told).
fn resume(
    ctx: &Ctx,
    sub: &Arc<Subscriber>,
    f: Filter,
    after: Option<wire::LogPosition>,
) -> ClientEvent {
    let m = &ctx.metrics;
    let budget = ctx.cfg.limits.client_queue_bytes;
    ctx.router.with_log(|log| {
        let r = after.map(|a| log.replay(a, |p| ctx.router.client_gets(&f, p), budget));
        sub.epoch.store(log.epoch(), Ordering::Relaxed);
        sub.positions.store(true, Ordering::Relaxed);
        *sub.filter.write().unwrap_or_else(|p| p.into_inner()) = f;
        ctx.router.subscribers.register(sub.clone());
        let Some(r) = r else {
            m.client_resumes.with_label_values(&["new"]).inc();
            return ClientEvent::Resumed {
                replayed: 0,
                missed: 0,
                stale: false,
                at: log.head_position(),
            };
        };
        let replayed = r.packets.len() as u64;
        let packets: Vec<_> = {
            let f = sub.filter.read().unwrap_or_else(|p| p.into_inner());
            r.packets.iter().map(|(seq, p)| (*seq, f.keep(p))).collect()
        };
        let dropped = sub.queue.push_all(&packets);
        if dropped > 0 {
            sub.lagged.fetch_add(dropped, Ordering::Relaxed);
            m.count_drop(DropReason::ClientQueueFull, dropped);
        }
        m.packets_delivered.inc_by(replayed - dropped);
        let result = if r.stale_epoch {
            "stale"
        } else if r.missed > 0 || dropped > 0 || r.next < log.head() {
            "gap"
        } else {
            "complete"
        };
        m.client_resumes.with_label_values(&[result]).inc();
        tracing::debug!(
            session = sub.id,
            replayed,
            missed = r.missed,
            stale = r.stale_epoch,
            result,
            "client resumed"
        );
        ClientEvent::Resumed {
            replayed: replayed.min(u64::from(u32::MAX)) as u32,
            missed: r.missed + log.head().saturating_sub(r.next),
            stale: r.stale_epoch,
            at: log.head_position(),
        }
    })
}

/// A draining node takes no new sessions: a client that understands redirects is told where
/// to go instead (and follows); an older one gets the reason as the connection's close reason.
async fn refuse_while_draining(
    ctx: &Ctx,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    client_version: u16,
) {
    const REASON: &str =
        "this node is draining for maintenance; connect to another node of the mesh";
    ctx.metrics
        .connections_rejected
        .with_label_values(&["draining"])
        .inc();
    let nodes =
        crate::topology::flood::redirect_targets(ctx, echomesh_proto::drain::MAX_REDIRECT_TARGETS);
    if client_version >= wire::since::REDIRECT && !nodes.is_empty() {
        ctx.metrics
            .clients_redirected
            .with_label_values(&["at_hello"])
            .inc();
        let ev = ClientEvent::Redirect {
            nodes,
            reason: REASON.into(),
        };
        if let Ok(b) = wire::encode(&ev) {
            let _ = send.write_all(&b).await;
            let _ = send.finish();
            // Bounded wait for the client to read it and hang up.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        }
    }
    conn.close(quinn::VarInt::from_u32(close::BUSY), REASON.as_bytes());
}

fn service_error(e: ServiceError) -> ClientEvent {
    let code = match &e {
        ServiceError::WrongProof => ClientErrorCode::WrongProof,
        ServiceError::NotDurable { .. } => ClientErrorCode::NotDurable,
        ServiceError::Ozone(o) => match o.label() {
            "quota" | "disk_budget" => ClientErrorCode::Quota,
            "too_large" => ClientErrorCode::TooLarge,
            "bad_id" => ClientErrorCode::BadRequest,
            _ => ClientErrorCode::Unavailable,
        },
        ServiceError::Store(_) => ClientErrorCode::Unavailable,
    };
    ClientEvent::Error {
        code,
        message: e.to_string(),
    }
}
