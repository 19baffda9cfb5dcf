//! Sessions with the mesh. The gateway is an ordinary end-to-end client: it keeps sessions
//! with one node at a time, and moves when that node drains (its redirect is followed) or
//! fails (the next configured node is tried, round the list). Nothing is lost by moving:
//! outgoing copies stay queued until a node acknowledged them durable, incoming messages stay
//! in the mailboxes until the gateway recorded them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echomesh_client::e2e::Recipient;
use echomesh_client::mail::{self, ResolveError};
use echomesh_client::target::{self, KnownNodes, NodeTarget};
use echomesh_client::{ClientError, ClientSession};
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::keydir::KeyBundle;
use echomesh_proto::ozone::OzoneAddr;
use tokio::sync::Mutex;

use crate::metrics::Metrics;

pub const AGENT: &str = concat!("echomesh-gateway/", env!("CARGO_PKG_VERSION"));

/// The configured nodes and where the gateway stands with them.
pub struct Nodes {
    targets: Vec<NodeTarget>,
    known: KnownNodes,
    endpoint: quinn::Endpoint,
    /// Index of the node that worked last.
    current: AtomicUsize,
    /// A draining node's suggestions, tried before the list.
    hints: std::sync::Mutex<Vec<String>>,
    metrics: Arc<Metrics>,
}

impl Nodes {
    pub fn new(
        targets: Vec<NodeTarget>,
        known: KnownNodes,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let endpoint = target::endpoint_for(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))?;
        Ok(Arc::new(Nodes {
            targets,
            known,
            endpoint,
            current: AtomicUsize::new(0),
            hints: std::sync::Mutex::new(Vec::new()),
            metrics,
        }))
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    pub fn hint(&self, nodes: Vec<String>) {
        *self.hints.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// Open a session: the nodes a draining node suggested first (remembered until another
    /// redirect replaces them: the configured node may be gone for good), then the configured
    /// nodes from the one that worked last. One pass; the caller decides when to try again.
    pub async fn connect(&self, why: &'static str) -> Result<ClientSession, String> {
        let hints = self.hints.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !hints.is_empty() {
            if let Ok((s, to)) = echomesh_client::connect_any(&self.endpoint, &hints, AGENT).await {
                tracing::info!(node = %to, "session on a node a draining node suggested");
                self.metrics
                    .node_changes
                    .with_label_values(&["redirect"])
                    .inc();
                return Ok(s);
            }
        }
        if self.targets.is_empty() {
            return Err("no node configured: give --node HOST:PORT[#FINGERPRINT]".into());
        }
        let start = self.current.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for k in 0..self.targets.len() {
            let i = (start + k) % self.targets.len();
            let t = &self.targets[i];
            match target::connect(&self.endpoint, t, &self.known, AGENT).await {
                Ok(c) => {
                    if c.first_use {
                        tracing::warn!(node = %t.addr, fingerprint = %c.session.node_id.fingerprint(), file = %self.known.path.display(), "first connection: trusting this node's fingerprint (pin it with HOST:PORT#FINGERPRINT)");
                    }
                    if let Some((reason, to)) = &c.redirected {
                        tracing::info!(node = %t.addr, %reason, to = %to, "node is draining; connected where it suggested");
                    }
                    let label = if c.redirected.is_some() {
                        "redirect"
                    } else if k > 0 {
                        "failover"
                    } else {
                        why
                    };
                    self.metrics.node_changes.with_label_values(&[label]).inc();
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(c.session);
                }
                Err(e) => errors.push(format!("{}: {e}", t.addr)),
            }
        }
        // Next time start with the next one.
        self.current
            .store((start + 1) % self.targets.len(), Ordering::Relaxed);
        Err(format!("no node answered ({})", errors.join("; ")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no node reachable: {0}")]
    Unavailable(String),
    #[error("the node refused: {0}")]
    Refused(String),
}

/// A request unanswered this long counts as a broken session (it is reopened).
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// One request/response session, reopened (on another node if need be) when it breaks.
pub struct Link {
    nodes: Arc<Nodes>,
    session: Mutex<Option<ClientSession>>,
}

/// Whether an error means "this session is gone; try again elsewhere".
fn broken(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io(_)
            | ClientError::Protocol(_)
            | ClientError::Redirected { .. }
            | ClientError::Connect { .. }
    )
}

macro_rules! with_session {
    ($self:ident, $s:ident => $op:expr) => {{
        let mut guard = $self.session.lock().await;
        let mut last = String::new();
        let mut out = None;
        for attempt in 0..2 {
            if guard.is_none() {
                match $self.nodes.connect(if attempt == 0 { "start" } else { "failover" }).await {
                    Ok(s) => *guard = Some(s),
                    Err(e) => {
                        last = e;
                        break;
                    }
                }
            }
            let Some($s) = guard.as_mut() else { break };
            let r = match tokio::time::timeout(OP_TIMEOUT, $op).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Io(format!("no answer within {} s", OP_TIMEOUT.as_secs()))),
            };
            match r {
                Ok(v) => {
                    out = Some(Ok(v));
                    break;
                }
                Err(e) if broken(&e) => {
                    if let ClientError::Redirected { nodes, .. } = &e {
                        $self.nodes.hint(nodes.clone());
                    }
                    tracing::info!(error = %e, "node session lost; reconnecting");
                    *guard = None;
                    last = e.to_string();
                }
                Err(e) => {
                    out = Some(Err(LinkError::Refused(e.to_string())));
                    break;
                }
            }
        }
        out.unwrap_or(Err(LinkError::Unavailable(last)))
    }};
}

impl Link {
    pub fn new(nodes: Arc<Nodes>) -> Self {
        Link {
            nodes,
            session: Mutex::new(None),
        }
    }

