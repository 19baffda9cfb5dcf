//! Ozone-addressed requests from Smoke clients (`Messages.chatMessageRetrieval`,
//! `messageRead`, `pkpRequestMessage`, `shareSipHashIdMessage`): `AES-CBC(ozone enc key,
//! plaintext) || HMAC(ozone MAC key, ciphertext)`, no destination tag. The first plaintext
//! byte says what is asked.

use super::crypto::{Stream, HASH_LEN};
use super::SIPHASH_ID_LEN;

/// How far a request's timestamp may be from the node's clock (SmokeStack: 30 s).
pub const WINDOW_MS: u64 = 30_000;
/// A retrieval's random identity (the client registers it with `0095a` first).
pub const IDENTITY_LEN: usize = 64;

/// A request's body, after the ozone opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `0x00`: release the stored messages of the participant whose encryption key has
    /// digest `enc_digest`, tagged for `identity`. Signed.
    Retrieve(Signed),
    /// `0x04`: the message with SHA-512 `Signed::subject` (the data) was read. Signed.
    Read(Signed),
    /// `0x01`: send `requester` the keys of `requested` (an EPKS frame). Not signed.
    PublicKeyPair {
        ts_ms: u64,
        requester: String,
        requested: String,
    },
    /// `0x02`: register `id` as a participant (and an ozone named after it); answer `0x03`
    /// carrying `temporary`. Not signed.
    ShareId {
        ts_ms: u64,
        id: String,
        temporary: [u8; 8],
    },
}

/// The common layout of `0x00` and `0x04`: `type || ts(8) || subject(64) || enc_digest(64) ||
/// signature over the 137 bytes before it`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub ts_ms: u64,
    /// `0x00`: the retrieval identity; `0x04`: SHA-512 of the message read.
    pub subject: [u8; IDENTITY_LEN],
    /// SHA-512 of the requester's encryption public key (X.509 DER).
    pub enc_digest: [u8; HASH_LEN],
    pub signed: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is shorter than its layout")]
    Short,
    #[error("unknown request type {0:#04x}")]
    UnknownType(u8),
    #[error("the timestamp is more than 30 s from this node's clock")]
    Stale,
    #[error("a SipHash ID in the request is malformed")]
    BadId,
}

impl RequestError {
    pub fn label(self) -> &'static str {
        match self {
            RequestError::Short => "short",
            RequestError::UnknownType(_) => "unknown_type",
            RequestError::Stale => "stale",
            RequestError::BadId => "bad_id",
        }
    }
}

/// The first ozone (by index) whose MAC key matches the last 64 bytes, with the plaintext.
/// Cost: one HMAC per configured ozone.
pub fn open<'a>(
    bytes: &[u8],
    ozones: impl IntoIterator<Item = &'a Stream>,
) -> Option<(usize, Vec<u8>)> {
    ozones
        .into_iter()
        .enumerate()
        .find_map(|(i, s)| s.open(bytes).map(|p| (i, p)))
}

fn ts(b: &[u8]) -> Result<u64, RequestError> {
    let t: [u8; 8] = b
        .get(1..9)
        .ok_or(RequestError::Short)?
        .try_into()
        .map_err(|_| RequestError::Short)?;
    Ok(u64::from_be_bytes(t))
}

fn fresh(ts_ms: u64, now_ms: u64) -> Result<(), RequestError> {
    if ts_ms.abs_diff(now_ms) > WINDOW_MS {
        return Err(RequestError::Stale);
    }
    Ok(())
}

fn id_at(b: &[u8], from: usize) -> Result<String, RequestError> {
    let raw = b
        .get(from..from + SIPHASH_ID_LEN)
        .ok_or(RequestError::Short)?;
    let s = std::str::from_utf8(raw).map_err(|_| RequestError::BadId)?;
    super::check_id(s).map_err(|_| RequestError::BadId)?;
    Ok(s.to_string())
}

