//! Core mesh behaviour with real node processes over real QUIC on 127.0.0.1.

use std::collections::HashSet;
use std::time::Duration;

use echomesh_tests::{wait_for, Plan, TestNode};

fn lines_set(lines: &[String]) -> HashSet<String> {
    lines.iter().cloned().collect()
}

/// A–B–C joined with invite/join: a packet injected at A is seen once on C; B lists A and C
/// up; re-injecting the same packet is counted as a duplicate and not delivered again.
#[test]
fn line_of_three_joined_by_invite() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let b = TestNode::start(root.path(), "b", 0, &[]);
    let c = TestNode::start(root.path(), "c", 0, &[]);
    a.link(&b);
    b.link(&c);

    let nb = b.neighbors();
    assert_eq!(nb.len(), 2, "{nb:?}");
    for n in &nb {
        assert_eq!(n["state"], "up", "{nb:?}");
        assert_eq!(n["mode"], "full");
        assert!(n["id"].as_str().unwrap().len() == 10);
        assert!(n["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    let fps: HashSet<_> = nb
        .iter()
        .map(|n| n["fingerprint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        fps,
        HashSet::from([a.fingerprint().to_string(), c.fingerprint().to_string()])
    );

    // Exactly once: the marker that follows proves no second copy came in between (a line
    // preserves order on every hop).
    let tail = c.tail(&["--count", "3", "--timeout", "20"]);
    a.ctl_ok(&["inject", "--node", &a.spec(), "hello-mesh"]);
    a.ctl_ok(&["inject", "--node", &a.spec(), "marker-1"]);
    let dups_before = a.metric("echomesh_duplicates_dropped_total");
    let out = a.ctl_ok(&["--json", "inject", "--node", &a.spec(), "hello-mesh"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["duplicates"], 1, "{v}");
    assert_eq!(
        a.metric("echomesh_duplicates_dropped_total"),
        dups_before + 1.0
    );
    a.ctl_ok(&["inject", "--node", &a.spec(), "marker-2"]);
    let (ok, lines) = tail.finish(Duration::from_secs(20));
    assert!(ok);
    assert_eq!(lines, vec!["hello-mesh", "marker-1", "marker-2"]);

    // Status contract.
    let s: serde_json::Value = serde_json::from_str(&b.ctl_ok(&["--json", "status"])).unwrap();
    for k in ["id", "fingerprint", "version", "ready", "draining"] {
        assert!(s.get(k).is_some(), "status lacks {k}: {s}");
    }
    assert_eq!(s["ready"], true);
    assert_eq!(s["fingerprint"], b.fingerprint());
    assert_eq!(b.metric("echomesh_neighbors{state=\"up\"}"), 2.0);
    assert_eq!(b.http_get("/readyz").0, 200);
    assert_eq!(b.http_get("/healthz").0, 200);
}

/// Five nodes with cycles (static neighbors from flags): 10 000 packets from one node reach
/// subscribers on every other node, each exactly once; the mesh drops duplicates.
#[test]
fn five_node_mesh_with_cycles_delivers_everything_once() {
    let root = tempfile::tempdir().unwrap();
    let nodes = five_node_mesh(root.path(), &[]);
    let dups = ten_thousand_once(&nodes);
    assert!(
        dups >= 10000.0,
        "cycles must make duplicates that the mesh drops, got {dups}"
    );
}

/// The same with lazy push on every node: everything once to every client, and the eager
/// links thin out to a tree: far fewer duplicate receptions than flooding.
#[test]
fn five_node_mesh_with_lazy_push_delivers_everything_once_with_few_duplicates() {
    let root = tempfile::tempdir().unwrap();
    let nodes = five_node_mesh(root.path(), &["--broadcast".into(), "lazy".into()]);
    let dups = ten_thousand_once(&nodes);
    let per_delivery = dups / 40000.0;
    let prunes: f64 = nodes
        .iter()
        .map(|n| n.metric("echomesh_broadcast_sent_total{kind=\"prune\"}"))
        .sum();
    let ihaves: f64 = nodes
        .iter()
        .map(|n| n.metric("echomesh_broadcast_sent_total{kind=\"ihave\"}"))
        .sum();
    let grafts: f64 = nodes
        .iter()
        .map(|n| n.metric("echomesh_broadcast_sent_total{kind=\"graft\"}"))
        .sum();
    eprintln!("lazy push: {dups} duplicates ({per_delivery:.3} per delivery), {prunes} prunes, {ihaves} IDs announced, {grafts} grafted");
    // Injected as one burst on a shared 2-core machine, a tree can fall behind its
    // announcements and some packets are pulled twice (0.003 typical, up to about 0.4 under
    // load); the ≤ 0.3 bound is checked on paced traffic by the chaos suite
    // (`lazy_push_under_10_and_30_percent_loss…`). Flooding this mesh gives about 1.5.
    assert!(
        per_delivery < 1.0,
        "{per_delivery:.3} duplicates per delivery"
    );
    assert!(ihaves > 0.0, "lazy links carry announcements");
}

/// A mixed mesh: n0, n2 and n4 forward by lazy push, n1 and n3 flood. Lazy nodes push every
/// packet to flooding neighbors and never prune them; everything reaches every client once,
/// from an origin of each kind.
#[test]
fn mixed_flood_and_lazy_mesh_delivers_everything_once() {
    let root = tempfile::tempdir().unwrap();
    let plan = Plan::new(root.path(), &["n0", "n1", "n2", "n3", "n4"]);
    let edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2), (1, 3)];
    let nodes = plan.start_mesh_each(&edges, |i| {
        let mode = if i % 2 == 0 { "lazy" } else { "flood" };
        vec!["--broadcast".to_string(), mode.to_string()]
    });
    for &(x, y) in &edges {
        nodes[x].wait_neighbor_up(&nodes[y]);
    }
    for n in &nodes {
        n.wait_links_up(edges.len());
    }
    for origin in [0, 3] {
        let tails: Vec<_> = (0..5)
            .filter(|&i| i != origin)
            .map(|i| {
                (
                    i,
                    nodes[i].tail(&["--count", "3000", "--timeout", "60", "--json"]),
                )
            })
            .collect();
        let out = nodes[origin].ctl_ok(&[
            "--json",
            "inject",
            "--node",
            &nodes[origin].spec(),
            "--count",
            "3000",
            "--size",
            "64",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["accepted"], 3000, "{v}");
        for (i, t) in tails {
            let (ok, lines) = t.finish(Duration::from_secs(90));
            assert!(
                ok,
                "tail on n{i} failed after {} lines (origin n{origin})",
                lines.len()
            );
            let ids: HashSet<&String> = lines.iter().collect();
            assert_eq!(lines.len(), 3000, "n{i} from n{origin}");
            assert_eq!(ids.len(), 3000, "n{i} got a duplicate from n{origin}");
        }
    }
    for n in &nodes {
        assert_eq!(
            n.metric("echomesh_packets_dropped_total"),
            0.0,
            "{} dropped packets",
            n.name
        );
    }
    // Lazy push worked where it could: the lazy nodes announced IDs on lazy-to-lazy links.
    let ihaves: f64 = [0, 2, 4]
        .iter()
        .map(|&i| nodes[i].metric("echomesh_broadcast_sent_total{kind=\"ihave\"}"))
        .sum();
    assert!(ihaves > 0.0, "no announcements between lazy nodes");
    for i in [1, 3] {
        assert_eq!(
            nodes[i].metric("echomesh_broadcast_sent_total{kind=\"ihave\"}"),
            0.0,
            "a flooding node announces nothing"
        );
    }
}

fn five_node_mesh(root: &std::path::Path, extra: &[String]) -> Vec<TestNode> {
    let plan = Plan::new(root, &["n0", "n1", "n2", "n3", "n4"]);
    // ring 0-1-2-3-4-0 plus chords 0-2 and 1-3: cycles of length 3, 4 and 5
    let edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2), (1, 3)];
    let nodes = plan.start_mesh_with(&edges, extra);
    for &(x, y) in &edges {
        nodes[x].wait_neighbor_up(&nodes[y]);
    }
    for n in &nodes {
        n.wait_links_up(edges.len());
    }
    nodes
}

/// 10 000 packets from n0 reach every other node's client exactly once, nothing is dropped;
/// returns the duplicates the mesh dropped.
fn ten_thousand_once(nodes: &[TestNode]) -> f64 {
    let tails: Vec<_> = nodes[1..]
        .iter()
        .map(|n| n.tail(&["--count", "10000", "--timeout", "60", "--json"]))
        .collect();
    let out = nodes[0].ctl_ok(&[
        "--json",
        "inject",
        "--node",
        &nodes[0].spec(),
        "--count",
        "10000",
        "--size",
        "64",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["accepted"], 10000, "{v}");
    for (i, t) in tails.into_iter().enumerate() {
        let (ok, lines) = t.finish(Duration::from_secs(90));
        assert!(ok, "tail on n{} failed after {} lines", i + 1, lines.len());
        assert_eq!(lines.len(), 10000);
        let ids: HashSet<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 10000, "n{} got a duplicate", i + 1);
    }
    let dups: f64 = nodes
        .iter()
        .map(|n| n.metric("echomesh_duplicates_dropped_total"))
        .sum();
    for n in nodes {
        assert_eq!(
            n.metric("echomesh_packets_dropped_total"),
            0.0,
            "{} dropped packets",
            n.name
        );
    }
    dups
}

/// Kill -9 a node of a ring: delivery continues around the other side; restarted with its
/// data dir (no flags), it reconnects to its pinned neighbors by itself.
#[test]
fn killed_node_is_bypassed_and_rejoins_after_restart() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let mut b = TestNode::start(root.path(), "b", 0, &[]);
    let c = TestNode::start(root.path(), "c", 0, &[]);
    let d = TestNode::start(root.path(), "d", 0, &[]);
    // ring a-b-c-d-a, all by invite/join (persisted neighbors)
    a.link(&b);
    b.link(&c);
    c.link(&d);
    d.link(&a);

    b.kill9();
    wait_for(Duration::from_secs(20), "a to notice b is gone", || {
        (a.neighbor_state(b.fingerprint()).as_deref() != Some("up")).then_some(())
    });
    let tail = c.tail(&["--count", "1", "--timeout", "20"]);
    a.ctl_ok(&["inject", "--node", &a.spec(), "around-the-ring"]);
    let (ok, lines) = tail.finish(Duration::from_secs(20));
    assert!(ok && lines == ["around-the-ring"], "{lines:?}");

    b.restart();
    a.wait_neighbor_up(&b);
    c.wait_neighbor_up(&b);
    b.wait_neighbor_up(&a);
    b.wait_neighbor_up(&c);
    let tail = d.tail(&["--count", "1", "--timeout", "20"]);
    b.ctl_ok(&["inject", "--node", &b.spec(), "b-is-back"]);
    let (ok, lines) = tail.finish(Duration::from_secs(20));
    assert!(ok && lines == ["b-is-back"], "{lines:?}");
}

