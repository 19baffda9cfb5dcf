//! Prometheus metrics. Every drop, rejection and eviction has a counter here.
//! Label values are fixed sets, except `neighbor` (short node ID), which is bounded by
//! `limits.max_neighbors`.

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub packets_received: IntCounterVec,
    pub packets_accepted: IntCounterVec,
    pub packets_forwarded: IntCounter,
    pub packets_delivered: IntCounter,
    pub duplicates_dropped: IntCounter,
    pub packets_dropped: IntCounterVec,
    pub seen_cache_entries: IntGauge,
    pub seen_cache_evictions: IntCounterVec,
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
    pub ozone_deposits: IntCounterVec,
    pub ozone_fetches: IntCounter,
    pub ozone_acks: IntCounter,
    pub ozone_proof_failures: IntCounter,
    pub ozone_bytes: IntGauge,
    pub ozone_evictions: IntCounterVec,
    pub ozone_repair_items: IntCounter,
    pub ozone_repair_rounds: IntCounter,
    pub ozone_repair_differing: IntGauge,
    pub ozones_hosted: IntGauge,
    pub ozone_messages: IntGauge,
    pub cluster_members: IntGaugeVec,
    pub topology_announcements: IntCounterVec,
    pub topology_nodes: IntGaugeVec,
    pub clients_redirected: IntCounterVec,
    pub connections_rejected: IntCounterVec,
    pub joins: IntCounterVec,
    pub invites_issued: IntCounter,
    pub admin_requests: IntCounterVec,
    pub ready: IntGauge,
    pub build_info: IntGaugeVec,
    pub start_time: Gauge,
}

/// Reasons a packet is dropped (label `reason` of `echomesh_packets_dropped_total`).
pub mod drop_reason {
    pub const NEIGHBOR_QUEUE_FULL: &str = "neighbor_queue_full";
    pub const CLIENT_QUEUE_FULL: &str = "client_queue_full";
    pub const NEIGHBOR_RATE_LIMITED: &str = "neighbor_rate_limited";
    pub const NEIGHBOR_DOWN: &str = "neighbor_down";
    pub const SEND_FAILED: &str = "send_failed";
    pub const BAD_ID: &str = "bad_id";
    pub const TOO_LARGE: &str = "too_large";
    /// Key-bundle packets arriving faster than the directory can verify them.
    pub const KEYDIR_BUSY: &str = "keydir_busy";
    /// Node announcements arriving faster than they can be verified.
    pub const TOPOLOGY_BUSY: &str = "topology_busy";
    pub const ALL: &[&str] = &[
        NEIGHBOR_QUEUE_FULL,
        CLIENT_QUEUE_FULL,
        NEIGHBOR_RATE_LIMITED,
        NEIGHBOR_DOWN,
        SEND_FAILED,
        BAD_ID,
        TOO_LARGE,
        KEYDIR_BUSY,
        TOPOLOGY_BUSY,
    ];
}

