//! What the admin API and the console can do, as plain functions of the node's [`Ctx`]: the
//! `/v1` handlers (JSON) and the console's pages and forms (HTML) both call these, so nothing
//! the console does is missing from the API and no rule lives in two places.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use crate::ctx::Ctx;
use crate::invite::InviteToken;
use crate::peer::NeighborView;
use echomesh_proto::admin as api;
use echomesh_proto::clock::unix_now;

/// An operation refused or failed: the HTTP status it maps to and a message that says what to
/// do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub status: StatusCode,
    pub message: String,
}

pub type OpResult<T> = Result<T, OpError>;

fn fail<T>(status: StatusCode, message: impl Into<String>) -> OpResult<T> {
    Err(OpError {
        status,
        message: message.into(),
    })
}

/// Refresh the gauges that are cheap to compute, so a scrape or a page never shows a stale
/// state between two housekeeping rounds.
pub fn refresh_gauges(ctx: &Ctx) {
    ctx.neighbors().update_gauges();
    ctx.metrics
        .client_sessions
        .set(ctx.router.subscribers.sessions() as i64);
}

/// Ready to serve, or why not (the text `/readyz` answers).
pub fn readiness(ctx: &Ctx) -> Result<(), &'static str> {
    if ctx.drain.is_draining() {
        Err("draining")
    } else if !ctx.ready.load(Ordering::SeqCst) || ctx.shutdown.is_cancelled() {
        Err("starting or stopping")
    } else {
        Ok(())
    }
}

