//! Operations with real node processes: a drain moves clients and ozones away without losing
//! or repeating anything, undrain takes the node back, SIGTERM drains under load, and the
//! topology every node shows follows kills, drains and new links within seconds.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use echomesh_client as client;
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::ozone::OzoneProof;
use echomesh_proto::wire::{self, ClientEvent, ClientRequest};
use echomesh_tests::{cluster_of_three, session_to, wait_for, Shared, TestNode};

fn config(root: &Path, body: &str) -> Vec<String> {
    let path = root.join("node.toml");
    std::fs::write(&path, body).unwrap();
    vec!["--config".into(), path.display().to_string()]
}

/// Run blocking harness calls (process spawning, polling) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A steady flow of `count` packets `flow-{tag}-{i}` injected through `n`, one every 10 ms.
/// `sent` counts what was injected so far.
fn start_flow(
    n: &Shared,
    ep: &quinn::Endpoint,
    tag: &'static str,
    count: u64,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let (n, ep) = (n.clone(), ep.clone());
    tokio::spawn(async move {
        let mut s = session_to(&n, &ep).await;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..count {
            tick.tick().await;
            let p = EchoPacket::new(Bytes::from(format!("flow-{tag}-{i:05}")), 16, None);
            s.inject(&[p]).await.unwrap();
            loop {
                match s.next_event().await.unwrap() {
                    Some(ClientEvent::Injected { accepted: 1, .. }) => break,
                    Some(ClientEvent::Injected { .. }) => panic!("flow packet {i} not accepted"),
                    Some(_) => {}
                    None => panic!("flow session closed"),
                }
            }
            sent.fetch_add(1, Ordering::SeqCst);
        }
    })
}

/// `clients` JSON tails on `on` (each expecting `count` packets), and a flow of `count`
/// packets injected at `from`; returns once `started` of them were sent.
async fn clients_under_flow(
    on: &Shared,
    from: &Shared,
    ep: &quinn::Endpoint,
    clients: usize,
    tag: &'static str,
    count: u64,
    started: u64,
) -> (
    Vec<echomesh_tests::Tail>,
    tokio::task::JoinHandle<()>,
    Arc<AtomicU64>,
) {
    let tails = {
        let on = on.clone();
        blocking(move || {
            let on = on.lock().unwrap();
            let n = count.to_string();
            (0..clients)
                .map(|_| on.tail(&["--json", "--count", &n, "--timeout", "90"]))
                .collect::<Vec<_>>()
        })
        .await
    };
    let sent = Arc::new(AtomicU64::new(0));
    let flow = start_flow(from, ep, tag, count, sent.clone());
    while sent.load(Ordering::SeqCst) < started {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (tails, flow, sent)
}

/// Every client (a JSON tail) saw exactly the `count` flow packets, each once, and moved.
async fn assert_complete(clients: Vec<echomesh_tests::Tail>, tag: &str, count: u64) {
    let outputs = blocking(move || {
        clients
            .into_iter()
            .map(|t| t.finish_with_stderr(Duration::from_secs(60)))
            .collect::<Vec<_>>()
    })
    .await;
    let want: BTreeSet<String> = (0..count).map(|i| format!("flow-{tag}-{i:05}")).collect();
    for (k, (ok, lines, err)) in outputs.into_iter().enumerate() {
        assert!(ok, "client {k} did not get all {count} packets: {err}");
        let got: Vec<String> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["payload"].as_str().unwrap().to_string()
            })
            .collect();
        let distinct: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(distinct.len(), got.len(), "client {k} got a duplicate");
        assert_eq!(distinct, want, "client {k} lost packets");
        assert!(err.contains("moved to"), "client {k} did not move: {err}");
    }
}

fn status(n: &TestNode) -> serde_json::Value {
    serde_json::from_str(&n.ctl_ok(&["--json", "status"])).unwrap()
}

