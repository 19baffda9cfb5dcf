//! The HTTP API (axum). Every route under `/v1` is declared with `#[utoipa::path]` and
//! registered through `utoipa_axum::routes!`, so the OpenAPI document at `/openapi.json` is
//! made from the same list the router serves and cannot drift from it. Errors are RFC 9457
//! `application/problem+json` with `type` `urn:echomesh:gateway:problem:REASON`; each refusal
//! is counted in `echomesh_gateway_refusals_total{reason}`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{
    DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Path, Query, Request, State,
};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::outbox::{self, Submission};
use crate::records::{InMessage, InState, OutMessage, Rejected};
use crate::tokens::{Action, TokenEntry};
use crate::Gateway;

type St = State<Arc<Gateway>>;

/// An RFC 9457 problem.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:echomesh:gateway:problem:REASON`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do.
    pub detail: String,
}

/// A refusal: counted, logged at debug, answered as problem+json.
pub struct Refusal {
    status: StatusCode,
    reason: &'static str,
    detail: String,
    retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            detail: detail.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let p = Problem {
            type_: format!("urn:echomesh:gateway:problem:{}", self.reason),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let mut r = (self.status, Json(p)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"echomesh-gateway\""),
            );
        }
        r.extensions_mut().insert(RefusedFor(self.reason));
        r
    }
}

/// Marks a response as a refusal, for the counting middleware.
#[derive(Clone, Copy)]
struct RefusedFor(&'static str);

fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "request failed");
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("{e}"),
    )
}

fn not_found(what: &str) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} with that id visible to this token"),
    )
}

/// Per-token request rates (token bucket).
pub struct RateLimits {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimits {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimits {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request; `Err(seconds)` to wait when the token is over its rate.
    fn take(&self, token: &str) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let e = b.entry(token.to_string()).or_insert((self.burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * self.rate).min(self.burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - e.0) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Check the bearer token and its rate.
fn auth(gw: &Gateway, headers: &HeaderMap) -> Result<TokenEntry, Refusal> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(t) = presented else {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", "send `Authorization: Bearer TOKEN` (tokens: `echomesh-gateway token create`; the first one is in the data dir's api.token)"));
    };
    let Some(entry) = gw.tokens.check(t) else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown or revoked token",
        ));
    };
    if let Err(wait) = gw.rate.take(&entry.name) {
        let mut r = Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "token {:?} is over its rate (limits.token_rate); retry in {wait} s",
                entry.name
            ),
        );
        r.retry_after = Some(wait);
        return Err(r);
    }
    Ok(entry)
}

fn allow(t: &TokenEntry, action: Action, identity: &str) -> Result<(), Refusal> {
    if t.allows(action, identity) {
        return Ok(());
    }
    let scope = match action {
        Action::Send => "send",
        Action::Read => "read",
    };
    Err(Refusal::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("token {:?} lacks scope {scope}:{identity}", t.name),
    ))
}

// ---- OpenAPI ----

#[derive(OpenApi)]
#[openapi(
    info(
        title = "echomesh-gateway",
        description = "Send and receive end-to-end encrypted echomesh messages from the city's own software. Incoming messages are delivered by webhook (Standard Webhooks signatures) or pulled from /v1/inbox. Errors are RFC 9457 problem+json.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The router with the documented API, and the document.
fn api_parts() -> (Router<Arc<Gateway>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(identities))
        .routes(routes!(post_message))
        .routes(routes!(get_message))
        .routes(routes!(list_inbox))
        .routes(routes!(get_inbox))
        .routes(routes!(get_inbox_file))
        .routes(routes!(ack_inbox))
        .routes(routes!(list_dead))
        .routes(routes!(replay_dead))
        .routes(routes!(list_rejected))
        .split_for_parts()
}

/// The OpenAPI document (what `/openapi.json` serves and `echomesh-gateway openapi` prints).
pub fn openapi_json() -> String {
    api_parts().1.to_pretty_json().unwrap_or_default()
}

/// The whole HTTP service.
pub fn router(gw: Arc<Gateway>) -> Router {
    let (api, doc) = api_parts();
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    let limit = gw.config.limits.max_body_bytes;
    api.route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(move || {
                let d = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], (*d).clone()) }
            }),
        )
        .fallback(|| async {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(gw.clone(), count))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gw)
}

async fn count(State(gw): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let r = next.run(req).await;
    if let Some(RefusedFor(reason)) = r.extensions().get::<RefusedFor>() {
        if *reason != "internal" {
            gw.metrics.refuse(reason);
            tracing::debug!(%route, reason, status = r.status().as_u16(), "request refused");
        }
    }
    let class = format!("{}xx", r.status().as_u16() / 100);
    gw.metrics
        .requests
        .with_label_values(&[&route, &class])
        .inc();
    r
}

