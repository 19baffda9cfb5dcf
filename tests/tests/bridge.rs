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

/// Nodes A and B, QUIC neighbors, with `[bridge]` lines for each; both up and linked.
fn nodes_a_b(root: &Path, bridge_a: &str, bridge_b: &str) -> (TestNode, TestNode) {
    let plan = Plan::new(root, &["a", "b"]);
    let mut fa = bridge_config(root, "a", bridge_a);
    fa.extend(Plan::neighbor_flags(&[plan.spec(1)]));
    let mut fb = bridge_config(root, "b", bridge_b);
    fb.extend(Plan::neighbor_flags(&[plan.spec(0)]));
    let a = plan.start(0, &fa);
    let b = plan.start(1, &fb);
    a.wait_neighbor_up(&b);
    (a, b)
}

/// A Spot-On-Lite daemon with one TLS listener on a free port and no peers.
fn sol_listening(root: &Path, name: &str, congestion_lifetime: u64) -> Sol {
    Sol::start(
        &root.join(name),
        &SolConfig {
            listeners: vec![free_tcp_port()],
            peers: vec![],
            congestion_lifetime,
            silence: 15,
            plain: false,
        },
    )
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
        assert!(
            tokio::time::Instant::now() < deadline,
            "no path for {what} after 60 s"
        );
    }
}

/// What a check for "nothing arrived" must not count: late `wait_path` probes (a busy
/// Spot-On-Lite can deliver one seconds after the path was seen). The rest, readable.
fn except_probes(frames: Vec<Bytes>) -> Vec<String> {
    frames
        .into_iter()
        .filter(|f| !label_of(f).is_some_and(|l| l.starts_with("probe-")))
        .map(|f| String::from_utf8_lossy(&f[..f.len().min(300)]).into_owned())
        .collect()
}