/// Parse and time-check an opened request.
pub fn parse(plain: &[u8], now_ms: u64) -> Result<Request, RequestError> {
    let kind = *plain.first().ok_or(RequestError::Short)?;
    match kind {
        0x00 | 0x04 => {
            let head = 9 + IDENTITY_LEN + HASH_LEN;
            if plain.len() <= head {
                return Err(RequestError::Short);
            }
            let ts_ms = ts(plain)?;
            fresh(ts_ms, now_ms)?;
            let mut subject = [0u8; IDENTITY_LEN];
            subject.copy_from_slice(&plain[9..9 + IDENTITY_LEN]);
            let mut enc_digest = [0u8; HASH_LEN];
            enc_digest.copy_from_slice(&plain[9 + IDENTITY_LEN..head]);
            let s = Signed {
                ts_ms,
                subject,
                enc_digest,
                signed: plain[..head].to_vec(),
                signature: plain[head..].to_vec(),
            };
            Ok(if kind == 0 {
                Request::Retrieve(s)
            } else {
                Request::Read(s)
            })
        }
        0x01 => {
            let ts_ms = ts(plain)?;
            fresh(ts_ms, now_ms)?;
            let requester = id_at(plain, 9)?;
            let rest = plain.get(9 + SIPHASH_ID_LEN..).ok_or(RequestError::Short)?;
            let requested = std::str::from_utf8(rest)
                .map_err(|_| RequestError::BadId)?
                .trim();
            super::check_id(requested).map_err(|_| RequestError::BadId)?;
            Ok(Request::PublicKeyPair {
                ts_ms,
                requester,
                requested: requested.to_string(),
            })
        }
        0x02 => {
            let ts_ms = ts(plain)?;
            fresh(ts_ms, now_ms)?;
            let id = id_at(plain, 9)?;
            let t = plain
                .get(9 + SIPHASH_ID_LEN..9 + SIPHASH_ID_LEN + 8)
                .ok_or(RequestError::Short)?;
            let mut temporary = [0u8; 8];
            temporary.copy_from_slice(t);
            Ok(Request::ShareId {
                ts_ms,
                id,
                temporary,
            })
        }
        other => Err(RequestError::UnknownType(other)),
    }
}

/// The `0x03` confirmation of a shared SipHash ID (SmokeStack's
/// `shareSipHashIdMessageConfirmation`): sealed with the ozone's stream, then tagged for the ID.
pub fn share_id_confirmation(
    ozone: &Stream,
    id: &str,
    temporary: &[u8; 8],
    now_ms: u64,
) -> Vec<u8> {
    let mut plain = Vec::with_capacity(1 + 8 + SIPHASH_ID_LEN + 8);
    plain.push(0x03);
    plain.extend_from_slice(&now_ms.to_be_bytes());
    plain.extend_from_slice(id.as_bytes());
    plain.extend_from_slice(temporary);
    super::addressed(ozone.seal(&plain), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123-4567-89AB-CDEF-0123-4567-89AB-CDEF";

    #[test]
    fn requests_parse_and_stale_ones_are_refused() {
        let now = 1_700_000_000_000u64;
        let mut p = vec![0x01];
        p.extend_from_slice(&now.to_be_bytes());
        p.extend_from_slice(ID.as_bytes());
        p.extend_from_slice(ID.as_bytes());
        let oz = Stream::derive("10.0.0.1:4710:TCP");
        let sealed = oz.seal(&p);
        let other = Stream::derive("elsewhere");
        let (i, plain) = open(&sealed, [&other, &oz]).unwrap();
        assert_eq!(i, 1);
        assert!(matches!(
            parse(&plain, now),
            Ok(Request::PublicKeyPair { .. })
        ));
        assert_eq!(parse(&plain, now + 30_001), Err(RequestError::Stale));
        assert_eq!(parse(&plain[..20], now), Err(RequestError::Short));
        assert_eq!(parse(&[9, 0, 0], now), Err(RequestError::UnknownType(9)));
        let mut r = vec![0x00];
        r.extend_from_slice(&now.to_be_bytes());
        r.extend_from_slice(&[7; 128]);
        r.extend_from_slice(b"sig");
        match parse(&r, now - 1000) {
            Ok(Request::Retrieve(s)) => {
                assert_eq!(s.signed.len(), 137);
                assert_eq!(s.signature, b"sig");
            }
            other => panic!("{other:?}"),
        }
    }
}
