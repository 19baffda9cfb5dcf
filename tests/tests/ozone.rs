//! Ozones (offline mailboxes) with real node processes: deposits survive a crash, are read
//! oldest first and exactly once, quotas and proofs are enforced, and a deposit that cannot be
//! made durable on the write quorum is refused, not acknowledged.

use std::path::Path;
use std::time::Duration;

use echomesh_client::{self as client, ClientError};
use echomesh_proto::ozone::OzoneProof;
use echomesh_tests::{cluster_of_three, session_to, Shared, TestNode};

fn keys(n: &TestNode, dir: &Path) -> (String, String, String) {
    let alice = dir.join("alice.key");
    let bob = dir.join("bob.key");
    n.ctl_ok(&[
        "keys",
        "gen",
        "--no-passphrase",
        "--out",
        alice.to_str().unwrap(),
    ]);
    let out = n.ctl_ok(&[
        "--json",
        "keys",
        "gen",
        "--no-passphrase",
        "--out",
        bob.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    n.ctl_ok(&[
        "keys",
        "publish",
        "--node",
        &n.spec(),
        "--key",
        bob.to_str().unwrap(),
        "--name",
        "Bob",
    ]);
    (
        alice.display().to_string(),
        bob.display().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// The proof of an ozone that ranks the members exactly as `ids` (owners ids[0], ids[1]).
fn ozone_ranked_as(ids: &[echomesh_client::identity::NodeId], prefix: &str) -> OzoneProof {
    (0..)
        .map(|k| OzoneProof::from_secret(format!("{prefix}-{k}").as_bytes()))
        .find(|p| echomesh_proto::ozone::placement::ranked(&p.address(), ids) == ids)
        .unwrap()
}

/// Deposit `payload 0` … `payload {count-1}` through `n`.
async fn deposit_numbered(n: &Shared, ep: &quinn::Endpoint, proof: OzoneProof, count: u32) {
    let mut s = session_to(n, ep).await;
    for i in 0..count {
        s.deposit(proof.address(), bytes::Bytes::from(format!("payload {i}")))
            .await
            .unwrap();
    }
}

/// `n` serves exactly `payload 0` … `payload {count-1}`, in order.
async fn assert_serves_numbered(n: &Shared, ep: &quinn::Endpoint, proof: OzoneProof, count: u32) {
    let mut s = session_to(n, ep).await;
    let (page, more) = s.fetch(proof, None, 512).await.unwrap();
    assert!(!more);
    let got: Vec<String> = page
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (0..count).map(|i| format!("payload {i}")).collect();
    assert_eq!(got, want);
}

/// Wait (bounded) until a metric of `n` reaches `value`.
async fn wait_metric(n: &Shared, metric: &'static str, value: f64, what: &'static str) {
    let n = n.clone();
    tokio::task::spawn_blocking(move || {
        let n = n.lock().unwrap();
        echomesh_tests::wait_for(Duration::from_secs(30), what, || {
            (n.metric(metric) == value).then_some(())
        });
    })
    .await
    .unwrap();
}

/// `send --ozone SECRET TEXT` from Alice to Bob through `n`.
fn send_ozone_out(
    n: &TestNode,
    alice: &str,
    bob_id: &str,
    secret: &str,
    text: &str,
) -> std::process::Output {
    n.ctl(&[
        "send",
        "--node",
        &n.spec(),
        "--key",
        alice,
        "--to",
        bob_id,
        "--ozone",
        secret,
        text,
    ])
}

/// The same, required to succeed.
fn send_ozone(n: &TestNode, alice: &str, bob_id: &str, secret: &str, text: &str) {
    let out = send_ozone_out(n, alice, bob_id, secret, text);
    assert!(
        out.status.success(),
        "send --ozone failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        n.log_tail()
    );
}

/// `recv --json --ozone SECRET` on `n`: its raw output.
fn recv_ozone_text(n: &TestNode, key: &Path, secret: &str) -> String {
    n.ctl_ok(&[
        "--json",
        "recv",
        "--node",
        &n.spec(),
        "--key",
        key.to_str().unwrap(),
        "--ozone",
        secret,
    ])
}

fn recv_ozone(n: &TestNode, bob: &str, secret: &str) -> Vec<serde_json::Value> {
    recv_ozone_text(n, Path::new(bob), secret)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Bob is offline; Alice deposits 40 messages; the node is killed (-9) and restarted; Bob gets
/// all 40 in order, verified, exactly once; a second read finds the ozone empty.
#[test]
fn deposits_survive_a_crash_and_are_read_once_in_order() {
    let root = tempfile::tempdir().unwrap();
    let mut a = TestNode::start(root.path(), "a", 0, &[]);
    let (alice, bob, bob_id) = keys(&a, root.path());
    for i in 0..40 {
        send_ozone(&a, &alice, &bob_id, "bob-secret", &format!("offline {i}"));
    }
    assert_eq!(
        a.metric("echomesh_ozone_deposits_total{result=\"stored\"}"),
        40.0
    );
    a.restart();
    let got = recv_ozone(&a, &bob, "bob-secret");
    let texts: Vec<String> = got
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("offline {i}")).collect();
    assert_eq!(texts, want);
    assert!(got.iter().all(|m| m["status"] == "verified"));
    assert!(
        recv_ozone(&a, &bob, "bob-secret").is_empty(),
        "acknowledged messages came back"
    );
    assert_eq!(a.metric("echomesh_ozone_acked_messages_total"), 40.0);
    assert_eq!(a.metric("echomesh_ozone_stored_bytes"), 0.0);
}

/// A stored message first, then a live one, in one `recv --follow`.
#[test]
fn follow_reads_the_ozone_then_goes_live() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let (alice, bob, bob_id) = keys(&a, root.path());
    send_ozone(&a, &alice, &bob_id, "s", "stored");
    let follow = a.ctl_background(
        &[
            "--json",
            "recv",
            "--node",
            &a.spec(),
            "--key",
            &bob,
            "--ozone",
            "s",
            "--follow",
            "--count",
            "2",
            "--timeout",
            "30",
        ],
        &[],
        "listening",
    );
    send_ozone(&a, &alice, &bob_id, "s", "live");
    let (ok, lines) = follow.finish(Duration::from_secs(30));
    assert!(ok, "{lines:?}");
    let texts: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].clone())
        .collect();
    assert_eq!(texts, vec!["stored", "live"]);
    // The live message was acknowledged too.
    let left = recv_ozone(&a, &bob, "s");
    assert!(left.is_empty(), "{left:?}");
}

/// Quota, wrong proof and a deposit the cluster cannot make durable are refused, counted, and
/// lose nothing already stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_wrong_proof_and_missing_quorum_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("small.toml");
    std::fs::write(
        &cfg,
        "[ozone]\nmax_messages_per_ozone = 3\nmax_total_bytes = 200000\n",
    )
    .unwrap();
    let a = TestNode::start(
        root.path(),
        "a",
        0,
        &["--config".into(), cfg.display().to_string()],
    );
    let (alice, bob, bob_id) = keys(&a, root.path());
    for i in 0..3 {
        send_ozone(&a, &alice, &bob_id, "q", &format!("m{i}"));
    }
    let over = send_ozone_out(&a, &alice, &bob_id, "q", "one too many");
    assert_eq!(over.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("quota"),
        "{over:?}"
    );
    assert_eq!(
        a.metric("echomesh_ozone_deposits_total{result=\"quota\"}"),
        1.0
    );

    // Wrong proof: the address of "q" with the proof of another secret.
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut s = client::connect(
        &ep,
        a.info.quic,
        Some(a.fingerprint().parse().unwrap()),
        "test",
    )
    .await
    .unwrap();
    let addr = OzoneProof::from_secret(b"q").address();
    let wrong = OzoneProof::from_secret(b"guess");
    let req = echomesh_proto::wire::ClientRequest::Fetch {
        addr,
        proof: wrong,
        after: None,
        limit: 10,
    };
    let (conn, mut w, mut r) = s.split();
    w.send_request(&req).await.unwrap();
    match r.next_event().await.unwrap() {
        Some(echomesh_proto::wire::ClientEvent::Error { message, .. }) => {
            assert!(message.contains("proof"), "{message}")
        }
        other => panic!("wrong proof accepted: {other:?}"),
    }
    assert_eq!(a.metric("echomesh_ozone_proof_failures_total"), 1.0);
    conn.close(0u32.into(), b"");
    s = client::connect(
        &ep,
        a.info.quic,
        Some(a.fingerprint().parse().unwrap()),
        "test",
    )
    .await
    .unwrap();
    let (page, more) = s
        .fetch(OzoneProof::from_secret(b"q"), None, 10)
        .await
        .unwrap();
    assert_eq!((page.len(), more), (3, false), "stored messages lost");
    // Oversized deposit and a full storage budget: refused with the reason, counted.
    let huge = bytes::Bytes::from(vec![7u8; 300 * 1024]);
    match s
        .deposit(OzoneProof::from_secret(b"big").address(), huge)
        .await
    {
        Err(ClientError::Refused(m)) => assert!(m.contains("exceeds"), "{m}"),
        other => panic!("oversized deposit accepted: {other:?}"),
    }
    s.deposit(
        OzoneProof::from_secret(b"big").address(),
        bytes::Bytes::from(vec![1u8; 150_000]),
    )
    .await
    .unwrap();
    match s
        .deposit(
            OzoneProof::from_secret(b"big2").address(),
            bytes::Bytes::from(vec![2u8; 150_000]),
        )
        .await
    {
        Err(ClientError::Refused(m)) => assert!(m.contains("budget"), "{m}"),
        other => panic!("deposit over the budget accepted: {other:?}"),
    }
    assert_eq!(
        a.metric("echomesh_ozone_deposits_total{result=\"too_large\"}"),
        1.0
    );
    assert_eq!(
        a.metric("echomesh_ozone_deposits_total{result=\"disk_budget\"}"),
        1.0
    );
    let (page, _) = s
        .fetch(OzoneProof::from_secret(b"big"), None, 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    drop(s);
    let info: serde_json::Value = serde_json::from_str(&a.ctl_ok(&[
        "--json",
        "ozone",
        "info",
        "--node",
        &a.spec(),
        "--secret",
        "q",
    ]))
    .unwrap();
    assert_eq!(info["messages"], 3);
    assert_eq!(info["max_messages"], 3);
    assert_eq!(info["owners"].as_array().unwrap().len(), 1);

    // A second member joins the cluster (W = 2) and dies: deposits are refused as not
    // durable instead of being acknowledged with one copy.
    let b = TestNode::start(root.path(), "b", 0, &[]);
    let a2 = std::sync::Arc::new(a);
    let b2 = std::sync::Arc::new(std::sync::Mutex::new(b));
    let (a3, b3) = (a2.clone(), b2.clone());
    let (alice2, bob_id2) = (alice.clone(), bob_id.clone());
    let out = tokio::task::spawn_blocking(move || {
        let b_fp = {
            let b = b3.lock().unwrap();
            a3.link(&b);
            b.fingerprint().to_string()
        };
        send_ozone(&a3, &alice2, &bob_id2, "two", "two copies");
        b3.lock().unwrap().kill9();
        echomesh_tests::wait_for(Duration::from_secs(20), "a to see b down", || {
            (a3.neighbor_state(&b_fp).as_deref() != Some("up")).then_some(())
        });
        send_ozone_out(&a3, &alice2, &bob_id2, "other", "not durable")
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not acknowledged"), "{err}");
    assert_eq!(
        a2.metric("echomesh_ozone_deposits_total{result=\"not_durable\"}"),
        1.0
    );
    let _ = bob;
}

/// Done-when 1 and 2 of the ozone work: a cluster of three (R = 2, W = 2). Bob is offline;
/// Alice deposits 1 000 messages through node a; right after the last acknowledgement one node
/// is killed with -9 (each of the three in turn, a included). Bob reads from a survivor and
/// gets all 1 000, once, in order. The killed node restarts with its data dir and converges
/// without operator action: it drops what was acknowledged while it was down (tombstones) and
/// receives what was deposited for it meanwhile — within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_deposits_survive_the_loss_of_any_node_and_replicas_converge() {
    use echomesh_client::e2e::{self, Content, Participant, Recipient};
    use echomesh_proto::clock::unix_now;
    use echomesh_proto::keydir::BundleKind;
    use echomesh_proto::ozone::placement;
    use std::sync::Arc;

    let root = tempfile::tempdir().unwrap();
    let (nodes, ids) = cluster_of_three(root.path(), &[]);

    // Alice and Bob; Bob's key file for `recv`.
    let (alice, bob) = tokio::task::spawn_blocking(|| {
        (
            Participant::generate().unwrap(),
            Participant::generate().unwrap(),
        )
    })
    .await
    .unwrap();
    let bob_file = root.path().join("bob.key");
    echomesh_client::keyfile::save(&bob_file, &bob, None).unwrap();
    let to_bob = Recipient::from_bundle(
        &bob.bundle(BundleKind::Publish, "Bob", unix_now(), true),
        unix_now(),
    )
    .unwrap();
    let alice = Arc::new(alice);
    let (al, tb) = (alice.clone(), to_bob.clone());
    let sealed: Vec<bytes::Bytes> = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|i| {
                bytes::Bytes::from(
                    e2e::seal(&al, &tb, Content::Text(format!("message {i:04}"))).unwrap(),
                )
            })
            .collect()
    })
    .await
    .unwrap();
    let late: Vec<bytes::Bytes> = (0..10)
        .map(|i| {
            bytes::Bytes::from(
                e2e::seal(&alice, &to_bob, Content::Text(format!("late {i}"))).unwrap(),
            )
        })
        .collect();
    let late_bytes: usize = late.iter().map(|p| p.len()).sum();
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();

    for victim in 0..3 {
        let secret = format!("bob-round-{victim}");
        let mut s = session_to(&nodes[0], &ep).await;
        let addr = OzoneProof::from_secret(secret.as_bytes()).address();
        for p in &sealed {
            let (_, copies) = s.deposit(addr, p.clone()).await.unwrap();
            assert!(copies >= 2, "acknowledged with {copies} copies");
        }
        drop(s);
        nodes[victim].lock().unwrap().kill9();
        let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
        let victim_fp = ids[victim].fingerprint();
        for &i in &survivors {
            let n = nodes[i].clone();
            let fp = victim_fp.clone();
            tokio::task::spawn_blocking(move || {
                let n = n.lock().unwrap();
                echomesh_tests::wait_for(
                    Duration::from_secs(20),
                    "the victim to be seen down",
                    || (n.neighbor_state(&fp).as_deref() != Some("up")).then_some(()),
                );
            })
            .await
            .unwrap();
        }
        // While it is down: deposits into an ozone the victim owns when all three are up.
        let late_secret = (0..)
            .map(|k| format!("late-{victim}-{k}"))
            .find(|sec| {
                placement::owners(&OzoneProof::from_secret(sec.as_bytes()).address(), &ids, 2)
                    .contains(&ids[victim])
            })
            .unwrap();
        let late_addr = OzoneProof::from_secret(late_secret.as_bytes()).address();
        let mut s = session_to(&nodes[survivors[0]], &ep).await;
        for p in &late {
            s.deposit(late_addr, p.clone()).await.unwrap();
        }
        drop(s);

        // Bob reads everything from the other survivor: all 1 000, once, in order.
        let reader = nodes[survivors[1]].clone();
        let (bf, sec) = (bob_file.clone(), secret.clone());
        let lines = tokio::task::spawn_blocking(move || {
            recv_ozone_text(&reader.lock().unwrap(), &bf, &sec)
        })
        .await
        .unwrap();
        let texts: Vec<String> = lines
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["status"], "verified", "{v}");
                v["text"].as_str().unwrap().to_string()
            })
            .collect();
        let want: Vec<String> = (0..1000).map(|i| format!("message {i:04}")).collect();
        assert!(
            texts == want,
            "victim {victim}: got {} messages, first differences: {:?}",
            texts.len(),
            texts
                .iter()
                .zip(&want)
                .filter(|(a, b)| a != b)
                .take(3)
                .collect::<Vec<_>>()
        );

        // The victim comes back and converges: the 1 000 acknowledged while it was down leave
        // it (tombstones), the late ones arrive — and nothing else is stored there.
        let n = nodes[victim].clone();
        tokio::task::spawn_blocking(move || {
            let mut n = n.lock().unwrap();
            n.restart();
            echomesh_tests::wait_for(
                Duration::from_secs(30),
                "the restarted replica to converge",
                || (n.metric("echomesh_ozone_stored_bytes") == late_bytes as f64).then_some(()),
            );
        })
        .await
        .unwrap();
        // Clean up for the next round: Bob reads the late ozone (acknowledged everywhere).
        let reader = nodes[victim].clone();
        let (bf, sec) = (bob_file.clone(), late_secret.clone());
        let lines = tokio::task::spawn_blocking(move || {
            recv_ozone_text(&reader.lock().unwrap(), &bf, &sec)
        })
        .await
        .unwrap();
        assert_eq!(lines.lines().count(), 10, "{lines}");
        for n in &nodes {
            let n = n.clone();
            tokio::task::spawn_blocking(move || {
                let n = n.lock().unwrap();
                echomesh_tests::wait_for(Duration::from_secs(10), "every replica empty", || {
                    (n.metric("echomesh_ozone_stored_bytes") == 0.0).then_some(())
                });
            })
            .await
            .unwrap();
        }
    }
}

