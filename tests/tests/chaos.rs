//! Chaos scenarios: real node processes as separate hosts (network namespaces as root, else
//! 127.47.K.x behind a userspace proxy), faults injected under them on a schedule drawn from a
//! seed, and checkers that judge what the clients observed (see `echomesh_tests::chaos`).
//!
//! Replay a failure with the seed it printed: `ECHOMESH_CHAOS_SEED=N cargo test -p
//! echomesh-tests --test chaos NAME`. The CI profile is sized for a 2-core machine; the soak
//! profile (`scripts/soak`) runs the same scenarios longer and bigger (`ECHOMESH_CHAOS_SCALE`).

use std::time::Duration;

use echomesh_tests::chaos::history::{
    self, check_deposits, check_flood, Depositor, SendLog, Subscriber,
};
use echomesh_tests::chaos::{self, Lab, LabSpec};
use rand::seq::SliceRandom;
use rand::Rng;

/// Fast failure detection so that partitions and kills take effect within a test's time.
const FAST_PEERS: &str = "
[peer]
keepalive_ms = 500
idle_timeout_ms = 3000
backoff_min_ms = 100
backoff_max_ms = 1000
";

/// The soak profile multiplies packet counts and rounds by this (default 1: the CI profile).
fn scale() -> u64 {
    std::env::var("ECHOMESH_CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Nodes of the flooding scenarios (the soak profile uses 9).
fn flood_nodes() -> usize {
    std::env::var("ECHOMESH_CHAOS_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
        .clamp(3, 32)
}

/// A ring with chords (i, i+2): cycles everywhere, so duplicates must be suppressed, and every
/// node has at least two ways in.
fn ring_with_chords(n: usize) -> Vec<(usize, usize)> {
    let mut links: Vec<(usize, usize)> = (0..n).map(|i| (i, (i + 1) % n)).collect();
    for i in (0..n).step_by(2) {
        let j = (i + 2) % n;
        if n > 3 && !links.contains(&(j, i)) && !links.contains(&(i, j)) {
            links.push((i, j));
        }
    }
    links
}

/// Three nodes, each linked to the other two (one cluster), all with `config`.
fn triangle(config: &str) -> LabSpec {
    LabSpec {
        nodes: 3,
        links: vec![(0, 1), (1, 2), (0, 2)],
        delayed: vec![],
        config: config.into(),
        force_loopback: false,
    }
}

/// Every packet the senders logged reaches every subscriber in `subs` exactly once (waits at
/// most 60 s, then watches 1 s more for late duplicates), or the test fails with the report.
fn all_delivered_once(log: &SendLog, subs: &[&Subscriber]) -> history::FloodReport {
    check_flood(
        &log.all(),
        subs,
        |_, _| true,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn join_all(lab: &Lab, senders: Vec<tokio::task::JoinHandle<Result<u64, String>>>) {
    for s in senders {
        lab.rt
            .block_on(s)
            .expect("sender task")
            .unwrap_or_else(|e| panic!("sender failed: {e}"));
    }
}

fn subscribers(lab: &Lab) -> Vec<Subscriber> {
    (0..lab.nodes.len())
        .map(|i| Subscriber::start(lab, i))
        .collect()
}

/// Flood from two nodes under 10 % and then 30 % loss between all nodes, with one link also
/// delayed 40 ms ± 30 ms (reordering): every subscriber gets every packet exactly once.
/// Returns the mesh's duplicate receptions per packet delivered to a node other than its
/// origin.
fn flood_under_loss(name: &str, force_loopback: bool, config: &str) -> f64 {
    let n = flood_nodes();
    let spec = LabSpec {
        nodes: n,
        links: ring_with_chords(n),
        delayed: vec![(1, 2, 40, 30)],
        config: config.into(),
        force_loopback,
    };
    let lab = Lab::start(name, spec);
    let subs = subscribers(&lab);
    let log = SendLog::default();
    let per = 1500 * scale();
    for (phase, pct, origins) in [(1u32, 10u32, [0usize, 2]), (2, 30, [1, n - 1])] {
        lab.set_loss(pct);
        let senders = origins
            .iter()
            .map(|&o| history::send(&lab, &log, o, phase, per, 10, Duration::from_millis(10)))
            .collect();
        join_all(&lab, senders);
        lab.log(format!("phase {phase}: {} packets sent", log.all().len()));
    }
    let report = all_delivered_once(&log, &subs.iter().collect::<Vec<_>>());
    let drops = lab.fault_drops();
    let proxied = lab.proxied_datagrams();
    lab.set_loss(0);
    lab.log(format!(
        "checked: {} deliveries of {} expected; faults dropped {drops} datagrams; proxies passed {proxied}",
        report.delivered, report.expected
    ));
    assert!(
        drops > 100,
        "the loss rules dropped only {drops} datagrams: the fault did not bite"
    );
    assert!(
        proxied > 100,
        "the delayed link carried only {proxied} datagrams"
    );
    let dups: f64 = lab
        .nodes
        .iter()
        .map(|n| n.metric("echomesh_duplicates_dropped_total"))
        .sum();
    let per_delivery = dups / (log.all().len() * (n - 1)) as f64;
    lab.log(format!(
        "{dups} duplicate receptions: {per_delivery:.3} per delivery"
    ));
    per_delivery
}

#[test]
fn flood_under_10_and_30_percent_loss_delivers_everything_once() {
    flood_under_loss(
        "flood_under_10_and_30_percent_loss_delivers_everything_once",
        false,
        "",
    );
}

/// The same with lazy push on every node: everything once to every client, and at most 0.3
/// duplicate receptions per delivery (flooding this mesh makes about 1.5).
#[test]
fn lazy_push_under_10_and_30_percent_loss_delivers_everything_once() {
    let per_delivery = flood_under_loss(
        "lazy_push_under_10_and_30_percent_loss_delivers_everything_once",
        false,
        "[echo]\nbroadcast = \"lazy\"\n",
    );
    assert!(
        per_delivery <= 0.3,
        "{per_delivery:.3} duplicate receptions per delivery under lazy push"
    );
}

#[test]
fn flood_under_loss_on_the_loopback_fallback() {
    flood_under_loss("flood_under_loss_on_the_loopback_fallback", true, "");
}

/// Nine nodes on a seeded connected random graph in which every node has at least three
/// neighbors, 30 % loss on the UDP between nodes (not on the client legs), one client
/// injecting 5 000 packets of 256 B at one node as fast as the node acknowledges them: every
/// subscriber on the other eight gets every packet exactly once, within 20 s of the first
/// send. CI runs the fixed seeds below;
/// `scripts/soak` passes many through `ECHOMESH_CHAOS_SEEDS`.
#[test]
fn nine_nodes_random_graph_under_30_percent_loss_deliver_everything_once() {
    let name = "nine_nodes_random_graph_under_30_percent_loss_deliver_everything_once";
    // Complete within 20 s: about 3 s here since neighbors use BBR; with Cubic's collapse under
    // random loss it took 10–50 s, and seed 2 lost a stretch for good (docs/DELIVERY.md).
    // The scenario as it is, in CI and in the soak alike: the soak varies the seed, not
    // the size (at 5× the packets, nine subscribers in this one test process read too slowly on
    // two cores and their bounded queues drop, which is a different story).
    let within = Duration::from_secs(20);
    for seed in chaos::seeds(&[2, 12_648_430]) {
        let lab = Lab::start_seeded(name, seed, |rng| {
            let links = chaos::random_graph(9, 3, rng);
            LabSpec {
                nodes: 9,
                links,
                delayed: vec![],
                config: String::new(),
                force_loopback: false,
            }
        });
        lab.log(format!("graph: {:?}", lab.links()));
        let subs = subscribers(&lab);
        let log = SendLog::default();
        lab.set_loss(30);
        let origin = 0;
        let started = std::time::Instant::now();
        join_all(
            &lab,
            vec![history::send_sized(
                &lab,
                &log,
                origin,
                0,
                5000,
                100,
                Duration::from_millis(5),
                256,
            )],
        );
        let others: Vec<&Subscriber> = subs.iter().filter(|s| s.node != origin).collect();
        let report = check_flood(
            &log.all(),
            &others,
            |_, _| true,
            within.saturating_sub(started.elapsed()),
            Duration::from_secs(1),
        )
        .unwrap_or_else(|e| {
            lab.dump_counters();
            panic!("{e}")
        });
        let took = started.elapsed();
        let drops = lab.fault_drops();
        let rtts = neighbor_rtts_ms(&lab);
        lab.set_loss(0);
        lab.log(format!(
            "seed {seed}: {} deliveries of {} expected, complete within {:.1} s; faults dropped {drops} datagrams; neighbor RTT (QUIC's estimate) under loss: median {:.1} ms, max {:.1} ms",
            report.delivered,
            report.expected,
            took.as_secs_f64(),
            median(&rtts),
            rtts.iter().cloned().fold(0.0, f64::max)
        ));
        assert!(
            drops > 1000,
            "the loss rules dropped only {drops} datagrams"
        );
    }
}

/// Every node's view of its neighbors' RTT (QUIC's smoothed estimate), in ms.
fn neighbor_rtts_ms(lab: &Lab) -> Vec<f64> {
    lab.nodes
        .iter()
        .flat_map(|n| n.neighbors())
        .filter_map(|v| v["rtt_ms"].as_f64())
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A line n0 — n1 — n2: n2 is cut off from its only neighbor while n0 floods, then the cut
/// heals. No other path exists, so only repair (n1 offering what n2 missed from its packet
/// log) can deliver what was sent meanwhile: n2's subscriber gets every packet exactly once.
#[test]
fn a_neighbor_that_comes_back_gets_what_it_missed() {
    let name = "a_neighbor_that_comes_back_gets_what_it_missed";
    let spec = LabSpec {
        nodes: 3,
        links: vec![(0, 1), (1, 2)],
        delayed: vec![],
        config: FAST_PEERS.into(),
        force_loopback: false,
    };
    let mut lab = Lab::start(name, spec);
    let subs = subscribers(&lab);
    let log = SendLog::default();
    let every = Duration::from_millis(10);
    join_all(&lab, vec![history::send(&lab, &log, 0, 0, 300, 10, every)]);
    lab.partition(1, 2);
    wait_neighbor_down(&lab, 1, 2);
    lab.log("n1 sees n2 down");
    join_all(
        &lab,
        vec![history::send(&lab, &log, 0, 1, 600 * scale(), 10, every)],
    );
    lab.heal();
    lab.wait_links_up(Duration::from_secs(30));
    lab.log("healed");
    let report = all_delivered_once(&log, &subs.iter().collect::<Vec<_>>());
    lab.log(format!("checked: {} deliveries", report.delivered));
    let resent = lab.nodes[1].metric("echomesh_echo_repair_resent_total");
    assert!(
        resent >= 600.0,
        "n1 re-sent only {resent} packets by repair; the cut-off phase had 600"
    );
}

/// Wait until node `a` reports neighbor `b` down (not up).
fn wait_neighbor_down(lab: &Lab, a: usize, b: usize) {
    let fp = lab.fingerprint(b).to_string();
    echomesh_tests::wait_for(Duration::from_secs(30), "neighbor down", || {
        let up = lab.nodes[a]
            .neighbors()
            .into_iter()
            .any(|v| v["fingerprint"] == fp.as_str() && v["state"] == "up");
        (!up).then_some(())
    });
}

/// The same mesh with 30 % loss on the client legs too (a phone on bad mobile data): clients
/// whose connection breaks dial again and resume (subscribers after their last log position,
/// senders with every unacknowledged batch), and in the end every client completed, every
/// subscriber got every packet exactly once, and no gap was reported.
#[test]
fn clients_on_lossy_links_complete_without_loss_or_repeats() {
    let name = "clients_on_lossy_links_complete_without_loss_or_repeats";
    for seed in chaos::seeds(&[11]) {
        let lab = Lab::start_seeded(name, seed, |rng| LabSpec {
            nodes: 9,
            links: chaos::random_graph(9, 3, rng),
            delayed: vec![],
            config: String::new(),
            force_loopback: false,
        });
        if !lab.is_netns() {
            eprintln!(
                "{name}: needs network namespaces (root) for loss on the client legs; skipped"
            );
            return;
        }
        lab.log(format!("graph: {:?}", lab.links()));
        let subs: Vec<Subscriber> = (0..9).map(|i| Subscriber::following(&lab, i)).collect();
        let log = SendLog::default();
        lab.set_loss(30);
        lab.set_client_loss(30);
        let started = std::time::Instant::now();
        let senders = [0usize, 4]
            .iter()
            .map(|&o| history::send_resilient(&lab, &log, o, 0, 2500 * scale(), 50, 256))
            .collect::<Vec<_>>();
        let mut reconnects = 0;
        for s in senders {
            reconnects += lab
                .rt
                .block_on(s)
                .expect("sender task")
                .unwrap_or_else(|e| panic!("sender failed: {e}"));
        }
        lab.log(format!(
            "senders done after {:.1} s ({reconnects} reconnects)",
            started.elapsed().as_secs_f64()
        ));
        let all: Vec<&Subscriber> = subs.iter().collect();
        let report = check_flood(
            &log.all(),
            &all,
            |_, _| true,
            Duration::from_secs(90),
            Duration::from_secs(1),
        )
        .unwrap_or_else(|e| {
            lab.dump_counters();
            for s in &subs {
                eprintln!(
                    "  subscriber on n{}: {} received; QUIC {}",
                    s.node,
                    s.received(),
                    s.quic_stats()
                );
            }
            panic!("{e}")
        });
        let drops = lab.fault_drops();
        let resumed: f64 = lab
            .nodes
            .iter()
            .map(|n| {
                n.metric("echomesh_client_resumes_total{result=\"complete\"}")
                    + n.metric("echomesh_client_resumes_total{result=\"gap\"}")
            })
            .sum();
        lab.log(format!(
            "subscriptions resumed after a lost connection: {resumed}"
        ));
        lab.set_client_loss(0);
        lab.set_loss(0);
        lab.log(format!(
            "seed {seed}: {} deliveries of {} expected within {:.1} s; senders reconnected {reconnects} times; faults dropped {drops} datagrams",
            report.delivered,
            report.expected,
            started.elapsed().as_secs_f64()
        ));
        assert!(
            drops > 1000,
            "the loss rules dropped only {drops} datagrams"
        );
    }
}

/// Partition one replica away (both ways, then one way), keep depositing and flooding, heal:
/// packets reach everyone still connected to their origin exactly once, and the isolated
/// replica converges by anti-entropy so that it alone serves every acknowledged deposit.
#[test]
fn partition_then_heal_converges_the_ozones() {
    let name = "partition_then_heal_converges_the_ozones";
    let spec = triangle(&format!(
        "{FAST_PEERS}\n[ozone]\nreplicas = 3\nwrite_quorum = 2\nrepair_interval_secs = 3\n"
    ));
    let mut lab = Lab::start(name, spec);
    let subs = subscribers(&lab);
    let log = SendLog::default();
    let per = 400 * scale();
    let every = Duration::from_millis(10);
    let dep = Depositor::start(&lab, 8, vec![0, 1], Duration::from_millis(30));

    let all_subs: Vec<&Subscriber> = subs.iter().collect();
    // Phase 0: all connected; delivered everywhere before the cut.
    join_all(&lab, vec![history::send(&lab, &log, 0, 0, per, 10, every)]);
    assert!(
        history::wait_delivered(&log.all(), &all_subs, |_, _| true, Duration::from_secs(30)),
        "phase 0 was not delivered everywhere while all links were up"
    );
    // Phase 1: n2 cut off both ways. Wait until n0 and n1 count it failed.
    lab.partition(2, 0);
    lab.partition(2, 1);
    wait_members(&lab, &[0, 1], 2.0);
    lab.log("n0 and n1 see n2 failed");
    join_all(&lab, vec![history::send(&lab, &log, 0, 1, per, 10, every)]);
    lab.pause(500, 1500);
    // Phase 2 (asymmetric): n2 does not hear n1, n1 still hears n2; n0 hears and is heard.
    lab.heal();
    lab.block(1, 2);
    lab.wait_links_up_except(Duration::from_secs(30), &[(1, 2)]);
    lab.log("n0–n2 up again; n1 → n2 still blocked");
    join_all(
        &lab,
        vec![
            history::send(&lab, &log, 1, 2, per, 10, every),
            history::send(&lab, &log, 2, 2, per, 10, every),
        ],
    );
    lab.pause(500, 1500);
    // Phase 3: healed.
    lab.heal();
    lab.wait_links_up(Duration::from_secs(30));
    join_all(&lab, vec![history::send(&lab, &log, 2, 3, per, 10, every)]);
    let proofs = dep.proofs.clone();
    let attempts = dep.stop(&lab);

    let sent = log.all();
    // While cut off, n2 can have nothing from n0's phase-1 flood; everything else reaches all
    // (in phase 2 n1's packets reach n2 through n0).
    let report = check_flood(
        &sent,
        &all_subs,
        |p, sub| !(p.phase == 1 && sub == 2),
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    lab.log(format!("flood checked: {} deliveries", report.delivered));

    // Anti-entropy: n2 converges without help. Then it alone must serve every acknowledged
    // deposit (R = 3: every member holds every ozone).
    wait_converged(&lab, Duration::from_secs(60));
    lab.kill9(0);
    lab.kill9(1);
    wait_members(&lab, &[2], 1.0);
    let r = check_deposits(&lab, 2, &proofs, &attempts).unwrap_or_else(|e| panic!("{e}"));
    lab.log(format!("deposits checked on n2 alone: {r:?}"));
    assert!(
        r.acked >= 20,
        "only {} deposits were acknowledged: the schedule proved little",
        r.acked
    );
    assert!(lab.fault_drops() > 0, "the partition rules dropped nothing");
}

/// `kill -9` each node in turn (seeded order) while deposits flow through it, with one of the
/// other replicas cut off from it just before (it still counts as alive there until the idle
/// timeout, so deposits it co-owns cannot be made durable): with the victim still down, the
/// survivors serve every acknowledged deposit exactly once; after restarts, all of them.
#[test]
fn kill9_of_each_node_in_turn_during_deposits_loses_nothing() {
    let name = "kill9_of_each_node_in_turn_during_deposits_loses_nothing";
    let spec = triangle(&format!(
        "{FAST_PEERS}\n[ozone]\nrepair_interval_secs = 3\n"
    ));
    let mut lab = Lab::start(name, spec);
    let mut order = [0usize, 1, 2];
    order.shuffle(&mut lab.rng);
    let rounds = order.len() * scale() as usize;
    let mut attempts = Vec::new();
    let mut proofs = Vec::new();
    for round in 0..rounds {
        let victim = order[round % order.len()];
        let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        let cut = others[lab.rng.random_range(0..2)];
        let reader = others.iter().copied().find(|&i| i != cut).expect("reader");
        let dep = Depositor::start_at(
            &lab,
            6,
            vec![0, 1, 2],
            Duration::from_millis(20),
            round * 100_000,
        );
        lab.pause(400, 1200);
        lab.partition(victim, cut);
        dep.set_targets(vec![victim]);
        lab.pause(800, 1600);
        lab.kill9(victim);
        proofs = dep.proofs.clone();
        attempts.extend(dep.stop(&lab));
        lab.heal();
        wait_members(&lab, &[reader], 2.0);
        let r = check_deposits(&lab, reader, &proofs, &attempts)
            .unwrap_or_else(|e| panic!("round {round}, n{victim} down: {e}"));
        lab.log(format!(
            "round {round}: n{victim} down, n{reader} serves every acknowledged deposit: {r:?}"
        ));
        lab.restart(victim);
    }
    let r = check_deposits(&lab, 0, &proofs, &attempts)
        .unwrap_or_else(|e| panic!("after restarts: {e}"));
    lab.log(format!("after restarts: {r:?}"));
    // A power cut of the whole cluster: every node killed at once. Acknowledged means synced
    // to disk, so all of it is back after the restart.
    for i in 0..3 {
        lab.kill9(i);
    }
    for i in 0..3 {
        lab.nodes[i].restart();
    }
    lab.wait_links_up(Duration::from_secs(30));
    let r = check_deposits(&lab, 0, &proofs, &attempts)
        .unwrap_or_else(|e| panic!("after killing all at once: {e}"));
    lab.log(format!(
        "after killing all three at once and restarting: {r:?}"
    ));
    assert!(
        r.acked >= 30,
        "only {} deposits were acknowledged: the schedule proved little",
        r.acked
    );
}

/// Drain a node while packets flow and deposits go on: its clients follow the redirects and
/// miss nothing, the subscribers elsewhere get everything once, and once it has stopped the
/// ozones it held are complete on the others — even after one of them is killed too.
#[test]
fn drain_during_load_loses_nothing() {
    let name = "drain_during_load_loses_nothing";
    // No periodic repair within the scenario: only the drain's hand-off restores R.
    let spec = triangle(&format!(
        "drain_client_grace_secs = 2\n{FAST_PEERS}\n[ozone]\nrepair_interval_secs = 600\n"
    ));
    let mut lab = Lab::start(name, spec);
    let mut subs = subscribers(&lab);
    let followers: Vec<Subscriber> = (0..3).map(|_| Subscriber::following(&lab, 1)).collect();
    let dep = Depositor::start(&lab, 8, vec![0, 1, 2], Duration::from_millis(20));
    let log = SendLog::default();
    let flow = history::send(
        &lab,
        &log,
        0,
        0,
        3000 * scale(),
        5,
        Duration::from_millis(10),
    );
    lab.pause(500, 1500);
    lab.log("drain n1");
    dep.set_targets(vec![0, 2]);
    let out = lab.nodes[1].ctl(&["drain", "--wait", "--deadline", "30"]);
    assert!(
        out.status.success(),
        "drain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.log("n1 drained");
    join_all(&lab, vec![flow]);
    let proofs = dep.proofs.clone();
    let attempts = dep.stop(&lab);
    let status = lab.nodes[1].terminate();
    assert!(status.success(), "drained n1 exited with {status}");
    lab.log("n1 stopped");

    // n1's own subscriber ends with n1; the followers moved.
    let on_n1 = subs.remove(1);
    drop(on_n1);
    let all: Vec<&Subscriber> = subs.iter().chain(followers.iter()).collect();
    let report = all_delivered_once(&log, &all);
    for f in &followers {
        assert!(
            f.moves() >= 1,
            "a client of the drained node was never redirected"
        );
    }
    lab.log(format!(
        "flood checked: {} deliveries, followers moved",
        report.delivered
    ));
    wait_members(&lab, &[0, 2], 2.0);
    let r = check_deposits(&lab, 0, &proofs, &attempts)
        .unwrap_or_else(|e| panic!("after the drain: {e}"));
    lab.log(format!("after the drain: {r:?}"));
    // R = 2 was kept by the hand-off: n2 alone still has everything.
    lab.kill9(0);
    wait_members(&lab, &[2], 1.0);
    let r = check_deposits(&lab, 2, &proofs, &attempts)
        .unwrap_or_else(|e| panic!("n1 drained and n0 killed: {e}"));
    lab.log(format!("n1 drained, n0 killed, n2 alone: {r:?}"));
    assert!(r.acked >= 30, "only {} deposits were acknowledged", r.acked);
}

/// The n0–n1 link flaps (first down longer than the idle timeout, then 0.3–4 s; up 0.3–3 s;
/// seeded) for as long as both flood, and once n2
/// hangs (SIGSTOP, shorter than the idle timeout) and comes back: packets take the way through
/// n2 and arrive exactly once everywhere; the link really went down.
#[test]
fn flapping_link_keeps_delivery_exact() {
    let name = "flapping_link_keeps_delivery_exact";
    let spec = triangle(FAST_PEERS);
    let mut lab = Lab::start(name, spec);
    let subs = subscribers(&lab);
    let log = SendLog::default();
    // 200 packets/s from each side for about 15 s (× scale); the link flaps until they end.
    let per = 3000 * scale();
    let flows = vec![
        history::send(&lab, &log, 0, 0, per, 2, Duration::from_millis(10)),
        history::send(&lab, &log, 1, 0, per, 2, Duration::from_millis(10)),
    ];
    let hang_at = lab.rng.random_range(1..4);
    let mut flap = 0;
    while flap < 3 || flows.iter().any(|f| !f.is_finished()) {
        lab.partition(0, 1);
        // The first outage outlasts the idle timeout: the connection must die and come back.
        // Meanwhile n0's packets reach n1 the other way round, through n2, at once: not
        // only later, from echo repair after the heal.
        if flap == 0 {
            lab.pause(1000, 1000);
            let cut_from = log.all().len();
            lab.pause(2000, 3000);
            let sent: Vec<[u8; 32]> = log.all()[cut_from..]
                .iter()
                .filter(|s| s.origin == 0)
                .map(|s| s.id)
                .collect();
            lab.pause(500, 500);
            let via_n2 = sent.iter().filter(|id| subs[1].has(id)).count();
            lab.log(format!(
                "while n0–n1 was cut, n1 got {via_n2} of the {} packets n0 sent (through n2)",
                sent.len()
            ));
            if sent.is_empty() || via_n2 * 2 < sent.len() {
                lab.dump_counters();
                panic!(
                    "NOT FORWARDED: while n0–n1 was cut, n1 got only {via_n2} of the {} packets \
                     n0 sent (they had n2 to go through)",
                    sent.len()
                );
            }
        } else {
            lab.pause(300, 4000);
        }
        lab.heal();
        if flap == hang_at {
            lab.freeze(2, true);
            lab.pause(300, 1500);
            lab.freeze(2, false);
        }
        lab.pause(300, 3000);
        flap += 1;
    }
    join_all(&lab, flows);
    let report = all_delivered_once(&log, &subs.iter().collect::<Vec<_>>());
    let n1 = format!("neighbor={}", lab.nodes[1].info.id);
    let ups = std::fs::read_to_string(lab.nodes[0].dir.join("node.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("neighbor up") && l.contains(&n1))
        .count();
    lab.log(format!(
        "flood checked: {} deliveries over {flap} flaps; n0 saw n1 come up {ups} times",
        report.delivered
    ));
    assert!(
        ups >= 2,
        "the n0–n1 connection never went down and came back ({ups} ups)"
    );
    assert!(lab.fault_drops() > 0, "the flaps dropped nothing");
}

/// Four nodes, each linked to the other three, on the default peer timing (QUIC's idle timeout
/// is 8 s: what is noticed sooner, the failure detector noticed).
fn four_members() -> LabSpec {
    LabSpec {
        nodes: 4,
        links: vec![(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)],
        delayed: vec![],
        config: String::new(),
        force_loopback: false,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// `node`'s member record of `other` (from `echomeshctl members --json`).
fn member_of(lab: &Lab, node: usize, other: usize) -> serde_json::Value {
    let out = lab.nodes[node].ctl_ok(&["--json", "members"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("members json");
    let fp = lab.fingerprint(other);
    v["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["fingerprint"] == fp).cloned())
        .unwrap_or_else(|| panic!("n{node} has no member record of n{other}: {out}"))
}

/// Kill -9 a member (no goodbye, no connection close): every other member marks it failed,
/// by its heartbeats alone, within 2 s (median over the kills; 3 in CI, more in the soak).
#[test]
fn a_killed_member_is_marked_failed_within_two_seconds_on_every_other_member() {
    let name = "a_killed_member_is_marked_failed_within_two_seconds_on_every_other_member";
    let mut lab = Lab::start(name, four_members());
    let kills = 3 * scale() as usize;
    let mut worst_per_kill = Vec::new();
    for k in 0..kills {
        let victim = lab.rng.random_range(0..4usize);
        let others: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
        for &o in &others {
            let m = member_of(&lab, o, victim);
            assert_eq!(m["state"], "alive", "n{o} before the kill: {m}");
            assert_eq!(m["heartbeats"], true, "n{o}: {m}");
        }
        let counts = |lab: &Lab, o: usize| {
            [
                lab.nodes[o].metric("echomesh_member_transitions_total{to=\"failed\"}"),
                lab.nodes[o].metric("echomesh_failure_detection_seconds_count"),
            ]
        };
        let failed_before: Vec<[f64; 2]> = others.iter().map(|&o| counts(&lab, o)).collect();
        let killed_at = unix_ms();
        lab.kill9(victim);
        let mut times = Vec::new();
        for (j, &o) in others.iter().enumerate() {
            let m = echomesh_tests::wait_for(
                Duration::from_secs(15),
                "the killed member to be marked failed",
                || {
                    let m = member_of(&lab, o, victim);
                    (m["state"] == "failed").then_some(m)
                },
            );
            let at = m["since_unix_ms"].as_u64().expect("since_unix_ms");
            times.push(at.saturating_sub(killed_at));
            assert_eq!(
                counts(&lab, o),
                failed_before[j].map(|c| c + 1.0),
                "n{o} counted the failure and its detection time once"
            );
        }
        let worst = *times.iter().max().expect("watchers");
        lab.log(format!(
            "kill {k}: n{victim} marked failed after {times:?} ms on n{others:?}"
        ));
        worst_per_kill.push(worst);
        lab.restart(victim);
        for &o in &others {
            echomesh_tests::wait_for(Duration::from_secs(15), "alive again", || {
                (member_of(&lab, o, victim)["state"] == "alive").then_some(())
            });
        }
    }
    let worst = median(&worst_per_kill.iter().map(|&t| t as f64).collect::<Vec<_>>());
    lab.log(format!(
        "time until every other member marked the killed one failed: {worst_per_kill:?} ms, median {worst} ms"
    ));
    assert!(
        worst <= 2000.0,
        "median time to mark a killed member failed on every other member: {worst} ms > 2 s ({worst_per_kill:?})"
    );
}

/// 10 % loss on every link for two minutes (ten in the soak) while packets flow: no live
/// member is ever marked failed; suspicions are allowed and logged.
#[test]
fn ten_percent_loss_on_every_link_accuses_no_live_member() {
    let name = "ten_percent_loss_on_every_link_accuses_no_live_member";
    let lab = Lab::start(name, four_members());
    let failed = |i: usize| lab.nodes[i].metric("echomesh_member_transitions_total{to=\"failed\"}");
    let before: Vec<f64> = (0..4).map(failed).collect();
    let beats_before: f64 = (0..4)
        .map(|i| lab.nodes[i].metric("echomesh_heartbeats_total{direction=\"received\"}"))
        .sum();
    lab.set_loss(10);
    let secs = 120 * scale();
    let log = SendLog::default();
    // Steady traffic through the whole window, so the links are busy as well as lossy.
    let per = secs * 20;
    let senders = [0usize, 2]
        .iter()
        .map(|&o| history::send(&lab, &log, o, 1, per, 1, Duration::from_millis(50)))
        .collect();
    join_all(&lab, senders);
    let drops = lab.fault_drops();
    lab.set_loss(0);
    let after: Vec<f64> = (0..4).map(failed).collect();
    let suspicions: Vec<u64> = (0..4)
        .map(|i| {
            (0..4)
                .filter(|&j| j != i)
                .map(|j| member_of(&lab, i, j)["suspicions"].as_u64().unwrap_or(0))
                .sum()
        })
        .collect();
    let beats: f64 = (0..4)
        .map(|i| lab.nodes[i].metric("echomesh_heartbeats_total{direction=\"received\"}"))
        .sum::<f64>()
        - beats_before;
    lab.log(format!(
        "{secs} s at 10 % loss: {drops} datagrams dropped, {beats} heartbeats heard, suspicions per node {suspicions:?}, failures before {before:?} after {after:?}"
    ));
    assert!(
        drops > 1000,
        "the loss rules dropped only {drops} datagrams"
    );
    // 12 neighbor pairs × 10 heartbeats/s: most of them arrived.
    assert!(
        beats > (secs * 12 * 10) as f64 * 0.8,
        "heartbeats heard: {beats}"
    );
    assert_eq!(
        before, after,
        "a live member was marked failed under 10 % loss"
    );
    for i in 0..4 {
        for j in (0..4).filter(|&j| j != i) {
            assert_eq!(member_of(&lab, i, j)["state"], "alive", "n{i} sees n{j}");
        }
    }
}

/// Wait until the `alive` members gauge of each of `nodes` equals `alive`.
fn wait_members(lab: &Lab, nodes: &[usize], alive: f64) {
    echomesh_tests::wait_for(
        Duration::from_secs(20),
        "membership to follow the partition",
        || {
            nodes
                .iter()
                .all(|&i| lab.nodes[i].metric("echomesh_cluster_members{state=\"alive\"}") == alive)
                .then_some(())
        },
    );
}

/// Wait (bounded) until a repair round that started after this call found no ozone differing
/// from a peer's on any node and every node holds the same messages (for R = cluster size).
/// Not converging is logged, not fatal: the deposit checker then says what is missing where.
fn wait_converged(lab: &Lab, timeout: Duration) {
    let rounds = |i: usize| lab.nodes[i].metric("echomesh_ozone_repair_rounds_total");
    let start: Vec<f64> = (0..lab.nodes.len()).map(rounds).collect();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let done = (0..lab.nodes.len()).all(|i| {
            rounds(i) >= start[i] + 2.0
                && lab.nodes[i].metric("echomesh_ozone_repair_differing_ozones") == 0.0
        });
        let held: Vec<f64> = lab
            .nodes
            .iter()
            .map(|n| n.metric("echomesh_ozone_messages"))
            .collect();
        if done && held.windows(2).all(|w| w[0] == w[1]) {
            lab.log(format!("ozone replicas converged ({held:?} messages)"));
            return;
        }
        if std::time::Instant::now() > deadline {
            lab.log(format!(
                "ozone replicas did NOT converge within {timeout:?} ({held:?} messages)"
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pinned neighbor that turns hostile: it floods at 10× its rate limit, then sends garbage.
/// Its excess is dropped and counted, its garbage closes only its connection, and a real flow
/// through the mesh during and after it is delivered exactly once.
#[test]
fn hostile_neighbor_flooding_10x_and_sending_garbage_is_contained() {
    use echomesh_client::identity::Identity;
    use echomesh_proto::echo::EchoPacket;
    use echomesh_proto::wire::{self, PeerFrame, PeerHello};

    let name = "hostile_neighbor_flooding_10x_and_sending_garbage_is_contained";
    let limit = 200u64;
    let spec = LabSpec {
        nodes: 2,
        links: vec![(0, 1)],
        delayed: vec![],
        config: format!(
            "{FAST_PEERS}\n[limits.neighbor_rate]\npackets_per_sec = {limit}\nbytes_per_sec = 4000000\nburst_secs = 1.0\n"
        ),
        force_loopback: false,
    };
    let lab = Lab::start(name, spec);
    let subs = subscribers(&lab);
    let all_subs: Vec<&Subscriber> = subs.iter().collect();
    // n0 pins the hostile identity (it dials in; the address it would dial is unused).
    let evil_dir = lab.root().join("evil");
    echomesh_tests::TestNode::init(&evil_dir);
    let evil = Identity::load_or_create(&evil_dir).expect("identity");
    lab.nodes[0].ctl_ok(&[
        "neighbors",
        "add",
        &format!("{}:9#{}", lab.client_ip(), evil.id.fingerprint()),
    ]);

    let log = SendLog::default();
    let legit = history::send(&lab, &log, 1, 0, 600, 1, Duration::from_millis(10));
    let flood_secs = 3u64;
    let offered = 10 * limit * flood_secs;
    let before =
        lab.nodes[0].metric("echomesh_packets_dropped_total{reason=\"neighbor_rate_limited\"}");
    let (conn, flood_time) = lab.rt.block_on(async {
        let conn = lab.raw_peer(0, &evil).await.expect("hostile connects");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let hello = PeerFrame::Hello(PeerHello {
            version: wire::PROTOCOL_VERSION,
            node_id: evil.id,
            cluster: "elsewhere".into(),
            software: "hostile".into(),
        });
        let back: PeerFrame = echomesh_tests::request(&mut send, &mut recv, &hello)
            .await
            .expect("hello");
        assert!(matches!(back, PeerFrame::Hello(_)));
        // It keeps itself alive the way protocol 5 asks (heartbeat datagrams), so that only
        // what it sends gets it closed.
        let beats = conn.clone();
        tokio::spawn(async move {
            let beat = bytes::Bytes::from_static(wire::HEARTBEAT);
            while beats.send_datagram(beat.clone()).is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // 10× the limit: batches of 20 every 10 ms for flood_secs.
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for b in 0..(offered / 20) {
            tick.tick().await;
            let batch: Vec<EchoPacket> = (0..20)
                .map(|k| {
                    EchoPacket::new(
                        bytes::Bytes::from(format!("evil {b} {k} {}", rand::random::<u64>())),
                        16,
                        None,
                    )
                })
                .collect();
            send.write_all(&wire::encode(&PeerFrame::Echo(batch)).expect("encode"))
                .await
                .expect("write");
        }
        let flood_time = started.elapsed();
        // Then garbage: a frame that decodes to nothing.
        let mut junk = 16u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xee; 16]);
        send.write_all(&junk).await.expect("write junk");
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("n0 closes the hostile connection");
        (closed, flood_time)
    });
    assert!(
        matches!(conn, quinn::ConnectionError::ApplicationClosed(_)),
        "{conn}"
    );
    lab.log("hostile flood and garbage sent; n0 closed the connection");
    join_all(&lab, vec![legit]);
    // After: the node still serves a fresh flow.
    join_all(
        &lab,
        vec![history::send(
            &lab,
            &log,
            1,
            1,
            200,
            1,
            Duration::from_millis(10),
        )],
    );
    let report = all_delivered_once(&log, &all_subs);
    let limited = lab.nodes[0]
        .metric("echomesh_packets_dropped_total{reason=\"neighbor_rate_limited\"}")
        - before;
    // At most the rate over the flood's duration (plus a second of slack) and one burst.
    let admitted_bound = limit * (flood_time.as_secs() + 2) + limit;
    lab.log(format!(
        "legit flow: {} deliveries; hostile offered {offered} in {:.1}s, {limited} dropped as rate-limited",
        report.delivered,
        flood_time.as_secs_f64()
    ));
    assert!(
        limited >= (offered - admitted_bound) as f64,
        "only {limited} of {offered} hostile packets were rate-limited (at most {admitted_bound} may pass)"
    );
    assert!(
        lab.nodes[0].metric("echomesh_frame_errors_total{kind=\"undecodable\",role=\"peer\"}")
            >= 1.0,
        "the garbage frame was not counted"
    );
}
