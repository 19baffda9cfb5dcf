//! SmokeStack services with Smoke's own code as the client (docs/ECHO.md, "SmokeStack
//! services"): messages stored for an offline participant survive the loss of the node that
//! took them, keys are shared through the cluster, forged requests get nothing, and a private
//! server lets in only clients that log in. Frames are produced and read by Smoke's
//! `Cryptography`/`Messages` in a Java harness (`tests/smoke-harness/`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use echomesh_tests::echo::{EchoClient, EchoTls};
use echomesh_tests::smoke::SmokeUser;
use echomesh_tests::{free_port, wait_for, Plan, TestNode};

const OZONE: &str = "192.0.2.10:4710:TCP";

fn smoke_config(root: &Path, name: &str, port: u16) -> Vec<String> {
    std::fs::create_dir_all(root).expect("mkdir");
    let path = root.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[bridge]\nlisten = \"127.0.0.1:{port}\"\nstart_delay_ms = 100\nkeepalive_secs = 4\n\n[smoke]\nchallenge_interval_secs = 1\n"
        ),
    )
    .expect("write config");
    vec!["--config".into(), path.display().to_string()]
}

/// `n` nodes, each linked to every other, each with an Echo listener; their Echo addresses.
fn cluster(root: &Path, n: usize) -> (Vec<TestNode>, Vec<SocketAddr>) {
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let plan = Plan::new(root, &refs);
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let port = free_port();
        let mut flags = smoke_config(root, name, port);
        let others: Vec<String> = (0..n).filter(|&j| j != i).map(|j| plan.spec(j)).collect();
        flags.extend(Plan::neighbor_flags(&others));
        nodes.push(plan.start(i, &flags));
        addrs.push(format!("127.0.0.1:{port}").parse().expect("addr"));
    }
    for i in 0..n {
        for j in 0..n {
            if i != j {
                nodes[i].wait_neighbor_up(&nodes[j]);
            }
        }
    }
    (nodes, addrs)
}

fn participants(n: &TestNode) -> serde_json::Value {
    serde_json::from_str(&n.ctl_ok(&["smoke", "participants", "list", "--json"])).expect("json")
}

fn has_keys(n: &TestNode, id: &str) -> bool {
    participants(n)["participants"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["siphash_id"] == id && p["keys"] == true))
}

/// Register a user with the cluster through `conn` (share SipHash ID, then its keys) and
/// wait until every node has its keys.
async fn register(user: &mut SmokeUser, conn: &mut EchoClient, nodes: &[&TestNode]) {
    conn.send(&user.frame("share-id"));
    // The 0x03 confirmation comes back on the same connection (Smoke's steps check it);
    // frames flooded from elsewhere may come first.
    let f = addressed(conn, |f| user.confirm(f)).await;
    assert_eq!(f[0], user.id);
    let id = user.id.clone();
    for n in nodes {
        wait_for(
            Duration::from_secs(10),
            "participant registered everywhere",
            || {
                participants(n)["participants"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p["siphash_id"] == id))
                    .then_some(())
            },
        );
    }
    conn.send(&user.frame("epks"));
    for n in nodes {
        wait_for(Duration::from_secs(10), "keys captured everywhere", || {
            has_keys(n, &id).then_some(())
        });
    }
}

/// The first data frame on `conn` that `check` (Smoke's receive steps) accepts; frames not
/// addressed to the user (floods from other clients) are skipped, any other refusal fails.
async fn addressed(
    conn: &mut EchoClient,
    mut check: impl FnMut(&[u8]) -> Result<Vec<String>, String>,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = conn
            .recv_data(left)
            .await
            .expect("the answer addressed to the user");
        match check(&f) {
            Ok(fields) => return fields,
            Err(e) if e.contains("not addressed to us") => continue,
            Err(e) => panic!("Smoke's code refused the answer: {e}"),
        }
    }
}

/// Ask the cluster for `whose` keys (PKP through `conn`); Smoke's code verifies them.
async fn fetch_keys(user: &mut SmokeUser, conn: &mut EchoClient, whose: &str) {
    conn.send(&user.frame(&format!("pkp {whose}")));
    let got = addressed(conn, |f| user.accept_epks(f)).await;
    assert_eq!(got[0], whose, "the keys are the requested participant's");
}