/// Frames at a pace Spot-On-Lite keeps up with (100/s): in bursts it loses frames itself
/// (each child writes every frame's hash to one shared SQLite table; a failed insert counts
/// as a duplicate), which is what the benchmark measures, not what these tests are about.
/// At 200/s, with the other tests running beside it, one run in six lost frames.
async fn send_paced(c: &EchoClient, frames: &[Vec<u8>]) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for chunk in frames.chunks(5) {
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

/// What the nodes' Echo sides took in, wrote out and dropped: says where a loss happened.
fn echomesh_counts(a: &TestNode, b: &TestNode) -> String {
    let f = |n: &TestNode, d: &str| {
        n.metric(&format!(
            "echomesh_bridge_frames_total{{direction=\"{d}\"}}"
        ))
    };
    format!(
        "echomesh: A in {} out {}, B in {} out {}, dropped {}",
        f(a, "in"),
        f(a, "out"),
        f(b, "in"),
        f(b, "out"),
        a.metric("echomesh_bridge_dropped_total") + b.metric("echomesh_bridge_dropped_total")
    )
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
    let missing = sent
        .iter()
        .filter(|s| !counts.contains_key(s.as_slice()))
        .count();
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
        assert!(
            tokio::time::Instant::now() < deadline,
            "identity filter not in force after 60 s"
        );
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
        plain: false,
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
    let (a, b) = nodes_a_b(root, &extra_a, &extra_b);
    wait_echo_links(&a, 1);
    wait_echo_links(&b, 1);

    let tls = EchoTls::Any;
    let c1 = EchoClient::connect_unfiltered(_sol1.listeners[0], tls)
        .await
        .expect("c1");
    let mut c2 = EchoClient::connect_unfiltered(_sol2.listeners[0], tls)
        .await
        .expect("c2");
    let mut c3 = EchoClient::connect(_sol2.listeners[0], tls)
        .await
        .expect("c3");
    let me = [7u8; 64];
    wait_path(&c1, &mut c2, "SOL1 → SOL2").await;
    wait_path(
        &c2,
        &mut EchoClient::connect(_sol1.listeners[0], tls)
            .await
            .expect("c1b"),
        "SOL2 → SOL1",
    )
    .await;
    wait_filter(&c1, &mut c3, &me).await;
    // Let the probes settle, then start clean.
    c2.drain_data(Duration::from_secs(2)).await;
    c3.drain_data(Duration::from_millis(500)).await;

    let sent = traffic(1000, &me, "ab");
    send_paced(&c1, &sent).await;
    let got2 = c2.drain_data(Duration::from_secs(5)).await;
    let got3 = c3.drain_data(Duration::from_secs(1)).await;
    let at = echomesh_counts(&a, &b);
    assert_each_once(&sent, &got2, &format!("SOL2's 0111 client ({at})"));
    let mine: Vec<Vec<u8>> = sent.iter().step_by(2).cloned().collect();
    assert_each_once(&mine, &got3, "SOL2's client with a 0095a identity");

    // The other direction.
    let mut c4 = EchoClient::connect_unfiltered(_sol1.listeners[0], tls)
        .await
        .expect("c4");
    wait_path(&c2, &mut c4, "SOL2 → SOL1 (new client)").await;
    c4.drain_data(Duration::from_secs(2)).await;
    let back = traffic(1000, &me, "ba");
    send_paced(&c2, &back).await;
    let got4 = c4.drain_data(Duration::from_secs(5)).await;
    let at = echomesh_counts(&a, &b);
    assert_each_once(&back, &got4, &format!("SOL1's 0111 client ({at})"));

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
    assert_eq!(
        l["echo"]["direction"],
        if echomesh_dials { "out" } else { "in" }
    );
    assert!(l["echo"]["frames_in"].as_u64().unwrap_or(0) >= 1000, "{l}");
    assert!(l["echo"]["frames_out"].as_u64().unwrap_or(0) >= 1000, "{l}");
    if echomesh_dials {
        assert_eq!(
            l["echo"]["cert_sha256"].as_str().map(str::len),
            Some(64),
            "{l}"
        );
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

/// Echo clients directly on echomesh: a TLS 1.2-only client (Smoke on Android 14+) on B gets
/// what a client on A addresses to its identity, and nothing else; a client that claims to be
/// Spot-On-Lite (`0111`) without being allowed stays filtered; B's listener certificate is
/// byte-identical after a restart, and `status` shows its SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_clients_on_echomesh_nodes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let (ea, eb) = (free_tcp_port(), free_tcp_port());
    let (_a, mut b) = nodes_a_b(
        root,
        &format!("listen = \"127.0.0.1:{ea}\"\nstart_delay_ms = 200"),
        &format!("listen = \"127.0.0.1:{eb}\"\nstart_delay_ms = 200"),
    );
    let (la, lb) = (
        format!("127.0.0.1:{ea}").parse().expect("addr"),
        format!("127.0.0.1:{eb}").parse().expect("addr"),
    );

    let sender = EchoClient::connect(la, EchoTls::Any).await.expect("sender");
    let mut smoke = EchoClient::connect(lb, EchoTls::Tls12Only)
        .await
        .expect("TLS 1.2 client");
    assert_eq!(smoke.tls_version, Some(rustls::ProtocolVersion::TLSv1_2));
    let mut pretender = EchoClient::connect(lb, EchoTls::Any)
        .await
        .expect("pretender");
    pretender.send(&marker_frame());
    let (me, other) = ([7u8; 64], [8u8; 64]);
    wait_filter(&sender, &mut smoke, &me).await;
    wait_filter(&sender, &mut pretender, &other).await;
    smoke.drain_data(Duration::from_millis(500)).await;
    pretender.drain_data(Duration::from_millis(500)).await;

    let mut sent = Vec::new();
    for i in 0..100 {
        sent.push(addressed_frame(
            if i % 2 == 0 { &me } else { &other },
            &format!("d-{i}"),
        ));
    }
    for f in &sent {
        sender.send(f);
    }
    let got = smoke.drain_data(Duration::from_secs(3)).await;
    let mine: Vec<Vec<u8>> = sent.iter().step_by(2).cloned().collect();
    assert_each_once(&mine, &got, "TLS 1.2 client with an identity");
    let got = pretender.drain_data(Duration::from_secs(1)).await;
    let theirs: Vec<Vec<u8>> = sent.iter().skip(1).step_by(2).cloned().collect();
    assert_each_once(&theirs, &got, "client that sent 0111 without being allowed");
    assert!(b.metric("echomesh_bridge_markers_refused_total") >= 1.0);
    assert_eq!(b.metric("echomesh_bridge_identities"), 2.0);

    // echomesh clients get Echo frames only when they ask for them by the bridge tag.
    let echo_tail = b.tail(&["--echo-frames", "--count", "3", "--json"]);
    let plain_tail = b.tail(&["--count", "1", "--timeout", "3"]);
    let few: Vec<Vec<u8>> = (0..3)
        .map(|i| addressed_frame(&other, &format!("tail-{i}")))
        .collect();
    for f in &few {
        sender.send(f);
    }
    let (ok, lines) = echo_tail.finish(Duration::from_secs(15));
    assert!(ok, "tail --echo-frames: {lines:?}");
    let mut shown: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            hex::decode(v["payload"].as_str().expect("payload")).expect("hex payload")
        })
        .collect();
    // The mesh keeps no order between packets (each is verified and flooded on its own).
    let mut few = few;
    shown.sort();
    few.sort();
    assert_eq!(shown, few, "tail --echo-frames shows the exact frames");
    let (ok, lines) = plain_tail.finish(Duration::from_secs(15));
    assert!(
        !ok && lines.is_empty(),
        "plain tail saw Echo frames: {lines:?}"
    );

    // The listener certificate is kept across a restart, and status shows its hash.
    let before = smoke.server_cert.clone().expect("certificate");
    let status: serde_json::Value =
        serde_json::from_str(&b.ctl_ok(&["--json", "status"])).expect("status json");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&before));
    assert_eq!(status["bridge"]["cert_sha256"], sha.as_str(), "{status}");
    assert!(b.ctl_ok(&["status"]).contains(&sha));
    b.restart();
    let again = EchoClient::connect(lb, EchoTls::Tls12Only)
        .await
        .expect("after restart");
    assert_eq!(
        again.server_cert.as_deref(),
        Some(before.as_slice()),
        "certificate changed across a restart"
    );
}

