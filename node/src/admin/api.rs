//! Admin API request and response types, shared by the node and `echomeshctl`.
//! These JSON shapes are a documented contract (docs/OPERATIONS.md).

use serde::{Deserialize, Serialize};

pub const PATH_STATUS: &str = "/v1/status";
pub const PATH_NEIGHBORS: &str = "/v1/neighbors";
pub const PATH_INVITES: &str = "/v1/invites";
pub const PATH_JOIN: &str = "/v1/join";
/// `POST`: re-read the configuration; answers `crate::reload::ReloadReport`.
pub const PATH_RELOAD: &str = "/v1/reload";
/// `GET`: drain status; `POST {deadline_secs?}`: start draining.
pub const PATH_DRAIN: &str = "/v1/drain";
/// `POST`: serve again.
pub const PATH_UNDRAIN: &str = "/v1/undrain";
/// `GET`: the mesh as this node knows it (`crate::topology::TopologyView`).
pub const PATH_TOPOLOGY: &str = "/v1/topology";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainRequest {
    pub deadline_secs: Option<u64>,
}
/// `DELETE` unpins, `PUT …/mode` changes the echo mode; `{fingerprint}` is the 64-hex ID.
pub const PATH_NEIGHBOR: &str = "/v1/neighbors/{fingerprint}";
pub const PATH_NEIGHBOR_MODE: &str = "/v1/neighbors/{fingerprint}/mode";

/// `POST /v1/neighbors`: pin a neighbor and start dialing it (persisted, origin `admin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighborAddRequest {
    /// `HOST:PORT#FINGERPRINT`, optionally `@half`.
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
    pub drain: crate::drain::DrainStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighborInfo {
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
