//! Wire format: every message is a frame `u32 big-endian length + bincode(serde)` of a
//! versioned enum. All encoding and decoding lives in this module, with one fixed bincode
//! configuration, so that the format is defined in exactly one place.
//!
//! Compatibility rule: each side announces `PROTOCOL_VERSION` in its hello. New message kinds
//! are only ever appended to the enums, struct fields are never added or removed, and a node
//! sends a kind only to a peer whose announced version has it (see [`since`]). Peers and
//! clients down to `MIN_PROTOCOL_VERSION` are served, so a mesh can be upgraded one node at a
//! time. Decoding never panics and never allocates more than the frame limit: a frame whose
//! length prefix exceeds the limit is refused before it is read.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::echo::EchoPacket;
pub use crate::echo::LogPosition;
use crate::identity::NodeId;
use crate::keydir::{KeyBundle, ParticipantRef};
use crate::ozone::StoredMessage;
use crate::ozone::{OzoneAddr, OzoneProof};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 6;
/// The lowest peer protocol version this build interoperates with.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The first protocol version that has each message kind added after version 1.
pub mod since {
    /// `ClientEvent::Redirect`: a draining node points its clients elsewhere.
    pub const REDIRECT: u16 = 2;
    /// `PeerRequest::Departure`: a draining node tells its neighbors it is leaving.
    pub const DEPARTURE: u16 = 2;
    /// `PeerRequest::EchoHave`: a node offers packet IDs a neighbor may have missed; the
    /// neighbor answers which it wants (`PeerReply::EchoWant`).
    pub const ECHO_REPAIR: u16 = 3;
    /// `ClientRequest::SubscribeAt`, `ClientEvent::DeliverAt` and `ClientEvent::Resumed`: a
    /// subscription that can resume after a lost connection without loss or repeats.
    pub const RESUME: u16 = 3;
    /// Key bundles of format 2 (with a personal mailbox) in `KeyLookup`: older clients
    /// cannot decode them and are sent only format-1 bundles.
    pub const MAILBOX: u16 = 3;
    /// `PeerFrame::Broadcast` and `PeerFrame::Tree`: echo packets with their broadcast tree,
    /// and lazy push's announcements, grafts and prunes (docs/BROADCAST.md). Older peers are
    /// sent plain `Echo` batches and always pushed to.
    pub const LAZY_PUSH: u16 = 4;
    /// Heartbeats: a [`HEARTBEAT`](super::HEARTBEAT) QUIC datagram every `peer.heartbeat_ms`
    /// on each connection, which the failure detector of `membership` listens to
    /// (docs/MEMBERSHIP.md). Older peers send none and are judged by their connections only.
    pub const HEARTBEAT: u16 = 5;
    /// `PeerRequest::KeydirDigest` and `PeerRequest::KeydirEntries`: a node that comes up
    /// compares key directories with its neighbor by digest and offers only the difference
    /// (`keydir::sync`). Older peers are offered the whole directory.
    pub const KEYDIR_DIGEST: u16 = 6;
}

/// The payload of a heartbeat datagram (one byte: room for other datagram kinds later).
pub const HEARTBEAT: &[u8] = &[0x01];

pub const ALPN_PEER: &[u8] = b"echomesh-peer/1";
pub const ALPN_CLIENT: &[u8] = b"echomesh-client/1";
pub const ALPN_JOIN: &[u8] = b"echomesh-join/1";

/// QUIC application close codes.
pub mod close {
    pub const NORMAL: u32 = 0;
    pub const UNPINNED: u32 = 1;
    pub const PROTOCOL: u32 = 2;
    pub const FRAME: u32 = 3;
    pub const BUSY: u32 = 4;
    pub const SHUTDOWN: u32 = 5;
    pub const VERSION: u32 = 6;
    pub const ALPN: u32 = 7;
    pub const REMOVED: u32 = 8;
    /// The failure detector judged the peer failed (no heartbeat for `peer.fail_ms`).
    pub const SILENT: u32 = 9;
}

/// Hard ceiling on any frame, whatever the configuration says.
pub const ABSOLUTE_MAX_FRAME: usize = 64 << 20;

