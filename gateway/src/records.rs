//! What the gateway keeps: outgoing messages with a state per recipient, incoming messages
//! waiting for their webhook (or a pull), dead letters and rejections. These are also the
//! API's JSON shapes (documented in the OpenAPI document).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A file's description (the bytes travel apart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FileMeta {
    /// The file name the sender gave (only the final component; may contain any characters).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// Where one recipient's copy of an outgoing message stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Durably in the gateway's outbox, not yet in the mesh.
    Queued,
    /// Durably in the recipient's mailbox on the cluster's write quorum.
    Deposited,
    /// Sent live: the recipient publishes no mailbox and gets it only if connected.
    Live,
    /// Given up (see `error`).
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OutRecipient {
    /// Short ID.
    pub id: String,
    pub fingerprint: String,
    /// The name in their published key bundle.
    pub display_name: String,
    pub state: DeliveryState,
    /// Copies in the mesh when deposited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<u8>,
    /// Why it failed, or the last transient error while still queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Their mailbox's address (hex), when their key bundle names one; else they are sent
    /// live.
    pub mailbox: Option<String>,
    /// Encrypted pieces (a file is split into pieces that each fit an echo packet).
    pub pieces: u32,
}

/// An outgoing message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OutMessage {
    pub id: String,
    /// Identity name it is sent as.
    pub from: String,
    /// That identity's short ID.
    pub from_id: String,
    /// API token that sent it.
    pub token: String,
    pub created_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileMeta>,
    pub recipients: Vec<OutRecipient>,
    /// Every recipient is deposited, live or failed.
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_at_ms: Option<u64>,
    /// Queue position (internal).
    #[serde(skip)]
    pub seq: u64,
}

impl OutMessage {
    pub fn finished(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.state != DeliveryState::Queued)
    }
}

/// Where an incoming message stands with the receiving application.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InState {
    /// Waiting for the webhook to accept it (or a pull to acknowledge it).
    Pending,
    Delivered,
    /// The webhook did not accept it in time; replay it with the API.
    Dead,
}

/// An incoming message (the webhook body has the same fields, plus `type` and the file's
/// content or URL).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InMessage {
    /// Stable across retries and restarts: the receiver's idempotency key (equal to the
    /// `webhook-id` header).
    pub id: String,
    /// The gateway identity it was sent to (name).
    pub identity: String,
    /// That identity's short ID.
    pub to_id: String,
    /// The sender's short ID.
    pub from_id: String,
    pub from_fingerprint: String,
    /// The name in the sender's published key bundle, when the key directory has one.
    pub from_name: Option<String>,
    /// The signature verified against the sender's key (always true here: unverifiable
    /// messages are rejected, counted and listed at `/v1/rejected`).
    pub verified: bool,
    pub sent_at_ms: u64,
    pub received_at_ms: u64,
    /// When it (last) joined the webhook queue: dead-lettering counts from here.
    pub queued_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileMeta>,
    pub state: InState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<u64>,
    /// Webhook attempts so far.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Arrival order (the pull cursor).
    pub seq: u64,
}

/// A message that could not be verified (forged, altered, not decryptable).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Rejected {
    pub identity: String,
    pub received_at_ms: u64,
    /// The sender it claims, when it got far enough to claim one.
    pub claimed_from: Option<String>,
    pub reason: String,
}
