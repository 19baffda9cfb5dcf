//! Person-to-person messages on top of a session: finding a recipient by ID, sealing a text or
//! a file into pieces that each fit an echo packet, depositing a piece durably (again after a
//! lost connection) and batching live packets. `echomeshctl send`/`recv` and the gateway use
//! these; neither writes crypto or wire code of its own.

use bytes::Bytes;

use crate::e2e::{self, Content, Participant, Recipient};
use crate::echo::EchoPacket;
use crate::files;
use crate::keydir::{Fingerprint, KeyBundle, ParticipantRef};
use crate::ozone::OzoneAddr;
use crate::session::{ClientError, ClientSession};
use echomesh_proto::clock::unix_now;

/// Largest file chunk; smaller when the node's payload limit requires.
pub const MAX_CHUNK: usize = 192 * 1024;
/// Room for the envelope around a chunk (wrapped key, sender key, signature, framing).
pub const ENVELOPE_OVERHEAD: usize = 4 * 1024;
/// Bytes of packets per inject request.
pub const INJECT_BATCH_BYTES: usize = 1 << 20;
/// Hops a live packet may travel.
pub const LIVE_TTL: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    BadId(#[from] crate::keydir::IdError),
    #[error(
        "no key published for {0}; ask them to run `echomeshctl keys publish`, or check the ID"
    )]
    NotPublished(String),
    #[error("{0} keys share the short ID {1}; use the full fingerprint instead: {2}")]
    Ambiguous(usize, String, String),
    #[error("cannot encrypt to {0}: {1}")]
    Unusable(String, String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Look up bundles and keep only those that verify here and match what was asked for.
pub async fn verified_bundles(
    s: &mut ClientSession,
    who: ParticipantRef,
) -> Result<Vec<KeyBundle>, ClientError> {
    let found = s.lookup_key(who).await?;
    let now = unix_now();
    Ok(found
        .into_iter()
        .filter(|b| who.matches(&b.fingerprint()) && b.verify(now).is_ok())
        .collect())
}

/// Parse a short ID or fingerprint (no network).
pub fn parse_id(text: &str) -> Result<ParticipantRef, ResolveError> {
    Ok(text.parse()?)
}

/// The one verified, unrevoked key published for `text` (a short ID or fingerprint).
pub async fn resolve_recipient(
    s: &mut ClientSession,
    text: &str,
) -> Result<Recipient, ResolveError> {
    let who = parse_id(text)?;
    let found = verified_bundles(s, who).await?;
    match found.as_slice() {
        [] => Err(ResolveError::NotPublished(who.to_string())),
        [b] => Recipient::from_bundle(b, unix_now())
            .map_err(|e| ResolveError::Unusable(who.to_string(), e.to_string())),
        many => Err(ResolveError::Ambiguous(
            many.len(),
            who.to_string(),
            many.iter()
                .map(|b| b.fingerprint().hex())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Data bytes per file chunk for a node with this payload limit.
pub fn chunk_size(max_payload: usize) -> usize {
    MAX_CHUNK
        .min(max_payload.saturating_sub(ENVELOPE_OVERHEAD))
        .max(1024)
}

/// What a message carries: a text, or a file split into chunks of `chunk` bytes.
pub fn contents(text: Option<&str>, file: Option<(&str, &[u8])>, chunk: usize) -> Vec<Content> {
    let mut out = Vec::new();
    if let Some(t) = text {
        out.push(Content::Text(t.to_string()));
    }
    if let Some((name, data)) = file {
        out.extend(files::chunks(name, data, chunk));
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "message of {size} bytes exceeds the node's limit of {limit} bytes; send it as a file"
    )]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    E2e(#[from] e2e::E2eError),
}

/// Seal every piece for one recipient (CPU-bound: call from a blocking context).
pub fn seal_pieces(
    me: &Participant,
    to: &Recipient,
    content: &[Content],
    max_payload: usize,
) -> Result<Vec<Bytes>, SealError> {
    content
        .iter()
        .map(|c| {
            let p = e2e::seal(me, to, c.clone())?;
            if p.len() > max_payload {
                return Err(SealError::TooLarge {
                    size: p.len(),
                    limit: max_payload,
                });
            }
            Ok(Bytes::from(p))
        })
        .collect()
}

/// Deposit one piece; a lost connection is dialed again and the same bytes deposited again
/// (the ozone keeps one copy of a payload, so a retry is harmless). Returns the copies made.
pub async fn deposit_retrying(
    ep: &quinn::Endpoint,
    s: &mut ClientSession,
    addr: OzoneAddr,
    payload: Bytes,
    agent: &str,
) -> Result<u8, ClientError> {
    loop {
        match s.deposit(addr, payload.clone()).await {
            Ok((_, copies)) => return Ok(copies),
            Err(e @ ClientError::Io(_)) => {
                tracing::info!(error = %e, "deposit session lost; dialing again");
                *s = crate::inject::redial(
                    ep,
                    s.conn.remote_address(),
                    s.node_id,
                    agent,
                    crate::follow::RESUME_FOR,
                    e,
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Group packets into inject batches of about [`INJECT_BATCH_BYTES`].
pub fn batches(packets: Vec<EchoPacket>) -> Vec<Vec<EchoPacket>> {
    let mut out: Vec<Vec<EchoPacket>> = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0;
    for p in packets {
        if cur_bytes + p.payload.len() > INJECT_BATCH_BYTES && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += p.payload.len();
        cur.push(p);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Live packets for a recipient without a mailbox: tagged with their inbox tag.
pub fn live_packets(to: &Fingerprint, pieces: Vec<Bytes>) -> Vec<EchoPacket> {
    let tag = crate::tags::tag(
        &crate::tags::inbox_address(to),
        crate::tags::epoch_of(unix_now()),
    );
    pieces
        .into_iter()
        .map(|p| EchoPacket::new(p, LIVE_TTL, Some(tag)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_near_the_byte_bound_and_keep_every_packet() {
        let packets: Vec<_> = (0..10u8)
            .map(|i| EchoPacket::new(Bytes::from(vec![i; 300 * 1024]), 4, None))
            .collect();
        let b = batches(packets);
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(
            b.iter().all(|x| x.len() <= 4),
            "{:?}",
            b.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn ids_with_typos_are_refused_before_any_lookup() {
        assert!(matches!(
            parse_id("M8N22HT6Q"),
            Err(ResolveError::BadId(..))
        ));
        assert!(matches!(
            parse_id("not an id!"),
            Err(ResolveError::BadId(..))
        ));
    }
}
