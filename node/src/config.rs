//! Node configuration: defaults, then a TOML file, then `ECHOMESH_*` environment variables
//! (nested keys with `__`, e.g. `ECHOMESH_ECHO__SEEN_TTL_SECS=300`), then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::rate::RateLimit;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where identity, admin token and RocksDB live.
    pub data_dir: PathBuf,
    /// UDP address for QUIC (neighbors and clients).
    pub listen: SocketAddr,
    /// Address other nodes should dial, put in invite tokens. Empty: derived from `listen`.
    pub advertise: String,
    /// Admin HTTP API address. Keep it on loopback unless you know why.
    pub admin: SocketAddr,
    /// Cluster name (ozone replication group).
    pub cluster: String,
    /// Static neighbors, `HOST:PORT#FINGERPRINT` (optionally `…#FINGERPRINT@half`).
    pub neighbors: Vec<String>,
    /// How long a drain (and SIGTERM) may take to hand off ozones and flush queues.
    pub drain_deadline_secs: u64,
    /// Connected clients are moved to other nodes spread over this many seconds of a drain
    /// (not all at once), at most a third of the drain deadline.
    pub drain_client_grace_secs: u64,
    pub log: LogConfig,
    pub echo: EchoSection,
    pub limits: Limits,
    pub peer: PeerSection,
    pub invite: InviteSection,
    pub ozone: OzoneSection,
    pub telemetry: Telemetry,
    pub bridge: BridgeSection,
    pub console: ConsoleSection,
    pub smoke: SmokeSection,
}

/// The web console on the admin listener (docs/OPERATIONS.md, "The console").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// Serve the console at `/console/` on the admin listener.
    pub enabled: bool,
    /// The admin listener has no TLS: on an address other than loopback the console stays off
    /// (reach it with `ssh -L` or `kubectl port-forward`) unless this is set, e.g. behind a
    /// TLS-terminating proxy on the same host.
    pub allow_remote: bool,
    /// Sessions logged in at once; a new login ends the least recently used one.
    pub max_sessions: usize,
    /// A session unused this long ends.
    pub session_idle_secs: u64,
    /// A session ends this long after login, used or not.
    pub session_lifetime_secs: u64,
}

/// SmokeStack services for Smoke clients on the Echo listener (docs/ECHO.md, "SmokeStack
/// services"). Ozones and participants are the cluster's: add them with `echomeshctl smoke`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmokeSection {
    /// Inspect Echo frames for the services (stored ozone copies, retrieval, key sharing).
    /// Nothing is inspected while the cluster has no Smoke ozone.
    pub enabled: bool,
    /// Ozone addresses this node adds to the cluster's at start when they are missing (like
    /// static neighbors: one removed through the API comes back at the next start). Most
    /// operators use `echomeshctl smoke ozones add` instead.
    pub ozones: Vec<String>,
    /// Ozones in the cluster at most.
    pub max_ozones: usize,
    /// Participants in the cluster at most. Every frame costs up to ozones × participants × 3
    /// HMACs (the storage-tag search): see docs/BENCHMARKS.md before raising it.
    pub max_participants: usize,
    /// The storage-tag search tries ozones × participants × 3 HMACs on every frame that is
    /// not otherwise recognised; an ozone or participant that would take it past this bound
    /// is refused (counted). About 1 µs each on one core (docs/BENCHMARKS.md): the default,
    /// 1 000 participants × 2 ozones, costs about 6 ms per frame at worst.
    pub max_search_hmacs: usize,
    /// Stored messages released per retrieval at most (the oldest first; the rest follow on
    /// the next retrieval once these are read).
    pub max_release: usize,
    /// Frames inspected at once (each on the blocking pool); more wait, slowing their sender.
    pub search_workers: usize,
    /// Ozone copies being stored at once (each waits for the write quorum); more wait.
    pub max_pending_stores: usize,
    /// A private server re-sends its challenge (`0097a`) at most this often.
    pub challenge_interval_secs: u64,
}