type Config = bincode::config::Configuration<
    bincode::config::BigEndian,
    bincode::config::Varint,
    bincode::config::Limit<ABSOLUTE_MAX_FRAME>,
>;

const CONFIG: Config = bincode::config::standard()
    .with_big_endian()
    .with_variable_int_encoding()
    .with_limit::<ABSOLUTE_MAX_FRAME>();

// ---------------------------------------------------------------------------------------------
// Fixed-size byte fields

/// Serde for `[u8; 32]` as one byte string (serde's default encodes arrays element by
/// element, which costs 32 calls per field when decoding).
pub mod bytes32 {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub struct B32Visitor;

    impl<'de> Visitor<'de> for B32Visitor {
        type Value = [u8; 32];
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("32 bytes")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; 32], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 32], A::Error> {
            let mut out = [0u8; 32];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        d.deserialize_bytes(B32Visitor)
    }
}

/// Serde for `Option<[u8; 32]>` as an optional byte string.
pub mod opt_bytes32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct B32(#[serde(with = "super::bytes32")] [u8; 32]);

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(B32).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        Ok(Option::<B32>::deserialize(d)?.map(|b| b.0))
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Node ↔ node messages (ALPN `echomesh-peer/1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(PeerHello),
    /// A batch of echo packets.
    Echo(Vec<EchoPacket>),
    /// How the sender forwards (protocol ≥ `since::LAZY_PUSH`): its first frame after the
    /// hello. A neighbor that floods is always pushed to and never pruned.
    Broadcast(crate::broadcast::Mode),
    /// Echo packets with their tree, and lazy push's control messages, in one batch
    /// (protocol ≥ `since::LAZY_PUSH`).
    Tree(Vec<TreeItem>),
}

/// One item of a `PeerFrame::Tree` batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeItem {
    /// An echo packet travelling on the tree of its origin node.
    Packet {
        tree: crate::broadcast::TreeKey,
        packet: EchoPacket,
    },
    /// "I have these packets of this tree" (the link is lazy in it for the sender).
    IHave {
        tree: crate::broadcast::TreeKey,
        ids: Vec<MsgId>,
    },
    /// "Send me these, and push this tree's packets to me again."
    Graft {
        tree: crate::broadcast::TreeKey,
        ids: Vec<MsgId>,
    },
    /// "Announce this tree's packets to me by ID only."
    Prune { tree: crate::broadcast::TreeKey },
}

impl TreeItem {
    /// Bytes this item accounts for in a neighbor's queue.
    pub fn cost(&self) -> usize {
        match self {
            TreeItem::Packet { packet, .. } => packet.cost() + 8,
            TreeItem::IHave { ids, .. } | TreeItem::Graft { ids, .. } => 16 + 32 * ids.len(),
            TreeItem::Prune { .. } => 16,
        }
    }
}

/// Node → node requests, one per QUIC stream of a peer connection (after the hello).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Store these ozone messages durably (replication of a deposit, or repair).
    OzoneStore(Vec<StoredMessage>),
    /// Acknowledge (delete, tombstone) messages of an ozone.
    OzoneAck { addr: OzoneAddr, ids: Vec<MsgId> },
    /// A page of an ozone's messages after a position.
    OzoneFetch {
        addr: OzoneAddr,
        after: Option<Position>,
        limit: u32,
    },
    /// The replica's digest of an ozone (anti-entropy).
    OzoneDigest { addr: OzoneAddr },
    /// The sender is draining, has left, or serves again (protocol ≥ `since::DEPARTURE`).
    /// Answered by `Noted`.
    Departure(Departure),
    /// Packets the sender accepted and the receiver may lack (protocol ≥
    /// `since::ECHO_REPAIR`). Answered by `EchoWant` with the indexes of the IDs the
    /// receiver's seen-cache lacks; the sender then queues those packets on the echo stream.
    EchoHave(Vec<MsgId>),
    /// The receiver's key-directory bucket digests (protocol ≥ `since::KEYDIR_DIGEST`).
    /// Answered by `KeydirDigest`.
    KeydirDigest,
    /// The receiver's directory entries (fingerprint, entry hash) in these buckets, at most
    /// `MAX_KEYDIR_ENTRIES`. Answered by `KeydirEntries`.
    KeydirEntries { buckets: Vec<u8> },
}

/// Entries one `KeydirEntries` answer holds at most (48 bytes each: about 1.5 MiB).
pub const MAX_KEYDIR_ENTRIES: usize = 32 * 1024;

/// W3C trace context (`traceparent`, `tracestate`) of the span that made a request. Sent as an
/// optional extra frame after a peer request or a join request when traces are exported;
/// receivers that predate it never read past the request, so it needs no version check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceContext {
    pub entries: Vec<(String, String)>,
}

/// Largest trace-context frame read.
pub const MAX_TRACE_CONTEXT_FRAME: usize = 4096;

/// A node's own account of whether it is in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Departure {
    /// Serving.
    #[default]
    Up,
    /// Draining: keep relaying, but place no new ozones on it.
    Draining,
    /// Drained and about to stop: its absence is planned, not a failure.
    Left,
}

impl Departure {
    pub fn label(self) -> &'static str {
        match self {
            Departure::Up => "up",
            Departure::Draining => "draining",
            Departure::Left => "left",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerReply {
    /// How many of the messages are durable here now (stored, already there, or already
    /// acknowledged).
    Stored {
        durable: u32,
    },
    Acked {
        removed: u32,
    },
    Messages {
        messages: Vec<StoredMessage>,
        more: bool,
    },
    Error {
        message: String,
    },
    Digest(crate::ozone::OzoneDigest),
    /// A `Departure` was recorded.
    Noted,
    /// Indexes into an `EchoHave` list: the packets the receiver has not seen.
    EchoWant(Vec<u32>),
    /// One digest per bucket (`keydir::sync::BUCKETS`).
    KeydirDigest(Vec<[u8; 16]>),
    /// Directory entries of the asked buckets; `complete` is false when `MAX_KEYDIR_ENTRIES`
    /// cut the list (the asker then asks for fewer buckets at a time).
    KeydirEntries {
        entries: Vec<(crate::keydir::Fingerprint, [u8; 16])>,
        complete: bool,
    },
}

/// Borrowed twin of [`PeerFrame`] for decoding: packet payloads stay in the frame's buffer
/// ([`decode_peer_frame`]). The same variant order as `PeerFrame` (checked by a test).
#[derive(Deserialize)]
enum PeerFrameIn<'a> {
    Hello(PeerHello),
    Echo(#[serde(borrow)] Vec<EchoPacketIn<'a>>),
    Broadcast(crate::broadcast::Mode),
    Tree(#[serde(borrow)] Vec<TreeItemIn<'a>>),
}

/// [`EchoPacket`] with its payload borrowed from the frame.
#[derive(Deserialize)]
struct EchoPacketIn<'a> {
    #[serde(with = "bytes32")]
    id: crate::echo::PacketId,
    hops_left: u8,
    #[serde(with = "opt_bytes32")]
    tag: Option<[u8; 32]>,
    payload: &'a [u8],
}

/// [`TreeItem`] with packet payloads borrowed from the frame.
#[derive(Deserialize)]
enum TreeItemIn<'a> {
    Packet {
        tree: crate::broadcast::TreeKey,
        #[serde(borrow)]
        packet: EchoPacketIn<'a>,
    },
    IHave {
        tree: crate::broadcast::TreeKey,
        ids: Vec<MsgId>,
    },
    Graft {
        tree: crate::broadcast::TreeKey,
        ids: Vec<MsgId>,
    },
    Prune {
        tree: crate::broadcast::TreeKey,
    },
}

impl EchoPacketIn<'_> {
    fn in_frame(self, frame: &Bytes) -> EchoPacket {
        EchoPacket {
            id: self.id,
            hops_left: self.hops_left,
            tag: self.tag,
            payload: frame.slice_ref(self.payload),
        }
    }
}

/// Decode a peer frame body (without the length prefix; the whole body must be consumed)
/// whose packet payloads are slices of `body`: no allocation or copy per payload. A holder
/// of a packet keeps the whole frame alive, so the receiver keeps only what it accepts, in a
/// buffer of its own (`echo::share_buffer`), and drops the frame.
pub fn decode_peer_frame(body: &Bytes) -> Result<PeerFrame, FrameError> {
    let (frame, used) =
        bincode::serde::borrow_decode_from_slice::<PeerFrameIn<'_>, _>(body, CONFIG)
            .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Trailing(body.len() - used));
    }
    Ok(match frame {
        PeerFrameIn::Hello(h) => PeerFrame::Hello(h),
        PeerFrameIn::Echo(packets) => {
            PeerFrame::Echo(packets.into_iter().map(|p| p.in_frame(body)).collect())
        }
        PeerFrameIn::Broadcast(m) => PeerFrame::Broadcast(m),
        PeerFrameIn::Tree(items) => PeerFrame::Tree(
            items
                .into_iter()
                .map(|i| match i {
                    TreeItemIn::Packet { tree, packet } => TreeItem::Packet {
                        tree,
                        packet: packet.in_frame(body),
                    },
                    TreeItemIn::IHave { tree, ids } => TreeItem::IHave { tree, ids },
                    TreeItemIn::Graft { tree, ids } => TreeItem::Graft { tree, ids },
                    TreeItemIn::Prune { tree } => TreeItem::Prune { tree },
                })
                .collect(),
        ),
    })
}

/// Borrowed twin of [`PeerFrame`] for encoding without cloning a batch. It must keep the same
/// variant order as `PeerFrame` (checked by a test).
#[derive(Debug, Serialize)]
pub enum PeerFrameRef<'a> {
    Hello(&'a PeerHello),
    Echo(&'a [EchoPacket]),
    Broadcast(crate::broadcast::Mode),
    Tree(&'a [TreeItem]),
}

/// Borrowed twin of the `Deliver` variant of [`ClientEvent`] (same variant index).
#[derive(Debug, Serialize)]
pub enum ClientEventRef<'a> {
    Welcome {
        version: u16,
        node_id: NodeId,
        software: &'a str,
        max_payload: u32,
    },
    Injected {
        accepted: u32,
        duplicates: u32,
        rejected: u32,
    },
    Deliver(&'a [EchoPacket]),
}

/// Borrowed twin of [`ClientRequest`] for encoding batches without cloning.
#[derive(Debug, Serialize)]
pub enum ClientRequestRef<'a> {
    Hello { version: u16, agent: &'a str },
    Inject(&'a [EchoPacket]),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerHello {
    pub version: u16,
    pub node_id: NodeId,
    pub cluster: String,
    pub software: String,
}

/// Client → node messages (ALPN `echomesh-client/1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientRequest {
    Hello {
        version: u16,
        agent: String,
    },
    /// Inject echo packets into the mesh.
    Inject(Vec<EchoPacket>),
    /// Receive live packets matching the filter from now on (replaces any earlier filter).
    Subscribe(SubscribeFilter),
    /// Publish (or revoke) a key bundle. Answered by `KeyPublished` or `Error`.
    PublishKey(KeyBundle),
    /// Look up key bundles by short ID or fingerprint. Answered by `KeyLookup`.
    LookupKey(ParticipantRef),
    /// Store a message in an ozone. Answered by `Deposited` once durable on W replicas, or
    /// `Error` (nothing acknowledged).
    Deposit {
        addr: OzoneAddr,
        payload: Bytes,
    },
    /// Read an ozone, oldest first, after a position. Answered by `Fetched`.
    Fetch {
        addr: OzoneAddr,
        proof: OzoneProof,
        after: Option<Position>,
        limit: u32,
    },
    /// Delete messages from an ozone (they become tombstones). Answered by `Acked`.
    Ack {
        addr: OzoneAddr,
        proof: OzoneProof,
        ids: Vec<MsgId>,
    },
    /// Counts, quotas and placement of an ozone. Answered by `OzoneInfo`.
    OzoneInfo {
        addr: OzoneAddr,
        proof: OzoneProof,
    },
    /// Subscribe like `Subscribe`, with deliveries as `DeliverAt` (positions in the node's
    /// packet log). With `after`, first replay what matched since that position (a client
    /// resuming after a lost connection). Answered by `Resumed` (protocol ≥ `since::RESUME`).
    SubscribeAt {
        filter: SubscribeFilter,
        after: Option<LogPosition>,
    },
}

impl ClientRequest {
    /// The `kind` label of `echomesh_client_requests_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientRequest::Hello { .. } => "hello",
            ClientRequest::Inject(_) => "inject",
            ClientRequest::Subscribe(_) => "subscribe",
            ClientRequest::PublishKey(_) => "publish_key",
            ClientRequest::LookupKey(_) => "lookup_key",
            ClientRequest::Deposit { .. } => "deposit",
            ClientRequest::Fetch { .. } => "fetch",
            ClientRequest::Ack { .. } => "ack",
            ClientRequest::OzoneInfo { .. } => "ozone_info",
            ClientRequest::SubscribeAt { .. } => "subscribe_at",
        }
    }
}

