//! The admin HTTP API. `/healthz`, `/readyz` and `/metrics` are open; everything under `/v1`
//! needs `Authorization: Bearer <token>` with the token from `<data-dir>/admin.token`.

pub use echomesh_proto::admin as api;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::ctx::Ctx;
use crate::invite::InviteToken;
use crate::peer::NeighborView;
use echomesh_proto::clock::unix_now;

struct AdminState {
    ctx: Arc<Ctx>,
    token_hash: blake3::Hash,
}

type St = State<Arc<AdminState>>;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(api::ErrorBody { error: msg.into() })).into_response()
}

pub async fn serve(ctx: Arc<Ctx>, listener: tokio::net::TcpListener, token: String) {
    let state = Arc::new(AdminState {
        token_hash: blake3::hash(token.as_bytes()),
        ctx: ctx.clone(),
    });
    let v1 = Router::new()
        .route(api::PATH_STATUS, get(status))
        .route(api::PATH_NEIGHBORS, get(neighbors).post(neighbor_add))
        .route(api::PATH_NEIGHBOR, axum::routing::delete(neighbor_remove))
        .route(api::PATH_NEIGHBOR_MODE, axum::routing::put(neighbor_mode))
        .route(api::PATH_INVITES, post(invite))
        .route(api::PATH_JOIN, post(join))
        .route(api::PATH_RELOAD, post(reload))
        .route(api::PATH_DRAIN, get(drain_status).post(drain_start))
        .route(api::PATH_UNDRAIN, post(undrain))
        .route(api::PATH_TOPOLOGY, get(topology))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state);
    let shutdown = ctx.shutdown.clone();
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "admin API stopped");
    }
}

async fn auth(State(s): St, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| blake3::hash(t.trim().as_bytes()));
    // blake3::Hash compares in constant time.
    if presented != Some(s.token_hash) {
        s.ctx
            .metrics
            .admin_requests
            .with_label_values(&["unauthorized"])
            .inc();
        tracing::info!(path = %req.uri().path(), "admin request without a valid token");
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token: pass the token from <data-dir>/admin.token (echomeshctl --token-file)",
        );
    }
    let span = tracing::info_span!(
        "admin.request",
        method = %req.method(),
        path = %req.uri().path(),
        status = tracing::field::Empty
    );
    let resp = {
        use tracing::Instrument;
        next.run(req).instrument(span.clone()).await
    };
    span.record("status", resp.status().as_u16());
    let result = if resp.status().is_success() {
        "ok"
    } else {
        "error"
    };
    s.ctx
        .metrics
        .admin_requests
        .with_label_values(&[result])
        .inc();
    resp
}

async fn readyz(State(s): St) -> Response {
    let ctx = &s.ctx;
    if ctx.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n").into_response()
    } else if !ctx.ready.load(Ordering::SeqCst) || ctx.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopping\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(s): St) -> Response {
    // Gauges that are cheap to compute are refreshed at scrape time, not only by the
    // once-a-second housekeeping, so a scrape never shows a stale state.
    s.ctx.neighbors().update_gauges();
    s.ctx
        .metrics
        .client_sessions
        .set(s.ctx.router.subscribers.sessions() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.ctx.metrics.render(),
    )
        .into_response()
}

async fn status(State(s): St) -> Json<api::Status> {
    let ctx = &s.ctx;
    let all = ctx.neighbors().all();
    Json(api::Status {
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
    })
}