/// Half-echo: packets from a half neighbor are delivered locally but not forwarded.
#[test]
fn half_echo_neighbor_is_not_forwarded() {
    let root = tempfile::tempdir().unwrap();
    let plan = Plan::new(root.path(), &["h0", "h1", "h2"]);
    // h1 treats h0 as half: h0's packets reach h1's clients but not h2.
    let h0 = plan.start(0, &Plan::neighbor_flags(&[plan.spec(1)]));
    let h1 = plan.start(
        1,
        &Plan::neighbor_flags(&[format!("{}@half", plan.spec(0)), plan.spec(2)]),
    );
    let h2 = plan.start(2, &Plan::neighbor_flags(&[plan.spec(1)]));
    h1.wait_neighbor_up(&h0);
    h1.wait_neighbor_up(&h2);
    let t1 = h1.tail(&["--count", "2", "--timeout", "20"]);
    let t2 = h2.tail(&["--count", "1", "--timeout", "20"]);
    h0.ctl_ok(&["inject", "--node", &h0.spec(), "from-half"]);
    h1.ctl_ok(&["inject", "--node", &h1.spec(), "from-h1"]);
    let (_, l1) = t1.finish(Duration::from_secs(20));
    let (_, l2) = t2.finish(Duration::from_secs(20));
    assert_eq!(
        lines_set(&l1),
        HashSet::from(["from-half".to_string(), "from-h1".to_string()])
    );
    assert_eq!(
        l2,
        vec!["from-h1"],
        "h2 must not get what h1 received from its half neighbor"
    );
}