pub fn status(ctx: &Ctx) -> api::Status {
    let all = ctx.neighbors().all();
    api::Status {
        id: ctx.identity.id.short(),
        fingerprint: ctx.identity.id.fingerprint(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: crate::wire::PROTOCOL_VERSION,
        ready: ctx.ready.load(Ordering::SeqCst) && !ctx.drain.is_draining(),
        draining: ctx.drain.is_draining(),
        cluster: ctx.cfg.cluster.clone(),
        listen: ctx
            .endpoint
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        advertise: ctx.advertise.clone(),
        uptime_secs: ctx.started.elapsed().as_secs(),
        neighbors_up: all.iter().filter(|n| n.is_up()).count(),
        neighbors_total: all.len(),
        client_sessions: ctx.router.subscribers.sessions(),
        drain: ctx.drain.status(),
        bridge: bridge_status(ctx),
    }
}

pub fn bridge_status(ctx: &Ctx) -> Option<api::BridgeStatus> {
    let b = &ctx.bridge;
    let listen = *b.listen_addr.lock().unwrap_or_else(|p| p.into_inner());
    let links = echo_links(ctx);
    if listen.is_none() && links.is_empty() {
        return None;
    }
    let cert = *b.listener_cert.lock().unwrap_or_else(|p| p.into_inner());
    Some(api::BridgeStatus {
        listen: listen.map(|a| a.to_string()),
        tls: listen.is_some() && !b.cfg.plain,
        cert_sha256: cert.map(hex::encode),
        links_up: links.iter().filter(|l| l.state == "up").count(),
        links_total: links.len(),
        clients: b.links().iter().filter(|l| !l.is_neighbor()).count(),
    })
}

/// The Echo links as `neighbors` entries of kind `echo`: configured outgoing links, and
/// incoming connections allowed as neighbors.
fn echo_links(ctx: &Ctx) -> Vec<api::NeighborInfo> {
    use crate::bridge::hub::{Direction, Link};
    let b = &ctx.bridge;
    let entry = |id: String,
                 state: &str,
                 origin: &str,
                 since: std::time::Duration,
                 err: Option<String>,
                 addr: String,
                 url: Option<String>,
                 cert: Option<[u8; 32]>,
                 link: Option<&Link>| api::NeighborInfo {
        kind: "echo".into(),
        fingerprint: id.clone(),
        id,
        addr,
        state: state.into(),
        mode: "full".into(),
        origin: origin.into(),
        rtt_ms: None,
        since_secs: since.as_secs(),
        queue_bytes: link.map_or(0, |l| l.queue.bytes()),
        last_error: err,
        departure: "up".into(),
        protocol: 0,
        connections: Vec::new(),
        echo: Some(api::EchoLinkInfo {
            direction: match link.map(|l| l.direction) {
                Some(Direction::In) => "in".into(),
                _ => "out".into(),
            },
            url,
            cert_sha256: cert.map(hex::encode),
            frames_in: link.map_or(0, |l| l.frames_in.load(Ordering::Relaxed)),
            frames_out: link.map_or(0, |l| l.frames_out.load(Ordering::Relaxed)),
        }),
    };
    let mut out = Vec::new();
    for (id, o) in b.outgoing() {
        let link = o.link.and_then(|k| b.link(k));
        out.push(entry(
            id,
            o.state.label(),
            o.origin,
            o.since.elapsed(),
            o.last_error.clone(),
            o.url.addr.clone(),
            Some(o.url.to_string()),
            o.cert_sha256,
            link.as_deref(),
        ));
    }
    for l in b.links() {
        if l.direction == Direction::In && l.is_neighbor() {
            out.push(entry(
                format!("echo-in-{}", l.key),
                "up",
                "incoming",
                l.since.elapsed(),
                None,
                l.remote.to_string(),
                None,
                l.peer_cert,
                Some(&l),
            ));
        }
    }
    out
}

pub fn neighbor_info(v: &NeighborView) -> api::NeighborInfo {
    api::NeighborInfo {
        kind: "quic".into(),
        echo: None,
        id: v.id.short(),
        fingerprint: v.id.fingerprint(),
        addr: v
            .addr
            .clone()
            .or_else(|| v.remote.map(|r| r.to_string()))
            .unwrap_or_default(),
        state: v.state.label().into(),
        mode: v.mode.to_string(),
        origin: serde_json::to_value(v.origin)
            .ok()
            .and_then(|x| x.as_str().map(String::from))
            .unwrap_or_default(),
        rtt_ms: v.rtt.map(|d| d.as_secs_f64() * 1000.0),
        since_secs: v.since.as_secs(),
        queue_bytes: v.queue_bytes,
        last_error: v.last_error.clone(),
        departure: v.departure.label().into(),
        protocol: v.version,
        connections: v
            .paths
            .iter()
            .map(|p| api::QuicPathInfo {
                rtt_ms: p.rtt.as_secs_f64() * 1000.0,
                cwnd_bytes: p.cwnd,
                congestion_events: p.congestion_events,
                sent_packets: p.sent_packets,
                lost_packets: p.lost_packets,
                mtu: p.current_mtu,
            })
            .collect(),
    }
}

/// Every neighbor: QUIC neighbors, then Echo links.
pub fn neighbors(ctx: &Ctx) -> Vec<api::NeighborInfo> {
    let mut list: Vec<api::NeighborInfo> = ctx
        .neighbors()
        .all()
        .iter()
        .map(|n| neighbor_info(&n.view()))
        .collect();
    list.extend(echo_links(ctx));
    list
}

/// This node and every neighbor as members of the mesh, as the failure detector sees them.
pub fn members(ctx: &Ctx) -> api::MembersView {
    let now = std::time::Instant::now();
    let wall_ms = echomesh_proto::clock::unix_ms();
    let unix_ms = |at: std::time::Instant| {
        wall_ms.saturating_sub(now.saturating_duration_since(at).as_millis() as u64)
    };
    let members = ctx
        .neighbors()
        .all()
        .iter()
        .map(|n| {
            let m = n.member();
            api::MemberInfo {
                id: n.id.short(),
                fingerprint: n.id.fingerprint(),
                cluster: m.cluster().map(str::to_string),
                state: m.state().label().into(),
                since_unix_ms: unix_ms(m.state_since()),
                last_heard_ms: m
                    .last_heard()
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                heartbeats: m.sends_heartbeats(),
                protocol: m.protocol(),
                suspicions: m.suspicions(),
                failures: m.failures(),
                flaps: m.flaps(),
            }
        })
        .collect();
    api::MembersView {
        cluster: ctx.cfg.cluster.clone(),
        id: ctx.identity.id.short(),
        state: echomesh_proto::membership::State::of_self(ctx.drain.departure())
            .label()
            .into(),
        heartbeat_ms: ctx.cfg.peer.heartbeat_ms,
        suspect_ms: ctx.cfg.peer.suspect_ms,
        fail_ms: ctx.cfg.peer.fail_ms,
        members,
    }
}

/// A one-time invite token for another node (`ttl_secs` defaults to the configured validity).
pub fn invite(ctx: &Ctx, ttl_secs: Option<u64>) -> OpResult<api::InviteResponse> {
    let ttl = ttl_secs.unwrap_or(ctx.cfg.invite.default_ttl_secs);
    if ttl == 0 || ttl > 7 * 24 * 3600 {
        return fail(
            StatusCode::BAD_REQUEST,
            "ttl_secs must be between 1 and 604800 (7 days)",
        );
    }
    let now = unix_now();
    let expires = now + ttl;
    let secret = match ctx
        .invites
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .issue(now, expires)
    {
        Ok(s) => s,
        Err(e) => return fail(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
    };
    let token = InviteToken {
        addr: ctx.advertise.clone(),
        id: ctx.identity.id,
        secret,
        expires_unix: expires,
        cluster: ctx.cfg.cluster.clone(),
    };
    ctx.metrics.invites_issued.inc();
    let warning = ctx.advertise.starts_with("127.").then(|| {
        format!(
            "the token tells the joining node to dial {}, a loopback address: only nodes on this host can use it. \
             Set `advertise` (or --advertise) to an address other hosts reach.",
            ctx.advertise
        )
    });
    tracing::info!(expires_in_secs = ttl, addr = %ctx.advertise, "invite issued");
    Ok(api::InviteResponse {
        token: token.encode(),
        addr: ctx.advertise.clone(),
        expires_unix: expires,
        warning,
    })
}

/// Use another node's invite token: both nodes pin each other.
pub async fn join(ctx: &Arc<Ctx>, token: &str) -> OpResult<api::JoinResponse> {
    let res = tokio::time::timeout(
        Duration::from_millis(ctx.cfg.peer.handshake_timeout_ms * 3),
        crate::peer::join::join(ctx, token.trim()),
    )
    .await;
    match res {
        Ok(Ok(rec)) => {
            let view = ctx.neighbors().get(&rec.id).map(|n| n.view());
            match view {
                Some(v) => Ok(api::JoinResponse {
                    neighbor: neighbor_info(&v),
                }),
                None => fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "neighbor vanished right after joining",
                ),
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "join failed");
            let code = match e {
                crate::peer::join::JoinError::Token(_) | crate::peer::join::JoinError::OwnToken => {
                    StatusCode::BAD_REQUEST
                }
                crate::peer::join::JoinError::Refused(_) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_GATEWAY,
            };
            fail(code, e.to_string())
        }
        Err(_) => fail(StatusCode::GATEWAY_TIMEOUT, "join did not finish in time"),
    }
}

/// The pinned neighbor with fingerprint `fp`, or the HTTP error to answer.
fn neighbor_of(ctx: &Ctx, fp: &str) -> OpResult<Arc<crate::peer::Neighbor>> {
    let id: crate::identity::NodeId =
        fp.parse()
            .map_err(|e: crate::identity::FingerprintError| OpError {
                status: StatusCode::BAD_REQUEST,
                message: format!("{fp:?}: {e}"),
            })?;
    ctx.neighbors().get(&id).ok_or_else(|| OpError {
        status: StatusCode::NOT_FOUND,
        message: format!("{fp} is not a neighbor of this node"),
    })
}

/// Add a neighbor (`HOST:PORT#FINGERPRINT[@half]`) or an Echo link (`echo://…`).
pub async fn neighbor_add(ctx: &Arc<Ctx>, spec: &str) -> OpResult<api::NeighborInfo> {
    let spec = spec.trim();
    if echomesh_proto::bridge::EchoUrl::is_echo(spec) {
        return match crate::bridge::dial::add(ctx, spec, "admin").await {
            Ok(id) => {
                tracing::info!(link = %id, url = %spec, "Echo link added through the admin API");
                match echo_links(ctx).into_iter().find(|l| l.id == id) {
                    Some(l) => Ok(l),
                    None => fail(StatusCode::INTERNAL_SERVER_ERROR, "the link vanished"),
                }
            }
            Err(e)
                if e.downcast_ref::<echomesh_proto::bridge::url::EchoUrlError>()
                    .is_some() =>
            {
                fail(StatusCode::BAD_REQUEST, format!("{e:#}"))
            }
            Err(e) => fail(StatusCode::CONFLICT, format!("{e:#}")),
        };
    }
    let spec: crate::config::NeighborSpec = match spec.parse() {
        Ok(x) => x,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    if spec.id == ctx.identity.id {
        return fail(
            StatusCode::BAD_REQUEST,
            "that fingerprint is this node itself",
        );
    }
    let rec = crate::store::NeighborRecord {
        id: spec.id,
        addr: Some(spec.addr.clone()),
        mode: spec.mode,
        origin: crate::store::NeighborOrigin::Admin,
        added_unix: unix_now(),
    };
    match crate::peer::session::add_neighbor(ctx, rec).await {
        Ok(n) => {
            tracing::info!(neighbor = %n.id, addr = %spec.addr, mode = %spec.mode, "neighbor added through the admin API");
            Ok(neighbor_info(&n.view()))
        }
        Err(e) => fail(StatusCode::CONFLICT, format!("{e:#}")),
    }
}

/// Remove a neighbor (by fingerprint) or an Echo link (by its `echo-…` id); configured ones
/// are refused (they come back on restart).
pub async fn neighbor_remove(ctx: &Arc<Ctx>, fp: &str) -> OpResult<api::NeighborInfo> {
    if fp.starts_with("echo-") {
        let before = echo_links(ctx).into_iter().find(|l| l.id == fp);
        return match crate::bridge::dial::remove(ctx, fp).await {
            Ok(_) => match before {
                Some(mut l) => {
                    l.state = "down".into();
                    Ok(l)
                }
                None => fail(
                    StatusCode::NOT_FOUND,
                    format!("{fp} is not an Echo link of this node"),
                ),
            },
            Err(e) if before.is_none() => fail(StatusCode::NOT_FOUND, format!("{e:#}")),
            Err(e) => fail(StatusCode::CONFLICT, format!("{e:#}")),
        };
    }
    let n = neighbor_of(ctx, fp)?;
    let id = n.id;
    if n.view().origin == crate::store::NeighborOrigin::Static {
        return fail(
            StatusCode::CONFLICT,
            "this neighbor comes from the configuration (neighbors = [...] or --neighbor); remove it there and restart",
        );
    }
    if let Err(e) = ctx.store.delete_neighbor(id).await {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot forget the neighbor: {e}"),
        );
    }
    let view = n.view();
    ctx.neighbors().remove(&id);
    tracing::info!(neighbor = %id, "neighbor removed through the admin API");
    Ok(neighbor_info(&view))
}

/// Change a neighbor's echo mode (`full` or `half`).
pub async fn neighbor_mode(ctx: &Arc<Ctx>, fp: &str, mode: &str) -> OpResult<api::NeighborInfo> {
    let mode: crate::echo::EchoMode = match mode.parse() {
        Ok(m) => m,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let n = neighbor_of(ctx, fp)?;
    let id = n.id;
    let v = n.view();
    let rec = crate::store::NeighborRecord {
        id,
        addr: v.addr.clone(),
        mode,
        origin: v.origin,
        added_unix: unix_now(),
    };
    if let Err(e) = ctx.neighbors().upsert(&rec) {
        return fail(StatusCode::CONFLICT, e.to_string());
    }
    if v.origin != crate::store::NeighborOrigin::Static {
        if let Err(e) = ctx.store.put_neighbor(n.record(rec.added_unix)).await {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("mode changed but not saved: {e}"),
            );
        }
    }
    tracing::info!(neighbor = %id, %mode, "neighbor echo mode changed through the admin API");
    Ok(neighbor_info(&n.view()))
}

/// Re-read the configuration (as SIGHUP); an invalid file is refused and nothing changes.
pub async fn reload(ctx: &Arc<Ctx>) -> OpResult<crate::reload::ReloadReport> {
    crate::reload::reload(ctx).await.map_err(|e| OpError {
        status: StatusCode::BAD_REQUEST,
        message: e.to_string(),
    })
}

/// Start a drain (`deadline_secs` defaults to the configured drain deadline).
pub fn drain_start(ctx: &Arc<Ctx>, deadline_secs: Option<u64>) -> crate::drain::DrainStatus {
    let secs = deadline_secs.unwrap_or(ctx.cfg.drain_deadline_secs);
    crate::drain::start(ctx, Duration::from_secs(secs))
}

pub fn drain_status(ctx: &Ctx) -> crate::drain::DrainStatus {
    ctx.drain.status()
}

pub fn undrain(ctx: &Arc<Ctx>) -> crate::drain::DrainStatus {
    crate::drain::undrain(ctx)
}

pub fn topology(ctx: &Ctx) -> crate::topology::TopologyView {
    crate::topology::flood::view(ctx)
}

// The SmokeStack services' cluster configuration (`echomeshctl smoke`).

pub fn smoke_ozones(ctx: &Ctx) -> api::SmokeOzones {
    api::SmokeOzones {
        ozones: ctx
            .smoke
            .view()
            .ozones
            .iter()
            .map(|(a, _)| a.clone())
            .collect(),
        max: ctx.smoke.cfg.max_ozones,
    }
}

pub fn smoke_participants(ctx: &Ctx) -> api::SmokeParticipants {
    api::SmokeParticipants {
        participants: ctx
            .smoke
            .view()
            .participants
            .iter()
            .map(|p| api::SmokeParticipant {
                siphash_id: p.id.clone(),
                keys: p.keys.is_some(),
                algorithm: p.keys.as_ref().map(|k| k.algorithm().to_string()),
                since_unix_ms: p.since_ms,
            })
            .collect(),
        max: ctx.smoke.cfg.max_participants,
    }
}

async fn smoke_publish(ctx: &Ctx, r: echomesh_proto::smoke::record::Record) -> OpResult<()> {
    match crate::smoke::flood::publish(ctx, r).await {
        Ok(crate::smoke::Applied::Full) => fail(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the cluster's Smoke configuration is full (smoke.max_ozones = {}, smoke.max_participants = {}, and ozones × participants × 3 at most smoke.max_search_hmacs = {}): remove one first or raise the limit on every node",
                ctx.smoke.cfg.max_ozones, ctx.smoke.cfg.max_participants, ctx.smoke.cfg.max_search_hmacs
            ),
        ),
        Ok(_) => Ok(()),
        Err(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the change: {e}; check the data directory's disk"),
        ),
    }
}

