//! Packet tags: how a subscriber (or, later, an ozone host) finds its packets in O(1) without
//! the tag naming anyone.
//!
//! A tag is `blake3::keyed_hash(address, "echomesh tag v1" || epoch)`, with the epoch the
//! Unix time divided by [`EPOCH_SECS`]. Whoever knows the address computes the tags of every
//! epoch; whoever sees only tags cannot tell that two tags from different epochs belong to the
//! same address. Receivers listen on the previous, current and next epoch, which absorbs clock
//! skew and messages in flight across an epoch boundary.
//!
//! Addresses:
//! - a participant's inbox: `derive_key("echomesh inbox v1", fingerprint)`. The fingerprint is
//!   public (key directory), so a node that knows a participant's key can recognise their
//!   inbox tags: it learns *that* someone received a message, never what it says. Ozones
//!   (secret addresses) are the private alternative.
//! - the key directory: one fixed tag, [`keydir_tag`], on every key bundle flooding the mesh;
//! - the topology: one fixed tag, [`topology_tag`], on every signed node announcement.
//!
//! Packets with these two fixed tags are the mesh's own control traffic: they are verified by
//! every node before being forwarded and are never delivered to clients.

use std::sync::LazyLock;

use crate::keydir::Fingerprint;

/// The fixed tag of Echo frames crossing the mesh (the bridge, docs/ECHO.md): every node's
/// bridge takes them, echomesh clients never get them.
pub fn bridge_tag() -> Tag {
    static T: LazyLock<Tag> = LazyLock::new(|| blake3::derive_key("echomesh echo bridge v1", b""));
    *T
}

/// Length of a tag epoch.
pub const EPOCH_SECS: u64 = 3600;

pub type Tag = [u8; 32];

pub fn epoch_of(unix_secs: u64) -> u64 {
    unix_secs / EPOCH_SECS
}

pub fn tag(address: &[u8; 32], epoch: u64) -> Tag {
    let mut h = blake3::Hasher::new_keyed(address);
    h.update(b"echomesh tag v1");
    h.update(&epoch.to_be_bytes());
    *h.finalize().as_bytes()
}

/// Tags to listen on at `now`: previous, current and next epoch.
pub fn tags_around(address: &[u8; 32], now_unix: u64) -> Vec<Tag> {
    let e = epoch_of(now_unix);
    vec![
        tag(address, e.saturating_sub(1)),
        tag(address, e),
        tag(address, e + 1),
    ]
}

pub fn inbox_address(fp: &Fingerprint) -> [u8; 32] {
    blake3::derive_key("echomesh inbox v1", &fp.0)
}

static KEYDIR_TAG: LazyLock<Tag> =
    LazyLock::new(|| blake3::derive_key("echomesh key directory v1", b""));

/// The tag carried by key-bundle packets.
pub fn keydir_tag() -> Tag {
    *KEYDIR_TAG
}

static TOPOLOGY_TAG: LazyLock<Tag> =
    LazyLock::new(|| blake3::derive_key("echomesh topology v1", b""));

/// The tag carried by signed node announcements (topology).
pub fn topology_tag() -> Tag {
    *TOPOLOGY_TAG
}

static SMOKE_TAG: LazyLock<Tag> =
    LazyLock::new(|| blake3::derive_key("echomesh smoke records v1", b""));

/// The tag carried by the cluster's Smoke configuration records.
pub fn smoke_tag() -> Tag {
    *SMOKE_TAG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_rotate_per_epoch_and_differ_per_address() {
        let a = inbox_address(&Fingerprint([1; 32]));
        let b = inbox_address(&Fingerprint([2; 32]));
        assert_ne!(tag(&a, 5), tag(&a, 6));
        assert_ne!(tag(&a, 5), tag(&b, 5));
        let around = tags_around(&a, 7 * EPOCH_SECS + 10);
        assert_eq!(around, vec![tag(&a, 6), tag(&a, 7), tag(&a, 8)]);
        assert_ne!(keydir_tag(), tag(&a, 7));
    }
}
