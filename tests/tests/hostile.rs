//! Hostile and broken input: each case is refused, counted in metrics, and the node keeps
//! serving.

use std::time::Duration;

use bytes::Bytes;
use echomesh_client::identity::{Identity, NodeId};
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::wire::{self, ClientEvent, ClientRequest, PeerFrame, PeerHello};
use echomesh_tests::{free_udp_port, raw_connect, request, wait_for, TestNode};

fn closed_code(e: &quinn::ConnectionError) -> Option<u64> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// The node still works end to end: status, and a packet through inject → tail.
fn assert_still_serving(n: &TestNode, label: &str) {
    let s: serde_json::Value = serde_json::from_str(&n.ctl_ok(&["--json", "status"])).unwrap();
    assert_eq!(s["ready"], true);
    let tail = n.tail(&["--count", "1", "--timeout", "20"]);
    n.ctl_ok(&["inject", "--node", &n.spec(), label]);
    let (ok, lines) = tail.finish(Duration::from_secs(20));
    assert!(ok && lines == [label], "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_peer_and_wrong_alpn_are_refused_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let n = TestNode::start(root.path(), "victim", 0, &[]);

    // A well-formed certificate nobody pinned, on the peer ALPN.
    let stranger = Identity::generate().unwrap();
    let conn = raw_connect(&n.info, wire::ALPN_PEER, Some(&stranger))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert_eq!(
        closed_code(&err),
        Some(u64::from(wire::close::UNPINNED)),
        "{err}"
    );
    // No certificate at all on the peer ALPN.
    let conn = raw_connect(&n.info, wire::ALPN_PEER, None).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert_eq!(
        closed_code(&err),
        Some(u64::from(wire::close::UNPINNED)),
        "{err}"
    );
    // An ALPN the node does not speak fails the TLS handshake.
    assert!(raw_connect(&n.info, b"bogus/1", None).await.is_err());

    wait_for(Duration::from_secs(5), "handshake failure counters", || {
        (n.metric("echomesh_handshake_failures_total{reason=\"unpinned\"}") == 1.0
            && n.metric("echomesh_handshake_failures_total{reason=\"no_certificate\"}") == 1.0
            && n.metric("echomesh_handshake_failures_total{reason=\"alpn\"}") == 1.0)
            .then_some(())
    });
    assert_still_serving(&n, "still-here-1");
}

#[test]
fn wrong_fingerprint_neighbor_fails_handshake() {
    let root = tempfile::tempdir().unwrap();
    let real = TestNode::start(root.path(), "real", 0, &[]);
    let wrong = NodeId([0x42; 32]).fingerprint();
    let n = TestNode::start(
        root.path(),
        "dialer",
        0,
        &["--neighbor".into(), format!("{}#{wrong}", real.info.quic)],
    );
    wait_for(
        Duration::from_secs(10),
        "wrong_fingerprint to be counted",
        || {
            (n.metric("echomesh_handshake_failures_total{reason=\"wrong_fingerprint\"}") >= 1.0)
                .then_some(())
        },
    );
    let nb = n.neighbors();
    assert_ne!(nb[0]["state"], "up");
    assert!(
        nb[0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("wrong fingerprint"),
        "{nb:?}"
    );
    // The real node never pinned the dialer: nothing got through.
    assert!(real.neighbors().is_empty());
}

#[test]
fn invite_tokens_work_once_and_expire() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let b = TestNode::start(root.path(), "b", 0, &[]);
    let c = TestNode::start(root.path(), "c", 0, &[]);
    let token = a.ctl_ok(&["invite"]).trim().to_string();
    b.ctl_ok(&["join", &token]);
    let again = c.ctl(&["join", &token]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already used"), "{err}");
    assert_eq!(
        a.metric("echomesh_joins_total{result=\"token_reused\"}"),
        1.0
    );
    assert!(
        c.neighbors().is_empty(),
        "a refused join must not pin anything"
    );

    let short = a.ctl_ok(&["invite", "--ttl", "1"]).trim().to_string();
    std::thread::sleep(Duration::from_millis(1100));
    let late = c.ctl(&["join", &short]);
    assert_eq!(late.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&late.stderr).contains("expired"));

    let damaged = c.ctl(&["join", &token[..token.len() - 7]]);
    assert_eq!(damaged.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&damaged.stderr).contains("damaged"));
    let not_a_token = c.ctl(&["join", "hello"]);
    assert!(String::from_utf8_lossy(&not_a_token.stderr).contains("not an echomesh invite token"));

    // Unauthenticated admin calls are refused.
    let (code, _) = a.http_get("/v1/status");
    assert_eq!(code, 401);
    assert_eq!(
        a.metric("echomesh_admin_requests_total{result=\"unauthorized\"}"),
        1.0
    );
    assert_still_serving(&a, "still-here-2");
}

