//! The minute-bound storage tag: Smoke sends each chat message a second time as an "ozone
//! copy" whose last 64 bytes are `T = HMAC(ozone MAC key, body || recipient SipHash ID ||
//! minute)`, minute = unix ms / 60 000 as 8 bytes big-endian, taken when the client sends.
//! A server finds the recipient by trying every ozone × participant × minute.
//!
//! SmokeStack tries the current and the next minute, so a copy tagged in the last moments of
//! a minute that arrives in the next one is missed (and flooded on instead of stored). This
//! search also tries the previous minute: 3 candidates per pair instead of 2.
//!
//! Cost: per ozone, one pass over the body (the keyed HMAC state after the body is cloned);
//! per participant and minute, 47 bytes and two SHA-512 compressions. The node bounds the
//! ozone × participant product (`smoke.max_participants`, `smoke.max_ozones`).

use super::crypto::{HmacSha512, Stream, HASH_LEN};
use hmac::Mac;

/// Minutes tried around the node's current minute.
pub const MINUTES: [i64; 3] = [-1, 0, 1];

/// A match: which ozone and which participant (indices into the search's lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub ozone: usize,
    pub participant: usize,
}

/// The ozones' keyed MACs and the participants' IDs, prepared once per configuration change.
#[derive(Clone, Default)]
pub struct Search {
    macs: Vec<HmacSha512>,
    ids: Vec<String>,
}

impl Search {
    pub fn new<'a>(ozones: impl IntoIterator<Item = &'a Stream>, ids: Vec<String>) -> Search {
        Search {
            macs: ozones.into_iter().map(Stream::mac).collect(),
            ids,
        }
    }

    /// HMACs one frame costs at most: ozones × participants × minutes.
    pub fn cost(&self) -> usize {
        self.macs.len() * self.ids.len() * MINUTES.len()
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Find the ozone and recipient of an ozone copy (`body || T`), at minute `minute`.
    pub fn find(&self, bytes: &[u8], minute: u64) -> Option<Found> {
        let split = bytes.len().checked_sub(HASH_LEN)?;
        let (body, tag) = bytes.split_at(split);
        for (o, mac) in self.macs.iter().enumerate() {
            let mut base = mac.clone();
            base.update(body);
            for (p, id) in self.ids.iter().enumerate() {
                let mut with_id = base.clone();
                with_id.update(id.as_bytes());
                for d in MINUTES {
                    let m = (minute as i64 + d) as u64;
                    let mut h = with_id.clone();
                    h.update(&m.to_be_bytes());
                    if h.verify_slice(tag).is_ok() {
                        return Some(Found {
                            ozone: o,
                            participant: p,
                        });
                    }
                }
            }
        }
        None
    }
}

/// The tag a Smoke client appends for `id` at `minute` (tests and benchmarks).
pub fn tag(ozone: &Stream, body: &[u8], id: &str, minute: u64) -> [u8; HASH_LEN] {
    let mut h = ozone.mac();
    h.update(body);
    h.update(id.as_bytes());
    h.update(&minute.to_be_bytes());
    h.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_recipient_in_the_previous_current_and_next_minute_only() {
        let oz = [Stream::derive("a:1:TCP"), Stream::derive("b:2:TCP")];
        let ids: Vec<String> = (0..5)
            .map(|i| format!("0000-0000-0000-0000-0000-0000-0000-000{i}"))
            .collect();
        let s = Search::new(&oz, ids.clone());
        assert_eq!(s.cost(), 2 * 5 * 3);
        let body = vec![9u8; 700];
        for (d, hit) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let mut f = body.clone();
            f.extend_from_slice(&tag(&oz[1], &body, &ids[3], (1000 + d) as u64));
            let want = hit.then_some(Found {
                ozone: 1,
                participant: 3,
            });
            assert_eq!(s.find(&f, 1000), want, "minute offset {d}");
        }
        assert_eq!(s.find(&body[..10], 1000), None);
    }
}