/// Two bridges into one Spot-On-Lite network: SOL1 is linked to both A and B (which are
/// neighbors), its duplicate lifetime is short (10 s; it forgets within 25 s), and traffic
/// runs for well over twice that. Every client gets each frame once and no link carries
/// more than each frame once per direction: echomesh's frame memory outlives SOL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_bridges_into_one_spot_on_lite_network_make_no_loop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let sol = sol_listening(root, "sol1", 10);
    let s1 = sol.listeners[0].port();
    let (ea, eb) = (free_tcp_port(), free_tcp_port());
    let link = format!("neighbors = [\"echo+tls://127.0.0.1:{s1}\"]");
    let (a, b) = nodes_a_b(
        root,
        &format!("listen = \"127.0.0.1:{ea}\"\n{link}"),
        &format!("listen = \"127.0.0.1:{eb}\"\n{link}"),
    );
    wait_echo_links(&a, 1);
    wait_echo_links(&b, 1);

    let sender = EchoClient::connect_unfiltered(sol.listeners[0], EchoTls::Any)
        .await
        .expect("sender");
    let mut on_sol = EchoClient::connect_unfiltered(sol.listeners[0], EchoTls::Any)
        .await
        .expect("sol client");
    let mut on_a = EchoClient::connect(format!("127.0.0.1:{ea}").parse().expect("a"), EchoTls::Any)
        .await
        .expect("a client");
    let mut on_b = EchoClient::connect(format!("127.0.0.1:{eb}").parse().expect("b"), EchoTls::Any)
        .await
        .expect("b client");
    wait_path(&sender, &mut on_sol, "SOL1 client → SOL1 client").await;
    wait_path(&sender, &mut on_a, "SOL1 → A").await;
    wait_path(&sender, &mut on_b, "SOL1 → B").await;
    for c in [&mut on_sol, &mut on_a, &mut on_b] {
        c.drain_data(Duration::from_secs(2)).await;
    }
    let links_before = echo_link_frames(&a) + echo_link_frames(&b);

    // 55 s of traffic, 10 frames a second.
    let sent: Vec<Vec<u8>> = (0..550)
        .map(|i| addressed_frame(&[3u8; 64], &format!("loop-{i}")))
        .collect();
    let receivers = async {
        let mut got = vec![Vec::new(), Vec::new(), Vec::new()];
        loop {
            let mut any = false;
            for (i, c) in [&mut on_sol, &mut on_a, &mut on_b].into_iter().enumerate() {
                while let Some(f) = c.recv_data(Duration::from_millis(20)).await {
                    got[i].push(f);
                    any = true;
                }
            }
            if !any && got.iter().all(|g| g.len() >= 550) {
                return got;
            }
            if !any {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let sender_task = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for f in &sent {
            tick.tick().await;
            sender.send(f);
        }
    };
    let (_, got) = tokio::join!(
        sender_task,
        tokio::time::timeout(Duration::from_secs(120), receivers)
    );
    let mut got = got.expect("every client received the traffic within 120 s");
    // A quiet spell past SOL's memory: nothing comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, c) in [&mut on_sol, &mut on_a, &mut on_b].into_iter().enumerate() {
        got[i].extend(c.drain_data(Duration::from_secs(1)).await);
    }
    for (g, who) in got
        .iter()
        .zip(["SOL1's client", "A's client", "B's client"])
    {
        assert_each_once(&sent, g, who);
    }
    // Each frame crosses each Echo link at most once per direction (SOL → A and B, and at
    // most one copy back towards SOL from the node that got it over the mesh first).
    let carried = echo_link_frames(&a) + echo_link_frames(&b) - links_before;
    assert!(
        carried <= 4 * 550,
        "Echo links carried {carried} frames for 550 sent: a loop"
    );
    // Each frame reaches one node twice or both (from SOL1 and over the mesh); a second
    // copy stops at the seen-cache or at the bridge's frame memory.
    let dups: f64 = [&a, &b]
        .iter()
        .map(|n| {
            n.metric("echomesh_bridge_duplicates_total")
                + n.metric("echomesh_duplicates_dropped_total")
        })
        .sum();
    assert!(
        dups >= 550.0,
        "only {dups} duplicates stopped for 550 frames"
    );
}