impl Default for SmokeSection {
    fn default() -> Self {
        SmokeSection {
            enabled: true,
            ozones: Vec::new(),
            max_ozones: 64,
            max_participants: 1000,
            max_search_hmacs: 6_000,
            max_release: 500,
            search_workers: 2,
            max_pending_stores: 64,
            challenge_interval_secs: 5,
        }
    }
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            enabled: true,
            allow_remote: false,
            max_sessions: 16,
            session_idle_secs: 30 * 60,
            session_lifetime_secs: 12 * 3600,
        }
    }
}

/// The Echo bridge: Smoke and Spot-On clients and Spot-On-Lite daemons (docs/ECHO.md). The
/// `[echo]` section configures echomesh's own flooding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// TCP address of the Echo listener (TLS 1.2 and 1.3; Echo clients' default port is 4710).
    /// Unset: no listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Serve plain TCP instead of TLS on `listen` (only for networks that are private anyway).
    pub plain: bool,
    /// Outgoing links to Spot-On-Lite or Spot-On listeners:
    /// `echo+tls://HOST:PORT?cert-sha256=HEX` (pinned), `echo+tls://HOST:PORT` (pinned on first
    /// use) or `echo+tcp://HOST:PORT` (plain).
    pub neighbors: Vec<String>,
    /// Source networks (CIDR, e.g. `10.20.0.0/16`) whose connections may announce themselves
    /// as Spot-On-Lite servers (`0111`) and get the unfiltered stream.
    pub neighbor_networks: Vec<String>,
    /// SHA-256 (64 hex) of client certificates that may do the same from anywhere.
    pub neighbor_certs: Vec<String>,
    /// Concurrent Echo connections accepted (clients and incoming neighbors).
    pub max_connections: usize,
    /// Echo links (outgoing ones and incoming Spot-On-Lite neighbors) at most; counted apart
    /// from QUIC neighbors (`limits.max_neighbors`).
    pub max_links: usize,
    /// Largest frame accepted, EOM included (a frame crosses the mesh as one packet, so at
    /// most `echo.max_payload_bytes` takes effect).
    pub max_frame_bytes: usize,
    /// A started frame must be complete within this time.
    pub frame_timeout_secs: u64,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// Capabilities (`0014`) are sent this often on every Echo connection (keep-alive).
    pub keepalive_secs: u64,
    /// Nothing is written on a new connection before this delay (a Spot-On-Lite child drops
    /// what arrives in its first 2.5 s); frames wait in the connection's queue.
    pub start_delay_ms: u64,
    /// How long an identity (`0095a`) stays registered after it was last announced.
    pub identity_lifetime_secs: u64,
    pub max_identities_per_connection: usize,
    /// How long every Echo frame's hash is remembered (at least 600 s: longer than any Echo
    /// software's duplicate cache, so that echomesh breaks every loop).
    pub memory_secs: u64,
    /// Frames remembered at most; when full of live entries, new frames are refused (counted).
    pub memory_frames: usize,
    /// Outgoing queue per Echo connection.
    pub queue_bytes: usize,
    /// Incoming traffic per Echo connection; excess is slowed down (backpressure).
    pub rate: RateLimit,
}

impl Default for BridgeSection {
    fn default() -> Self {
        BridgeSection {
            listen: None,
            plain: false,
            neighbors: Vec::new(),
            neighbor_networks: Vec::new(),
            neighbor_certs: Vec::new(),
            max_connections: 256,
            max_links: 32,
            max_frame_bytes: 256 * 1024,
            frame_timeout_secs: 10,
            idle_timeout_secs: 120,
            keepalive_secs: 30,
            start_delay_ms: 3_000,
            identity_lifetime_secs: 60,
            max_identities_per_connection: 64,
            memory_secs: 900,
            memory_frames: 262_144,
            queue_bytes: 4 << 20,
            rate: RateLimit {
                packets_per_sec: 2_000,
                bytes_per_sec: 8 << 20,
                burst_secs: 2.0,
            },
        }
    }
}