/// Reasons a handshake fails (label `reason` of `echomesh_handshake_failures_total`).
pub mod handshake_reason {
    pub const UNPINNED: &str = "unpinned";
    pub const WRONG_FINGERPRINT: &str = "wrong_fingerprint";
    pub const NO_CERTIFICATE: &str = "no_certificate";
    pub const ALPN: &str = "alpn";
    pub const TLS: &str = "tls";
    pub const TIMEOUT: &str = "timeout";
    pub const HELLO: &str = "hello";
    pub const VERSION: &str = "version";
    pub const UNREACHABLE: &str = "unreachable";
    pub const ALL: &[&str] = &[
        UNPINNED,
        WRONG_FINGERPRINT,
        NO_CERTIFICATE,
        ALPN,
        TLS,
        TIMEOUT,
        HELLO,
        VERSION,
        UNREACHABLE,
    ];
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            // Names are static and unique; registration can only fail on a programming error,
            // which the unit test below catches.
            let _ = r.register(Box::new(c.clone()));
            c
        }
        let counter =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("static metric"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        let m = Metrics {
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
                "Echo packets dropped, by reason.",
                &["reason"],
            ),
            seen_cache_entries: reg(
                &r,
                IntGauge::new("echomesh_seen_cache_entries", "Packet IDs in the seen-cache.").expect("static metric"),
            ),
            seen_cache_evictions: counter_vec(
                "echomesh_seen_cache_evictions_total",
                "Seen-cache entries removed, by reason (expired, capacity).",
                &["reason"],
            ),
            neighbors: reg(
                &r,
                IntGaugeVec::new(Opts::new("echomesh_neighbors", "Neighbors by state (up, connecting, down)."), &["state"])
                    .expect("static metric"),
            ),
            handshake_failures: counter_vec(
                "echomesh_handshake_failures_total",
                "Failed peer, client and join handshakes, by reason.",
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
            neighbor_rtt: reg(
                &r,
                GaugeVec::new(Opts::new("echomesh_neighbor_rtt_seconds", "Smoothed QUIC round-trip time per neighbor."), &["neighbor"])
                    .expect("static metric"),
            ),
            neighbor_queue_bytes: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("echomesh_neighbor_queue_bytes", "Bytes waiting in each neighbor's outgoing queue."),
                    &["neighbor"],
                )
                .expect("static metric"),
            ),
            client_sessions: reg(
                &r,
                IntGauge::new("echomesh_client_sessions", "Open client sessions.").expect("static metric"),
            ),
            client_requests: counter_vec(
                "echomesh_client_requests_total",
                "Requests received from client sessions, by kind (hello, inject, subscribe, publish_key, lookup_key, deposit, fetch, ack, ozone_info).",
                &["kind"],
            ),
            client_events: counter_vec(
                "echomesh_client_events_total",
                "Events sent to client sessions, by kind (deliver, reply, error, lagged).",
                &["kind"],
            ),
            client_queue_bytes: reg(
                &r,
                IntGauge::new(
                    "echomesh_client_queue_bytes",
                    "Bytes waiting in all client sessions' outgoing queues (each bounded by limits.client_queue_bytes).",
                )
                .expect("static metric"),
            ),
            key_bundles: reg(
                &r,
                IntGauge::new("echomesh_key_bundles", "Key bundles in this node's key directory.").expect("static metric"),
            ),
            key_bundles_offered: counter_vec(
                "echomesh_key_bundles_offered_total",
                "Valid key bundles offered to the directory, by source (client, neighbor) and result (new, replaced, unchanged).",
                &["source", "result"],
            ),
            key_bundles_rejected: counter_vec(
                "echomesh_key_bundles_rejected_total",
                "Key bundles refused, by reason.",
                &["reason"],
            ),
            key_lookups: counter_vec(
                "echomesh_key_lookups_total",
                "Key directory lookups, by result (found, not_found).",
                &["result"],
            ),
            ozone_deposits: counter_vec(
                "echomesh_ozone_deposits_total",
                "Ozone deposits handled by this node, by result (stored, duplicate, acknowledged, quota, too_large, disk_budget, bad_id, not_durable, wrong_proof, storage).",
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
            ozone_bytes: reg(
                &r,
                IntGauge::new("echomesh_ozone_stored_bytes", "Payload bytes stored in ozones on this node.").expect("static metric"),
            ),
            ozone_repair_items: counter(
                "echomesh_ozone_repair_items_total",
                "Ozone messages and tombstones pushed to a reconnected replica (anti-entropy).",
            ),
            ozone_repair_rounds: counter(
                "echomesh_ozone_repair_rounds_total",
                "Anti-entropy rounds run towards a (re)connected cluster member.",
            ),
            ozone_repair_differing: reg(
                &r,
                IntGauge::new(
                    "echomesh_ozone_repair_differing_ozones",
                    "Ozones found out of sync with a member in the last repair round (replication lag indicator).",
                )
                .expect("static metric"),
            ),
            ozones_hosted: reg(
                &r,
                IntGauge::new("echomesh_ozones_hosted", "Ozones holding messages on this node.").expect("static metric"),
            ),
            ozone_messages: reg(
                &r,
                IntGauge::new("echomesh_ozone_messages", "Messages stored in ozones on this node.").expect("static metric"),
            ),
            cluster_members: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("echomesh_cluster_members", "Members of this node's cluster by state (alive, draining, left, failed), this node included."),
                    &["state"],
                )
                .expect("static metric"),
            ),
            topology_announcements: counter_vec(
                "echomesh_topology_announcements_total",
                "Signed node announcements received, by result (accepted, stale, too_frequent, bad_signature, malformed, full, own).",
                &["result"],
            ),
            topology_nodes: reg(
                &r,
                IntGaugeVec::new(
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
                "Incoming connections refused before a session started, by reason.",
                &["reason"],
            ),
            joins: counter_vec(
                "echomesh_joins_total",
                "Join attempts handled by this node as inviter, by result.",
                &["result"],
            ),
            invites_issued: counter("echomesh_invites_issued_total", "Invite tokens issued."),
            admin_requests: counter_vec(
                "echomesh_admin_requests_total",
                "Admin API requests, by result (ok, unauthorized, error).",
                &["result"],
            ),
            ready: reg(
                &r,
                IntGauge::new("echomesh_ready", "1 when the node serves (readyz), else 0.").expect("static metric"),
            ),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("echomesh_build_info", "Always 1; labels carry version and protocol."),
                    &["version", "protocol"],
                )
                .expect("static metric"),
            ),
            start_time: reg(
                &r,
                Gauge::new("echomesh_start_time_seconds", "Unix time the node started.").expect("static metric"),
            ),
            registry: r.clone(),
        };
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        // Pre-create every fixed label so dashboards see zeros instead of absent series.
        for reason in drop_reason::ALL {
            m.packets_dropped.with_label_values(&[reason]);
        }
        for reason in handshake_reason::ALL {
            m.handshake_failures.with_label_values(&[reason]);
        }
        for s in ["neighbor", "client"] {
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
        ] {
            m.client_requests.with_label_values(&[k]);
        }
        for k in ["deliver", "reply", "error", "lagged"] {
            m.client_events.with_label_values(&[k]);
        }
        for r in crate::keydir::BundleError::LABELS {
            m.key_bundles_rejected.with_label_values(&[r]);
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
        ] {
            m.ozone_deposits.with_label_values(&[r]);
        }
        m.ozone_evictions.with_label_values(&["retention"]);
        for st in ["alive", "draining", "left", "failed"] {
            m.cluster_members.with_label_values(&[st]);
        }
        for st in ["up", "draining", "left", "failed"] {
            m.topology_nodes.with_label_values(&[st]);
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        m.start_time.set(now);
        m
    }

    pub fn count_drop(&self, reason: &str, n: u64) {
        if n > 0 {
            self.packets_dropped.with_label_values(&[reason]).inc_by(n);
        }
    }

    pub fn handshake_failed(&self, reason: &str) {
        self.handshake_failures.with_label_values(&[reason]).inc();
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