async fn readyz(State(gw): St) -> Response {
    let connected = gw.metrics.node_connected.get() == 1;
    let published = gw.published.load(Ordering::Relaxed);
    if connected && published {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = if !connected {
            "no session with a node"
        } else {
            "identities not yet published"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}

async fn metrics(State(gw): St) -> Response {
    gw.metrics
        .outbox
        .set(gw.store.outq_len.load(Ordering::Relaxed) as i64);
    gw.metrics
        .inbox_pending
        .set(gw.store.pending_len.load(Ordering::Relaxed) as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
        .into_response()
}

// ---- identities ----

/// A service identity of this gateway.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct IdentityInfo {
    /// The name used in `from` and in scopes.
    pub name: String,
    /// Short ID (what citizens type).
    pub id: String,
    pub fingerprint: String,
    pub display_name: String,
}

/// List the gateway's service identities.
#[utoipa::path(get, path = "/v1/identities", tag = "identities",
    responses((status = 200, body = [IdentityInfo]), (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn identities(State(gw): St, headers: HeaderMap) -> Result<Json<Vec<IdentityInfo>>, Refusal> {
    auth(&gw, &headers)?;
    Ok(Json(
        gw.identities
            .iter()
            .map(|i| IdentityInfo {
                name: i.name.clone(),
                id: i.short_id.clone(),
                fingerprint: i.fingerprint.hex(),
                display_name: i.display_name.clone(),
            })
            .collect(),
    ))
}

// ---- sending ----

/// A message to send (JSON form).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Identity name to send as.
    pub from: String,
    /// Participant IDs (short IDs or fingerprints).
    pub to: Vec<String>,
    pub text: String,
}

/// A message to send (multipart form): `from`, `to` (repeated or comma-separated), optional
/// `text`, optional `file` (one file part with a filename).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SendForm {
    from: String,
    to: Vec<String>,
    text: Option<String>,
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: Option<String>,
}

/// The message is durably queued.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    /// Where its state per recipient is shown.
    pub status_url: String,
}

/// Send a message (queued durably, then deposited into each recipient's mailbox).
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key and request returns the first answer; with another request, 409.")),
    request_body(content((SendRequest = "application/json"), (SendForm = "multipart/form-data"))),
    responses(
        (status = 202, body = Accepted, description = "Durably queued"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed request or recipient ID with a typo"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "No key published for a recipient"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
async fn post_message(State(gw): St, req: Request) -> Result<Response, Refusal> {
    let token = auth(&gw, req.headers())?;
    let limit = gw.config.limits.max_body_bytes;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body above {limit} bytes (limits.max_body_bytes)"),
        )
    };
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(too_large());
    }
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
            _ => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                ))
            }
        },
    };
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let malformed = |m: String| Refusal::new(StatusCode::BAD_REQUEST, "malformed", m);
    let mut sub = Submission {
        from: String::new(),
        to: Vec::new(),
        text: None,
        file: None,
        token: token.name.clone(),
        idempotency_key,
    };
    if ctype.starts_with("application/json") {
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large())?;
        let r: SendRequest = serde_json::from_slice(&body)
            .map_err(|e| malformed(format!("the JSON body is not a message: {e} (expected {{\"from\": NAME, \"to\": [ID, ...], \"text\": \"...\"}})")))?;
        sub.from = r.from;
        sub.to = r.to;
        sub.text = Some(r.text);
    } else if ctype.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &gw)
            .await
            .map_err(|e| malformed(format!("not a multipart form: {e}")))?;
        let field_err = |e: axum::extract::multipart::MultipartError| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                malformed(format!("multipart form: {e}"))
            }
        };
        while let Some(f) = mp.next_field().await.map_err(field_err)? {
            let name = f.name().unwrap_or("").to_string();
            match name.as_str() {
                "from" => sub.from = f.text().await.map_err(field_err)?,
                "to" => {
                    let v = f.text().await.map_err(field_err)?;
                    sub.to.extend(
                        v.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty()),
                    );
                }
                "text" => sub.text = Some(f.text().await.map_err(field_err)?),
                "file" => {
                    if sub.file.is_some() {
                        return Err(malformed("one file per message".into()));
                    }
                    let fname = f
                        .file_name()
                        .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string())
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| "file".into());
                    let data = f.bytes().await.map_err(field_err)?;
                    sub.file = Some((fname, data.to_vec()));
                }
                other => {
                    return Err(malformed(format!(
                        "unknown form field {other:?} (use from, to, text, file)"
                    )))
                }
            }
        }
    } else {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "malformed",
            "send application/json or multipart/form-data",
        ));
    }
    if sub.from.is_empty() {
        return Err(malformed(
            "\"from\" is missing: name the identity to send as (GET /v1/identities)".into(),
        ));
    }
    if gw.identity_index(&sub.from).is_some() {
        allow(&token, Action::Send, &sub.from)?;
    }
    let (id, replayed) = outbox::submit(&gw, sub).await.map_err(|e| {
        let status = match &e {
            outbox::SubmitError::UnknownIdentity(_) => StatusCode::UNPROCESSABLE_ENTITY,
            outbox::SubmitError::BadRecipient(_) | outbox::SubmitError::Malformed(_) => {
                StatusCode::BAD_REQUEST
            }
            outbox::SubmitError::UnknownRecipient(_) => StatusCode::UNPROCESSABLE_ENTITY,
            outbox::SubmitError::Unavailable(_) | outbox::SubmitError::OutboxFull(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            outbox::SubmitError::IdempotencyConflict(_)
            | outbox::SubmitError::IdempotencyBusy(_) => StatusCode::CONFLICT,
            outbox::SubmitError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            outbox::SubmitError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = Refusal::new(status, e.reason(), e.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.retry_after = Some(5);
        }
        r
    })?;
    let status_url = format!("/v1/messages/{id}");
    let mut r = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id,
            status_url: status_url.clone(),
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(r)
}

/// An outgoing message and its state per recipient.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path)),
    responses((status = 200, body = OutMessage), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_message(
    State(gw): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<OutMessage>, Refusal> {
    let t = auth(&gw, &headers)?;
    let m = gw
        .store
        .run(move |s| s.out_get(&id))
        .await
        .map_err(internal)?;
    match m {
        Some(m) if m.token == t.name || t.allows(Action::Send, &m.from) => Ok(Json(m)),
        _ => Err(not_found("message")),
    }
}

// ---- receiving ----

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Only this identity's messages.
    identity: Option<String>,
    /// Cursor: messages after this `seq`.
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

/// A page of the inbox.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct InboxPage {
    pub messages: Vec<InMessage>,
    /// Pass as `after` for the next page.
    pub next_after: u64,
}

fn page(
    gw: &Arc<Gateway>,
    t: &TokenEntry,
    q: InboxQuery,
) -> Result<(Option<String>, u64, usize, Vec<String>), Refusal> {
    if let Some(i) = &q.identity {
        if gw.identity_index(i).is_none() {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "unknown_identity",
                format!("no identity named {i:?}"),
            ));
        }
        allow(t, Action::Read, i)?;
    }
    let readable: Vec<String> = gw
        .identities
        .iter()
        .filter(|i| t.allows(Action::Read, &i.name))
        .map(|i| i.name.clone())
        .collect();
    Ok((
        q.identity,
        q.after.unwrap_or(0),
        q.limit.unwrap_or(100).clamp(1, 1000),
        readable,
    ))
}

