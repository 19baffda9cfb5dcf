//! Prometheus metrics. Every drop, rejection and eviction has a counter here.
//! Label values are fixed sets, except `neighbor` (short node ID), which is bounded by
//! `limits.max_neighbors`.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Every metric family this node exports, for docs/METRICS.md.
    pub catalogue: Vec<CatalogueEntry>,
    pub packets_received: IntCounterVec,
    pub packets_accepted: IntCounterVec,
    pub packets_forwarded: IntCounter,
    pub packets_delivered: IntCounter,
    pub duplicates_dropped: IntCounter,
    pub packets_dropped: IntCounterVec,
    pub seen_cache_entries: IntGauge,
    pub seen_cache_evictions: IntCounterVec,
    pub packet_log_bytes: IntGauge,
    pub packet_log_evictions: IntCounter,
    pub echo_repair_offered: IntCounter,
    pub broadcast_sent: IntCounterVec,
    pub broadcast_trees: IntGauge,
    pub broadcast_awaited: IntGauge,
    pub broadcast_awaited_dropped: IntCounter,
    pub echo_repair_resent: IntCounter,
    pub echo_repair_missed: IntCounter,
    pub client_resumes: IntCounterVec,
    pub neighbors: IntGaugeVec,
    pub handshake_failures: IntCounterVec,
    pub frame_errors: IntCounterVec,
    pub neighbor_bytes_received: IntCounterVec,
    pub neighbor_bytes_sent: IntCounterVec,
    pub neighbor_rtt: GaugeVec,
    pub neighbor_queue_bytes: IntGaugeVec,
    pub client_sessions: IntGauge,
    pub client_requests: IntCounterVec,
    pub client_events: IntCounterVec,
    pub client_queue_bytes: IntGauge,
    pub key_bundles: IntGauge,
    pub key_bundles_offered: IntCounterVec,
    pub key_bundles_rejected: IntCounterVec,
    pub key_lookups: IntCounterVec,
    pub keydir_syncs: IntCounterVec,
    pub keydir_sync_offered: IntCounter,
    pub keydir_sync_bytes: IntCounter,
    pub ozone_deposits: IntCounterVec,
    pub ozone_deposit_seconds: Histogram,
    pub ozone_group_commit: Histogram,
    pub ozone_fetches: IntCounter,
    pub ozone_acks: IntCounter,
    pub ozone_proof_failures: IntCounter,
    pub ozone_bytes: IntGauge,
    pub ozone_budget_bytes: IntGauge,
    pub ozone_evictions: IntCounterVec,
    pub ozone_repair_items: IntCounter,
    pub ozone_repair_rounds: IntCounter,
    pub ozone_repair_differing: IntGauge,
    pub ozones_hosted: IntGauge,
    pub ozone_messages: IntGauge,
    pub cluster_members: IntGaugeVec,
    pub member_transitions: IntCounterVec,
    pub failure_detection_seconds: Histogram,
    pub heartbeats: IntCounterVec,
    pub node_paused: IntCounter,
    pub topology_announcements: IntCounterVec,
    pub topology_nodes: IntGaugeVec,
    pub clients_redirected: IntCounterVec,
    pub connections_rejected: IntCounterVec,
    pub joins: IntCounterVec,
    pub invites_issued: IntCounter,
    pub admin_requests: IntCounterVec,
    pub console_logins: IntCounterVec,
    pub console_refused: IntCounterVec,
    pub console_sessions: IntGauge,
    pub console_sessions_ended: IntCounterVec,
    pub ready: IntGauge,
    pub build_info: IntGaugeVec,
    pub start_time: Gauge,
    pub bridge: BridgeMetrics,
    pub smoke: SmokeMetrics,
}

/// Reasons a packet is dropped (label `reason` of `echomesh_packets_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    NeighborQueueFull,
    ClientQueueFull,
    NeighborRateLimited,
    NeighborDown,
    SendFailed,
    BadId,
    TooLarge,
    /// Key-bundle packets arriving faster than the directory can verify them.
    KeydirBusy,
    /// Node announcements arriving faster than they can be verified.
    TopologyBusy,
    /// Echo frames from the mesh arriving faster than the bridge takes them.
    BridgeBusy,
    /// Smoke configuration records arriving faster than they can be applied.
    SmokeBusy,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::NeighborQueueFull,
        DropReason::ClientQueueFull,
        DropReason::NeighborRateLimited,
        DropReason::NeighborDown,
        DropReason::SendFailed,
        DropReason::BadId,
        DropReason::TooLarge,
        DropReason::KeydirBusy,
        DropReason::TopologyBusy,
        DropReason::BridgeBusy,
        DropReason::SmokeBusy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::NeighborQueueFull => "neighbor_queue_full",
            DropReason::ClientQueueFull => "client_queue_full",
            DropReason::NeighborRateLimited => "neighbor_rate_limited",
            DropReason::NeighborDown => "neighbor_down",
            DropReason::SendFailed => "send_failed",
            DropReason::BadId => "bad_id",
            DropReason::TooLarge => "too_large",
            DropReason::KeydirBusy => "keydir_busy",
            DropReason::TopologyBusy => "topology_busy",
            DropReason::BridgeBusy => "bridge_busy",
            DropReason::SmokeBusy => "smoke_busy",
        }
    }
}

