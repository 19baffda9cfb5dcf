//! The gateway's metrics (prefix `echomesh_gateway_`, the node's conventions: counters end in
//! `_total`, every label value that can occur is exported from the start at 0). The
//! catalogue in docs/GATEWAY.md is `echomesh-gateway --print-metrics`, checked by a test.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Why a request was refused (the `reason` label; also the problem type's last segment).
pub const REFUSALS: &[&str] = &[
    "unauthorized",
    "forbidden",
    "rate_limited",
    "too_large",
    "malformed",
    "bad_recipient",
    "unknown_recipient",
    "unknown_identity",
    "idempotency_conflict",
    "outbox_full",
    "mesh_unavailable",
    "not_found",
];

/// One metric family, for the catalogue.
struct Entry {
    name: String,
    kind: &'static str,
    labels: Vec<String>,
    help: String,
}

pub struct Metrics {
    pub registry: Registry,
    catalogue: Vec<Entry>,
    pub requests: IntCounterVec,
    pub refusals: IntCounterVec,
    pub accepted: IntCounter,
    pub outbox: IntGauge,
    pub recipient_outcomes: IntCounterVec,
    pub send_seconds: Histogram,
    pub received: IntCounterVec,
    pub duplicates: IntCounter,
    pub inbox_pending: IntGauge,
    pub inbox_full: IntCounter,
    pub webhook_attempts: IntCounterVec,
    pub webhook_seconds: Histogram,
    pub delivered: IntCounterVec,
    pub dead_letters: IntGauge,
    pub dead_lettered: IntCounter,
    pub replayed: IntCounter,
    pub node_connected: IntGauge,
    pub node_changes: IntCounterVec,
    pub files_evicted: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let catalogue = std::cell::RefCell::new(Vec::new());
        let reg = |kind: &'static str, c: Box<dyn prometheus::core::Collector>| {
            for d in c.desc() {
                catalogue.borrow_mut().push(Entry {
                    name: d.fq_name.clone(),
                    kind,
                    labels: d.variable_labels.clone(),
                    help: d.help.clone(),
                });
            }
            // Names are static and unique: registration fails only on a programming error,
            // which the unit test catches.
            let _ = registry.register(c);
        };
        let cv = |n: &str, h: &str, l: &[&str]| {
            let m = IntCounterVec::new(Opts::new(n, h), l).expect("static metric");
            reg("counter", Box::new(m.clone()));
            m
        };
        let c = |n: &str, h: &str| {
            let m = IntCounter::new(n, h).expect("static metric");
            reg("counter", Box::new(m.clone()));
            m
        };
        let g = |n: &str, h: &str| {
            let m = IntGauge::new(n, h).expect("static metric");
            reg("gauge", Box::new(m.clone()));
            m
        };
        let hist = |n: &str, h: &str, b: Vec<f64>| {
            let m =
                Histogram::with_opts(HistogramOpts::new(n, h).buckets(b)).expect("static metric");
            reg("histogram", Box::new(m.clone()));
            m
        };
        let lat = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let m = Metrics {
            requests: cv("echomesh_gateway_http_requests_total", "API requests by route and status class.", &["route", "status"]),
            refusals: cv("echomesh_gateway_refusals_total", "API requests refused, by reason (each a problem+json answer).", &["reason"]),
            accepted: c("echomesh_gateway_messages_accepted_total", "Outgoing messages accepted (202: durably queued)."),
            outbox: g("echomesh_gateway_outbox_messages", "Outgoing messages not yet finished for every recipient."),
            recipient_outcomes: cv("echomesh_gateway_recipient_outcomes_total", "Outgoing copies finished, by outcome (deposited, live, failed).", &["outcome"]),
            send_seconds: hist("echomesh_gateway_send_seconds", "From 202 to the last recipient deposited or sent live.", lat.clone()),
            received: cv("echomesh_gateway_received_total", "Incoming messages taken from the mailboxes, by result (verified, rejected).", &["result"]),
            duplicates: c("echomesh_gateway_received_duplicates_total", "Incoming messages seen again (fetched again after a restart) and not delivered twice."),
            inbox_pending: g("echomesh_gateway_inbox_pending", "Incoming messages waiting for the webhook or a pull."),
            inbox_full: c("echomesh_gateway_inbox_full_total", "Times the inbox was full and messages were left waiting in the mesh mailboxes."),
            webhook_attempts: cv("echomesh_gateway_webhook_attempts_total", "Webhook attempts by result (ok, http_error, network).", &["result"]),
            webhook_seconds: hist("echomesh_gateway_webhook_seconds", "Webhook attempt duration.", lat),
            delivered: cv("echomesh_gateway_delivered_total", "Incoming messages delivered, by how (webhook, pull).", &["via"]),
            dead_letters: g("echomesh_gateway_dead_letters", "Incoming messages dead-lettered and not replayed."),
            dead_lettered: c("echomesh_gateway_dead_lettered_total", "Incoming messages dead-lettered (the webhook did not accept them in time)."),
            replayed: c("echomesh_gateway_dead_letters_replayed_total", "Dead letters put back on the webhook queue through the API."),
            node_connected: g("echomesh_gateway_node_connected", "1 while the gateway has a session with a node."),
            node_changes: cv("echomesh_gateway_node_sessions_total", "Node sessions opened, by why (start, failover, redirect).", &["why"]),
            files_evicted: c("echomesh_gateway_files_evicted_total", "Incomplete incoming files dropped to stay within bounds (their pieces wait in the mailbox)."),
            registry: registry.clone(),
            catalogue: Vec::new(),
        };
        let mut m = m;
        m.catalogue = catalogue.into_inner();
        for r in REFUSALS {
            m.refusals.with_label_values(&[r]);
        }
        for o in ["deposited", "live", "failed"] {
            m.recipient_outcomes.with_label_values(&[o]);
        }
        for r in ["verified", "rejected"] {
            m.received.with_label_values(&[r]);
        }
        for r in ["ok", "http_error", "network"] {
            m.webhook_attempts.with_label_values(&[r]);
        }
        for v in ["webhook", "pull"] {
            m.delivered.with_label_values(&[v]);
        }
        for w in ["start", "failover", "redirect"] {
            m.node_changes.with_label_values(&[w]);
        }
        m
    }

    pub fn refuse(&self, reason: &str) {
        self.refusals.with_label_values(&[reason]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The catalogue as a Markdown table (docs/GATEWAY.md).
    pub fn catalogue_markdown(&self) -> String {
        let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
        for e in &self.catalogue {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                e.name,
                e.kind,
                if e.labels.is_empty() {
                    "—".into()
                } else {
                    e.labels.join(", ")
                },
                e.help.replace('|', "\\|")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_and_the_docs_list_the_catalogue() {
        let m = Metrics::new();
        let names: Vec<String> = m.catalogue.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names.len(), 19, "{names:?}");
        // Every family but the per-route request counter is exported from the start.
        assert_eq!(m.registry.gather().len(), 18);
        assert!(names.iter().all(|n| n.starts_with("echomesh_gateway_")));
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/GATEWAY.md"))
                .expect("docs/GATEWAY.md");
        assert!(
            docs.contains(&m.catalogue_markdown()),
            "docs/GATEWAY.md must contain the output of `echomesh-gateway --print-metrics`"
        );
        // Every series the gateway dashboard queries exists.
        let dash = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../dashboards/gateway.json"
        ))
        .expect("dashboards/gateway.json");
        let mut used = 0;
        for part in dash.split("echomesh_gateway_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = format!("echomesh_gateway_{}", name.trim_end_matches("_bucket"));
            assert!(
                names.contains(&name),
                "dashboards/gateway.json queries {name}, which the gateway does not export"
            );
            used += 1;
        }
        assert!(used >= 10);
    }
}
