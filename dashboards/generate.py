#!/usr/bin/env python3
"""Writes the Grafana dashboards in this directory from one description per panel, so that
every panel has the same datasource, layout and units conventions.

    python3 dashboards/generate.py      # rewrites dashboards/*.json

The JSON files are committed; tests/tests/observability.rs runs every panel's query against a
real Prometheus scraping real nodes, and validates the JSON against @grafana/schema with tsc.
"""

import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
HERE = pathlib.Path(__file__).resolve().parent


def datasource_var():
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "hide": 0,
    }


def instance_var():
    return {
        "name": "instance",
        "label": "Node",
        "type": "query",
        "datasource": DS,
        "query": {"query": "label_values(echomesh_build_info, instance)", "refId": "instance"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "hide": 0,
    }


class Layout:
    """Places panels left to right, `per_row` to a row."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel["id"] = len(self.panels) + 1
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def row(self, title):
        self.x = 0
        self.y += self.row_h
        self.row_h = 0
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)


def targets(exprs):
    out = []
    for i, (expr, legend) in enumerate(exprs):
        out.append(
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
        )
    return out


def stat(title, expr, unit="none", description=""):
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets([(expr, "")]),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


def series(title, exprs, unit="none", description=""):
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(exprs),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"}},
    }


def dashboard(uid, title, description, layout, variables):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["echomesh"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [],
        "panels": layout.panels,
    }


def mesh_overview():
    L = Layout()
    L.add(stat("Nodes serving", "sum(echomesh_ready)",
               description="Nodes whose /readyz is 200 (not starting, not draining)."), 4, 4)
    L.add(stat("Nodes reporting", "count(echomesh_build_info)",
               description="Nodes Prometheus scrapes."), 4, 4)
    L.add(stat("Nodes failed (mesh view)", "max(echomesh_topology_nodes{state=\"failed\"})",
               description="Nodes any node's topology shows as failed: stopped without draining."), 4, 4)
    L.add(stat("Links up", "sum(echomesh_neighbors{state=\"up\"}) / 2",
               description="Neighbor links up (each is counted by both ends)."), 4, 4)
    L.add(stat("Client sessions", "sum(echomesh_client_sessions)"), 4, 4)
    L.add(stat("Ozone messages stored", "sum(echomesh_ozone_messages)",
               description="Counts every replica, so about R times the messages."), 4, 4)
    L.add(series("Flood rate (new packets/s)",
                 [(f"sum by (instance) (rate(echomesh_packets_accepted_total[{RATE}]))", "{{instance}}")],
                 "pps", "Packets each node accepted as new."), 12, 8)
    L.add(series("Duplicates per new packet",
                 [(f"sum(rate(echomesh_duplicates_dropped_total[{RATE}])) / sum(rate(echomesh_packets_accepted_total[{RATE}]))", "mesh")],
                 "none", "Copies a node drops per new packet: about the number of extra paths. "
                 "A jump means a loop or a misbehaving neighbor."), 12, 8)
    L.add(series("Drops by reason",
                 [(f"sum by (reason) (rate(echomesh_packets_dropped_total[{RATE}]))", "{{reason}}")],
                 "pps", "Every dropped packet, by reason (see docs/METRICS.md)."), 12, 8)
    L.add(series("Neighbor RTT (worst per node)",
                 [("max by (instance) (echomesh_neighbor_rtt_seconds)", "{{instance}}")],
                 "s", "Smoothed QUIC round-trip time to the slowest neighbor of each node."), 12, 8)
    L.add(series("Ozone deposit latency",
                 [(f"histogram_quantile(0.5, sum by (le) (rate(echomesh_ozone_deposit_seconds_bucket[{RATE}])))", "p50"),
                  (f"histogram_quantile(0.99, sum by (le) (rate(echomesh_ozone_deposit_seconds_bucket[{RATE}])))", "p99")],
                 "s", "What depositing clients wait: replication to the write quorum included."), 12, 8)
    L.add(series("Mesh nodes by state",
                 [("max by (state) (echomesh_topology_nodes)", "{{state}}")],
                 "none", "up, draining, left (planned), failed (not planned)."), 12, 8)
    return dashboard("echomesh-mesh", "echomesh / Mesh overview",
                     "Is the mesh whole, is traffic flowing, is anything being dropped?",
                     L, [datasource_var()])


def node_detail():
    L = Layout()
    sel = 'instance=~"$instance"'
    L.add(stat("Ready", f"min(echomesh_ready{{{sel}}})",
               description="1 when serving; 0 while starting or draining."), 4, 4)
    L.add(stat("Uptime", f"min(time() - echomesh_start_time_seconds{{{sel}}})", "s"), 4, 4)
    L.add(stat("Neighbors up", f"sum(echomesh_neighbors{{{sel},state=\"up\"}})"), 4, 4)
    L.add(stat("Neighbors down", f"sum(echomesh_neighbors{{{sel},state=\"down\"}})"), 4, 4)
    L.add(stat("Client sessions", f"sum(echomesh_client_sessions{{{sel}}})"), 4, 4)
    L.add(stat("Seen-cache entries", f"sum(echomesh_seen_cache_entries{{{sel}}})"), 4, 4)
    L.row("Traffic")
    L.add(series("Packets in, by source",
                 [(f"sum by (instance, source) (rate(echomesh_packets_received_total{{{sel}}}[{RATE}]))", "{{instance}} {{source}}")],
                 "pps"), 8, 8)
    L.add(series("Packets forwarded and delivered",
                 [(f"sum by (instance) (rate(echomesh_packets_forwarded_total{{{sel}}}[{RATE}]))", "{{instance}} forwarded"),
                  (f"sum by (instance) (rate(echomesh_packets_delivered_total{{{sel}}}[{RATE}]))", "{{instance}} delivered")],
                 "pps"), 8, 8)
    L.add(series("Drops by reason",
                 [(f"sum by (instance, reason) (rate(echomesh_packets_dropped_total{{{sel}}}[{RATE}]))", "{{instance}} {{reason}}")],
                 "pps"), 8, 8)
    L.row("Neighbors")
    L.add(series("RTT per neighbor",
                 [(f"echomesh_neighbor_rtt_seconds{{{sel}}}", "{{instance}} → {{neighbor}}")], "s"), 8, 8)
    L.add(series("Queue per neighbor",
                 [(f"echomesh_neighbor_queue_bytes{{{sel}}}", "{{instance}} → {{neighbor}}")], "bytes"), 8, 8)
    L.add(series("Bytes sent per neighbor",
                 [(f"rate(echomesh_neighbor_sent_bytes_total{{{sel}}}[{RATE}])", "{{instance}} → {{neighbor}}")], "Bps"), 8, 8)
    L.add(series("Handshake failures by reason",
                 [(f"sum by (instance, reason) (increase(echomesh_handshake_failures_total{{{sel}}}[{RATE}]))", "{{instance}} {{reason}}")],
                 "none", "wrong_fingerprint or unpinned mean an identity problem: see the alert runbook."), 12, 8)
    L.add(series("Frame errors",
                 [(f"sum by (instance, kind, role) (increase(echomesh_frame_errors_total{{{sel}}}[{RATE}]))", "{{instance}} {{role}} {{kind}}")],
                 "none"), 12, 8)
    L.row("Clients")
    L.add(series("Client requests by kind",
                 [(f"sum by (instance, kind) (rate(echomesh_client_requests_total{{{sel}}}[{RATE}]))", "{{instance}} {{kind}}")],
                 "reqps"), 12, 8)
    L.add(series("Client queue bytes",
                 [(f"echomesh_client_queue_bytes{{{sel}}}", "{{instance}}")], "bytes"), 12, 8)
    L.row("Echo bridge (Smoke, Spot-On, Spot-On-Lite)")
    L.add(series("Echo links by state",
                 [(f"sum by (instance, state) (echomesh_bridge_links{{{sel}}})", "{{instance}} {{state}}")],
                 "none", "Links to Spot-On-Lite/Spot-On listeners and allowed incoming Echo neighbors; down ones: `echomeshctl neighbors`."), 6, 8)
    L.add(series("Echo frames in and out",
                 [(f"sum by (instance, direction) (rate(echomesh_bridge_frames_total{{{sel}}}[{RATE}]))", "{{instance}} {{direction}}")],
                 "pps"), 6, 8)
    L.add(series("Echo junk refused, by reason",
                 [(f"sum by (instance, reason) (increase(echomesh_bridge_junk_total{{{sel}}}[{RATE}]))", "{{instance}} {{reason}}")],
                 "none", "Each closes the connection that sent it; junk is never flooded."), 6, 8)
    L.add(series("Echo duplicates and drops",
                 [(f"sum by (instance, source) (rate(echomesh_bridge_duplicates_total{{{sel}}}[{RATE}]))", "{{instance}} duplicate from {{source}}"),
                  (f"sum by (instance, reason) (rate(echomesh_bridge_dropped_total{{{sel}}}[{RATE}]))", "{{instance}} dropped {{reason}}")],
                 "pps", "memory_full means bridge.memory_frames is too small for the Echo traffic."), 6, 8)
    L.add(series("Echo clients and identities",
                 [(f"sum by (instance) (echomesh_bridge_clients{{{sel}}})", "{{instance}} clients"),
                  (f"sum by (instance) (echomesh_bridge_identities{{{sel}}})", "{{instance}} identities")],
                 "none"), 12, 8)
    L.add(series("Echo frame memory",
                 [(f"sum by (instance) (echomesh_bridge_memory_entries{{{sel}}})", "{{instance}} frames remembered")],
                 "none"), 12, 8)
    L.row("SmokeStack services (Smoke users)")
    L.add(series("Smoke frames taken, by kind",
                 [(f"sum by (instance, kind) (rate(echomesh_smoke_frames_total{{{sel}}}[{RATE}]))", "{{instance}} {{kind}}")],
                 "pps", "stored: ozone copies kept for offline participants (on the write quorum); retrieve, read: their requests."), 8, 8)
    L.add(series("Smoke refusals, by reason",
                 [(f"sum by (instance, reason) (increase(echomesh_smoke_refused_total{{{sel}}}[{RATE}]))", "{{instance}} {{reason}}")],
                 "none", "not_durable: a copy could not be stored on the write quorum (members down?); full: raise smoke.max_* knowingly (docs/ECHO.md)."), 8, 8)
    L.add(series("Smoke frames inspected and configuration",
                 [(f"sum by (instance) (rate(echomesh_smoke_search_seconds_count{{{sel}}}[{RATE}]))", "{{instance}} frames inspected/s"),
                  (f"sum by (instance) (echomesh_smoke_ozones{{{sel}}})", "{{instance}} ozones"),
                  (f"sum by (instance) (echomesh_smoke_participants{{{sel}}})", "{{instance}} participants")],
                 "none", "Each inspection costs up to ozones × participants × 3 HMACs (echomesh_smoke_search_seconds has the times)."), 8, 8)
    L.row("Console and admin API")
    L.add(series("Console logins, by result",
                 [(f"sum by (instance, result) (increase(echomesh_console_logins_total{{{sel}}}[{RATE}]))", "{{instance}} {{result}}")],
                 "none", "bad_token or rate_limited rising: someone is guessing the admin token."), 8, 8)
    L.add(series("Console requests refused, by reason",
                 [(f"sum by (instance, reason) (increase(echomesh_console_requests_refused_total{{{sel}}}[{RATE}]))", "{{instance}} {{reason}}")],
                 "none", "csrf: a form from another site, or a page open across a restart."), 8, 8)
    L.add(series("Console sessions and admin requests",
                 [(f"sum by (instance) (echomesh_console_sessions{{{sel}}})", "{{instance}} sessions"),
                  (f"sum by (instance, result) (rate(echomesh_admin_requests_total{{{sel}}}[{RATE}]))", "{{instance}} admin {{result}}/s")],
                 "none"), 8, 8)
    L.row("Process")
    L.add(series("CPU", [(f"rate(process_cpu_seconds_total{{{sel}}}[{RATE}])", "{{instance}}")], "percentunit"), 8, 8)
    L.add(series("Resident memory", [(f"process_resident_memory_bytes{{{sel}}}", "{{instance}}")], "bytes"), 8, 8)
    L.add(series("Open file descriptors", [(f"process_open_fds{{{sel}}}", "{{instance}}")], "none"), 8, 8)
    return dashboard("echomesh-node", "echomesh / Node detail",
                     "One node (or several): traffic, neighbors, clients, process.",
                     L, [datasource_var(), instance_var()])


def ozones():
    L = Layout()
    L.add(stat("Messages stored (all replicas)", "sum(echomesh_ozone_messages)"), 6, 4)
    L.add(stat("Ozones out of sync", "max(echomesh_ozone_repair_differing_ozones)",
               description="Replication lag: ozones a node found different from a member in its last repair round."), 6, 4)
    L.add(stat("Cluster members failed", "max(echomesh_cluster_members{state=\"failed\"})"), 6, 4)
    L.add(stat("Budget used (worst node)", "max(echomesh_ozone_stored_bytes / echomesh_ozone_budget_bytes)", "percentunit"), 6, 4)
    L.add(series("Stored bytes per node",
                 [("echomesh_ozone_stored_bytes", "{{instance}}"),
                  ("echomesh_ozone_budget_bytes", "{{instance}} budget")], "bytes"), 12, 8)
    L.add(series("Deposits by result",
                 [(f"sum by (result) (rate(echomesh_ozone_deposits_total[{RATE}]))", "{{result}}")],
                 "reqps", "not_durable means fewer than W replicas were live."), 12, 8)
    L.add(series("Deposit latency",
                 [(f"histogram_quantile(0.5, sum by (le) (rate(echomesh_ozone_deposit_seconds_bucket[{RATE}])))", "p50"),
                  (f"histogram_quantile(0.99, sum by (le) (rate(echomesh_ozone_deposit_seconds_bucket[{RATE}])))", "p99")],
                 "s"), 12, 8)
    L.add(series("Repairs",
                 [(f"sum by (instance) (rate(echomesh_ozone_repair_items_total[{RATE}]))", "{{instance}} items/s"),
                  (f"sum by (instance) (rate(echomesh_ozone_repair_rounds_total[{RATE}]))", "{{instance}} rounds/s")],
                 "none", "Messages and tombstones pushed to replicas that missed them (anti-entropy)."), 12, 8)
    L.add(series("Evictions and refused proofs",
                 [(f"sum by (reason) (rate(echomesh_ozone_evictions_total[{RATE}]))", "evicted: {{reason}}"),
                  (f"sum(rate(echomesh_ozone_proof_failures_total[{RATE}]))", "wrong proof")],
                 "none"), 12, 8)
    L.add(series("Cluster members by state",
                 [("max by (state) (echomesh_cluster_members)", "{{state}}")], "none"), 12, 8)
    return dashboard("echomesh-ozones", "echomesh / Ozones and replication",
                     "Offline mailboxes: how much is stored, are replicas in sync, are deposits durable?",
                     L, [datasource_var()])


def gateway():
    L = Layout()
    L.add(stat("Node session", "min(echomesh_gateway_node_connected)",
               description="1 while the gateway has a session with a node (0: outgoing messages queue, incoming wait in the mesh)."), 4, 4)
    L.add(stat("Outbox", "sum(echomesh_gateway_outbox_messages)",
               description="Accepted messages not yet deposited for every recipient."), 4, 4)
    L.add(stat("Inbox waiting", "sum(echomesh_gateway_inbox_pending)",
               description="Incoming messages the webhook (or a pull) has not accepted yet."), 4, 4)
    L.add(stat("Dead letters", "sum(echomesh_gateway_dead_letters)",
               description="Messages the webhook did not accept in time: replay them with the API."), 4, 4)
    L.add(stat("Rejected (1h)", "sum(increase(echomesh_gateway_received_total{result=\"rejected\"}[1h]))",
               description="Incoming messages that failed verification: never delivered, listed at /v1/rejected."), 4, 4)
    L.add(stat("Refusals (1h)", "sum(increase(echomesh_gateway_refusals_total[1h]))",
               description="API requests refused (problem+json), any reason."), 4, 4)
    L.add(series("Messages",
                 [(f"sum(rate(echomesh_gateway_messages_accepted_total[{RATE}]))", "accepted (202)"),
                  (f"sum by (outcome) (rate(echomesh_gateway_recipient_outcomes_total[{RATE}]))", "sent: {{outcome}}"),
                  (f"sum by (result) (rate(echomesh_gateway_received_total[{RATE}]))", "received: {{result}}")],
                 "ops", "Outgoing copies by outcome; incoming messages by verification."), 12, 8)
    L.add(series("Webhook attempts",
                 [(f"sum by (result) (rate(echomesh_gateway_webhook_attempts_total[{RATE}]))", "{{result}}")],
                 "ops", "ok, http_error (the receiver answered non-2xx), network (unreachable, timeout)."), 12, 8)
    L.add(series("Latency",
                 [(f"histogram_quantile(0.99, sum by (le) (rate(echomesh_gateway_send_seconds_bucket[{RATE}])))", "202 to deposited p99"),
                  (f"histogram_quantile(0.99, sum by (le) (rate(echomesh_gateway_webhook_seconds_bucket[{RATE}])))", "webhook attempt p99")],
                 "s"), 12, 8)
    L.add(series("Refusals by reason",
                 [(f"sum by (reason) (rate(echomesh_gateway_refusals_total[{RATE}]))", "{{reason}}")],
                 "ops", "See docs/GATEWAY.md for each reason."), 12, 8)
    return dashboard("echomesh-gateway", "echomesh / Gateway",
                     "Is the city's software getting its messages through, both ways?",
                     L, [datasource_var()])


def main():
    for name, d in [("mesh-overview", mesh_overview()), ("node-detail", node_detail()), ("ozones", ozones()), ("gateway", gateway())]:
        (HERE / f"{name}.json").write_text(json.dumps(d, indent=2) + "\n")


if __name__ == "__main__":
    main()
