//! The console's HTML, rendered on the server with `maud` (escaped by construction). Each page
//! has a static part (forms) and a live part (`#live`) that console.js re-fetches from
//! `/console/live/PAGE` every 2 s; the live parts read the node through `admin::ops`, the same
//! functions the `/v1` API answers with.

use std::time::Duration;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::auth::Flash;
use super::history::{History, Sample};
use super::i18n::{Lang, Text};
use super::picture;
use crate::admin::ops;
use crate::ctx::Ctx;

/// The console's pages: path segment and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageId {
    Overview,
    Neighbors,
    Topology,
    Maintenance,
    Ozones,
}

impl PageId {
    pub const ALL: [PageId; 5] = [
        PageId::Overview,
        PageId::Neighbors,
        PageId::Topology,
        PageId::Maintenance,
        PageId::Ozones,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            PageId::Overview => "overview",
            PageId::Neighbors => "neighbors",
            PageId::Topology => "topology",
            PageId::Maintenance => "maintenance",
            PageId::Ozones => "ozones",
        }
    }

    pub fn from_slug(s: &str) -> Option<PageId> {
        PageId::ALL.into_iter().find(|p| p.slug() == s)
    }

    pub fn path(self) -> String {
        match self {
            PageId::Overview => "/console/".into(),
            p => format!("/console/{}", p.slug()),
        }
    }

    fn title(self, t: &Text) -> &'static str {
        match self {
            PageId::Overview => t.overview,
            PageId::Neighbors => t.neighbors,
            PageId::Topology => t.topology,
            PageId::Maintenance => t.maintenance,
            PageId::Ozones => t.ozones_keys,
        }
    }
}

/// What every page of a logged-in session needs.
pub struct Frame<'a> {
    pub lang: Lang,
    pub csrf: &'a str,
    pub node_id: String,
    pub flash: Option<Flash>,
}

pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        meta name="referrer" content="no-referrer";
        title { (title) " · echomesh" }
        link rel="stylesheet" href="/console/assets/console.css";
        script src="/console/assets/console.js" defer {}
    }
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

fn flash(t: &Text, f: &Option<Flash>) -> Markup {
    html! {
        @match f {
            Some(Flash::Ok(m)) => p.flash.ok role="status" { (m) },
            Some(Flash::Error(m)) => p.flash.error role="alert" { strong { (t.error) ": " } (m) },
            Some(Flash::Invite { token, expires_unix }) => section.flash.ok.invite aria-labelledby="invite-made" {
                h2 #invite-made { (t.invite_token) }
                p { code #invite-token .token { (token) } " "
                    button type="button" data-copy=(token) { (t.copy) } }
                p { (t.expires) ": " time datetime=(rfc3339(*expires_unix)) { (rfc3339(*expires_unix)) } }
                @if let Some(svg) = picture::qr_svg(token, t.qr_label) { (PreEscaped(svg)) }
            },
            None => {},
        }
    }
}

fn rfc3339(unix: u64) -> String {
    jiff::Timestamp::from_second(unix as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A whole page around `body`.
pub fn layout(f: &Frame<'_>, page: PageId, body: Markup) -> Markup {
    let t = f.lang.text();
    html! {
        (DOCTYPE)
        html lang=(f.lang.code()) {
            head { (head(page.title(t))) }
            body {
                a.skip href="#main" { (t.skip) }
                header {
                    span.brand { "echomesh" }
                    span.node-id title=(t.this_node) { (f.node_id) }
                    nav aria-label=(t.nav_label) {
                        ul {
                            @for p in PageId::ALL {
                                li { a href=(p.path()) aria-current=[(p == page).then_some("page")] { (p.title(t)) } }
                            }
                        }
                    }
                    form.logout method="post" action="/console/logout" {
                        (csrf_field(f.csrf))
                        button type="submit" { (t.log_out) }
                    }
                }
                main #main {
                    h1 { (page.title(t)) }
                    (flash(t, &f.flash))
                    (body)
                }
                footer { p #updated data-stale=(t.stale) { (t.updated_live) } }
            }
        }
    }
}

/// The live part of a page, re-fetched by console.js.
pub fn live(page: PageId, inner: Markup) -> Markup {
    html! {
        div #live data-src=(format!("/console/live/{}", page.slug())) aria-live="polite" { (inner) }
    }
}

pub fn login(lang: Lang, login_csrf: &str, error: Option<&str>) -> Markup {
    let t = lang.text();
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head { (head(t.login_title)) }
            body.login {
                main #main {
                    h1 { "echomesh · " (t.login_title) }
                    @if let Some(e) = error { p.flash.error role="alert" { (e) } }
                    form method="post" action="/console/login" {
                        input type="hidden" name="login_csrf" value=(login_csrf);
                        label for="token" { (t.login_token) }
                        input #token type="password" name="token" autocomplete="off" required autofocus;
                        button type="submit" { (t.log_in) }
                    }
                    p.help { (t.login_help) }
                }
            }
        }
    }
}