async fn list_state(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    q: InboxQuery,
    state: InState,
) -> Result<Json<InboxPage>, Refusal> {
    let t = auth(gw, headers)?;
    let (only, after, limit, readable) = page(gw, &t, q)?;
    let msgs = gw
        .store
        .run(move |s| {
            s.in_list(after, limit, |m| {
                m.state == state
                    && readable.contains(&m.identity)
                    && only.as_ref().is_none_or(|o| *o == m.identity)
            })
        })
        .await
        .map_err(internal)?;
    let next_after = msgs.last().map(|m| m.seq).unwrap_or(after);
    Ok(Json(InboxPage {
        messages: msgs,
        next_after,
    }))
}

/// Messages waiting for delivery, oldest first (for software that cannot receive webhooks;
/// acknowledge each with POST /v1/inbox/{id}/ack).
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox", params(InboxQuery),
    responses((status = 200, body = InboxPage), (status = 403, body = Problem, content_type = "application/problem+json")))]
async fn list_inbox(
    State(gw): St,
    headers: HeaderMap,
    Query(q): Query<InboxQuery>,
) -> Result<Json<InboxPage>, Refusal> {
    list_state(&gw, &headers, q, InState::Pending).await
}

async fn readable_message(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    id: String,
) -> Result<InMessage, Refusal> {
    let t = auth(gw, headers)?;
    match gw
        .store
        .run(move |s| s.in_get(&id))
        .await
        .map_err(internal)?
    {
        Some(m) if t.allows(Action::Read, &m.identity) => Ok(m),
        _ => Err(not_found("incoming message")),
    }
}

