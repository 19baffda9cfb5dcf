//! Admin API request and response types, shared by the node and `echomeshctl`.
//! These JSON shapes are a documented contract (docs/OPERATIONS.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::echo::EchoMode;

pub const PATH_STATUS: &str = "/v1/status";
pub const PATH_NEIGHBORS: &str = "/v1/neighbors";
pub const PATH_INVITES: &str = "/v1/invites";
pub const PATH_JOIN: &str = "/v1/join";
/// `POST`: re-read the configuration; answers [`ReloadReport`].
pub const PATH_RELOAD: &str = "/v1/reload";
/// `GET`: drain status; `POST {deadline_secs?}`: start draining.
pub const PATH_DRAIN: &str = "/v1/drain";
/// `POST`: serve again.
pub const PATH_UNDRAIN: &str = "/v1/undrain";
/// `GET`: the mesh as this node knows it ([`TopologyView`]).
pub const PATH_TOPOLOGY: &str = "/v1/topology";
/// `GET`: this node and each neighbor as members of the mesh ([`MembersView`]).
pub const PATH_MEMBERS: &str = "/v1/members";
/// `GET`: the cluster's Smoke ozones ([`SmokeOzones`]); `POST` [`SmokeOzoneChange`] adds one,
/// `DELETE` with the same body removes one. `echomeshctl smoke ozones`.
pub const PATH_SMOKE_OZONES: &str = "/v1/smoke/ozones";
/// `GET`: Smoke participants ([`SmokeParticipants`]); `POST`/`DELETE` [`SmokeParticipantChange`].
pub const PATH_SMOKE_PARTICIPANTS: &str = "/v1/smoke/participants";
/// `GET`/`PUT` [`SmokePrivateServer`]: private-server mode (Smoke clients log in with `0097b`).
pub const PATH_SMOKE_PRIVATE_SERVER: &str = "/v1/smoke/private-server";
/// `POST`: a one-time console login code ([`ConsoleLoginCode`]); `echomeshctl console`.
pub const PATH_CONSOLE_LOGIN_CODES: &str = "/v1/console/login-codes";

/// A short-lived, single-use code that logs a browser in to the console: open `path` (with
/// the code in its query) on the admin listener within `expires_in_secs`. Never the admin
/// token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleLoginCode {
    pub path: String,
    pub expires_in_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainRequest {
    pub deadline_secs: Option<u64>,
}
/// `DELETE` unpins (or, with an Echo link's `echo-…` ID, removes that link), `PUT …/mode`
/// changes the echo mode; `{fingerprint}` is the 64-hex ID.
pub const PATH_NEIGHBOR: &str = "/v1/neighbors/{fingerprint}";
pub const PATH_NEIGHBOR_MODE: &str = "/v1/neighbors/{fingerprint}/mode";

/// `POST /v1/neighbors`: pin a neighbor and start dialing it (persisted, origin `admin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighborAddRequest {
    /// `HOST:PORT#FINGERPRINT`, optionally `@half`; or an Echo link
    /// `echo+tls://HOST:PORT[?cert-sha256=HEX]` / `echo+tcp://HOST:PORT`.
    pub spec: String,
}

/// `PUT /v1/neighbors/{fingerprint}/mode`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighborModeRequest {
    /// `full` or `half`.
    pub mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Short node ID.
    pub id: String,
    /// Full fingerprint (64 hex).
    pub fingerprint: String,
    pub version: String,
    pub protocol: u16,
    pub ready: bool,
    pub draining: bool,
    pub cluster: String,
    pub listen: String,
    pub advertise: String,
    pub uptime_secs: u64,
    pub neighbors_up: usize,
    pub neighbors_total: usize,
    pub client_sessions: usize,
    /// The drain in progress or finished (phase `serving` when not draining).
    pub drain: DrainStatus,
    /// The Echo bridge, when this node has an Echo listener or Echo links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeStatus>,
}