/// A stalled neighbor (SIGSTOP) must not delay delivery to the others: its queue fills and
/// drops for it alone, counted; the healthy neighbor gets everything.
#[test]
fn stalled_neighbor_does_not_stall_the_others() {
    let root = tempfile::tempdir().unwrap();
    let plan = Plan::new(root.path(), &["s0", "s1", "s2"]);
    // s0 is the hub between s1 (healthy) and s2 (to be stalled), default 16 MiB queues;
    // s1's tail gets a large client queue so that the test's own reader never lags.
    let c1 = root.path().join("s1.toml");
    std::fs::write(&c1, "[limits]\nclient_queue_bytes = 67108864\n").unwrap();
    let s0 = plan.start(0, &Plan::neighbor_flags(&[plan.spec(1), plan.spec(2)]));
    let mut flags = vec!["--config".to_string(), c1.to_string_lossy().into_owned()];
    flags.extend(Plan::neighbor_flags(&[plan.spec(0)]));
    let s1 = plan.start(1, &flags);
    let mut s2 = plan.start(2, &Plan::neighbor_flags(&[plan.spec(0)]));
    s0.wait_neighbor_up(&s1);
    s0.wait_neighbor_up(&s2);

    const N: usize = 40_000;
    let tail = s1.tail(&["--count", &N.to_string(), "--timeout", "60"]);
    s2.signal("-STOP");
    // 40 000 x 1 KiB: far more than s2's queue plus what QUIC buffers for it.
    s0.ctl_ok(&[
        "inject",
        "--node",
        &s0.spec(),
        "--count",
        &N.to_string(),
        "--size",
        "1024",
    ]);
    let (ok, lines) = tail.finish(Duration::from_secs(60));
    assert!(ok, "healthy neighbor got {} of {N}", lines.len());
    assert_eq!(lines_set(&lines).len(), N);
    let dropped = s0.metric("echomesh_packets_dropped_total{reason=\"neighbor_queue_full\"}");
    assert!(
        dropped > 0.0,
        "the stalled neighbor's queue must overflow and be counted"
    );
    assert_eq!(s1.metric("echomesh_packets_dropped_total"), 0.0);
    assert!(s0.metric("echomesh_neighbor_queue_bytes") <= 16.0 * 1048576.0);
    s2.signal("-CONT");
    s2.kill9();
}