/// One incoming message.
#[utoipa::path(get, path = "/v1/inbox/{id}", tag = "inbox", params(("id" = String, Path)),
    responses((status = 200, body = InMessage), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_inbox(
    State(gw): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<InMessage>, Refusal> {
    Ok(Json(readable_message(&gw, &headers, id).await?))
}

/// The file of an incoming message (kept for `retention.inbox_secs` after delivery).
#[utoipa::path(get, path = "/v1/inbox/{id}/file", tag = "inbox", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = [u8]), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_inbox_file(
    State(gw): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let m = readable_message(&gw, &headers, id).await?;
    let Some(meta) = m.file.clone() else {
        return Err(not_found("file"));
    };
    let seq = m.seq;
    let data = gw
        .store
        .run(move |s| s.in_file(seq))
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found("file"))?;
    let disposition = format!(
        "attachment; filename*=UTF-8''{}",
        percent_encode(&meta.name)
    );
    let mut r = Response::new(Body::from(data));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The state of an incoming message after an action.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct InStateView {
    pub id: String,
    pub state: InState,
}

/// Acknowledge a pulled message: it leaves the queue (and the webhook's).
#[utoipa::path(post, path = "/v1/inbox/{id}/ack", tag = "inbox", params(("id" = String, Path)),
    responses((status = 200, body = InStateView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn ack_inbox(
    State(gw): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<InStateView>, Refusal> {
    let m = readable_message(&gw, &headers, id).await?;
    let changed = gw
        .store
        .run(move |s| {
            s.in_transition(m.seq, &[InState::Pending, InState::Dead], |m| {
                m.state = InState::Delivered;
                m.delivered_at_ms = Some(echomesh_proto::clock::unix_ms());
            })
        })
        .await
        .map_err(internal)?;
    let (id, state) = match changed {
        Some((before, m)) => {
            if before == InState::Dead {
                gw.metrics.dead_letters.dec();
            }
            gw.metrics.delivered.with_label_values(&["pull"]).inc();
            gw.inbox_space.notify_one();
            (m.id, m.state)
        }
        // Delivered already (by the webhook, or an earlier ack): nothing to do.
        None => (m.id, InState::Delivered),
    };
    Ok(Json(InStateView { id, state }))
}

/// Dead letters: messages the webhook did not accept in time.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "inbox", params(InboxQuery),
    responses((status = 200, body = InboxPage)))]
async fn list_dead(
    State(gw): St,
    headers: HeaderMap,
    Query(q): Query<InboxQuery>,
) -> Result<Json<InboxPage>, Refusal> {
    list_state(&gw, &headers, q, InState::Dead).await
}

/// Put a dead letter back on the webhook queue (attempts start again).
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "inbox", params(("id" = String, Path)),
    responses((status = 200, body = InStateView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn replay_dead(
    State(gw): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<InStateView>, Refusal> {
    let m = readable_message(&gw, &headers, id).await?;
    let changed = gw
        .store
        .run(move |s| {
            s.in_transition(m.seq, &[InState::Dead], |m| {
                m.state = InState::Pending;
                m.attempts = 0;
                m.queued_at_ms = echomesh_proto::clock::unix_ms();
            })
        })
        .await
        .map_err(internal)?;
    let Some((_, m)) = changed else {
        return Err(not_found("dead letter"));
    };
    gw.metrics.dead_letters.dec();
    gw.metrics.replayed.inc();
    gw.webhook_reread.store(true, Ordering::Relaxed);
    gw.webhook_wake.notify_one();
    tracing::info!(id = %m.id, "dead letter replayed");
    Ok(Json(InStateView {
        id: m.id,
        state: m.state,
    }))
}

/// Messages rejected because they could not be verified (newest first).
#[utoipa::path(get, path = "/v1/rejected", tag = "inbox",
    responses((status = 200, body = [Rejected])))]
async fn list_rejected(State(gw): St, headers: HeaderMap) -> Result<Json<Vec<Rejected>>, Refusal> {
    let t = auth(&gw, &headers)?;
    let all = gw.store.run(|s| s.rej_list(1000)).await.map_err(internal)?;
    Ok(Json(
        all.into_iter()
            .filter(|r| t.allows(Action::Read, &r.identity))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let doc = super::openapi_json();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in.trim_end() == doc.trim_end(),
            "gateway/openapi.json is stale: run `cargo run -p echomesh-gateway -- openapi > gateway/openapi.json`"
        );
    }
}