impl BridgeSection {
    /// The allowed neighbor networks, parsed (validated by `Config::validate`).
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.neighbor_networks
            .iter()
            .filter_map(|n| parse_net(n).ok())
            .collect()
    }

    /// The allowed neighbor certificates, parsed (validated by `Config::validate`).
    pub fn certs(&self) -> Vec<[u8; 32]> {
        self.neighbor_certs
            .iter()
            .filter_map(|c| parse_sha256(c).ok())
            .collect()
    }

    /// This section with `max_frame_bytes` capped at the echo payload limit (what the bridge
    /// applies).
    pub fn effective(&self, max_payload: usize) -> BridgeSection {
        BridgeSection {
            max_frame_bytes: self.max_frame_bytes.min(max_payload),
            ..self.clone()
        }
    }

    fn validate(&self) -> Result<(), String> {
        for n in &self.neighbors {
            n.parse::<echomesh_proto::bridge::EchoUrl>()
                .map_err(|e| format!("bridge.neighbors: {e}"))?;
        }
        for n in &self.neighbor_networks {
            parse_net(n).map_err(|e| format!("bridge.neighbor_networks: {e}"))?;
        }
        for c in &self.neighbor_certs {
            parse_sha256(c).map_err(|e| format!("bridge.neighbor_certs: {e}"))?;
        }
        if self.memory_secs < 600 {
            return Err(
                "bridge.memory_secs: must be at least 600 (longer than any Echo duplicate cache)"
                    .into(),
            );
        }
        if self.memory_frames == 0
            || self.max_connections == 0
            || self.max_links == 0
            || self.max_identities_per_connection == 0
        {
            return Err("bridge.memory_frames, max_connections, max_links and max_identities_per_connection must be positive".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err("bridge.max_frame_bytes: must be at least 1024".into());
        }
        if self.queue_bytes < self.max_frame_bytes {
            return Err(
                "bridge.queue_bytes: must hold at least one frame of bridge.max_frame_bytes".into(),
            );
        }
        if self.keepalive_secs == 0 || self.idle_timeout_secs <= self.keepalive_secs {
            return Err(
                "bridge.idle_timeout_secs must be larger than bridge.keepalive_secs (> 0)".into(),
            );
        }
        if self.frame_timeout_secs == 0 || self.identity_lifetime_secs == 0 {
            return Err(
                "bridge.frame_timeout_secs and identity_lifetime_secs must be positive".into(),
            );
        }
        let r = &self.rate;
        if r.packets_per_sec == 0
            || r.bytes_per_sec == 0
            || r.burst_secs.is_nan()
            || r.burst_secs <= 0.0
        {
            return Err("bridge.rate: rates and burst_secs must be positive".into());
        }
        Ok(())
    }
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a network like 10.0.0.0/8"))
}

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    hex::decode(s.replace(':', ""))
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is not a SHA-256 (64 hex digits)"))
}

/// Ozones: replication and storage limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OzoneSection {
    /// Copies of each ozone in the cluster (R); all members when the cluster is smaller.
    pub replicas: usize,
    /// Durable copies before a deposit is acknowledged (W), at most R.
    pub write_quorum: usize,
    pub max_messages_per_ozone: u64,
    pub max_bytes_per_ozone: u64,
    /// Messages older than this are evicted (counted).
    pub retention_secs: u64,
    /// All ozones on this node together.
    pub max_total_bytes: u64,
    /// How often replicas compare digests with every live member and repair differences.
    pub repair_interval_secs: u64,
}

impl Default for OzoneSection {
    fn default() -> Self {
        let l = crate::ozone::store::OzoneLimits::default();
        OzoneSection {
            replicas: 2,
            write_quorum: 2,
            max_messages_per_ozone: l.max_messages_per_ozone,
            max_bytes_per_ozone: l.max_bytes_per_ozone,
            retention_secs: l.retention_ms / 1000,
            max_total_bytes: l.max_total_bytes,
            repair_interval_secs: 60,
        }
    }
}

