//! The cluster's Smoke configuration as records: ozones, participants (with the keys captured
//! from EPKS) and the private-server switch. Every node holds all records; a change is flooded
//! and offered to every neighbor that comes up, so Bob may retrieve through another node than
//! the one Alice used. One rule decides between two records of the same key on every node:
//! the later `at_ms` wins, ties go to the larger encoding; removals stay as records (so a
//! removal is not undone by an older copy).

use serde::{Deserialize, Serialize};

use super::epks::Keys;

/// The largest encoded record accepted (keys included).
pub const MAX_RECORD_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// An ozone address (`HOST:PORT:TCP` for Smoke's "initialize ozone").
    Ozone,
    /// A participant, with its keys once captured.
    Participant(Option<Keys>),
    /// Private-server mode on or off.
    PrivateServer(bool),
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `ozone:<address>`, `participant:<SipHash ID>` or `private-server`.
    pub key: String,
    pub at_ms: u64,
    pub value: Value,
}

pub const PRIVATE_SERVER_KEY: &str = "private-server";

pub fn ozone_key(address: &str) -> String {
    format!("ozone:{}", address.trim())
}

pub fn participant_key(id: &str) -> String {
    format!("participant:{id}")
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("undecodable Smoke record: {0}")]
    Undecodable(String),
    #[error("Smoke record of {0} bytes (at most {MAX_RECORD_BYTES})")]
    TooLarge(usize),
    #[error("Smoke record with an unknown key {0:?}")]
    BadKey(String),
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Result<Record, RecordError> {
        if b.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(b.len()));
        }
        let (r, _): (Record, usize) = bincode::serde::decode_from_slice(
            b,
            bincode::config::standard().with_limit::<MAX_RECORD_BYTES>(),
        )
        .map_err(|e| RecordError::Undecodable(e.to_string()))?;
        let ok = match &r.value {
            Value::Ozone => r.key.starts_with("ozone:"),
            Value::Participant(_) => r.key.starts_with("participant:"),
            Value::PrivateServer(_) => r.key == PRIVATE_SERVER_KEY,
            Value::Removed => true,
        };
        if !ok {
            return Err(RecordError::BadKey(r.key.chars().take(80).collect()));
        }
        Ok(r)
    }
}

/// Whether `new` replaces `old` (same key): later wins, ties to the larger encoding.
pub fn newer(old: Option<&Record>, new: &Record) -> bool {
    match old {
        None => true,
        Some(o) => (new.at_ms, new.encode()) > (o.at_ms, o.encode()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_records_win_and_ties_converge() {
        let a = Record {
            key: ozone_key("a:1:TCP"),
            at_ms: 10,
            value: Value::Ozone,
        };
        let b = Record {
            key: ozone_key("a:1:TCP"),
            at_ms: 11,
            value: Value::Removed,
        };
        assert!(newer(Some(&a), &b));
        assert!(!newer(Some(&b), &a));
        assert!(!newer(Some(&a), &a));
        let c = Record {
            at_ms: 10,
            value: Value::Removed,
            ..a.clone()
        };
        assert_ne!(newer(Some(&a), &c), newer(Some(&c), &a));
        assert_eq!(Record::decode(&b.encode()).unwrap(), b);
        let bad = Record {
            key: "x".into(),
            at_ms: 1,
            value: Value::Ozone,
        };
        assert!(Record::decode(&bad.encode()).is_err());
    }
}
