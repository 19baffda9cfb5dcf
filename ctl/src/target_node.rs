//! `--node HOST:PORT[#FINGERPRINT]` for the client commands: `echomesh_client::target` with the
//! known-nodes file in `~/.config/echomesh/known_nodes` (or `$ECHOMESH_KNOWN_NODES`), and the
//! notes a person at a terminal should see.

use std::path::PathBuf;

use echomesh_client::target::{self, KnownNodes};
use echomesh_client::ClientSession;

pub use echomesh_client::target::NodeTarget;

fn known_nodes() -> KnownNodes {
    if let Ok(p) = std::env::var("ECHOMESH_KNOWN_NODES") {
        return KnownNodes::new(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    KnownNodes::new(PathBuf::from(home).join(".config/echomesh/known_nodes"))
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
    let endpoint = target::endpoint_for(target::resolve(target).await?)?;
    let known = known_nodes();
    let c = target::connect(&endpoint, target, &known, AGENT).await?;
    if let Some((reason, to)) = &c.redirected {
        eprintln!(
            "note: {} is draining ({reason}); connected to {to} instead",
            target.addr
        );
    }
    if c.first_use {
        eprintln!(
            "note: first connection to {}; trusting fingerprint {} (recorded in {})",
            target.addr,
            c.session.node_id.fingerprint(),
            known.path.display()
        );
    }
    Ok((endpoint, c.session))
}
