//! The gateway's durable state in RocksDB (`<data-dir>/db`), the engine the node already uses
//! (one set of backup and disk-full habits for the operator; atomic write batches; no second
//! database to build). Every write that an API answer or a mailbox acknowledgement depends on
//! is synced before the answer or the acknowledgement.
//!
//! Column families: `out` (id → outgoing message), `outq` (seq → id of an unfinished one),
//! `piece` (id/recipient/piece → sealed bytes, deleted once the recipient is done), `idem`
//! (token, key → id), `in` (seq → incoming message), `inid` (incoming id → seq and arrival:
//! the duplicate check, kept for `retention.dedupe_secs`), `blob` (seq → file bytes),
//! `pend` (seq of an incoming message waiting for the webhook), `rej` (seq → rejection),
//! `meta` (schema version and sequence counters).
//!
//! Calls block: async code calls them through [`Store::run`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::records::{InMessage, InState, OutMessage, Rejected};

const CFS: &[&str] = &[
    "out", "outq", "piece", "idem", "in", "inid", "blob", "pend", "rej", "meta",
];
const SCHEMA_KEY: &[u8] = b"schema";
const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the gateway database at {path}: {msg} (another gateway running on this data dir? a full disk?)")]
    Open { path: PathBuf, msg: String },
    #[error("database error: {0} (a full disk? check the data dir's free space)")]
    Db(#[from] rocksdb::Error),
    #[error("damaged record: {0}")]
    Corrupt(String),
    #[error("database schema {0} is newer than this gateway understands ({SCHEMA}); run the newer gateway")]
    Schema(u32),
    #[error("database task failed: {0}")]
    Task(String),
}

/// Idempotency record: the message a key produced and what was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdemEntry {
    pub id: String,
    pub request_sha256: String,
    pub at_ms: u64,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    next_out: Arc<AtomicU64>,
    next_in: Arc<AtomicU64>,
    next_rej: Arc<AtomicU64>,
    /// Serialises read-modify-write of incoming messages (webhook outcome, ack, replay).
    in_lock: Arc<std::sync::Mutex<()>>,
    /// Unfinished outgoing messages.
    pub outq_len: Arc<AtomicU64>,
    /// Incoming messages waiting for the webhook or a pull.
    pub pending_len: Arc<AtomicU64>,
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(k: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(k)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("bad sequence key".into()))
}

fn json<T: for<'a> Deserialize<'a>>(v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn piece_key(id: &str, recipient: usize, piece: usize) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(b'/');
    k.extend_from_slice(&(recipient as u32).to_be_bytes());
    k.extend_from_slice(&(piece as u32).to_be_bytes());
    k
}