/// While an owner is down, the periodic repair puts a second copy on the next owner: losing
/// one node and then another still loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_repair_restores_r_copies_while_an_owner_is_down() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("repair.toml");
    std::fs::write(&cfg, "[ozone]\nrepair_interval_secs = 2\n").unwrap();
    let (nodes, ids) =
        cluster_of_three(root.path(), &["--config".into(), cfg.display().to_string()]);
    // An ozone owned by a and b while all are up; c is next in line.
    let proof = ozone_ranked_as(&ids, "repair");
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    deposit_numbered(&nodes[1], &ep, proof, 20).await;
    nodes[0].lock().unwrap().kill9();
    wait_metric(
        &nodes[2],
        "echomesh_ozone_messages",
        20.0,
        "c to receive a copy",
    )
    .await;
    nodes[1].lock().unwrap().kill9();
    assert_serves_numbered(&nodes[2], &ep, proof, 20).await;
}

/// `drain --wait` hands the node's ozones to their other owners before it reports "safe to
/// stop": after draining a, killing a and then b loses nothing (c serves everything). While
/// draining, a is not ready and refuses new clients; `undrain` brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_off_ozones_so_stopping_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (nodes, ids) = cluster_of_three(root.path(), &[]);
    let proof = ozone_ranked_as(&ids, "drain");
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    deposit_numbered(&nodes[1], &ep, proof, 50).await;

    let a = nodes[0].clone();
    let a_info = a.lock().unwrap().info.clone();
    let out = tokio::task::spawn_blocking(move || {
        let a = a.lock().unwrap();
        let out = a.ctl_ok(&["--json", "drain", "--wait", "--deadline", "30"]);
        assert_eq!(a.http_get("/readyz").0, 503);
        out
    })
    .await
    .unwrap();
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["safe_to_stop"], true, "{st}");
    assert_eq!(st["phase"], "done", "{st}");
    // New clients are sent elsewhere.
    let refused = client::connect(
        &ep,
        a_info.quic,
        Some(a_info.fingerprint.parse().unwrap()),
        "t",
    )
    .await;
    match refused {
        Err(e) => assert!(e.to_string().contains("draining"), "{e}"),
        Ok(_) => panic!("a draining node accepted a new client"),
    }
    // Undrain serves again; a second drain finds nothing left to move (digests agree).
    let a = nodes[0].clone();
    tokio::task::spawn_blocking(move || {
        let a = a.lock().unwrap();
        a.ctl_ok(&["undrain"]);
        assert_eq!(a.http_get("/readyz").0, 200);
        let st: serde_json::Value =
            serde_json::from_str(&a.ctl_ok(&["--json", "drain", "--wait"])).unwrap();
        assert_eq!(st["safe_to_stop"], true, "{st}");
    })
    .await
    .unwrap();
    // c, the next owner, now holds every message (the gauge is sampled every few seconds;
    // the hand-off itself finished before "done").
    wait_metric(
        &nodes[2],
        "echomesh_ozone_messages",
        50.0,
        "c's message gauge",
    )
    .await;
    nodes[0].lock().unwrap().kill9();
    nodes[1].lock().unwrap().kill9();
    assert_serves_numbered(&nodes[2], &ep, proof, 50).await;
}
