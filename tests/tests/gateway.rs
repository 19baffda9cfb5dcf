//! echomesh-gateway end to end: real node processes, a real gateway process, the documented
//! Python webhook receiver as a real process, the real `echomeshctl` for citizens and staff.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use echomesh_tests::gateway::{client, Receiver, TestGateway};
use echomesh_tests::{bin, cluster_of_three, wait_for, TestNode};

fn publish(n: &TestNode, key: &Path, name: &str) {
    n.ctl_ok(&[
        "keys",
        "publish",
        "--node",
        &n.spec(),
        "--key",
        key.to_str().unwrap(),
        "--name",
        name,
    ]);
}

/// `echomeshctl --json recv` of one message with `key` on `n` (`extra`: recv's own flags).
fn recv_one(n: &TestNode, key: &Path, extra: &[&str]) -> std::process::Output {
    let spec = n.spec();
    let mut args = vec![
        "--json",
        "recv",
        "--node",
        &spec,
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend(["--count", "1", "--timeout", "30"]);
    args.extend_from_slice(extra);
    n.ctl(&args)
}

/// `echomeshctl send` with `key` on `n` to `to`: a text, or `--file PATH`.
fn send(n: &TestNode, key: &Path, to: &str, what: &[&str]) {
    let spec = n.spec();
    let mut args = vec![
        "send",
        "--node",
        &spec,
        "--key",
        key.to_str().unwrap(),
        "--to",
        to,
    ];
    args.extend_from_slice(what);
    n.ctl_ok(&args);
}

fn secret_file(dir: &Path) -> PathBuf {
    let p = dir.join("webhook.secret");
    std::fs::write(
        &p,
        format!("  {}\n", hex::encode(rand::random::<[u8; 24]>())),
    )
    .unwrap();
    p
}

fn gateway_token(g: &TestGateway, name: &str, scopes: &[&str]) -> String {
    let mut c = Command::new(bin("echomesh-gateway"));
    c.arg("--data-dir")
        .arg(&g.dir)
        .args(["token", "create", "--name", name]);
    for s in scopes {
        c.args(["--scope", s]);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn wait_state(g: &TestGateway, id: &str, want: &str, within: Duration) -> serde_json::Value {
    wait_for(within, &format!("message {id} to be {want}"), || {
        let (s, v) = g.get(&format!("/v1/messages/{id}"));
        (s == 200
            && v["recipients"]
                .as_array()?
                .iter()
                .all(|r| r["state"] == want))
        .then_some(v)
    })
}

/// Done-when 1, 2 and 4: a ticket system's message reaches the caretaker verified from the
/// gateway's service ID; a citizen's photo reaches the Ordnungsamt's webhook byte for byte,
/// verified and signed; a message accepted (202) while the mesh cannot take it survives a
/// kill -9 of the gateway; messages sent while the gateway is dead wait in its mailbox and
/// arrive once each after the restart.
#[test]
fn city_software_and_citizens_reach_each_other_through_the_gateway() {
    let root = tempfile::tempdir().unwrap();
    let people = tempfile::tempdir().unwrap();
    let (nodes, _) = cluster_of_three(root.path(), &[]);
    let a = nodes[0].lock().unwrap();
    let mut b = nodes[1].lock().unwrap();
    let mut c = nodes[2].lock().unwrap();
    let (caretaker_key, caretaker_id) = a.gen_key(people.path(), "caretaker");
    publish(&b, &caretaker_key, "Hausmeister Schmidt");
    let (citizen_key, citizen_id) = a.gen_key(people.path(), "citizen");
    publish(&c, &citizen_key, "Erika Mustermann");

    let secret = secret_file(people.path());
    let receiver = Receiver::start(&people.path().join("receiver"), &secret);
    let gw_args = vec![
        "--node".to_string(),
        a.spec(),
        "--identity".into(),
        "hausmeister-dienst".into(),
        "--identity".into(),
        "ordnungsamt".into(),
        "--webhook".into(),
        receiver.url(),
        "--webhook-secret-file".into(),
        secret.to_str().unwrap().into(),
    ];
    let mut gw = TestGateway::start(&root.path().join("gateway"), &gw_args);
    let hausmeister_id = gw.identity_id("hausmeister-dienst");
    let amt_id = gw.identity_id("ordnungsamt");

    // 1. The ticket system, with a token that may only send as the caretaker service.
    let tickets = gateway_token(&gw, "tickets", &["send:hausmeister-dienst"]);
    a.wait_known(&caretaker_id);
    let body = serde_json::json!({"from": "hausmeister-dienst", "to": [caretaker_id], "text": "repair approved: window in room 204"});
    let (s, _, v) = gw.post_json(&tickets, "/v1/messages", &body.to_string());
    assert_eq!(s, 202, "{v}\n{}", gw.log_tail());
    let id = v["id"].as_str().unwrap().to_string();
    wait_state(&gw, &id, "deposited", Duration::from_secs(30));
    let out = recv_one(&b, &caretaker_key, &[]);
    let line: serde_json::Value = serde_json::from_slice(
        out.stdout.split(|c| *c == b'\n').next().unwrap(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "recv: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(line["status"], "verified", "{line}");
    assert_eq!(line["from"], hausmeister_id.as_str());
    assert_eq!(line["text"], "repair approved: window in room 204");

    // The timetable form: multipart with a file.
    let plan: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let form = reqwest::blocking::multipart::Form::new()
        .text("from", "hausmeister-dienst")
        .text("to", caretaker_id.clone())
        .part(
            "file",
            reqwest::blocking::multipart::Part::bytes(plan.clone()).file_name("plan-7b.pdf"),
        );
    let r = client()
        .post(gw.url("/v1/messages"))
        .bearer_auth(&tickets)
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id: serde_json::Value = r.json().unwrap();
    wait_state(
        &gw,
        id["id"].as_str().unwrap(),
        "deposited",
        Duration::from_secs(30),
    );
    let files = people.path().join("caretaker-files");
    let out = recv_one(&b, &caretaker_key, &["--out-dir", files.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(files.join("plan-7b.pdf")).unwrap() == plan);

    // 2. A citizen's photo to the Ordnungsamt arrives at the webhook, exact bytes, verified.
    c.wait_known(&amt_id);
    let photo: Vec<u8> = (0..300 * 1024).map(|_| rand::random::<u8>()).collect();
    let photo_path = people.path().join("falschparker.jpg");
    std::fs::write(&photo_path, &photo).unwrap();
    send(
        &c,
        &citizen_key,
        &amt_id,
        &["--file", photo_path.to_str().unwrap()],
    );
    let rec = wait_for(Duration::from_secs(60), "the photo at the webhook", || {
        receiver
            .recorded()
            .into_iter()
            .find(|m| m["file"].is_object())
    });
    assert_eq!(rec["verified"], true);
    assert_eq!(rec["from_id"], citizen_id.as_str());
    assert_eq!(rec["from_name"], "Erika Mustermann");
    assert_eq!(rec["identity"], "ordnungsamt");
    assert_eq!(rec["file"]["name"], "falschparker.jpg");
    let stored = std::fs::read(
        receiver
            .dir
            .join("files")
            .join(format!("{}-falschparker.jpg", rec["id"].as_str().unwrap())),
    )
    .unwrap();
    assert!(
        stored == photo,
        "the receiver's bytes differ from the photo"
    );
    // The receiver records only deliveries whose signature it verified; none was refused.
    assert_eq!(
        gw.metric("echomesh_gateway_webhook_attempts_total{result=\"http_error\"}"),
        0.0
    );

    // 4a. Accepted while the mesh cannot store it (two of three nodes down: no write quorum),
    // then the gateway is killed -9: after the restart, the message is delivered.
    b.kill9();
    c.kill9();
    let body = serde_json::json!({"from": "hausmeister-dienst", "to": [caretaker_id], "text": "heating fixed"});
    let (s, _, v) = gw.post_json(&tickets, "/v1/messages", &body.to_string());
    assert_eq!(s, 202, "{v}\n{}", gw.log_tail());
    let id = v["id"].as_str().unwrap().to_string();
    let (_, state) = gw.get(&format!("/v1/messages/{id}"));
    assert_eq!(state["recipients"][0]["state"], "queued", "{state}");
    gw.kill9();
    b.restart();
    c.restart();
    b.wait_neighbor_up(&a);
    c.wait_neighbor_up(&a);
    // 4b. While the gateway is dead, a citizen writes three times.
    for t in [
        "Auto blockiert Einfahrt",
        "Fahrrad am Geländer",
        "Müll am Straßenrand",
    ] {
        send(&c, &citizen_key, &amt_id, &[t]);
    }
    gw.restart();
    wait_state(&gw, &id, "deposited", Duration::from_secs(60));
    let out = recv_one(&b, &caretaker_key, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("heating fixed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let texts = wait_for(
        Duration::from_secs(60),
        "three texts at the webhook",
        || {
            let t: Vec<String> = receiver
                .recorded()
                .iter()
                .filter_map(|m| m["text"].as_str().map(String::from))
                .collect();
            (t.len() >= 3).then_some(t)
        },
    );
    // Give a duplicate time to show up, then check each arrived exactly once.
    std::thread::sleep(Duration::from_secs(2));
    let mut texts2: Vec<String> = receiver
        .recorded()
        .iter()
        .filter_map(|m| m["text"].as_str().map(String::from))
        .collect();
    texts2.sort();
    assert_eq!(
        texts2,
        vec![
            "Auto blockiert Einfahrt",
            "Fahrrad am Geländer",
            "Müll am Straßenrand"
        ],
        "first seen {texts:?}"
    );
}

/// Done-when 3: the webhook receiver is down for 30 s; every message arrives afterwards, each
/// id delivered at least once, and the receiver (by the documented rule) records each once.
/// Then the gateway's only configured node drains and stops: the gateway follows its
/// redirect, and sending and receiving go on.
#[test]
fn a_webhook_outage_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let people = tempfile::tempdir().unwrap();
    let (nodes, _) = cluster_of_three(root.path(), &[]);
    let a = nodes[0].lock().unwrap();
    let (citizen_key, _) = a.gen_key(people.path(), "citizen");
    publish(&a, &citizen_key, "Citizen");
    let secret = secret_file(people.path());
    let mut receiver = Receiver::start(&people.path().join("receiver"), &secret);
    let cfg = people.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[webhook]\nmin_backoff_secs = 0.5\nmax_backoff_secs = 2.0\n",
    )
    .unwrap();
    let gw = TestGateway::start(
        &root.path().join("gateway"),
        &[
            "--config".into(),
            cfg.to_str().unwrap().into(),
            "--node".into(),
            a.spec(),
            "--identity".into(),
            "ordnungsamt".into(),
            "--webhook".into(),
            receiver.url(),
            "--webhook-secret-file".into(),
            secret.to_str().unwrap().into(),
        ],
    );
    let amt_id = gw.identity_id("ordnungsamt");
    a.wait_known(&amt_id);
    receiver.down();
    let down_at = std::time::Instant::now();
    let texts: Vec<String> = (0..6).map(|i| format!("Meldung {i}")).collect();
    for t in &texts {
        send(&a, &citizen_key, &amt_id, &[t]);
    }
    wait_for(
        Duration::from_secs(30),
        "six messages waiting in the gateway",
        || (gw.metric("echomesh_gateway_inbox_pending") == 6.0).then_some(()),
    );
    let failed_while_down = wait_for(Duration::from_secs(30), "failed attempts", || {
        let n = gw.metric("echomesh_gateway_webhook_attempts_total{result=\"network\"}");
        (n >= 6.0).then_some(n)
    });
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    receiver.up();
    wait_for(
        Duration::from_secs(30),
        "every message at the receiver",
        || (receiver.recorded().len() >= 6).then_some(()),
    );
    wait_for(Duration::from_secs(10), "the inbox to empty", || {
        (gw.metric("echomesh_gateway_inbox_pending") == 0.0).then_some(())
    });
    let recorded = receiver.recorded();
    let mut got: Vec<String> = recorded
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, texts, "each message recorded exactly once");
    let ids: std::collections::HashSet<String> = recorded
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let deliveries = receiver.deliveries();
    assert!(
        ids.iter().all(|id| deliveries.contains(id)),
        "every id delivered at least once"
    );
    assert!(failed_while_down >= 6.0);
    assert_eq!(gw.metric("echomesh_gateway_dead_letters"), 0.0);

    // The node drains (clients redirected) and stops.
    drop(a);
    let mut a = nodes[0].lock().unwrap();
    let b = nodes[1].lock().unwrap();
    let out = a.ctl(&["drain", "--wait", "--deadline", "30"]);
    assert!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(a.terminate().success());
    send(&b, &citizen_key, &amt_id, &["nach dem Umzug"]);
    wait_for(
        Duration::from_secs(60),
        "the message after the move",
        || {
            receiver
                .recorded()
                .iter()
                .any(|m| m["text"] == "nach dem Umzug")
                .then_some(())
        },
    );
    let citizen_id = b.ctl_ok(&[
        "--json",
        "keys",
        "show",
        "--key",
        citizen_key.to_str().unwrap(),
    ]);
    let citizen_id: serde_json::Value = serde_json::from_str(&citizen_id).unwrap();
    let body = serde_json::json!({"from": "ordnungsamt", "to": [citizen_id["id"]], "text": "Vorgang 17 erledigt"});
    let (s, _, v) = gw.post_json(&gw.token, "/v1/messages", &body.to_string());
    assert_eq!(s, 202, "{v}\n{}", gw.log_tail());
    wait_state(
        &gw,
        v["id"].as_str().unwrap(),
        "deposited",
        Duration::from_secs(60),
    );
    assert!(gw.metric("echomesh_gateway_node_sessions_total{why=\"redirect\"}") >= 1.0);
    assert_eq!(receiver.recorded().len(), 7, "nothing twice");
}

/// Done-when 5 and 6: every bad request is a counted problem+json refusal and queues
/// nothing; the OpenAPI document validates and is the one the gateway serves.
#[test]
fn bad_requests_are_clear_problems_and_the_openapi_document_matches() {
    let root = tempfile::tempdir().unwrap();
    let people = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let (_, unpublished_id) = a.gen_key(people.path(), "nobody");
    let cfg = people.path().join("gateway.toml");
    // The webhook points at a port nobody listens on, and gives up after a second.
    std::fs::write(
        &cfg,
        "[limits]\nmax_body_bytes = 4096\n[webhook]\nmin_backoff_secs = 0.2\nmax_backoff_secs = 0.5\ndead_letter_after_secs = 1\n",
    )
    .unwrap();
    let secret = secret_file(people.path());
    let dead_port = echomesh_tests::echo::free_tcp_port();
    let gw = TestGateway::start(
        &root.path().join("gateway"),
        &[
            "--config".into(),
            cfg.to_str().unwrap().into(),
            "--node".into(),
            a.spec(),
            "--identity".into(),
            "ordnungsamt".into(),
            "--identity".into(),
            "schulamt".into(),
            "--webhook".into(),
            format!("http://127.0.0.1:{dead_port}/hook"),
            "--webhook-secret-file".into(),
            secret.to_str().unwrap().into(),
        ],
    );
    let narrow = gateway_token(&gw, "timetable", &["send:schulamt"]);
    let mut typo = unpublished_id.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == '2' { '3' } else { '2' });
    let ok_body =
        |to: &str| serde_json::json!({"from": "ordnungsamt", "to": [to], "text": "x"}).to_string();
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("wrong token", "emg_not-a-token".into(), ok_body(&unpublished_id), 401, "unauthorized"),
        ("wrong scope", narrow.clone(), ok_body(&unpublished_id), 403, "forbidden"),
        ("oversized body", gw.token.clone(), serde_json::json!({"from": "ordnungsamt", "to": [unpublished_id], "text": "x".repeat(8000)}).to_string(), 413, "too_large"),
        ("malformed JSON", gw.token.clone(), "{\"from\": \"ordnungsamt\", \"to\": [".into(), 400, "malformed"),
        ("unknown recipient", gw.token.clone(), ok_body(&unpublished_id), 422, "unknown_recipient"),
        ("ID with a typo", gw.token.clone(), ok_body(&typo), 400, "bad_recipient"),
    ];
    for (what, token, body, status, reason) in cases {
        let before = gw.metric(&format!(
            "echomesh_gateway_refusals_total{{reason=\"{reason}\"}}"
        ));
        let (s, ct, v) = gw.post_json(&token, "/v1/messages", &body);
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(ct, "application/problem+json", "{what}");
        assert_eq!(v["status"], status, "{what}: {v}");
        assert_eq!(
            v["type"],
            format!("urn:echomesh:gateway:problem:{reason}"),
            "{what}: {v}"
        );
        assert!(
            v["detail"].as_str().is_some_and(|d| d.len() > 10),
            "{what}: {v}"
        );
        let after = gw.metric(&format!(
            "echomesh_gateway_refusals_total{{reason=\"{reason}\"}}"
        ));
        assert_eq!(after, before + 1.0, "{what}: refusal counted");
    }
    assert_eq!(
        gw.metric("echomesh_gateway_messages_accepted_total"),
        0.0,
        "nothing queued"
    );
    assert_eq!(
        gw.metric("echomesh_gateway_outbox_messages"),
        0.0,
        "nothing queued"
    );

    // 6. The served document is the generated one, it validates, and every path it lists is
    // served (a route missing from the router answers the fallback's not_found problem).
    let served = client()
        .get(gw.url("/openapi.json"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let printed = Command::new(bin("echomesh-gateway"))
        .arg("openapi")
        .output()
        .unwrap();
    assert_eq!(
        served.trim(),
        String::from_utf8_lossy(&printed.stdout).trim()
    );
    let file = people.path().join("openapi.json");
    std::fs::write(&file, &served).unwrap();
    let check =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-openapi"))
            .arg(&file)
            .output()
            .unwrap();
    assert!(
        check.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{:?}", paths.keys());
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = gw.url(&path.replace("{id}", "0000"));
            let r = client()
                .request(method.to_uppercase().parse().unwrap(), url)
                .bearer_auth(&gw.token)
                .send()
                .unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().unwrap_or_default();
            assert!(
                status != 405 && v["detail"] != "no such route; see /openapi.json",
                "{method} {path} is documented but not served ({status} {v})"
            );
        }
    }
    let r = client()
        .get(gw.url("/v1/undocumented"))
        .bearer_auth(&gw.token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Dead letters: one identity writes to the other; the webhook never answers, so the
    // message is dead-lettered, listed, replayed (and dead again), then pulled and acknowledged.
    let schulamt = gw.identity_id("schulamt");
    a.wait_known(&schulamt);
    let body = serde_json::json!({"from": "ordnungsamt", "to": [schulamt], "text": "Amtshilfe"});
    let (s, _, v) = gw.post_json(&gw.token, "/v1/messages", &body.to_string());
    assert_eq!(s, 202, "{v}");
    let dead = wait_for(Duration::from_secs(60), "a dead letter", || {
        let (_, v) = gw.get("/v1/dead-letters");
        let m = v["messages"].as_array()?.first()?.clone();
        Some(m)
    });
    assert_eq!(dead["text"], "Amtshilfe");
    assert_eq!(dead["state"], "dead");
    assert!(dead["attempts"].as_u64().unwrap() >= 1);
    assert_eq!(gw.metric("echomesh_gateway_dead_letters"), 1.0);
    let id = dead["id"].as_str().unwrap();
    let (s, _, v) = gw.post_json(&gw.token, &format!("/v1/dead-letters/{id}/replay"), "");
    assert_eq!((s, v["state"].as_str()), (200, Some("pending")), "{v}");
    assert_eq!(
        gw.metric("echomesh_gateway_dead_letters_replayed_total"),
        1.0
    );
    // Pull it instead: listed in the inbox (or dead again by now), acknowledged once.
    let (_, v) = gw.get(&format!("/v1/inbox/{id}"));
    assert!(v["state"] == "pending" || v["state"] == "dead", "{v}");
    let (s, _, v) = gw.post_json(&gw.token, &format!("/v1/inbox/{id}/ack"), "");
    assert_eq!((s, v["state"].as_str()), (200, Some("delivered")), "{v}");
    let (_, v) = gw.get("/v1/dead-letters");
    assert_eq!(v["messages"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(gw.metric("echomesh_gateway_dead_letters"), 0.0);
    assert_eq!(
        gw.metric("echomesh_gateway_delivered_total{via=\"pull\"}"),
        1.0
    );
}
