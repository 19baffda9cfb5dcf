//! What operators look at is proven against the real thing: a Debian `prometheus` scrapes a
//! 3-node mesh with traffic, and every dashboard panel query and every rule returns data;
//! `promtool` checks the exposition, the rules and the alert unit tests; the dashboards
//! type-check strictly against Grafana's published schema.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use echomesh_client as client;
use echomesh_proto::ozone::OzoneProof;
use echomesh_tests::{http_get, run_ok, wait_for, TestNode};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> Command {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: run ./scripts/setup-debian (installs the Debian prometheus package)"
    );
    Command::new(path)
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests() {
    let rules = repo().join("dashboards/rules");
    let out = tool("promtool")
        .args(["check", "rules", "echomesh.rules.yml"])
        .current_dir(&rules)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = tool("promtool")
        .args(["test", "rules", "echomesh.rules.test.yml"])
        .current_dir(&rules)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

#[test]
fn dashboards_match_the_grafana_schema_strictly() {
    let check = repo().join("scripts/check-dashboards");
    run_ok(&mut Command::new(&check));
    // The check can fail: a misspelt field is caught.
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(repo().join("dashboards/ozones.json")).unwrap();
    let bad = good.replacen("\"panels\":", "\"pannels\":", 1);
    let bad_path = dir.path().join("bad.json");
    std::fs::write(&bad_path, bad).unwrap();
    let out = Command::new(&check).arg(&bad_path).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pannels"),
        "{out:?}"
    );
}

/// `s` percent-encoded for a URL query.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("dashboards/rules/echomesh.rules.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: echomesh\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            list.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tool("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for(Duration::from_secs(30), "prometheus to be ready", || {
            http_get(p.addr, "/-/ready")
                .ok()
                .filter(|(code, _)| *code == 200)
                .map(|_| ())
        });
        p
    }

    /// Instant query: the result vector (error if the query fails).
    fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let (code, body) = http_get(self.addr, &format!("/api/v1/query?query={}", encode(expr)))
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("{code}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Every query of a dashboard's panels (rows included), with its panel title.
fn panel_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((
                        p["title"].as_str().unwrap_or("?").to_string(),
                        expr.to_string(),
                    ));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_panel_and_rule_returns_data_from_a_real_prometheus() {
    let root = tempfile::tempdir().unwrap();
    let nodes = tokio::task::spawn_blocking({
        let root = root.path().to_path_buf();
        move || {
            let nodes: Vec<TestNode> = ["a", "b", "c"]
                .iter()
                .map(|n| TestNode::start(&root, n, 0, &[]))
                .collect();
            nodes[0].link(&nodes[1]);
            nodes[1].link(&nodes[2]);
            nodes[0].link(&nodes[2]);
            nodes
        }
    })
    .await
    .unwrap();

    // Each node's exposition passes promtool's lint.
    for n in &nodes {
        let (_, text) = n.http_get("/metrics");
        let mut p = tool("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics on {}: {}{}",
            n.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let targets: Vec<String> = nodes.iter().map(|n| n.info.admin.to_string()).collect();
    let prom = tokio::task::spawn_blocking(move || Prometheus::start(&targets))
        .await
        .unwrap();

    // Traffic in two bursts a few scrapes apart, so that rates are not zero: flood packets,
    // ozone deposits (replicated), a subscribed client.
    let tail = nodes[2].tail(&["--timeout", "60"]);
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = nodes[0].info.clone();
    for burst in 0..2 {
        nodes[0].ctl_ok(&["inject", "--node", &nodes[0].spec(), "--count", "300"]);
        let mut s = client::connect(&ep, a.quic, Some(a.fingerprint.parse().unwrap()), "t")
            .await
            .unwrap();
        let proof = OzoneProof::from_secret(b"observability");
        for i in 0..20 {
            s.deposit(
                proof.address(),
                Bytes::from(format!("burst {burst} message {i}")),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let prom = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(20), "3 targets up with traffic", || {
            let up = prom.query("count(up{job=\"echomesh\"} == 1)").ok()?;
            let rate = prom
                .query("sum(rate(echomesh_packets_accepted_total[30s])) > 0")
                .ok()?;
            (up.first()?["value"][1] == "3" && !rate.is_empty()).then_some(())
        });
        prom
    })
    .await
    .unwrap();

    let mut failures = Vec::new();
    let mut checked = 0;
    for file in ["mesh-overview", "node-detail", "ozones"] {
        let text = std::fs::read_to_string(repo().join(format!("dashboards/{file}.json"))).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (title, expr) in panel_queries(&d) {
            let q = expr
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*");
            checked += 1;
            match prom.query(&q) {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => failures.push(format!("{file} / {title}: no data for {q}")),
                Err(e) => failures.push(format!("{file} / {title}: {e}")),
            }
        }
    }
    assert!(checked >= 40, "only {checked} panel queries found");

    // Rules: Prometheus loaded and evaluated every one without error; recording rules have
    // data; every series an alert is built on exists.
    let (_, body) = http_get(prom.addr, "/api/v1/rules").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<serde_json::Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 16, "{} rules loaded", rules.len());
    for r in &rules {
        let name = r["name"].as_str().unwrap_or("?");
        if r["health"] != "ok" {
            failures.push(format!(
                "rule {name}: health {} {}",
                r["health"], r["lastError"]
            ));
        }
        let query = r["query"].as_str().unwrap_or_default();
        if r["type"] == "recording" {
            if prom.query(name).map(|x| x.is_empty()).unwrap_or(true) {
                failures.push(format!("recording rule {name}: no data"));
            }
            continue;
        }
        for metric in metric_names(query) {
            let q = format!("count({{__name__=\"{metric}\"}})");
            if prom.query(&q).map(|x| x.is_empty()).unwrap_or(true) {
                failures.push(format!("alert {name}: no series {metric}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(tail);
}

/// Metric names (and recording-rule names) an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..].iter().collect();
        let prefixed = ["echomesh_", "echomesh:", "up{"]
            .iter()
            .find(|p| rest.starts_with(**p))
            .copied();
        let boundary = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        if let (Some(p), true) = (prefixed, boundary) {
            if p == "up{" {
                out.push("up".to_string());
                i += 2;
                continue;
            }
            let name: String = bytes[i..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_' || **c == ':')
                .collect();
            i += name.len();
            if !out.contains(&name) {
                out.push(name);
            }
        } else {
            i += 1;
        }
    }
    out
}
