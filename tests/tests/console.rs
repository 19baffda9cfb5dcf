//! The node console against real node processes: in headless Chromium (Debian's `chromium`
//! and `chromium-driver`, over WebDriver) for what people do with it, and with plain HTTP for
//! what it must refuse.

use std::collections::BTreeSet;
use std::time::Duration;

use echomesh_tests::console::{self, url, PAGES};
use echomesh_tests::webdriver::Driver;
use echomesh_tests::TestNode;

#[test]
fn in_a_browser_two_nodes_invite_join_see_each_other_and_one_drains() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let b = TestNode::start(root.path(), "b", 0, &[]);
    let (ta, tb) = (console::admin_token(&a), console::admin_token(&b));
    let driver = Driver::start();
    let ba = driver.browser("en-US");
    let bb = driver.browser("de-DE");
    let mut urls = Vec::new();

    // A: the one-time link from `echomeshctl console`; B: the pasted admin token.
    let link = console::login_url(&a);
    assert!(
        link.starts_with(&format!("http://{}/console/login?code=", a.info.admin)),
        "{link}"
    );
    console::login_with_link(&ba, &a);
    assert!(
        ba.url().ends_with("/console/"),
        "the code leaves the address bar: {}",
        ba.url()
    );
    console::login_with_token(&bb, &b);
    urls.push(ba.url());
    urls.push(bb.url());
    // B's browser asks for German.
    let src = bb.source();
    assert!(
        src.contains(r#"<html lang="de""#) && src.contains("Übersicht"),
        "{src}"
    );
    // The session cookie is HttpOnly and SameSite=Strict.
    let cookie = ba
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "echomesh_console")
        .expect("session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");

    // A makes an invite; B pastes it.
    ba.goto(&url(&a, "/console/neighbors"));
    let make = ba.wait_find("#make-invite", Duration::from_secs(10));
    ba.click(&make);
    let el = ba.wait_find("#invite-token", Duration::from_secs(10));
    let invite = ba.text(&el);
    assert!(invite.starts_with("EM1-"), "{invite}");
    assert!(ba.find("svg.qr").is_some(), "the invite as a QR code");
    bb.goto(&url(&b, "/console/neighbors"));
    let field = bb.wait_find("#join-token", Duration::from_secs(10));
    bb.type_into(&field, &invite);
    let join = bb.wait_find("#join", Duration::from_secs(5));
    bb.click(&join);
    // Both list the other as a neighbor that is up: A without reloading (live update).
    let row = |id: &str| format!(r#"tr[data-id="{id}"][data-state="up"]"#);
    console::wait_for_element(&bb, &row(&a.info.id), Duration::from_secs(20));
    console::wait_for_element(&ba, &row(&b.info.id), Duration::from_secs(20));

    // Both topology pictures show both nodes and the link between them, up.
    for (br, me) in [(&ba, &a), (&bb, &b)] {
        br.goto(&url(me, "/console/topology"));
        br.wait_until(
            Duration::from_secs(20),
            "both nodes and the link in the picture",
            |br| {
                let nodes = [&a.info.id, &b.info.id].iter().all(|id| {
                    br.find(&format!(r#"svg.mesh g.node[data-id="{id}"]"#))
                        .is_some()
                });
                let link = [(&a.info.id, &b.info.id), (&b.info.id, &a.info.id)]
                    .iter()
                    .any(|(x, y)| {
                        br.find(&format!(
                            r#"svg.mesh line.link.up[data-a="{x}"][data-b="{y}"]"#
                        ))
                        .is_some()
                    });
                nodes && link
            },
        );
        assert!(
            br.find(&format!(
                r#"svg.mesh g.node.self[data-id="{}"]"#,
                me.info.id
            ))
            .is_some(),
            "this node is highlighted"
        );
        urls.push(br.url());
    }

    // Every page of A, photographed (CI keeps them out of docs/) and weighed.
    let shots = tempfile::tempdir().unwrap();
    console::screenshot_every_page(&ba, &a, shots.path(), "a");
    for (path, name) in PAGES {
        assert!(shots.path().join(format!("a-{name}.png")).exists());
        ba.goto(&url(&a, path));
        ba.wait_find("#live", Duration::from_secs(10));
        let bytes = ba.execute(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))\
             .reduce((n, e) => n + e.decodedBodySize, 0);",
        );
        let bytes = bytes.as_f64().unwrap_or(f64::MAX);
        assert!(bytes > 1000.0 && bytes < 300_000.0, "{path}: {bytes} bytes");
        eprintln!("{path}: {bytes} bytes (HTML, CSS, JS)");
        let src = ba.source();
        assert!(!src.contains(&ta), "the admin token is never on a page");
        urls.push(ba.url());
    }

    // B drains from its console; the progress reaches the end; then it serves again.
    bb.goto(&url(&b, "/console/maintenance"));
    let deadline = bb.wait_find("#deadline", Duration::from_secs(10));
    bb.type_into(&deadline, "30");
    let drain = bb.wait_find("#drain", Duration::from_secs(5));
    bb.click(&drain);
    bb.accept_dialog();
    let mut phases = BTreeSet::new();
    bb.wait_until(Duration::from_secs(40), "the drain to finish", |br| {
        // The live part is replaced every 2 s, possibly between two reads: wait for the
        // final phase itself (a page read just before the swap said "leaving").
        if let Some(p) = br.read("dl#drain-status", "data-phase") {
            phases.insert(p);
        }
        phases.contains("done")
    });
    assert!(phases.contains("done"), "phases seen: {phases:?}");
    assert_eq!(
        bb.read("dl#drain-status", "data-safe").as_deref(),
        Some("true"),
        "a finished drain says it is safe to stop"
    );
    assert_eq!(b.http_get("/readyz").0, 503, "drained: not ready");
    let undrain = bb.wait_find("#undrain", Duration::from_secs(5));
    bb.click(&undrain);
    bb.wait_until(Duration::from_secs(10), "serving again", |br| {
        br.find(r#"dl#drain-status[data-phase="serving"]"#)
            .is_some()
    });
    assert_eq!(b.http_get("/readyz").0, 200);
    urls.push(bb.url());

    // The admin tokens never appeared in a URL or a log line.
    for u in &urls {
        assert!(!u.contains(&ta) && !u.contains(&tb), "{u}");
    }
    for (n, t) in [(&a, &ta), (&b, &tb)] {
        assert!(
            !n.log_tail().contains(t.as_str()),
            "token in {}'s log",
            n.name
        );
    }
}

/// A plain HTTP client that keeps no cookies and follows no redirects: each request carries
/// exactly what the test gives it.
fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn set_cookie(r: &reqwest::blocking::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(String::from)
}

/// The value of a hidden form field on a page.
fn field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!(r#"name="{name}" value=""#))
        .unwrap_or_else(|| panic!("no field {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[test]
fn refuses_without_a_session_or_csrf_token_replayed_codes_and_guessing_and_counts_it() {
    let root = tempfile::tempdir().unwrap();
    // With an Echo listener: the overview shows its address and certificate.
    let cfg = root.path().join("n.toml");
    let echo_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    std::fs::write(
        &cfg,
        format!("[bridge]\nlisten = \"127.0.0.1:{echo_port}\"\n"),
    )
    .unwrap();
    let n = TestNode::start(
        root.path(),
        "n",
        0,
        &["--config".into(), cfg.display().to_string()],
    );
    let token = console::admin_token(&n);
    let c = http();
    let refused = |reason: &str| {
        n.metric(&format!(
            "echomesh_console_requests_refused_total{{reason=\"{reason}\"}}"
        ))
    };
    let logins = |result: &str| {
        n.metric(&format!(
            "echomesh_console_logins_total{{result=\"{result}\"}}"
        ))
    };

    // `/` leads to the console; without a session, to the login page; CSP everywhere.
    let r = c.get(url(&n, "/")).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/");
    let r = c.get(url(&n, "/console/")).send().unwrap();
    assert_eq!(r.headers()["location"], "/console/login");
    let r = c.get(url(&n, "/console/login")).send().unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");

    // A state-changing request without a session: 403, counted, nothing done.
    let r = c
        .post(url(&n, "/console/act/drain"))
        .form(&[("deadline_secs", "5")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(refused("no_session"), 1.0);
    assert_eq!(n.http_get("/readyz").0, 200, "not drained");

    // The one-time link works once; a replay is refused and counted.
    let link = console::login_url(&n);
    let r = c.get(&link).send().unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text());
    let sc = set_cookie(&r, "echomesh_console").expect("session cookie");
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Strict"),
        "{sc}"
    );
    let session = sc.split(';').next().unwrap().to_string();
    let r = c.get(&link).send().unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(logins("bad_code"), 1.0);
    assert!(set_cookie(&r, "echomesh_console").is_none());

    // With the session: a form without its CSRF token, or with a wrong one, is refused.
    let page = c
        .get(url(&n, "/console/maintenance"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    assert!(!html.contains(&token));
    let csrf = field(&html, "csrf");
    let status: serde_json::Value = serde_json::from_str(&n.ctl_ok(&["--json", "status"])).unwrap();
    let cert = status["bridge"]["cert_sha256"]
        .as_str()
        .expect("bridge certificate");
    let overview = c
        .get(url(&n, "/console/"))
        .header("cookie", &session)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        overview.contains(cert) && overview.contains(&format!("127.0.0.1:{echo_port}")),
        "{overview}"
    );
    for form in [vec![], vec![("csrf", "wrong")]] {
        let r = c
            .post(url(&n, "/console/act/drain"))
            .header("cookie", &session)
            .form(&form)
            .send()
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert_eq!(refused("csrf"), 2.0);
    assert_eq!(n.http_get("/readyz").0, 200, "not drained");
    // With it, the action happens.
    let r = c
        .post(url(&n, "/console/act/reload"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/maintenance");
    // `/v1` stays bearer-only: a console session is not enough.
    let r = c
        .get(url(&n, "/v1/status"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // Guessing the token: refused, then rate-limited, all counted; the right token then
    // still has to wait for the limiter.
    let form = c.get(url(&n, "/console/login")).send().unwrap();
    let login_cookie = set_cookie(&form, "echomesh_console_login").unwrap();
    let login_cookie = login_cookie.split(';').next().unwrap().to_string();
    let login_csrf = field(&form.text().unwrap(), "login_csrf");
    let attempt = |t: &str| {
        c.post(url(&n, "/console/login"))
            .header("cookie", &login_cookie)
            .form(&[("login_csrf", login_csrf.as_str()), ("token", t)])
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // Five failures are allowed in a burst (the replayed code above was one), then one per
    // 6 s: guesses are refused until the limiter answers 429, and then even the right token
    // must wait.
    let mut codes = Vec::new();
    while codes.last() != Some(&429) && codes.len() < 8 {
        codes.push(attempt(&format!("guess-{}", codes.len())));
    }
    let refused_guesses = codes.iter().filter(|c| **c == 401).count();
    assert!(
        codes.last() == Some(&429) && (4..=5).contains(&refused_guesses),
        "{codes:?}"
    );
    assert_eq!(attempt(&token), 429);
    assert_eq!(logins("bad_token"), refused_guesses as f64);
    assert_eq!(logins("rate_limited"), 2.0);
    assert_eq!(logins("ok"), 1.0);
    // A login form posted from elsewhere (no matching login cookie) is refused.
    let r = c
        .post(url(&n, "/console/login"))
        .form(&[("login_csrf", "x"), ("token", token.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(logins("bad_csrf"), 1.0);

    // Log out: the session is gone.
    let r = c
        .post(url(&n, "/console/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = c
        .get(url(&n, "/console/"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(r.headers()["location"], "/console/login");
    assert_eq!(
        n.metric("echomesh_console_sessions_ended_total{reason=\"logout\"}"),
        1.0
    );
    // Neither the token nor a login code is ever logged.
    let log = n.log_tail();
    let code = link.rsplit('=').next().unwrap();
    assert!(!log.contains(&token) && !log.contains(code), "{log}");
}
