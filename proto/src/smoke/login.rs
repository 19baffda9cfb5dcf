//! Private-server login: the server sends `0097a` with a random challenge string until the
//! client answers `0097b` with `random(64) || SHA-512(signature key DER) || signature over
//! random || digest || challenge` made with a participant's registered signature key.

use super::crypto::{KeyError, HASH_LEN};
use super::epks::Keys;

/// A fresh challenge: 64 hexadecimal characters.
pub fn challenge() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Why a login answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("the answer is shorter than 129 bytes")]
    Short,
    #[error("the answer's random part repeats the challenge")]
    Replayed,
    #[error("no participant has that signature key")]
    Unknown,
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl LoginError {
    pub fn label(&self) -> &'static str {
        match self {
            LoginError::Short => "short",
            LoginError::Replayed => "replayed",
            LoginError::Unknown => "unknown_participant",
            LoginError::Key(k) => k.label(),
        }
    }
}

/// Check an answer (the decoded `0097b` content) against the challenge sent; the
/// participant's ID when it verifies.
pub fn verify<'a>(
    answer: &[u8],
    challenge: &str,
    participants: impl IntoIterator<Item = &'a Keys>,
) -> Result<String, LoginError> {
    if answer.len() <= 2 * HASH_LEN {
        return Err(LoginError::Short);
    }
    let random = &answer[..HASH_LEN];
    let digest = &answer[HASH_LEN..2 * HASH_LEN];
    if random == challenge.as_bytes() {
        return Err(LoginError::Replayed);
    }
    let keys = participants
        .into_iter()
        .find(|k| k.signature_digest() == digest)
        .ok_or(LoginError::Unknown)?;
    let signed = [random, digest, challenge.as_bytes()].concat();
    keys.signature_public_key()?
        .verify(&signed, &answer[2 * HASH_LEN..])?;
    Ok(keys.id.clone())
}