    /// Largest payload the current node accepts.
    pub async fn max_payload(&self) -> Result<usize, LinkError> {
        with_session!(self, s => async { Ok::<_, ClientError>(s.max_payload) })
    }

    pub async fn publish(&self, bundle: KeyBundle) -> Result<bool, LinkError> {
        with_session!(self, s => s.publish_key(bundle.clone()))
    }

    /// The verified key for an ID (`Ok(Err(..))`: the mesh answered, the ID is unusable).
    pub async fn resolve(&self, id: &str) -> Result<Result<Recipient, ResolveError>, LinkError> {
        with_session!(self, s => async {
            match mail::resolve_recipient(s, id).await {
                Err(ResolveError::Client(e)) => Err(e),
                other => Ok(other),
            }
        })
    }

    /// Who a fingerprint is, by its published bundle's display name.
    pub async fn display_name(&self, who: echomesh_proto::keydir::Fingerprint) -> Option<String> {
        let r = echomesh_proto::keydir::ParticipantRef::Full(who);
        with_session!(self, s => mail::verified_bundles(s, r))
            .ok()
            .and_then(|b| b.into_iter().next().map(|b| b.display_name))
    }

    /// Deposit durably; returns the copies made.
    pub async fn deposit(&self, addr: OzoneAddr, payload: bytes::Bytes) -> Result<u8, LinkError> {
        with_session!(self, s => async { s.deposit(addr, payload.clone()).await.map(|(_, c)| c) })
    }

    /// Send live packets; every one must be accepted (new or known).
    pub async fn inject(&self, packets: &[EchoPacket]) -> Result<(), LinkError> {
        if packets.is_empty() {
            return Ok(());
        }
        let r = with_session!(self, s => s.inject_acked(packets))?;
        if r.2 > 0 {
            return Err(LinkError::Refused(format!(
                "the node rejected {} of {} packets",
                r.2,
                packets.len()
            )));
        }
        Ok(())
    }

    /// Drop the session (it is reopened on the next call).
    pub async fn reset(&self) {
        *self.session.lock().await = None;
    }
}

/// Wait between reconnection passes when no node answers.
pub fn retry_wait(attempt: u32) -> Duration {
    let base = Duration::from_millis(250) * 2u32.saturating_pow(attempt.min(7));
    base.min(Duration::from_secs(30))
}
