//! The Echo bridge against real Spot-On-Lite daemons (built from the team's snapshot) and
//! real Echo clients over TLS: byte-exact relaying once per client across two echomesh
//! nodes in both link directions, the identity filter, TLS 1.2 clients and the kept listener
//! certificate, no loops with two bridges into one Spot-On-Lite network, junk refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use echomesh_tests::echo::{
    addressed_frame, free_tcp_port, identity_frame, label_of, marker_frame, EchoClient, EchoTls,
    Sol, SolConfig,
};
use echomesh_tests::{wait_for, Plan, TestNode};

/// A node configuration with a fast keep-alive (Spot-On-Lite links in these tests use a
/// 15-s silence timeout) and `extra` lines in `[bridge]`.
fn bridge_config(dir: &Path, name: &str, extra: &str) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path: PathBuf = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[bridge]\nkeepalive_secs = 4\nidle_timeout_secs = 60\n{extra}\n"),
    )
    .expect("write config");
    vec!["--config".into(), path.display().to_string()]
}

/// Echo links of a node that are up.
fn echo_links_up(n: &TestNode) -> usize {
    n.neighbors()
        .iter()
        .filter(|e| e["kind"] == "echo" && e["state"] == "up")
        .count()
}

fn wait_echo_links(n: &TestNode, want: usize) {
    wait_for(
        Duration::from_secs(60),
        &format!("{} to have {want} Echo link(s) up", n.name),
        || (echo_links_up(n) >= want).then_some(()),
    );
}

/// Send probes from `from` until `to` receives one: every hop (Spot-On-Lite children,
/// Echo links, the mesh) is past its start-up window. Returns nothing; the probes that
/// arrive late are drained by the caller.
async fn wait_path(from: &EchoClient, to: &mut EchoClient, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut k = 0;
    loop {
        k += 1;
        from.send(&addressed_frame(&[1u8; 64], &format!("probe-{k}")));
        if let Some(f) = to.recv_data(Duration::from_millis(700)).await {
            if label_of(&f).is_some_and(|l| l.starts_with("probe-")) {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no path for {what} after 60 s");
    }
}

/// Frames at a pace Spot-On-Lite keeps up with (200/s): in bursts it loses frames itself
/// (each child writes every frame's hash to one shared SQLite table; a failed insert counts
/// as a duplicate), which is what the benchmark measures, not what these tests are about.
async fn send_paced(c: &EchoClient, frames: &[Vec<u8>]) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for chunk in frames.chunks(10) {
        tick.tick().await;
        for f in chunk {
            c.send(f);
        }
    }
}

/// `count` frames from `from`, half addressed to `mine` and half to another identity.
fn traffic(count: usize, mine: &[u8], tag: &str) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            if i % 2 == 0 {
                addressed_frame(mine, &format!("{tag}-mine-{i}"))
            } else {
                addressed_frame(&[9u8; 64], &format!("{tag}-other-{i}"))
            }
        })
        .collect()
}

/// Each frame of `sent` arrived exactly once and byte-identical in `got` (probes ignored).
fn assert_each_once(sent: &[Vec<u8>], got: &[Bytes], who: &str) {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for g in got {
        if label_of(g).is_some_and(|l| l.starts_with("probe-")) {
            continue;
        }
        *counts.entry(g.as_ref()).or_default() += 1;
    }
    let missing = sent.iter().filter(|s| !counts.contains_key(s.as_slice())).count();
    let dups: usize = counts.values().map(|c| c - 1).sum();
    let strangers = counts
        .keys()
        .filter(|k| !sent.iter().any(|s| s.as_slice() == **k))
        .count();
    assert_eq!(
        (missing, dups, strangers),
        (0, 0, 0),
        "{who}: of {} frames, {missing} missing, {dups} duplicates, {strangers} not sent (byte-exact comparison)",
        sent.len()
    );
}