/// Frames in plus out on a node's Echo links.
fn echo_link_frames(n: &TestNode) -> u64 {
    n.neighbors()
        .iter()
        .filter(|e| e["kind"] == "echo")
        .map(|e| {
            e["echo"]["frames_in"].as_u64().unwrap_or(0)
                + e["echo"]["frames_out"].as_u64().unwrap_or(0)
        })
        .sum()
}

/// Junk on A's Echo listener (bytes without an end-of-message marker past the bound, an
/// oversize frame, bad base64, a frame without content, a frame never finished) is refused,
/// counted by reason and disconnected; it reaches no client, no Echo link and no mesh
/// neighbor, and Spot-On-Lite's own clients keep working through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn junk_is_refused_counted_and_never_flooded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let sol = sol_listening(root, "sol1", 30);
    let s1 = sol.listeners[0].port();
    let ea = free_tcp_port();
    let (a, b) = nodes_a_b(
        root,
        &format!(
            "listen = \"127.0.0.1:{ea}\"\nplain = true\nmax_frame_bytes = 16384\nframe_timeout_secs = 2\nstart_delay_ms = 200\nneighbors = [\"echo+tls://127.0.0.1:{s1}\"]"
        ),
        "",
    );
    wait_echo_links(&a, 1);
    let la = format!("127.0.0.1:{ea}").parse().expect("addr");
    let mut watcher = EchoClient::connect(la, EchoTls::Plain)
        .await
        .expect("watcher");
    let sender = EchoClient::connect_unfiltered(sol.listeners[0], EchoTls::Any)
        .await
        .expect("sol sender");
    let mut sol_client = EchoClient::connect_unfiltered(sol.listeners[0], EchoTls::Any)
        .await
        .expect("sol client");
    wait_path(&sender, &mut watcher, "SOL1 → A's client").await;
    wait_path(&sender, &mut sol_client, "SOL1 client → SOL1 client").await;
    watcher.drain_data(Duration::from_secs(2)).await;
    sol_client.drain_data(Duration::from_millis(500)).await;
    let mesh_before = b.metric("echomesh_bridge_memory_entries");

    let oversize = {
        let mut f =
            b"POST HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\ncontent="
                .to_vec();
        f.extend(std::iter::repeat_n(b'A', 20_000));
        f.extend_from_slice(b"\r\n\r\n\r\n");
        f
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no_eom", vec![b'x'; 20_000]),
        ("oversize", oversize),
        (
            "bad_base64",
            b"POST HTTP/1.1\r\n\r\ncontent=this is *not* base64\r\n\r\n\r\n".to_vec(),
        ),
        (
            "no_content",
            b"POST HTTP/1.1\r\nContent-Type: text/plain\r\n\r\nhello there\r\n\r\n\r\n".to_vec(),
        ),
        (
            "incomplete",
            b"POST HTTP/1.1\r\nContent-Length: 9999\r\n\r\ncontent=aGVs".to_vec(),
        ),
    ];
    for (reason, bytes) in &cases {
        let before = a.metric(&format!(
            "echomesh_bridge_junk_total{{reason=\"{reason}\"}}"
        ));
        let mut c = EchoClient::connect(la, EchoTls::Plain)
            .await
            .expect("junk client");
        c.send(bytes);
        assert!(
            c.closed_within(Duration::from_secs(10)).await,
            "{reason}: connection not closed"
        );
        let after = a.metric(&format!(
            "echomesh_bridge_junk_total{{reason=\"{reason}\"}}"
        ));
        assert_eq!(after, before + 1.0, "{reason} counted once");
    }
    // Nothing of it went anywhere.
    let got = except_probes(watcher.drain_non_control(Duration::from_secs(1)).await);
    assert!(got.is_empty(), "junk reached a client: {got:?}");
    let got = except_probes(
        sol_client
            .drain_non_control(Duration::from_millis(200))
            .await,
    );
    assert!(got.is_empty(), "junk reached Spot-On-Lite: {got:?}");
    assert_eq!(
        b.metric("echomesh_bridge_memory_entries"),
        mesh_before,
        "junk reached the mesh"
    );
    // Spot-On-Lite floods junk its own clients send: A drops that frame from its link to
    // SOL1 (counted), keeps the link, and floods none of it.
    let relayed = a.metric("echomesh_bridge_junk_total{reason=\"no_content\"}");
    sender.send(
        b"POST HTTP/1.1\r\nContent-Type: text/plain\r\n\r\njunk via Spot-On-Lite\r\n\r\n\r\n",
    );
    wait_for(
        Duration::from_secs(10),
        "A to drop the junk SOL1 relayed",
        || (a.metric("echomesh_bridge_junk_total{reason=\"no_content\"}") > relayed).then_some(()),
    );
    assert_eq!(echo_links_up(&a), 1, "the link to SOL1 stayed up");
    let got = except_probes(watcher.drain_non_control(Duration::from_millis(500)).await);
    assert!(
        got.is_empty(),
        "a client of A got data after the relayed junk: {got:?}"
    );
    // Spot-On-Lite's clients keep working through A.
    let good = addressed_frame(&[4u8; 64], "after-junk");
    sender.send(&good);
    let f = watcher
        .recv_data(Duration::from_secs(10))
        .await
        .expect("good frame after junk");
    assert_eq!(f.as_ref(), good.as_slice());
}

