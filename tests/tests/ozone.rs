//! Ozones (offline mailboxes) with real node processes: deposits survive a crash, are read
//! oldest first and exactly once, quotas and proofs are enforced, and a deposit that cannot be
//! made durable on the write quorum is refused, not acknowledged.

use std::path::Path;
use std::time::Duration;

use echomesh_node::client::{self, ClientError};
use echomesh_node::ozone::OzoneProof;
use echomesh_tests::TestNode;

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

fn recv_ozone(n: &TestNode, bob: &str, secret: &str) -> Vec<serde_json::Value> {
    let out = n.ctl_ok(&[
        "--json",
        "recv",
        "--node",
        &n.spec(),
        "--key",
        bob,
        "--ozone",
        secret,
    ]);
    out.lines()
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
        a.ctl_ok(&[
            "send",
            "--node",
            &a.spec(),
            "--key",
            &alice,
            "--to",
            &bob_id,
            "--ozone",
            "bob-secret",
            &format!("offline {i}"),
        ]);
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
    a.ctl_ok(&[
        "send",
        "--node",
        &a.spec(),
        "--key",
        &alice,
        "--to",
        &bob_id,
        "--ozone",
        "s",
        "stored",
    ]);
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
    a.ctl_ok(&[
        "send",
        "--node",
        &a.spec(),
        "--key",
        &alice,
        "--to",
        &bob_id,
        "--ozone",
        "s",
        "live",
    ]);
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
    std::fs::write(&cfg, "[ozone]\nmax_messages_per_ozone = 3\n").unwrap();
    let a = TestNode::start(
        root.path(),
        "a",
        0,
        &["--config".into(), cfg.display().to_string()],
    );
    let (alice, bob, bob_id) = keys(&a, root.path());
    for i in 0..3 {
        a.ctl_ok(&[
            "send",
            "--node",
            &a.spec(),
            "--key",
            &alice,
            "--to",
            &bob_id,
            "--ozone",
            "q",
            &format!("m{i}"),
        ]);
    }
    let over = a.ctl(&[
        "send",
        "--node",
        &a.spec(),
        "--key",
        &alice,
        "--to",
        &bob_id,
        "--ozone",
        "q",
        "one too many",
    ]);
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
    let ep = echomesh_node::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
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
    let req = echomesh_node::wire::ClientRequest::Fetch {
        addr,
        proof: wrong,
        after: None,
        limit: 10,
    };
    let (conn, mut w, mut r) = s.split();
    w.send_request(&req).await.unwrap();
    match r.next_event().await.unwrap() {
        Some(echomesh_node::wire::ClientEvent::Error { message, .. }) => {
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
    drop(s);

    // A second member joins the cluster: W = 2 cannot be met by this build, so deposits are
    // refused as not durable instead of being acknowledged with one copy.
    let b = TestNode::start(root.path(), "b", 0, &[]);
    let a2 = std::sync::Arc::new(a);
    let (a3, b2) = (a2.clone(), std::sync::Arc::new(b));
    let (alice2, bob_id2) = (alice.clone(), bob_id.clone());
    let out = tokio::task::spawn_blocking(move || {
        a3.link(&b2);
        a3.ctl(&[
            "send",
            "--node",
            &a3.spec(),
            "--key",
            &alice2,
            "--to",
            &bob_id2,
            "--ozone",
            "other",
            "not durable",
        ])
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
    let mut s = client::connect(
        &ep,
        a2.info.quic,
        Some(a2.fingerprint().parse().unwrap()),
        "test",
    )
    .await
    .unwrap();
    let (page, _) = s
        .fetch(OzoneProof::from_secret(b"other"), None, 10)
        .await
        .unwrap();
    assert!(page.is_empty(), "a refused deposit was stored");
    let _ = bob;
    let e: Result<_, ClientError> = s.deposit(addr, bytes::Bytes::from_static(b"x")).await;
    assert!(matches!(e, Err(ClientError::Refused(_))));
}
