//! Durable state in RocksDB: one column family per kind of data. All calls run on the blocking
//! thread pool, never on the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::echo::EchoMode;
use crate::identity::NodeId;
use crate::wire;

pub const CF_MESSAGES: &str = "messages";
pub const CF_TOMBSTONES: &str = "tombstones";
pub const CF_KEY_BUNDLES: &str = "key_bundles";
pub const CF_NEIGHBORS: &str = "neighbors";
pub const CF_NODE_STATE: &str = "node_state";
const ALL_CFS: &[&str] = &[
    CF_MESSAGES,
    CF_TOMBSTONES,
    CF_KEY_BUNDLES,
    CF_NEIGHBORS,
    CF_NODE_STATE,
];

/// Bumped when the on-disk layout changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database at {path}: {msg}. If another echomesh-node uses this data directory, stop it or pass another --data-dir")]
    Open { path: PathBuf, msg: String },
    #[error("database at {path} has schema version {found}, this build understands {SCHEMA_VERSION}; use a matching echomesh-node release")]
    Schema { path: PathBuf, found: u32 },
    #[error("database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("stored record is corrupt ({0})")]
    Corrupt(String),
    #[error("storage task failed: {0}")]
    Task(String),
}

/// How a neighbor came to be pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeighborOrigin {
    /// From configuration or flags (not persisted; re-read on every start).
    Static,
    /// From an invite/join, persisted.
    Joined,
    /// Added through the admin API, persisted.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborRecord {
    pub id: NodeId,
    /// Where to dial it; `None` when it dials us (we learned it from an incoming join).
    pub addr: Option<String>,
    pub mode: EchoMode,
    pub origin: NeighborOrigin,
    pub added_unix: u64,
}

/// A key and its value, as stored.
pub type RawRecord = (Vec<u8>, Vec<u8>);

/// Bloom filter bits per key in the SST files of the point-probed column families.
const SST_BLOOM_BITS_PER_KEY: f64 = 10.0;
/// The memtable's bloom filter, as a share of its size (64 MiB memtable: 320 KiB, about 14 bits
/// per key of a full messages memtable).
const MEMTABLE_BLOOM_RATIO: f64 = 0.005;

/// Options per column family. A deposit probes `messages` and `tombstones` for keys that are
/// almost never there (is this ID already stored? acknowledged?): bloom filters, in the
/// memtable and in every SST file, answer such a miss without walking the skiplist or
/// reading a block.
fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    if name == CF_MESSAGES || name == CF_TOMBSTONES {
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(SST_BLOOM_BITS_PER_KEY, false);
        o.set_block_based_table_factory(&table);
    }
    o
}

#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    path: PathBuf,
}