/// What `OzoneInfo` reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OzoneInfo {
    /// Messages and bytes held on the answering node.
    pub messages: u64,
    pub bytes: u64,
    pub max_messages: u64,
    pub max_bytes: u64,
    pub retention_secs: u64,
    pub replicas: u32,
    pub write_quorum: u32,
    /// Short IDs of the owners among the live members, in preference order.
    pub owners: Vec<String>,
    pub members_alive: u32,
    pub members_known: u32,
}

/// A message ID (blake3 of its payload) as one byte string on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MsgId(#[serde(with = "bytes32")] pub [u8; 32]);

/// A position in an ozone: after the message `(seq, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub seq: u64,
    pub id: MsgId,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum SubscribeFilter {
    /// Every packet the node accepts (operators and tests: `tail`).
    All,
    /// Packets carrying one of these ozone tags.
    Tags(Vec<[u8; 32]>),
}

/// Node → client messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientEvent {
    Welcome {
        version: u16,
        node_id: NodeId,
        software: String,
        /// Largest echo payload this node accepts (clients chunk larger content).
        max_payload: u32,
    },
    /// Acknowledges one `Inject` batch.
    Injected {
        accepted: u32,
        duplicates: u32,
        rejected: u32,
    },
    /// Packets for a subscription.
    Deliver(Vec<EchoPacket>),
    /// The node dropped `dropped` packets for this client because it did not read fast enough.
    Lagged {
        dropped: u64,
    },
    /// The request was refused; the session stays usable unless the node closes it.
    Error {
        code: ClientErrorCode,
        message: String,
    },
    /// The subscription is active: every packet the node accepts from now on is delivered.
    Subscribed,
    /// A `PublishKey` was verified and stored; `changed` is false when the node already had
    /// exactly this bundle.
    KeyPublished {
        changed: bool,
    },
    /// Answer to `LookupKey`: every matching bundle (several only on a short-ID collision).
    KeyLookup(Vec<KeyBundle>),
    /// A deposit is durable on `copies` replicas (at least the write quorum).
    Deposited {
        id: MsgId,
        copies: u8,
    },
    /// Messages of an ozone, oldest first; `more` when another page follows.
    Fetched {
        messages: Vec<StoredMessage>,
        more: bool,
    },
    /// `removed` messages were deleted (acknowledging an absent message is not an error).
    Acked {
        removed: u32,
    },
    OzoneInfo(OzoneInfo),
    /// This node is draining: reconnect to one of `nodes` (each `HOST:PORT#FINGERPRINT`,
    /// best first) and subscribe there again. Sent only to clients of protocol ≥
    /// `since::REDIRECT`, instead of `Welcome` to a new session, or during a subscribed one.
    Redirect {
        nodes: Vec<String>,
        reason: String,
    },
    /// Packets for a `SubscribeAt` subscription; every matching packet before position `at`
    /// has now been sent (resume with `after: at`).
    DeliverAt {
        at: LogPosition,
        packets: Vec<EchoPacket>,
    },
    /// A `SubscribeAt` is active. `replayed` packets from the log follow; `missed` entries
    /// after the asked position were already gone from the log (some may have matched);
    /// `stale` when the position is from before the node restarted (replayed from the log's
    /// start; the client drops what it already has).
    Resumed {
        replayed: u32,
        missed: u64,
        stale: bool,
        /// The log's head when the subscription took effect: resume from here if no
        /// `DeliverAt` came since.
        at: LogPosition,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ClientErrorCode {
    BadRequest,
    VersionUnsupported,
    TooLarge,
    Busy,
    /// A key bundle was refused (the message says why).
    Rejected,
    /// The node could not complete the request (storage); retry or use another node.
    Unavailable,
    /// The ozone proof does not open the ozone address.
    WrongProof,
    /// An ozone quota or the node's storage budget is exhausted.
    Quota,
    /// Fewer than the write quorum of replicas could store the deposit: not acknowledged.
    NotDurable,
}

/// Joiner → inviter on ALPN `echomesh-join/1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub version: u16,
    pub secret: [u8; 32],
    /// Where the inviter can dial the joiner back (its advertised address), if known.
    pub advertise: Option<String>,
    pub cluster: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinResponse {
    Accepted { node_id: NodeId, cluster: String },
    Refused { reason: JoinRefusal },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JoinRefusal {
    UnknownToken,
    AlreadyUsed,
    Expired,
    TooManyNeighbors,
    Internal,
}

impl JoinRefusal {
    pub fn explain(self) -> &'static str {
        match self {
            JoinRefusal::UnknownToken => {
                "the inviting node does not know this token (mistyped, or the node restarted since `invite`); ask for a new one"
            }
            JoinRefusal::AlreadyUsed => "this invite token was already used; tokens work once — ask for a new one",
            JoinRefusal::Expired => "this invite token has expired; ask for a new one (`echomeshctl invite --ttl SECS`)",
            JoinRefusal::TooManyNeighbors => "the inviting node has reached its neighbor limit (limits.max_neighbors)",
            JoinRefusal::Internal => "the inviting node could not store the new neighbor; see its log",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("frame cannot be decoded: {0}")]
    Decode(String),
    #[error("frame has {0} trailing bytes")]
    Trailing(usize),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "oversized",
            FrameError::Truncated => "truncated",
            FrameError::Decode(_) | FrameError::Trailing(_) => "undecodable",
            FrameError::Io(_) => "io",
        }
    }
}

