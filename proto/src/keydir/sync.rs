//! Directory sync by digest: what a node that comes up sends its neighbor instead of the whole
//! directory (protocol ≥ `wire::since::KEYDIR_DIGEST`). Sans-IO.
//!
//! The fingerprint space is cut into [`BUCKETS`] buckets by the fingerprint's first byte
//! (fingerprints are blake3 hashes, so buckets fill evenly). A bucket's digest is blake3 over
//! its entries in fingerprint order, an entry being the fingerprint and [`entry_hash`] of the
//! stored bundle. The node that syncs asks its neighbor for the bucket digests (4 KiB), then
//! for the entries of the buckets that differ, and offers exactly the bundles the neighbor
//! lacks or holds in another version ([`to_offer`]). Reconnecting neighbors that agree costs
//! the digests; a difference costs its buckets' entry lists and the bundles themselves.

use super::Fingerprint;

/// Buckets of the digest: one per first fingerprint byte.
pub const BUCKETS: usize = 256;
/// Bytes of an entry hash and of a bucket digest.
pub const HASH_LEN: usize = 16;

pub type Hash16 = [u8; HASH_LEN];

/// The hash that stands for a stored bundle's exact bytes.
pub fn entry_hash(record: &[u8]) -> Hash16 {
    truncate(blake3::hash(record).as_bytes())
}

fn truncate(h: &[u8; 32]) -> Hash16 {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&h[..HASH_LEN]);
    out
}

/// The bucket of a fingerprint.
pub fn bucket_of(fp: &Fingerprint) -> u8 {
    fp.0[0]
}

/// Builds the bucket digests from entries given in fingerprint order.
pub struct DigestBuilder {
    hashers: Vec<Option<blake3::Hasher>>,
}

impl Default for DigestBuilder {
    fn default() -> Self {
        DigestBuilder {
            hashers: (0..BUCKETS).map(|_| None).collect(),
        }
    }
}

impl DigestBuilder {
    /// Add one entry; entries must come in fingerprint order (the storage's key order).
    pub fn add(&mut self, fp: &Fingerprint, hash: &Hash16) {
        let h = self.hashers[usize::from(bucket_of(fp))].get_or_insert_with(blake3::Hasher::new);
        h.update(&fp.0);
        h.update(hash);
    }

    /// One digest per bucket; an empty bucket's is all zeros.
    pub fn finish(self) -> Vec<Hash16> {
        self.hashers
            .into_iter()
            .map(|h| h.map_or([0; HASH_LEN], |h| truncate(h.finalize().as_bytes())))
            .collect()
    }
}

/// The buckets whose digests differ (a malformed list of digests differs everywhere).
pub fn differing(mine: &[Hash16], theirs: &[Hash16]) -> Vec<u8> {
    (0..BUCKETS)
        .filter(|&b| theirs.len() != BUCKETS || mine.get(b) != theirs.get(b))
        .map(|b| b as u8)
        .collect()
}

/// What to offer: my entries (of the differing buckets) that the neighbor lacks or holds with
/// another hash. Both lists in any order.
pub fn to_offer(
    mine: &[(Fingerprint, Hash16)],
    theirs: &[(Fingerprint, Hash16)],
) -> Vec<Fingerprint> {
    let theirs: std::collections::HashMap<&Fingerprint, &Hash16> =
        theirs.iter().map(|(f, h)| (f, h)).collect();
    mine.iter()
        .filter(|(f, h)| theirs.get(f) != Some(&h))
        .map(|(f, _)| *f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u32) -> Fingerprint {
        Fingerprint(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    fn entries(ns: impl IntoIterator<Item = u32>, version: u8) -> Vec<(Fingerprint, Hash16)> {
        let mut v: Vec<_> = ns
            .into_iter()
            .map(|n| (fp(n), entry_hash(&[n as u8, version])))
            .collect();
        v.sort();
        v
    }

    fn digest(e: &[(Fingerprint, Hash16)]) -> Vec<Hash16> {
        let mut b = DigestBuilder::default();
        for (f, h) in e {
            b.add(f, h);
        }
        b.finish()
    }

    #[test]
    fn equal_directories_have_equal_digests_and_nothing_to_offer() {
        let a = entries(0..2000, 1);
        assert!(differing(&digest(&a), &digest(&a)).is_empty());
        assert!(to_offer(&a, &a).is_empty());
    }

    #[test]
    fn a_neighbor_missing_some_is_offered_exactly_those() {
        let mine = entries(0..2000, 1);
        let theirs = entries((0..2000).filter(|n| n % 20 != 3), 1);
        let diff = differing(&digest(&mine), &digest(&theirs));
        assert!(!diff.is_empty() && diff.len() <= 100);
        let pick = |e: &[(Fingerprint, Hash16)]| -> Vec<(Fingerprint, Hash16)> {
            e.iter()
                .filter(|(f, _)| diff.contains(&bucket_of(f)))
                .copied()
                .collect()
        };
        let mut offer = to_offer(&pick(&mine), &pick(&theirs));
        offer.sort();
        let mut want: Vec<Fingerprint> = (0..2000).filter(|n| n % 20 == 3).map(fp).collect();
        want.sort();
        assert_eq!(offer, want);
    }

    #[test]
    fn another_version_of_a_bundle_differs_and_is_offered() {
        let mine = entries(0..10, 2);
        let mut theirs = mine.clone();
        theirs[4].1 = entry_hash(b"older");
        let diff = differing(&digest(&mine), &digest(&theirs));
        assert_eq!(diff, vec![bucket_of(&mine[4].0)]);
        assert_eq!(to_offer(&mine, &theirs), vec![mine[4].0]);
    }

    #[test]
    fn a_malformed_digest_list_differs_everywhere() {
        assert_eq!(differing(&digest(&[]), &[]).len(), BUCKETS);
    }
}
