//! Screenshots of every console page from two real nodes joined through their consoles, for
//! docs/console/ (`scripts/console-screenshots`). The browser test takes the same pictures
//! into a temporary directory.

use std::path::PathBuf;
use std::time::Duration;

use echomesh_tests::console::{self, url};
use echomesh_tests::webdriver::Driver;
use echomesh_tests::TestNode;

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "docs/console".into()),
    );
    let root = tempfile::tempdir().expect("tempdir");
    let a = TestNode::start(root.path(), "school-a", 0, &[]);
    let b = TestNode::start(root.path(), "school-b", 0, &[]);
    let c = TestNode::start(root.path(), "town-hall", 0, &[]);
    a.link(&b);
    b.link(&c);
    c.link(&a);
    let driver = Driver::start();
    let br = driver.browser("en-US");
    console::login_with_link(&br, &a);
    // The invite as the neighbors page shows it right after "Make an invite".
    br.goto(&url(&a, "/console/neighbors"));
    console::wait_for_element(&br, r#"tr[data-state="up"]"#, Duration::from_secs(20));
    br.goto(&url(&a, "/console/topology"));
    console::wait_for_element(&br, "svg.mesh line.link.up", Duration::from_secs(20));
    console::screenshot_every_page(&br, &a, &out, "console");
    br.goto(&url(&a, "/console/neighbors"));
    let make = br.wait_find("#make-invite", Duration::from_secs(10));
    br.click(&make);
    br.wait_find("svg.qr", Duration::from_secs(10));
    br.screenshot(&out.join("console-invite.png"));
    let de = driver.browser("de-DE");
    console::login_with_link(&de, &a);
    de.screenshot(&out.join("console-overview-de.png"));
    println!("screenshots in {}", out.display());
}