/// Encode `msg` as one frame (length prefix included), appending to `out`.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    let r = bincode::serde::encode_into_std_write(msg, &mut *out, CONFIG);
    finish_frame(r.map(|_| ()), out, start)
}

/// Encode `msg` as one frame (length prefix included), appending to `out`: the frame can
/// then be split off and handed to QUIC without a copy (`SendStream::write_chunk`).
pub fn encode_into_bytes<T: Serialize>(
    msg: &T,
    out: &mut bytes::BytesMut,
) -> Result<(), FrameError> {
    use bytes::BufMut;
    let start = out.len();
    out.put_u32(0);
    let r = bincode::serde::encode_into_std_write(msg, &mut (&mut *out).writer(), CONFIG);
    finish_frame(r.map(|_| ()), out, start)
}

/// Write the length prefix of the frame encoded from `start` on (after its 4 placeholder
/// bytes).
fn finish_frame(
    encoded: Result<(), bincode::error::EncodeError>,
    out: &mut [u8],
    start: usize,
) -> Result<(), FrameError> {
    encoded.map_err(|e| FrameError::Decode(format!("encode: {e}")))?;
    let len = out.len() - start - 4;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: ABSOLUTE_MAX_FRAME,
    })?;
    out[start..start + 4].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Encode `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, FrameError> {
    let mut out = Vec::with_capacity(256);
    encode_into(msg, &mut out)?;
    Ok(Bytes::from(out))
}

/// Decode a frame body (without the length prefix). The whole body must be consumed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice::<T, _>(body, CONFIG)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Trailing(body.len() - used));
    }
    Ok(msg)
}

/// Encode a stored record (no length prefix) — used by `store` for on-disk values.
pub fn record_to_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(v, CONFIG).map_err(|e| FrameError::Decode(format!("encode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compatibility rule in code: kinds are only appended, so every kind an older
    /// version knows keeps its index, and a kind unknown to the receiver is a counted decode
    /// error, never a panic. A change that reorders a variant fails here.
    #[test]
    fn both_encoders_make_the_same_frame() {
        let f = PeerFrame::Echo(vec![EchoPacket::new(Bytes::from_static(b"x"), 3, None)]);
        let mut v = Vec::new();
        encode_into(&f, &mut v).unwrap();
        let mut b = bytes::BytesMut::new();
        encode_into_bytes(&f, &mut b).unwrap();
        assert_eq!(v, b.to_vec());
    }

    #[test]
    fn message_kinds_keep_their_wire_index() {
        fn index<T: Serialize>(v: &T) -> u8 {
            let b = encode(v).unwrap();
            b[4]
        }
        let d = Departure::Left;
        assert_eq!(index(&PeerFrame::Echo(vec![])), 1);
        assert_eq!(
            index(&PeerRequest::OzoneDigest {
                addr: OzoneAddr([0; 32])
            }),
            3
        );
        assert_eq!(index(&PeerRequest::Departure(d)), 4);
        assert_eq!(index(&PeerReply::Noted), 5);
        assert_eq!(index(&ClientEvent::Subscribed), 5);
        assert_eq!(index(&ClientEvent::Acked { removed: 0 }), 10);
        let redirect = ClientEvent::Redirect {
            nodes: vec![],
            reason: String::new(),
        };
        assert_eq!(index(&redirect), 12);
        assert_eq!(index(&PeerRequest::EchoHave(vec![])), 5);
        assert_eq!(index(&PeerReply::EchoWant(vec![])), 6);
        assert_eq!(index(&PeerRequest::KeydirDigest), 6);
        assert_eq!(index(&PeerRequest::KeydirEntries { buckets: vec![] }), 7);
        assert_eq!(index(&PeerReply::KeydirDigest(vec![])), 7);
        assert_eq!(
            index(&PeerReply::KeydirEntries {
                entries: vec![],
                complete: true
            }),
            8
        );
        let at = LogPosition { epoch: 1, seq: 2 };
        let sub_at = ClientRequest::SubscribeAt {
            filter: SubscribeFilter::All,
            after: Some(at),
        };
        assert_eq!(index(&sub_at), 9);
        let deliver_at = ClientEvent::DeliverAt {
            at,
            packets: vec![],
        };
        assert_eq!(index(&deliver_at), 13);
        let resumed = ClientEvent::Resumed {
            replayed: 0,
            missed: 0,
            stale: false,
            at,
        };
        assert_eq!(index(&resumed), 14);
        const {
            assert!(
                since::ECHO_REPAIR <= PROTOCOL_VERSION
                    && since::RESUME <= PROTOCOL_VERSION
                    && since::MAILBOX <= PROTOCOL_VERSION
            )
        };
        const { assert!(since::REDIRECT > MIN_PROTOCOL_VERSION && since::REDIRECT <= PROTOCOL_VERSION) };
        // A frame of a kind this build does not know (index 200) is refused cleanly.
        let mut frame = encode(&ClientEvent::Subscribed).unwrap().to_vec();
        frame[4] = 200;
        let err = decode_body::<ClientEvent>(&frame[4..]).unwrap_err();
        assert_eq!(err.kind(), "undecodable");
    }

    fn pkt(payload: &[u8]) -> EchoPacket {
        EchoPacket::new(Bytes::copy_from_slice(payload), 16, None)
    }

    /// A packet, an announcement and a prune.
    fn tree_items() -> Vec<TreeItem> {
        vec![
            TreeItem::Packet {
                tree: 7,
                packet: pkt(b"z"),
            },
            TreeItem::IHave {
                tree: 7,
                ids: vec![MsgId([3; 32])],
            },
            TreeItem::Prune { tree: 9 },
        ]
    }

    #[test]
    fn peer_frames_decode_with_payloads_in_the_frame() {
        let batch = vec![pkt(b"first payload"), pkt(b""), pkt(b"third")];
        let mut items = tree_items();
        items.push(TreeItem::Graft {
            tree: 8,
            ids: vec![MsgId([4; 32])],
        });
        items.push(TreeItem::Packet {
            tree: u64::MAX,
            packet: EchoPacket::new(Bytes::from_static(b"tagged"), 3, Some([5; 32])),
        });
        let hello = PeerHello {
            version: 3,
            node_id: NodeId([1; 32]),
            cluster: "c".into(),
            software: "s".into(),
        };
        let frames = [
            PeerFrame::Echo(batch),
            PeerFrame::Tree(items),
            PeerFrame::Broadcast(crate::broadcast::Mode::Lazy),
            PeerFrame::Hello(hello),
        ];
        for f in frames {
            let body = encode(&f).unwrap().slice(4..);
            let owned = decode_body::<PeerFrame>(&body).unwrap();
            let sliced = decode_peer_frame(&body).unwrap();
            // Same frame, and re-encoding gives the same bytes.
            assert_eq!(encode(&owned).unwrap(), encode(&sliced).unwrap());
            assert_eq!(format!("{owned:?}"), format!("{sliced:?}"));
            let payloads: Vec<&Bytes> = match &sliced {
                PeerFrame::Echo(b) => b.iter().map(|p| &p.payload).collect(),
                PeerFrame::Tree(i) => i
                    .iter()
                    .filter_map(|i| match i {
                        TreeItem::Packet { packet, .. } => Some(&packet.payload),
                        _ => None,
                    })
                    .collect(),
                _ => vec![],
            };
            let range = body.as_ptr_range();
            for p in payloads.iter().filter(|p| !p.is_empty()) {
                assert!(
                    range.contains(&p.as_ptr()),
                    "payload is a slice of the frame"
                );
            }
        }
        // Trailing bytes and truncation are refused as by `decode_body`.
        let mut body = encode(&PeerFrame::Echo(vec![pkt(b"x")])).unwrap()[4..].to_vec();
        body.push(0);
        assert!(matches!(
            decode_peer_frame(&Bytes::from(body.clone())),
            Err(FrameError::Trailing(1))
        ));
        body.truncate(body.len() - 3);
        assert!(decode_peer_frame(&Bytes::from(body)).is_err());
        assert!(
            decode_peer_frame(&Bytes::from_static(&[1u8, 252, 0xff, 0xff, 0xff, 0xff])).is_err()
        );
    }

    #[test]
    fn claimed_huge_vector_does_not_allocate() {
        // Variant 1 (Echo) followed by a varint length claiming 2^32 elements.
        let body = [1u8, 252, 0xff, 0xff, 0xff, 0xff];
        assert!(decode_body::<PeerFrame>(&body).is_err());
    }

    #[test]
    fn borrowed_twins_encode_identically() {
        let batch = vec![pkt(b"x"), pkt(b"y")];
        let a = encode(&PeerFrame::Echo(batch.clone())).unwrap();
        let b = encode(&PeerFrameRef::Echo(&batch)).unwrap();
        assert_eq!(a, b);
        let items = tree_items();
        let a = encode(&PeerFrame::Tree(items.clone())).unwrap();
        let b = encode(&PeerFrameRef::Tree(&items)).unwrap();
        assert_eq!(a, b);
        let mode = crate::broadcast::Mode::Lazy;
        let a = encode(&PeerFrame::Broadcast(mode)).unwrap();
        assert_eq!(a, encode(&PeerFrameRef::Broadcast(mode)).unwrap());
        let a = encode(&ClientEvent::Deliver(batch.clone())).unwrap();
        let b = encode(&ClientEventRef::Deliver(&batch)).unwrap();
        assert_eq!(a, b);
        let a = encode(&ClientRequest::Inject(batch.clone())).unwrap();
        let b = encode(&ClientRequestRef::Inject(&batch)).unwrap();
        assert_eq!(a, b);
        let id = NodeId([1; 32]);
        let a = encode(&ClientEvent::Welcome {
            version: 1,
            node_id: id,
            software: "s".into(),
            max_payload: 7,
        })
        .unwrap();
        let b = encode(&ClientEventRef::Welcome {
            version: 1,
            node_id: id,
            software: "s",
            max_payload: 7,
        })
        .unwrap();
        assert_eq!(a, b);
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode_body::<PeerFrame>(&data);
            let _ = decode_body::<ClientRequest>(&data);
            let _ = decode_body::<JoinRequest>(&data);
        }
    }
}
