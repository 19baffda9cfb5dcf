//! SmokeStack services for Smoke clients on the Echo listener (docs/ECHO.md, "SmokeStack
//! services"): ozone copies stored for offline participants and replicated with echomesh's
//! ozone machinery, retrieval and read receipts, key sharing (EPKS capture, PKP answers),
//! SipHash-ID registration and private-server login. The formats are
//! `echomesh_proto::smoke`; this module holds the cluster's Smoke configuration (records,
//! flooded like key bundles: [`flood`]) and the prepared view every frame is checked against;
//! [`service`] inspects frames and acts.

pub mod flood;
pub mod login;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use echomesh_proto::ozone::{OzoneAddr, OzoneProof};
use echomesh_proto::smoke::crypto::HASH_LEN;
use echomesh_proto::smoke::epks::Keys;
use echomesh_proto::smoke::record::{self, Record, Value};
use echomesh_proto::smoke::search::{self, Search};
use echomesh_proto::smoke::Stream;
use tokio::sync::Semaphore;

use crate::config::SmokeSection;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

const STATE_PREFIX: &[u8] = b"smoke/";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One participant as the services use it.
pub struct Participant {
    pub id: String,
    /// The SipHash-ID stream (EPKS and `0x03` are sealed with it).
    pub stream: Stream,
    /// SHA-512 of the ID: the key of EPKS destination tags.
    pub id_digest: [u8; HASH_LEN],
    pub keys: Option<Keys>,
    pub since_ms: u64,
}

/// The cluster's Smoke configuration, prepared for checking frames (rebuilt on every change).
#[derive(Default)]
pub struct View {
    pub ozones: Vec<(String, Stream)>,
    pub participants: Vec<Participant>,
    by_encryption_key: HashMap<[u8; HASH_LEN], usize>,
    /// Participants whose keys are not captured yet (EPKS is checked against these only).
    awaiting_keys: Vec<usize>,
    pub private_server: bool,
    pub search: Search,
}

impl View {
    pub fn participant(&self, id: &str) -> Option<&Participant> {
        self.participants
            .binary_search_by(|p| p.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.participants[i])
    }

    /// The participant whose captured encryption key has this SHA-512.
    pub fn by_encryption_digest(&self, d: &[u8]) -> Option<&Participant> {
        let d: [u8; HASH_LEN] = d.try_into().ok()?;
        self.by_encryption_key
            .get(&d)
            .map(|&i| &self.participants[i])
    }

    /// Whether a frame needs looking at: an ozone exists, or a participant awaits its keys.
    pub fn active(&self) -> bool {
        !self.ozones.is_empty() || !self.awaiting_keys.is_empty()
    }

    /// The participants whose keys are not captured yet.
    pub fn awaiting_keys(&self) -> impl Iterator<Item = &Participant> {
        self.awaiting_keys.iter().map(|&i| &self.participants[i])
    }
}

/// Where a participant's stored messages live: an echomesh ozone of its own.
pub fn mailbox(id: &str) -> (OzoneAddr, OzoneProof) {
    let proof = OzoneProof::from_secret(format!("echomesh smoke participant {id}").as_bytes());
    (proof.address(), proof)
}

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
    /// `smoke.max_ozones` / `max_participants` reached (counted, logged).
    Full,
}

pub struct Smoke {
    pub cfg: SmokeSection,
    store: Store,
    metrics: Arc<Metrics>,
    records: tokio::sync::Mutex<BTreeMap<String, Record>>,
    view: RwLock<Arc<View>>,
    /// Streams are PBKDF2 with 4096 iterations: derived once per string.
    streams: Mutex<HashMap<String, Stream>>,
    pub search_slots: Arc<Semaphore>,
    pub store_slots: Arc<Semaphore>,
    /// Read receipts waiting to be applied, per participant (bounded: `max_release` digests
    /// each, `max_participants` participants).
    reads: Mutex<HashMap<String, std::collections::HashSet<[u8; HASH_LEN]>>>,
}