/// The Echo bridge in `status` (docs/ECHO.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BridgeStatus {
    /// The Echo listener's TCP address, if it listens.
    pub listen: Option<String>,
    /// Whether the listener speaks TLS.
    pub tls: bool,
    /// SHA-256 of the listener's certificate (64 hex): what Smoke users compare when they
    /// first connect; it never changes.
    pub cert_sha256: Option<String>,
    pub links_up: usize,
    pub links_total: usize,
    pub clients: usize,
}

/// Echo-link details of a `neighbors` entry of kind `echo`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EchoLinkInfo {
    /// `out` (this node dials it) or `in` (it dialed this node's Echo listener).
    pub direction: String,
    /// The configured address (`echo+tls://…`), for outgoing links.
    pub url: Option<String>,
    /// SHA-256 of the peer's certificate (64 hex), when it presented one.
    pub cert_sha256: Option<String>,
    pub frames_in: u64,
    pub frames_out: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighborInfo {
    /// `quic` (an echomesh node) or `echo` (an Echo link: Spot-On-Lite or Spot-On).
    #[serde(default = "kind_quic")]
    pub kind: String,
    /// For `quic`: the short node ID. For `echo`: the link's identifier (`echo-` and ten hex
    /// digits), which `DELETE /v1/neighbors/{id}` takes.
    pub id: String,
    pub fingerprint: String,
    /// Configured dial address, or the remote address of its connection when it dials us.
    pub addr: String,
    /// `up`, `connecting` or `down`.
    pub state: String,
    /// `full` or `half`.
    pub mode: String,
    /// `static`, `joined` or `admin`.
    pub origin: String,
    pub rtt_ms: Option<f64>,
    /// Seconds in the current state.
    pub since_secs: u64,
    pub queue_bytes: usize,
    pub last_error: Option<String>,
    /// What the neighbor said about itself: `up`, `draining` or `left`.
    pub departure: String,
    /// Protocol version from its hello (0 before the first connection).
    pub protocol: u16,
    /// QUIC's own view of each live connection to it (usually one; two for a moment when
    /// both sides dialed at once): RTT estimate, congestion window, packets sent and lost.
    #[serde(default)]
    pub connections: Vec<QuicPathInfo>,
    /// Echo links only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<EchoLinkInfo>,
}

/// `GET /v1/members`: the failure detector's view (docs/MEMBERSHIP.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersView {
    /// This node's cluster, short ID and state (`alive`, `draining` or `left`).
    pub cluster: String,
    pub id: String,
    pub state: String,
    /// The detector's timing: heartbeat period, suspicion and failure thresholds.
    pub heartbeat_ms: u64,
    pub suspect_ms: u64,
    pub fail_ms: u64,
    /// Every neighbor (an echomesh node), in any cluster.
    pub members: Vec<MemberInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Short node ID.
    pub id: String,
    pub fingerprint: String,
    /// From its last hello (none before the first connection).
    pub cluster: Option<String>,
    /// `alive`, `suspect`, `draining`, `left` or `failed`.
    pub state: String,
    /// When it entered that state (as this node saw it), Unix milliseconds.
    pub since_unix_ms: u64,
    /// Milliseconds since its last heartbeat, while its link is up.
    pub last_heard_ms: Option<u64>,
    /// It sends heartbeats (protocol ≥ 5); else only its connections tell whether it is up.
    pub heartbeats: bool,
    pub protocol: u16,
    /// Times it was suspected, failed by the detector, and came back after being down.
    pub suspicions: u32,
    pub failures: u32,
    pub flaps: u32,
}

fn kind_quic() -> String {
    "quic".into()
}

/// One QUIC connection's path statistics, as quinn reports them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuicPathInfo {
    pub rtt_ms: f64,
    pub cwnd_bytes: u64,
    pub congestion_events: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub mtu: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct InviteRequest {
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteResponse {
    pub token: String,
    pub addr: String,
    pub expires_unix: u64,
    /// Set when the advertised address is probably not reachable from other hosts.
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub neighbor: NeighborInfo,
}

/// Body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    /// Settings that changed but take effect only after a restart.
    pub restart_needed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub draining: bool,
    /// `serving`, `moving_clients`, `handing_off`, `flushing`, `leaving`, `done` or
    /// `timed_out`.
    pub phase: crate::drain::Phase,
    /// Subscribed client sessions when the drain started, and how many were redirected.
    pub clients_total: usize,
    pub clients_moved: usize,
    /// Client sessions still connected (any kind).
    pub clients_connected: usize,
    pub ozones_total: usize,
    pub ozones_done: usize,
    /// Bytes still queued towards neighbors.
    pub queued_bytes: usize,
    /// Neighbors that confirmed they know this node is leaving.
    pub neighbors_told: usize,
    pub safe_to_stop: bool,
    /// Seconds since the drain started.
    pub elapsed_secs: u64,
    pub detail: Option<String>,
}