/// Something an operator should look at, as the node sees itself.
pub fn warnings(ctx: &Ctx, t: &Text, hist: &History, now: &Sample) -> Vec<(&'static str, String)> {
    let mut w = Vec::new();
    if let Err(why) = ops::readiness(ctx) {
        w.push((t.warn_not_ready, why.to_string()));
    }
    if ctx.drain.is_draining() {
        w.push((
            t.warn_draining,
            ctx.drain.status().phase.label().to_string(),
        ));
    }
    for n in ops::neighbors(ctx) {
        if n.state != "up" {
            let mut s = format!("{} ({}): {}", n.id, n.addr, n.state);
            if let Some(e) = n.last_error {
                s += &format!(" – {e}");
            }
            w.push((t.warn_neighbor_down, s));
        }
    }
    let (used, budget) = storage(ctx);
    if budget > 0 && used * 10 >= budget * 8 {
        w.push((
            t.warn_storage,
            format!("{} {} {}", bytes(used), t.of, bytes(budget)),
        ));
    }
    if let Some(n) = hist.drops_rising(now) {
        w.push((t.warn_drops, format!("{n} / min")));
    }
    w
}

fn storage(ctx: &Ctx) -> (u64, u64) {
    (ctx.ozones.total_bytes(), ctx.cfg.ozone.max_total_bytes)
}

