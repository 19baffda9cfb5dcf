//! The admin HTTP listener. `/healthz`, `/readyz` and `/metrics` are open; everything under
//! `/v1` needs `Authorization: Bearer <token>` with the token from `<data-dir>/admin.token`;
//! `/console/` is the web console (its own session and CSRF token, see `crate::console`).
//! Both call the operations in [`ops`].

pub mod auth;
pub mod ops;

pub use echomesh_proto::admin as api;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::ctx::Ctx;
use ops::OpResult;

type St = State<Arc<Ctx>>;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(api::ErrorBody { error: msg.into() })).into_response()
}

/// An operation's result as the API answers it.
fn reply<T: Serialize>(r: OpResult<T>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(e.status, e.message),
    }
}

/// `/healthz`, `/readyz`, `/metrics` and the `/v1` API (behind the bearer check).
pub fn router(guard: auth::Guard) -> Router {
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
        .route(api::PATH_MEMBERS, get(members))
        .route(
            api::PATH_SMOKE_OZONES,
            get(smoke_ozones)
                .post(smoke_ozone_add)
                .delete(smoke_ozone_remove),
        )
        .route(
            api::PATH_SMOKE_PARTICIPANTS,
            get(smoke_participants)
                .post(smoke_participant_add)
                .delete(smoke_participant_remove),
        )
        .route(
            api::PATH_SMOKE_PRIVATE_SERVER,
            get(smoke_private_server_get).put(smoke_private_server_set),
        )
        .route_layer(middleware::from_fn_with_state(
            guard.clone(),
            auth::require_bearer,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(guard.ctx)
}

/// Serve the admin listener: this API and the console, until the node stops.
pub async fn serve(ctx: Arc<Ctx>, listener: tokio::net::TcpListener, token: String) {
    let guard = auth::Guard {
        ctx: ctx.clone(),
        token: Arc::new(auth::AdminToken::new(&token)),
    };
    let app = router(guard.clone())
        .merge(crate::console::router(guard))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024));
    let shutdown = ctx.shutdown.clone();
    // The console answers only loopback peers unless allowed: it needs their address.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "admin API stopped");
    }
}

async fn readyz(State(ctx): St) -> Response {
    match ops::readiness(&ctx) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(ctx): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            ops::refresh_gauges(&ctx);
            ctx.metrics.render()
        },
    )
        .into_response()
}

async fn status(State(ctx): St) -> Json<api::Status> {
    Json(ops::status(&ctx))
}

async fn neighbors(State(ctx): St) -> Json<Vec<api::NeighborInfo>> {
    Json(ops::neighbors(&ctx))
}

async fn invite(State(ctx): St, body: Option<Json<api::InviteRequest>>) -> Response {
    reply(ops::invite(&ctx, body.and_then(|Json(b)| b.ttl_secs)))
}

async fn join(State(ctx): St, Json(req): Json<api::JoinRequest>) -> Response {
    reply(ops::join(&ctx, &req.token).await)
}

async fn neighbor_add(State(ctx): St, Json(req): Json<api::NeighborAddRequest>) -> Response {
    reply(ops::neighbor_add(&ctx, &req.spec).await)
}

async fn neighbor_remove(State(ctx): St, Path(fp): Path<String>) -> Response {
    reply(ops::neighbor_remove(&ctx, &fp).await)
}

async fn neighbor_mode(
    State(ctx): St,
    Path(fp): Path<String>,
    Json(req): Json<api::NeighborModeRequest>,
) -> Response {
    reply(ops::neighbor_mode(&ctx, &fp, &req.mode).await)
}

async fn reload(State(ctx): St) -> Response {
    reply(ops::reload(&ctx).await)
}

async fn drain_status(State(ctx): St) -> Json<crate::drain::DrainStatus> {
    Json(ops::drain_status(&ctx))
}

async fn drain_start(
    State(ctx): St,
    Json(req): Json<api::DrainRequest>,
) -> Json<crate::drain::DrainStatus> {
    Json(ops::drain_start(&ctx, req.deadline_secs))
}

async fn topology(State(ctx): St) -> Json<crate::topology::TopologyView> {
    Json(ops::topology(&ctx))
}

async fn members(State(ctx): St) -> Json<api::MembersView> {
    Json(ops::members(&ctx))
}

async fn smoke_ozones(State(ctx): St) -> Json<api::SmokeOzones> {
    Json(ops::smoke_ozones(&ctx))
}

async fn smoke_ozone_add(State(ctx): St, Json(r): Json<api::SmokeOzoneChange>) -> Response {
    reply(ops::smoke_ozone_change(&ctx, &r.address, true).await)
}

async fn smoke_ozone_remove(State(ctx): St, Json(r): Json<api::SmokeOzoneChange>) -> Response {
    reply(ops::smoke_ozone_change(&ctx, &r.address, false).await)
}

async fn smoke_participants(State(ctx): St) -> Json<api::SmokeParticipants> {
    Json(ops::smoke_participants(&ctx))
}

async fn smoke_participant_add(
    State(ctx): St,
    Json(r): Json<api::SmokeParticipantChange>,
) -> Response {
    reply(ops::smoke_participant_change(&ctx, &r.siphash_id, true).await)
}

async fn smoke_participant_remove(
    State(ctx): St,
    Json(r): Json<api::SmokeParticipantChange>,
) -> Response {
    reply(ops::smoke_participant_change(&ctx, &r.siphash_id, false).await)
}

async fn smoke_private_server_get(State(ctx): St) -> Json<api::SmokePrivateServer> {
    Json(api::SmokePrivateServer {
        on: ctx.smoke.view().private_server,
    })
}

async fn smoke_private_server_set(
    State(ctx): St,
    Json(r): Json<api::SmokePrivateServer>,
) -> Response {
    reply(ops::smoke_private_server(&ctx, r.on).await)
}

async fn undrain(State(ctx): St) -> Json<crate::drain::DrainStatus> {
    Json(ops::undrain(&ctx))
}