/// Register `id` on `c` and wait until the filter is in force: a frame for another identity
/// sent before one for `id` does not arrive, the one for `id` does.
async fn wait_filter(from: &EchoClient, c: &mut EchoClient, id: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut k = 0;
    loop {
        k += 1;
        c.send(&identity_frame(id));
        from.send(&addressed_frame(&[2u8; 64], &format!("probe-other-{k}")));
        from.send(&addressed_frame(id, &format!("probe-mine-{k}")));
        let mut other_seen = false;
        while let Some(f) = c.recv_data(Duration::from_millis(700)).await {
            let l = label_of(&f).unwrap_or_default();
            if l == format!("probe-other-{k}") {
                other_seen = true;
            }
            if l == format!("probe-mine-{k}") {
                if !other_seen {
                    return;
                }
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "identity filter not in force after 60 s");
    }
}

/// SOL1 — A — B — SOL2 with 1 000 frames each way. `echomesh_dials`: the nodes dial the
/// daemons' listeners; otherwise the daemons dial the nodes' Echo listeners.
async fn through_two_nodes(echomesh_dials: bool) {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let (s1, s2) = (free_tcp_port(), free_tcp_port());
    let (e1, e2) = (free_tcp_port(), free_tcp_port());
    let sol_cfg = |listen: u16, peer: Option<u16>| SolConfig {
        listeners: vec![listen],
        peers: peer
            .map(|p| vec![format!("127.0.0.1:{p}").parse().expect("addr")])
            .unwrap_or_default(),
        congestion_lifetime: 30,
        silence: 15,
    };
    let (extra_a, extra_b, sol1, sol2) = if echomesh_dials {
        (
            format!("neighbors = [\"echo+tls://127.0.0.1:{s1}\"]"),
            format!("neighbors = [\"echo+tls://127.0.0.1:{s2}\"]"),
            sol_cfg(s1, None),
            sol_cfg(s2, None),
        )
    } else {
        let allow = "neighbor_networks = [\"127.0.0.0/8\"]";
        (
            format!("listen = \"127.0.0.1:{e1}\"\n{allow}"),
            format!("listen = \"127.0.0.1:{e2}\"\n{allow}"),
            sol_cfg(s1, Some(e1)),
            sol_cfg(s2, Some(e2)),
        )
    };
    let _sol1 = Sol::start(&root.join("sol1"), &sol1);
    let _sol2 = Sol::start(&root.join("sol2"), &sol2);
    let plan = Plan::new(root, &["a", "b"]);
    let mut flags_a = bridge_config(root, "a", &extra_a);
    flags_a.extend(Plan::neighbor_flags(&[plan.spec(1)]));
    let mut flags_b = bridge_config(root, "b", &extra_b);
    flags_b.extend(Plan::neighbor_flags(&[plan.spec(0)]));
    let a = plan.start(0, &flags_a);
    let b = plan.start(1, &flags_b);
    a.wait_neighbor_up(&b);
    wait_echo_links(&a, 1);
    wait_echo_links(&b, 1);

    let tls = EchoTls::Any;
    let c1 = EchoClient::connect(_sol1.listeners[0], tls).await.expect("c1");
    let mut c2 = EchoClient::connect(_sol2.listeners[0], tls).await.expect("c2");
    let mut c3 = EchoClient::connect(_sol2.listeners[0], tls).await.expect("c3");
    c1.send(&marker_frame());
    c2.send(&marker_frame());
    let me = [7u8; 64];
    wait_path(&c1, &mut c2, "SOL1 → SOL2").await;
    wait_path(&c2, &mut EchoClient::connect(_sol1.listeners[0], tls).await.expect("c1b"), "SOL2 → SOL1").await;
    wait_filter(&c1, &mut c3, &me).await;
    // Let the probes settle, then start clean.
    c2.drain_data(Duration::from_secs(2)).await;
    c3.drain_data(Duration::from_millis(500)).await;

    let sent = traffic(1000, &me, "ab");
    send_paced(&c1, &sent).await;
    let got2 = c2.drain_data(Duration::from_secs(5)).await;
    let got3 = c3.drain_data(Duration::from_secs(1)).await;
    for (n, name) in [(&a, "a"), (&b, "b")] {
        let (_, m) = n.http_get("/metrics");
        let lines: Vec<&str> = m.lines().filter(|l| l.starts_with("echomesh_bridge") || l.starts_with("echomesh_packets_dropped")).collect();
        eprintln!("{name}:\n{}", lines.join("\n"));
    }
    assert_each_once(&sent, &got2, "SOL2's 0111 client");
    let mine: Vec<Vec<u8>> = sent.iter().step_by(2).cloned().collect();
    assert_each_once(&mine, &got3, "SOL2's client with a 0095a identity");

    // The other direction.
    let mut c4 = EchoClient::connect(_sol1.listeners[0], tls).await.expect("c4");
    c4.send(&marker_frame());
    wait_path(&c2, &mut c4, "SOL2 → SOL1 (new client)").await;
    c4.drain_data(Duration::from_secs(2)).await;
    let back = traffic(1000, &me, "ba");
    send_paced(&c2, &back).await;
    let got4 = c4.drain_data(Duration::from_secs(5)).await;
    assert_each_once(&back, &got4, "SOL1's 0111 client");

    let frames_in = a.metric("echomesh_bridge_frames_total{direction=\"in\"}")
        + b.metric("echomesh_bridge_frames_total{direction=\"in\"}");
    assert!(frames_in >= 2000.0, "bridge frames in: {frames_in}");
    let links: Vec<serde_json::Value> = a
        .neighbors()
        .into_iter()
        .filter(|n| n["kind"] == "echo")
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    let l = &links[0];
    assert_eq!(l["echo"]["direction"], if echomesh_dials { "out" } else { "in" });
    assert!(l["echo"]["frames_in"].as_u64().unwrap_or(0) >= 1000, "{l}");
    assert!(l["echo"]["frames_out"].as_u64().unwrap_or(0) >= 1000, "{l}");
    if echomesh_dials {
        assert_eq!(l["echo"]["cert_sha256"].as_str().map(str::len), Some(64), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spot_on_lite_through_two_nodes_when_echomesh_dials() {
    through_two_nodes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spot_on_lite_through_two_nodes_when_spot_on_lite_dials() {
    through_two_nodes(false).await;
}