pub fn overview_live(ctx: &Ctx, t: &Text, hist: &History, now: &Sample) -> Markup {
    let st = ops::status(ctx);
    let (pin, pout) = hist.rates(now);
    let (drops, span) = hist.drops(now, Duration::from_secs(300));
    let minutes = span.as_secs().div_ceil(60).max(1);
    let (used, budget) = storage(ctx);
    let warns = warnings(ctx, t, hist, now);
    let ready = ops::readiness(ctx);
    html! {
        section aria-labelledby="warn-h" {
            h2 #warn-h { (t.warnings) }
            @if warns.is_empty() {
                p.fine { (t.no_warnings) }
            } @else {
                ul.warnings {
                    @for (what, detail) in &warns { li { strong { (what) } ": " (detail) } }
                }
            }
        }
        dl.facts {
            dt { (t.health) }
            dd #health data-ready=(ready.is_ok()) {
                @match ready { Ok(()) => span.ok { (t.serving) }, Err(why) => span.bad { (t.not_ready) ": " (why) } }
            }
            dt { (t.fingerprint) }
            dd { code #fingerprint { (st.fingerprint) } " " button type="button" data-copy=(st.fingerprint) { (t.copy) } }
            dt { (t.version) } dd { (st.version) " (protocol " (st.protocol) ")" }
            dt { (t.cluster) } dd { (st.cluster) }
            dt { (t.uptime) } dd { (duration(st.uptime_secs)) }
            dt { (t.clients) } dd #clients { (st.client_sessions) }
            dt { (t.packets_in) } dd { (format!("{pin:.0}")) " " (t.per_sec) }
            dt { (t.packets_out) } dd { (format!("{pout:.0}")) " " (t.per_sec) }
            dt { (t.neighbors_up) } dd { (st.neighbors_up) " / " (st.neighbors_total) }
            dt { (t.storage) }
            dd { meter min="0" max=(budget) value=(used) { } " " (bytes(used)) " " (t.of) " " (bytes(budget)) }
            @if let Some(b) = &st.bridge {
                @if let Some(addr) = &b.listen {
                    dt { (t.echo_listener) } dd { code { (addr) } }
                }
                @if let Some(c) = &b.cert_sha256 {
                    dt { (t.certificate) } dd { code #bridge-cert { (c) } " " button type="button" data-copy=(c) { (t.copy) } }
                }
            }
        }
        section aria-labelledby="drops-h" {
            h2 #drops-h { (t.drops) " (" (t.last_minutes) " " (minutes) " min)" }
            @if drops.is_empty() {
                p { (t.drops_none) }
            } @else {
                table {
                    thead { tr { th scope="col" { (t.reason) } th scope="col" { (t.count) } } }
                    tbody { @for (r, n) in &drops { tr { td { (r) } td { (n) } } } }
                }
            }
        }
    }
}

/// `rates`: bytes per second in and out by neighbor short ID.
pub fn neighbors_live(
    ctx: &Ctx,
    t: &Text,
    csrf: &str,
    rates: &std::collections::BTreeMap<String, (f64, f64)>,
) -> Markup {
    let list = ops::neighbors(ctx);
    html! {
        @if list.is_empty() {
            p { (t.no_neighbors) }
        } @else {
            table.neighbors {
                thead { tr {
                    th scope="col" { (t.neighbor) } th scope="col" { (t.address) } th scope="col" { (t.state) }
                    th scope="col" { (t.rtt) } th scope="col" { (t.rate_in_out) } th scope="col" { (t.mode) } th scope="col" { (t.queue) }
                    th scope="col" { (t.since) } th scope="col" { (t.actions) }
                } }
                tbody {
                    @for n in &list {
                        tr data-id=(n.id) data-state=(n.state) {
                            th scope="row" { (n.id) @if n.kind == "echo" { " (Echo)" } }
                            td { code { (n.addr) } }
                            td { span class=(format!("state {}", n.state)) { (n.state) }
                                 @if let Some(e) = &n.last_error { @if n.state != "up" { br; small { (e) } } } }
                            td { @if let Some(r) = n.rtt_ms { (format!("{r:.1} ms")) } @else { "–" } }
                            td { @match rates.get(&n.id) {
                                Some((i, o)) => { (bytes(*i as u64)) "/s · " (bytes(*o as u64)) "/s" },
                                None => "–",
                            } }
                            td { (n.mode) }
                            td { (bytes(n.queue_bytes as u64)) }
                            td { (duration(n.since_secs)) }
                            td.actions {
                                @if n.kind == "quic" {
                                    form method="post" action="/console/act/neighbor-mode" {
                                        (csrf_field(csrf))
                                        input type="hidden" name="id" value=(n.fingerprint);
                                        label.visually-hidden for=(format!("mode-{}", n.id)) { (t.mode) " " (n.id) }
                                        select id=(format!("mode-{}", n.id)) name="mode" {
                                            option value="full" selected[n.mode == "full"] { "full" }
                                            option value="half" selected[n.mode == "half"] { "half" }
                                        }
                                        button type="submit" { (t.set_mode) }
                                    }
                                }
                                @if n.origin != "static" {
                                    form method="post" action="/console/act/neighbor-remove" data-confirm=(t.confirm_remove) {
                                        (csrf_field(csrf))
                                        input type="hidden" name="id" value=(n.fingerprint);
                                        button type="submit" aria-label=(format!("{} {}", t.remove, n.id)) { (t.remove) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn neighbors(ctx: &Ctx, f: &Frame<'_>, live_part: Markup) -> Markup {
    let t = f.lang.text();
    let ttl_min = (ctx.cfg.invite.default_ttl_secs / 60).max(1);
    html! {
        (live(PageId::Neighbors, live_part))
        div.forms {
            section aria-labelledby="invite-h" {
                h2 #invite-h { (t.invite_title) }
                p.help { (t.invite_help) }
                form method="post" action="/console/act/invite" {
                    (csrf_field(f.csrf))
                    label for="ttl" { (t.valid_minutes) }
                    input #ttl type="number" name="ttl_minutes" min="1" max="10080" value=(ttl_min);
                    button #make-invite type="submit" { (t.make_invite) }
                }
            }
            section aria-labelledby="join-h" {
                h2 #join-h { (t.join_title) }
                p.help { (t.join_help) }
                form method="post" action="/console/act/join" {
                    (csrf_field(f.csrf))
                    label for="join-token" { (t.join_token) }
                    textarea #join-token name="token" rows="3" required autocomplete="off" {}
                    button #join type="submit" { (t.join) }
                }
            }
            section aria-labelledby="add-h" {
                h2 #add-h { (t.add_title) }
                p.help { (t.add_help) }
                form method="post" action="/console/act/neighbor-add" {
                    (csrf_field(f.csrf))
                    label for="spec" { (t.add_spec) }
                    input #spec type="text" name="spec" required autocomplete="off";
                    button type="submit" { (t.add) }
                }
            }
        }
    }
}

pub fn topology_live(ctx: &Ctx, t: &Text) -> Markup {
    let v = ops::topology(ctx);
    let label = format!(
        "{} {}, {} {}",
        v.nodes.len(),
        t.nodes,
        v.links.len(),
        t.links
    );
    html! {
        figure {
            (PreEscaped(picture::topology_svg(&v, &label)))
            figcaption {
                (t.legend) ": "
                span.key.up { "up" } " " span.key.draining { "draining" } " "
                span.key.left { "left" } " " span.key.failed { "failed" } " · "
                span.key.self { (t.this_node) }
            }
        }
        h2 { (t.nodes) }
        table.nodes {
            thead { tr { th scope="col" { (t.node) } th scope="col" { (t.state) } th scope="col" { (t.cluster) }
                         th scope="col" { (t.address) } th scope="col" { (t.last_heard) } } }
            tbody { @for n in &v.nodes {
                tr data-id=(n.id) data-state=(n.state) {
                    th scope="row" { (n.id) @if n.this_node { " (" (t.this_node) ")" } }
                    td { span class=(format!("state {}", n.state)) { (n.state) } }
                    td { (n.cluster) } td { code { (n.addr) } } td { (n.last_heard_secs) }
                }
            } }
        }
        h2 { (t.links) }
        table.links {
            thead { tr { th scope="col" { (t.node) } th scope="col" { (t.node) } th scope="col" { (t.state) } th scope="col" { (t.rtt) } } }
            tbody { @for l in &v.links {
                tr data-a=(l.a) data-b=(l.b) data-state=(l.state) {
                    td { (l.a) } td { (l.b) } td { span class=(format!("state {}", l.state)) { (l.state) } }
                    td { @if let Some(r) = l.rtt_ms { (format!("{r:.1} ms")) } @else { "–" } }
                }
            } }
        }
    }
}

pub fn maintenance_live(ctx: &Ctx, t: &Text) -> Markup {
    let d = ops::drain_status(ctx);
    let yn = |b: bool| if b { t.yes } else { t.no };
    html! {
        dl.facts #drain-status data-phase=(d.phase.label()) data-safe=(d.safe_to_stop) {
            dt { (t.phase) } dd #phase { (d.phase.label()) }
            dt { (t.clients_moved) }
            dd { progress max=(d.clients_total.max(1)) value=(if d.clients_total == 0 && d.draining { 1 } else { d.clients_moved }) {} " " (d.clients_moved) " / " (d.clients_total) }
            dt { (t.ozones_handed_off) }
            dd { progress max=(d.ozones_total.max(1)) value=(if d.ozones_total == 0 && d.draining { 1 } else { d.ozones_done }) {} " " (d.ozones_done) " / " (d.ozones_total) }
            dt { (t.queued_bytes) } dd { (bytes(d.queued_bytes as u64)) }
            dt { (t.neighbors_told) } dd { (d.neighbors_told) }
            dt { (t.safe_to_stop) } dd #safe { (yn(d.safe_to_stop)) }
            dt { (t.elapsed) } dd { (d.elapsed_secs) }
            @if let Some(detail) = &d.detail { dt { "" } dd { (detail) } }
        }
    }
}

pub fn maintenance(ctx: &Ctx, f: &Frame<'_>) -> Markup {
    let t = f.lang.text();
    let draining = ctx.drain.is_draining();
    html! {
        section aria-labelledby="drain-h" {
            h2 #drain-h { (t.drain_title) }
            p.help { (t.drain_help) }
            (live(PageId::Maintenance, maintenance_live(ctx, t)))
            @if draining {
                form method="post" action="/console/act/undrain" {
                    (csrf_field(f.csrf))
                    button #undrain type="submit" { (t.undrain) }
                }
            } @else {
                form method="post" action="/console/act/drain" data-confirm=(t.confirm_drain) {
                    (csrf_field(f.csrf))
                    label for="deadline" { (t.deadline_secs) }
                    input #deadline type="number" name="deadline_secs" min="1" max="86400" value=(ctx.cfg.drain_deadline_secs);
                    button #drain type="submit" { (t.drain) }
                }
            }
        }
        section aria-labelledby="reload-h" {
            h2 #reload-h { (t.reload_title) }
            p.help { (t.reload_help) }
            form method="post" action="/console/act/reload" {
                (csrf_field(f.csrf))
                button #reload type="submit" { (t.reload) }
            }
        }
    }
}

pub fn ozones_live(ctx: &Ctx, t: &Text) -> Markup {
    let m = &ctx.metrics;
    let (used, budget) = storage(ctx);
    let evicted = m.ozone_evictions.with_label_values(&["retention"]).get();
    html! {
        dl.facts {
            dt { (t.ozones_hosted) } dd { (m.ozones_hosted.get()) }
            dt { (t.messages) } dd { (m.ozone_messages.get()) }
            dt { (t.storage) } dd { meter min="0" max=(budget) value=(used) {} " " (bytes(used)) " " (t.of) " " (bytes(budget)) }
            dt { (t.replicas) } dd { (ctx.cfg.ozone.replicas) " / " (ctx.cfg.ozone.write_quorum) }
            dt { (t.out_of_sync) } dd { (m.ozone_repair_differing.get()) }
            dt { (t.repair_rounds) } dd { (m.ozone_repair_rounds.get()) }
            dt { (t.repaired_items) } dd { (m.ozone_repair_items.get()) }
            dt { (t.evictions) } dd { (evicted) }
        }
        h2 { (t.key_directory) }
        dl.facts {
            dt { (t.key_bundles) } dd { (m.key_bundles.get()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(duration(2 * 86_400 + 3600), "2 d 1 h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
