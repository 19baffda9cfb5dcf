//! The identity filter ("Cryptographic Discovery"). A client registers identities with `0095a`
//! frames; once it has one, it receives only frames addressed to one of them: the frame's
//! content ends in (or, in Spot-On's three-part form, has as third part) a 64-byte tag equal
//! to HMAC-SHA512(key = identity, data = the bytes before it). A client with no identity
//! receives everything, as with Spot-On-Lite and SmokeStack.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha512;

use super::frame::{decode, trim};

const TAG_LEN: usize = 64;

/// A data frame's content, decoded once for matching against many clients' identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterInput {
    data: Vec<u8>,
    tag: Vec<u8>,
}

impl FilterInput {
    /// `None` when the content has no destination tag (no identity can match it).
    pub fn from_content(content: &[u8]) -> Option<Self> {
        let content = trim(content);
        let parts: Vec<&[u8]> = content
            .split(|&b| b == b'\n')
            .map(trim)
            .filter(|p| !p.is_empty())
            .collect();
        match parts.len() {
            0 | 2 => None,
            1 => {
                let mut data = decode(parts[0])?;
                if data.len() < TAG_LEN {
                    return None;
                }
                let tag = data.split_off(data.len() - TAG_LEN);
                Some(FilterInput { data, tag })
            }
            _ => {
                let mut data = decode(parts[0])?;
                data.extend_from_slice(&decode(parts[1])?);
                Some(FilterInput {
                    data,
                    tag: decode(parts[2])?,
                })
            }
        }
    }

    /// Whether this frame is addressed to `identity` (constant-time tag comparison).
    pub fn matches(&self, identity: &[u8]) -> bool {
        let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(identity) else {
            return false;
        };
        mac.update(&self.data);
        mac.verify_slice(&self.tag).is_ok()
    }

    /// The destination tag for `data` and `identity` (what a sender appends).
    pub fn tag_for(identity: &[u8], data: &[u8]) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        if let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(identity) {
            mac.update(data);
            out.copy_from_slice(&mac.finalize().into_bytes());
        }
        out
    }
}

/// What registering an identity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    New,
    Renewed,
    /// The connection holds its maximum already; the identity was not added (counted).
    Full,
}

/// One connection's identities, each alive for `lifetime` after it was last announced.
#[derive(Debug)]
pub struct Identities {
    map: HashMap<Vec<u8>, Instant>,
    lifetime: Duration,
    max: usize,
}

impl Identities {
    pub fn new(lifetime: Duration, max: usize) -> Self {
        Identities {
            map: HashMap::new(),
            lifetime,
            max,
        }
    }

    pub fn register(&mut self, identity: Vec<u8>, now: Instant) -> Registered {
        let until = now + self.lifetime;
        if let Some(t) = self.map.get_mut(&identity) {
            *t = until;
            return Registered::Renewed;
        }
        self.expire(now);
        if self.map.len() >= self.max {
            return Registered::Full;
        }
        self.map.insert(identity, until);
        Registered::New
    }

    /// Forget expired identities; returns how many were forgotten.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map.retain(|_, until| *until > now);
        before - self.map.len()
    }

    /// Live identities (after `expire`).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether a frame with this decoded content goes to this connection: everything when it
    /// has no identity, else only what one of them matches.
    pub fn admits(&self, input: Option<&FilterInput>, now: Instant) -> bool {
        let mut live = self
            .map
            .iter()
            .filter(|(_, until)| **until > now)
            .peekable();
        if live.peek().is_none() {
            return true;
        }
        match input {
            Some(i) => live.any(|(id, _)| i.matches(id)),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn matches_single_and_three_part_forms() {
        let id = [3u8; 64];
        let data = b"ciphertext and inner mac".to_vec();
        let tag = FilterInput::tag_for(&id, &data);
        let mut one = data.clone();
        one.extend_from_slice(&tag);
        let f = FilterInput::from_content(b64(&one).as_bytes()).unwrap();
        assert!(f.matches(&id));
        assert!(!f.matches(&[4u8; 64]));
        let three = format!("{}\n{}\n{}", b64(&data[..5]), b64(&data[5..]), b64(&tag));
        assert!(FilterInput::from_content(three.as_bytes())
            .unwrap()
            .matches(&id));
        assert_eq!(FilterInput::from_content(b"aGk="), None);
        assert_eq!(FilterInput::from_content(b"aGk=\naGk="), None);
    }

    #[test]
    fn identities_filter_expire_and_are_bounded() {
        let t = Instant::now();
        let id = vec![3u8; 64];
        let data = vec![1u8; 100];
        let mut c = data.clone();
        c.extend_from_slice(&FilterInput::tag_for(&id, &data));
        let mine = FilterInput::from_content(b64(&c).as_bytes());
        let other = FilterInput::from_content(b64(&[9u8; 200]).as_bytes());
        let mut ids = Identities::new(Duration::from_secs(30), 2);
        assert!(ids.admits(other.as_ref(), t), "no identity: everything");
        assert_eq!(ids.register(id.clone(), t), Registered::New);
        assert!(ids.admits(mine.as_ref(), t));
        assert!(!ids.admits(other.as_ref(), t));
        assert!(!ids.admits(None, t));
        assert_eq!(ids.register(id.clone(), t), Registered::Renewed);
        assert_eq!(ids.register(vec![5u8; 64], t), Registered::New);
        assert_eq!(ids.register(vec![6u8; 64], t), Registered::Full);
        let later = t + Duration::from_secs(31);
        assert!(
            ids.admits(other.as_ref(), later),
            "all expired: everything again"
        );
        assert_eq!(ids.expire(later), 2);
        assert!(ids.is_empty());
    }
}
