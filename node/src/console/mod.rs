//! The web console, served by the admin listener under `/console/` for the people who run the
//! node without network training: overview, neighbors (invite/join), topology picture,
//! maintenance (drain with progress, reload), ozones and keys. Server-rendered HTML
//! ([`pages`]) with one small script for live updates; assets are embedded in the binary.
//!
//! Security, separate from `/v1` (which stays bearer-token only): a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` behind TLS) made by logging in with the admin token
//! or a one-time code from `echomeshctl console` ([`auth`]); a CSRF token in every form; a
//! Content-Security-Policy without inline scripts; failed logins rate-limited; every refusal
//! counted. The admin listener has no TLS, so the console answers only requests from loopback
//! (this host, an `ssh -L` tunnel, `kubectl port-forward`) unless `console.allow_remote`.
//! Every action calls the same function as its `/v1` route (`admin::ops`).

pub mod auth;
pub mod history;
pub mod i18n;
pub mod pages;
mod picture;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::Markup;

use crate::admin::auth::{AdminToken, Guard};
use crate::admin::ops;
use crate::config::ConsoleSection;
use crate::ctx::Ctx;
use auth::{Auth, Flash};
use echomesh_proto::admin as api;
use history::{History, Sample};
use i18n::Lang;
use pages::{Frame, PageId};

const SESSION_COOKIE: &str = "echomesh_console";
const LOGIN_COOKIE: &str = "echomesh_console_login";

/// Everything the browser may load or talk to comes from this node; no inline scripts or
/// styles, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

type St = State<Arc<Console>>;

/// The console's state inside the admin listener.
pub struct Console {
    ctx: Arc<Ctx>,
    token: Arc<AdminToken>,
    /// Why the console is off, if it is.
    off: Option<String>,
    secure_cookie: bool,
    auth: Mutex<Auth>,
    history: Arc<Mutex<History>>,
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// Why the console refuses a request from `peer`, if it does.
fn refusal(cfg: &ConsoleSection, peer: Option<IpAddr>) -> Option<String> {
    if !cfg.enabled {
        Some("the console is disabled (console.enabled = false)".to_string())
    } else if !cfg.allow_remote && !peer.is_some_and(is_loopback) {
        Some(format!(
            "the console answers only on the node's own host (this request came from {}): the admin \
             listener has no TLS. Use `ssh -L 4711:127.0.0.1:4711 NODE-HOST` or `kubectl port-forward`, \
             or set console.allow_remote = true behind a TLS-terminating proxy",
            peer.map(|p| p.to_string()).unwrap_or_else(|| "an unknown address".into())
        ))
    } else {
        None
    }
}

/// Middleware: every console route checks where the request comes from.
async fn gate(State(s): St, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match refusal(&s.ctx.cfg.console, peer) {
        Some(why) => refuse(&s.ctx, "disabled", &why),
        None => next.run(req).await,
    }
}

impl Console {
    fn new(ctx: Arc<Ctx>, token: Arc<AdminToken>) -> Self {
        let cfg = &ctx.cfg.console;
        let off =
            (!cfg.enabled).then(|| "the console is disabled (console.enabled = false)".to_string());
        let auth = Auth::new(
            auth::Limits {
                max_sessions: cfg.max_sessions,
                idle: Duration::from_secs(cfg.session_idle_secs),
                lifetime: Duration::from_secs(cfg.session_lifetime_secs),
            },
            Instant::now(),
        );
        Console {
            // Allowed off loopback only behind a TLS-terminating proxy: the browser sees https.
            secure_cookie: cfg.allow_remote,
            ctx,
            token,
            off,
            auth: Mutex::new(auth),
            history: Arc::new(Mutex::new(History::default())),
        }
    }