impl From<echomesh_proto::echo::Rejection> for DropReason {
    fn from(r: echomesh_proto::echo::Rejection) -> Self {
        match r {
            echomesh_proto::echo::Rejection::BadId => DropReason::BadId,
            echomesh_proto::echo::Rejection::TooLarge => DropReason::TooLarge,
        }
    }
}

/// The Echo bridge's metrics (docs/ECHO.md).
/// The SmokeStack services (`echomesh_smoke_*`, docs/ECHO.md).
pub struct SmokeMetrics {
    pub ozones: IntGauge,
    pub participants: IntGaugeVec,
    pub frames: IntCounterVec,
    pub refused: IntCounterVec,
    pub released: IntCounter,
    pub search_seconds: Histogram,
    pub records: IntCounterVec,
    pub logins: IntCounterVec,
}

pub struct BridgeMetrics {
    pub links: IntGaugeVec,
    pub clients: IntGauge,
    pub frames: IntCounterVec,
    pub junk: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub dropped: IntCounterVec,
    pub identities: IntGauge,
    pub memory_entries: IntGauge,
    pub connections_rejected: IntCounterVec,
    pub markers_refused: IntCounter,
}

/// Reasons a handshake fails (label `reason` of `echomesh_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeReason {
    Unpinned,
    WrongFingerprint,
    NoCertificate,
    Alpn,
    Tls,
    Timeout,
    Hello,
    Version,
    Unreachable,
}

impl HandshakeReason {
    pub const ALL: [HandshakeReason; 9] = [
        HandshakeReason::Unpinned,
        HandshakeReason::WrongFingerprint,
        HandshakeReason::NoCertificate,
        HandshakeReason::Alpn,
        HandshakeReason::Tls,
        HandshakeReason::Timeout,
        HandshakeReason::Hello,
        HandshakeReason::Version,
        HandshakeReason::Unreachable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeReason::Unpinned => "unpinned",
            HandshakeReason::WrongFingerprint => "wrong_fingerprint",
            HandshakeReason::NoCertificate => "no_certificate",
            HandshakeReason::Alpn => "alpn",
            HandshakeReason::Tls => "tls",
            HandshakeReason::Timeout => "timeout",
            HandshakeReason::Hello => "hello",
            HandshakeReason::Version => "version",
            HandshakeReason::Unreachable => "unreachable",
        }
    }
}

/// One metric family: what docs/METRICS.md lists (generated by
/// `echomesh-node --print-metrics`, checked by a unit test).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueEntry {
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

/// Registers collectors and notes what they export.
struct Registrar<'a> {
    registry: &'a Registry,
    catalogue: std::cell::RefCell<Vec<CatalogueEntry>>,
}

impl Registrar<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.add_boxed(Box::new(c.clone()));
        c
    }

    fn add_boxed(&self, c: Box<dyn prometheus::core::Collector>) {
        use prometheus::proto::MetricType;
        let families = c.collect();
        for d in c.desc() {
            let kind = match families
                .iter()
                .find(|f| f.name() == d.fq_name)
                .map(|f| f.get_field_type())
            {
                Some(MetricType::COUNTER) => "counter",
                Some(MetricType::HISTOGRAM) => "histogram",
                _ => "gauge",
            };
            self.catalogue.borrow_mut().push(CatalogueEntry {
                name: d.fq_name.clone(),
                kind,
                labels: d.variable_labels.clone(),
                help: d.help.clone(),
            });
        }
        // Names are static and unique; registration can only fail on a programming error,
        // which the unit tests catch.
        let _ = self.registry.register(c);
    }
}