/// Echo links at run time through `echomeshctl neighbors`: added (kept across a restart),
/// listed with `kind: echo`, pinned on first use or refused when the pin does not match,
/// removed by their ID; links from the configuration cannot be removed there; bad addresses
/// get a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echo_links_through_the_admin_api() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let eb = free_tcp_port();
    let dead = free_tcp_port();
    let b = TestNode::start(
        root,
        "b",
        0,
        &bridge_config(root, "b", &format!("listen = \"127.0.0.1:{eb}\"")),
    );
    let status: serde_json::Value =
        serde_json::from_str(&b.ctl_ok(&["--json", "status"])).expect("status");
    let b_cert = status["bridge"]["cert_sha256"]
        .as_str()
        .expect("cert")
        .to_string();
    let mut a = TestNode::start(
        root,
        "a",
        0,
        &bridge_config(
            root,
            "a",
            &format!("neighbors = [\"echo+tcp://127.0.0.1:{dead}\"]\nmax_links = 3"),
        ),
    );

    // Pinned on first use: up, showing B's certificate.
    let added: serde_json::Value = serde_json::from_str(&a.ctl_ok(&[
        "--json",
        "neighbors",
        "add",
        &format!("echo+tls://127.0.0.1:{eb}"),
    ]))
    .expect("add json");
    assert_eq!(added["kind"], "echo");
    let tofu = added["id"].as_str().expect("id").to_string();
    assert!(tofu.starts_with("echo-"), "{added}");
    wait_for(
        Duration::from_secs(20),
        "the TOFU link up with B's certificate",
        || {
            a.neighbors()
                .into_iter()
                .find(|n| n["id"] == tofu.as_str() && n["state"] == "up")
                .filter(|n| n["echo"]["cert_sha256"] == b_cert.as_str())
        },
    );
    // A wrong pin: refused at the handshake, counted, explained.
    let wrong = a.ctl_ok(&[
        "--json",
        "neighbors",
        "add",
        &format!("echo+tls://localhost:{eb}?cert-sha256={}", "00".repeat(32)),
    ]);
    let wrong: serde_json::Value = serde_json::from_str(&wrong).expect("json");
    let wrong_id = wrong["id"].as_str().expect("id").to_string();
    let err = wait_for(Duration::from_secs(20), "the pin mismatch", || {
        a.neighbors()
            .into_iter()
            .find(|n| n["id"] == wrong_id.as_str())
            .and_then(|n| n["last_error"].as_str().map(String::from))
            .filter(|e| e.contains("changed"))
    });
    assert!(err.contains(&b_cert), "{err}");
    assert!(a.metric("echomesh_bridge_connections_rejected_total{reason=\"pin_mismatch\"}") >= 1.0);
    // The configured link to a closed port is listed as down with its error.
    let listed = a.neighbors();
    let stat = listed
        .iter()
        .find(|n| n["origin"] == "static")
        .expect("static link");
    assert!(
        stat["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("connecting"),
        "{stat}"
    );
    let stat_id = stat["id"].as_str().expect("id").to_string();
    let out = a.ctl(&["neighbors", "remove", &stat_id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("configuration"));
    // Echo links have their own limit (here 3: the configured one and the two added).
    let out = a.ctl(&["neighbors", "add", "echo+tcp://127.0.0.1:9"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_links"),
        "{out:?}"
    );
    let out = a.ctl(&["neighbors", "add", "echo+tls://nowhere"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PORT"),
        "{out:?}"
    );

    // Kept across a restart (and pinned: the link comes back up).
    a.restart();
    wait_for(
        Duration::from_secs(20),
        "the added links after a restart",
        || {
            let l = a.neighbors();
            (l.iter()
                .any(|n| n["id"] == tofu.as_str() && n["state"] == "up")
                && l.iter().any(|n| n["id"] == wrong_id.as_str()))
            .then_some(())
        },
    );
    a.ctl_ok(&["neighbors", "remove", &tofu]);
    a.ctl_ok(&["neighbors", "remove", &wrong_id]);
    let left: Vec<_> = a.neighbors().into_iter().map(|n| n["id"].clone()).collect();
    assert_eq!(left, vec![serde_json::Value::from(stat_id)]);
    drop(b);
}