async fn client_stream(n: &TestNode) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = raw_connect(&n.info, wire::ALPN_CLIENT, None).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = ClientRequest::Hello {
        version: wire::PROTOCOL_VERSION,
        agent: "hostile-test".into(),
    };
    let ev: ClientEvent = request(&mut send, &mut recv, &hello).await.unwrap();
    assert!(matches!(ev, ClientEvent::Welcome { .. }));
    (conn, send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_from_clients_are_refused_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let n = TestNode::start(root.path(), "victim", 0, &[]);

    // Oversized length prefix: refused before reading the body.
    let (conn, mut send, _recv) = client_stream(&n).await;
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert!(closed_code(&err).is_some(), "{err}");
    // A frame whose body is not a message.
    let (conn, mut send, _recv) = client_stream(&n).await;
    let mut junk = 16u32.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0xff; 16]);
    send.write_all(&junk).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    // Random bytes instead of a hello.
    let conn = raw_connect(&n.info, wire::ALPN_CLIENT, None).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let noise: Vec<u8> = (0..4096).map(|i| (i * 7919 % 251) as u8).collect();
    send.write_all(&noise).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    // A packet whose id is not the hash of its payload.
    let (_conn, mut send, mut recv) = client_stream(&n).await;
    let mut p = EchoPacket::new(Bytes::from_static(b"forged"), 4, None);
    p.id[0] ^= 0xff;
    let ev: ClientEvent = request(&mut send, &mut recv, &ClientRequest::Inject(vec![p]))
        .await
        .unwrap();
    assert!(
        matches!(
            ev,
            ClientEvent::Injected {
                accepted: 0,
                rejected: 1,
                ..
            }
        ),
        "{ev:?}"
    );

    wait_for(Duration::from_secs(5), "frame error counters", || {
        // Two oversized: the explicit one, and the noise, whose first four bytes read as a
        // length far above the hello limit.
        (n.metric("echomesh_frame_errors_total{kind=\"oversized\",role=\"client\"}") == 2.0
            && n.metric("echomesh_frame_errors_total{kind=\"undecodable\",role=\"client\"}") == 1.0
            && n.metric("echomesh_handshake_failures_total{reason=\"hello\"}") == 1.0
            && n.metric("echomesh_packets_dropped_total{reason=\"bad_id\"}") == 1.0)
            .then_some(())
    });
    assert_still_serving(&n, "still-here-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_from_a_pinned_peer_close_only_that_peer() {
    let root = tempfile::tempdir().unwrap();
    // The "peer" is this test, holding an identity the node pins as a static neighbor.
    let fake_dir = root.path().join("fake");
    TestNode::init(&fake_dir);
    let fake = Identity::load_or_create(&fake_dir).unwrap();
    let spec = format!("127.0.0.1:{}#{}", free_udp_port(), fake.id.fingerprint());
    let n = TestNode::start(root.path(), "victim", 0, &["--neighbor".into(), spec]);

    for (i, garbage) in [u32::MAX.to_be_bytes().to_vec(), {
        let mut g = 16u32.to_be_bytes().to_vec();
        g.extend_from_slice(&[0xee; 16]);
        g
    }]
    .into_iter()
    .enumerate()
    {
        let conn = raw_connect(&n.info, wire::ALPN_PEER, Some(&fake))
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = PeerFrame::Hello(PeerHello {
            version: wire::PROTOCOL_VERSION,
            node_id: fake.id,
            cluster: "test".into(),
            software: "hostile".into(),
        });
        let back: PeerFrame = request(&mut send, &mut recv, &hello).await.unwrap();
        assert!(matches!(back, PeerFrame::Hello(_)), "round {i}");
        send.write_all(&garbage).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .unwrap();
        assert!(
            matches!(err, quinn::ConnectionError::ApplicationClosed(_)),
            "{err}"
        );
    }
    wait_for(Duration::from_secs(5), "peer frame error counters", || {
        (n.metric("echomesh_frame_errors_total{kind=\"oversized\",role=\"peer\"}") == 1.0
            && n.metric("echomesh_frame_errors_total{kind=\"undecodable\",role=\"peer\"}") == 1.0)
            .then_some(())
    });
    assert_still_serving(&n, "still-here-4");
}