impl OzoneSection {
    pub fn limits(&self, max_message_bytes: usize) -> crate::ozone::store::OzoneLimits {
        crate::ozone::store::OzoneLimits {
            max_messages_per_ozone: self.max_messages_per_ozone,
            max_bytes_per_ozone: self.max_bytes_per_ozone,
            max_message_bytes: max_message_bytes as u64,
            retention_ms: self.retention_secs.saturating_mul(1000),
            max_total_bytes: self.max_total_bytes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `info,echomesh_node::peer=debug`.
    pub level: String,
    /// `human` or `json`.
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EchoSection {
    pub seen_ttl_secs: u64,
    pub seen_capacity: usize,
    /// Hops given to packets injected by clients (and the cap on what clients ask for).
    pub default_hops: u8,
    pub max_payload_bytes: usize,
    /// The packet log (recent accepted packets): what a neighbor that was down or overflowed
    /// is offered again, and what a client that lost its connection is replayed. Bytes held.
    pub log_bytes: usize,
    /// How long a packet stays in the log; at most half of `seen_ttl_secs` takes effect, so
    /// that a neighbor still remembers whatever it is offered.
    pub log_secs: u64,
    /// How new packets go to neighbors: `flood` (every packet over every link) or `lazy` (over
    /// a spanning tree per origin, IDs only on the other links; docs/BROADCAST.md).
    pub broadcast: echomesh_proto::broadcast::Mode,
    /// Lazy push: how long a packet announced by a neighbor may take to arrive over the tree
    /// before it is pulled (it grows by itself while the tree is late, up to 2 s).
    pub graft_timeout_ms: u64,
}

impl EchoSection {
    /// The packet log's retention in effect: `log_secs`, capped at half the seen-cache TTL.
    pub fn log_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.log_secs.min(self.seen_ttl_secs / 2).max(1))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_frame_bytes: usize,
    /// Per-neighbor outgoing queue.
    pub neighbor_queue_bytes: usize,
    /// Per-client outgoing queue (subscriptions).
    pub client_queue_bytes: usize,
    pub max_neighbors: usize,
    pub max_clients: usize,
    /// Concurrent incoming handshakes.
    pub max_handshakes: usize,
    /// Key bundles in the key directory; new keys beyond it are refused and counted.
    pub max_key_bundles: usize,
    /// Incoming traffic per neighbor; excess is dropped and counted.
    pub neighbor_rate: RateLimit,
    /// Incoming traffic per client; excess is slowed down (backpressure), not dropped.
    pub client_rate: RateLimit,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    pub keepalive_ms: u64,
    pub idle_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// QUIC congestion control for the data this node sends: `bbr` (default: keeps links
    /// moving under random loss, where `cubic` and `newreno` collapse to a few packets a
    /// second), `cubic` or `newreno` (fairer to other TCP traffic on a shared, congested WAN).
    pub congestion_control: String,
    /// Failure detection (docs/MEMBERSHIP.md): a heartbeat datagram every `heartbeat_ms` on
    /// each neighbor connection; a neighbor silent for `suspect_ms` is suspect (no longer a
    /// redirect target), for `fail_ms` failed (its connections are closed, ozone placement
    /// moves on, it is dialed again with back-off). Neighbors older than protocol 5 send no
    /// heartbeats and are judged by `idle_timeout_ms`.
    pub heartbeat_ms: u64,
    pub suspect_ms: u64,
    pub fail_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InviteSection {
    pub default_ttl_secs: u64,
    pub max_outstanding: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// OTLP/HTTP endpoint (e.g. `http://collector:4318`); empty = use the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else trace export is off.
    pub otlp_endpoint: String,
    /// Fraction of traces started here that are recorded (0.0–1.0); a trace started by
    /// another node follows that node's decision. `OTEL_TRACES_SAMPLER_ARG` overrides it.
    pub sample_ratio: f64,
    /// `service.name` of the spans unless `OTEL_SERVICE_NAME` is set.
    pub service_name: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: String::new(),
            sample_ratio: 0.1,
            service_name: "echomesh-node".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./echomesh-data"),
            listen: SocketAddr::from(([0, 0, 0, 0], 4710)),
            advertise: String::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 4711)),
            cluster: "default".into(),
            neighbors: Vec::new(),
            log: LogConfig::default(),
            echo: EchoSection::default(),
            limits: Limits::default(),
            peer: PeerSection::default(),
            invite: InviteSection::default(),
            ozone: OzoneSection::default(),
            drain_deadline_secs: 60,
            drain_client_grace_secs: 10,
            telemetry: Telemetry::default(),
            bridge: BridgeSection::default(),
            console: ConsoleSection::default(),
            smoke: SmokeSection::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "human".into(),
        }
    }
}