impl Metrics {
    /// The catalogue as the Markdown table in docs/METRICS.md.
    pub fn catalogue_markdown(&self) -> String {
        let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
        for e in &self.catalogue {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                e.name,
                e.kind,
                if e.labels.is_empty() {
                    "—".to_string()
                } else {
                    e.labels.join(", ")
                },
                e.help.replace('|', "\\|")
            ));
        }
        out
    }

    pub fn new() -> Self {
        let r = Registry::new();
        let reg = Registrar {
            registry: &r,
            catalogue: std::cell::RefCell::new(Vec::new()),
        };
        let counter =
            |name: &str, help: &str| reg.add(IntCounter::new(name, help).expect("static metric"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg.add(IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"))
        };
        let mut m = Metrics {
            packets_received: counter_vec(
                "echomesh_packets_received_total",
                "Echo packets received, before duplicate suppression, by source (neighbor, client).",
                &["source"],
            ),
            packets_accepted: counter_vec(
                "echomesh_packets_accepted_total",
                "Echo packets accepted as new (not seen before), by source.",
                &["source"],
            ),
            packets_forwarded: counter(
                "echomesh_packets_forwarded_total",
                "Echo packets queued for forwarding, counted once per neighbor.",
            ),
            packets_delivered: counter(
                "echomesh_packets_delivered_total",
                "Echo packets delivered to subscribed client sessions, once per session.",
            ),
            duplicates_dropped: counter(
                "echomesh_duplicates_dropped_total",
                "Echo packets dropped because their ID was in the seen-cache.",
            ),
            packets_dropped: counter_vec(
                "echomesh_packets_dropped_total",
                "Echo packets dropped, by reason (neighbor_queue_full, client_queue_full, neighbor_rate_limited, neighbor_down, send_failed, bad_id, too_large, keydir_busy, topology_busy, bridge_busy).",
                &["reason"],
            ),
            seen_cache_entries: reg.add(IntGauge::new("echomesh_seen_cache_entries", "Packet IDs in the seen-cache.").expect("static metric"),
            ),
            seen_cache_evictions: counter_vec(
                "echomesh_seen_cache_evictions_total",
                "Seen-cache entries removed, by reason (expired, capacity).",
                &["reason"],
            ),
            packet_log_bytes: reg.add(IntGauge::new(
                    "echomesh_packet_log_bytes",
                    "Bytes held by the packet log (recent accepted packets, for neighbor repair and client resume; bounded by echo.log_bytes).",
                )
                .expect("static metric"),
            ),
            packet_log_evictions: counter(
                "echomesh_packet_log_evictions_total",
                "Packets that left the packet log (older than echo.log_secs, or pushed out by echo.log_bytes).",
            ),
            broadcast_sent: counter_vec(
                "echomesh_broadcast_sent_total",
                "Lazy push's messages to neighbors: packet IDs announced instead of sent (ihave), packet IDs asked for because the tree did not bring them in time (graft), links made lazy in a tree (prune).",
                &["kind"],
            ),
            broadcast_trees: reg.add(
                IntGauge::new(
                    "echomesh_broadcast_trees",
                    "Broadcast trees (one per origin node) this node remembers under lazy push (bounded at 4096).",
                )
                .expect("static metric"),
            ),
            broadcast_awaited: reg.add(
                IntGauge::new(
                    "echomesh_broadcast_awaited",
                    "Packets announced by a neighbor and not yet received (lazy push waits for the tree, then pulls them).",
                )
                .expect("static metric"),
            ),
            broadcast_awaited_dropped: counter(
                "echomesh_broadcast_awaited_dropped_total",
                "Announced packets forgotten because too many were awaited at once (100 000); echo repair still offers them.",
            ),
            echo_repair_offered: counter(
                "echomesh_echo_repair_offered_total",
                "Packet IDs offered to neighbors that may have missed them (after a connection loss, a queue overflow, or at first contact).",
            ),
            echo_repair_resent: counter(
                "echomesh_echo_repair_resent_total",
                "Packets sent again because a neighbor asked for them after an offer (it had missed them).",
            ),
            echo_repair_missed: counter(
                "echomesh_echo_repair_missed_total",
                "Packets a neighbor was owed that had already left the packet log before they could be offered (possible loss for that neighbor; other paths may still have delivered them).",
            ),
            client_resumes: counter_vec(
                "echomesh_client_resumes_total",
                "Position-tracking subscriptions, by result (new; complete: resumed with nothing missed; gap: part of what the client missed had left the packet log or did not fit its queue; stale: the position was from before a restart).",
                &["result"],
            ),
            neighbors: reg.add(IntGaugeVec::new(Opts::new("echomesh_neighbors", "Neighbors by state (up, connecting, down)."), &["state"])
                    .expect("static metric"),
            ),
            handshake_failures: counter_vec(
                "echomesh_handshake_failures_total",
                "Failed peer, client and join handshakes, by reason (unpinned, wrong_fingerprint, no_certificate, alpn, tls, timeout, hello, version, unreachable).",
                &["reason"],
            ),
            frame_errors: counter_vec(
                "echomesh_frame_errors_total",
                "Frames refused (oversized, truncated, undecodable, io, unexpected), by kind and ALPN role.",
                &["kind", "role"],
            ),
            neighbor_bytes_received: counter_vec(
                "echomesh_neighbor_received_bytes_total",
                "Frame bytes received from each neighbor.",
                &["neighbor"],
            ),
            neighbor_bytes_sent: counter_vec(
                "echomesh_neighbor_sent_bytes_total",
                "Frame bytes sent to each neighbor.",
                &["neighbor"],
            ),
            neighbor_rtt: reg.add(GaugeVec::new(Opts::new("echomesh_neighbor_rtt_seconds", "Smoothed QUIC round-trip time per neighbor."), &["neighbor"])
                    .expect("static metric"),
            ),
            neighbor_queue_bytes: reg.add(IntGaugeVec::new(
                    Opts::new("echomesh_neighbor_queue_bytes", "Bytes waiting in each neighbor's outgoing queue."),
                    &["neighbor"],
                )
                .expect("static metric"),
            ),
            client_sessions: reg.add(IntGauge::new("echomesh_client_sessions", "Open client sessions.").expect("static metric"),
            ),
            client_requests: counter_vec(
                "echomesh_client_requests_total",
                "Requests received from client sessions, by kind (hello, inject, subscribe, publish_key, lookup_key, deposit, fetch, ack, ozone_info, subscribe_at).",
                &["kind"],
            ),
            client_events: counter_vec(
                "echomesh_client_events_total",
                "Events sent to client sessions, by kind (deliver, reply, error, lagged, redirect).",
                &["kind"],
            ),
            client_queue_bytes: reg.add(IntGauge::new(
                    "echomesh_client_queue_bytes",
                    "Bytes waiting in all client sessions' outgoing queues (each bounded by limits.client_queue_bytes).",
                )
                .expect("static metric"),
            ),
            key_bundles: reg.add(IntGauge::new("echomesh_key_bundles", "Key bundles in this node's key directory.").expect("static metric"),
            ),
            key_bundles_offered: counter_vec(
                "echomesh_key_bundles_offered_total",
                "Valid key bundles offered to the directory, by source (client, neighbor) and result (new, replaced, unchanged).",
                &["source", "result"],
            ),
            keydir_syncs: counter_vec(
                "echomesh_keydir_syncs_total",
                "Key-directory syncs with a neighbor that came up, by result (in_sync: it lacked nothing; differed: only the bundles it lacked were offered; full: an older neighbor was offered the whole directory; failed).",
                &["result"],
            ),
            keydir_sync_offered: reg.add(
                IntCounter::new(
                    "echomesh_keydir_sync_offered_total",
                    "Key bundles offered to neighbors by key-directory syncs.",
                )
                .expect("static metric"),
            ),
            keydir_sync_bytes: reg.add(
                IntCounter::new(
                    "echomesh_keydir_sync_bytes_total",
                    "Bytes this node sent for key-directory syncs: the digests and entry lists it answered and the bundles it offered.",
                )
                .expect("static metric"),
            ),
            key_bundles_rejected: counter_vec(
                "echomesh_key_bundles_rejected_total",
                "Key bundles refused, by reason (bad_signature, unknown_version, oversized, bad_key, bad_name, future, stale, revoked, directory_full, undecodable).",
                &["reason"],
            ),
            key_lookups: counter_vec(
                "echomesh_key_lookups_total",
                "Key directory lookups, by result (found, not_found).",
                &["result"],
            ),
            ozone_deposits: counter_vec(
                "echomesh_ozone_deposits_total",
                "Ozone deposits handled by this node, by result (stored, duplicate, acknowledged, quota, too_large, disk_budget, bad_id, not_durable, wrong_proof, storage; refused_draining: a peer's copy refused because this node is draining).",
                &["result"],
            ),
            ozone_fetches: counter("echomesh_ozone_fetches_total", "Ozone fetch requests served."),
            ozone_acks: counter(
                "echomesh_ozone_acked_messages_total",
                "Ozone messages deleted by their owner's acknowledgement.",
            ),
            ozone_proof_failures: counter(
                "echomesh_ozone_proof_failures_total",
                "Ozone fetches or acknowledgements refused for a wrong proof.",
            ),
            ozone_bytes: reg.add(IntGauge::new("echomesh_ozone_stored_bytes", "Payload bytes stored in ozones on this node.").expect("static metric"),
            ),
            ozone_budget_bytes: reg.add(
                IntGauge::new(
                    "echomesh_ozone_budget_bytes",
                    "The ozone storage budget of this node (ozone.max_total_bytes); deposits beyond it are refused.",
                )
                .expect("static metric"),
            ),
            ozone_repair_items: counter(
                "echomesh_ozone_repair_items_total",
                "Ozone messages and tombstones pushed to a reconnected replica (anti-entropy).",
            ),
            ozone_repair_rounds: counter(
                "echomesh_ozone_repair_rounds_total",
                "Anti-entropy rounds run towards a (re)connected cluster member.",
            ),
            ozone_repair_differing: reg.add(IntGauge::new(
                    "echomesh_ozone_repair_differing_ozones",
                    "Ozones found out of sync with a member in the last repair round (replication lag indicator).",
                )
                .expect("static metric"),
            ),
            ozones_hosted: reg.add(IntGauge::new("echomesh_ozones_hosted", "Ozones holding messages on this node.").expect("static metric"),
            ),
            ozone_messages: reg.add(IntGauge::new("echomesh_ozone_messages", "Messages stored in ozones on this node.").expect("static metric"),
            ),
            cluster_members: reg.add(IntGaugeVec::new(
                    Opts::new("echomesh_cluster_members", "Members of this node's cluster by state (alive, suspect, draining, left, failed), this node included."),
                    &["state"],
                )
                .expect("static metric"),
            ),
            member_transitions: counter_vec(
                "echomesh_member_transitions_total",
                "Neighbors (members of the mesh) entering a state, by the state entered (alive, suspect, draining, left, failed).",
                &["to"],
            ),
            failure_detection_seconds: reg.add(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "echomesh_failure_detection_seconds",
                        "Silence of a neighbor when the failure detector failed it (time from its last heartbeat to the verdict).",
                    )
                    .buckets(vec![0.25, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]),
                )
                .expect("static metric"),
            ),
            heartbeats: counter_vec(
                "echomesh_heartbeats_total",
                "Heartbeat datagrams to and from neighbors, by direction (sent, received).",
                &["direction"],
            ),
            node_paused: counter(
                "echomesh_node_paused_total",
                "Times this node's liveness timer ran more than 250 ms late (the process did not run); the pause is not held against neighbors.",
            ),
            ozone_deposit_seconds: reg.add(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "echomesh_ozone_deposit_seconds",
                        "Time from a client's deposit to its acknowledgement (or refusal), replication to the write quorum included.",
                    )
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                )
                .expect("static metric"),
            ),
            ozone_group_commit: reg.add(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "echomesh_ozone_group_commit_messages",
                        "Ozone messages (client deposits and replica copies) written by one synced write batch (group commit).",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
                )
                .expect("static metric"),
            ),
            topology_announcements: counter_vec(
                "echomesh_topology_announcements_total",
                "Signed node announcements received, by result (accepted, stale, too_frequent, bad_signature, malformed, full, own).",
                &["result"],
            ),
            topology_nodes: reg.add(IntGaugeVec::new(
                    Opts::new("echomesh_topology_nodes", "Nodes of the mesh this node knows, by state (up, draining, left, failed), this node included."),
                    &["state"],
                )
                .expect("static metric"),
            ),
            clients_redirected: counter_vec(
                "echomesh_clients_redirected_total",
                "Client sessions sent to other nodes while draining, by when (at_hello, during_session).",
                &["when"],
            ),
            ozone_evictions: counter_vec(
                "echomesh_ozone_evictions_total",
                "Ozone messages evicted, by reason (retention).",
                &["reason"],
            ),
            connections_rejected: counter_vec(
                "echomesh_connections_rejected_total",
                "Incoming connections refused before a session started, by reason (handshakes_busy, clients_full, draining).",
                &["reason"],
            ),
            joins: counter_vec(
                "echomesh_joins_total",
                "Join attempts handled by this node as inviter, by result (accepted, unknown_token, token_reused, token_expired, too_many_neighbors, internal, timeout).",
                &["result"],
            ),
            invites_issued: counter("echomesh_invites_issued_total", "Invite tokens issued."),
            admin_requests: counter_vec(
                "echomesh_admin_requests_total",
                "Admin API requests, by result (ok, unauthorized, error).",
                &["result"],
            ),
            console_logins: counter_vec(
                "echomesh_console_logins_total",
                "Console login attempts, by result (ok, bad_token, bad_code, bad_csrf, rate_limited).",
                &["result"],
            ),
            console_refused: counter_vec(
                "echomesh_console_requests_refused_total",
                "Console requests refused (403), by reason (no_session, csrf, disabled).",
                &["reason"],
            ),
            console_sessions: reg.add(IntGauge::new("echomesh_console_sessions", "Console sessions logged in now (bounded; see docs/OPERATIONS.md).").expect("static metric"),
            ),
            console_sessions_ended: counter_vec(
                "echomesh_console_sessions_ended_total",
                "Console sessions ended, by reason (logout, expired, evicted: the oldest made room for a new login).",
                &["reason"],
            ),
            ready: reg.add(IntGauge::new("echomesh_ready", "1 when the node serves (readyz), else 0.").expect("static metric"),
            ),
            build_info: reg.add(IntGaugeVec::new(
                    Opts::new("echomesh_build_info", "Always 1; labels carry version and protocol."),
                    &["version", "protocol"],
                )
                .expect("static metric"),
            ),
            start_time: reg.add(Gauge::new("echomesh_start_time_seconds", "Unix time the node started.").expect("static metric"),
            ),
            bridge: BridgeMetrics {
                links: reg.add(IntGaugeVec::new(Opts::new("echomesh_bridge_links", "Echo neighbor links (outgoing to Spot-On-Lite/Spot-On listeners, and incoming connections allowed as neighbors) by state (up, connecting, down)."), &["state"]).expect("static metric")),
                clients: reg.add(IntGauge::new("echomesh_bridge_clients", "Echo client connections (Smoke, Spot-On) on the Echo listener.").expect("static metric")),
                frames: counter_vec(
                    "echomesh_bridge_frames_total",
                    "Echo data frames received from (in) and written to (out) Echo connections.",
                    &["direction"],
                ),
                junk: counter_vec(
                    "echomesh_bridge_junk_total",
                    "Echo connections closed for junk, by reason (no_eom, oversize, incomplete, no_content, bad_base64); junk is never flooded.",
                    &["reason"],
                ),
                duplicates: counter_vec(
                    "echomesh_bridge_duplicates_total",
                    "Echo frames dropped because the bridge's frame memory held them, by where they came from (link, mesh).",
                    &["source"],
                ),
                dropped: counter_vec(
                    "echomesh_bridge_dropped_total",
                    "Echo frames or identities not taken, by reason (memory_full: frame memory full of live entries; queue_full: a connection's queue; bad_frame: malformed frame from the mesh; identities_full; bad_identity).",
                    &["reason"],
                ),
                identities: reg.add(IntGauge::new("echomesh_bridge_identities", "Identities registered by Echo clients (0095a) for the filter, all connections together.").expect("static metric")),
                memory_entries: reg.add(IntGauge::new("echomesh_bridge_memory_entries", "Echo frame hashes remembered (bridge.memory_frames at most).").expect("static metric")),
                connections_rejected: counter_vec(
                    "echomesh_bridge_connections_rejected_total",
                    "Echo connections refused or closed before serving, by reason (limit, tls, pin_mismatch, timeout).",
                    &["reason"],
                ),
                markers_refused: counter(
                    "echomesh_bridge_markers_refused_total",
                    "Spot-On-Lite markers (0111) from connections not allowed as Echo neighbors (they stay filtered clients).",
                ),
            },
            smoke: SmokeMetrics {
                ozones: reg.add(IntGauge::new("echomesh_smoke_ozones", "Smoke ozones configured in the cluster (smoke.max_ozones at most).").expect("static metric")),
                participants: reg.add(IntGaugeVec::new(Opts::new("echomesh_smoke_participants", "Smoke participants registered in the cluster, by whether their keys were captured (keys, no_keys)."), &["keys"]).expect("static metric")),
                frames: counter_vec(
                    "echomesh_smoke_frames_total",
                    "Echo frames the SmokeStack services took, by what they were (stored: an ozone copy kept for its recipient; retrieve; read; pkp; share_id; epks: keys captured).",
                    &["kind"],
                ),
                refused: counter_vec(
                    "echomesh_smoke_refused_total",
                    "Smoke requests and frames refused, by reason (stale, bad_signature, unknown_participant, unsupported_algorithm, undecodable_key, malformed, not_durable, unauthenticated, search_busy, full, ...).",
                    &["reason"],
                ),
                released: counter("echomesh_smoke_released_total", "Stored Smoke messages released to a retrieving client (a message is released again on every retrieval until read)."),
                search_seconds: reg.add(Histogram::with_opts(HistogramOpts::new("echomesh_smoke_search_seconds", "Time to inspect one Echo frame for the SmokeStack services (EPKS, ozone requests, the ozone × participant × minute tag search).").buckets(vec![0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1])).expect("static metric")),
                records: counter_vec(
                    "echomesh_smoke_records_total",
                    "Cluster Smoke records (ozones, participants, keys, private-server) offered to this node, by outcome (applied, unchanged, refused).",
                    &["outcome"],
                ),
                logins: counter_vec(
                    "echomesh_smoke_logins_total",
                    "Private-server logins (0097b), by result (ok, refused).",
                    &["result"],
                ),
            },
            registry: r.clone(),
            catalogue: Vec::new(),
        };
        #[cfg(target_os = "linux")]
        {
            reg.add_boxed(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        m.catalogue = reg.catalogue.into_inner();
        m.catalogue.sort_by(|a, b| a.name.cmp(&b.name));
        // Pre-create every fixed label so dashboards see zeros instead of absent series.
        for kind in ["ihave", "graft", "prune"] {
            m.broadcast_sent.with_label_values(&[kind]);
        }
        for reason in DropReason::ALL.map(DropReason::label) {
            m.packets_dropped.with_label_values(&[reason]);
        }
        for reason in HandshakeReason::ALL.map(HandshakeReason::label) {
            m.handshake_failures.with_label_values(&[reason]);
        }
        for s in ["up", "connecting", "down"] {
            m.bridge.links.with_label_values(&[s]);
        }
        for k in ["stored", "retrieve", "read", "pkp", "share_id", "epks"] {
            m.smoke.frames.with_label_values(&[k]);
        }
        for r in [
            "stale",
            "bad_signature",
            "unknown_participant",
            "not_durable",
            "unauthenticated",
            "full",
        ] {
            m.smoke.refused.with_label_values(&[r]);
        }
        for k in ["keys", "no_keys"] {
            m.smoke.participants.with_label_values(&[k]);
        }
        for o in ["applied", "unchanged", "refused"] {
            m.smoke.records.with_label_values(&[o]);
        }
        for r in ["ok", "refused"] {
            m.smoke.logins.with_label_values(&[r]);
        }
        for d in ["in", "out"] {
            m.bridge.frames.with_label_values(&[d]);
        }
        for j in echomesh_proto::bridge::Junk::ALL {
            m.bridge.junk.with_label_values(&[j.label()]);
        }
        for s in ["link", "mesh"] {
            m.bridge.duplicates.with_label_values(&[s]);
        }
        for r in [
            "memory_full",
            "queue_full",
            "bad_frame",
            "identities_full",
            "bad_identity",
        ] {
            m.bridge.dropped.with_label_values(&[r]);
        }
        for r in ["limit", "tls", "pin_mismatch", "timeout"] {
            m.bridge.connections_rejected.with_label_values(&[r]);
        }
        for s in ["neighbor", "client", "bridge"] {
            m.packets_received.with_label_values(&[s]);
            m.packets_accepted.with_label_values(&[s]);
        }
        for k in [
            "hello",
            "inject",
            "subscribe",
            "publish_key",
            "lookup_key",
            "deposit",
            "fetch",
            "ack",
            "ozone_info",
            "subscribe_at",
        ] {
            m.client_requests.with_label_values(&[k]);
        }
        for k in ["deliver", "reply", "error", "lagged"] {
            m.client_events.with_label_values(&[k]);
        }
        for r in echomesh_proto::keydir::BundleError::LABELS {
            m.key_bundles_rejected.with_label_values(&[r]);
        }
        for r in ["in_sync", "differed", "full", "failed"] {
            m.keydir_syncs.with_label_values(&[r]);
        }
        for src in ["client", "neighbor"] {
            for res in ["new", "replaced", "unchanged"] {
                m.key_bundles_offered.with_label_values(&[src, res]);
            }
        }
        for r in [
            "stored",
            "duplicate",
            "acknowledged",
            "quota",
            "too_large",
            "disk_budget",
            "bad_id",
            "not_durable",
            "storage",
            "refused_draining",
        ] {
            m.ozone_deposits.with_label_values(&[r]);
        }
        m.ozone_evictions.with_label_values(&["retention"]);
        for st in echomesh_proto::membership::State::ALL {
            m.cluster_members.with_label_values(&[st.label()]);
            m.member_transitions.with_label_values(&[st.label()]);
        }
        for d in ["sent", "received"] {
            m.heartbeats.with_label_values(&[d]);
        }
        for st in ["up", "draining", "left", "failed"] {
            m.topology_nodes.with_label_values(&[st]);
        }
        for r in ["ok", "bad_token", "bad_code", "bad_csrf", "rate_limited"] {
            m.console_logins.with_label_values(&[r]);
        }
        for r in ["no_session", "csrf", "disabled"] {
            m.console_refused.with_label_values(&[r]);
        }
        for r in ["logout", "expired", "evicted"] {
            m.console_sessions_ended.with_label_values(&[r]);
        }
        for r in [
            "accepted",
            "stale",
            "too_frequent",
            "bad_signature",
            "malformed",
            "full",
            "own",
        ] {
            m.topology_announcements.with_label_values(&[r]);
        }
        for r in ["new", "complete", "gap", "stale"] {
            m.client_resumes.with_label_values(&[r]);
        }
        for w in ["at_hello", "during_session"] {
            m.clients_redirected.with_label_values(&[w]);
        }
        for r in ["found", "not_found"] {
            m.key_lookups.with_label_values(&[r]);
        }
        for s in ["up", "connecting", "down"] {
            m.neighbors.with_label_values(&[s]);
        }
        for s in ["expired", "capacity"] {
            m.seen_cache_evictions.with_label_values(&[s]);
        }
        for k in ["oversized", "truncated", "undecodable", "io", "unexpected"] {
            for role in ["peer", "client", "join"] {
                m.frame_errors.with_label_values(&[k, role]);
            }
        }
        m.build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &crate::wire::PROTOCOL_VERSION.to_string(),
            ])
            .set(1);
        m.start_time
            .set(echomesh_proto::clock::unix_ms() as f64 / 1000.0);
        m
    }

    pub fn count_drop(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.packets_dropped
                .with_label_values(&[reason.label()])
                .inc_by(n);
        }
    }

    pub fn handshake_failed(&self, reason: HandshakeReason) {
        self.handshake_failures
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_sets_are_distinct_and_echo_rejections_map_to_their_drop_reason() {
        use super::{DropReason, HandshakeReason};
        use echomesh_proto::echo::Rejection;
        let drops: std::collections::HashSet<_> = DropReason::ALL.map(DropReason::label).into();
        assert_eq!(drops.len(), DropReason::ALL.len());
        let hs: std::collections::HashSet<_> =
            HandshakeReason::ALL.map(HandshakeReason::label).into();
        assert_eq!(hs.len(), HandshakeReason::ALL.len());
        for r in [Rejection::BadId, Rejection::TooLarge] {
            assert_eq!(DropReason::from(r).label(), r.label());
        }
    }

    /// docs/METRICS.md lists exactly what the code exports: regenerate the table with
    /// `echomesh-node --print-metrics` when this fails.
    #[test]
    fn the_catalogue_in_the_docs_matches_the_code() {
        let m = super::Metrics::new();
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/METRICS.md"))
                .expect("docs/METRICS.md");
        let start = "<!-- catalogue:start (generated by `echomesh-node --print-metrics`) -->\n";
        let end = "<!-- catalogue:end -->";
        let table = doc
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(t, _)| t)
            .expect("catalogue markers in docs/METRICS.md");
        assert_eq!(
            table,
            m.catalogue_markdown(),
            "docs/METRICS.md is out of date: replace its table with `echomesh-node --print-metrics`"
        );
    }

    /// Names carry units and conventions; labels have bounded value sets.
    #[test]
    fn names_and_labels_follow_the_rules() {
        let m = super::Metrics::new();
        assert!(m.catalogue.len() >= 40, "{}", m.catalogue.len());
        for e in &m.catalogue {
            let ours = e.name.starts_with("echomesh_");
            assert!(ours || e.name.starts_with("process_"), "{}", e.name);
            if e.kind == "counter" {
                assert!(
                    e.name.ends_with("_total"),
                    "counter {} must end in _total",
                    e.name
                );
            }
            assert!(!e.help.is_empty(), "{} has no help", e.name);
            for l in &e.labels {
                // Per-packet, per-participant or per-ozone labels would be unbounded.
                assert!(
                    ![
                        "id",
                        "participant",
                        "ozone",
                        "packet",
                        "fingerprint",
                        "addr"
                    ]
                    .contains(&l.as_str()),
                    "{} has an unbounded label {l}",
                    e.name
                );
            }
        }
    }

    #[test]
    fn all_metrics_register_and_render() {
        let m = super::Metrics::new();
        let text = m.render();
        assert!(text.contains("echomesh_packets_dropped_total{reason=\"neighbor_queue_full\"} 0"));
        assert!(text.contains("echomesh_build_info"));
        // every family in the struct registered (none silently failed)
        assert!(
            m.registry.gather().len() >= 22,
            "{}",
            m.registry.gather().len()
        );
    }
}