fn bridge_status(ctx: &Ctx) -> Option<api::BridgeStatus> {
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

async fn neighbors(State(s): St) -> Json<Vec<api::NeighborInfo>> {
    let mut list: Vec<api::NeighborInfo> = s
        .ctx
        .neighbors()
        .all()
        .iter()
        .map(|n| neighbor_info(&n.view()))
        .collect();
    list.extend(echo_links(&s.ctx));
    Json(list)
}

async fn invite(State(s): St, body: Option<Json<api::InviteRequest>>) -> Response {
    let ctx = &s.ctx;
    let ttl = body
        .and_then(|Json(b)| b.ttl_secs)
        .unwrap_or(ctx.cfg.invite.default_ttl_secs);
    if ttl == 0 || ttl > 7 * 24 * 3600 {
        return error(
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
        Err(e) => return error(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
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
    Json(api::InviteResponse {
        token: token.encode(),
        addr: ctx.advertise.clone(),
        expires_unix: expires,
        warning,
    })
    .into_response()
}

async fn join(State(s): St, Json(req): Json<api::JoinRequest>) -> Response {
    let ctx = &s.ctx;
    let res = tokio::time::timeout(
        Duration::from_millis(ctx.cfg.peer.handshake_timeout_ms * 3),
        crate::peer::join::join(ctx, &req.token),
    )
    .await;
    match res {
        Ok(Ok(rec)) => {
            let view = ctx.neighbors().get(&rec.id).map(|n| n.view());
            match view {
                Some(v) => Json(api::JoinResponse {
                    neighbor: neighbor_info(&v),
                })
                .into_response(),
                None => error(
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
            error(code, e.to_string())
        }
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "join did not finish in time"),
    }
}

/// The pinned neighbor with fingerprint `fp`, or the HTTP error to answer.
fn neighbor_of(ctx: &Ctx, fp: &str) -> Result<Arc<crate::peer::Neighbor>, (StatusCode, String)> {
    let id: crate::identity::NodeId =
        fp.parse().map_err(|e: crate::identity::FingerprintError| {
            (StatusCode::BAD_REQUEST, format!("{fp:?}: {e}"))
        })?;
    ctx.neighbors().get(&id).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("{fp} is not a neighbor of this node"),
        )
    })
}

async fn neighbor_add(State(s): St, Json(req): Json<api::NeighborAddRequest>) -> Response {
    let ctx = &s.ctx;
    if echomesh_proto::bridge::EchoUrl::is_echo(&req.spec) {
        return match crate::bridge::dial::add(ctx, &req.spec, "admin").await {
            Ok(id) => {
                tracing::info!(link = %id, url = %req.spec, "Echo link added through the admin API");
                match echo_links(ctx).into_iter().find(|l| l.id == id) {
                    Some(l) => Json(l).into_response(),
                    None => error(StatusCode::INTERNAL_SERVER_ERROR, "the link vanished"),
                }
            }
            Err(e)
                if e.downcast_ref::<echomesh_proto::bridge::url::EchoUrlError>()
                    .is_some() =>
            {
                error(StatusCode::BAD_REQUEST, format!("{e:#}"))
            }
            Err(e) => error(StatusCode::CONFLICT, format!("{e:#}")),
        };
    }
    let spec: crate::config::NeighborSpec = match req.spec.parse() {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if spec.id == ctx.identity.id {
        return error(
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
            Json(neighbor_info(&n.view())).into_response()
        }
        Err(e) => error(StatusCode::CONFLICT, format!("{e:#}")),
    }
}

async fn neighbor_remove(State(s): St, Path(fp): Path<String>) -> Response {
    let ctx = &s.ctx;
    if fp.starts_with("echo-") {
        let before = echo_links(ctx).into_iter().find(|l| l.id == fp);
        return match crate::bridge::dial::remove(ctx, &fp).await {
            Ok(_) => match before {
                Some(mut l) => {
                    l.state = "down".into();
                    Json(l).into_response()
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("{fp} is not an Echo link of this node"),
                ),
            },
            Err(e) if before.is_none() => error(StatusCode::NOT_FOUND, format!("{e:#}")),
            Err(e) => error(StatusCode::CONFLICT, format!("{e:#}")),
        };
    }
    let n = match neighbor_of(ctx, &fp) {
        Ok(n) => n,
        Err((code, msg)) => return error(code, msg),
    };
    let id = n.id;
    if n.view().origin == crate::store::NeighborOrigin::Static {
        return error(
            StatusCode::CONFLICT,
            "this neighbor comes from the configuration (neighbors = [...] or --neighbor); remove it there and restart",
        );
    }
    if let Err(e) = ctx.store.delete_neighbor(id).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot forget the neighbor: {e}"),
        );
    }
    let view = n.view();
    ctx.neighbors().remove(&id);
    tracing::info!(neighbor = %id, "neighbor removed through the admin API");
    Json(neighbor_info(&view)).into_response()
}

async fn neighbor_mode(
    State(s): St,
    Path(fp): Path<String>,
    Json(req): Json<api::NeighborModeRequest>,
) -> Response {
    let ctx = &s.ctx;
    let mode: crate::echo::EchoMode = match req.mode.parse() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let n = match neighbor_of(ctx, &fp) {
        Ok(n) => n,
        Err((code, msg)) => return error(code, msg),
    };
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
        return error(StatusCode::CONFLICT, e.to_string());
    }
    if v.origin != crate::store::NeighborOrigin::Static {
        if let Err(e) = ctx.store.put_neighbor(n.record(rec.added_unix)).await {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("mode changed but not saved: {e}"),
            );
        }
    }
    tracing::info!(neighbor = %id, %mode, "neighbor echo mode changed through the admin API");
    Json(neighbor_info(&n.view())).into_response()
}

async fn reload(State(s): St) -> Response {
    match crate::reload::reload(&s.ctx).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn drain_status(State(s): St) -> Json<crate::drain::DrainStatus> {
    Json(s.ctx.drain.status())
}

async fn drain_start(
    State(s): St,
    Json(req): Json<api::DrainRequest>,
) -> Json<crate::drain::DrainStatus> {
    let secs = req.deadline_secs.unwrap_or(s.ctx.cfg.drain_deadline_secs);
    Json(crate::drain::start(&s.ctx, Duration::from_secs(secs)))
}

async fn topology(State(s): St) -> Json<crate::topology::TopologyView> {
    Json(crate::topology::flood::view(&s.ctx))
}

async fn undrain(State(s): St) -> Json<crate::drain::DrainStatus> {
    Json(crate::drain::undrain(&s.ctx))
}