impl Store {
    /// Open (or create) the database under `data_dir/db`. Blocking: call from
    /// `spawn_blocking` or before the runtime serves traffic.
    pub fn open_blocking(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("db");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(64 << 20);
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n)));
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| StoreError::Open {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let store = Store {
            db: Arc::new(db),
            path,
        };
        store.check_schema()?;
        Ok(store)
    }

    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Store::open_blocking(&dir))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The database, for modules that own their column families' layout (`ozone::store`).
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Corrupt(format!("column family {name} missing")))
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let cf = self.cf(CF_NODE_STATE)?;
        match self.db.get_cf(cf, SCHEMA_KEY)? {
            None => {
                self.db
                    .put_cf_opt(cf, SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes(), &synced())?;
                Ok(())
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("schema_version is not 4 bytes".into()))?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found,
                    });
                }
                Ok(())
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    pub async fn put_neighbor(&self, rec: NeighborRecord) -> Result<(), StoreError> {
        self.blocking(move |s| {
            let v = wire::record_to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            s.db.put_cf_opt(s.cf(CF_NEIGHBORS)?, rec.id.0, v, &synced())?;
            Ok(())
        })
        .await
    }

    pub async fn delete_neighbor(&self, id: NodeId) -> Result<(), StoreError> {
        self.blocking(move |s| {
            s.db.delete_cf_opt(s.cf(CF_NEIGHBORS)?, id.0, &synced())?;
            Ok(())
        })
        .await
    }

    /// All persisted neighbors. Corrupt records are skipped and returned as errors to log.
    pub async fn neighbors(&self) -> Result<(Vec<NeighborRecord>, Vec<String>), StoreError> {
        self.blocking(|s| {
            let mut ok = Vec::new();
            let mut bad = Vec::new();
            for item in
                s.db.iterator_cf(s.cf(CF_NEIGHBORS)?, rocksdb::IteratorMode::Start)
            {
                let (k, v) = item?;
                match wire::decode_body::<NeighborRecord>(&v) {
                    Ok(r) => ok.push(r),
                    Err(e) => bad.push(format!("neighbor record {}: {e}", hex::encode(&k))),
                }
            }
            Ok((ok, bad))
        })
        .await
    }

    /// A small value in `node_state` (bridge pins and links), synced.
    pub async fn put_state(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.blocking(move |s| {
            s.db.put_cf_opt(s.cf(CF_NODE_STATE)?, key, value, &synced())?;
            Ok(())
        })
        .await
    }

    pub async fn get_state(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        self.blocking(move |s| Ok(s.db.get_cf(s.cf(CF_NODE_STATE)?, key)?))
            .await
    }

    pub async fn delete_state(&self, key: Vec<u8>) -> Result<(), StoreError> {
        self.blocking(move |s| {
            s.db.delete_cf_opt(s.cf(CF_NODE_STATE)?, key, &synced())?;
            Ok(())
        })
        .await
    }

    /// Every `node_state` entry whose key starts with `prefix`.
    pub async fn scan_state(&self, prefix: Vec<u8>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.blocking(move |s| {
            let mut out = Vec::new();
            let it = s.db.iterator_cf(
                s.cf(CF_NODE_STATE)?,
                rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
            );
            for item in it {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// Blocking: the stored bundle for a fingerprint (raw record bytes).
    pub fn get_bundle_blocking(&self, fp: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_KEY_BUNDLES)?, fp)?)
    }

    /// Blocking, synced: store a bundle record under its fingerprint.
    pub fn put_bundle_blocking(&self, fp: &[u8; 32], record: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf(CF_KEY_BUNDLES)?, fp, record, &synced())?;
        Ok(())
    }

    /// Blocking: up to `limit` bundle records whose key starts with `prefix`, in key order,
    /// starting after `after` (exclusive) when given.
    pub fn scan_bundles_blocking(
        &self,
        prefix: &[u8],
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        let cf = self.cf(CF_KEY_BUNDLES)?;
        let start: Vec<u8> = match after {
            Some(a) => a.to_vec(),
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| k.as_ref() == a.as_slice()) {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Blocking: visit the bundle records whose key starts with `prefix`, in key order, until
    /// `f` returns false.
    pub fn visit_bundles_blocking(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let cf = self.cf(CF_KEY_BUNDLES)?;
        let iter = self.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Blocking: number of stored bundles (a full key scan; used at start).
    pub fn count_bundles_blocking(&self) -> Result<usize, StoreError> {
        let cf = self.cf(CF_KEY_BUNDLES)?;
        let mut n = 0;
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Run a closure on the blocking pool with this store.
    pub async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.blocking(f).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Write options for acknowledged, durable writes: the WAL is synced before returning.
pub(crate) fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn neighbors_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = NeighborRecord {
            id: NodeId([7; 32]),
            addr: Some("127.0.0.1:4710".into()),
            mode: EchoMode::Half,
            origin: NeighborOrigin::Joined,
            added_unix: 1,
        };
        {
            let s = Store::open(dir.path()).await.unwrap();
            s.put_neighbor(rec.clone()).await.unwrap();
        }
        let s = Store::open(dir.path()).await.unwrap();
        let (got, bad) = s.neighbors().await.unwrap();
        assert_eq!(got, vec![rec.clone()]);
        assert!(bad.is_empty());
        s.delete_neighbor(rec.id).await.unwrap();
        assert!(s.neighbors().await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn second_open_of_same_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).await.unwrap();
        let e = Store::open(dir.path()).await.err().unwrap().to_string();
        assert!(e.contains("another echomesh-node"), "{e}");
    }
}
