//! The client side of the client protocol, shared by `echomeshctl`, the bench and the tests.

use std::net::SocketAddr;

use crate::echo::EchoPacket;
use crate::identity::NodeId;
use crate::keydir::{KeyBundle, ParticipantRef};
use crate::ozone::{OzoneAddr, OzoneProof, StoredMessage};
use crate::transport;
use crate::wire::{self, ClientEvent, ClientRequest, ClientRequestRef, SubscribeFilter};
use crate::wire::{MsgId, Position};
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("node at {addr} presented fingerprint {got}, not the expected {expected}; check the address, or the node was re-installed")]
    WrongNode {
        addr: SocketAddr,
        expected: String,
        got: String,
    },
    #[error("cannot connect to {addr}: {msg}")]
    Connect { addr: SocketAddr, msg: String },
    #[error("node refused the session: {0}")]
    Refused(String),
    #[error("connection lost: {0}")]
    Io(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("node redirects its clients ({reason}): {}", nodes.join(", "))]
    Redirected { nodes: Vec<String>, reason: String },
}

pub struct ClientSession {
    pub node_id: NodeId,
    /// The protocol version the node announced in its welcome.
    pub version: u16,
    /// Largest echo payload the node accepts.
    pub max_payload: usize,
    pub conn: quinn::Connection,
    pub(super) writer: ClientWriter,
    reader: ClientReader,
}

pub struct ClientWriter {
    send: quinn::SendStream,
    buf: Vec<u8>,
}

pub struct ClientReader {
    recv: quinn::RecvStream,
    frames: crate::framing::FrameReader,
    max_frame: usize,
}

/// Connect and say hello. With `expected = None` any node identity is accepted and returned
/// in `node_id` for the caller's trust-on-first-use check.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    expected: Option<NodeId>,
    agent: &str,
) -> Result<ClientSession, ClientError> {
    let (cfg, verifier) = transport::dial_config(
        None,
        expected,
        wire::ALPN_CLIENT,
        &transport::Tuning::default(),
    )
    .map_err(|e| ClientError::Connect {
        addr,
        msg: e.to_string(),
    })?;
    let connecting = endpoint
        .connect_with(cfg, addr, transport::SERVER_NAME)
        .map_err(|e| ClientError::Connect {
            addr,
            msg: e.to_string(),
        })?;
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            let (got, mismatch) = verifier.observed();
            if mismatch {
                return Err(ClientError::WrongNode {
                    addr,
                    expected: expected.map(|e| e.fingerprint()).unwrap_or_default(),
                    got: got.map(|g| g.fingerprint()).unwrap_or_default(),
                });
            }
            return Err(ClientError::Connect {
                addr,
                msg: e.to_string(),
            });
        }
    };
    let node_id = verifier
        .observed()
        .0
        .ok_or_else(|| ClientError::Protocol("no server certificate seen".into()))?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Io(e.to_string()))?;
    let mut writer = ClientWriter {
        send,
        buf: Vec::new(),
    };
    let mut reader = ClientReader {
        recv,
        frames: crate::framing::FrameReader::default(),
        max_frame: wire::ABSOLUTE_MAX_FRAME,
    };
    // A node that refuses the session (busy, draining) closes the connection with a reason:
    // report that reason rather than the bare "connection lost".
    let refused = |e: ClientError| match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            ClientError::Refused(String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => e,
    };
    writer
        .write(&ClientRequestRef::Hello {
            version: wire::PROTOCOL_VERSION,
            agent,
        })
        .await
        .map_err(refused)?;
    let (max_payload, version) = match reader.next_event().await.map_err(refused)? {
        Some(ClientEvent::Welcome {
            node_id: nid,
            max_payload,
            version,
            ..
        }) if nid == node_id => (max_payload as usize, version),
        Some(ClientEvent::Welcome { .. }) => {
            return Err(ClientError::Protocol("welcome names another node".into()))
        }
        Some(ClientEvent::Redirect { nodes, reason }) => {
            conn.close(0u32.into(), b"redirected");
            return Err(ClientError::Redirected { nodes, reason });
        }
        Some(other) => {
            return Err(ClientError::Protocol(format!(
                "expected welcome, got {other:?}"
            )))
        }
        None => {
            let reason = conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "closed".into());
            return Err(ClientError::Refused(reason));
        }
    };
    Ok(ClientSession {
        node_id,
        version,
        max_payload,
        conn,
        writer,
        reader,
    })
}

