//! Participant IDs: who a person is, as far as the mesh is concerned.
//!
//! A participant's fingerprint is blake3 of their public key (SubjectPublicKeyInfo DER). The
//! short ID people exchange (Smoke's "Sip-Hash ID") is 10 Crockford base32 characters: nine
//! carry the first 45 bits of the fingerprint, the tenth is a check character. The check is a
//! weighted sum over GF(32) with distinct non-zero weights, so every single mistyped character
//! and every swap of two neighbouring characters is detected before anything is looked up:
//! a typo is an error, never a stranger.
//!
//! The short ID is for convenience; the 64-hex fingerprint is what people verify, and
//! everything that accepts a short ID accepts the fingerprint too.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::crockford_base32;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a short ID, check character included.
pub const SHORT_LEN: usize = 10;

/// blake3 of a participant's public key (SPKI DER).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(#[serde(with = "crate::wire::bytes32")] pub [u8; 32]);

impl Fingerprint {
    pub fn of_public_key(spki_der: &[u8]) -> Self {
        Fingerprint(*blake3::hash(spki_der).as_bytes())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The short ID (nine data characters and one check character).
    pub fn short_id(&self) -> ShortId {
        let mut s = crockford_base32(&self.0[..6]);
        s.truncate(SHORT_LEN - 1);
        let mut digits = [0u8; SHORT_LEN];
        for (d, c) in digits.iter_mut().zip(s.bytes()) {
            *d = value(c).unwrap_or(0);
        }
        digits[SHORT_LEN - 1] = check_digit(&digits[..SHORT_LEN - 1]);
        ShortId(digits)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short_id())
    }
}

/// A short participant ID, check character verified (also when it arrives off the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; SHORT_LEN]")]
pub struct ShortId([u8; SHORT_LEN]);

impl TryFrom<[u8; SHORT_LEN]> for ShortId {
    type Error = String;
    fn try_from(digits: [u8; SHORT_LEN]) -> Result<Self, String> {
        if digits.iter().any(|d| *d >= 32)
            || check_digit(&digits[..SHORT_LEN - 1]) != digits[SHORT_LEN - 1]
        {
            return Err("invalid short participant ID".into());
        }
        Ok(ShortId(digits))
    }
}

impl ShortId {
    /// The 45 fingerprint bits as (first five bytes, top five bits of the sixth byte).
    pub fn prefix(&self) -> ([u8; 5], u8) {
        let mut acc: u64 = 0;
        for d in &self.0[..SHORT_LEN - 1] {
            acc = (acc << 5) | u64::from(*d);
        }
        // acc holds 45 bits: 40 for the five bytes, then 5.
        let top = acc >> 5;
        let mut bytes = [0u8; 5];
        bytes.copy_from_slice(&top.to_be_bytes()[3..]);
        (bytes, ((acc & 31) as u8) << 3)
    }

    /// Whether `fp` has this short ID.
    pub fn matches(&self, fp: &Fingerprint) -> bool {
        fp.short_id() == *self
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in self.0 {
            fmt::Write::write_char(f, ALPHABET[d as usize] as char)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortId({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{0:?} is not a participant ID: expected 10 characters like M8N22HT6QK, or a 64-character hex fingerprint")]
    Shape(String),
    #[error("{0:?} contains {1:?}, which is not used in participant IDs (letters and digits except I, L, O, U)")]
    Character(String, char),
    #[error("{0:?} has a typo (its check character does not match); ask for the ID again, or use the full fingerprint")]
    Check(String),
}

/// What a user typed to name a participant: a short ID or a full fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantRef {
    Short(ShortId),
    Full(Fingerprint),
}

impl ParticipantRef {
    pub fn matches(&self, fp: &Fingerprint) -> bool {
        match self {
            ParticipantRef::Short(s) => s.matches(fp),
            ParticipantRef::Full(f) => f == fp,
        }
    }
}

impl fmt::Display for ParticipantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParticipantRef::Short(s) => s.fmt(f),
            ParticipantRef::Full(fp) => fp.fmt(f),
        }
    }
}

impl FromStr for ParticipantRef {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut fp = [0u8; 32];
            hex::decode_to_slice(t, &mut fp).map_err(|_| IdError::Shape(s.into()))?;
            return Ok(ParticipantRef::Full(Fingerprint(fp)));
        }
        t.parse().map(ParticipantRef::Short)
    }
}

