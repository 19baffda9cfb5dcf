//! Invite tokens: one-time, expiring secrets that let a new node pin itself to this one.
//!
//! A token carries the inviter's address and fingerprint (so the joiner can pin it) and a
//! random secret (so the inviter can pin the joiner). The inviter keeps only blake3 of each
//! secret, in memory: restarting the inviter invalidates outstanding tokens.

use std::collections::{HashMap, VecDeque};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::limits::INVITES_USED_MEMORY as USED_MEMORY;
use crate::wire::{self, JoinRefusal};

const PREFIX: &str = "EM1-";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteToken {
    pub addr: String,
    pub id: NodeId,
    pub secret: [u8; 32],
    pub expires_unix: u64,
    pub cluster: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("not an echomesh invite token (it should start with {PREFIX}); copy the whole line `echomeshctl invite` printed")]
    Prefix,
    #[error("invite token is damaged ({0}); copy it again, in one piece")]
    Damaged(String),
    #[error("invite token expired {0} s ago; ask for a new one")]
    Expired(u64),
}

impl InviteToken {
    pub fn encode(&self) -> String {
        let bytes = wire::record_to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    pub fn decode(s: &str, now_unix: u64) -> Result<InviteToken, TokenError> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        if body.len() > 2048 {
            return Err(TokenError::Damaged("too long".into()));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Damaged(e.to_string()))?;
        let t: InviteToken =
            wire::decode_body(&bytes).map_err(|e| TokenError::Damaged(e.to_string()))?;
        if t.expires_unix <= now_unix {
            return Err(TokenError::Expired(now_unix - t.expires_unix));
        }
        Ok(t)
    }
}

/// Outstanding and recently used invites (hashes of secrets only), both bounded.
pub struct InviteBook {
    pending: HashMap<[u8; 32], u64>,
    used: HashMap<[u8; 32], u64>,
    used_order: VecDeque<[u8; 32]>,
    max_outstanding: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} invites are outstanding (invite.max_outstanding); wait for some to be used or expire")]
pub struct TooManyInvites(usize);

impl InviteBook {
    pub fn new(max_outstanding: usize) -> Self {
        InviteBook {
            pending: HashMap::new(),
            used: HashMap::new(),
            used_order: VecDeque::new(),
            max_outstanding: max_outstanding.max(1),
        }
    }

    fn purge(&mut self, now: u64) {
        self.pending.retain(|_, exp| *exp > now);
    }

    /// Make a new secret valid until `expires_unix`.
    pub fn issue(&mut self, now: u64, expires_unix: u64) -> Result<[u8; 32], TooManyInvites> {
        self.purge(now);
        if self.pending.len() >= self.max_outstanding {
            return Err(TooManyInvites(self.max_outstanding));
        }
        let secret: [u8; 32] = rand::random();
        self.pending
            .insert(*blake3::hash(&secret).as_bytes(), expires_unix);
        Ok(secret)
    }

    /// Use a secret: succeeds once, before expiry.
    pub fn consume(&mut self, secret: &[u8; 32], now: u64) -> Result<(), JoinRefusal> {
        let h = *blake3::hash(secret).as_bytes();
        if self.used.contains_key(&h) {
            return Err(JoinRefusal::AlreadyUsed);
        }
        match self.pending.remove(&h) {
            None => Err(JoinRefusal::UnknownToken),
            Some(exp) if exp <= now => Err(JoinRefusal::Expired),
            Some(_) => {
                self.used.insert(h, now);
                self.used_order.push_back(h);
                while self.used_order.len() > USED_MEMORY {
                    if let Some(old) = self.used_order.pop_front() {
                        self.used.remove(&old);
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_errors() {
        let t = InviteToken {
            addr: "127.0.0.1:4710".into(),
            id: NodeId([3; 32]),
            secret: [9; 32],
            expires_unix: 1000,
            cluster: "town".into(),
        };
        let s = t.encode();
        assert!(s.starts_with("EM1-"));
        assert_eq!(InviteToken::decode(&s, 999).unwrap(), t);
        assert_eq!(
            InviteToken::decode(&s, 1000).unwrap_err(),
            TokenError::Expired(0)
        );
        assert_eq!(
            InviteToken::decode("hello", 0).unwrap_err(),
            TokenError::Prefix
        );
        assert!(matches!(
            InviteToken::decode("EM1-!!!", 0),
            Err(TokenError::Damaged(_))
        ));
        assert!(matches!(
            InviteToken::decode(&s[..s.len() - 5], 0),
            Err(TokenError::Damaged(_))
        ));
    }

    #[test]
    fn secrets_work_once_and_expire() {
        let mut b = InviteBook::new(2);
        let s1 = b.issue(0, 100).unwrap();
        let s2 = b.issue(0, 10).unwrap();
        assert!(b.issue(0, 100).is_err(), "bounded");
        assert_eq!(b.consume(&s1, 50), Ok(()));
        assert_eq!(b.consume(&s1, 50), Err(JoinRefusal::AlreadyUsed));
        assert_eq!(b.consume(&s2, 50), Err(JoinRefusal::Expired));
        assert_eq!(b.consume(&[0; 32], 50), Err(JoinRefusal::UnknownToken));
        // expired entries are purged, making room
        b.issue(50, 100).unwrap();
    }
}