/// Connect like [`connect`], and when the node redirects (it is draining), connect to the
/// first node it suggests that answers. Suggestions are pinned by fingerprint; a suggested
/// node's own redirect is not followed further.
pub async fn connect_following(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    expected: Option<NodeId>,
    agent: &str,
) -> Result<ClientSession, ClientError> {
    match connect(endpoint, addr, expected, agent).await {
        Err(ClientError::Redirected { nodes, reason }) => connect_any(endpoint, &nodes, agent)
            .await
            .map_err(|e| match e {
                ClientError::Redirected { .. } => ClientError::Redirected { nodes, reason },
                e => e,
            })
            .map(|(s, _)| s),
        other => other,
    }
}

/// Connect to the first of `nodes` (`HOST:PORT#FINGERPRINT`) that accepts a session; returns
/// it with the spec that worked.
pub async fn connect_any(
    endpoint: &quinn::Endpoint,
    nodes: &[String],
    agent: &str,
) -> Result<(ClientSession, String), ClientError> {
    let mut last = ClientError::Refused("the node suggested no other node".into());
    for spec in nodes {
        let parsed: echomesh_proto::identity::NeighborSpec = match spec.parse() {
            Ok(p) => p,
            Err(e) => {
                last = ClientError::Protocol(format!("bad redirect target: {e}"));
                continue;
            }
        };
        let addr = match transport::resolve(&parsed.addr).await {
            Ok(a) => a,
            Err(e) => {
                last = ClientError::Connect {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    msg: format!("cannot resolve {}: {e}", parsed.addr),
                };
                continue;
            }
        };
        match connect(endpoint, addr, Some(parsed.id), agent).await {
            Ok(s) => return Ok((s, spec.clone())),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl ClientWriter {
    async fn write<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), ClientError> {
        self.buf.clear();
        wire::encode_into(msg, &mut self.buf).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send
            .write_all(&self.buf)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// Send one batch of packets (the node answers with `Injected`).
    pub async fn inject(&mut self, batch: &[EchoPacket]) -> Result<(), ClientError> {
        self.write(&ClientRequestRef::Inject(batch)).await
    }

    pub async fn subscribe(&mut self, filter: SubscribeFilter) -> Result<(), ClientError> {
        self.write(&ClientRequest::Subscribe(filter)).await
    }

    /// Subscribe with log positions, resuming after `after` (protocol ≥ `since::RESUME`).
    pub async fn subscribe_at(
        &mut self,
        filter: SubscribeFilter,
        after: Option<wire::LogPosition>,
    ) -> Result<(), ClientError> {
        self.write(&ClientRequest::SubscribeAt { filter, after })
            .await
    }

    /// Send raw bytes (tests of the node's input handling).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// Send any request without waiting for its answer (it arrives as an event).
    pub async fn send_request(&mut self, req: &ClientRequest) -> Result<(), ClientError> {
        self.write(req).await
    }

    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

impl ClientReader {
    /// The next event, or `None` when the node closed the stream. Cancellation safe: it can
    /// be one branch of a `select!`.
    pub async fn next_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        self.frames
            .next(&mut self.recv, self.max_frame)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }
}

impl ClientSession {
    pub async fn inject(&mut self, batch: &[EchoPacket]) -> Result<(), ClientError> {
        self.writer.inject(batch).await
    }

    /// Subscribe and wait until the node confirms the subscription is active. Events that
    /// arrive before the confirmation (e.g. inject acknowledgements) are discarded.
    pub async fn subscribe(&mut self, filter: SubscribeFilter) -> Result<(), ClientError> {
        self.writer.subscribe(filter).await?;
        loop {
            match self.reader.next_event().await? {
                Some(ClientEvent::Subscribed) => return Ok(()),
                Some(ClientEvent::Error { message, .. }) => {
                    return Err(ClientError::Refused(message))
                }
                Some(_) => {}
                None => return Err(ClientError::Io("node closed the session".into())),
            }
        }
    }

    pub async fn next_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        self.reader.next_event().await
    }

    /// Wait for the reply to a request: the first event that is not a delivery or a lag
    /// notice. Use request/reply calls before subscribing, or deliveries are skipped.
    async fn reply(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            match self.reader.next_event().await? {
                Some(
                    ClientEvent::Deliver(_)
                    | ClientEvent::DeliverAt { .. }
                    | ClientEvent::Resumed { .. }
                    | ClientEvent::Lagged { .. },
                ) => {}
                // A node that starts draining mid-session points us elsewhere.
                Some(ClientEvent::Redirect { nodes, reason }) => {
                    return Err(ClientError::Redirected { nodes, reason })
                }
                Some(ev) => return Ok(ev),
                None => return Err(ClientError::Io("node closed the session".into())),
            }
        }
    }

    /// Inject one batch and wait for the node's answer: `(accepted, duplicates, rejected)`.
    pub async fn inject_acked(
        &mut self,
        batch: &[EchoPacket],
    ) -> Result<(u32, u32, u32), ClientError> {
        self.writer.inject(batch).await?;
        match self.reply().await? {
            ClientEvent::Injected {
                accepted,
                duplicates,
                rejected,
            } => Ok((accepted, duplicates, rejected)),
            ClientEvent::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(format!(
                "expected an inject reply, got {other:?}"
            ))),
        }
    }

    /// Publish (or revoke) a key bundle; `Ok(changed)` once the node stored it.
    pub async fn publish_key(&mut self, bundle: KeyBundle) -> Result<bool, ClientError> {
        self.writer
            .write(&ClientRequest::PublishKey(bundle))
            .await?;
        match self.reply().await? {
            ClientEvent::KeyPublished { changed } => Ok(changed),
            ClientEvent::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(format!(
                "expected a publish reply, got {other:?}"
            ))),
        }
    }

    /// Deposit into an ozone; `Ok((id, copies))` once durable on the cluster's write quorum.
    pub async fn deposit(
        &mut self,
        addr: OzoneAddr,
        payload: Bytes,
    ) -> Result<(MsgId, u8), ClientError> {
        self.writer
            .write(&ClientRequest::Deposit { addr, payload })
            .await?;
        match self.reply().await? {
            ClientEvent::Deposited { id, copies } => Ok((id, copies)),
            ClientEvent::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(format!(
                "expected a deposit reply, got {other:?}"
            ))),
        }
    }

    /// One page of an ozone, oldest first, and whether more follow.
    pub async fn fetch(
        &mut self,
        proof: OzoneProof,
        after: Option<Position>,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), ClientError> {
        let req = ClientRequest::Fetch {
            addr: proof.address(),
            proof,
            after,
            limit,
        };
        self.writer.write(&req).await?;
        match self.reply().await? {
            ClientEvent::Fetched { messages, more } => Ok((messages, more)),
            ClientEvent::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(format!(
                "expected a fetch reply, got {other:?}"
            ))),
        }
    }

    /// Counts, quotas and placement of an ozone.
    pub async fn ozone_info(
        &mut self,
        proof: OzoneProof,
    ) -> Result<crate::wire::OzoneInfo, ClientError> {
        let req = ClientRequest::OzoneInfo {
            addr: proof.address(),
            proof,
        };
        self.writer.write(&req).await?;
        match self.reply().await? {
            ClientEvent::OzoneInfo(i) => Ok(i),
            ClientEvent::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(format!(
                "expected ozone info, got {other:?}"
            ))),
        }
    }

    /// Acknowledge (delete) messages of an ozone.
    pub async fn ack(&mut self, proof: OzoneProof, ids: Vec<MsgId>) -> Result<u32, ClientError> {
        let req = ClientRequest::Ack {
            addr: proof.address(),
            proof,
            ids,
        };
        self.writer.write(&req).await?;
        match self.reply().await? {
            ClientEvent::Acked { removed } => Ok(removed),
            ClientEvent::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(format!(
                "expected an ack reply, got {other:?}"
            ))),
        }
    }

    /// Every bundle the node has for a short ID or fingerprint (unverified: check them).
    pub async fn lookup_key(&mut self, who: ParticipantRef) -> Result<Vec<KeyBundle>, ClientError> {
        self.writer.write(&ClientRequest::LookupKey(who)).await?;
        match self.reply().await? {
            ClientEvent::KeyLookup(found) => Ok(found),
            ClientEvent::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(format!(
                "expected a lookup reply, got {other:?}"
            ))),
        }
    }

    /// Both halves, borrowed (request/reply exchanges that read and write in turn).
    pub fn parts(&mut self) -> (&mut ClientWriter, &mut ClientReader) {
        (&mut self.writer, &mut self.reader)
    }

    /// Split for concurrent sending and receiving. Keep `conn` alive alongside.
    pub fn split(self) -> (quinn::Connection, ClientWriter, ClientReader) {
        (self.conn, self.writer, self.reader)
    }
}