impl FromStr for ShortId {
    type Err = IdError;
    /// Case-insensitive; hyphens and spaces are ignored; I and L read as 1, O as 0.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut digits = [0u8; SHORT_LEN];
        let mut n = 0;
        for c in s.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            if n == SHORT_LEN {
                return Err(IdError::Shape(s.into()));
            }
            let v = u8::try_from(c)
                .ok()
                .and_then(value)
                .ok_or_else(|| IdError::Character(s.into(), c))?;
            digits[n] = v;
            n += 1;
        }
        if n != SHORT_LEN {
            return Err(IdError::Shape(s.into()));
        }
        if check_digit(&digits[..SHORT_LEN - 1]) != digits[SHORT_LEN - 1] {
            return Err(IdError::Check(s.into()));
        }
        Ok(ShortId(digits))
    }
}

fn value(c: u8) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        b'I' | b'L' => b'1',
        b'O' => b'0',
        c => c,
    };
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Multiplication in GF(32) with the primitive polynomial x^5 + x^2 + 1.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0x20 != 0 {
            a ^= 0x25;
        }
    }
    r
}

/// The check digit c such that sum(alpha^(i+1) * d_i) + c = 0 over GF(32). Every position,
/// the check digit's included, has a distinct non-zero weight (alpha has order 31).
fn check_digit(data: &[u8]) -> u8 {
    let mut weight = 1u8;
    let mut sum = 0u8;
    for &d in data {
        weight = gf_mul(weight, 2);
        sum ^= gf_mul(weight, d);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(seed: u8) -> Fingerprint {
        Fingerprint(*blake3::hash(&[seed]).as_bytes())
    }

    #[test]
    fn short_id_roundtrips_and_matches_its_fingerprint() {
        for seed in 0..=255u8 {
            let f = fp(seed);
            let id = f.short_id();
            let text = id.to_string();
            assert_eq!(text.len(), SHORT_LEN);
            let back: ShortId = text.parse().unwrap();
            assert_eq!(back, id);
            assert!(back.matches(&f));
            let lower: ShortId = text.to_lowercase().parse().unwrap();
            assert_eq!(lower, id);
            let (bytes, top) = id.prefix();
            assert_eq!(bytes, f.0[..5]);
            assert_eq!(top, f.0[5] & 0xf8);
        }
    }

    #[test]
    fn every_single_typo_and_adjacent_swap_is_detected() {
        for seed in 0..64u8 {
            let text: Vec<u8> = fp(seed).short_id().to_string().into_bytes();
            for i in 0..SHORT_LEN {
                for &c in ALPHABET.iter() {
                    if c == text[i] {
                        continue;
                    }
                    let mut t = text.clone();
                    t[i] = c;
                    let s = String::from_utf8(t).unwrap();
                    assert!(
                        matches!(s.parse::<ShortId>(), Err(IdError::Check(_))),
                        "{s} accepted"
                    );
                }
                if i + 1 < SHORT_LEN && text[i] != text[i + 1] {
                    let mut t = text.clone();
                    t.swap(i, i + 1);
                    let s = String::from_utf8(t).unwrap();
                    assert!(s.parse::<ShortId>().is_err(), "swap {s} accepted");
                }
            }
        }
    }

    #[test]
    fn decoding_checks_digits_and_check_character() {
        let id = fp(3).short_id();
        let bytes = crate::wire::record_to_vec(&id).unwrap();
        let back: ShortId = crate::wire::decode_body(&bytes).unwrap();
        assert_eq!(back, id);
        let mut bad = id.0;
        bad[0] = 200;
        let bytes = crate::wire::record_to_vec(&bad).unwrap();
        assert!(crate::wire::decode_body::<ShortId>(&bytes).is_err());
        bad = id.0;
        bad[9] ^= 1;
        let bytes = crate::wire::record_to_vec(&bad).unwrap();
        assert!(crate::wire::decode_body::<ShortId>(&bytes).is_err());
    }

    #[test]
    fn bad_shapes_are_explained() {
        assert!(matches!("ABC".parse::<ShortId>(), Err(IdError::Shape(_))));
        assert!(matches!(
            "M8N22HT6Q!".parse::<ShortId>(),
            Err(IdError::Character(_, '!'))
        ));
        let f = fp(1);
        let full: ParticipantRef = f.hex().parse().unwrap();
        assert_eq!(full, ParticipantRef::Full(f));
        assert!(full.matches(&f));
        let with_dash = {
            let s = f.short_id().to_string();
            format!("{}-{}", &s[..5], &s[5..])
        };
        assert_eq!(
            with_dash.parse::<ParticipantRef>().unwrap(),
            ParticipantRef::Short(f.short_id())
        );
    }
}