impl Default for EchoSection {
    fn default() -> Self {
        EchoSection {
            seen_ttl_secs: 600,
            seen_capacity: 1_000_000,
            default_hops: 16,
            max_payload_bytes: 256 * 1024,
            log_bytes: 32 << 20,
            log_secs: 120,
            broadcast: echomesh_proto::broadcast::Mode::Flood,
            graft_timeout_ms: 500,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: crate::limits::DEFAULT_MAX_FRAME,
            neighbor_queue_bytes: 16 << 20,
            client_queue_bytes: 4 << 20,
            max_neighbors: 64,
            max_clients: 1024,
            max_handshakes: 64,
            max_key_bundles: 100_000,
            neighbor_rate: RateLimit {
                packets_per_sec: 500_000,
                bytes_per_sec: 256 << 20,
                burst_secs: 1.0,
            },
            client_rate: RateLimit {
                packets_per_sec: 200_000,
                bytes_per_sec: 64 << 20,
                burst_secs: 1.0,
            },
        }
    }
}

impl Default for PeerSection {
    fn default() -> Self {
        PeerSection {
            keepalive_ms: 2_000,
            idle_timeout_ms: 8_000,
            handshake_timeout_ms: 5_000,
            backoff_min_ms: 200,
            backoff_max_ms: 30_000,
            congestion_control: "bbr".into(),
            heartbeat_ms: 100,
            suspect_ms: 500,
            fail_ms: 1_200,
        }
    }
}

impl Default for InviteSection {
    fn default() -> Self {
        InviteSection {
            default_ttl_secs: 15 * 60,
            max_outstanding: 256,
        }
    }
}

/// Variables that share the `ECHOMESH_` prefix but are not node settings.
const NON_CONFIG_ENV: &[&str] = &[
    "config",
    "passphrase",
    "ozone_secret",
    "known_nodes",
    "admin_url",
    "token_file",
    "bin_dir",
    // scripts/fuzz and scripts/test knobs: a developer's `ECHOMESH_FUZZ_SECONDS=60
    // ./scripts/test` must not make the config tests (or a node started meanwhile) refuse them.
    "fuzz_seconds",
    "fuzz_asan",
    "fuzz_target_dir",
    "npm_cache",
    "tools",
    "chaos_seed",
    // The integration tests: where the team's third-party snapshots are.
    "third_party",
    "chaos_seeds",
    "chaos_net",
    "chaos_nodes",
    "chaos_scale",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Settings given as flags; each overrides file and environment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub neighbors: Vec<String>,
    #[serde(skip_serializing_if = "BridgeOverrides::is_empty")]
    pub bridge: BridgeOverrides,
    #[serde(skip_serializing_if = "EchoOverrides::is_empty")]
    pub echo: EchoOverrides,
}

/// `--broadcast`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EchoOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<echomesh_proto::broadcast::Mode>,
}

impl EchoOverrides {
    fn is_empty(&self) -> bool {
        self.broadcast.is_none()
    }
}

/// `--bridge-*` flags.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BridgeOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain: Option<bool>,
    #[serde(skip)]
    pub neighbors: Vec<String>,
}

impl BridgeOverrides {
    fn is_empty(&self) -> bool {
        self.listen.is_none() && self.plain.is_none()
    }
}

