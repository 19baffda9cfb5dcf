//! Command-line contracts: configuration layering, clear errors and exit codes.

use std::process::Command;

use echomesh_tests::{bin, TestNode};

#[test]
fn print_config_layers_file_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "cluster = \"from-file\"\n[echo]\nseen_ttl_secs = 42\n",
    )
    .unwrap();
    let out = Command::new(bin("echomesh-node"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--print-config",
            "--admin",
            "127.0.0.1:9999",
        ])
        .env("ECHOMESH_LIMITS__MAX_CLIENTS", "77")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cluster = \"from-file\""), "{text}");
    assert!(text.contains("seen_ttl_secs = 42"));
    assert!(text.contains("max_clients = 77"));
    assert!(text.contains("admin = \"127.0.0.1:9999\""));
    assert!(
        text.contains("listen = \"0.0.0.0:4710\""),
        "default port is 4710"
    );
}

#[test]
fn broken_config_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (content, needle) in [
        ("clustr = \"typo\"\n", "clustr"),
        ("[limits]\nmax_frame_bytes = 10\n", "max_frame_bytes"),
        ("neighbors = [\"10.0.0.1:4710\"]\n", "FINGERPRINT"),
        ("this is not toml", "TOML"),
    ] {
        std::fs::write(&cfg, content).unwrap();
        let out = Command::new(bin("echomesh-node"))
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "--data-dir",
                dir.path().join("d").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{content}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{content}: {err}"
        );
    }
    let out = Command::new(bin("echomesh-node"))
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn second_node_on_the_same_data_dir_fails_clearly() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let out = Command::new(bin("echomesh-node"))
        .args([
            "--data-dir",
            a.dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another echomesh-node"));
}

#[test]
fn ctl_exit_codes_and_messages() {
    // Usage error: exit 2.
    let out = Command::new(bin("echomeshctl"))
        .args(["inject"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // No node listening: exit 1 and a hint.
    let out = Command::new(bin("echomeshctl"))
        .args(["--admin", "http://127.0.0.1:9", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Is echomesh-node running?"));
    // Bad fingerprint in --node: usage error.
    let out = Command::new(bin("echomeshctl"))
        .args(["tail", "--node", "127.0.0.1:4710#abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn ctl_with_wrong_token_is_refused_and_client_pins_fingerprint() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start(root.path(), "a", 0, &[]);
    let bad = root.path().join("bad.token");
    std::fs::write(&bad, "0".repeat(64)).unwrap();
    let out = Command::new(bin("echomeshctl"))
        .args([
            "--admin",
            &format!("http://{}", a.info.admin),
            "--token-file",
            bad.to_str().unwrap(),
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));

    // Wrong pinned fingerprint: refused before anything is sent.
    let wrong = format!("{}#{}", a.info.quic, "ab".repeat(32));
    let out = a.ctl(&["inject", "--node", &wrong, "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the expected"));

    // Trust on first use: recorded, then a different node at that address is a hard error.
    let addr = a.info.quic.to_string();
    let out = a.ctl(&["inject", "--node", &addr, "tofu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known = std::fs::read_to_string(a.dir.join("known_nodes")).unwrap();
    assert!(known.contains(a.fingerprint()));
    std::fs::write(
        a.dir.join("known_nodes"),
        format!("{addr} {}\n", "cd".repeat(32)),
    )
    .unwrap();
    let out = a.ctl(&["inject", "--node", &addr, "tofu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs from the one recorded"));
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let mut a = TestNode::start(root.path(), "a", 0, &[]);
    let st = a.terminate();
    assert_eq!(st.code(), Some(0));
    assert!(
        !a.dir.join("runtime.json").exists(),
        "runtime.json is removed on a clean stop"
    );
    let log = std::fs::read_to_string(a.dir.join("node.log")).unwrap();
    assert!(log.contains("node stopped"));
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when logging to a file"
    );
}

/// `reload` and SIGHUP re-read the configuration: static neighbors follow the file, what
/// needs a restart is listed, and an invalid file is refused while the running one stays.
#[test]
fn reload_applies_neighbors_and_refuses_a_broken_file() {
    let root = tempfile::tempdir().unwrap();
    // b and c pin a from the start; a's config file decides which of them a pins.
    let plan = echomesh_tests::Plan::new(root.path(), &["a", "b", "c"]);
    let b = plan.start(1, &echomesh_tests::Plan::neighbor_flags(&[plan.spec(0)]));
    let c = plan.start(2, &echomesh_tests::Plan::neighbor_flags(&[plan.spec(0)]));
    let cfg = root.path().join("a.toml");
    let write = |neighbors: &[String], extra: &str| {
        let list: Vec<String> = neighbors.iter().map(|n| format!("{n:?}")).collect();
        std::fs::write(&cfg, format!("neighbors = [{}]\n{extra}", list.join(", "))).unwrap();
    };
    write(&[b.spec()], "");
    let a = plan.start(0, &["--config".into(), cfg.display().to_string()]);
    let fps = |n: &TestNode| -> Vec<String> {
        n.neighbors()
            .iter()
            .map(|x| x["fingerprint"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(fps(&a), vec![b.fingerprint().to_string()]);
    a.wait_neighbor_up(&b);
    let ups = |n: &TestNode| {
        std::fs::read_to_string(n.dir.join("node.log"))
            .unwrap()
            .matches("neighbor up")
            .count()
    };
    assert_eq!(ups(&b), 1);

    // Adding c connects it; the connection to b is not touched.
    write(
        &[b.spec(), c.spec()],
        "[log]\nlevel = \"debug\"\n[ozone]\nreplicas = 3\nwrite_quorum = 2\n",
    );
    let r: serde_json::Value = serde_json::from_str(&a.ctl_ok(&["--json", "reload"])).unwrap();
    assert!(r["applied"].to_string().contains("added"), "{r}");
    a.wait_neighbor_up(&c);
    assert_eq!(
        ups(&b),
        1,
        "b was reconnected by a reload that only added c"
    );
    // The harness sets RUST_LOG, which wins over log.level: reported, not applied.
    let restart: Vec<&str> = r["restart_needed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(restart.contains(&"ozone"), "{r}");
    assert!(restart.iter().any(|x| x.starts_with("log.level")), "{r}");
    let mut both = vec![b.fingerprint().to_string(), c.fingerprint().to_string()];
    both.sort();
    let sorted = |n: &TestNode| {
        let mut v = fps(n);
        v.sort();
        v
    };
    assert_eq!(sorted(&a), both);

    // Removing b closes only b.
    write(&[c.spec()], "");
    let r: serde_json::Value = serde_json::from_str(&a.ctl_ok(&["--json", "reload"])).unwrap();
    assert!(r["applied"].to_string().contains("removed"), "{r}");
    assert_eq!(fps(&a), vec![c.fingerprint().to_string()]);

    std::fs::write(&cfg, "neighbors = [\"not a neighbor\"]\n").unwrap();
    let out = a.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );
    assert_eq!(
        fps(&a),
        vec![c.fingerprint().to_string()],
        "a refused reload changed something"
    );

    write(&[], "");
    a.signal("-HUP");
    echomesh_tests::wait_for(
        std::time::Duration::from_secs(10),
        "SIGHUP to apply",
        || fps(&a).is_empty().then_some(()),
    );
}

/// The README's quick start as a script: three nodes joined, a packet and a message crossing,
/// everything cleaned up (with the binaries under test, on ports of its own).
#[test]
fn demo_mesh_shows_a_packet_and_a_message_crossing_and_cleans_up() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = 30_000 + (std::process::id() % 1000) * 30;
    let out = Command::new(repo.join("scripts/demo-mesh"))
        .args([
            "--bin-dir",
            echomesh_tests::bin_dir().to_str().unwrap(),
            "--base-port",
            &base.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("C got: hello from A"), "{stdout}");
    assert!(
        stdout.contains("verified hello Bob, from Alice"),
        "{stdout}"
    );
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== starting nodes A, B, C in "))
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
}

/// `echomeshctl bench` runs real `echomesh-node` processes (the binary next to it), links them
/// through their admin APIs and reads the nodes' counters from `/metrics`; a missing node
/// binary is a clear error.
#[test]
fn bench_runs_node_processes_and_delivers_everything_once() {
    let out = Command::new(bin("echomeshctl"))
        .args(["--json", "bench", "--nodes", "3", "--packets", "2000"])
        .args(["--size", "64", "--idle-timeout", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["expected"], 4000, "{r}");
    assert_eq!(r["delivered"], 4000, "{r}");
    assert_eq!(r["duplicates_delivered"], 0, "{r}");
    assert_eq!(r["drops"], 0, "{r}");
    // A triangle floods every packet to a node twice: the second copy is a duplicate the
    // node's seen-cache drops, and the figure comes from the nodes' /metrics.
    assert!(r["duplicates_per_delivery"].as_f64().unwrap() > 0.0, "{r}");
    // CPU per packet, read from /proc (10 ms ticks) for the node processes and the bench
    // itself: three nodes relaying 2 000 packets use tens of milliseconds; the bench's own
    // share can stay under one tick, so it is only checked to be there.
    let cpu = &r["cpu_per_packet"];
    assert!(cpu["nodes_us"].as_f64().unwrap() > 0.0, "{r}");
    assert!(cpu["client_us"].as_f64().unwrap() >= 0.0, "{r}");
    assert!(cpu["cores_busy"].as_f64().unwrap() > 0.0, "{r}");

    let out = Command::new(bin("echomeshctl"))
        .args(["bench", "--nodes", "2", "--packets", "10"])
        .args(["--node-bin", "/nonexistent/echomesh-node"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--node-bin /nonexistent/echomesh-node: no such file"),
        "{err}"
    );
}

/// `echomeshctl bench ozone` with a `--clients` sweep and the replication it is given: every
/// deposit acknowledged on W copies is fetched back, and each point's histogram counts each
/// deposit once. Impossible settings are refused before any node starts.
#[test]
fn bench_ozone_sweeps_clients_with_the_replication_asked_for() {
    let out = Command::new(bin("echomeshctl"))
        .args([
            "--json",
            "bench",
            "ozone",
            "--nodes",
            "3",
            "--clients",
            "1,3",
        ])
        .args(["--messages", "30", "--size", "64", "--replicas", "3"])
        .args(["--write-quorum", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench ozone failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let points: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(points.len(), 2);
    for (p, clients) in points.iter().zip([1, 3]) {
        assert_eq!(p["clients"], clients, "{p}");
        assert_eq!(
            (p["replicas"].clone(), p["write_quorum"].clone()),
            (3.into(), 3.into())
        );
        assert_eq!(p["messages"], 30, "{p}");
        assert_eq!(p["fetched"], 30, "{p}");
        let counted: u64 = p["deposit_latency_histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_u64().unwrap())
            .sum();
        assert_eq!(counted, 30, "{p}");
        assert!(p["deposit_cpu"]["nodes_us"].as_f64().is_some(), "{p}");
    }

    for (args, expect) in [
        (
            vec!["--replicas", "2", "--write-quorum", "3"],
            "need 1 ≤ --write-quorum (3) ≤ --replicas (2) ≤ --nodes (3)",
        ),
        (
            vec!["--clients", "1", "--messages", "20000"],
            "puts 20000 messages in one ozone; the nodes' per-ozone quota is 10000",
        ),
    ] {
        let out = Command::new(bin("echomeshctl"))
            .args(["bench", "ozone", "--nodes", "3"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
}

/// `echomeshctl bench smoke` registers participants with keys, stores ozone copies through
/// real nodes' Echo listener and releases them with one signed retrieval.
#[test]
fn bench_smoke_stores_and_releases_every_copy() {
    let out = Command::new(bin("echomeshctl"))
        .args([
            "--json",
            "bench",
            "smoke",
            "--nodes",
            "2",
            "--participants",
            "20",
        ])
        .args(["--ozones", "2", "--messages", "100", "--size", "512"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench smoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["released"], 100, "{r}");
    assert_eq!(r["search_hmacs_per_frame"], 2 * 20 * 3, "{r}");
    assert!(r["stored_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["node_inspect_mean_us"].as_f64().unwrap() > 0.0, "{r}");
}
