//! `echomeshctl bench clients`: hold N subscribed client sessions to one node, all from this
//! process over one QUIC endpoint, so that the node's memory with many idle clients can be
//! measured (`scripts/measure-footprint`) without N processes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use echomesh_client::target::{self, KnownNodes};
use echomesh_proto::wire::SubscribeFilter;

use crate::target_node::{NodeTarget, AGENT};

#[derive(clap::Args, Debug)]
pub struct ClientsBenchArgs {
    /// The node to connect to: HOST:PORT#FINGERPRINT (pinned).
    #[arg(long)]
    node: NodeTarget,
    /// Client sessions to open, each subscribed to every packet.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Handshakes in flight at once (stay within the node's `limits.max_handshakes`).
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Keep the sessions open this many seconds after the last one connected, then close them.
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
}

pub async fn run(a: &ClientsBenchArgs) -> anyhow::Result<ExitCode> {
    if a.node.fingerprint.is_none() {
        bail!("--node needs the fingerprint (HOST:PORT#FINGERPRINT): many sessions are not trusted on first use");
    }
    if a.clients == 0 || a.parallel == 0 {
        bail!("--clients and --parallel must be at least 1");
    }
    let addr = target::resolve(&a.node).await?;
    let endpoint = target::endpoint_for(addr)?;
    let known = KnownNodes::new(std::env::temp_dir().join("echomesh-bench-known-nodes"));
    let mut sessions = Vec::with_capacity(a.clients);
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while sessions.len() < a.clients {
        while started < a.clients && pending.len() < a.parallel {
            let (ep, node, known) = (endpoint.clone(), a.node.clone(), known.clone());
            pending.spawn(async move {
                let mut c = target::connect(&ep, &node, &known, AGENT).await?;
                c.session.subscribe(SubscribeFilter::All).await?;
                anyhow::Ok(c.session)
            });
            started += 1;
        }
        let Some(done) = pending.join_next().await else {
            break;
        };
        sessions.push(
            done.context("client task failed")?.with_context(|| {
                format!("client session {} of {}", sessions.len() + 1, a.clients)
            })?,
        );
    }
    eprintln!("clients connected: {}", sessions.len());
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    drop(sessions);
    crate::target_node::hang_up(&endpoint).await;
    Ok(ExitCode::SUCCESS)
}