impl Config {
    /// Load defaults → `file` → environment → `overrides`, then validate.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Missing(f.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(
            Env::prefixed("ECHOMESH_")
                .split("__")
                .ignore(NON_CONFIG_ENV),
        );
        let mut cfg: Config = fig
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // Flag neighbors add to (not replace) configured ones.
        if !overrides.neighbors.is_empty() {
            for n in &overrides.neighbors {
                if !cfg.neighbors.contains(n) {
                    cfg.neighbors.push(n.clone());
                }
            }
        }
        for n in &overrides.bridge.neighbors {
            if !cfg.bridge.neighbors.contains(n) {
                cfg.bridge.neighbors.push(n.clone());
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse a configuration file's text over the defaults and validate it (no environment,
    /// no flags): what `load` does with a file, for checks and fuzzing.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for n in &self.neighbors {
            if let Err(e) = NeighborSpec::from_str(n) {
                return bad(format!("neighbors: {e}"));
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return bad("telemetry.sample_ratio: must be between 0.0 and 1.0".into());
        }
        let sm = &self.smoke;
        if sm.max_ozones == 0 || sm.max_ozones > 1024 {
            return bad("smoke.max_ozones: must be between 1 and 1024".into());
        }
        if sm.max_participants == 0 || sm.max_participants > 100_000 {
            return bad("smoke.max_participants: must be between 1 and 100000".into());
        }
        if let Some(Err(e)) = sm
            .ozones
            .iter()
            .map(|a| echomesh_proto::smoke::check_ozone(a))
            .find(Result::is_err)
        {
            return bad(format!("smoke.ozones: {e}"));
        }
        if sm.max_search_hmacs < 3 {
            return bad(
                "smoke.max_search_hmacs: must be at least 3 (one ozone, one participant)".into(),
            );
        }
        if sm.max_release == 0 || sm.max_release > 10_000 {
            return bad("smoke.max_release: must be between 1 and 10000".into());
        }
        if sm.search_workers == 0 || sm.search_workers > 64 || sm.max_pending_stores == 0 {
            return bad("smoke.search_workers: must be between 1 and 64, smoke.max_pending_stores at least 1".into());
        }
        if sm.challenge_interval_secs == 0 {
            return bad("smoke.challenge_interval_secs: must be at least 1".into());
        }
        let c = &self.console;
        if c.max_sessions == 0 || c.max_sessions > 1024 {
            return bad("console.max_sessions: must be between 1 and 1024".into());
        }
        if c.session_idle_secs < 60 || c.session_lifetime_secs < c.session_idle_secs {
            return bad("console.session_idle_secs: must be at least 60 and at most console.session_lifetime_secs".into());
        }
        if c.session_lifetime_secs > 7 * 24 * 3600 {
            return bad("console.session_lifetime_secs: at most 604800 (7 days)".into());
        }
        if self.cluster.is_empty() || self.cluster.len() > 64 {
            return bad("cluster: must be 1 to 64 characters".into());
        }
        if self.limits.max_frame_bytes < 64 * 1024
            || self.limits.max_frame_bytes > crate::wire::ABSOLUTE_MAX_FRAME
        {
            return bad(format!(
                "limits.max_frame_bytes: must be between 65536 and {}",
                crate::wire::ABSOLUTE_MAX_FRAME
            ));
        }
        if self.echo.max_payload_bytes + 1024 > self.limits.max_frame_bytes {
            return bad(
                "echo.max_payload_bytes: must be at least 1 KiB below limits.max_frame_bytes"
                    .into(),
            );
        }
        if self.echo.seen_capacity == 0 || self.echo.seen_ttl_secs == 0 {
            return bad("echo.seen_capacity and echo.seen_ttl_secs must be positive".into());
        }
        if !(10..=2000).contains(&self.echo.graft_timeout_ms) {
            return bad(format!(
                "echo.graft_timeout_ms: {} is outside 10..=2000",
                self.echo.graft_timeout_ms
            ));
        }
        if self.echo.log_secs == 0 {
            return bad("echo.log_secs: must be positive".into());
        }
        if self.echo.log_bytes < self.echo.max_payload_bytes {
            return bad(
                "echo.log_bytes: must hold at least one packet of echo.max_payload_bytes".into(),
            );
        }
        if self.ozone.replicas == 0
            || self.ozone.write_quorum == 0
            || self.ozone.write_quorum > self.ozone.replicas
        {
            return bad("ozone: need 1 <= write_quorum <= replicas".into());
        }
        if self.ozone.retention_secs == 0
            || self.ozone.max_messages_per_ozone == 0
            || self.ozone.repair_interval_secs == 0
        {
            return bad(
                "ozone.retention_secs, max_messages_per_ozone and repair_interval_secs must be positive".into(),
            );
        }
        if self.echo.default_hops == 0 {
            return bad("echo.default_hops: must be at least 1".into());
        }
        if self.limits.neighbor_queue_bytes < self.echo.max_payload_bytes
            || self.limits.client_queue_bytes < self.echo.max_payload_bytes
        {
            return bad(
                "limits.*_queue_bytes: must hold at least one packet of echo.max_payload_bytes"
                    .into(),
            );
        }
        if self.peer.keepalive_ms == 0 || self.peer.idle_timeout_ms <= self.peer.keepalive_ms {
            return bad("peer.idle_timeout_ms must be larger than peer.keepalive_ms (> 0)".into());
        }
        if let Err(e) = self.peer.detector().check() {
            return bad(format!("peer.{e}"));
        }
        if self
            .peer
            .congestion_control
            .parse::<echomesh_client::transport::Congestion>()
            .is_err()
        {
            return bad(format!(
                "peer.congestion_control: {:?} is not one of bbr, cubic, newreno",
                self.peer.congestion_control
            ));
        }
        if self.peer.backoff_min_ms == 0 || self.peer.backoff_max_ms < self.peer.backoff_min_ms {
            return bad("peer.backoff_min_ms must be > 0 and <= peer.backoff_max_ms".into());
        }
        for (name, r) in [
            ("neighbor_rate", &self.limits.neighbor_rate),
            ("client_rate", &self.limits.client_rate),
        ] {
            if r.packets_per_sec == 0
                || r.bytes_per_sec == 0
                || r.burst_secs.is_nan()
                || r.burst_secs <= 0.0
            {
                return bad(format!(
                    "limits.{name}: rates and burst_secs must be positive"
                ));
            }
        }
        if !["human", "json"].contains(&self.log.format.as_str()) {
            return bad(format!(
                "log.format: {:?} is not human or json",
                self.log.format
            ));
        }
        if let Err(e) = self.bridge.validate() {
            return bad(e);
        }
        if !self.advertise.is_empty() && self.advertise.rsplit_once(':').is_none() {
            return bad(format!("advertise: {:?} is not HOST:PORT", self.advertise));
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join(ADMIN_TOKEN_FILE)
    }
}

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Written by a running node: its bound addresses and identity (see `RuntimeInfo`).
pub const RUNTIME_FILE: &str = "runtime.json";

/// Where the configuration came from, so it can be read again.
#[derive(Debug, Clone, Default)]
pub struct ReloadSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// The applied configuration and how to re-read it (`reload`).
pub struct LiveConfig {
    pub source: std::sync::Mutex<Option<ReloadSource>>,
    pub current: std::sync::Mutex<Config>,
}

pub use echomesh_proto::identity::NeighborSpec;

impl PeerSection {
    /// The QUIC connection timing and congestion control for this node's endpoint.
    pub fn tuning(&self) -> echomesh_client::transport::Tuning {
        echomesh_client::transport::Tuning {
            keepalive: std::time::Duration::from_millis(self.keepalive_ms),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            // Validated in `Config::validate`.
            congestion: self.congestion_control.parse().unwrap_or_default(),
        }
    }

    /// The failure detector's timing.
    pub fn detector(&self) -> echomesh_proto::membership::Detector {
        echomesh_proto::membership::Detector {
            heartbeat: std::time::Duration::from_millis(self.heartbeat_ms),
            suspect_after: std::time::Duration::from_millis(self.suspect_ms),
            fail_after: std::time::Duration::from_millis(self.fail_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoMode;

    #[test]
    fn defaults_are_valid_and_roundtrip() {
        let c = Config::default();
        c.validate().unwrap();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "cluster = \"town\"\n[echo]\nseen_ttl_secs = 5\n").unwrap();
        let o = Overrides {
            cluster: Some("school".into()),
            echo: EchoOverrides {
                broadcast: Some(echomesh_proto::broadcast::Mode::Lazy),
            },
            ..Default::default()
        };
        let c = Config::load(Some(&f), &o).unwrap();
        assert_eq!(c.cluster, "school");
        // A flag inside a section replaces that key only.
        assert_eq!(c.echo.seen_ttl_secs, 5);
        assert_eq!(c.echo.broadcast, echomesh_proto::broadcast::Mode::Lazy);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "clustr = \"x\"\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("clustr"), "{e}");
        std::fs::write(&f, "listen = \"nonsense\"\n").unwrap();
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
        std::fs::write(&f, "[[[").unwrap();
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
        assert!(matches!(
            Config::load(Some(&dir.path().join("nope.toml")), &Overrides::default()),
            Err(ConfigError::Missing(_))
        ));
    }

    #[test]
    fn bridge_settings_are_checked_with_reasons() {
        let ok = Config::from_toml_str(
            "[bridge]\nlisten = \"0.0.0.0:4710\"\nneighbors = [\"echo+tls://10.0.0.5:5710\"]\nneighbor_networks = [\"10.20.0.0/16\", \"192.0.2.7\"]\n",
        )
        .unwrap();
        assert_eq!(ok.bridge.networks().len(), 2);
        for (text, says) in [
            ("[bridge]\nmemory_secs = 60\n", "memory_secs"),
            (
                "[bridge]\nneighbors = [\"tls://x:1\"]\n",
                "bridge.neighbors",
            ),
            (
                "[bridge]\nneighbor_networks = [\"10.0.0.0/99\"]\n",
                "neighbor_networks",
            ),
            ("[bridge]\nneighbor_certs = [\"abc\"]\n", "neighbor_certs"),
            ("[bridge]\nkeepalive_secs = 200\n", "keepalive_secs"),
            ("[bridge]\nlisten = \"4710\"\n", "bridge"),
        ] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        // A frame crosses the mesh as one packet: the payload limit caps the frame bound.
        let small = Config::from_toml_str("[echo]\nmax_payload_bytes = 65536\n").unwrap();
        assert_eq!(small.bridge.effective(65536).max_frame_bytes, 65536);
        // Flags add links to the configured ones.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[bridge]\nneighbors = [\"echo+tcp://a:1\"]\n").unwrap();
        let o = Overrides {
            bridge: BridgeOverrides {
                listen: Some("127.0.0.1:4712".parse().unwrap()),
                plain: Some(true),
                neighbors: vec!["echo+tcp://b:2".into()],
            },
            ..Overrides::default()
        };
        let c = Config::load(Some(&f), &o).unwrap();
        assert_eq!(c.bridge.neighbors, vec!["echo+tcp://a:1", "echo+tcp://b:2"]);
        assert!(c.bridge.plain);
        assert_eq!(c.bridge.listen, Some("127.0.0.1:4712".parse().unwrap()));
    }

    #[test]
    fn neighbor_specs() {
        let fp = "ab".repeat(32);
        let n: NeighborSpec = format!("10.0.0.1:4710#{fp}").parse().unwrap();
        assert_eq!(n.addr, "10.0.0.1:4710");
        assert_eq!(n.mode, EchoMode::Full);
        let n: NeighborSpec = format!("node-b.example:4710#{fp}@half").parse().unwrap();
        assert_eq!(n.mode, EchoMode::Half);
        assert_eq!(n.to_string(), format!("node-b.example:4710#{fp}@half"));
        assert!("10.0.0.1:4710"
            .parse::<NeighborSpec>()
            .unwrap_err()
            .contains("FINGERPRINT"));
        assert!(format!("10.0.0.1#{fp}").parse::<NeighborSpec>().is_err());
        assert!("10.0.0.1:4710#abc".parse::<NeighborSpec>().is_err());
    }
}