    fn auth(&self) -> std::sync::MutexGuard<'_, Auth> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
        if let Some(a) = max_age {
            c += &format!("; Max-Age={a}");
        }
        if self.secure_cookie {
            c += "; Secure";
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The console's routes, and its `/v1` route for login codes (behind the bearer check).
pub(crate) fn router(guard: Guard) -> Router {
    let state = Arc::new(Console::new(guard.ctx.clone(), guard.token.clone()));
    match &state.off {
        None => {
            let ctx = state.ctx.clone();
            ctx.tasks
                .spawn(history::run(ctx.clone(), state.history.clone()));
        }
        Some(why) => tracing::info!(reason = %why, "web console off"),
    }
    let codes = Router::new()
        .route(api::PATH_CONSOLE_LOGIN_CODES, post(issue_login_code))
        .route_layer(axum::middleware::from_fn_with_state(
            guard,
            crate::admin::auth::require_bearer,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview))
        .route("/console/login", get(login_page).post(login_token))
        .route("/console/logout", post(logout))
        .route("/console/assets/{file}", get(asset))
        .route("/console/live/{page}", get(live))
        .route("/console/act/{action}", post(act))
        .route("/console/{page}", get(page))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .layer(axum::middleware::map_response(security_headers))
        .merge(codes)
        .with_state(state)
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn lang(headers: &HeaderMap) -> Lang {
    Lang::from_accept_language(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn html(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// Refuse a request (403), count it and say why in the log.
fn refuse(ctx: &Ctx, reason: &'static str, msg: &str) -> Response {
    ctx.metrics
        .console_refused
        .with_label_values(&[reason])
        .inc();
    tracing::info!(reason, "console request refused");
    (StatusCode::FORBIDDEN, format!("{msg}\n")).into_response()
}

fn update_sessions(s: &Console, a: &mut Auth) {
    let expired = a.expire(Instant::now());
    let m = &s.ctx.metrics;
    if expired > 0 {
        m.console_sessions_ended
            .with_label_values(&["expired"])
            .inc_by(expired as u64);
    }
    m.console_sessions.set(a.sessions() as i64);
}

/// The CSRF token and pending flash of the request's session, if it has a live one.
fn session(s: &Console, headers: &HeaderMap, take_flash: bool) -> Option<(String, Option<Flash>)> {
    let secret = cookie(headers, SESSION_COOKIE)?;
    let mut a = s.auth();
    update_sessions(s, &mut a);
    let sess = a.session(secret, Instant::now())?;
    let flash = if take_flash { sess.flash.take() } else { None };
    Some((sess.csrf.clone(), flash))
}

fn set_flash(s: &Console, headers: &HeaderMap, f: Flash) {
    if let Some(secret) = cookie(headers, SESSION_COOKIE) {
        if let Some(sess) = s.auth().session(secret, Instant::now()) {
            sess.flash = Some(f);
        }
    }
}

async fn overview(st: St, headers: HeaderMap) -> Response {
    render(&st.0, &headers, PageId::Overview)
}

async fn page(st: St, Path(slug): Path<String>, headers: HeaderMap) -> Response {
    match PageId::from_slug(&slug) {
        Some(p) if p != PageId::Overview => render(&st.0, &headers, p),
        _ => (StatusCode::NOT_FOUND, "no such console page\n").into_response(),
    }
}

fn render(s: &Arc<Console>, headers: &HeaderMap, page: PageId) -> Response {
    let Some((csrf, flash)) = session(s, headers, true) else {
        return Redirect::to("/console/login").into_response();
    };
    let ctx = &s.ctx;
    let f = Frame {
        lang: lang(headers),
        csrf: &csrf,
        node_id: ctx.identity.id.short(),
        flash,
    };
    let body = match page {
        PageId::Neighbors => pages::neighbors(ctx, &f, live_body(s, page, f.lang, &csrf)),
        PageId::Maintenance => pages::maintenance(ctx, &f),
        p => pages::live(p, live_body(s, p, f.lang, &csrf)),
    };
    html(StatusCode::OK, pages::layout(&f, page, body))
}

fn live_body(s: &Console, page: PageId, lang: Lang, csrf: &str) -> Markup {
    let ctx = &s.ctx;
    let t = lang.text();
    match page {
        PageId::Overview => {
            let now = Sample::now(ctx);
            let h = s.history();
            pages::overview_live(ctx, t, &h, &now)
        }
        PageId::Neighbors => {
            let now = Sample::now(ctx);
            let rates = s.history().neighbor_rates(&now);
            pages::neighbors_live(ctx, t, csrf, &rates)
        }
        PageId::Topology => pages::topology_live(ctx, t),
        PageId::Maintenance => pages::maintenance_live(ctx, t),
        PageId::Ozones => pages::ozones_live(ctx, t),
    }
}

/// The live part of a page (console.js swaps it in). 401 without a session: the script then
/// reloads the page, which leads to the login.
async fn live(State(s): St, Path(slug): Path<String>, headers: HeaderMap) -> Response {
    let Some(page) = PageId::from_slug(&slug) else {
        return (StatusCode::NOT_FOUND, "no such console page\n").into_response();
    };
    let Some((csrf, _)) = session(&s, &headers, false) else {
        return (StatusCode::UNAUTHORIZED, "log in again\n").into_response();
    };
    html(StatusCode::OK, live_body(&s, page, lang(&headers), &csrf))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
        "console.css" => (CONSOLE_CSS, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn count_login(ctx: &Ctx, result: &'static str) {
    ctx.metrics
        .console_logins
        .with_label_values(&[result])
        .inc();
}

/// Log the browser in: a new session, its cookie, and on to the overview.
fn logged_in(s: &Console, how: &'static str) -> Response {
    let mut a = s.auth();
    let (secret, ended) = a.login(Instant::now());
    if let Some(e) = ended {
        s.ctx
            .metrics
            .console_sessions_ended
            .with_label_values(&[e.label()])
            .inc();
        tracing::info!(
            "console: the least recently used session ended to make room for a new login"
        );
    }
    update_sessions(s, &mut a);
    drop(a);
    count_login(&s.ctx, "ok");
    tracing::info!(how, "console login");
    let mut r = Redirect::to("/console/").into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        s.cookie(SESSION_COOKIE, &secret, "/console", None),
    );
    h.append(
        header::SET_COOKIE,
        s.cookie(LOGIN_COOKIE, "", "/console/login", Some(0)),
    );
    r
}

/// The login form (with a fresh double-submit CSRF cookie), optionally with an error.
fn login_form(s: &Console, lang: Lang, status: StatusCode, error: Option<&str>) -> Response {
    let token = auth::random_secret();
    let mut r = html(status, pages::login(lang, &token, error));
    r.headers_mut().append(
        header::SET_COOKIE,
        s.cookie(LOGIN_COOKIE, &token, "/console/login", Some(600)),
    );
    r
}

/// `GET /console/login`: the form, or with `?code=` a one-time code from `echomeshctl console`.
async fn login_page(
    State(s): St,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let lang = lang(&headers);
    let t = lang.text();
    let Some(code) = q.get("code") else {
        if session(&s, &headers, false).is_some() {
            return Redirect::to("/console/").into_response();
        }
        return login_form(&s, lang, StatusCode::OK, None);
    };
    attempt_login(
        &s,
        lang,
        "one-time code",
        |a, now| a.redeem_code(code, now),
        ("bad_code", StatusCode::FORBIDDEN, t.login_code_failed),
    )
}

/// One login attempt under the failed-login limiter: `check` says whether the credential is
/// good; a failure uses up some of the allowance. `refused`: the result label, status and
/// message for a bad credential.
fn attempt_login(
    s: &Console,
    lang: Lang,
    how: &'static str,
    check: impl FnOnce(&mut Auth, Instant) -> bool,
    refused: (&'static str, StatusCode, &str),
) -> Response {
    let now = Instant::now();
    let ok = {
        let mut a = s.auth();
        if !a.login_allowed(now) {
            drop(a);
            count_login(&s.ctx, "rate_limited");
            let msg = lang.text().login_rate_limited;
            return login_form(s, lang, StatusCode::TOO_MANY_REQUESTS, Some(msg));
        }
        let ok = check(&mut a, now);
        if !ok {
            a.login_failed(now);
        }
        ok
    };
    if ok {
        return logged_in(s, how);
    }
    let (result, status, msg) = refused;
    count_login(&s.ctx, result);
    tracing::info!(how, result, "console login refused");
    login_form(s, lang, status, Some(msg))
}

/// `POST /console/login`: the pasted admin token.
async fn login_token(State(s): St, headers: HeaderMap, body: Bytes) -> Response {
    let lang = lang(&headers);
    let t = lang.text();
    let f = form(&body);
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let presented = f.get("login_csrf").map(String::as_str).unwrap_or("");
    if expected.is_empty() || !auth::same_secret(expected, presented) {
        count_login(&s.ctx, "bad_csrf");
        return refuse(
            &s.ctx,
            "csrf",
            "the login form is stale or came from another site: open /console/login again",
        );
    }
    let token = f.get("token").map(String::as_str).unwrap_or("");
    attempt_login(
        &s,
        lang,
        "admin token",
        |_, _| s.token.matches(token),
        ("bad_token", StatusCode::UNAUTHORIZED, t.login_failed),
    )
}

/// The refusal to send unless the request has a live session and the form carries its CSRF
/// token.
fn form_refusal(s: &Console, headers: &HeaderMap, f: &HashMap<String, String>) -> Option<Response> {
    let Some((csrf, _)) = session(s, headers, false) else {
        return Some(refuse(
            &s.ctx,
            "no_session",
            "not logged in to the console (or the session ended): log in again",
        ));
    };
    match f.get("csrf") {
        Some(c) if auth::same_secret(c, &csrf) => None,
        _ => Some(refuse(
            &s.ctx,
            "csrf",
            "missing or wrong CSRF token: reload the page and try again",
        )),
    }
}

async fn logout(State(s): St, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = form_refusal(&s, &headers, &form(&body)) {
        return r;
    }
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        let mut a = s.auth();
        if a.logout(secret) {
            s.ctx
                .metrics
                .console_sessions_ended
                .with_label_values(&["logout"])
                .inc();
        }
        update_sessions(&s, &mut a);
    }
    let mut r = Redirect::to("/console/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        s.cookie(SESSION_COOKIE, "", "/console", Some(0)),
    );
    r
}

/// A state-changing form: checked, done through `admin::ops`, reported on the next page.
async fn act(
    State(s): St,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    if let Some(r) = form_refusal(&s, &headers, &f) {
        return r;
    }
    let ctx = &s.ctx;
    let t = lang(&headers).text();
    let field = |k: &str| {
        f.get(k)
            .map(String::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let num = |k: &str| field(k).parse::<u64>().ok();
    let done = |r: Result<(), ops::OpError>| match r {
        Ok(()) => Flash::Ok(t.done.into()),
        Err(e) => Flash::Error(e.message),
    };
    let (back, flash) = match action.as_str() {
        "invite" => {
            let ttl = num("ttl_minutes").map(|m| m.saturating_mul(60));
            let flash = match ops::invite(ctx, ttl) {
                Ok(inv) => Flash::Invite {
                    token: inv.token,
                    expires_unix: inv.expires_unix,
                },
                Err(e) => Flash::Error(e.message),
            };
            (PageId::Neighbors, flash)
        }
        "join" => (
            PageId::Neighbors,
            done(ops::join(ctx, &field("token")).await.map(|_| ())),
        ),
        "neighbor-add" => (
            PageId::Neighbors,
            done(ops::neighbor_add(ctx, &field("spec")).await.map(|_| ())),
        ),
        "neighbor-remove" => (
            PageId::Neighbors,
            done(ops::neighbor_remove(ctx, &field("id")).await.map(|_| ())),
        ),
        "neighbor-mode" => (
            PageId::Neighbors,
            done(
                ops::neighbor_mode(ctx, &field("id"), &field("mode"))
                    .await
                    .map(|_| ()),
            ),
        ),
        "drain" => {
            ops::drain_start(ctx, num("deadline_secs").filter(|d| *d > 0));
            tracing::info!("drain started from the console");
            (PageId::Maintenance, Flash::Ok(t.done.into()))
        }
        "undrain" => {
            ops::undrain(ctx);
            tracing::info!("undrained from the console");
            (PageId::Maintenance, Flash::Ok(t.done.into()))
        }
        "reload" => {
            let flash = match ops::reload(ctx).await {
                Ok(r) if r.applied.is_empty() && r.restart_needed.is_empty() => {
                    Flash::Ok(t.nothing_changed.into())
                }
                Ok(r) => Flash::Ok(format!(
                    "{}: {}. {}: {}.",
                    t.applied,
                    if r.applied.is_empty() {
                        "–".into()
                    } else {
                        r.applied.join(", ")
                    },
                    t.restart_needed,
                    if r.restart_needed.is_empty() {
                        "–".into()
                    } else {
                        r.restart_needed.join(", ")
                    },
                )),
                Err(e) => Flash::Error(e.message),
            };
            (PageId::Maintenance, flash)
        }
        _ => return (StatusCode::NOT_FOUND, "no such console action\n").into_response(),
    };
    set_flash(&s, &headers, flash);
    Redirect::to(&back.path()).into_response()
}

/// `POST /v1/console/login-codes` (admin token): a one-time login code for
/// `echomeshctl console`.
async fn issue_login_code(State(s): St) -> Response {
    if let Some(why) = &s.off {
        return (
            StatusCode::CONFLICT,
            Json(api::ErrorBody { error: why.clone() }),
        )
            .into_response();
    }
    match s.auth().issue_code(Instant::now()) {
        Some(code) => Json(api::ConsoleLoginCode {
            path: format!("/console/login?code={code}"),
            expires_in_secs: auth::CODE_TTL.as_secs(),
        })
        .into_response(),
        None => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(api::ErrorBody {
                error: format!(
                    "{} login codes are outstanding; they expire after {} s",
                    auth::MAX_CODES,
                    auth::CODE_TTL.as_secs()
                ),
            }),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_unless_allowed() {
        let on = ConsoleSection::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(refusal(&on, Some(lo)), None);
        assert_eq!(refusal(&on, Some(mapped)), None);
        assert_eq!(refusal(&on, Some("::1".parse().unwrap())), None);
        let why = refusal(&on, Some(lan)).unwrap();
        assert!(
            why.contains("ssh -L") && why.contains("allow_remote"),
            "{why}"
        );
        assert!(refusal(&on, None).is_some());
        let allowed = ConsoleSection {
            allow_remote: true,
            ..ConsoleSection::default()
        };
        assert_eq!(refusal(&allowed, Some(lan)), None);
        let disabled = ConsoleSection {
            enabled: false,
            ..ConsoleSection::default()
        };
        assert!(refusal(&disabled, Some(lo)).is_some());
    }

    #[test]
    fn cookies_are_read_from_any_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; echomesh_console=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
