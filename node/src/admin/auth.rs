//! The admin token: `/v1` requests carry it as `Authorization: Bearer`, the console's login
//! form takes it pasted. Kept only as a BLAKE3 hash, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::ctx::Ctx;
use echomesh_proto::admin::ErrorBody;

pub struct AdminToken(blake3::Hash);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        AdminToken(blake3::hash(token.as_bytes()))
    }

    /// Is `presented` the admin token? (`blake3::Hash` compares in constant time.)
    pub fn matches(&self, presented: &str) -> bool {
        blake3::hash(presented.trim().as_bytes()) == self.0
    }
}

/// What the bearer check needs: the token, and the node for its metrics.
#[derive(Clone)]
pub struct Guard {
    pub ctx: Arc<Ctx>,
    pub token: Arc<AdminToken>,
}

/// Middleware: refuse (401, counted) a request without the admin token; trace and count the
/// others by result.
pub async fn require_bearer(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|t| g.token.matches(t)) {
        g.ctx
            .metrics
            .admin_requests
            .with_label_values(&["unauthorized"])
            .inc();
        tracing::info!(path = %req.uri().path(), "admin request without a valid token");
        return (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody {
                error: "missing or wrong admin token: pass the token from <data-dir>/admin.token (echomeshctl --token-file)".into(),
            }),
        )
            .into_response();
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
    g.ctx
        .metrics
        .admin_requests
        .with_label_values(&[result])
        .inc();
    resp
}