fn neighbor_field(n: &TestNode, fingerprint: &str, field: &str) -> String {
    n.neighbors()
        .iter()
        .find(|v| v["fingerprint"] == fingerprint)
        .and_then(|v| v[field].as_str().map(String::from))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_moves_clients_and_ozones_without_loss_undrain_and_sigterm_under_load() {
    let root = tempfile::tempdir().unwrap();
    let flags = config(
        root.path(),
        "drain_deadline_secs = 30\ndrain_client_grace_secs = 4\n",
    );
    let (nodes, ids) = cluster_of_three(root.path(), &flags);
    let (a, b, c) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    let b_fp = b.lock().unwrap().fingerprint().to_string();
    let b_id = b.lock().unwrap().info.id.clone();
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();

    // 200 ozone messages in 20 ozones, all deposited through B.
    let proofs: Vec<OzoneProof> = (0..20)
        .map(|o| OzoneProof::from_secret(format!("ops-{o}").as_bytes()))
        .collect();
    {
        let mut s = session_to(&b, &ep).await;
        for (o, p) in proofs.iter().enumerate() {
            for i in 0..10 {
                let (_, copies) = s
                    .deposit(p.address(), Bytes::from(format!("ozone {o} message {i}")))
                    .await
                    .unwrap();
                assert!(copies >= 2);
            }
        }
    }

    // 20 clients on B, and a steady flow injected at A.
    const FLOW: u64 = 1500;
    let (clients, flow, sent) = clients_under_flow(&b, &a, &ep, 20, "drain", FLOW, 200).await;

    // Drain B: not ready within 1 s; done with every client moved.
    let drain = {
        let b = b.clone();
        blocking(move || {
            let b = b.lock().unwrap();
            let mut cmd = b.ctl_cmd();
            cmd.args(["--json", "drain", "--wait"]);
            let started = Instant::now();
            let child = cmd
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            wait_for(Duration::from_secs(1), "readyz to fail after drain", || {
                (b.http_get("/readyz").0 == 503).then_some(())
            });
            let not_ready_after = started.elapsed();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "drain --wait failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                not_ready_after,
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
        .await
    };
    assert!(
        drain.0 < Duration::from_secs(1),
        "not ready after {:?}",
        drain.0
    );
    let st: serde_json::Value = serde_json::from_str(&drain.1).unwrap();
    assert_eq!(st["phase"], "done", "{st}");
    assert_eq!(st["safe_to_stop"], true, "{st}");
    assert_eq!(st["clients_total"], 20, "{st}");
    assert_eq!(st["clients_moved"], 20, "{st}");
    assert!(
        sent.load(Ordering::SeqCst) < FLOW - 100,
        "the drain must finish while the flow still runs (sent {} of {FLOW})",
        sent.load(Ordering::SeqCst)
    );
    flow.await.unwrap();
    assert_complete(clients, "drain", FLOW).await;

    {
        let (a, b, c) = (a.clone(), b.clone(), c.clone());
        let (b_fp, b_id) = (b_fp.clone(), b_id.clone());
        blocking(move || {
            let (a, b, c) = (a.lock().unwrap(), b.lock().unwrap(), c.lock().unwrap());
            // Every client is on A or C now; B counted each move.
            wait_for(Duration::from_secs(10), "B to have no clients", || {
                (status(&b)["client_sessions"] == 0).then_some(())
            });
            assert_eq!(
                b.metric("echomesh_clients_redirected_total{when=\"during_session\"}"),
                20.0
            );
            // Each ozone has its R = 2 copies without B: all 200 on A and on C.
            for n in [&a, &c] {
                wait_for(Duration::from_secs(15), "200 messages on A and C", || {
                    (n.metric("echomesh_ozone_messages") == 200.0).then_some(())
                });
            }
            // Neighbors know B left (planned), and the topology says so.
            for n in [&a, &c] {
                assert_eq!(neighbor_field(n, &b_fp, "departure"), "left");
            }
            wait_for(
                Duration::from_secs(10),
                "C's topology to show B left",
                || {
                    let t: serde_json::Value =
                        serde_json::from_str(&c.ctl_ok(&["--json", "topology"])).ok()?;
                    let st = t["nodes"]
                        .as_array()?
                        .iter()
                        .find(|n| n["id"] == b_id.as_str())?["state"]
                        .clone();
                    (st == "left").then_some(())
                },
            );
        })
        .await;
    }

    // A new client asking B is redirected; an old client (protocol 1) is told why instead.
    let b_info = b.lock().unwrap().info.clone();
    let moved = client::connect(&ep, b_info.quic, Some(b_fp.parse().unwrap()), "t").await;
    let Err(client::ClientError::Redirected { nodes: targets, .. }) = moved else {
        panic!("a draining node must redirect a new client");
    };
    assert_eq!(targets.len(), 2, "{targets:?}");
    let s = client::connect_following(&ep, b_info.quic, Some(b_fp.parse().unwrap()), "t")
        .await
        .unwrap();
    assert_ne!(s.node_id.fingerprint(), b_fp);
    {
        let conn = echomesh_tests::raw_connect(&b_info, wire::ALPN_CLIENT, None)
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = ClientRequest::Hello {
            version: 1,
            agent: "old".into(),
        };
        send.write_all(&wire::encode(&hello).unwrap())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let ev =
            echomesh_client::framing::read_frame::<_, ClientEvent>(&mut recv, 1 << 20, &mut buf)
                .await;
        assert!(
            !matches!(ev, Ok(Some(_))),
            "protocol 1 got an event: {ev:?}"
        );
        let reason = conn.closed().await.to_string();
        assert!(reason.contains("draining"), "{reason}");
    }

    // Undrain: B serves again, its neighbors and placement take it back.
    {
        let (a, b) = (a.clone(), b.clone());
        let b_fp = b_fp.clone();
        blocking(move || {
            let (a, b) = (a.lock().unwrap(), b.lock().unwrap());
            b.ctl_ok(&["undrain"]);
            assert_eq!(b.http_get("/readyz").0, 200);
            wait_for(Duration::from_secs(10), "A to see B serving", || {
                (neighbor_field(&a, &b_fp, "departure") == "up").then_some(())
            });
            wait_for(
                Duration::from_secs(10),
                "A's cluster to count B alive",
                || (a.metric("echomesh_cluster_members{state=\"alive\"}") == 3.0).then_some(()),
            );
        })
        .await;
    }
    let b_first = (0..)
        .map(|k| OzoneProof::from_secret(format!("back-{k}").as_bytes()))
        .find(|p| echomesh_proto::ozone::placement::ranked(&p.address(), &ids)[0] == ids[1])
        .unwrap();
    let mut s = session_to(&a, &ep).await;
    s.deposit(b_first.address(), Bytes::from_static(b"welcome back"))
        .await
        .unwrap();
    let info = s.ozone_info(b_first).await.unwrap();
    assert_eq!(info.owners[0], b_id, "B is placed again: {info:?}");
    drop(s);

    // SIGTERM alone, under load: B drains (its clients move) and exits 0 within the deadline.
    const FLOW2: u64 = 600;
    let (clients, flow, _) = clients_under_flow(&b, &a, &ep, 5, "sigterm", FLOW2, 100).await;
    let (status, took) = {
        let b = b.clone();
        blocking(move || {
            let started = Instant::now();
            let st = b.lock().unwrap().terminate();
            (st, started.elapsed())
        })
        .await
    };
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let log = b.lock().unwrap().log_tail();
    assert!(log.contains("drained; shutting down"), "{log}");
    flow.await.unwrap();
    assert_complete(clients, "sigterm", FLOW2).await;
}

fn topology(n: &TestNode) -> Option<serde_json::Value> {
    serde_json::from_str(&String::from_utf8_lossy(
        &n.ctl(&["--json", "topology"]).stdout,
    ))
    .ok()
}

fn node_state(t: &serde_json::Value, id: &str) -> Option<String> {
    t["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["state"].as_str().map(String::from))
}

fn link_state(t: &serde_json::Value, x: &str, y: &str) -> Option<String> {
    t["links"]
        .as_array()?
        .iter()
        .find(|l| (l["a"] == x && l["b"] == y) || (l["a"] == y && l["b"] == x))
        .and_then(|l| l["state"].as_str().map(String::from))
}

/// Wait until `check` holds for `n`'s topology; returns how long it took.
fn until_topology(
    n: &TestNode,
    bound: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < bound {
        match topology(n) {
            Some(t) if check(&t) => return started.elapsed(),
            t => last = t.or(last),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let t = last.map(|t| render_topology(&t)).unwrap_or_default();
    panic!(
        "timed out after {bound:?} waiting for {what} on {}; last view:\n{t}",
        n.info.id
    );
}

/// Nodes and links with their states, one per line (for a failure message).
fn render_topology(t: &serde_json::Value) -> String {
    let mut out = String::new();
    for n in t["nodes"].as_array().into_iter().flatten() {
        out += &format!("node {} {}\n", n["id"], n["state"]);
    }
    for l in t["links"].as_array().into_iter().flatten() {
        out += &format!("link {} {} {}\n", l["a"], l["b"], l["state"]);
    }
    out
}

#[test]
fn topology_follows_new_links_kills_and_drains_within_ten_seconds() {
    let root = tempfile::tempdir().unwrap();
    // Failure detection is the QUIC idle timeout: 4 s here (8 s by default).
    let flags = config(
        root.path(),
        "[peer]\nkeepalive_ms = 1000\nidle_timeout_ms = 4000\n",
    );
    let names = ["n0", "n1", "n2", "n3", "n4"];
    let mut nodes: Vec<TestNode> = names
        .iter()
        .map(|n| TestNode::start(root.path(), n, 0, &flags))
        .collect();
    // A ring n0 - n1 - n2 - n3 - n4 - n0.
    for i in 0..5 {
        nodes[i].link(&nodes[(i + 1) % 5]);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.info.id.clone()).collect();
    let bound = Duration::from_secs(10);

    // Every node lists all 5 nodes up and the 5 ring links up.
    for n in &nodes {
        until_topology(n, bound, "the whole ring", |t| {
            ids.iter()
                .all(|id| node_state(t, id).as_deref() == Some("up"))
                && (0..5)
                    .all(|i| link_state(t, &ids[i], &ids[(i + 1) % 5]).as_deref() == Some("up"))
        });
    }
    let dot = nodes[0].ctl_ok(&["topology", "--dot"]);
    assert!(dot.starts_with("graph echomesh {"), "{dot}");
    assert!(ids.iter().all(|id| dot.contains(id.as_str())), "{dot}");

    // A new link n1 - n3 shows on n4 (not an end of it).
    nodes[1].link(&nodes[3]);
    let took = until_topology(&nodes[4], bound, "the new link n1-n3", |t| {
        link_state(t, &ids[1], &ids[3]).as_deref() == Some("up")
    });
    eprintln!("new link seen after {took:?}");

    // kill -9 n2: n4 (not its neighbor) shows it failed.
    nodes[2].kill9();
    let took = until_topology(&nodes[4], bound, "n2 failed", |t| {
        node_state(t, &ids[2]).as_deref() == Some("failed")
            && link_state(t, &ids[1], &ids[2]).as_deref() == Some("down")
    });
    eprintln!("kill seen after {took:?}");

    // n3 drains and stops: n0 (not its neighbor) shows it left, not failed.
    let st: serde_json::Value =
        serde_json::from_str(&nodes[3].ctl_ok(&["--json", "drain", "--wait"])).unwrap();
    assert_eq!(st["phase"], "done", "{st}");
    assert!(nodes[3].terminate().success());
    let took = until_topology(&nodes[0], bound, "n3 left", |t| {
        node_state(t, &ids[3]).as_deref() == Some("left")
            && link_state(t, &ids[3], &ids[4]).as_deref() == Some("left")
    });
    eprintln!("drain seen after {took:?}");
    let t = topology(&nodes[0]).unwrap();
    assert_eq!(t["nodes"].as_array().unwrap().len(), 5, "{t}");
    assert_eq!(node_state(&t, &ids[2]).as_deref(), Some("failed"), "{t}");

    // n2 comes back: up again everywhere.
    nodes[2].restart();
    until_topology(&nodes[0], bound, "n2 up again", |t| {
        node_state(t, &ids[2]).as_deref() == Some("up")
    });
}
