//! Public-key sharing (EPKS): a participant's key bundle, sealed with a SipHash ID's stream and
//! tagged for that ID. A node captures the bundles addressed to registered participants and
//! answers PKP requests with an EPKS frame addressed to the requester.
//!
//! Plaintext: seven base-64 fields joined by `\n`: timestamp, key type (`0x00`, chat), the
//! owner's SipHash ID, encryption public key, its signature, signature public key, its
//! signature. Both signatures cover `id || encryption key DER || signature key DER`.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::crypto::{hmac_matches, sha512, KeyError, PublicKey, Stream, HASH_LEN};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// How far an EPKS timestamp may be from the node's clock (SmokeStack: 120 s).
pub const WINDOW_MS: u64 = 120_000;
/// The chat key type, the only one Smoke shares this way.
pub const CHAT_KEY_TYPE: u8 = 0x00;

/// A participant's keys as captured from EPKS (DER and signatures as sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    pub id: String,
    pub encryption_key: Vec<u8>,
    pub encryption_signature: Vec<u8>,
    pub signature_key: Vec<u8>,
    pub signature_signature: Vec<u8>,
    /// When the bundle was made (the sender's clock, ms).
    pub ts_ms: u64,
}

impl Keys {
    /// SHA-512 of the encryption key: how retrieval and read requests name their sender.
    pub fn encryption_digest(&self) -> [u8; HASH_LEN] {
        sha512(&[&self.encryption_key])
    }

    /// SHA-512 of the signature key: how a `0097b` login names its signer.
    pub fn signature_digest(&self) -> [u8; HASH_LEN] {
        sha512(&[&self.signature_key])
    }

    pub fn signature_public_key(&self) -> Result<PublicKey, KeyError> {
        PublicKey::from_der(&self.signature_key)
    }

    /// A short algorithm name for listings (`EC`, `RSA`).
    pub fn algorithm(&self) -> &'static str {
        match self.signature_public_key() {
            Ok(PublicKey::Ec(_)) => "EC",
            Ok(PublicKey::Rsa(_)) => "RSA",
            Err(_) => "unsupported",
        }
    }
}

/// Why an EPKS bundle was not captured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpksError {
    #[error("cannot decrypt the bundle")]
    Undecryptable,
    #[error("the bundle has {0} fields, not 7")]
    Fields(usize),
    #[error("a field is not base-64")]
    Base64,
    #[error("the bundle's timestamp is more than 120 s from this node's clock")]
    Stale,
    #[error("key type {0} is not the chat key type")]
    KeyType(u8),
    #[error("the SipHash ID in the bundle is malformed")]
    BadId,
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl EpksError {
    pub fn label(&self) -> &'static str {
        match self {
            EpksError::Undecryptable => "undecryptable",
            EpksError::Fields(_) | EpksError::Base64 | EpksError::KeyType(_) => "malformed",
            EpksError::Stale => "stale",
            EpksError::BadId => "bad_id",
            EpksError::Key(k) => k.label(),
        }
    }
}

/// Whether `bytes` (`sealed || destination`) is addressed to `id` and sealed with its stream.
pub fn addressed_to(bytes: &[u8], id_digest: &[u8; HASH_LEN], stream: &Stream) -> bool {
    let Some(split) = bytes.len().checked_sub(2 * HASH_LEN) else {
        return false;
    };
    let dest = &bytes[bytes.len() - HASH_LEN..];
    hmac_matches(id_digest, &bytes[..bytes.len() - HASH_LEN], dest)
        && hmac_matches(
            &stream.mac,
            &bytes[..split],
            &bytes[split..bytes.len() - HASH_LEN],
        )
}

/// Decrypt and check a bundle addressed to a participant whose stream is `stream`: fields,
/// time window, key type, both signatures (RSA encryption keys sign too; McEliece keys, which
/// cannot, are refused as unsupported).
pub fn capture(bytes: &[u8], stream: &Stream, now_ms: u64) -> Result<Keys, EpksError> {
    let sealed = &bytes[..bytes.len().saturating_sub(HASH_LEN)];
    let plain = stream.open(sealed).ok_or(EpksError::Undecryptable)?;
    let fields: Vec<&[u8]> = plain.split(|&b| b == b'\n').collect();
    if fields.len() != 7 {
        return Err(EpksError::Fields(fields.len()));
    }
    let d = |i: usize| B64.decode(fields[i]).map_err(|_| EpksError::Base64);
    let ts: [u8; 8] = d(0)?.try_into().map_err(|_| EpksError::Base64)?;
    let ts_ms = u64::from_be_bytes(ts);
    if ts_ms.abs_diff(now_ms) > WINDOW_MS {
        return Err(EpksError::Stale);
    }
    let kt = d(1)?;
    if kt != [CHAT_KEY_TYPE] {
        return Err(EpksError::KeyType(kt.first().copied().unwrap_or(0xff)));
    }
    let id = String::from_utf8(d(2)?).map_err(|_| EpksError::BadId)?;
    super::check_id(&id).map_err(|_| EpksError::BadId)?;
    let keys = Keys {
        id,
        encryption_key: d(3)?,
        encryption_signature: d(4)?,
        signature_key: d(5)?,
        signature_signature: d(6)?,
        ts_ms,
    };
    let signed = [
        keys.id.as_bytes(),
        &keys.encryption_key,
        &keys.signature_key,
    ]
    .concat();
    PublicKey::from_der(&keys.encryption_key)?.verify(&signed, &keys.encryption_signature)?;
    keys.signature_public_key()?
        .verify(&signed, &keys.signature_signature)?;
    Ok(keys)
}

/// The EPKS frame content that gives `keys` to `requester` (SmokeStack's answer to PKP):
/// sealed with the requester's SipHash stream and tagged for the requester's ID.
pub fn answer(keys: &Keys, requester: &str, requester_stream: &Stream, now_ms: u64) -> Vec<u8> {
    let fields = [
        B64.encode(now_ms.to_be_bytes()),
        B64.encode([CHAT_KEY_TYPE]),
        B64.encode(keys.id.as_bytes()),
        B64.encode(&keys.encryption_key),
        B64.encode(&keys.encryption_signature),
        B64.encode(&keys.signature_key),
        B64.encode(&keys.signature_signature),
    ];
    super::addressed(
        requester_stream.seal(fields.join("\n").as_bytes()),
        requester,
    )
}
