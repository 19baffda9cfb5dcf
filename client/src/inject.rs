//! Injecting packets so that a lost connection loses nothing: batches are pipelined up to a
//! window, each kept until the node acknowledges it (`Injected`); when the connection breaks,
//! the same node is dialed again and every unacknowledged batch is sent again, byte for byte.
//! A batch the node had already accepted comes back as duplicates (the seen-cache), so a
//! retry never floods a packet twice.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::echo::EchoPacket;
use crate::session::{connect, ClientError, ClientSession};
use echomesh_proto::backoff::Backoff;

/// Redial backoff: from 200 ms, doubling up to 5 s, each wait drawn in [b/2, b].
const REDIAL_MIN: Duration = Duration::from_millis(200);
const REDIAL_MAX: Duration = Duration::from_secs(5);
use crate::wire::ClientEvent;

/// Batches in flight before waiting for acknowledgements.
pub const WINDOW: usize = 32;

/// What the node said about everything injected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Times the connection broke and was dialed again.
    pub reconnects: u64,
}

/// Inject every batch of `batches` through `session`, calling `acked` with each batch once
/// the node acknowledged it (accepted, duplicates). Gives up after `resume_for` without a
/// working connection.
pub async fn inject_all(
    endpoint: &quinn::Endpoint,
    session: ClientSession,
    agent: &str,
    mut batches: impl Iterator<Item = Vec<EchoPacket>>,
    resume_for: Duration,
    mut acked: impl FnMut(&[EchoPacket], u32, u32),
) -> Result<Injected, ClientError> {
    let (remote, node_id) = (session.conn.remote_address(), session.node_id);
    let mut s = session;
    let mut unacked: VecDeque<Vec<EchoPacket>> = VecDeque::new();
    let mut out = Injected::default();
    let mut more = true;
    loop {
        let step: Result<bool, ClientError> = async {
            while more && unacked.len() < WINDOW {
                match batches.next() {
                    Some(b) => {
                        s.inject(&b).await?;
                        unacked.push_back(b);
                    }
                    None => more = false,
                }
            }
            if unacked.is_empty() {
                return Ok(true);
            }
            // A connection that stops moving (QUIC alive, nothing through) is a lost one.
            let ev = tokio::time::timeout(super::follow::STALLED, s.next_event())
                .await
                .map_err(|_| {
                    ClientError::Io(format!(
                        "no acknowledgement from the node for {} s (stalled connection)",
                        super::follow::STALLED.as_secs()
                    ))
                })?;
            match ev? {
                Some(ClientEvent::Injected {
                    accepted,
                    duplicates,
                    rejected,
                }) => {
                    if let Some(b) = unacked.pop_front() {
                        acked(&b, accepted, duplicates);
                    }
                    out.accepted += u64::from(accepted);
                    out.duplicates += u64::from(duplicates);
                    out.rejected += u64::from(rejected);
                }
                Some(ClientEvent::Error { message, .. }) => {
                    return Err(ClientError::Refused(message))
                }
                Some(_) => {}
                None => return Err(ClientError::Io("the node closed the session".into())),
            }
            Ok(false)
        }
        .await;
        match step {
            Ok(true) => {
                s.conn.close(0u32.into(), b"done");
                return Ok(out);
            }
            Ok(false) => {}
            Err(e @ ClientError::Io(_)) => {
                tracing::info!(error = %e, unacked = unacked.len(), "inject session lost; dialing again");
                s = redial(endpoint, remote, node_id, agent, resume_for, e).await?;
                out.reconnects += 1;
                for b in &unacked {
                    s.inject(b).await?;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Dial the same node again with jittered backoff, for up to `for_`.
pub async fn redial(
    endpoint: &quinn::Endpoint,
    remote: std::net::SocketAddr,
    node_id: crate::identity::NodeId,
    agent: &str,
    for_: Duration,
    why: ClientError,
) -> Result<ClientSession, ClientError> {
    let give_up = Instant::now() + for_;
    let mut backoff = Backoff::new(REDIAL_MIN, REDIAL_MAX);
    let mut last = why;
    loop {
        if Instant::now() >= give_up {
            return Err(last);
        }
        match connect(endpoint, remote, Some(node_id), agent).await {
            Ok(s) => return Ok(s),
            Err(e @ (ClientError::WrongNode { .. } | ClientError::Redirected { .. })) => {
                return Err(e)
            }
            Err(e) => last = e,
        }
        let wait = backoff.ended(std::time::Instant::now(), rand::random::<f64>());
        tokio::time::sleep(wait).await;
    }
}
