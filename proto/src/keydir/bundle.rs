//! Key bundles: a participant's public key, display name and creation time, signed by that
//! same key. Nodes verify bundles before they store or flood them; clients verify them again
//! after a lookup (a node is never trusted to vouch for a key).

use bytes::Bytes;
use rsa::pkcs8::DecodePublicKey;
use rsa::pss::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::participant::Fingerprint;
use crate::ozone::OzoneAddr;
use crate::wire;

/// The bundle format this build writes. Format 2 appends the owner's mailbox to format 1
/// (whose encoding is unchanged, so format-1 bundles stay valid and keep their signatures).
pub const BUNDLE_FORMAT: u8 = 2;
/// The first format (no mailbox).
pub const BUNDLE_FORMAT_V1: u8 = 1;
/// RSA modulus size participants use.
pub const RSA_BITS: usize = 3072;
/// Largest encoded bundle a node accepts.
pub const MAX_BUNDLE_BYTES: usize = 8 * 1024;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// How far in the future a bundle's creation time may be (clock skew).
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Domain separation for bundle signatures.
const SIGNING_CONTEXT: &[u8] = b"echomesh key bundle v1\0";
/// Fields of a format-1 bundle; format 2 has one more (the mailbox).
const FIELDS_V1: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleKind {
    /// "This is my key."
    Publish,
    /// "Do not use this key any more." Final: nothing replaces a revocation.
    Revoke,
}

impl BundleKind {
    pub fn label(self) -> &'static str {
        match self {
            BundleKind::Publish => "published",
            BundleKind::Revoke => "revoked",
        }
    }
}

/// A participant's signed key bundle. Encoded as the tuple of its fields in this order; the
/// mailbox only in format ≥ 2 (see the `Serialize`/`Deserialize` impls below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    pub format: u8,
    pub kind: BundleKind,
    /// RSA public key, SubjectPublicKeyInfo DER.
    pub public_key: Bytes,
    pub display_name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// RSA-PSS (SHA-256) over [`KeyBundle::signed_bytes`].
    pub signature: Bytes,
    /// The owner's personal mailbox (format ≥ 2): anyone may deposit there, only the owner
    /// can fetch. `None`: the owner is reachable only while connected.
    pub mailbox: Option<OzoneAddr>,
}

impl Serialize for KeyBundle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let v2 = self.format >= BUNDLE_FORMAT;
        let mut t = s.serialize_tuple(FIELDS_V1 + usize::from(v2))?;
        t.serialize_element(&self.format)?;
        t.serialize_element(&self.kind)?;
        t.serialize_element(&self.public_key)?;
        t.serialize_element(&self.display_name)?;
        t.serialize_element(&self.created_at)?;
        t.serialize_element(&self.signature)?;
        if v2 {
            t.serialize_element(&self.mailbox)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for KeyBundle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyBundle;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key bundle")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<KeyBundle, A::Error> {
                use serde::de::Error;
                let field = |i: usize| Error::invalid_length(i, &"a key bundle");
                let format: u8 = a.next_element()?.ok_or_else(|| field(0))?;
                let kind = a.next_element()?.ok_or_else(|| field(1))?;
                let public_key = a.next_element()?.ok_or_else(|| field(2))?;
                let display_name = a.next_element()?.ok_or_else(|| field(3))?;
                let created_at = a.next_element()?.ok_or_else(|| field(4))?;
                let signature = a.next_element()?.ok_or_else(|| field(5))?;
                let mailbox = if format >= BUNDLE_FORMAT {
                    a.next_element()?.ok_or_else(|| field(6))?
                } else {
                    None
                };
                Ok(KeyBundle {
                    format,
                    kind,
                    public_key,
                    display_name,
                    created_at,
                    signature,
                    mailbox,
                })
            }
        }
        // The tuple is read as far as the format says (6 or 7 fields).
        d.deserialize_tuple(FIELDS_V1 + 1, V)
    }
}

/// Why a bundle is refused. `label()` is the `reason` label of
/// `echomesh_key_bundles_rejected_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle cannot be decoded: {0}")]
    Undecodable(String),
    #[error("bundle format {0} is not known to this node (it understands {BUNDLE_FORMAT_V1} and {BUNDLE_FORMAT}); upgrade the node or the client")]
    UnknownFormat(u8),
    #[error("bundle of {0} bytes exceeds the limit of {MAX_BUNDLE_BYTES} bytes")]
    Oversized(usize),
    #[error("public key is not an RSA-{RSA_BITS} key with exponent 65537: {0}")]
    BadKey(String),
    #[error("display name must be 1 to {MAX_NAME_CHARS} characters without control characters")]
    BadName,
    #[error(
        "signature does not verify with the bundle's own key (the bundle was altered or forged)"
    )]
    BadSignature,
    #[error("bundle is dated {0} s in the future; check the publishing computer's clock")]
    Future(u64),
    #[error("a newer bundle for this key is already stored (created at {0}); nothing to do")]
    Stale(u64),
    #[error("this key was revoked; a revoked key cannot be published again — generate a new key")]
    Revoked,
    #[error(
        "the key directory is full (limits.max_key_bundles); the operator must raise the limit"
    )]
    DirectoryFull,
}

