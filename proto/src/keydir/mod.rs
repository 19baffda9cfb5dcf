//! Key bundles (EPKS) and the key directory's replacement rule.
//!
//! Rules (see [`decide`]): a bundle is replaced only by a newer one for the same key (and so
//! signed by the same key); ties between two different bundles of the same age go to the
//! larger digest, so all nodes converge on one; a revocation is final. A node forwards a given
//! bundle at most once (only when [`decide`] says it changed the directory), which ends every
//! flood.

mod bundle;
mod participant;
pub mod sync;

pub use bundle::{
    participant_key, BundleError, BundleKind, KeyBundle, BUNDLE_FORMAT, BUNDLE_FORMAT_V1,
    MAX_BUNDLE_BYTES, RSA_BITS,
};
pub use participant::{Fingerprint, IdError, ParticipantRef, ShortId, SHORT_LEN};

/// What offering a valid bundle did to the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// First bundle for this key.
    New,
    /// Replaced an older bundle (or a publication by a revocation).
    Replaced,
    /// Already stored exactly; nothing to flood.
    Unchanged,
}

impl Offered {
    pub fn changed(self) -> bool {
        !matches!(self, Offered::Unchanged)
    }
}

/// The replacement rule, as a pure function of what is stored and what arrives.
pub fn decide(existing: Option<&KeyBundle>, new: &KeyBundle) -> Result<Offered, BundleError> {
    let Some(old) = existing else {
        return Ok(Offered::New);
    };
    if old == new {
        return Ok(Offered::Unchanged);
    }
    match (old.kind, new.kind) {
        (BundleKind::Revoke, _) => Err(BundleError::Revoked),
        (BundleKind::Publish, BundleKind::Revoke) => Ok(Offered::Replaced),
        (BundleKind::Publish, BundleKind::Publish) => {
            if new.created_at > old.created_at
                || (new.created_at == old.created_at && new.digest() > old.digest())
            {
                Ok(Offered::Replaced)
            } else {
                Err(BundleError::Stale(old.created_at))
            }
        }
    }
}