/// `neighbors add` pins and dials (persisted), `set-mode` applies at once, `remove` unpins,
/// closes the link and is remembered across a restart; static neighbors cannot be removed at
/// run time.
#[test]
fn neighbors_added_changed_and_removed_at_run_time() {
    let root = tempfile::tempdir().unwrap();
    let mut a = TestNode::start(root.path(), "a", 0, &[]);
    let b = TestNode::start(root.path(), "b", 0, &[]);
    let c = TestNode::start(root.path(), "c", 0, &[]);
    let out = a.ctl_ok(&["--json", "neighbors", "add", &b.spec()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["origin"], "admin");
    b.ctl_ok(&["neighbors", "add", &a.spec()]);
    a.wait_neighbor_up(&b);
    b.link(&c);

    // Set-mode by short ID; the forwarding rule itself is covered by half_echo_neighbor_is_not_forwarded.
    let b_short = b.info.id.clone();
    let v: serde_json::Value =
        serde_json::from_str(&a.ctl_ok(&["--json", "neighbors", "set-mode", &b_short, "half"]))
            .unwrap();
    assert_eq!(v["mode"], "half");
    assert_eq!(a.neighbors()[0]["mode"], "half");

    // Remove: gone from the list and from the store (a restart does not bring it back).
    let bad = a.ctl(&["neighbors", "remove", "NOTANEIGHB"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a neighbor"));
    a.ctl_ok(&["neighbors", "remove", b.fingerprint()]);
    assert!(a.neighbors().is_empty());
    wait_for(Duration::from_secs(20), "b to see a down", || {
        (b.neighbor_state(a.fingerprint()).as_deref() != Some("up")).then_some(())
    });
    a.restart();
    assert!(
        a.neighbors().is_empty(),
        "removed neighbor came back after restart"
    );

    // A static neighbor (from flags) is refused with the reason.
    let d = TestNode::start(root.path(), "d", 0, &["--neighbor".into(), c.spec()]);
    let out = d.ctl(&["neighbors", "remove", c.fingerprint()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("configuration"),
        "{out:?}"
    );
}