impl Smoke {
    pub async fn open(
        cfg: SmokeSection,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Smoke, StoreError> {
        let mut records = BTreeMap::new();
        for (k, v) in store.scan_state(STATE_PREFIX.to_vec()).await? {
            match Record::decode(&v) {
                Ok(r) => {
                    records.insert(r.key.clone(), r);
                }
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&k), error = %e, "skipping a corrupt Smoke record")
                }
            }
        }
        let s = Smoke {
            search_slots: Arc::new(Semaphore::new(cfg.search_workers)),
            store_slots: Arc::new(Semaphore::new(cfg.max_pending_stores)),
            cfg,
            store,
            metrics,
            records: tokio::sync::Mutex::new(BTreeMap::new()),
            view: RwLock::new(Arc::new(View::default())),
            streams: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
        };
        s.rebuild(&records).await;
        *s.records.lock().await = records;
        Ok(s)
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every record (for a neighbor that comes up).
    pub async fn records(&self) -> Vec<Record> {
        self.records.lock().await.values().cloned().collect()
    }

    /// Apply a record from the API, a frame or the mesh: stored (synced) and the view
    /// rebuilt if it is newer than the one held.
    pub async fn apply(&self, r: Record) -> Result<Applied, StoreError> {
        let mut records = self.records.lock().await;
        if !record::newer(records.get(&r.key), &r) {
            self.metrics
                .smoke
                .records
                .with_label_values(&["unchanged"])
                .inc();
            return Ok(Applied::Unchanged);
        }
        let live = |prefix: &str| {
            records
                .iter()
                .filter(|(k, v)| k.starts_with(prefix) && v.value != Value::Removed && **k != r.key)
                .count()
        };
        let (ozones, participants) = (live("ozone:"), live("participant:"));
        let search = |o: usize, p: usize| o * p * search::MINUTES.len() > self.cfg.max_search_hmacs;
        let full = match r.value {
            Value::Ozone => {
                ozones >= self.cfg.max_ozones || search(ozones + 1, participants.max(1))
            }
            Value::Participant(_) => {
                participants >= self.cfg.max_participants || search(ozones.max(1), participants + 1)
            }
            _ => false,
        } || records.len() > 2 * (self.cfg.max_ozones + self.cfg.max_participants)
            && !records.contains_key(&r.key);
        if full {
            self.metrics
                .smoke
                .refused
                .with_label_values(&["full"])
                .inc();
            tracing::warn!(key = %r.key, ozones, participants, max_ozones = self.cfg.max_ozones, max_participants = self.cfg.max_participants, max_search_hmacs = self.cfg.max_search_hmacs, "Smoke record refused: the cluster's Smoke configuration is full (smoke.max_ozones, smoke.max_participants, or ozones × participants × 3 > smoke.max_search_hmacs)");
            return Ok(Applied::Full);
        }
        let mut key = STATE_PREFIX.to_vec();
        key.extend_from_slice(r.key.as_bytes());
        self.store.put_state(key, r.encode()).await?;
        records.insert(r.key.clone(), r);
        self.rebuild(&records).await;
        self.metrics
            .smoke
            .records
            .with_label_values(&["applied"])
            .inc();
        Ok(Applied::Changed)
    }

    /// Note a read receipt; `true` when the participant had none pending (the caller then
    /// starts the task that applies them). Beyond the bounds a receipt is dropped (counted):
    /// the client sends it again after its next retrieval.
    pub fn note_read(&self, id: &str, digest: [u8; HASH_LEN]) -> bool {
        let mut reads = lock(&self.reads);
        if !reads.contains_key(id) && reads.len() >= self.cfg.max_participants {
            self.metrics
                .smoke
                .refused
                .with_label_values(&["reads_full"])
                .inc();
            return false;
        }
        let pending = reads.entry(id.to_string()).or_default();
        let first = pending.is_empty();
        if pending.len() < self.cfg.max_release {
            pending.insert(digest);
        } else {
            self.metrics
                .smoke
                .refused
                .with_label_values(&["reads_full"])
                .inc();
        }
        first
    }

    /// The read receipts pending for `id`, taken.
    pub fn take_reads(&self, id: &str) -> std::collections::HashSet<[u8; HASH_LEN]> {
        lock(&self.reads).remove(id).unwrap_or_default()
    }

    /// The stream of a record's string, from the cache.
    fn stream(&self, s: &str) -> Stream {
        if let Some(st) = lock(&self.streams).get(s) {
            return st.clone();
        }
        let st = Stream::derive(s);
        let mut cache = lock(&self.streams);
        // Bounded by the records (removed ones linger): drop everything when it outgrows them.
        if cache.len() > 2 * (self.cfg.max_ozones + self.cfg.max_participants) {
            cache.clear();
        }
        cache.insert(s.to_string(), st.clone());
        st
    }

    async fn rebuild(&self, records: &BTreeMap<String, Record>) {
        let records: Vec<Record> = records
            .values()
            .filter(|r| r.value != Value::Removed)
            .cloned()
            .collect();
        // Deriving streams is CPU work (PBKDF2): off the runtime.
        let missing: Vec<String> = {
            let cache = lock(&self.streams);
            records
                .iter()
                .filter_map(|r| name(r))
                .filter(|n| !cache.contains_key(*n))
                .map(str::to_string)
                .collect()
        };
        if !missing.is_empty() {
            let derived = tokio::task::spawn_blocking(move || {
                missing
                    .into_iter()
                    .map(|n| {
                        let s = Stream::derive(&n);
                        (n, s)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            lock(&self.streams).extend(derived);
        }
        let mut v = View::default();
        for r in &records {
            match (&r.value, name(r)) {
                (Value::Ozone, Some(a)) => v.ozones.push((a.to_string(), self.stream(a))),
                (Value::Participant(keys), Some(id)) => v.participants.push(Participant {
                    id: id.to_string(),
                    stream: self.stream(id),
                    id_digest: echomesh_proto::smoke::crypto::sha512(&[id.as_bytes()]),
                    keys: keys.clone(),
                    since_ms: r.at_ms,
                }),
                (Value::PrivateServer(on), _) => v.private_server = *on,
                _ => {}
            }
        }
        v.participants.sort_by(|a, b| a.id.cmp(&b.id));
        for (i, p) in v.participants.iter().enumerate() {
            match &p.keys {
                Some(k) => {
                    v.by_encryption_key.insert(k.encryption_digest(), i);
                }
                None => v.awaiting_keys.push(i),
            }
        }
        v.search = Search::new(
            v.ozones.iter().map(|(_, s)| s),
            v.participants.iter().map(|p| p.id.clone()).collect(),
        );
        let m = &self.metrics.smoke;
        m.ozones.set(v.ozones.len() as i64);
        let with_keys = v.participants.len() - v.awaiting_keys.len();
        m.participants
            .with_label_values(&["keys"])
            .set(with_keys as i64);
        m.participants
            .with_label_values(&["no_keys"])
            .set((v.participants.len() - with_keys) as i64);
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
    }
}

/// The ozone address or SipHash ID a record names.
fn name(r: &Record) -> Option<&str> {
    r.key
        .strip_prefix("ozone:")
        .or_else(|| r.key.strip_prefix("participant:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use echomesh_proto::smoke::record::{ozone_key, participant_key};

    fn rec(key: String, at_ms: u64, value: Value) -> Record {
        Record { key, at_ms, value }
    }

    #[tokio::test]
    async fn records_are_bounded_persisted_and_the_later_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SmokeSection {
            max_ozones: 2,
            max_participants: 3,
            max_search_hmacs: 12,
            ..SmokeSection::default()
        };
        {
            let store = Store::open(dir.path()).await.unwrap();
            let s = Smoke::open(cfg.clone(), store, Arc::new(Metrics::new()))
                .await
                .unwrap();
            assert_eq!(
                s.apply(rec(ozone_key("a:1:TCP"), 10, Value::Ozone))
                    .await
                    .unwrap(),
                Applied::Changed
            );
            assert_eq!(
                s.apply(rec(ozone_key("b:1:TCP"), 10, Value::Ozone))
                    .await
                    .unwrap(),
                Applied::Changed
            );
            // Two ozones × two participants × 3 minutes = 12 HMACs: the third participant
            // would take the search past smoke.max_search_hmacs.
            for (i, want) in [
                (1, Applied::Changed),
                (2, Applied::Changed),
                (3, Applied::Full),
            ] {
                let id = format!("0000-0000-0000-0000-0000-0000-0000-000{i}");
                assert_eq!(
                    s.apply(rec(participant_key(&id), 10, Value::Participant(None)))
                        .await
                        .unwrap(),
                    want,
                    "participant {i}"
                );
            }
            assert_eq!(
                s.apply(rec(ozone_key("c:1:TCP"), 10, Value::Ozone))
                    .await
                    .unwrap(),
                Applied::Full
            );
            // An older record changes nothing; a later removal wins and frees the place.
            assert_eq!(
                s.apply(rec(ozone_key("a:1:TCP"), 5, Value::Removed))
                    .await
                    .unwrap(),
                Applied::Unchanged
            );
            assert_eq!(
                s.apply(rec(ozone_key("a:1:TCP"), 11, Value::Removed))
                    .await
                    .unwrap(),
                Applied::Changed
            );
            assert_eq!(s.view().ozones.len(), 1);
            assert_eq!(s.view().search.cost(), 6);
            assert_eq!(
                s.apply(rec(
                    echomesh_proto::smoke::record::PRIVATE_SERVER_KEY.into(),
                    1,
                    Value::PrivateServer(true)
                ))
                .await
                .unwrap(),
                Applied::Changed
            );
        }
        // After a restart the view is rebuilt from the stored records.
        let store = Store::open(dir.path()).await.unwrap();
        let s = Smoke::open(cfg, store, Arc::new(Metrics::new()))
            .await
            .unwrap();
        let v = s.view();
        assert_eq!(
            v.ozones.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
            ["b:1:TCP"]
        );
        assert_eq!(v.participants.len(), 2);
        assert!(v.private_server);
        assert!(v
            .participant("0000-0000-0000-0000-0000-0000-0000-0002")
            .is_some());
    }
}
