//! `HOST:PORT[#FINGERPRINT]`: which node a client talks to, and how it is verified — pinned by
//! fingerprint, or trust-on-first-use through a known-nodes file (`ADDR FINGERPRINT` per line).
//! `echomeshctl` keeps that file in `~/.config/echomesh/known_nodes`, the gateway in its data
//! directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::identity::NodeId;
use crate::session::{self, ClientError, ClientSession};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    pub addr: String,
    pub fingerprint: Option<NodeId>,
}

impl std::str::FromStr for NodeTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, fp) = match s.split_once('#') {
            Some((a, f)) => (a, Some(f.parse::<NodeId>().map_err(|e| e.to_string())?)),
            None => (s, None),
        };
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("{addr:?} is not HOST:PORT"));
        }
        Ok(NodeTarget {
            addr: addr.to_string(),
            fingerprint: fp,
        })
    }
}

impl std::fmt::Display for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fingerprint {
            Some(fp) => write!(f, "{}#{}", self.addr, fp.fingerprint()),
            None => f.write_str(&self.addr),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read or write {0}: {1}")]
    File(String, String),
    #[error("{0} line {1}: {2}")]
    BadLine(String, usize, String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("node at {addr} presented fingerprint {got}, which differs from the one recorded in {file}. This may be an attack or a re-installed node: verify with its operator, then fix that file")]
    PinMismatch {
        addr: String,
        got: String,
        file: String,
    },
    #[error("{addr} redirects clients ({reason}), but none of its suggestions answered: {last}")]
    RedirectFailed {
        addr: String,
        reason: String,
        last: Box<ClientError>,
    },
    #[error("cannot open a QUIC endpoint: {0}")]
    Endpoint(String),
    #[error(transparent)]
    Client(Box<ClientError>),
}

impl From<ClientError> for TargetError {
    fn from(e: ClientError) -> Self {
        TargetError::Client(Box::new(e))
    }
}

/// Fingerprints recorded on first use.
#[derive(Debug, Clone)]
pub struct KnownNodes {
    pub path: PathBuf,
}

impl KnownNodes {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KnownNodes { path: path.into() }
    }

    fn lookup(&self, addr: &str) -> Result<Option<NodeId>, TargetError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.file_error(e)),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            if let (Some(a), Some(fp)) = (parts.next(), parts.next()) {
                if a == addr {
                    let id = fp.parse::<NodeId>().map_err(|e| {
                        TargetError::BadLine(self.path.display().to_string(), i + 1, e.to_string())
                    })?;
                    return Ok(Some(id));
                }
            }
        }
        Ok(None)
    }

    fn remember(&self, addr: &str, id: NodeId) -> Result<(), TargetError> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.file_error(e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.file_error(e))?;
        writeln!(f, "{addr} {}", id.fingerprint()).map_err(|e| self.file_error(e))
    }

    fn file_error(&self, e: std::io::Error) -> TargetError {
        TargetError::File(self.path.display().to_string(), e.to_string())
    }
}

/// A session and how it came about (for the caller to tell its user).
pub struct Connected {
    pub session: ClientSession,
    /// The target was draining: `(reason, where we went)`.
    pub redirected: Option<(String, String)>,
    /// The fingerprint was trusted on first use and recorded.
    pub first_use: bool,
}

/// A client endpoint that can reach `addr` (bound to the unspecified address of its family).
pub fn endpoint_for(addr: SocketAddr) -> Result<quinn::Endpoint, TargetError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    crate::transport::client_endpoint(bind).map_err(|e| TargetError::Endpoint(e.to_string()))
}

/// Resolve a target's address.
pub async fn resolve(target: &NodeTarget) -> Result<SocketAddr, TargetError> {
    crate::transport::resolve(&target.addr)
        .await
        .map_err(|e| TargetError::Resolve(target.addr.clone(), e.to_string()))
}

/// Connect a client session to the target through `endpoint`, verifying its identity (pinned,
/// or by `known`). A draining node's redirect is followed (suggestions are pinned).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    target: &NodeTarget,
    known: &KnownNodes,
    agent: &str,
) -> Result<Connected, TargetError> {
    let addr = resolve(target).await?;
    let (expected, tofu) = match target.fingerprint {
        Some(fp) => (Some(fp), false),
        None => (known.lookup(&target.addr)?, true),
    };
    match session::connect(endpoint, addr, expected, agent).await {
        Ok(session) => {
            let first_use = tofu && expected.is_none();
            if first_use {
                known.remember(&target.addr, session.node_id)?;
            }
            Ok(Connected {
                session,
                redirected: None,
                first_use,
            })
        }
        Err(ClientError::Redirected { nodes, reason }) => {
            match session::connect_any(endpoint, &nodes, agent).await {
                Ok((session, to)) => Ok(Connected {
                    session,
                    redirected: Some((reason, to)),
                    first_use: false,
                }),
                Err(last) => Err(TargetError::RedirectFailed {
                    addr: target.addr.clone(),
                    reason,
                    last: Box::new(last),
                }),
            }
        }
        Err(ClientError::WrongNode { got, .. }) if tofu => Err(TargetError::PinMismatch {
            addr: target.addr.clone(),
            got,
            file: known.path.display().to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The known-nodes file under `dir`.
pub fn known_nodes_in(dir: &Path) -> KnownNodes {
    KnownNodes::new(dir.join("known_nodes"))
}