/// Add (`present`) or remove an ozone address.
pub async fn smoke_ozone_change(
    ctx: &Ctx,
    address: &str,
    present: bool,
) -> OpResult<api::SmokeOzones> {
    use echomesh_proto::smoke::record::{ozone_key, Record, Value};
    let a = match echomesh_proto::smoke::check_ozone(address) {
        Ok(a) => a,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let exists = ctx.smoke.view().ozones.iter().any(|(x, _)| x == a);
    if !present && !exists {
        return fail(
            StatusCode::NOT_FOUND,
            format!("no Smoke ozone {a:?}; see echomeshctl smoke ozones list"),
        );
    }
    if present != exists {
        let value = if present {
            Value::Ozone
        } else {
            Value::Removed
        };
        smoke_publish(
            ctx,
            Record {
                key: ozone_key(a),
                at_ms: echomesh_proto::clock::unix_ms(),
                value,
            },
        )
        .await?;
    }
    Ok(smoke_ozones(ctx))
}

/// Register or remove a participant by SipHash ID (its keys come from EPKS).
pub async fn smoke_participant_change(
    ctx: &Ctx,
    id: &str,
    present: bool,
) -> OpResult<api::SmokeParticipants> {
    use echomesh_proto::smoke::record::{participant_key, Record, Value};
    let id = match echomesh_proto::smoke::normalize_id(id) {
        Ok(id) => id,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let exists = ctx.smoke.view().participant(&id).is_some();
    if !present && !exists {
        return fail(
            StatusCode::NOT_FOUND,
            format!("no Smoke participant {id}; see echomeshctl smoke participants list"),
        );
    }
    if present != exists {
        let value = if present {
            Value::Participant(None)
        } else {
            Value::Removed
        };
        smoke_publish(
            ctx,
            Record {
                key: participant_key(&id),
                at_ms: echomesh_proto::clock::unix_ms(),
                value,
            },
        )
        .await?;
    }
    Ok(smoke_participants(ctx))
}

pub async fn smoke_private_server(ctx: &Ctx, on: bool) -> OpResult<api::SmokePrivateServer> {
    use echomesh_proto::smoke::record::{Record, Value, PRIVATE_SERVER_KEY};
    if ctx.smoke.view().private_server != on {
        smoke_publish(
            ctx,
            Record {
                key: PRIVATE_SERVER_KEY.into(),
                at_ms: echomesh_proto::clock::unix_ms(),
                value: Value::PrivateServer(on),
            },
        )
        .await?;
    }
    Ok(api::SmokePrivateServer {
        on: ctx.smoke.view().private_server,
    })
}
