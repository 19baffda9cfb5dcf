//! `--node HOST:PORT[#FINGERPRINT]`: which node a client command talks to, and how it is
//! verified — pinned by fingerprint, or trust-on-first-use through a known-nodes file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use echomesh_client::identity::NodeId;
use echomesh_client::{self as client, ClientSession};

#[derive(Debug, Clone)]
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

fn known_nodes_path() -> PathBuf {
    if let Ok(p) = std::env::var("ECHOMESH_KNOWN_NODES") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".config/echomesh/known_nodes")
}

fn lookup_known(addr: &str) -> anyhow::Result<Option<NodeId>> {
    let path = known_nodes_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(a), Some(fp)) = (parts.next(), parts.next()) {
            if a == addr {
                let id = fp
                    .parse::<NodeId>()
                    .map_err(|e| anyhow!("{} line {}: {e}", path.display(), i + 1))?;
                return Ok(Some(id));
            }
        }
    }
    Ok(None)
}

fn remember(addr: &str, id: NodeId) -> anyhow::Result<()> {
    use std::io::Write;
    let path = known_nodes_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{addr} {}", id.fingerprint())?;
    Ok(())
}

/// Let closed connections tell the node they are gone before the process exits (bounded):
/// otherwise the node keeps the session until its idle timeout.
pub async fn hang_up(endpoint: &quinn::Endpoint) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// How this tool introduces itself to nodes.
pub const AGENT: &str = concat!("echomeshctl/", env!("CARGO_PKG_VERSION"));

/// Connect a client session to the target, verifying its identity. A draining node's redirect
/// is followed.
pub async fn connect(target: &NodeTarget) -> anyhow::Result<(quinn::Endpoint, ClientSession)> {
    let addr: SocketAddr = echomesh_client::transport::resolve(&target.addr)
        .await
        .with_context(|| format!("resolving {}", target.addr))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = echomesh_client::transport::client_endpoint(bind)?;
    let (expected, tofu) = match target.fingerprint {
        Some(fp) => (Some(fp), false),
        None => (lookup_known(&target.addr)?, true),
    };
    let session = match client::connect(&endpoint, addr, expected, AGENT).await {
        Err(client::ClientError::Redirected { nodes, reason }) => {
            // A draining node: go where it says (each suggestion pinned by fingerprint).
            let (s, to) = client::connect_any(&endpoint, &nodes, AGENT)
                .await
                .with_context(|| format!("{} redirects clients ({reason}), but none of its suggestions answered", target.addr))?;
            eprintln!("note: {} is draining ({reason}); connected to {to} instead", target.addr);
            return Ok((endpoint, s));
        }
        other => other,
    }
    .map_err(|e| match (&e, tofu && expected.is_some()) {
            (client::ClientError::WrongNode { got, .. }, true) => anyhow!(
                "node at {} presented fingerprint {got}, which differs from the one recorded in {}. \
                 This may be an attack or a re-installed node: verify with its operator, then fix that file",
                target.addr,
                known_nodes_path().display()
            ),
            _ => anyhow!(e),
        })?;
    if tofu && expected.is_none() {
        remember(&target.addr, session.node_id)?;
        eprintln!(
            "note: first connection to {}; trusting fingerprint {} (recorded in {})",
            target.addr,
            session.node_id.fingerprint(),
            known_nodes_path().display()
        );
    }
    Ok((endpoint, session))
}
