//! Ozones: offline mailboxes.
//!
//! Addressing (DESIGN.md): the client keeps a secret; `P = derive_key("echomesh ozone v1",
//! secret)` is its proof and `A = blake3(P)` the ozone's address. Nodes store messages under
//! `A`; fetching or acknowledging requires presenting `P`, checked as `blake3(P) == A`. Packets
//! for an ozone carry `tags::tag(A, epoch)`, so a hosting node matches them in O(1) while
//! outsiders cannot link tags of different epochs.
//!
//! - `message`: what an ozone holds and how two replicas compare.
//! - `placement`: rendezvous hashing of addresses over cluster members.
//!
//! Storage and replication are the node's (`echomesh_node::ozone`).

mod message;
pub mod placement;

pub use message::{OzoneDigest, StoredMessage};

use serde::{Deserialize, Serialize};

/// An ozone address `A = blake3(P)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OzoneAddr(#[serde(with = "crate::wire::bytes32")] pub [u8; 32]);

/// The proof `P` that opens an ozone.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OzoneProof(#[serde(with = "crate::wire::bytes32")] pub [u8; 32]);

impl OzoneProof {
    /// The proof for a client's secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        OzoneProof(blake3::derive_key("echomesh ozone v1", secret))
    }

    pub fn address(&self) -> OzoneAddr {
        OzoneAddr(*blake3::hash(&self.0).as_bytes())
    }

    /// Whether this proof opens `addr`.
    pub fn opens(&self, addr: &OzoneAddr) -> bool {
        // Both sides are public-length hashes; a timing difference reveals nothing useful.
        self.address() == *addr
    }
}

impl std::fmt::Debug for OzoneProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OzoneProof(..)")
    }
}

impl OzoneAddr {
    /// Short form for logs (first 8 hex characters): enough to correlate, too little to
    /// address anything.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// The packet tag of this ozone in `epoch`.
    pub fn tag(&self, epoch: u64) -> crate::tags::Tag {
        crate::tags::tag(&self.0, epoch)
    }
}

impl std::fmt::Debug for OzoneAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OzoneAddr({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_opens_only_its_own_address() {
        let p = OzoneProof::from_secret(b"correct horse");
        let q = OzoneProof::from_secret(b"correct horsf");
        assert!(p.opens(&p.address()));
        assert!(!q.opens(&p.address()));
        // The address does not reveal the proof, and neither is the secret's plain hash.
        assert_ne!(p.address().0, p.0);
        assert_ne!(p.0, *blake3::hash(b"correct horse").as_bytes());
        assert_ne!(p.address().tag(1), p.address().tag(2));
    }
}
