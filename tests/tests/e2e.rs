//! End-to-end encrypted messaging between people on different nodes, with real node
//! processes, real QUIC and the real `echomeshctl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use echomesh_client::e2e::{self, Body, Content, Participant, Recipient};
use echomesh_client::keyfile;
use echomesh_client::{self as client, ClientError};
use echomesh_proto::clock::unix_now;
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::keydir::{BundleKind, ParticipantRef};
use echomesh_proto::tags;
use echomesh_proto::wire::{ClientEvent, SubscribeFilter};
use echomesh_tests::{wait_for, TestNode};

const PASS: (&str, &str) = ("ECHOMESH_PASSPHRASE", "correct horse battery");

fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// `keys gen` through the CLI; returns (file, short ID).
fn gen_key(
    n: &TestNode,
    dir: &Path,
    name: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (PathBuf, String) {
    let file = dir.join(format!("{name}.key"));
    let mut args = vec!["--json", "keys", "gen", "--out", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let v: serde_json::Value = serde_json::from_str(&n.ctl_env_ok(env, &args)).unwrap();
    (file, v["id"].as_str().unwrap().to_string())
}

fn publish(n: &TestNode, key: &Path, name: &str, env: &[(&str, &str)]) -> String {
    let out = n.ctl_env_ok(
        env,
        &[
            "--json",
            "keys",
            "publish",
            "--node",
            &n.spec(),
            "--key",
            key.to_str().unwrap(),
            "--name",
            name,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Wait until `n` answers a lookup for `id` (bundles flood through the mesh).
fn wait_known(n: &TestNode, id: &str) {
    wait_for(
        Duration::from_secs(20),
        &format!("{id} to reach the directory of {}", n.info.id),
        || {
            let out = n.ctl(&["--json", "keys", "lookup", "--node", &n.spec(), id]);
            out.status.success().then_some(())
        },
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Done-when 1 and 2: Alice on A, Bob on C, Carol on B; text, a 1 MiB picture and a group
/// message arrive verified; no node's data directory or log holds any of the plaintext.
#[test]
fn two_people_and_a_group_across_three_nodes_and_no_node_sees_plaintext() {
    let root = tempfile::tempdir().unwrap();
    let people = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let b = TestNode::start(root.path(), "b", 0, &[]);
    let c = TestNode::start(root.path(), "c", 0, &[]);
    a.link(&b);
    b.link(&c);

    let (alice_key, alice_id) = gen_key(&a, people.path(), "alice", &[PASS], &[]);
    let (bob_key, bob_id) = gen_key(&c, people.path(), "bob", &[], &["--no-passphrase"]);
    let (carol_key, carol_id) = gen_key(&b, people.path(), "carol", &[], &["--no-passphrase"]);
    assert_eq!(publish(&a, &alice_key, "Alice", &[PASS]), alice_id);
    assert_eq!(publish(&c, &bob_key, "Bob", &[]), bob_id);
    assert_eq!(publish(&b, &carol_key, "Carol", &[]), carol_id);

    // Alice looks Bob up at A (his bundle was published at C).
    wait_known(&a, &bob_id);
    wait_known(&a, &carol_id);
    let v: serde_json::Value = serde_json::from_str(&a.ctl_ok(&[
        "--json",
        "keys",
        "lookup",
        "--node",
        &a.spec(),
        &bob_id,
    ]))
    .unwrap();
    assert_eq!(v["id"], bob_id.as_str());
    assert_eq!(v["name"], "Bob");
    assert_eq!(v["fingerprint"].as_str().unwrap().len(), 64);

    let bob_dir = people.path().join("bob-files");
    let bob_recv = c.ctl_background(
        &[
            "--json",
            "recv",
            "--node",
            &c.spec(),
            "--key",
            bob_key.to_str().unwrap(),
            "--count",
            "3",
            "--timeout",
            "90",
            "--out-dir",
            bob_dir.to_str().unwrap(),
        ],
        &[],
        "listening",
    );
    let carol_recv = b.ctl_background(
        &[
            "recv",
            "--node",
            &b.spec(),
            "--key",
            carol_key.to_str().unwrap(),
            "--count",
            "1",
            "--timeout",
            "90",
        ],
        &[],
        "listening",
    );

    let hello = "hello Bob, this is Alice 7f3a9c";
    let group = "group note 51d2e0 for Bob and Carol";
    let mut picture = b"\x89PNG\r\n\x1a\n".to_vec();
    picture.extend((0..(1 << 20) - 8).map(|_| rand::random::<u8>()));
    let pic_path = people.path().join("holiday.png");
    std::fs::write(&pic_path, &picture).unwrap();
    let alice = alice_key.to_str().unwrap();
    let spec = a.spec();
    // `[--json] send` from Alice at A (passphrase-protected key) with the given tail.
    let alice_sends = |json: bool, tail: &[&str]| {
        let mut args = if json { vec!["--json"] } else { vec![] };
        args.extend(["send", "--node", &spec, "--key", alice, "--to"]);
        args.extend_from_slice(tail);
        a.ctl_env_ok(&[PASS], &args)
    };
    alice_sends(false, &[&bob_id, hello]);
    alice_sends(false, &[&bob_id, "--file", pic_path.to_str().unwrap()]);
    let out = alice_sends(true, &[&format!("{bob_id},{carol_id}"), group]);
    let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["to"].as_array().unwrap().len(), 2, "{sent}");

    let (ok, lines) = bob_recv.finish(Duration::from_secs(90));
    assert!(ok, "{lines:?}");
    let msgs = json_lines(&lines);
    assert_eq!(msgs.len(), 3, "{lines:?}");
    for m in &msgs {
        assert_eq!(m["from"], alice_id.as_str(), "{m}");
        assert_eq!(m["status"], "verified", "{m}");
    }
    assert_eq!(msgs[0]["text"], hello);
    assert_eq!(msgs[1]["file"], "holiday.png");
    assert_eq!(msgs[1]["bytes"], picture.len());
    assert_eq!(
        std::fs::read(bob_dir.join("holiday.png")).unwrap(),
        picture,
        "picture differs"
    );
    assert_eq!(msgs[2]["text"], group);

    let (ok, lines) = carol_recv.finish(Duration::from_secs(90));
    assert!(ok, "{lines:?}");
    assert_eq!(lines, vec![format!("{alice_id} verified {group}")]);

    // No node ever held the plaintext: not in RocksDB, not in its logs, nowhere in its data
    // directory. A 64-byte run from the middle of the picture stands for the picture.
    let pic_sample = &picture[500_000..500_064];
    for node in [&a, &b, &c] {
        for f in files_under(&node.dir) {
            let data = std::fs::read(&f).unwrap();
            for (what, needle) in [
                ("text", hello.as_bytes()),
                ("group text", group.as_bytes()),
                ("picture", pic_sample),
            ] {
                assert!(!contains(&data, needle), "{what} found in {}", f.display());
            }
        }
    }
    // The test would see plaintext if it were there: the receiver's own copy has it.
    assert!(contains(
        &std::fs::read(bob_dir.join("holiday.png")).unwrap(),
        pic_sample
    ));

    // The directory flooded: every node holds all three bundles.
    for node in [&a, &b, &c] {
        wait_for(Duration::from_secs(10), "three bundles everywhere", || {
            (node.metric("echomesh_key_bundles") == 3.0).then_some(())
        });
    }
    assert!(a.metric("echomesh_client_requests_total{kind=\"lookup_key\"}") >= 3.0);
}

async fn session(n: &TestNode) -> client::ClientSession {
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let s = client::connect(
        &ep,
        n.info.quic,
        Some(n.fingerprint().parse().unwrap()),
        "test",
    )
    .await
    .unwrap();
    // The endpoint must outlive the session.
    std::mem::forget(ep);
    s
}

async fn inject_one(s: &mut client::ClientSession, p: EchoPacket) {
    s.inject(&[p]).await.unwrap();
    loop {
        match s.next_event().await.unwrap() {
            Some(ClientEvent::Injected { .. }) => return,
            Some(_) => {}
            None => panic!("session closed"),
        }
    }
}

/// Done-when 3: a tampered ciphertext, a message signed by the wrong key, a bundle with a bad
/// signature and a malformed client frame are each refused with a clear error and counted, and
/// node and clients keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_and_junk_are_refused_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);

    let (alice, bob, eve) = tokio::task::spawn_blocking(|| {
        (
            Participant::generate().unwrap(),
            Participant::generate().unwrap(),
            Participant::generate().unwrap(),
        )
    })
    .await
    .unwrap();
    let bob_file = root.path().join("bob.key");
    keyfile::save(&bob_file, &bob, None).unwrap();
    let mut s = session(&a).await;
    assert!(s
        .publish_key(bob.bundle(BundleKind::Publish, "Bob", unix_now(), true))
        .await
        .unwrap());

    // A bundle whose signature does not cover its content.
    let mut bad = alice.bundle(BundleKind::Publish, "Alice", unix_now(), true);
    bad.display_name = "Bob".into();
    match s.publish_key(bad).await {
        Err(ClientError::Refused(msg)) => assert!(msg.contains("signature"), "{msg}"),
        other => panic!("bad bundle accepted: {other:?}"),
    }
    assert_eq!(
        a.metric("echomesh_key_bundles_rejected_total{reason=\"bad_signature\"}"),
        1.0
    );
    // The session still works: lookups answer.
    assert!(s
        .lookup_key(ParticipantRef::Full(alice.fingerprint()))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.lookup_key(ParticipantRef::Short(bob.fingerprint().short_id()))
            .await
            .unwrap()
            .len(),
        1
    );

    // A malformed frame closes only that session, with an explanation, and is counted.
    let frames_before =
        a.metric("echomesh_frame_errors_total{kind=\"undecodable\",role=\"client\"}");
    let (conn, mut w, mut r) = session(&a).await.split();
    w.write_raw(&[0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    match r.next_event().await {
        Ok(Some(ClientEvent::Error { message, .. })) => {
            assert!(message.contains("decoded"), "{message}")
        }
        other => panic!("expected an error event, got {other:?}"),
    }
    conn.closed().await;
    assert_eq!(
        a.metric("echomesh_frame_errors_total{kind=\"undecodable\",role=\"client\"}"),
        frames_before + 1.0
    );

    // Bob listens; three packets arrive on his inbox tag: tampered, forged, genuine.
    let recv = a.ctl_background(
        &[
            "--json",
            "recv",
            "--node",
            &a.spec(),
            "--key",
            bob_file.to_str().unwrap(),
            "--count",
            "3",
            "--timeout",
            "60",
        ],
        &[],
        "listening",
    );
    let to_bob = Recipient::from_bundle(
        &bob.bundle(BundleKind::Publish, "Bob", unix_now(), true),
        unix_now(),
    )
    .unwrap();
    let tag = tags::tag(
        &tags::inbox_address(&bob.fingerprint()),
        tags::epoch_of(unix_now()),
    );
    let mut tampered = e2e::seal(&alice, &to_bob, Content::Text("tampered".into())).unwrap();
    let at = tampered.len() - 10;
    tampered[at] ^= 0x40;
    let body = Body {
        recipient: bob.fingerprint(),
        sent_at_ms: echomesh_proto::clock::unix_ms(),
        nonce: rand::random(),
        content: Content::Text("send money to Eve".into()),
    };
    let forged = e2e::seal_parts(alice.public_der(), &eve, &to_bob, &body).unwrap();
    let genuine = e2e::seal(&alice, &to_bob, Content::Text("genuine".into())).unwrap();
    for payload in [tampered, forged, genuine] {
        inject_one(&mut s, EchoPacket::new(Bytes::from(payload), 16, Some(tag))).await;
    }
    let (ok, lines) = tokio::task::spawn_blocking(move || recv.finish(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(ok, "{lines:?}");
    let msgs = json_lines(&lines);
    assert_eq!(msgs[0]["status"], "rejected");
    assert!(
        msgs[0]["reason"].as_str().unwrap().contains("altered"),
        "{}",
        msgs[0]
    );
    assert_eq!(msgs[1]["status"], "rejected");
    assert_eq!(msgs[1]["from"], alice.fingerprint().short_id().to_string());
    assert!(
        msgs[1]["reason"].as_str().unwrap().contains("signature"),
        "{}",
        msgs[1]
    );
    assert_eq!(msgs[2]["status"], "verified");
    assert_eq!(msgs[2]["text"], "genuine");
    assert!(a.http_get("/readyz").0 == 200);
}

/// Done-when 4: a client that subscribes and never reads holds at most its queue bound in
/// the node while 10 000 packets flow, loses packets (counted) instead, and is told it lagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stays_within_its_bound() {
    const BOUND: usize = 1 << 20;
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("small.toml");
    std::fs::write(
        &cfg,
        // The packet log (echo.log_bytes) keeps recent packets whoever reads them; it has its
        // own bound, kept small here so that RSS measures what the slow client costs.
        format!("[limits]\nclient_queue_bytes = {BOUND}\n[echo]\nmax_payload_bytes = 65536\nlog_bytes = 4194304\n"),
    )
    .unwrap();
    let a = TestNode::start(
        root.path(),
        "a",
        0,
        &["--config".into(), cfg.display().to_string()],
    );
    let rss_before = a.metric("process_resident_memory_bytes");

    let mut slow = session(&a).await;
    slow.subscribe(SubscribeFilter::All).await.unwrap();
    // From here on `slow` is never read while the traffic flows.
    let spec = a.spec();
    let node = std::sync::Arc::new(a);
    let n2 = node.clone();
    let out = tokio::task::spawn_blocking(move || {
        n2.ctl_ok(&[
            "--json", "inject", "--node", &spec, "--count", "10000", "--size", "8192",
        ])
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["accepted"], 10000, "{v}");

    // The gauge is sampled every second: wait for a sample taken after the flood.
    let dropped = node.metric("echomesh_packets_dropped_total{reason=\"client_queue_full\"}");
    let n3 = node.clone();
    let queued = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(10), "client queue gauge", || {
            let q = n3.metric("echomesh_client_queue_bytes");
            (q > 0.0).then_some(q)
        })
    })
    .await
    .unwrap();
    assert!(
        queued <= BOUND as f64,
        "client queue holds {queued} bytes, bound {BOUND}"
    );
    // 80 MB flowed. What escaped the drop is bounded: the client's queue, one frame being
    // written, and the client's QUIC stream window (data its stack accepted but it never read).
    let escaped =
        (BOUND + (256 << 10) + echomesh_client::transport::STREAM_RECEIVE_WINDOW as usize) / 8192;
    assert!(
        dropped >= (10_000 - escaped) as f64,
        "only {dropped} packets dropped for the slow client (at most {escaped} could escape)"
    );
    let rss_after = node.metric("process_resident_memory_bytes");
    eprintln!(
        "slow client: {dropped} dropped, queue {queued} B, node RSS +{:.1} MiB",
        (rss_after - rss_before) / 1048576.0
    );
    assert!(
        rss_after - rss_before < 48.0 * 1024.0 * 1024.0,
        "node RSS grew by {} MiB",
        (rss_after - rss_before) / 1048576.0
    );

    // When it finally reads, the client is told how much it missed.
    let lagged = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.next_event().await.unwrap() {
                Some(ClientEvent::Lagged { dropped }) => return dropped,
                Some(_) => {}
                None => panic!("node closed the slow session"),
            }
        }
    })
    .await
    .expect("a Lagged notice");
    assert!(lagged > 0);
    assert!(node.http_get("/readyz").0 == 200);
}

/// A node that joins after keys were published catches up (the directory is offered to new
/// neighbors); a revocation floods too, and nobody can send to a revoked key. Typos in IDs
/// are caught by the client before any lookup.
#[test]
fn late_joiner_learns_the_directory_and_revocations_are_final() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let (bob_key, bob_id) = gen_key(&a, root.path(), "bob", &[], &["--no-passphrase"]);
    let (alice_key, _) = gen_key(&a, root.path(), "alice", &[], &["--no-passphrase"]);
    publish(&a, &bob_key, "Bob", &[]);

    let b = TestNode::start(root.path(), "b", 0, &[]);
    a.link(&b);
    wait_known(&b, &bob_id);

    let out = a.ctl_ok(&[
        "--json",
        "keys",
        "revoke",
        "--node",
        &a.spec(),
        "--key",
        bob_key.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "revoked");
    wait_for(Duration::from_secs(20), "the revocation to reach b", || {
        let out = b.ctl_ok(&["--json", "keys", "lookup", "--node", &b.spec(), &bob_id]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["status"] == "revoked").then_some(())
    });
    let send = b.ctl(&[
        "send",
        "--node",
        &b.spec(),
        "--key",
        alice_key.to_str().unwrap(),
        "--to",
        &bob_id,
        "hi",
    ]);
    assert_eq!(send.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&send.stderr).contains("revoked"),
        "{send:?}"
    );
    // Publishing the revoked key again is refused with the reason.
    let again = a.ctl(&[
        "keys",
        "publish",
        "--node",
        &a.spec(),
        "--key",
        bob_key.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("revoked"),
        "{again:?}"
    );
    assert_eq!(
        a.metric("echomesh_key_bundles_rejected_total{reason=\"revoked\"}"),
        1.0
    );

    // One wrong character: detected locally, not routed to a stranger.
    let mut typo: Vec<char> = bob_id.chars().collect();
    typo[3] = if typo[3] == 'X' { 'Y' } else { 'X' };
    let typo: String = typo.into_iter().collect();
    let out = b.ctl(&["keys", "lookup", "--node", &b.spec(), &typo]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("typo"),
        "{out:?}"
    );

    // A protected key needs its passphrase, and a wrong one is a clear error.
    let (locked, _) = gen_key(&a, root.path(), "locked", &[PASS], &[]);
    let wrong = a
        .ctl_cmd()
        .env("ECHOMESH_PASSPHRASE", "nope")
        .args(["keys", "show", "--key", locked.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"),
        "{wrong:?}"
    );
    let none = a.ctl(&["keys", "show", "--key", locked.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("ECHOMESH_PASSPHRASE"),
        "{none:?}"
    );
}

/// The 2 000 RSA-3072 key bundles of `tests/fixtures/keydir-2000.bin` (made once by the
/// `keydir-fixtures` binary: key generation is slow).
fn keydir_fixtures() -> Vec<echomesh_proto::keydir::KeyBundle> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/keydir-2000.bin");
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut rest = raw.as_slice();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        out.push(echomesh_proto::keydir::KeyBundle::decode(&tail[..len]).expect("fixture bundle"));
        rest = &tail[len..];
    }
    out
}

async fn publish_all(n: &TestNode, bundles: &[echomesh_proto::keydir::KeyBundle]) {
    let mut s = session(n).await;
    for b in bundles {
        assert!(
            s.publish_key(b.clone()).await.expect("publish"),
            "fixture refused"
        );
    }
}

/// Directory sync by digest: a neighbor that comes back with the same 2 000 bundles costs
/// less than 1 % of the directory's bytes, and one that missed 100 is offered exactly those
/// and gets them all, even when it restarted faster than the failure detector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_neighbors_exchange_only_the_directory_difference() {
    let bundles = keydir_fixtures();
    assert_eq!(bundles.len(), 2000);
    let directory_bytes: usize = bundles.iter().map(|b| b.encode().unwrap().len()).sum();
    let root = tempfile::tempdir().unwrap();
    // A one-second packet log: the 100 bundles published while b is down are gone from it by
    // the time b comes back, so echo repair cannot bring them; only the directory sync can.
    // A slow failure detector (heartbeats every 5 s): b's restart is faster than a notices,
    // so a holds b's dead connection beside the new one while it offers (only the newest
    // connection may take from the queue, or part of the offer goes down the dead one).
    let cfg = root.path().join("short-log.toml");
    std::fs::write(
        &cfg,
        "[echo]\nlog_secs = 1\n[peer]\nheartbeat_ms = 5000\nsuspect_ms = 30000\nfail_ms = 60000\n",
    )
    .unwrap();
    let cfg_args = ["--config".to_string(), cfg.display().to_string()];
    let a = TestNode::start(root.path(), "a", 0, &cfg_args);
    let mut b = TestNode::start(root.path(), "b", 0, &cfg_args);
    a.link(&b);
    publish_all(&a, &bundles[..1900]).await;
    wait_for(Duration::from_secs(60), "1 900 bundles on b", || {
        (b.metric("echomesh_key_bundles") == 1900.0).then_some(())
    });

    // b misses 100, and a's log forgets them before b is back.
    let silent = |n: &TestNode| {
        n.metric("echomesh_member_transitions_total{to=\"suspect\"}")
            + n.metric("echomesh_member_transitions_total{to=\"failed\"}")
    };
    let before = silent(&a);
    b.kill9();
    wait_for(
        Duration::from_secs(20),
        "a's log to forget the 1 900",
        || (a.metric("echomesh_packet_log_bytes") == 0.0).then_some(()),
    );
    let evicted = a.metric("echomesh_packet_log_evictions_total");
    publish_all(&a, &bundles[1900..]).await;
    wait_for(
        Duration::from_secs(20),
        "the 100 to leave a's packet log",
        || (a.metric("echomesh_packet_log_evictions_total") >= evicted + 100.0).then_some(()),
    );
    assert_eq!(
        silent(&a),
        before,
        "a must not have noticed that b was gone"
    );
    assert_eq!(a.metric("echomesh_neighbors{state=\"up\"}"), 1.0);
    let offered = a.metric("echomesh_keydir_sync_offered_total");
    let differed = a.metric("echomesh_keydir_syncs_total{result=\"differed\"}");
    b.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while b.metric("echomesh_key_bundles") != 2000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "b holds {} bundles; drops {}; offered by a {}; b's offers {:?}",
            b.metric("echomesh_key_bundles"),
            b.http_get("/metrics")
                .1
                .lines()
                .filter(|l| l.starts_with("echomesh_packets_dropped_total") && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("; "),
            a.metric("echomesh_keydir_sync_offered_total") - offered,
            b.http_get("/metrics")
                .1
                .lines()
                .filter(|l| l.starts_with("echomesh_key_bundles_offered_total")
                    || l.starts_with("echomesh_key_bundles_rejected_total"))
                .filter(|l| !l.ends_with(" 0"))
                .collect::<Vec<_>>(),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(Duration::from_secs(10), "a's sync with b", || {
        (a.metric("echomesh_keydir_syncs_total{result=\"differed\"}") > differed).then_some(())
    });
    assert_eq!(
        a.metric("echomesh_keydir_sync_offered_total") - offered,
        100.0
    );
    wait_for(Duration::from_secs(10), "b's sync with a", || {
        (b.metric("echomesh_keydir_syncs_total{result=\"in_sync\"}") == 1.0).then_some(())
    });
    assert_eq!(b.metric("echomesh_keydir_sync_offered_total"), 0.0);

    // Both hold the same 2 000: a reconnect costs the digests.
    let sent_before = a.metric("echomesh_keydir_sync_bytes_total");
    let in_sync = a.metric("echomesh_keydir_syncs_total{result=\"in_sync\"}");
    b.restart();
    wait_for(
        Duration::from_secs(30),
        "both syncs after the reconnect",
        || {
            (a.metric("echomesh_keydir_syncs_total{result=\"in_sync\"}") > in_sync
                && b.metric("echomesh_keydir_syncs_total{result=\"in_sync\"}") == 1.0)
                .then_some(())
        },
    );
    let sent = a.metric("echomesh_keydir_sync_bytes_total") - sent_before
        + b.metric("echomesh_keydir_sync_bytes_total");
    eprintln!("reconnect: {sent} bytes for a directory of {directory_bytes} bytes");
    assert!(
        sent < directory_bytes as f64 / 100.0,
        "{sent} bytes exchanged for a directory of {directory_bytes}"
    );
    assert_eq!(a.metric("echomesh_key_bundles"), 2000.0);
    assert_eq!(b.metric("echomesh_key_bundles"), 2000.0);
}
