//! `echomeshctl sim`: the deterministic simulator through its CLI contract, at 500 nodes (the
//! 1 000-node runs are in scripts/bench-sim).

use echomesh_tests::bin;

fn sim(args: &[&str]) -> String {
    let out = std::process::Command::new(bin("echomeshctl"))
        .arg("sim")
        .args(args)
        .output()
        .expect("run echomeshctl sim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn five_hundred_nodes_under_loss_crashes_and_a_partition_get_everything_both_ways() {
    let out = sim(&[
        "--nodes",
        "500",
        "--degree",
        "6",
        "--packets",
        "1000",
        "--loss",
        "10",
        "--crash",
        "5",
        "--partition",
        "--seed",
        "3",
        "--json",
    ]);
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).expect(&out);
    assert_eq!(reports.len(), 2, "flood and lazy side by side: {out}");
    for r in &reports {
        for key in [
            "nodes",
            "packets",
            "broadcast",
            "delivered_ratio",
            "duplicates_per_delivery",
            "hops_p99",
            "latency_p50_ms",
            "latency_p99_ms",
            "bytes_per_node",
            "seed",
        ] {
            assert!(!r[key].is_null(), "{key} missing: {r}");
        }
        assert_eq!(r["nodes"], 500);
        assert_eq!(r["crashed"], 25, "{r}");
        assert_eq!(
            r["delivered_ratio"], 1.0,
            "every node connected to the origin: {r}"
        );
    }
    assert_eq!(reports[0]["broadcast"], "flood");
    assert_eq!(reports[1]["broadcast"], "lazy");
}

#[test]
fn lazy_push_cuts_duplicates_without_slowing_delivery_much() {
    // Ten packets per origin on average: each origin's first packet floods to build its tree.
    let out = sim(&[
        "--nodes",
        "300",
        "--degree",
        "6",
        "--packets",
        "3000",
        "--seed",
        "5",
        "--json",
    ]);
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).expect(&out);
    let (flood, lazy) = (&reports[0], &reports[1]);
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    assert_eq!(f(lazy, "delivered_ratio"), 1.0, "{lazy}");
    assert!(
        f(flood, "duplicates_per_delivery") > 4.0,
        "flood: about degree - 1: {flood}"
    );
    assert!(f(lazy, "duplicates_per_delivery") <= 0.2, "{lazy}");
    assert!(
        f(lazy, "latency_p99_ms") < 1.5 * f(flood, "latency_p99_ms"),
        "{lazy} vs {flood}"
    );
    assert!(
        f(lazy, "bytes_per_node") < f(flood, "bytes_per_node"),
        "{lazy} vs {flood}"
    );
}

#[test]
fn the_same_seed_prints_the_same_bytes() {
    let args = [
        "--nodes",
        "120",
        "--packets",
        "600",
        "--loss",
        "5",
        "--crash",
        "5",
        "--partition",
        "--seed",
        "42",
        "--json",
    ];
    let a = sim(&args);
    assert_eq!(a, sim(&args));
    let mut other = args;
    other[10] = "43";
    assert_ne!(a, sim(&other));
    // Bad input is refused with a reason.
    let out = std::process::Command::new(bin("echomeshctl"))
        .args(["sim", "--loss", "90"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--loss"));
}

/// The failure detector, 100 members for two simulated minutes at 10 % heartbeat loss with 5 %
/// of them crashing: every crash noticed by every watcher within 2 s, no live member failed;
/// the same seed prints the same bytes.
#[test]
fn the_failure_detector_at_100_members_notices_every_crash_and_accuses_no_one() {
    let args = [
        "--detector",
        "--nodes",
        "100",
        "--loss",
        "10",
        "--crash",
        "5",
        "--secs",
        "120",
        "--seed",
        "5",
        "--json",
    ];
    let out = sim(&args);
    assert_eq!(out, sim(&args), "deterministic");
    let r: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(r["nodes"], 100);
    assert_eq!(r["crashed"], 5);
    assert_eq!(r["missed"], 0, "{r}");
    assert!(r["detections"].as_u64().unwrap_or(0) >= 5, "{r}");
    assert!(
        r["detect_max_ms"].as_f64().unwrap_or(f64::MAX) <= 2000.0,
        "{r}"
    );
    assert_eq!(r["false_failures"], 0, "{r}");
    // Too short thresholds are refused with the reason.
    let out = std::process::Command::new(bin("echomeshctl"))
        .args(["sim", "--detector", "--suspect-ms", "150"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("suspect_ms"));
}
