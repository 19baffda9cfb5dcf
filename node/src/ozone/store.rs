//! Durable ozone storage in RocksDB. Blocking: call from the blocking pool.
//!
//! Layout (one key space per column family, prefixed so indexes never collide):
//! - `messages`:   `m ‖ A ‖ seq ‖ id` → message;  `i ‖ A ‖ id` → seq;  `e ‖ expires ‖ A ‖ seq ‖ id`
//!   → (retention index)
//! - `tombstones`: `t ‖ A ‖ id` → expiry;  `e ‖ expires ‖ A ‖ id` → (expiry index)
//! - `node_state`: `ozs/ ‖ A` → per-ozone counts (messages, bytes)
//!
//! `seq` orders an ozone's messages (oldest first); it is assigned once, by the node that
//! accepted the deposit, and travels with the message to the other replicas, so every replica
//! returns the same order. Acknowledging deletes the message and leaves a tombstone, so that a
//! replica that missed the acknowledgement cannot bring the message back. Every change is one
//! synced write batch: an acknowledged deposit or acknowledgement survives a crash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::OzoneAddr;
use crate::store::{synced, Store, StoreError, CF_MESSAGES, CF_NODE_STATE, CF_TOMBSTONES};
use crate::wire;
pub use echomesh_proto::ozone::{OzoneDigest, StoredMessage};

/// Storage limits for ozones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OzoneLimits {
    pub max_messages_per_ozone: u64,
    pub max_bytes_per_ozone: u64,
    pub max_message_bytes: u64,
    /// Messages older than this are evicted (counted); tombstones live as long.
    pub retention_ms: u64,
    /// All ozones together; deposits beyond it are refused.
    pub max_total_bytes: u64,
}

impl Default for OzoneLimits {
    fn default() -> Self {
        OzoneLimits {
            max_messages_per_ozone: 10_000,
            max_bytes_per_ozone: 64 << 20,
            max_message_bytes: 256 << 10,
            retention_ms: 14 * 24 * 3600 * 1000,
            max_total_bytes: 1 << 30,
        }
    }
}

/// The value of a message record on disk (its key holds the address, sequence and ID).
#[derive(Serialize, Deserialize)]
pub struct MessageValue {
    pub expires_ms: u64,
    pub payload: Bytes,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OzoneStats {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositOutcome {
    Stored,
    /// Already stored: nothing changed (deposits are idempotent).
    Duplicate,
    /// Already acknowledged by the owner: not stored again.
    Acknowledged,
}

#[derive(Debug, thiserror::Error)]
pub enum OzoneError {
    #[error("ozone holds {have} messages, its quota is {max}; the owner must fetch and acknowledge first")]
    QuotaMessages { have: u64, max: u64 },
    #[error(
        "ozone holds {have} bytes, its quota is {max}; the owner must fetch and acknowledge first"
    )]
    QuotaBytes { have: u64, max: u64 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("the node's ozone storage budget is full ({max} bytes); try another node, operators: raise ozone.max_total_bytes or add disk")]
    DiskBudget { max: u64 },
    #[error("message id does not match its content")]
    BadId,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OzoneError {
    /// `reason` label of `echomesh_ozone_deposits_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            OzoneError::QuotaMessages { .. } | OzoneError::QuotaBytes { .. } => "quota",
            OzoneError::TooLarge { .. } => "too_large",
            OzoneError::DiskBudget { .. } => "disk_budget",
            OzoneError::BadId => "bad_id",
            OzoneError::Store(_) => "storage",
        }
    }
}

/// The deposits of one group commit while they are checked: the batch, the counts of the
/// ozones they change, and which messages it already holds.
#[derive(Default)]
struct Group {
    batch: WriteBatch,
    stats: std::collections::HashMap<OzoneAddr, OzoneStats>,
    staged: std::collections::HashSet<(OzoneAddr, [u8; 32])>,
    added: u64,
}

/// What a retention sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub messages: u64,
    pub bytes: u64,
    pub tombstones: u64,
}

pub struct OzoneStore {
    store: Store,
    limits: OzoneLimits,
    total_bytes: AtomicU64,
    /// Serialises read-modify-write of per-ozone counts; also the sequence clock.
    write: Mutex<u64>,
    /// Set while a periodic repair round runs (one at a time).
    pub repair_busy: std::sync::atomic::AtomicBool,
}