impl BundleError {
    pub fn label(&self) -> &'static str {
        match self {
            BundleError::Undecodable(_) => "undecodable",
            BundleError::UnknownFormat(_) => "unknown_version",
            BundleError::Oversized(_) => "oversized",
            BundleError::BadKey(_) => "bad_key",
            BundleError::BadName => "bad_name",
            BundleError::BadSignature => "bad_signature",
            BundleError::Future(_) => "future",
            BundleError::Stale(_) => "stale",
            BundleError::Revoked => "revoked",
            BundleError::DirectoryFull => "directory_full",
        }
    }

    pub const LABELS: &'static [&'static str] = &[
        "undecodable",
        "unknown_version",
        "oversized",
        "bad_key",
        "bad_name",
        "bad_signature",
        "future",
        "stale",
        "revoked",
        "directory_full",
    ];
}

#[derive(Serialize)]
struct Signed<'a> {
    format: u8,
    kind: BundleKind,
    public_key: &'a [u8],
    display_name: &'a str,
    created_at: u64,
}

#[derive(Serialize)]
struct SignedV2<'a> {
    v1: Signed<'a>,
    mailbox: Option<&'a OzoneAddr>,
}

impl KeyBundle {
    /// The bytes the signature covers: a context string and every field but the signature.
    pub fn signed_bytes(
        format: u8,
        kind: BundleKind,
        public_key: &[u8],
        display_name: &str,
        created_at: u64,
        mailbox: Option<&OzoneAddr>,
    ) -> Vec<u8> {
        let mut out = SIGNING_CONTEXT.to_vec();
        let v1 = Signed {
            format,
            kind,
            public_key,
            display_name,
            created_at,
        };
        let body = if format >= BUNDLE_FORMAT {
            wire::record_to_vec(&SignedV2 { v1, mailbox })
        } else {
            wire::record_to_vec(&v1)
        }
        .unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_public_key(&self.public_key)
    }

    pub fn encode(&self) -> Result<Vec<u8>, wire::FrameError> {
        wire::record_to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyBundle, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Oversized(bytes.len()));
        }
        wire::decode_body(bytes).map_err(|e| BundleError::Undecodable(e.to_string()))
    }

    /// Digest used to break ties between two different bundles with the same creation time,
    /// so that every node keeps the same one.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.encode().unwrap_or_default()).as_bytes()
    }

    /// Check everything that can be checked without the directory: format, size, key, name,
    /// clock and signature.
    pub fn verify(&self, now_unix: u64) -> Result<(), BundleError> {
        if self.format != BUNDLE_FORMAT && self.format != BUNDLE_FORMAT_V1 {
            return Err(BundleError::UnknownFormat(self.format));
        }
        if self.format == BUNDLE_FORMAT_V1 && self.mailbox.is_some() {
            return Err(BundleError::Undecodable(
                "a format-1 bundle cannot name a mailbox".into(),
            ));
        }
        let size = self.encode().map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_BUNDLE_BYTES {
            return Err(BundleError::Oversized(size));
        }
        let name_chars = self.display_name.chars().count();
        if name_chars == 0
            || name_chars > MAX_NAME_CHARS
            || self.display_name.chars().any(char::is_control)
        {
            return Err(BundleError::BadName);
        }
        if self.created_at > now_unix + MAX_CLOCK_SKEW_SECS {
            return Err(BundleError::Future(self.created_at - now_unix));
        }
        let key = participant_key(&self.public_key)?;
        let msg = Self::signed_bytes(
            self.format,
            self.kind,
            &self.public_key,
            &self.display_name,
            self.created_at,
            self.mailbox.as_ref(),
        );
        let sig =
            Signature::try_from(self.signature.as_ref()).map_err(|_| BundleError::BadSignature)?;
        VerifyingKey::<Sha256>::new(key)
            .verify(&msg, &sig)
            .map_err(|_| BundleError::BadSignature)
    }
}

/// Parse a participant public key and check it is what participants use: RSA-3072, e = 65537.
/// (A fixed exponent keeps grinding for a colliding short ID as expensive as generating RSA
/// keys.)
pub fn participant_key(spki_der: &[u8]) -> Result<RsaPublicKey, BundleError> {
    let key = RsaPublicKey::from_public_key_der(spki_der)
        .map_err(|e| BundleError::BadKey(e.to_string()))?;
    if key.n().bits() != RSA_BITS {
        return Err(BundleError::BadKey(format!(
            "modulus has {} bits",
            key.n().bits()
        )));
    }
    if *key.e() != BigUint::from(65537u32) {
        return Err(BundleError::BadKey("exponent is not 65537".into()));
    }
    Ok(key)
}
