//! Node identifiers: blake3 of a node certificate's SubjectPublicKeyInfo.
//!
//! Shown as a short form (first 10 characters of its Crockford base32 encoding) and as the
//! full fingerprint (64 lowercase hex characters). Only the full fingerprint is accepted for
//! pinning. Certificates and keys themselves live with the transport (`echomesh-client`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::echo::EchoMode;

/// Crockford base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Encode bytes as Crockford base32 (no padding, upper case).
pub fn crockford_base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(CROCKFORD[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(CROCKFORD[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A node's identity: blake3 of its certificate's SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(#[serde(with = "crate::wire::bytes32")] pub [u8; 32]);

impl NodeId {
    /// Short display form: first 10 Crockford base32 characters.
    pub fn short(&self) -> String {
        let mut s = crockford_base32(&self.0[..7]);
        s.truncate(10);
        s
    }

    /// Full fingerprint: 64 lowercase hex characters.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = FingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(FingerprintError(format!(
                "expected a full fingerprint of 64 hex characters, got {} characters; \
                 `echomeshctl status` on that node prints it",
                s.len()
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| FingerprintError(format!("fingerprint is not hex ({e})")))?;
        Ok(NodeId(out))
    }
}

/// A string that is not a full node fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fingerprint: {0}")]
pub struct FingerprintError(pub String);

/// A neighbor given as `HOST:PORT#FINGERPRINT[@half]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborSpec {
    pub addr: String,
    pub id: NodeId,
    pub mode: EchoMode,
}

impl FromStr for NeighborSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, rest) = s.split_once('#').ok_or_else(|| {
            format!(
                "{s:?} is not HOST:PORT#FINGERPRINT (the fingerprint pins the neighbor's identity)"
            )
        })?;
        let (fp, mode) = match rest.split_once('@') {
            Some((fp, m)) => (fp, m.parse::<EchoMode>()?),
            None => (rest, EchoMode::Full),
        };
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(format!("{addr:?} is not HOST:PORT")),
        }
        let id = fp.parse::<NodeId>().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(NeighborSpec {
            addr: addr.to_string(),
            id,
            mode,
        })
    }
}

impl std::fmt::Display for NeighborSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.addr, self.id.fingerprint())?;
        if self.mode == EchoMode::Half {
            f.write_str("@half")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crockford_known_vectors() {
        assert_eq!(crockford_base32(&[]), "");
        assert_eq!(crockford_base32(&[0]), "00");
        assert_eq!(crockford_base32(&[0xff]), "ZW");
        assert_eq!(crockford_base32(b"foobar"), "CSQPYRK1E8");
    }

    #[test]
    fn fingerprint_parse_errors_are_clear() {
        assert!("abc"
            .parse::<NodeId>()
            .unwrap_err()
            .to_string()
            .contains("64 hex"));
        let bad = "z".repeat(64);
        assert!(bad
            .parse::<NodeId>()
            .unwrap_err()
            .to_string()
            .contains("not hex"));
    }

    #[test]
    fn fingerprint_round_trips() {
        let id = NodeId([0xab; 32]);
        assert_eq!(id.fingerprint().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.short().len(), 10);
    }
}
