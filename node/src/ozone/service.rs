//! The node's ozone service: what a client's deposit, fetch and acknowledgement do, and how
//! replicas serve each other.
//!
//! Cluster: this node plus the neighbors that announced the same cluster name; live members
//! are those connected now (QUIC keep-alives detect a dead member within the idle timeout).
//! R = min(`ozone.replicas`, cluster size), W = min(`ozone.write_quorum`, R).
//! - Deposit: the accepting node assigns the sequence number and stores the message on the R
//!   owners among live members (rendezvous placement), itself included when it is one; the
//!   client hears "durable" only after W of them synced it. Fewer: `NotDurable`, an error.
//! - Fetch: pages from every live member, merged by (seq, id): whichever replicas survive,
//!   the reader sees every acknowledged deposit, once, in order.
//! - Ack: sent to every live member; each keeps a tombstone.
//! - Repair: when a member (re)connects, each side pushes to the other the tombstones and
//!   messages of every ozone the other owns (`sync_neighbor`), so a restarted or partitioned
//!   replica converges without an operator.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::placement;
use super::store::{DepositOutcome, OzoneError, StoredMessage};
use super::{OzoneAddr, OzoneProof};
use crate::ctx::Ctx;
use crate::echo::EchoPacket;
use crate::identity::NodeId;
use crate::peer::rpc::{self, FanOut};
use crate::peer::Neighbor;
use crate::router::Origin;
use crate::store::StoreError;
use crate::tags;
use crate::wire::Position;
use crate::wire::{MsgId, OzoneInfo, PeerReply, PeerRequest};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Ozone(#[from] OzoneError),
    #[error("the proof does not open this ozone (wrong secret?)")]
    WrongProof,
    #[error("only {copies} of the {needed} durable copies this cluster requires could be made ({live} of {known} cluster members reachable): not acknowledged; retry later or on another node")]
    NotDurable {
        copies: usize,
        needed: usize,
        live: usize,
        known: usize,
    },
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

pub use crate::limits::MAX_FETCH_BYTES;
pub use crate::limits::MAX_FETCH_MESSAGES;
use echomesh_proto::antientropy::{self as ae, Pushed, Session};
use echomesh_proto::clock::unix_ms;
use echomesh_proto::membership;

/// The cluster as this node sees it now.
pub struct Members {
    /// Cluster size: this node and every neighbor that announced our cluster.
    pub known: usize,
    /// Live members other than this node (reads and acknowledgements go to all of them).
    pub peers: Vec<Arc<Neighbor>>,
    /// Members new ozone copies may be placed on: live and in service (not draining or
    /// left), this node included unless it is draining.
    pub pool: Vec<NodeId>,
    pub r: usize,
    pub w: usize,
}

impl Members {
    pub fn now(ctx: &Ctx) -> Members {
        let all = ctx.neighbors().all();
        let records: Vec<_> = all.iter().map(|n| (n.id, n.member())).collect();
        let me = membership::State::of_self(ctx.drain.departure());
        let view = membership::pool(
            ctx.identity.id,
            me,
            &ctx.cfg.cluster,
            records.iter().map(|(id, m)| (*id, m)),
        );
        let peers = all
            .into_iter()
            .filter(|n| view.up.contains(&n.id))
            .collect();
        let r = ctx.cfg.ozone.replicas.min(view.known);
        Members {
            known: view.known,
            peers,
            pool: view.pool,
            r,
            w: ctx.cfg.ozone.write_quorum.min(r),
        }
    }

    /// Where an ozone's copies belong now.
    pub fn owners(&self, addr: &OzoneAddr) -> Vec<NodeId> {
        placement::owners(addr, &self.pool, self.r)
    }

    fn peer(&self, id: &NodeId) -> Option<&Arc<Neighbor>> {
        self.peers.iter().find(|n| n.id == *id)
    }
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

/// Whether a durable deposit is also flooded, tagged for the ozone, so live readers get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    LiveReaders,
    /// Nobody reads this ozone live (Smoke mailboxes: released on retrieval only).
    Nobody,
}

/// Deposit a payload on the owners; on success, also flood it tagged for the ozone so live
/// readers get it (see [`Notify`]).
#[tracing::instrument(name = "ozone.deposit", skip_all, fields(ozone = %addr.short()))]
pub async fn deposit(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    payload: Bytes,
    notify: Notify,
) -> Result<(StoredMessage, usize), ServiceError> {
    let m = &ctx.metrics;
    let _timer = m.ozone_deposit_seconds.start_timer();
    let now = unix_ms();
    let msg = StoredMessage {
        addr,
        seq: ctx.ozones.next_seq(now),
        id: *blake3::hash(&payload).as_bytes(),
        expires_ms: now.saturating_add(ctx.ozones.limits().retention_ms),
        payload,
    };
    let members = Members::now(ctx);
    let me = ctx.identity.id;
    let owners = members.owners(&addr);
    let mut copies = 0usize;
    let mut outcome = None;
    let mut last_err: Option<ServiceError> = None;
    let replicas = owners.iter().filter_map(|o| members.peer(o).cloned());
    let mut remote = FanOut::spawn(
        replicas,
        |n| tracing::info_span!("ozone.replicate", neighbor = %n.id),
        |n| {
            let (ctx, msg) = (ctx.clone(), msg.clone());
            async move { super::replicate::store(&ctx, &n, msg).await }
        },
    );
    if owners.contains(&me) {
        match ctx.ozone_commit.deposit_one(msg.clone()).await {
            Ok(o) => {
                copies += 1;
                outcome = Some(o);
            }
            Err(e) => last_err = Some(e.into()),
        }
    }
    while let Some((_, r)) = remote.next().await {
        match r {
            Ok(PeerReply::Stored { durable }) if durable >= 1 => copies += 1,
            Ok(other) => {
                tracing::warn!(ozone = %addr.short(), reply = ?other, "replica did not store")
            }
            Err(e) => {
                tracing::info!(ozone = %addr.short(), error = %e, "replica unreachable for a deposit")
            }
        }
    }
    let result = if copies >= members.w {
        Ok(outcome.unwrap_or(DepositOutcome::Stored))
    } else if let (0, Some(e)) = (copies, last_err) {
        Err(e)
    } else {
        Err(ServiceError::NotDurable {
            copies,
            needed: members.w,
            live: members.peers.len() + 1,
            known: members.known,
        })
    };
    match result {
        Ok(outcome) => {
            let label = match outcome {
                DepositOutcome::Stored => "stored",
                DepositOutcome::Duplicate => "duplicate",
                DepositOutcome::Acknowledged => "acknowledged",
            };
            m.ozone_deposits.with_label_values(&[label]).inc();
            m.ozone_bytes.set(ctx.ozones.total_bytes() as i64);
            tracing::debug!(ozone = %addr.short(), id = %hex::encode(&msg.id[..4]), seq = msg.seq, copies, "ozone deposit durable");
            if outcome == DepositOutcome::Stored && notify == Notify::LiveReaders {
                let tag = addr.tag(tags::epoch_of(now / 1000));
                let pkt =
                    EchoPacket::new(msg.payload.clone(), ctx.cfg.echo.default_hops, Some(tag));
                ctx.router.dispatch(Origin::Client, vec![pkt]);
            }
            Ok((msg, copies))
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

/// One page of an ozone, oldest first, merged from every live member; `true` when more
/// follow.
pub async fn fetch(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    proof: OzoneProof,
    after: Option<Position>,
    limit: u32,
) -> Result<(Vec<StoredMessage>, bool), ServiceError> {
    check_proof(ctx, &addr, &proof)?;
    let limit = limit.clamp(1, MAX_FETCH_MESSAGES);
    let members = Members::now(ctx);
    let req = PeerRequest::OzoneFetch { addr, after, limit };
    let mut remote = FanOut::start(ctx, members.peers, &req, |_| tracing::Span::none());
    let (mut merged, mut more) = local_page(ctx, addr, after, limit).await?;
    while let Some((_, r)) = remote.next().await {
        match r {
            Ok(PeerReply::Messages { messages, more: m }) => {
                merged.extend(messages.into_iter().filter(|x| x.addr == addr));
                more |= m;
            }
            Ok(other) => tracing::warn!(reply = ?other, "unexpected fetch reply"),
            Err(e) => {
                tracing::info!(ozone = %addr.short(), error = %e, "replica unreachable for a fetch")
            }
        }
    }
    merged.sort_by_key(|m| (m.seq, m.id));
    merged.dedup_by(|a, b| a.id == b.id);
    if merged.len() > limit as usize {
        merged.truncate(limit as usize);
        more = true;
    }
    ctx.metrics.ozone_fetches.inc();
    Ok((merged, more))
}

async fn local_page(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    after: Option<Position>,
    limit: u32,
) -> Result<(Vec<StoredMessage>, bool), ServiceError> {
    let limit = limit as usize;
    let after = after.map(|p| (p.seq, p.id.0));
    let mut page = blocking(ctx, move |s| {
        Ok(s.fetch_blocking(&addr, after, limit + 1, MAX_FETCH_BYTES)?)
    })
    .await?;
    let more = page.len() > limit;
    page.truncate(limit);
    Ok((page, more))
}

/// Acknowledge (delete) messages here and on every live member; returns how many this node
/// and its peers removed (the largest count any one of them reported).
pub async fn ack(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    proof: OzoneProof,
    ids: Vec<[u8; 32]>,
) -> Result<u64, ServiceError> {
    check_proof(ctx, &addr, &proof)?;
    let members = Members::now(ctx);
    let req = PeerRequest::OzoneAck {
        addr,
        ids: ids.iter().map(|i| MsgId(*i)).collect(),
    };
    let mut remote = FanOut::start(ctx, members.peers, &req, |_| tracing::Span::none());
    let asked = ids.len();
    let mut removed = blocking(ctx, move |s| Ok(s.ack_blocking(&addr, &ids, unix_ms())?)).await?;
    while let Some((_, r)) = remote.next().await {
        match r {
            Ok(PeerReply::Acked { removed: n }) => removed = removed.max(u64::from(n)),
            Ok(other) => tracing::warn!(reply = ?other, "unexpected ack reply"),
            // A member that misses it gets the tombstones when it reconnects.
            Err(e) => {
                tracing::info!(ozone = %addr.short(), error = %e, "replica unreachable for an acknowledgement")
            }
        }
    }
    tracing::debug!(ozone = %addr.short(), asked, removed, "ozone acknowledgement");
    ctx.metrics.ozone_acks.inc_by(removed);
    ctx.metrics.ozone_bytes.set(ctx.ozones.total_bytes() as i64);
    Ok(removed)
}

/// Counts (on this node), quotas and placement of an ozone.
pub async fn info(
    ctx: &Arc<Ctx>,
    addr: OzoneAddr,
    proof: OzoneProof,
) -> Result<OzoneInfo, ServiceError> {
    check_proof(ctx, &addr, &proof)?;
    let stats = blocking(ctx, move |s| Ok(s.stats_blocking(&addr)?)).await?;
    let members = Members::now(ctx);
    let owners = members.owners(&addr);
    let cfg = &ctx.cfg.ozone;
    Ok(OzoneInfo {
        messages: stats.messages,
        bytes: stats.bytes,
        max_messages: cfg.max_messages_per_ozone,
        max_bytes: cfg.max_bytes_per_ozone,
        retention_secs: cfg.retention_secs,
        replicas: members.r as u32,
        write_quorum: members.w as u32,
        owners: owners.iter().map(|o| o.short()).collect(),
        members_alive: (members.peers.len() + 1) as u32,
        members_known: members.known as u32,
    })
}

/// Answer a neighbor's ozone request.
pub async fn serve_peer(ctx: &Arc<Ctx>, req: PeerRequest) -> PeerReply {
    let r = match req {
        // A draining node takes no new copies, whatever a peer with an older view of it
        // thinks: what it stored after its hand-off would leave with it. The depositing node
        // counts this replica as missing (not durable there), so nothing is acknowledged on it.
        PeerRequest::OzoneStore(_) if ctx.drain.is_draining() => {
            ctx.metrics
                .ozone_deposits
                .with_label_values(&["refused_draining"])
                .inc();
            tracing::info!("refused ozone copies: this node is draining");
            Ok(PeerReply::Error {
                message:
                    "draining: this node takes no new ozone copies; place them on another member"
                        .into(),
            })
        }
        PeerRequest::OzoneStore(messages) => match ctx.ozone_commit.deposit(messages).await {
            // Each copy is stored or refused on its own; one refusal is the reply (the sender
            // then counts this replica as missing for the request).
            Ok(outcomes) => outcomes
                .into_iter()
                .try_fold(0u32, |durable, o| o.map(|_| durable + 1))
                .map(|durable| PeerReply::Stored { durable })
                .map_err(ServiceError::from),
            Err(e) => Err(ServiceError::Store(e)),
        },
        PeerRequest::OzoneAck { addr, ids } => {
            let ids: Vec<[u8; 32]> = ids.into_iter().map(|i| i.0).collect();
            blocking(ctx, move |s| {
                let n = s.ack_blocking(&addr, &ids, unix_ms())?;
                Ok(PeerReply::Acked {
                    removed: n.min(u64::from(u32::MAX)) as u32,
                })
            })
            .await
        }
        PeerRequest::OzoneDigest { addr } => {
            blocking(ctx, move |s| {
                Ok(PeerReply::Digest(s.digest_blocking(&addr)?))
            })
            .await
        }
        PeerRequest::OzoneFetch { addr, after, limit } => {
            local_page(ctx, addr, after, limit.clamp(1, MAX_FETCH_MESSAGES))
                .await
                .map(|(messages, more)| PeerReply::Messages { messages, more })
        }
        // Handled by the peer RPC server before it gets here.
        PeerRequest::Departure(_) => Ok(PeerReply::Noted),
        PeerRequest::EchoHave(_) => Ok(PeerReply::EchoWant(Vec::new())),
        PeerRequest::KeydirDigest | PeerRequest::KeydirEntries { .. } => Ok(PeerReply::Error {
            message: "key-directory requests are answered by the key directory".into(),
        }),
    };
    ctx.metrics.ozone_bytes.set(ctx.ozones.total_bytes() as i64);
    r.unwrap_or_else(|e| PeerReply::Error {
        message: e.to_string(),
    })
}

/// Repair after a (re)connection: push to the neighbor the tombstones, then the messages, of
/// every ozone it owns among the live members. The neighbor does the same towards us, so
/// both converge. Paged; stops when the connection goes.
#[tracing::instrument(name = "ozone.repair", skip_all, fields(neighbor = %n.id))]
pub async fn sync_neighbor(ctx: Arc<Ctx>, n: Arc<Neighbor>) {
    let addrs = match blocking(&ctx, |s| Ok(s.ozones_blocking()?)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "ozone repair skipped: storage error");
            return;
        }
    };
    ctx.metrics.ozone_repair_rounds.inc();
    let mut total = Pushed::default();
    for addr in addrs {
        let members = Members::now(&ctx);
        if !n.is_up() || ctx.shutdown.is_cancelled() {
            return;
        }
        if !members.owners(&addr).contains(&n.id) {
            continue;
        }
        match sync_ozone(&ctx, &n, addr).await {
            Ok(p) => total.add(p),
            Err(()) => return,
        }
    }
    report_repair(&ctx, &n, total);
}

fn report_repair(ctx: &Ctx, n: &Neighbor, p: Pushed) {
    ctx.metrics
        .ozone_repair_items
        .inc_by((p.tombstones + p.messages) as u64);
    ctx.metrics
        .ozone_repair_differing
        .set(p.ozones_differing as i64);
    if p.tombstones + p.messages > 0 {
        tracing::info!(neighbor = %n.id, ozones = p.ozones_differing, tombstones = p.tombstones,
            messages = p.messages, "ozone repair pushed to neighbor");
    }
}

/// Bring one neighbor up to date on one ozone: drive an anti-entropy session
/// (`echomesh_proto::antientropy`) over RPCs and the local store. `Err` when the neighbor
/// stopped answering or refused.
pub async fn sync_ozone(ctx: &Arc<Ctx>, n: &Neighbor, addr: OzoneAddr) -> Result<Pushed, ()> {
    // Every call is bounded by `rpc::call` itself (RPC_TIMEOUT), so the session's own call
    // timer never fires first here; it guards drivers without one.
    let mut session = Session::new(addr, rpc::RPC_TIMEOUT, Instant::now());
    loop {
        let Some(action) = session.poll() else {
            // Every action answers before the next is asked for; a session without one is
            // waiting for nothing.
            return Err(());
        };
        let event = match action {
            ae::Out::Done(r) => return r.map_err(|_| ()),
            ae::Out::LocalDigest => ae::In::LocalDigest(
                blocking(ctx, move |s| Ok(s.digest_blocking(&addr)?))
                    .await
                    .ok(),
            ),
            ae::Out::LocalTombstones => ae::In::LocalTombstones(
                blocking(ctx, move |s| Ok(s.tombstones_blocking(&addr)?))
                    .await
                    .ok()
                    .map(|t| t.into_iter().map(MsgId).collect()),
            ),
            ae::Out::LocalPage { after, limit } => {
                ae::In::LocalPage(local_page(ctx, addr, after, limit as u32).await.ok())
            }
            ae::Out::AskDigest => {
                let r = rpc::call(ctx, n, &PeerRequest::OzoneDigest { addr }).await;
                ae::In::PeerDigest(reply(n, r, |r| match r {
                    PeerReply::Digest(d) => Some(d),
                    _ => None,
                }))
            }
            ae::Out::PushTombstones(ids) => {
                let r = rpc::call(ctx, n, &PeerRequest::OzoneAck { addr, ids }).await;
                ae::In::TombstonesPushed(reply(n, r, |_| Some(())))
            }
            ae::Out::PushMessages(page) => {
                let r = rpc::call(ctx, n, &PeerRequest::OzoneStore(page)).await;
                ae::In::MessagesPushed(reply(n, r, |r| match r {
                    PeerReply::Stored { .. } => Some(()),
                    _ => None,
                }))
            }
        };
        session.handle(event, Instant::now());
    }
}

/// A peer's RPC answer as the anti-entropy session sees it.
fn reply<T>(
    n: &Neighbor,
    r: Result<PeerReply, rpc::RpcError>,
    want: impl FnOnce(PeerReply) -> Option<T>,
) -> ae::Reply<T> {
    match r {
        Ok(r) => want(r).map_or(ae::Reply::Other, ae::Reply::Ok),
        Err(_) => ae::Reply::Failed {
            peer_gone: !n.is_up(),
        },
    }
}

/// Hand one ozone to its owners among the other in-service members (digest-compared, so only
/// what they lack moves). True when every owner has it, or this node is the cluster's only
/// member.
pub async fn hand_off(ctx: &Arc<Ctx>, addr: OzoneAddr) -> bool {
    let members = Members::now(ctx);
    let mut ok = !members.pool.is_empty() || members.known == 1;
    for owner in members.owners(&addr) {
        if let Some(n) = members.peer(&owner) {
            if sync_ozone(ctx, n, addr).await.is_err() {
                ok = false;
            }
        }
    }
    ok
}

/// Every ozone this node holds messages or tombstones of.
pub async fn list(ctx: &Arc<Ctx>) -> Result<Vec<OzoneAddr>, ServiceError> {
    blocking(ctx, |s| Ok(s.ozones_blocking()?)).await
}

/// Periodic repair towards every live member (housekeeping, every minute): restores R copies
/// on the next owner while an owner is down, and catches anything a connect-time round
/// missed. Digests keep it cheap when replicas agree; one round at a time.
pub fn spawn_periodic_repair(ctx: &Arc<Ctx>) {
    if ctx
        .ozones
        .repair_busy
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return;
    }
    let c = ctx.clone();
    ctx.tasks.spawn(async move {
        for n in Members::now(&c).peers {
            sync_neighbor(c.clone(), n).await;
        }
        c.ozones
            .repair_busy
            .store(false, std::sync::atomic::Ordering::Release);
    });
}

/// Ozones hosted and messages stored (housekeeping, every few seconds).
pub async fn update_gauges(ctx: &Arc<Ctx>) {
    match blocking(ctx, |s| Ok(s.hosted_blocking()?)).await {
        Ok((ozones, messages)) => {
            ctx.metrics.ozones_hosted.set(ozones as i64);
            ctx.metrics.ozone_messages.set(messages as i64);
            ctx.metrics.ozone_bytes.set(ctx.ozones.total_bytes() as i64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read ozone counts"),
    }
}

/// Evict what outlived its retention (housekeeping).
pub async fn sweep(ctx: &Arc<Ctx>) {
    match blocking(ctx, |s| Ok(s.sweep_expired_blocking(unix_ms(), 10_000)?)).await {
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
