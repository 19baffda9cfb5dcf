//! The SmokeStack services echomesh offers Smoke clients, without IO (docs/ECHO.md, "SmokeStack
//! services"): ozone streams and sealing ([`crypto`]), ozone-addressed requests ([`request`]),
//! key sharing ([`epks`]), the minute-bound storage tag ([`search`]) and private-server login
//! ([`login`]). The formats follow Smoke's and SmokeStack's Java sources; the node
//! (`echomesh_node::smoke`) stores, replicates and answers.

pub mod crypto;
pub mod epks;
pub mod login;
pub mod record;
pub mod request;
pub mod search;

pub use crypto::Stream;

/// A SipHash ID: `XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX-XXXX`, 16 bytes in hexadecimal.
pub const SIPHASH_ID_LEN: usize = 39;

/// Why a SipHash ID is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SipHash ID (eight groups of four hexadecimal digits joined by '-', e.g. 0123-4567-89AB-CDEF-0123-4567-89AB-CDEF)")]
pub struct BadId(pub String);

/// Check a SipHash ID's form.
pub fn check_id(id: &str) -> Result<(), BadId> {
    let ok = id.len() == SIPHASH_ID_LEN
        && id.split('-').count() == 8
        && id
            .split('-')
            .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(BadId(id.chars().take(64).collect()))
    }
}

/// A SipHash ID in Smoke's form (upper case), checked.
pub fn normalize_id(id: &str) -> Result<String, BadId> {
    let id = id.trim().to_ascii_uppercase();
    check_id(&id)?;
    Ok(id)
}

/// Why an ozone address is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ozone address (1 to 256 printable characters, e.g. 203.0.113.7:4710:TCP, what Smoke users type)")]
pub struct BadOzone(pub String);

/// An ozone address, trimmed and checked.
pub fn check_ozone(address: &str) -> Result<&str, BadOzone> {
    let a = address.trim();
    if a.is_empty() || a.len() > 256 || a.chars().any(char::is_control) {
        return Err(BadOzone(address.chars().take(64).collect()));
    }
    Ok(a)
}

/// `sealed || HMAC(SHA-512(id), sealed)`: a destination tag for the participant `id`.
pub fn addressed(mut sealed: Vec<u8>, id: &str) -> Vec<u8> {
    let tag = crypto::hmac(&crypto::sha512(&[id.as_bytes()]), &sealed);
    sealed.extend_from_slice(&tag);
    sealed
}

/// A stored message released to a retrieval identity: `data || HMAC(identity, data)`.
pub fn released(data: &[u8], identity: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + crypto::HASH_LEN);
    out.extend_from_slice(data);
    out.extend_from_slice(&crypto::hmac(identity, data));
    out
}

/// The minute a Smoke client tags ozone copies with.
pub fn minute(unix_ms: u64) -> u64 {
    unix_ms / 60_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_ids_are_checked_and_upper_cased() {
        assert_eq!(
            normalize_id(" 0123-4567-89ab-cdef-0123-4567-89ab-cdef").unwrap(),
            "0123-4567-89AB-CDEF-0123-4567-89AB-CDEF"
        );
        assert!(check_id("0123-4567-89AB-CDEF-0123-4567-89AB-CDEG").is_err());
        assert!(check_id("0123456789ABCDEF0123456789ABCDEF0123456").is_err());
    }
}
