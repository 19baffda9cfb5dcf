//! QUIC endpoint setup: one UDP socket for neighbors, clients and joins, separated by ALPN.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::{Identity, NodeId};
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    // The OS error is the source: `{e:#}` prints it once, after this.
    #[error("cannot bind UDP {addr} (is another node using this port? stop it, or set --listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("QUIC configuration: {0}")]
    Quic(String),
}

/// Transport parameters shared by all connections: keep-alives, idle timeout, and windows
/// large enough for batched echo frames.
/// Flow-control window of one stream (what a receiver lets a sender have unread).
pub const STREAM_RECEIVE_WINDOW: u32 = 8 << 20;
/// Unacknowledged bytes the node keeps for one client connection; with
/// `limits.client_queue_bytes` this bounds the node's memory per slow client.
pub const CLIENT_SEND_WINDOW: u64 = 1 << 20;
/// Unread bytes a client may push at the node.
pub const CLIENT_RECEIVE_WINDOW: u32 = 2 << 20;

/// Idle timeout of client connections. Longer than the neighbors' (`peer.idle_timeout_ms`,
/// which detects a dead neighbor): a phone on bad mobile data should keep its session through
/// seconds of heavy loss. QUIC takes the smaller of both sides' values, so the node's server
/// side offers the larger one and each dialer chooses.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// QUIC congestion control for the data an endpoint sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// Models bandwidth and RTT; keeps links moving under random loss.
    #[default]
    Bbr,
    /// Fairer to TCP on a shared, congested WAN; collapses under random loss.
    Cubic,
    NewReno,
}

impl Congestion {
    pub const NAMES: [&'static str; 3] = ["bbr", "cubic", "newreno"];
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bbr" => Ok(Congestion::Bbr),
            "cubic" => Ok(Congestion::Cubic),
            "newreno" => Ok(Congestion::NewReno),
            _ => Err(format!(
                "{s:?} is not one of {}",
                Congestion::NAMES.join(", ")
            )),
        }
    }
}

/// The connection timing an endpoint uses (the node takes it from `[peer]` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub keepalive: Duration,
    /// Idle timeout of neighbor connections (how fast a dead neighbor is noticed).
    pub idle_timeout: Duration,
    pub congestion: Congestion,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            keepalive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(8),
            congestion: Congestion::Bbr,
        }
    }
}

/// Bytes of QUIC datagrams buffered per connection and direction.
const DATAGRAM_BUFFER: usize = 4096;

pub fn transport_config(p: &Tuning) -> Result<quinn::TransportConfig, TransportError> {
    transport_config_idle(p, p.idle_timeout)
}

fn transport_config_idle(
    p: &Tuning,
    idle: Duration,
) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(p.keepalive));
    let idle = quinn::IdleTimeout::try_from(idle)
        .map_err(|e| TransportError::Quic(format!("idle timeout: {e}")))?;
    t.max_idle_timeout(Some(idle));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(16 << 20));
    t.send_window(16 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(8));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Datagrams carry only neighbor heartbeats (a byte each, the failure detector's input):
    // small buffers, so a stalled reader or a congested path holds a few, never many (quinn
    // drops the oldest when a buffer is full, which the detector reads as silence).
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    // BBR models bandwidth and RTT instead of reading every lost datagram as congestion. With
    // Cubic, random loss (bad Wi-Fi, mobile data, 30 % in the chaos suite) pins the window at
    // its two-packet minimum and loss recovery runs on timers: links fell to a few packets a
    // second and a flood over a nine-node mesh stalled for a minute (docs/DELIVERY.md).
    match p.congestion {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::NewReno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    Ok(t)
}

/// Bind the node's endpoint. The stateless-reset key is derived from the node's private key,
/// so after a restart the node can reset its neighbors' stale connections at once instead of
/// letting them wait for the idle timeout.
pub fn bind(
    identity: &Identity,
    listen: SocketAddr,
    p: &Tuning,
) -> Result<quinn::Endpoint, TransportError> {
    let socket = udp_socket(listen)?;
    let reset_secret = identity.derived_secret("echomesh quic stateless reset v1");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_secret);
    let endpoint_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    let server_tls = tls::server_config(identity)?;
    let quic_server = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
    let server_idle = p.idle_timeout.max(CLIENT_IDLE_TIMEOUT);
    server_cfg.transport_config(Arc::new(transport_config_idle(p, server_idle)?));
    quinn::Endpoint::new(
        endpoint_cfg,
        Some(server_cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind {
        addr: listen,
        source,
    })
}

/// A client-only endpoint (for `echomeshctl` and the bench).
pub fn client_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let socket = udp_socket(bind)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })
}

/// The UDP socket buffers (receive and send) every endpoint asks for. The kernel's default,
/// about 208 KiB, holds about a hundred full datagrams: a process that is not scheduled for a
/// few milliseconds during a burst loses what arrives meanwhile, QUIC takes the losses for
/// congestion and slows down (a 5-node flood on one 2-core machine lost a third of its
/// datagrams so). The kernel grants at most `net.core.rmem_max` / `net.core.wmem_max`.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Bind a UDP socket for an endpoint, with buffers of [`UDP_BUFFER_BYTES`] or as much as the
/// kernel grants (said once, at INFO, with the setting to raise).
fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| TransportError::Bind { addr, source })?;
    let s = socket2::SockRef::from(&socket);
    // Refusals leave the default in place: the checks below say so.
    let _ = s.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(UDP_BUFFER_BYTES);
    // Linux reports twice what it grants (its bookkeeping share).
    let reported = s.recv_buffer_size().unwrap_or(0);
    let granted = if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    };
    if granted < UDP_BUFFER_BYTES {
        tracing::info!(
            %addr,
            asked = UDP_BUFFER_BYTES,
            granted,
            "UDP receive buffer is smaller than asked; under bursts datagrams may be lost: \
             raise it with `sysctl -w net.core.rmem_max={UDP_BUFFER_BYTES}`"
        );
    }
    Ok(socket)
}

/// Client configuration for dialing a node that must have identity `expected` (or TOFU).
pub fn dial_config(
    identity: Option<&Identity>,
    expected: Option<NodeId>,
    alpn: &[u8],
    p: &Tuning,
) -> Result<(quinn::ClientConfig, Arc<tls::PinnedServerVerifier>), TransportError> {
    let verifier = tls::PinnedServerVerifier::new(expected);
    let tls_cfg = tls::client_config(identity, verifier.clone(), alpn)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg)
        .map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let idle = if alpn == echomesh_proto::wire::ALPN_CLIENT {
        CLIENT_IDLE_TIMEOUT
    } else {
        p.idle_timeout
    };
    cfg.transport_config(Arc::new(transport_config_idle(p, idle)?));
    Ok((cfg, verifier))
}

/// Resolve `HOST:PORT` (DNS names allowed) without blocking the runtime.
pub async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    let mut it = tokio::net::lookup_host(addr).await?;
    it.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    })
}

/// Server name used in TLS (certificates are pinned, so the name carries no trust).
pub const SERVER_NAME: &str = "echomesh-node";
