//! What an ozone holds and how replicas compare, as they travel between nodes and clients.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::OzoneAddr;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub addr: OzoneAddr,
    /// Order within the ozone (assigned by the accepting node).
    pub seq: u64,
    /// blake3 of the payload.
    #[serde(with = "crate::wire::bytes32")]
    pub id: [u8; 32],
    pub expires_ms: u64,
    pub payload: Bytes,
}

/// Summary of one replica's view of an ozone (see the node's `OzoneStore::digest_blocking`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OzoneDigest {
    pub messages: u64,
    pub tombstones: u64,
    #[serde(with = "crate::wire::bytes32")]
    pub message_xor: [u8; 32],
    #[serde(with = "crate::wire::bytes32")]
    pub tombstone_xor: [u8; 32],
}