const STATS_PREFIX: &[u8] = b"ozs/";

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Every ozone's counts, from the `node_state` rows.
fn all_stats(store: &Store) -> Result<Vec<(OzoneAddr, OzoneStats)>, StoreError> {
    let mut out = Vec::new();
    let iter = store.db().iterator_cf(
        store.cf(CF_NODE_STATE)?,
        rocksdb::IteratorMode::From(STATS_PREFIX, rocksdb::Direction::Forward),
    );
    for item in iter {
        let (k, v) = item?;
        if !k.starts_with(STATS_PREFIX) {
            break;
        }
        let addr =
            <[u8; 32]>::try_from(&k[STATS_PREFIX.len()..]).map_err(|_| corrupt("stats key"))?;
        let st: OzoneStats = wire::decode_body(&v).map_err(|_| corrupt("stats"))?;
        out.push((OzoneAddr(addr), st));
    }
    Ok(out)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("ozone {what}"))
}

impl OzoneStore {
    pub fn open_blocking(store: Store, limits: OzoneLimits) -> Result<Self, StoreError> {
        let total = all_stats(&store)?.iter().map(|(_, st)| st.bytes).sum();
        Ok(OzoneStore {
            store,
            limits,
            total_bytes: AtomicU64::new(total),
            write: Mutex::new(0),
            repair_busy: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn limits(&self) -> &OzoneLimits {
        &self.limits
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new sequence number: strictly increasing on this node, close to wall-clock
    /// microseconds so that deposits accepted by different nodes interleave sensibly.
    pub fn next_seq(&self, now_ms: u64) -> u64 {
        let mut last = self.lock();
        let next = (now_ms.saturating_mul(1000)).max(*last + 1);
        *last = next;
        next
    }

    pub fn stats_blocking(&self, addr: &OzoneAddr) -> Result<OzoneStats, StoreError> {
        let db = self.store.db();
        match db.get_cf(self.store.cf(CF_NODE_STATE)?, key(&[STATS_PREFIX, &addr.0]))? {
            Some(v) => wire::decode_body(&v).map_err(|_| corrupt("stats")),
            None => Ok(OzoneStats::default()),
        }
    }

    fn put_stats(
        &self,
        batch: &mut WriteBatch,
        addr: &OzoneAddr,
        s: OzoneStats,
    ) -> Result<(), StoreError> {
        let cf = self.store.cf(CF_NODE_STATE)?;
        let k = key(&[STATS_PREFIX, &addr.0]);
        if s.messages == 0 {
            batch.delete_cf(cf, k);
        } else {
            let v = wire::record_to_vec(&s).map_err(|_| corrupt("stats"))?;
            batch.put_cf(cf, k, v);
        }
        Ok(())
    }

    fn is_tombstoned(&self, addr: &OzoneAddr, id: &[u8; 32]) -> Result<bool, StoreError> {
        let db = self.store.db();
        Ok(db
            .get_pinned_cf(self.store.cf(CF_TOMBSTONES)?, key(&[b"t", &addr.0, id]))?
            .is_some())
    }

    /// Store a message durably (synced). Idempotent; refuses what quotas forbid.
    pub fn deposit_blocking(&self, m: &StoredMessage) -> Result<DepositOutcome, OzoneError> {
        self.deposit_group_blocking(&[m]).pop().unwrap_or_else(|| {
            Err(OzoneError::Store(StoreError::Task(
                "no outcome for a deposit".into(),
            )))
        })
    }

    /// Store messages durably in one synced write batch (group commit): one outcome per
    /// message, in order, each as `deposit_blocking` would give it had the messages come one
    /// after the other. A failed write fails every message the batch would have stored.
    pub fn deposit_group_blocking(
        &self,
        msgs: &[&StoredMessage],
    ) -> Vec<Result<DepositOutcome, OzoneError>> {
        let _guard = self.lock();
        let mut group = Group::default();
        let mut out: Vec<Result<DepositOutcome, OzoneError>> =
            msgs.iter().map(|m| self.stage(m, &mut group)).collect();
        let written = self.write_group(group);
        match written {
            Ok(added) => {
                self.total_bytes.fetch_add(added, Ordering::Relaxed);
            }
            Err(e) => {
                let msg = e.to_string();
                for o in out.iter_mut() {
                    if matches!(o, Ok(DepositOutcome::Stored)) {
                        *o = Err(OzoneError::Store(StoreError::Task(format!(
                            "write failed: {msg}"
                        ))));
                    }
                }
            }
        }
        out
    }

    /// Check one message of a group and add its records to the group's batch.
    fn stage(&self, m: &StoredMessage, g: &mut Group) -> Result<DepositOutcome, OzoneError> {
        let len = m.payload.len() as u64;
        if len > self.limits.max_message_bytes {
            return Err(OzoneError::TooLarge {
                len,
                max: self.limits.max_message_bytes,
            });
        }
        if *blake3::hash(&m.payload).as_bytes() != m.id {
            return Err(OzoneError::BadId);
        }
        let db = self.store.db();
        let msgs = self.store.cf(CF_MESSAGES)?;
        if self.is_tombstoned(&m.addr, &m.id)? {
            return Ok(DepositOutcome::Acknowledged);
        }
        if g.staged.contains(&(m.addr, m.id))
            || db
                .get_pinned_cf(msgs, key(&[b"i", &m.addr.0, &m.id]))
                .map_err(StoreError::from)?
                .is_some()
        {
            return Ok(DepositOutcome::Duplicate);
        }
        let mut stats = match g.stats.get(&m.addr) {
            Some(s) => *s,
            None => self.stats_blocking(&m.addr)?,
        };
        if stats.messages + 1 > self.limits.max_messages_per_ozone {
            return Err(OzoneError::QuotaMessages {
                have: stats.messages,
                max: self.limits.max_messages_per_ozone,
            });
        }
        if stats.bytes + len > self.limits.max_bytes_per_ozone {
            return Err(OzoneError::QuotaBytes {
                have: stats.bytes,
                max: self.limits.max_bytes_per_ozone,
            });
        }
        if self.total_bytes() + g.added + len > self.limits.max_total_bytes {
            return Err(OzoneError::DiskBudget {
                max: self.limits.max_total_bytes,
            });
        }
        let seq = m.seq.to_be_bytes();
        let exp = m.expires_ms.to_be_bytes();
        let value = wire::record_to_vec(&MessageValue {
            expires_ms: m.expires_ms,
            payload: m.payload.clone(),
        })
        .map_err(|_| corrupt("message"))?;
        let b = &mut g.batch;
        b.put_cf(msgs, key(&[b"m", &m.addr.0, &seq, &m.id]), value);
        b.put_cf(msgs, key(&[b"i", &m.addr.0, &m.id]), seq);
        b.put_cf(msgs, key(&[b"e", &exp, &m.addr.0, &seq, &m.id]), []);
        stats.messages += 1;
        stats.bytes += len;
        g.stats.insert(m.addr, stats);
        g.staged.insert((m.addr, m.id));
        g.added += len;
        Ok(DepositOutcome::Stored)
    }

    /// Write a group's batch, with the WAL synced; returns the payload bytes it added.
    fn write_group(&self, mut g: Group) -> Result<u64, StoreError> {
        if g.staged.is_empty() {
            return Ok(0);
        }
        for (addr, s) in &g.stats {
            self.put_stats(&mut g.batch, addr, *s)?;
        }
        self.store.db().write_opt(g.batch, &synced())?;
        Ok(g.added)
    }

    /// Up to `limit` messages (and about `max_bytes`, at least one) of an ozone, oldest first,
    /// after the position `(seq, id)` when given.
    pub fn fetch_blocking(
        &self,
        addr: &OzoneAddr,
        after: Option<(u64, [u8; 32])>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let db = self.store.db();
        let prefix = key(&[b"m", &addr.0]);
        let start = match after {
            Some((seq, id)) => key(&[&prefix, &seq.to_be_bytes(), &id]),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        let iter = db.iterator_cf(
            self.store.cf(CF_MESSAGES)?,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix)
                || out.len() >= limit
                || (bytes >= max_bytes && !out.is_empty())
            {
                break;
            }
            if after.is_some() && *k == *start {
                continue;
            }
            let rest = &k[prefix.len()..];
            if rest.len() != 40 {
                return Err(corrupt("message key"));
            }
            let seq = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt("seq"))?);
            let id: [u8; 32] = rest[8..].try_into().map_err(|_| corrupt("id"))?;
            let val: MessageValue = wire::decode_body(&v).map_err(|_| corrupt("message"))?;
            bytes += val.payload.len();
            out.push(StoredMessage {
                addr: *addr,
                seq,
                id,
                expires_ms: val.expires_ms,
                payload: val.payload,
            });
        }
        Ok(out)
    }

    /// Acknowledge (delete) messages; each leaves a tombstone, also for messages this node
    /// does not hold (a replica may receive them later). Returns how many were deleted here.
    pub fn ack_blocking(
        &self,
        addr: &OzoneAddr,
        ids: &[[u8; 32]],
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let _guard = self.lock();
        let db = self.store.db();
        let msgs = self.store.cf(CF_MESSAGES)?;
        let tombs = self.store.cf(CF_TOMBSTONES)?;
        let mut stats = self.stats_blocking(addr)?;
        let mut batch = WriteBatch::default();
        let mut deleted = 0u64;
        let mut freed = 0u64;
        let tomb_exp = now_ms.saturating_add(self.limits.retention_ms);
        for id in ids {
            let ikey = key(&[b"i", &addr.0, id]);
            if let Some(seq) = db.get_cf(msgs, &ikey)? {
                let mkey = key(&[b"m", &addr.0, &seq, id]);
                if let Some(v) = db.get_cf(msgs, &mkey)? {
                    let val: MessageValue =
                        wire::decode_body(&v).map_err(|_| corrupt("message"))?;
                    batch.delete_cf(msgs, &mkey);
                    batch.delete_cf(
                        msgs,
                        key(&[b"e", &val.expires_ms.to_be_bytes(), &addr.0, &seq, id]),
                    );
                    stats.messages = stats.messages.saturating_sub(1);
                    stats.bytes = stats.bytes.saturating_sub(val.payload.len() as u64);
                    freed += val.payload.len() as u64;
                    deleted += 1;
                }
                batch.delete_cf(msgs, &ikey);
            }
            if !self.is_tombstoned(addr, id)? {
                batch.put_cf(tombs, key(&[b"t", &addr.0, id]), tomb_exp.to_be_bytes());
                batch.put_cf(
                    tombs,
                    key(&[b"e", &tomb_exp.to_be_bytes(), &addr.0, id]),
                    [],
                );
            }
        }
        self.put_stats(&mut batch, addr, stats)?;
        db.write_opt(batch, &synced())?;
        self.total_bytes
            .fetch_sub(freed.min(self.total_bytes()), Ordering::Relaxed);
        Ok(deleted)
    }

    /// (ozones holding messages, messages) on this node.
    pub fn hosted_blocking(&self) -> Result<(u64, u64), StoreError> {
        let all = all_stats(&self.store)?;
        Ok((
            all.len() as u64,
            all.iter().map(|(_, st)| st.messages).sum(),
        ))
    }

    /// A digest of what this node holds of an ozone: counts of messages and tombstones and
    /// the XOR of their IDs. Equal digests on two replicas mean nothing to repair.
    pub fn digest_blocking(&self, addr: &OzoneAddr) -> Result<OzoneDigest, StoreError> {
        let db = self.store.db();
        let mut d = OzoneDigest::default();
        for (cf, tag) in [(CF_MESSAGES, b"i"), (CF_TOMBSTONES, b"t")] {
            let prefix = key(&[tag, &addr.0]);
            let iter = db.iterator_cf(
                self.store.cf(cf)?,
                rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
            );
            for item in iter {
                let (k, _) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let id = &k[prefix.len()..];
                let target = if tag == b"i" {
                    d.messages += 1;
                    &mut d.message_xor
                } else {
                    d.tombstones += 1;
                    &mut d.tombstone_xor
                };
                for (t, b) in target.iter_mut().zip(id) {
                    *t ^= b;
                }
            }
        }
        Ok(d)
    }

    /// Every ozone this node holds messages or tombstones of.
    pub fn ozones_blocking(&self) -> Result<Vec<OzoneAddr>, StoreError> {
        let db = self.store.db();
        let mut out: std::collections::BTreeSet<OzoneAddr> = all_stats(&self.store)?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        let tombs = db.iterator_cf(
            self.store.cf(CF_TOMBSTONES)?,
            rocksdb::IteratorMode::From(b"t", rocksdb::Direction::Forward),
        );
        for item in tombs {
            let (k, _) = item?;
            if k.first() != Some(&b't') {
                break;
            }
            if let Ok(a) = <[u8; 32]>::try_from(&k[1..33.min(k.len())]) {
                out.insert(OzoneAddr(a));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The acknowledged (tombstoned) message IDs of an ozone.
    pub fn tombstones_blocking(&self, addr: &OzoneAddr) -> Result<Vec<[u8; 32]>, StoreError> {
        let db = self.store.db();
        let prefix = key(&[b"t", &addr.0]);
        let mut out = Vec::new();
        let iter = db.iterator_cf(
            self.store.cf(CF_TOMBSTONES)?,
            rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Ok(id) = <[u8; 32]>::try_from(&k[prefix.len()..]) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Evict messages and tombstones whose retention ended (at most `limit` of each).
    pub fn sweep_expired_blocking(&self, now_ms: u64, limit: usize) -> Result<Swept, StoreError> {
        let _guard = self.lock();
        let db = self.store.db();
        let msgs = self.store.cf(CF_MESSAGES)?;
        let tombs = self.store.cf(CF_TOMBSTONES)?;
        let mut swept = Swept::default();
        let mut batch = WriteBatch::default();
        let mut stats_cache: std::collections::HashMap<OzoneAddr, OzoneStats> = Default::default();
        for item in db.iterator_cf(
            msgs,
            rocksdb::IteratorMode::From(b"e", rocksdb::Direction::Forward),
        ) {
            let (k, _) = item?;
            if k.first() != Some(&b'e') || swept.messages as usize >= limit {
                break;
            }
            if k.len() != 1 + 8 + 32 + 8 + 32 {
                return Err(corrupt("expiry key"));
            }
            let exp = u64::from_be_bytes(k[1..9].try_into().map_err(|_| corrupt("expiry"))?);
            if exp > now_ms {
                break;
            }
            let addr = OzoneAddr(k[9..41].try_into().map_err(|_| corrupt("addr"))?);
            let (seq, id) = (&k[41..49], &k[49..81]);
            let mkey = key(&[b"m", &addr.0, seq, id]);
            if let Some(v) = db.get_cf(msgs, &mkey)? {
                let val: MessageValue = wire::decode_body(&v).map_err(|_| corrupt("message"))?;
                let s = match stats_cache.get(&addr) {
                    Some(s) => *s,
                    None => self.stats_blocking(&addr)?,
                };
                let len = val.payload.len() as u64;
                stats_cache.insert(
                    addr,
                    OzoneStats {
                        messages: s.messages.saturating_sub(1),
                        bytes: s.bytes.saturating_sub(len),
                    },
                );
                swept.bytes += len;
            }
            batch.delete_cf(msgs, &mkey);
            batch.delete_cf(msgs, key(&[b"i", &addr.0, id]));
            batch.delete_cf(msgs, &k);
            swept.messages += 1;
        }
        for item in db.iterator_cf(
            tombs,
            rocksdb::IteratorMode::From(b"e", rocksdb::Direction::Forward),
        ) {
            let (k, _) = item?;
            if k.first() != Some(&b'e') || swept.tombstones as usize >= limit {
                break;
            }
            if k.len() != 1 + 8 + 32 + 32 {
                return Err(corrupt("tombstone expiry key"));
            }
            let exp = u64::from_be_bytes(k[1..9].try_into().map_err(|_| corrupt("expiry"))?);
            if exp > now_ms {
                break;
            }
            batch.delete_cf(tombs, key(&[b"t", &k[9..73]]));
            batch.delete_cf(tombs, &k);
            swept.tombstones += 1;
        }
        for (addr, s) in stats_cache {
            self.put_stats(&mut batch, &addr, s)?;
        }
        db.write_opt(batch, &synced())?;
        self.total_bytes
            .fetch_sub(swept.bytes.min(self.total_bytes()), Ordering::Relaxed);
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ozone::OzoneProof;

    fn msg(store: &OzoneStore, addr: OzoneAddr, text: &str, now: u64, ttl: u64) -> StoredMessage {
        let payload = Bytes::from(text.as_bytes().to_vec());
        StoredMessage {
            addr,
            seq: store.next_seq(now),
            id: *blake3::hash(&payload).as_bytes(),
            expires_ms: now + ttl,
            payload,
        }
    }

    fn open(dir: &std::path::Path, limits: OzoneLimits) -> OzoneStore {
        OzoneStore::open_blocking(Store::open_blocking(dir).unwrap(), limits).unwrap()
    }

    #[test]
    fn deposit_fetch_ack_in_order_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let a = OzoneProof::from_secret(b"bob").address();
        let other = OzoneProof::from_secret(b"carol").address();
        let sent: Vec<StoredMessage>;
        {
            let s = open(dir.path(), OzoneLimits::default());
            sent = (0..50)
                .map(|i| msg(&s, a, &format!("m{i}"), 1000, 10_000))
                .collect();
            for m in &sent {
                assert_eq!(s.deposit_blocking(m).unwrap(), DepositOutcome::Stored);
            }
            assert_eq!(
                s.deposit_blocking(&sent[3]).unwrap(),
                DepositOutcome::Duplicate
            );
            s.deposit_blocking(&msg(&s, other, "not bob's", 1000, 10_000))
                .unwrap();
        }
        // Reopen: everything is there, oldest first, in pages.
        let s = open(dir.path(), OzoneLimits::default());
        assert_eq!(
            s.stats_blocking(&a).unwrap(),
            OzoneStats {
                messages: 50,
                bytes: sent.iter().map(|m| m.payload.len() as u64).sum()
            }
        );
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = s.fetch_blocking(&a, after, 7, 1 << 20).unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.seq, last.id));
            got.extend(page);
        }
        assert_eq!(got, sent);
        // Acknowledge the first 20: gone, tombstoned, not re-deposited.
        let ids: Vec<[u8; 32]> = sent[..20].iter().map(|m| m.id).collect();
        assert_eq!(s.ack_blocking(&a, &ids, 2000).unwrap(), 20);
        assert_eq!(s.ack_blocking(&a, &ids, 2000).unwrap(), 0);
        assert_eq!(
            s.deposit_blocking(&sent[0]).unwrap(),
            DepositOutcome::Acknowledged
        );
        let rest = s.fetch_blocking(&a, None, 100, 1 << 20).unwrap();
        assert_eq!(rest, sent[20..].to_vec());
        assert_eq!(s.stats_blocking(&a).unwrap().messages, 30);
        // An acknowledgement for a message this replica never had still leaves a tombstone.
        let late = msg(&s, a, "late", 1000, 10_000);
        s.ack_blocking(&a, &[late.id], 2000).unwrap();
        assert_eq!(
            s.deposit_blocking(&late).unwrap(),
            DepositOutcome::Acknowledged
        );
        assert_eq!(
            s.fetch_blocking(&other, None, 10, 1 << 20).unwrap().len(),
            1
        );
    }

    /// A group commit gives each message the outcome it would have had alone, in order:
    /// duplicates inside the group, per-ozone quotas and the node's budget count what the
    /// group already staged; everything stored is readable and counted after one write.
    #[test]
    fn a_group_decides_each_message_as_if_they_came_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OzoneLimits {
            max_messages_per_ozone: 2,
            max_bytes_per_ozone: 1 << 20,
            max_message_bytes: 600,
            retention_ms: 10_000,
            max_total_bytes: 1000,
        };
        let s = open(dir.path(), limits);
        let a = OzoneProof::from_secret(b"a").address();
        let b = OzoneProof::from_secret(b"b").address();
        let a1 = msg(&s, a, "a1", 0, 10);
        let a2 = msg(&s, a, "a2", 0, 10);
        let a3 = msg(&s, a, "a3", 0, 10);
        let b1 = msg(&s, b, &"b".repeat(500), 0, 10);
        let b2 = msg(&s, b, &"c".repeat(500), 0, 10);
        let mut bad = msg(&s, b, "bad", 0, 10);
        bad.id[0] ^= 1;
        let out = s.deposit_group_blocking(&[&a1, &a1, &a2, &a3, &b1, &b2, &bad]);
        let labels: Vec<&str> = out
            .iter()
            .map(|o| match o {
                Ok(DepositOutcome::Stored) => "stored",
                Ok(DepositOutcome::Duplicate) => "duplicate",
                Ok(DepositOutcome::Acknowledged) => "acknowledged",
                Err(e) => e.label(),
            })
            .collect();
        assert_eq!(
            labels,
            [
                "stored",
                "duplicate",
                "stored",
                "quota",
                "stored",
                "disk_budget",
                "bad_id"
            ]
        );
        assert_eq!(s.stats_blocking(&a).unwrap().messages, 2);
        assert_eq!(s.stats_blocking(&b).unwrap().messages, 1);
        assert_eq!(s.total_bytes(), 2 + 2 + 500);
        let got = s.fetch_blocking(&a, None, 10, 1 << 20).unwrap();
        assert_eq!(got, vec![a1.clone(), a2.clone()]);
        // The same after a restart: the counts were written with the messages.
        drop(s);
        let s = open(dir.path(), limits);
        assert_eq!(s.total_bytes(), 504);
        assert_eq!(s.deposit_blocking(&a2).unwrap(), DepositOutcome::Duplicate);
    }

    #[test]
    fn quotas_budget_and_bad_input_refuse_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OzoneLimits {
            max_messages_per_ozone: 3,
            max_bytes_per_ozone: 1000,
            max_message_bytes: 600,
            retention_ms: 10_000,
            max_total_bytes: 1500,
        };
        let s = open(dir.path(), limits);
        let a = OzoneProof::from_secret(b"a").address();
        let b = OzoneProof::from_secret(b"b").address();
        for i in 0..3 {
            s.deposit_blocking(&msg(&s, a, &format!("{i}"), 0, 10))
                .unwrap();
        }
        let e = s.deposit_blocking(&msg(&s, a, "4", 0, 10)).unwrap_err();
        assert_eq!(e.label(), "quota");
        let big = msg(&s, b, &"x".repeat(601), 0, 10);
        assert_eq!(s.deposit_blocking(&big).unwrap_err().label(), "too_large");
        let half = msg(&s, b, &"y".repeat(600), 0, 10);
        s.deposit_blocking(&half).unwrap();
        let e = s
            .deposit_blocking(&msg(&s, b, &"z".repeat(600), 0, 10))
            .unwrap_err();
        assert_eq!(e.label(), "quota"); // 1200 > 1000 per ozone
        let c = OzoneProof::from_secret(b"c").address();
        s.deposit_blocking(&msg(&s, c, &"w".repeat(500), 0, 10))
            .unwrap();
        let e = s
            .deposit_blocking(&msg(&s, c, &"v".repeat(500), 0, 10))
            .unwrap_err();
        assert_eq!(e.label(), "disk_budget");
        let mut forged = msg(&s, c, "real", 0, 10);
        forged.payload = Bytes::from_static(b"fake");
        assert_eq!(s.deposit_blocking(&forged).unwrap_err().label(), "bad_id");
        assert_eq!(s.fetch_blocking(&a, None, 10, 1 << 20).unwrap().len(), 3);
        assert_eq!(s.fetch_blocking(&b, None, 10, 1 << 20).unwrap(), vec![half]);
    }

    #[test]
    fn digests_match_exactly_when_replicas_agree() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (s1, s2) = (
            open(d1.path(), OzoneLimits::default()),
            open(d2.path(), OzoneLimits::default()),
        );
        let a = OzoneProof::from_secret(b"a").address();
        let msgs: Vec<StoredMessage> = (0..10)
            .map(|i| msg(&s1, a, &format!("m{i}"), 0, 10_000))
            .collect();
        // Different arrival order, same content.
        for m in &msgs {
            s1.deposit_blocking(m).unwrap();
        }
        for m in msgs.iter().rev() {
            s2.deposit_blocking(m).unwrap();
        }
        s1.ack_blocking(&a, &[msgs[0].id], 1).unwrap();
        s2.ack_blocking(&a, &[msgs[0].id], 1).unwrap();
        let d = s1.digest_blocking(&a).unwrap();
        assert_eq!((d.messages, d.tombstones), (9, 1));
        assert_eq!(s2.digest_blocking(&a).unwrap(), d);
        assert_eq!(s1.hosted_blocking().unwrap(), (1, 9));
        // One acknowledgement missing on one side shows.
        s1.ack_blocking(&a, &[msgs[1].id], 1).unwrap();
        assert_ne!(
            s1.digest_blocking(&a).unwrap(),
            s2.digest_blocking(&a).unwrap()
        );
        assert_eq!(s1.ozones_blocking().unwrap(), vec![a]);
        assert_eq!(s1.tombstones_blocking(&a).unwrap().len(), 2);
    }

    #[test]
    fn retention_evicts_messages_and_tombstones_and_frees_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), OzoneLimits::default());
        let a = OzoneProof::from_secret(b"a").address();
        let old = msg(&s, a, "old", 0, 100);
        let new = msg(&s, a, "new", 0, 10_000);
        s.deposit_blocking(&old).unwrap();
        s.deposit_blocking(&new).unwrap();
        s.ack_blocking(&a, &[[9; 32]], 0).unwrap();
        let before = s.total_bytes();
        let swept = s.sweep_expired_blocking(5_000, 100).unwrap();
        assert_eq!(
            swept,
            Swept {
                messages: 1,
                bytes: 3,
                tombstones: 0
            }
        );
        assert_eq!(s.total_bytes(), before - 3);
        assert_eq!(s.fetch_blocking(&a, None, 10, 1 << 20).unwrap(), vec![new]);
        let swept = s
            .sweep_expired_blocking(OzoneLimits::default().retention_ms + 1, 100)
            .unwrap();
        assert_eq!(swept.tombstones, 1);
    }

    /// One replica's operation in the anti-entropy property test.
    #[derive(Debug, Clone)]
    enum Op {
        /// Deposit message `i` on replica A, B or both (bit mask 1, 2, 3).
        Deposit(u8, u8),
        /// Acknowledge message `i` on A, B or both.
        Ack(u8, u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0u8..24, 1u8..4).prop_map(|(i, w)| Op::Deposit(i, w)),
            1 => (0u8..24, 1u8..4).prop_map(|(i, w)| Op::Ack(i, w)),
        ]
    }

    /// Repair `to` from `from` with the real anti-entropy session
    /// (`echomesh_proto::antientropy`, as `service::sync_ozone` drives it), its peer calls
    /// answered by `to` as `service::serve_peer` answers them.
    fn push(from: &OzoneStore, to: &OzoneStore, addr: &OzoneAddr) {
        use echomesh_proto::antientropy::{In, Out, Reply, Session};
        use echomesh_proto::wire::MsgId;
        let now = std::time::Instant::now();
        let mut s = Session::new(*addr, std::time::Duration::from_secs(5), now);
        while let Some(action) = s.poll() {
            let event = match action {
                Out::Done(r) => {
                    r.expect("session completes");
                    return;
                }
                Out::LocalDigest => In::LocalDigest(from.digest_blocking(addr).ok()),
                Out::AskDigest => In::PeerDigest(Reply::Ok(to.digest_blocking(addr).unwrap())),
                Out::LocalTombstones => In::LocalTombstones(Some(
                    from.tombstones_blocking(addr)
                        .unwrap()
                        .into_iter()
                        .map(MsgId)
                        .collect(),
                )),
                Out::PushTombstones(ids) => {
                    let ids: Vec<[u8; 32]> = ids.iter().map(|i| i.0).collect();
                    to.ack_blocking(addr, &ids, 1000).unwrap();
                    In::TombstonesPushed(Reply::Ok(()))
                }
                Out::LocalPage { after, limit } => {
                    let after = after.map(|p| (p.seq, p.id.0));
                    let mut page = from
                        .fetch_blocking(addr, after, limit + 1, usize::MAX)
                        .unwrap();
                    let more = page.len() > limit;
                    page.truncate(limit);
                    In::LocalPage(Some((page, more)))
                }
                Out::PushMessages(page) => {
                    for m in &page {
                        to.deposit_blocking(m).unwrap();
                    }
                    In::MessagesPushed(Reply::Ok(()))
                }
            };
            s.handle(event, now);
        }
        panic!("the session stopped without ending");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Two replicas that saw any interleaving of deposits and acknowledgements, after
        /// repair in both directions: equal digests, the same messages in the same order, and
        /// exactly the deposited-and-never-acknowledged ones (an ack wins over any deposit,
        /// before or after it).
        #[test]
        fn anti_entropy_converges_to_deposits_minus_acks(ops in proptest::collection::vec(op(), 1..60)) {
            let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (a, b) = (open(da.path(), OzoneLimits::default()), open(db.path(), OzoneLimits::default()));
            let addr = OzoneProof::from_secret(b"prop").address();
            // Every message has one identity (seq assigned once by the accepting node).
            let msgs: Vec<StoredMessage> = (0..24u8).map(|i| msg(&a, addr, &format!("m{i}"), 1000, 1 << 40)).collect();
            let (mut deposited, mut acked) = (std::collections::HashSet::new(), std::collections::HashSet::new());
            for op in &ops {
                match *op {
                    Op::Deposit(i, w) => {
                        for (bit, s) in [(1, &a), (2, &b)] {
                            if w & bit != 0 {
                                let _ = s.deposit_blocking(&msgs[i as usize]);
                            }
                        }
                        deposited.insert(i);
                    }
                    Op::Ack(i, w) => {
                        for (bit, s) in [(1, &a), (2, &b)] {
                            if w & bit != 0 {
                                s.ack_blocking(&addr, &[msgs[i as usize].id], 1000).unwrap();
                            }
                        }
                        acked.insert(i);
                    }
                }
            }
            push(&a, &b, &addr);
            push(&b, &a, &addr);
            proptest::prop_assert_eq!(a.digest_blocking(&addr).unwrap(), b.digest_blocking(&addr).unwrap());
            let held_a = a.fetch_blocking(&addr, None, 10_000, usize::MAX).unwrap();
            let held_b = b.fetch_blocking(&addr, None, 10_000, usize::MAX).unwrap();
            proptest::prop_assert_eq!(&held_a, &held_b);
            let want: std::collections::HashSet<[u8; 32]> = deposited
                .difference(&acked)
                .map(|i| msgs[*i as usize].id)
                .collect();
            let got: std::collections::HashSet<[u8; 32]> = held_a.iter().map(|m| m.id).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(held_a.windows(2).all(|w| (w[0].seq, w[0].id) < (w[1].seq, w[1].id)));
        }
    }
}
