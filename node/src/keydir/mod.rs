//! The key directory (EPKS): signed key bundles, verified, stored in RocksDB and flooded.
//!
//! Bundles travel the mesh as echo packets tagged with [`crate::tags::keydir_tag`], so they
//! reuse flooding, duplicate suppression, queues and rate limits. Unlike other packets they
//! are verified *before* they are forwarded: the router hands them here, and only a bundle
//! that changed the directory (new, or newer than the stored one) is flooded on. That rule also
//! ends every flood: a node forwards a given bundle at most once.
//!
//! Rules (see [`decide`]): a bundle is replaced only by a newer one for the same key (and so
//! signed by the same key); ties between two different bundles of the same age go to the
//! larger digest, so all nodes converge on one; a revocation is final.
//!
//! When a neighbor comes up, the whole directory is offered to it ([`KeyDirectory::page`]),
//! paced by that neighbor's queue, so nodes that were down or partitioned catch up.

pub mod flood;

use echomesh_proto::clock::unix_now;
pub use echomesh_proto::keydir::*;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::limits::MAX_LOOKUP_RESULTS;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("cannot store the bundle: {0}")]
    Store(#[from] StoreError),
}

pub struct KeyDirectory {
    store: Store,
    metrics: Arc<Metrics>,
    max_bundles: usize,
    count: Arc<AtomicUsize>,
    /// Serialises read-compare-write of bundles (held on the blocking pool only).
    write: Arc<Mutex<()>>,
    /// Bumped by every change of a stored bundle.
    version: Arc<AtomicU64>,
    /// The bucket digests of the last scan and the version they were read at: any neighbor
    /// may ask for them, each time a link comes up, and a directory of 100 000 bundles takes
    /// about 0.1 s to scan. One scan at a time; asked again unchanged, the answer is kept.
    digest_cache: tokio::sync::Mutex<Option<(u64, Vec<sync::Hash16>)>>,
}