fn idem_key(token: &str, key: &str) -> Vec<u8> {
    let mut k = token.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("db");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(128);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(64 << 20);
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| StoreError::Open {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let s = Store {
            db: Arc::new(db),
            next_out: Arc::new(AtomicU64::new(0)),
            next_in: Arc::new(AtomicU64::new(0)),
            next_rej: Arc::new(AtomicU64::new(0)),
            in_lock: Arc::default(),
            outq_len: Arc::new(AtomicU64::new(0)),
            pending_len: Arc::new(AtomicU64::new(0)),
        };
        match s.db.get_cf(s.cf("meta")?, SCHEMA_KEY)? {
            None => {
                s.db.put_cf_opt(s.cf("meta")?, SCHEMA_KEY, SCHEMA.to_be_bytes(), &synced())?
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("schema version".into()))?;
                if found > SCHEMA {
                    return Err(StoreError::Schema(found));
                }
            }
        }
        s.next_out.store(
            s.last_seq("outq")?.max(s.meta_u64(b"seq_out")?) + 1,
            Ordering::Relaxed,
        );
        s.next_in.store(s.last_seq("in")? + 1, Ordering::Relaxed);
        s.next_rej.store(s.last_seq("rej")? + 1, Ordering::Relaxed);
        s.outq_len.store(s.count("outq")?, Ordering::Relaxed);
        s.pending_len.store(s.count("pend")?, Ordering::Relaxed);
        Ok(s)
    }

    /// Run blocking store work off the async runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Corrupt(format!("column family {name} missing")))
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(match self.db.get_cf(self.cf("meta")?, key)? {
            Some(v) => seq_of(&v)?,
            None => 0,
        })
    }

    fn last_seq(&self, cf: &str) -> Result<u64, StoreError> {
        match self.db.iterator_cf(self.cf(cf)?, IteratorMode::End).next() {
            Some(kv) => seq_of(&kv?.0),
            None => Ok(0),
        }
    }

    fn count(&self, cf: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    // ---- outgoing ----

    /// Queue a message durably with its sealed pieces (one list per recipient) and, when
    /// given, its idempotency key. Assigns `msg.seq`.
    pub fn enqueue_out(
        &self,
        msg: &mut OutMessage,
        pieces: &[Vec<Bytes>],
        idem: Option<(&str, &str, IdemEntry)>,
    ) -> Result<(), StoreError> {
        let seq = self.next_out.fetch_add(1, Ordering::Relaxed);
        msg.seq = seq;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf("out")?, msg.id.as_bytes(), to_json(msg)?);
        b.put_cf(self.cf("outq")?, be(seq), msg.id.as_bytes());
        b.put_cf(self.cf("meta")?, b"seq_out", be(seq));
        for (r, list) in pieces.iter().enumerate() {
            for (p, bytes) in list.iter().enumerate() {
                b.put_cf(self.cf("piece")?, piece_key(&msg.id, r, p), bytes);
            }
        }
        if let Some((token, key, entry)) = idem {
            b.put_cf(self.cf("idem")?, idem_key(token, key), to_json(&entry)?);
        }
        self.db.write_opt(b, &synced())?;
        self.outq_len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn idem_get(&self, token: &str, key: &str) -> Result<Option<IdemEntry>, StoreError> {
        self.db
            .get_cf(self.cf("idem")?, idem_key(token, key))?
            .map(|v| json(&v))
            .transpose()
    }

    pub fn out_get(&self, id: &str) -> Result<Option<OutMessage>, StoreError> {
        self.db
            .get_cf(self.cf("out")?, id.as_bytes())?
            .map(|v| json(&v))
            .transpose()
    }

    /// Unfinished outgoing messages, oldest first.
    pub fn out_queue(&self, limit: usize) -> Result<Vec<OutMessage>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(self.cf("outq")?, IteratorMode::Start) {
            let (k, id) = kv?;
            let seq = seq_of(&k)?;
            match self.db.get_cf(self.cf("out")?, &id)? {
                Some(v) => {
                    let mut m: OutMessage = json(&v)?;
                    m.seq = seq;
                    out.push(m);
                }
                None => tracing::warn!(seq, "outbox queue entry without its message; skipped"),
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn out_pieces(&self, id: &str, recipient: usize, n: u32) -> Result<Vec<Bytes>, StoreError> {
        (0..n as usize)
            .map(|p| {
                self.db
                    .get_cf(self.cf("piece")?, piece_key(id, recipient, p))?
                    .map(Bytes::from)
                    .ok_or_else(|| StoreError::Corrupt(format!("piece {p} of {id} missing")))
            })
            .collect()
    }

    /// Record progress; a finished message leaves the queue and its pieces go.
    pub fn out_update(&self, msg: &OutMessage) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf("out")?, msg.id.as_bytes(), to_json(msg)?);
        for (r, rec) in msg.recipients.iter().enumerate() {
            if rec.state != crate::records::DeliveryState::Queued {
                for p in 0..rec.pieces as usize {
                    b.delete_cf(self.cf("piece")?, piece_key(&msg.id, r, p));
                }
            }
        }
        let finished = msg.finished();
        if finished {
            b.delete_cf(self.cf("outq")?, be(msg.seq));
        }
        self.db.write_opt(b, &synced())?;
        if finished {
            self.outq_len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    // ---- incoming ----

    /// Whether a message with this id was recorded (within the dedupe window).
    pub fn in_seen(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.db.get_cf(self.cf("inid")?, id.as_bytes())?.is_some())
    }

    /// Record an incoming message (and its file) durably, pending delivery. Assigns `seq`.
    pub fn in_put(&self, msg: &mut InMessage, file: Option<&[u8]>) -> Result<(), StoreError> {
        let seq = self.next_in.fetch_add(1, Ordering::Relaxed);
        msg.seq = seq;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf("in")?, be(seq), to_json(msg)?);
        let mut idv = be(seq).to_vec();
        idv.extend_from_slice(&msg.received_at_ms.to_be_bytes());
        b.put_cf(self.cf("inid")?, msg.id.as_bytes(), idv);
        if let Some(f) = file {
            b.put_cf(self.cf("blob")?, be(seq), f);
        }
        b.put_cf(self.cf("pend")?, be(seq), []);
        self.db.write_opt(b, &synced())?;
        self.pending_len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn in_get_seq(&self, seq: u64) -> Result<Option<InMessage>, StoreError> {
        self.db
            .get_cf(self.cf("in")?, be(seq))?
            .map(|v| json(&v))
            .transpose()
    }

    pub fn in_get(&self, id: &str) -> Result<Option<InMessage>, StoreError> {
        match self.db.get_cf(self.cf("inid")?, id.as_bytes())? {
            Some(v) if v.len() >= 8 => self.in_get_seq(seq_of(&v[..8])?),
            _ => Ok(None),
        }
    }

    pub fn in_file(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf("blob")?, be(seq))?)
    }

    /// Store a changed incoming message; leaving `Pending` takes it off the webhook queue,
    /// entering it puts it back.
    fn in_update(&self, msg: &InMessage) -> Result<(), StoreError> {
        let was_pending = self.db.get_cf(self.cf("pend")?, be(msg.seq))?.is_some();
        let now_pending = msg.state == InState::Pending;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf("in")?, be(msg.seq), to_json(msg)?);
        match (was_pending, now_pending) {
            (true, false) => b.delete_cf(self.cf("pend")?, be(msg.seq)),
            (false, true) => b.put_cf(self.cf("pend")?, be(msg.seq), []),
            _ => {}
        }
        self.db.write_opt(b, &synced())?;
        match (was_pending, now_pending) {
            (true, false) => {
                self.pending_len.fetch_sub(1, Ordering::Relaxed);
            }
            (false, true) => {
                self.pending_len.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }

    /// Change an incoming message if it is in one of the states `from` (else `None`): the
    /// read, the change and the write happen under one lock, so a webhook outcome cannot
    /// overwrite an acknowledgement made meanwhile. Returns the state before and the message.
    pub fn in_transition(
        &self,
        seq: u64,
        from: &[InState],
        change: impl FnOnce(&mut InMessage),
    ) -> Result<Option<(InState, InMessage)>, StoreError> {
        let _g = self.in_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut m) = self.in_get_seq(seq)? else {
            return Ok(None);
        };
        if !from.contains(&m.state) {
            return Ok(None);
        }
        let before = m.state;
        change(&mut m);
        self.in_update(&m)?;
        Ok(Some((before, m)))
    }

    /// Sequence numbers above `after` of messages waiting for delivery, oldest first.
    pub fn pending(&self, after: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        let start = be(after.saturating_add(1));
        for kv in self.db.iterator_cf(
            self.cf("pend")?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            out.push(seq_of(&kv?.0)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Incoming messages after `after` (a seq), oldest first, filtered.
    pub fn in_list(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&InMessage) -> bool,
    ) -> Result<Vec<InMessage>, StoreError> {
        let start = be(after.saturating_add(1));
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(
            self.cf("in")?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (_, v) = kv?;
            let m: InMessage = json(&v)?;
            if keep(&m) {
                out.push(m);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    // ---- rejections ----

    pub fn rej_put(&self, r: &Rejected, keep: u64) -> Result<(), StoreError> {
        let seq = self.next_rej.fetch_add(1, Ordering::Relaxed);
        let mut b = WriteBatch::default();
        b.put_cf(self.cf("rej")?, be(seq), to_json(r)?);
        if seq > keep {
            b.delete_range_cf(self.cf("rej")?, be(0), be(seq - keep + 1));
        }
        self.db.write_opt(b, &synced())?;
        Ok(())
    }

    pub fn rej_list(&self, limit: usize) -> Result<Vec<Rejected>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(self.cf("rej")?, IteratorMode::End) {
            out.push(json(&kv?.1)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    // ---- housekeeping ----

    /// Forget what retention allows: finished outgoing messages, delivered incoming ones
    /// (and files), old idempotency keys and old duplicate-check entries. Returns how many
    /// records went.
    pub fn prune(
        &self,
        now_ms: u64,
        r: &crate::config::Retention,
        max_idem: u64,
    ) -> Result<u64, StoreError> {
        let ago = |secs: u64| now_ms.saturating_sub(secs.saturating_mul(1000));
        let mut b = WriteBatch::default();
        let mut n = 0u64;
        for kv in self.db.iterator_cf(self.cf("out")?, IteratorMode::Start) {
            let (k, v) = kv?;
            let m: OutMessage = json(&v)?;
            if m.done && m.done_at_ms.unwrap_or(0) < ago(r.outbox_secs) {
                b.delete_cf(self.cf("out")?, k);
                n += 1;
            }
        }
        for kv in self.db.iterator_cf(self.cf("in")?, IteratorMode::Start) {
            let (k, v) = kv?;
            let m: InMessage = json(&v)?;
            if m.state == InState::Delivered && m.delivered_at_ms.unwrap_or(0) < ago(r.inbox_secs) {
                b.delete_cf(self.cf("in")?, &k);
                b.delete_cf(self.cf("blob")?, &k);
                n += 1;
            }
        }
        let mut idem = 0u64;
        let mut idem_all = Vec::new();
        for kv in self.db.iterator_cf(self.cf("idem")?, IteratorMode::Start) {
            let (k, v) = kv?;
            let e: IdemEntry = json(&v)?;
            if e.at_ms < ago(r.idempotency_secs) {
                b.delete_cf(self.cf("idem")?, &k);
                n += 1;
            } else {
                idem += 1;
                idem_all.push((e.at_ms, k));
            }
        }
        if idem > max_idem {
            idem_all.sort();
            for (_, k) in idem_all.iter().take((idem - max_idem) as usize) {
                b.delete_cf(self.cf("idem")?, k);
                n += 1;
            }
        }
        for kv in self.db.iterator_cf(self.cf("inid")?, IteratorMode::Start) {
            let (k, v) = kv?;
            let at = v.get(8..16).map(seq_of).transpose()?.unwrap_or(0);
            if at < ago(r.dedupe_secs.max(r.inbox_secs)) {
                // Only once the message itself is gone.
                if v.len() >= 8 && self.db.get_cf(self.cf("in")?, &v[..8])?.is_none() {
                    b.delete_cf(self.cf("inid")?, k);
                    n += 1;
                }
            }
        }
        self.db.write_opt(b, &synced())?;
        Ok(n)
    }
}
