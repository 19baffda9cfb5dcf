//! Helpers for the console's tests and its screenshot tool: logging a browser in, waiting for
//! what a page shows, the page list, and screenshots of every page.

use std::path::Path;
use std::time::Duration;

use crate::webdriver::Browser;
use crate::TestNode;

/// The console's pages: URL path and file name for screenshots.
pub const PAGES: [(&str, &str); 5] = [
    ("/console/", "overview"),
    ("/console/neighbors", "neighbors"),
    ("/console/topology", "topology"),
    ("/console/maintenance", "maintenance"),
    ("/console/ozones", "ozones"),
];

pub fn url(node: &TestNode, path: &str) -> String {
    format!("http://{}{path}", node.info.admin)
}

/// The one-time login URL `echomeshctl console` prints on its last line.
pub fn login_url(node: &TestNode) -> String {
    let out = node.ctl_ok(&["console", "--no-browser"]);
    out.lines().last().unwrap_or_default().trim().to_string()
}

/// The node's admin token.
pub fn admin_token(node: &TestNode) -> String {
    std::fs::read_to_string(node.dir.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_string()
}

/// Log `b` in to `node`'s console with a one-time link; waits for the overview.
pub fn login_with_link(b: &Browser, node: &TestNode) {
    b.goto(&login_url(node));
    wait_overview(b, node);
}

/// Log `b` in by pasting the admin token into the login form; waits for the overview.
pub fn login_with_token(b: &Browser, node: &TestNode) {
    b.goto(&url(node, "/console/"));
    let field = b.wait_find("#token", Duration::from_secs(10));
    b.type_into(&field, &admin_token(node));
    let submit = b.wait_find("form button[type=submit]", Duration::from_secs(5));
    b.click(&submit);
    wait_overview(b, node);
}

fn wait_overview(b: &Browser, node: &TestNode) {
    b.wait_until(
        Duration::from_secs(15),
        "the overview with the node's fingerprint",
        // Read in one step: the live part may be replaced between a find and a read.
        |b| b.read("#fingerprint", "text").as_deref() == Some(node.info.fingerprint.as_str()),
    );
}

/// Wait until an element matching `css` exists (the live part refreshes every 2 s).
pub fn wait_for_element(b: &Browser, css: &str, timeout: Duration) {
    b.wait_until(timeout, css, |b| b.find(css).is_some());
}

/// Screenshot every console page of `node` into `dir` as `PREFIX-PAGE.png`.
pub fn screenshot_every_page(b: &Browser, node: &TestNode, dir: &Path, prefix: &str) {
    std::fs::create_dir_all(dir).expect("screenshot dir");
    for (path, name) in PAGES {
        b.goto(&url(node, path));
        b.wait_find("#live", Duration::from_secs(10));
        b.screenshot(&dir.join(format!("{prefix}-{name}.png")));
    }
}