impl KeyDirectory {
    pub async fn open(
        store: Store,
        metrics: Arc<Metrics>,
        max_bundles: usize,
    ) -> Result<Self, StoreError> {
        let n = store.run_blocking(|s| s.count_bundles_blocking()).await?;
        metrics.key_bundles.set(n as i64);
        Ok(KeyDirectory {
            store,
            metrics,
            max_bundles,
            count: Arc::new(AtomicUsize::new(n)),
            write: Arc::new(Mutex::new(())),
            version: Arc::new(AtomicU64::new(0)),
            digest_cache: tokio::sync::Mutex::new(None),
        })
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verify a bundle and store it if it changes the directory. `source` is the metrics label
    /// (`client` or `neighbor`). Every outcome is counted.
    pub async fn offer(
        &self,
        bundle: KeyBundle,
        source: &'static str,
    ) -> Result<Offered, OfferError> {
        let write = self.write.clone();
        let count = self.count.clone();
        let version = self.version.clone();
        let max = self.max_bundles;
        let result = self
            .store
            .run_blocking(move |s| {
                // RSA verification is CPU work: it belongs on the blocking pool too.
                if let Err(e) = bundle.verify(unix_now()) {
                    return Ok(Err(e));
                }
                let fp = bundle.fingerprint();
                let _guard = write.lock().unwrap_or_else(|p| p.into_inner());
                let existing = match s.get_bundle_blocking(&fp.0)? {
                    Some(raw) => KeyBundle::decode(&raw).ok(),
                    None => None,
                };
                let outcome = match decide(existing.as_ref(), &bundle) {
                    Ok(o) => o,
                    Err(e) => return Ok(Err(e)),
                };
                if outcome == Offered::New && count.load(Ordering::Relaxed) >= max {
                    return Ok(Err(BundleError::DirectoryFull));
                }
                if outcome.changed() {
                    let raw = bundle
                        .encode()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    s.put_bundle_blocking(&fp.0, &raw)?;
                    version.fetch_add(1, Ordering::Release);
                    if outcome == Offered::New {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Ok(outcome))
            })
            .await;
        let m = &self.metrics;
        match result {
            Ok(Ok(o)) => {
                m.key_bundles.set(self.len() as i64);
                let label = match o {
                    Offered::New => "new",
                    Offered::Replaced => "replaced",
                    Offered::Unchanged => "unchanged",
                };
                m.key_bundles_offered
                    .with_label_values(&[source, label])
                    .inc();
                Ok(o)
            }
            Ok(Err(e)) => {
                m.key_bundles_rejected.with_label_values(&[e.label()]).inc();
                // Stale bundles arrive normally when directories resynchronise.
                if matches!(e, BundleError::Stale(_)) {
                    tracing::debug!(source, reason = e.label(), "key bundle not stored: {e}");
                } else {
                    tracing::info!(source, reason = e.label(), "key bundle refused: {e}");
                }
                Err(e.into())
            }
            Err(e) => {
                tracing::error!(error = %e, "key directory storage failed");
                Err(e.into())
            }
        }
    }

    /// Count a bundle that could not even be decoded.
    pub fn count_rejected(&self, e: &BundleError) {
        self.metrics
            .key_bundles_rejected
            .with_label_values(&[e.label()])
            .inc();
    }

    /// Bundles for a short ID or a fingerprint. Short IDs carry 45 bits, so more than one
    /// bundle can match; callers must show the fingerprint and let people choose.
    pub async fn lookup(&self, who: ParticipantRef) -> Result<Vec<KeyBundle>, StoreError> {
        let (prefix, after, limit) = match who {
            ParticipantRef::Full(fp) => (fp.0.to_vec(), None, 1),
            ParticipantRef::Short(s) => {
                let (bytes, _) = s.prefix();
                (bytes.to_vec(), None, 4096)
            }
        };
        let rows = self
            .store
            .run_blocking(move |s| s.scan_bundles_blocking(&prefix, after, limit))
            .await?;
        let mut out = Vec::new();
        for (k, v) in rows {
            let Ok(fp) = <[u8; 32]>::try_from(k.as_slice()) else {
                continue;
            };
            if !who.matches(&Fingerprint(fp)) {
                continue;
            }
            match KeyBundle::decode(&v) {
                Ok(b) => out.push(b),
                Err(e) => {
                    tracing::warn!(fingerprint = %hex::encode(fp), error = %e, "corrupt key bundle record skipped")
                }
            }
            if out.len() >= MAX_LOOKUP_RESULTS {
                break;
            }
        }
        let result = if out.is_empty() { "not_found" } else { "found" };
        self.metrics.key_lookups.with_label_values(&[result]).inc();
        Ok(out)
    }

    /// The directory's bucket digests (`keydir::sync`): from one scan of the stored bundles,
    /// kept until a bundle changes.
    pub async fn digests(&self) -> Result<Vec<sync::Hash16>, StoreError> {
        let mut cache = self.digest_cache.lock().await;
        // Read before the scan: a change during it makes the next call scan again.
        let version = self.version.load(Ordering::Acquire);
        if let Some((v, d)) = cache.as_ref() {
            if *v == version {
                return Ok(d.clone());
            }
        }
        let d = self.scan_digests().await?;
        *cache = Some((version, d.clone()));
        Ok(d)
    }

    async fn scan_digests(&self) -> Result<Vec<sync::Hash16>, StoreError> {
        self.store
            .run_blocking(|s| {
                let mut d = sync::DigestBuilder::default();
                s.visit_bundles_blocking(&[], &mut |k, v| {
                    if let Ok(fp) = <[u8; 32]>::try_from(k) {
                        d.add(&Fingerprint(fp), &sync::entry_hash(v));
                    }
                    true
                })?;
                Ok(d.finish())
            })
            .await
    }

    /// The entries (fingerprint, entry hash) of these buckets, at most `max`; false when
    /// `max` cut the list.
    pub async fn entries(
        &self,
        buckets: Vec<u8>,
        max: usize,
    ) -> Result<(Vec<(Fingerprint, sync::Hash16)>, bool), StoreError> {
        self.store
            .run_blocking(move |s| {
                let mut out = Vec::new();
                let mut complete = true;
                for b in buckets {
                    s.visit_bundles_blocking(&[b], &mut |k, v| {
                        if out.len() >= max {
                            complete = false;
                            return false;
                        }
                        if let Ok(fp) = <[u8; 32]>::try_from(k) {
                            out.push((Fingerprint(fp), sync::entry_hash(v)));
                        }
                        true
                    })?;
                    if !complete {
                        break;
                    }
                }
                Ok((out, complete))
            })
            .await
    }

    /// The stored bundle records of these fingerprints (those still held).
    pub async fn records(&self, fps: Vec<Fingerprint>) -> Result<Vec<Vec<u8>>, StoreError> {
        self.store
            .run_blocking(move |s| {
                let mut out = Vec::with_capacity(fps.len());
                for fp in fps {
                    if let Some(r) = s.get_bundle_blocking(&fp.0)? {
                        out.push(r);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// One page of the directory in fingerprint order, after `after`.
    pub async fn page(
        &self,
        after: Option<Fingerprint>,
        limit: usize,
    ) -> Result<Vec<(Fingerprint, Vec<u8>)>, StoreError> {
        let rows = self
            .store
            .run_blocking(move |s| s.scan_bundles_blocking(&[], after.map(|f| f.0), limit))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| Some((Fingerprint(k.as_slice().try_into().ok()?), v)))
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::pss::BlindedSigningKey;
    use rsa::signature::RandomizedSigner;
    use sha2::Sha256;
    use std::sync::OnceLock;

    fn key() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| {
            rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS).expect("keygen")
        })
    }

    pub(crate) fn signed(kind: BundleKind, name: &str, created_at: u64) -> KeyBundle {
        signed_as(BUNDLE_FORMAT, kind, name, created_at, None)
    }

    pub(crate) fn signed_as(
        format: u8,
        kind: BundleKind,
        name: &str,
        created_at: u64,
        mailbox: Option<crate::ozone::OzoneAddr>,
    ) -> KeyBundle {
        let k = key();
        let spki = k
            .to_public_key()
            .to_public_key_der()
            .expect("spki")
            .as_bytes()
            .to_vec();
        let msg = KeyBundle::signed_bytes(format, kind, &spki, name, created_at, mailbox.as_ref());
        let sig: rsa::pss::Signature = BlindedSigningKey::<Sha256>::new(k.clone())
            .sign_with_rng(&mut rsa::rand_core::OsRng, &msg);
        KeyBundle {
            format,
            kind,
            public_key: Bytes::from(spki),
            display_name: name.into(),
            created_at,
            signature: Bytes::from(Box::<[u8]>::from(sig)),
            mailbox,
        }
    }

    /// Format-1 bundles (no mailbox) keep their exact encoding and stay valid; format-2
    /// bundles carry a mailbox that the signature covers.
    #[test]
    fn both_bundle_formats_roundtrip_and_verify() {
        #[derive(serde::Serialize)]
        struct V1<'a> {
            format: u8,
            kind: BundleKind,
            public_key: &'a Bytes,
            display_name: &'a str,
            created_at: u64,
            signature: &'a Bytes,
        }
        let now = unix_now();
        let old = signed_as(BUNDLE_FORMAT_V1, BundleKind::Publish, "Old", now, None);
        let bytes = old.encode().unwrap();
        let v1 = crate::wire::record_to_vec(&V1 {
            format: old.format,
            kind: old.kind,
            public_key: &old.public_key,
            display_name: &old.display_name,
            created_at: old.created_at,
            signature: &old.signature,
        })
        .unwrap();
        assert_eq!(bytes, v1, "format 1 encodes as it always did");
        let back = KeyBundle::decode(&bytes).unwrap();
        assert_eq!(back, old);
        back.verify(now).unwrap();

        let mb = crate::ozone::OzoneAddr([7; 32]);
        let new = signed_as(BUNDLE_FORMAT, BundleKind::Publish, "New", now, Some(mb));
        let back = KeyBundle::decode(&new.encode().unwrap()).unwrap();
        assert_eq!(back.mailbox, Some(mb));
        back.verify(now).unwrap();
        let mut moved = back.clone();
        moved.mailbox = Some(crate::ozone::OzoneAddr([8; 32]));
        assert_eq!(moved.verify(now), Err(BundleError::BadSignature));
        let mut dropped = back;
        dropped.mailbox = None;
        assert_eq!(dropped.verify(now), Err(BundleError::BadSignature));
        // Inside a message (a vector of bundles), both formats decode side by side.
        let list = vec![old.clone(), new.clone(), old];
        let enc = crate::wire::record_to_vec(&list).unwrap();
        let dec: Vec<KeyBundle> = crate::wire::decode_body(&enc).unwrap();
        assert_eq!(dec, list);
    }

    #[test]
    fn verification_catches_every_alteration() {
        let now = unix_now();
        let b = signed(BundleKind::Publish, "Alice", now);
        b.verify(now).unwrap();
        let mut renamed = b.clone();
        renamed.display_name = "Mallory".into();
        assert_eq!(renamed.verify(now), Err(BundleError::BadSignature));
        let mut redated = b.clone();
        redated.created_at -= 1;
        assert_eq!(redated.verify(now), Err(BundleError::BadSignature));
        let mut future = b.clone();
        future.created_at = now + 3600;
        assert!(matches!(future.verify(now), Err(BundleError::Future(_))));
        let mut fmt = b.clone();
        fmt.format = 9;
        assert_eq!(fmt.verify(now), Err(BundleError::UnknownFormat(9)));
        let mut junk_key = b.clone();
        junk_key.public_key = Bytes::from_static(b"not a key");
        assert!(matches!(junk_key.verify(now), Err(BundleError::BadKey(_))));
        let mut big = b.clone();
        big.display_name = "x".repeat(9000);
        assert!(matches!(big.verify(now), Err(BundleError::Oversized(_))));
        let mut ctl = b.clone();
        ctl.display_name = "a\nb".into();
        assert_eq!(ctl.verify(now), Err(BundleError::BadName));
    }

    #[test]
    fn replacement_rule() {
        let old = signed(BundleKind::Publish, "A", 100);
        let newer = signed(BundleKind::Publish, "A2", 200);
        let revoke = signed(BundleKind::Revoke, "A", 50);
        assert_eq!(decide(None, &old), Ok(Offered::New));
        assert_eq!(decide(Some(&old), &old), Ok(Offered::Unchanged));
        assert_eq!(decide(Some(&old), &newer), Ok(Offered::Replaced));
        assert_eq!(decide(Some(&newer), &old), Err(BundleError::Stale(200)));
        // A revocation wins whatever its date, and is final.
        assert_eq!(decide(Some(&newer), &revoke), Ok(Offered::Replaced));
        assert_eq!(decide(Some(&revoke), &newer), Err(BundleError::Revoked));
        // Same age, different content: every node keeps the larger digest.
        let twin = signed(BundleKind::Publish, "A-twin", 100);
        let (lo, hi) = if old.digest() < twin.digest() {
            (&old, &twin)
        } else {
            (&twin, &old)
        };
        assert_eq!(decide(Some(lo), hi), Ok(Offered::Replaced));
        assert_eq!(decide(Some(hi), lo), Err(BundleError::Stale(100)));
    }

    /// Digests are scanned once and kept while nothing changes; every stored change (new,
    /// replaced) is seen by the next request, a refused or unchanged offer is not a change.
    #[tokio::test]
    async fn kept_digests_follow_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let kd = KeyDirectory::open(store, Arc::new(Metrics::new()), 10)
            .await
            .unwrap();
        let empty = kd.digests().await.unwrap();
        let a = signed(BundleKind::Publish, "A", unix_now() - 10);
        kd.offer(a.clone(), "client").await.unwrap();
        let one = kd.digests().await.unwrap();
        assert_ne!(one, empty);
        assert_eq!(one, kd.scan_digests().await.unwrap());
        let v = kd.version.load(Ordering::Acquire);
        assert_eq!(kd.offer(a, "neighbor").await.unwrap(), Offered::Unchanged);
        assert!(kd
            .offer(signed(BundleKind::Publish, "A0", 1), "neighbor")
            .await
            .is_err());
        assert_eq!(kd.version.load(Ordering::Acquire), v, "nothing changed");
        assert_eq!(kd.digests().await.unwrap(), one);
        let newer = signed(BundleKind::Publish, "A2", unix_now());
        assert_eq!(kd.offer(newer, "client").await.unwrap(), Offered::Replaced);
        let two = kd.digests().await.unwrap();
        assert_ne!(two, one);
        assert_eq!(two, kd.scan_digests().await.unwrap());
    }

    #[tokio::test]
    async fn directory_stores_looks_up_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let b = signed(BundleKind::Publish, "Alice", unix_now());
        let fp = b.fingerprint();
        {
            let store = Store::open(dir.path()).await.unwrap();
            let kd = KeyDirectory::open(store, metrics.clone(), 10)
                .await
                .unwrap();
            assert_eq!(kd.offer(b.clone(), "client").await.unwrap(), Offered::New);
            assert_eq!(
                kd.offer(b.clone(), "neighbor").await.unwrap(),
                Offered::Unchanged
            );
            let mut forged = b.clone();
            forged.display_name = "Eve".into();
            assert!(matches!(
                kd.offer(forged, "neighbor").await,
                Err(OfferError::Bundle(BundleError::BadSignature))
            ));
        }
        let store = Store::open(dir.path()).await.unwrap();
        let kd = KeyDirectory::open(store, metrics.clone(), 1).await.unwrap();
        assert_eq!(kd.len(), 1);
        let by_short = kd
            .lookup(ParticipantRef::Short(fp.short_id()))
            .await
            .unwrap();
        assert_eq!(by_short, vec![b.clone()]);
        let by_full = kd.lookup(ParticipantRef::Full(fp)).await.unwrap();
        assert_eq!(by_full, vec![b.clone()]);
        let none = kd
            .lookup(ParticipantRef::Full(Fingerprint([0; 32])))
            .await
            .unwrap();
        assert!(none.is_empty());
        let page = kd.page(None, 10).await.unwrap();
        assert_eq!(page.len(), 1);
        assert!(kd.page(Some(fp), 10).await.unwrap().is_empty());
        let text = metrics.render();
        assert!(
            text.contains("echomesh_key_bundles_rejected_total{reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("echomesh_key_lookups_total{result=\"found\"} 2"),
            "{text}"
        );
    }
}