/// The topology as shown by the admin API (`GET /v1/topology`) and `echomeshctl topology`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopologyView {
    pub nodes: Vec<NodeView>,
    pub links: Vec<LinkView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub fingerprint: String,
    pub addr: String,
    pub cluster: String,
    pub software: String,
    pub protocol: u16,
    /// `up`, `draining`, `left` or `failed`.
    pub state: String,
    /// Seconds since its last announcement arrived (0 for this node).
    pub last_heard_secs: u64,
    pub this_node: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkView {
    pub a: String,
    pub b: String,
    /// `up`, `down`, or `left` (down because one end left).
    pub state: String,
    pub rtt_ms: Option<f64>,
    pub mode: EchoMode,
    /// The node whose announcement this link comes from.
    pub reported_by: String,
}

impl TopologyView {
    pub fn count(&self, state: &str) -> usize {
        self.nodes.iter().filter(|n| n.state == state).count()
    }

    /// Graphviz: nodes grouped by cluster, links labelled with their RTT.
    pub fn to_dot(&self) -> String {
        let mut out =
            String::from("graph echomesh {\n  node [shape=box, fontname=\"monospace\"];\n");
        let mut clusters: BTreeMap<&str, Vec<&NodeView>> = BTreeMap::new();
        for n in &self.nodes {
            clusters.entry(n.cluster.as_str()).or_default().push(n);
        }
        for (i, (cluster, nodes)) in clusters.iter().enumerate() {
            out.push_str(&format!(
                "  subgraph cluster_{i} {{\n    label={};\n",
                dot_quote(cluster)
            ));
            for n in nodes {
                let style = match n.state.as_str() {
                    "up" => "solid",
                    "draining" => "dashed",
                    _ => "dotted",
                };
                out.push_str(&format!(
                    "    {} [label={}, style={style}];\n",
                    dot_quote(&n.id),
                    dot_quote(&format!("{}\n{}\n{}", n.id, n.addr, n.state))
                ));
            }
            out.push_str("  }\n");
        }
        for l in &self.links {
            let label = match l.rtt_ms {
                Some(ms) => format!("{ms:.1} ms"),
                None => l.state.clone(),
            };
            let style = if l.state == "up" { "solid" } else { "dotted" };
            out.push_str(&format!(
                "  {} -- {} [label={}, style={style}];\n",
                dot_quote(&l.a),
                dot_quote(&l.b),
                dot_quote(&label)
            ));
        }
        out.push_str("}\n");
        out
    }
}

fn dot_quote(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            '\n' => vec!['\\', 'n'],
            c if c.is_control() => vec![],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// What a running node writes to `<data-dir>/runtime.json`, so tools and tests can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub version: String,
    pub id: String,
    pub fingerprint: String,
    pub quic: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

/// The cluster's Smoke ozones (every node holds the same list).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeOzones {
    pub ozones: Vec<String>,
    /// At most this many (`smoke.max_ozones`).
    pub max: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeOzoneChange {
    /// The ozone address as Smoke users type it, e.g. `203.0.113.7:4710:TCP`.
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeParticipant {
    pub siphash_id: String,
    /// Whether the participant's keys were captured (EPKS).
    pub keys: bool,
    /// Signature algorithm of the captured keys (`EC`, `RSA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// When the record last changed (ms since the epoch).
    pub since_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeParticipants {
    pub participants: Vec<SmokeParticipant>,
    pub max: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokeParticipantChange {
    pub siphash_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmokePrivateServer {
    pub on: bool,
}