/// Retrieve through `conn`: the released frames opened by Smoke's code, (text, digest).
async fn retrieve(
    user: &mut SmokeUser,
    conn: &mut EchoClient,
    quiet: Duration,
) -> Vec<(String, String)> {
    let (identity, request) = user.retrieve();
    conn.send(&identity);
    conn.send(&request);
    let frames = conn.drain_data(quiet).await;
    frames
        .iter()
        .filter_map(|f| match user.open(f) {
            Ok(m) => Some(m),
            // Flooded frames from other clients that crossed the identity registration.
            Err(e) if e.contains("not addressed to our retrieval identity") => None,
            Err(e) => panic!("Smoke cannot open a released message: {e}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_messages_survive_the_node_that_took_them_and_read_ones_are_gone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (nodes, addrs) = cluster(tmp.path(), 3);
    nodes[1].ctl_ok(&["smoke", "ozones", "add", OZONE]);
    for n in &nodes {
        wait_for(Duration::from_secs(10), "ozone everywhere", || {
            n.ctl_ok(&["smoke", "ozones", "list"])
                .contains(OZONE)
                .then_some(())
        });
    }
    let mut alice = SmokeUser::new("ec", 2048, OZONE);
    let mut bob = SmokeUser::new("rsa", 2048, OZONE);
    // "A" is a node that holds a copy of Bob's mailbox (R = 2 of 3), so killing it loses a
    // copy; "C" holds none, so Bob's retrieval there needs the cluster's copies; "B" holds
    // the other one.
    let ids: Vec<echomesh_proto::identity::NodeId> = nodes
        .iter()
        .map(|n| n.fingerprint().parse().expect("node id"))
        .collect();
    let (mailbox, _) = echomesh_node::smoke::mailbox(&bob.id);
    let owners = echomesh_proto::ozone::placement::owners(&mailbox, &ids, 2);
    let pos = |id| ids.iter().position(|x| *x == id).expect("owner is a node");
    let (a, b) = (pos(owners[0]), pos(owners[1]));
    let c = 3 - a - b;
    let mut nodes: Vec<Option<TestNode>> = nodes.into_iter().map(Some).collect();
    let mut node_a = nodes[a].take().expect("a");
    let node_b = nodes[b].take().expect("b");
    let node_c = nodes[c].take().expect("c");
    let addrs = [addrs[a], addrs[b], addrs[c]];
    let mut to_a = EchoClient::connect(addrs[0], EchoTls::Any)
        .await
        .expect("a");
    let mut to_c = EchoClient::connect(addrs[2], EchoTls::Tls12Only)
        .await
        .expect("c");
    let all = [&node_a, &node_b, &node_c];
    register(&mut alice, &mut to_a, &all).await;
    register(&mut bob, &mut to_c, &all).await;

    // Done-when 3: keys through the cluster, nothing exchanged directly.
    fetch_keys(&mut alice, &mut to_a, &bob.id.clone()).await;
    fetch_keys(&mut bob, &mut to_c, &alice.id.clone()).await;
    let stream: [u8; 96] = rand::random();
    alice.chat_stream(&bob.id.clone(), &stream);
    bob.chat_stream(&alice.id.clone(), &stream);

    // 100 ozone copies to offline Bob through A; A killed -9 one second after the last.
    let bob_id = bob.id.clone();
    let texts: Vec<String> = (0..100).map(|i| format!("message {i} for Bob")).collect();
    for t in &texts {
        let f = alice.chat(&bob_id, t);
        to_a.send(&f);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        node_a.metric("echomesh_ozone_stored_bytes") > 0.0,
        "A holds copies of Bob's messages when it is killed"
    );
    node_a.kill9();

    let got = retrieve(&mut bob, &mut to_c, Duration::from_secs(5)).await;
    let want: BTreeSet<String> = texts.iter().cloned().collect();
    let got_texts: Vec<String> = got.iter().map(|(t, _)| t.clone()).collect();
    let distinct: BTreeSet<String> = got_texts.iter().cloned().collect();
    assert_eq!(got_texts.len(), 100, "each message once");
    assert_eq!(
        distinct, want,
        "all 100 messages, decrypted by Smoke's code"
    );

    // Read receipts through C; then nobody releases them again.
    for (_, digest) in &got {
        let f = bob.frame(&format!("read {digest}"));
        to_c.send(&f);
    }
    let mut to_b = EchoClient::connect(addrs[1], EchoTls::Any)
        .await
        .expect("b");
    wait_for(
        Duration::from_secs(20),
        "read messages removed on C",
        || (node_c.metric("echomesh_ozone_acked_messages_total") >= 100.0).then_some(()),
    );
    assert!(retrieve(&mut bob, &mut to_c, Duration::from_secs(2))
        .await
        .is_empty());
    assert!(retrieve(&mut bob, &mut to_b, Duration::from_secs(2))
        .await
        .is_empty());

    // The killed node restarts with its copies; the tombstones reach it.
    node_a.restart();
    node_a.wait_neighbor_up(&node_b);
    node_a.wait_neighbor_up(&node_c);
    // The copies A kept through the kill are removed by the survivors' tombstones.
    wait_for(Duration::from_secs(30), "A's copies removed", || {
        (node_a.metric("echomesh_ozone_stored_bytes") == 0.0).then_some(())
    });
    let mut to_a = EchoClient::connect(addrs[0], EchoTls::Any)
        .await
        .expect("a again");
    for conn in [&mut to_a, &mut to_b, &mut to_c] {
        assert!(retrieve(&mut bob, conn, Duration::from_secs(2))
            .await
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_retrievals_get_nothing_and_a_private_server_wants_a_login() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (nodes, addrs) = cluster(tmp.path(), 1);
    let n = &nodes[0];
    n.ctl_ok(&["smoke", "ozones", "add", OZONE]);
    let mut alice = SmokeUser::new("ec", 2048, OZONE);
    let mut bob = SmokeUser::new("ec", 2048, OZONE);
    let mut mallory = SmokeUser::new("ec", 2048, OZONE);
    let mut conn = EchoClient::connect(addrs[0], EchoTls::Any)
        .await
        .expect("connect");
    register(&mut alice, &mut conn, &[n]).await;
    register(&mut bob, &mut conn, &[n]).await;
    fetch_keys(&mut bob, &mut conn, &alice.id.clone()).await;
    fetch_keys(&mut alice, &mut conn, &bob.id.clone()).await;
    let stream: [u8; 96] = rand::random();
    bob.chat_stream(&alice.id.clone(), &stream);
    alice.chat_stream(&bob.id.clone(), &stream);
    let alice_id = alice.id.clone();
    for i in 0..3 {
        let f = bob.chat(&alice_id, &format!("for Alice {i}"));
        conn.send(&f);
    }
    wait_for(Duration::from_secs(10), "three stored", || {
        (n.metric("echomesh_smoke_frames_total{kind=\"stored\"}") >= 3.0).then_some(())
    });

    // Stale, wrongly signed, unknown participant: nothing released, each counted.
    let (identity, _) = alice.retrieve();
    conn.send(&identity);
    for (forge, reason) in [("stale", "stale"), ("badsig", "bad_signature")] {
        conn.send(&alice.frame(&format!("forge-retrieve {forge}")));
        wait_for(Duration::from_secs(10), reason, || {
            (n.metric(&format!(
                "echomesh_smoke_refused_total{{reason=\"{reason}\"}}"
            )) >= 1.0)
                .then_some(())
        });
    }
    let (mid, mreq) = mallory.retrieve();
    conn.send(&mid);
    conn.send(&mreq);
    wait_for(Duration::from_secs(10), "unknown participant", || {
        (n.metric("echomesh_smoke_refused_total{reason=\"unknown_participant\"}") >= 1.0)
            .then_some(())
    });
    assert!(
        conn.drain_data(Duration::from_secs(2)).await.is_empty(),
        "a forged request got frames"
    );
    assert_eq!(n.metric("echomesh_smoke_released_total"), 0.0);
    // The genuine request gets the three.
    assert_eq!(
        retrieve(&mut alice, &mut conn, Duration::from_secs(3))
            .await
            .len(),
        3
    );

    // Private server: a new connection is challenged and ignored until it logs in.
    n.ctl_ok(&["smoke", "private-server", "on"]);
    let mut fresh = EchoClient::connect(addrs[0], EchoTls::Any)
        .await
        .expect("connect");
    let (identity, request) = alice.retrieve();
    fresh.send(&identity);
    fresh.send(&request);
    let challenge = fresh
        .recv_control("0097a", Duration::from_secs(10))
        .await
        .expect("a 0097a challenge");
    assert!(
        fresh.drain_data(Duration::from_secs(2)).await.is_empty(),
        "served before login"
    );
    assert!(n.metric("echomesh_smoke_refused_total{reason=\"unauthenticated\"}") >= 2.0);
    // Mallory's key is not a participant's: refused.
    let challenge = String::from_utf8(challenge).expect("ascii");
    fresh.send(&mallory.frame(&format!("login {challenge}")));
    let challenge = fresh
        .recv_control("0097a", Duration::from_secs(10))
        .await
        .expect("a fresh challenge after a refused login");
    wait_for(Duration::from_secs(5), "refused login", || {
        (n.metric("echomesh_smoke_logins_total{result=\"refused\"}") >= 1.0).then_some(())
    });
    let challenge = String::from_utf8(challenge).expect("ascii");
    fresh.send(&alice.frame(&format!("login {challenge}")));
    wait_for(Duration::from_secs(5), "login", || {
        (n.metric("echomesh_smoke_logins_total{result=\"ok\"}") >= 1.0).then_some(())
    });
    assert_eq!(
        retrieve(&mut alice, &mut fresh, Duration::from_secs(3))
            .await
            .len(),
        3
    );
}
