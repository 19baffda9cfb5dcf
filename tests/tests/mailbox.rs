//! Personal mailboxes: a message to someone who is offline waits for them, durably, with real
//! node processes and the real `echomeshctl`.

use std::path::Path;

use echomesh_tests::{cluster_of_three, TestNode};

fn publish(n: &TestNode, key: &Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let spec = n.spec();
    let mut args = vec![
        "--json",
        "keys",
        "publish",
        "--node",
        &spec,
        "--key",
        key.to_str().unwrap(),
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&n.ctl_ok(&args)).unwrap()
}

/// Done-when 3 of "Nothing sent is lost": Alice sends 20 messages and a 1 MiB file to Bob
/// while Bob's client is down; node C (not Alice's) is killed -9 after her last send returned;
/// Bob reads on B and gets all of it once, verified; a second `recv` shows nothing; a
/// recipient without a mailbox is told to be live-only.
#[test]
fn messages_to_someone_offline_wait_in_their_mailbox_and_survive_a_node() {
    let root = tempfile::tempdir().unwrap();
    let people = tempfile::tempdir().unwrap();
    let (nodes, _) = cluster_of_three(root.path(), &[]);
    let a = nodes[0].lock().unwrap();
    let b = nodes[1].lock().unwrap();
    let mut c = nodes[2].lock().unwrap();

    let (alice_key, _alice_id) = a.gen_key(people.path(), "alice");
    let (bob_key, bob_id) = b.gen_key(people.path(), "bob");
    let (carol_key, carol_id) = b.gen_key(people.path(), "carol");
    publish(&a, &alice_key, "Alice", &[]);
    let v = publish(&b, &bob_key, "Bob", &[]);
    assert_eq!(v["mailbox"], true, "{v}");
    let v = publish(&b, &carol_key, "Carol", &["--no-mailbox"]);
    assert_eq!(v["mailbox"], false, "{v}");
    a.wait_known(&bob_id);
    a.wait_known(&carol_id);
    let lookup: serde_json::Value = serde_json::from_str(&a.ctl_ok(&[
        "--json",
        "keys",
        "lookup",
        "--node",
        &a.spec(),
        &bob_id,
    ]))
    .unwrap();
    assert_eq!(lookup["mailbox"], true, "{lookup}");

    // Bob is offline: no recv runs anywhere. Alice sends through A.
    let spec = a.spec();
    let alice = alice_key.to_str().unwrap();
    let send = |tail: &[&str]| {
        let mut args = vec!["--json", "send", "--node", &spec, "--key", alice, "--to"];
        args.extend_from_slice(tail);
        let v: serde_json::Value = serde_json::from_str(&a.ctl_ok(&args)).unwrap();
        v
    };
    let texts: Vec<String> = (0..20).map(|i| format!("note {i} for Bob 9c1e")).collect();
    for t in &texts {
        let v = send(&[&bob_id, t]);
        assert_eq!(v["to"][0]["delivery"], "queued", "{v}");
        assert!(v["to"][0]["copies"].as_u64().unwrap() >= 2, "{v}");
    }
    let file: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    let file_path = people.path().join("plan.pdf");
    std::fs::write(&file_path, &file).unwrap();
    let v = send(&[&bob_id, "--file", file_path.to_str().unwrap()]);
    assert_eq!(v["to"][0]["delivery"], "queued", "{v}");
    assert!(
        v["pieces"].as_u64().unwrap() > 1,
        "a 1 MiB file goes in pieces: {v}"
    );

    // Live only for Carol, and said so in words too.
    let out = a.ctl_ok(&[
        "send", "--node", &spec, "--key", alice, "--to", &carol_id, "hi",
    ]);
    assert!(out.contains("live only"), "{out}");

    // Node C dies after the sends returned.
    c.kill9();

    let bob_dir = people.path().join("bob-files");
    let recv = |count: &str, timeout: &str| {
        b.ctl(&[
            "--json",
            "recv",
            "--node",
            &b.spec(),
            "--key",
            bob_key.to_str().unwrap(),
            "--count",
            count,
            "--timeout",
            timeout,
            "--out-dir",
            bob_dir.to_str().unwrap(),
        ])
    };
    let out = recv("21", "90");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "recv failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(msgs.len(), 21, "{stdout}");
    for m in &msgs {
        assert_eq!(m["status"], "verified", "{m}");
    }
    let mut got_texts: Vec<String> = msgs
        .iter()
        .filter_map(|m| m["text"].as_str().map(String::from))
        .collect();
    got_texts.sort();
    let mut want = texts.clone();
    want.sort();
    assert_eq!(got_texts, want, "each text exactly once");
    assert_eq!(
        std::fs::read(bob_dir.join("plan.pdf")).unwrap(),
        file,
        "file bytes differ"
    );

    // Everything shown was acknowledged: a second recv shows nothing.
    let out = recv("1", "5");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "shown again: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
