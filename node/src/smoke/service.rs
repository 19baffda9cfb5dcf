//! What the SmokeStack services do with an Echo data frame from a connection, before the bridge
//! floods it (`bridge::ingest`). In SmokeStack's order (`Kernel.ourMessage`):
//! 1. an EPKS bundle for a participant whose keys are not captured yet: keys captured (a
//!    cluster record), the frame flooded on;
//! 2. an ozone-addressed request: retrieval `0x00` and read receipt `0x04` (signature checked
//!    with the participant's captured key), PKP `0x01`, share-ID `0x02`; answered on the
//!    connection it came from, never flooded (share-ID is flooded, as SmokeStack does);
//! 3. an ozone copy (the minute-bound tag): stored in the recipient's mailbox on the write
//!    quorum, not flooded.
//!
//! Anything else is flooded as before.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use echomesh_proto::bridge::frame::{self, Frame};
use echomesh_proto::clock::unix_ms;
use echomesh_proto::smoke::crypto::{sha512, KeyError, HASH_LEN};
use echomesh_proto::smoke::epks::{self, EpksError, Keys};
use echomesh_proto::smoke::record::{participant_key, Record, Value};
use echomesh_proto::smoke::request::{self, Request, RequestError, Signed};
use echomesh_proto::smoke::{self as sp, Stream};

use super::{mailbox, View};
use crate::bridge::hub::Link;
use crate::ctx::Ctx;
use crate::ozone::service::{self as oz, Notify};

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not for the services (or to be flooded anyway): the bridge floods it.
    Echo,
    /// Taken here: not flooded.
    Consumed,
}

/// What the CPU-bound inspection found.
enum Found {
    Nothing,
    Epks(Result<Keys, EpksError>),
    Request(usize, Result<Request, RequestError>),
    /// A PKP request, answered already: the EPKS content for the requester, or `None` when
    /// the requested participant's keys are unknown.
    KeysFor(Option<Vec<u8>>),
    Copy {
        participant: String,
        data: Bytes,
    },
}

fn refuse(ctx: &Ctx, reason: &'static str) {
    ctx.metrics.smoke.refused.with_label_values(&[reason]).inc();
}

fn took(ctx: &Ctx, kind: &'static str) {
    ctx.metrics.smoke.frames.with_label_values(&[kind]).inc();
}

/// The decoded content of a data frame (Smoke frames carry one base-64 string).
fn content(f: &[u8]) -> Option<Vec<u8>> {
    let Ok(Frame::Data { content }) = frame::classify(f) else {
        return None;
    };
    frame::binary_content(content)
}

fn inspect_blocking(view: &View, bytes: &[u8], now_ms: u64) -> Found {
    if bytes.len() < 2 * HASH_LEN {
        return Found::Nothing;
    }
    for p in view.awaiting_keys() {
        if epks::addressed_to(bytes, &p.id_digest, &p.stream) {
            return Found::Epks(epks::capture(bytes, &p.stream, now_ms));
        }
    }
    if let Some((i, plain)) = request::open(bytes, view.ozones.iter().map(|(_, s)| s)) {
        let req = request::parse(&plain, now_ms);
        if let Ok(Request::PublicKeyPair {
            requester,
            requested,
            ..
        }) = &req
        {
            // Built here, on the blocking pool: a requester that is not a participant needs
            // its stream derived (PBKDF2).
            return Found::KeysFor(
                view.participant(requested)
                    .and_then(|p| p.keys.as_ref())
                    .map(|keys| {
                        let stream = view
                            .participant(requester)
                            .map_or_else(|| Stream::derive(requester), |p| p.stream.clone());
                        epks::answer(keys, requester, &stream, now_ms)
                    }),
            );
        }
        return Found::Request(i, req);
    }
    match view.search.find(bytes, sp::minute(now_ms)) {
        Some(hit) => Found::Copy {
            participant: view.search.ids()[hit.participant].clone(),
            data: Bytes::copy_from_slice(&bytes[..bytes.len() - HASH_LEN]),
        },
        None => Found::Nothing,
    }
}

/// Inspect a data frame from Echo connection `link` (a client or an Echo neighbor).
pub async fn inspect(ctx: &Arc<Ctx>, link: &Arc<Link>, f: &Bytes) -> Outcome {
    if !ctx.smoke.cfg.enabled {
        return Outcome::Echo;
    }
    let view = ctx.smoke.view();
    if !view.active() {
        return Outcome::Echo;
    }
    let Some(bytes) = content(f) else {
        return Outcome::Echo;
    };
    // One permit per search worker: a burst waits here, slowing its sender (backpressure).
    let Ok(permit) = ctx.smoke.search_slots.clone().acquire_owned().await else {
        return Outcome::Echo;
    };
    let timer = ctx.metrics.smoke.search_seconds.start_timer();
    let v = view.clone();
    let found = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        inspect_blocking(&v, &bytes, unix_ms())
    })
    .await
    .unwrap_or(Found::Nothing);
    timer.observe_duration();
    match found {
        Found::Nothing => Outcome::Echo,
        Found::Epks(r) => {
            capture(ctx, r).await;
            Outcome::Echo
        }
        Found::Request(ozone, Err(e)) => {
            refuse(ctx, e.label());
            tracing::debug!(remote = %link.remote, ozone = %view.ozones[ozone].0, error = %e, "Smoke request refused");
            Outcome::Consumed
        }
        Found::Request(ozone, Ok(req)) => answer(ctx, link, &view, ozone, req).await,
        Found::KeysFor(Some(bytes)) => {
            took(ctx, "pkp");
            send(ctx, link, vec![data_frame(&bytes)]);
            Outcome::Consumed
        }
        Found::KeysFor(None) => {
            refuse(ctx, "unknown_participant");
            Outcome::Consumed
        }
        Found::Copy { participant, data } => {
            store(ctx, participant, data).await;
            Outcome::Consumed
        }
    }
}

async fn capture(ctx: &Arc<Ctx>, r: Result<Keys, EpksError>) {
    match r {
        Err(e) => {
            refuse(ctx, e.label());
            tracing::debug!(error = %e, "Smoke key bundle (EPKS) refused");
        }
        Ok(keys) => {
            if ctx.smoke.view().participant(&keys.id).is_none() {
                refuse(ctx, "unknown_participant");
                tracing::debug!(id = %keys.id, "EPKS for a participant not registered here: not captured");
                return;
            }
            let id = keys.id.clone();
            let rec = Record {
                key: participant_key(&id),
                at_ms: unix_ms(),
                value: Value::Participant(Some(keys)),
            };
            match super::flood::publish(ctx, rec).await {
                Ok(_) => {
                    took(ctx, "epks");
                    tracing::info!(id = %id, "Smoke participant's keys captured (EPKS)");
                }
                Err(e) => tracing::warn!(id = %id, error = %e, "cannot store captured Smoke keys"),
            }
        }
    }
}

/// Check a signed request (`0x00`, `0x04`) against the captured key of its sender.
fn verify_signed<'v>(ctx: &Ctx, view: &'v View, s: &Signed) -> Option<&'v str> {
    let Some(p) = view.by_encryption_digest(&s.enc_digest) else {
        refuse(ctx, "unknown_participant");
        return None;
    };
    let keys = p.keys.as_ref()?;
    let checked = keys
        .signature_public_key()
        .and_then(|k| k.verify(&s.signed, &s.signature));
    match checked {
        Ok(()) => Some(&p.id),
        Err(e) => {
            refuse(ctx, e.label());
            if matches!(e, KeyError::Unsupported(_)) {
                tracing::info!(id = %p.id, error = %e, "Smoke request signed with an unsupported key");
            }
            None
        }
    }
}

/// Queue answers on one connection; what its full queue refuses is counted.
pub(super) fn send(ctx: &Ctx, link: &Link, frames: Vec<Bytes>) {
    let dropped = link.queue.push_all(&frames);
    if dropped > 0 {
        ctx.metrics
            .bridge
            .dropped
            .with_label_values(&["queue_full"])
            .inc_by(dropped);
        tracing::info!(remote = %link.remote, dropped, "Smoke answers dropped: the connection's queue is full");
    }
}

fn data_frame(content: &[u8]) -> Bytes {
    Bytes::from(frame::binary_data_frame(content))
}

async fn answer(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    view: &View,
    ozone: usize,
    req: Request,
) -> Outcome {
    match req {
        Request::Retrieve(s) => {
            if let Some(id) = verify_signed(ctx, view, &s) {
                // One retrieval at a time per connection: a client asking again while its
                // messages are still being fetched gets them from the first.
                if link.retrieving.swap(true, Ordering::AcqRel) {
                    refuse(ctx, "retrieval_busy");
                    return Outcome::Consumed;
                }
                took(ctx, "retrieve");
                let (c, link, id) = (ctx.clone(), link.clone(), id.to_string());
                let identity = s.subject;
                ctx.tasks.spawn(async move {
                    release(&c, &link, &id, &identity).await;
                    link.retrieving.store(false, Ordering::Release);
                });
            }
            Outcome::Consumed
        }
        Request::Read(s) => {
            if let Some(id) = verify_signed(ctx, view, &s) {
                took(ctx, "read");
                if ctx.smoke.note_read(id, s.subject) {
                    let (c, id) = (ctx.clone(), id.to_string());
                    ctx.tasks.spawn(async move { mark_read(&c, &id).await });
                }
            }
            Outcome::Consumed
        }
        // Answered where it was found (`Found::KeysFor`).
        Request::PublicKeyPair { .. } => Outcome::Consumed,
        Request::ShareId { id, temporary, .. } => {
            took(ctx, "share_id");
            if view.participant(&id).is_none() {
                let rec = Record {
                    key: participant_key(&id),
                    at_ms: unix_ms(),
                    value: Value::Participant(None),
                };
                match super::flood::publish(ctx, rec).await {
                    Ok(super::Applied::Full) => return Outcome::Consumed,
                    Ok(_) => {
                        tracing::info!(id = %id, "Smoke participant registered (share SipHash ID)")
                    }
                    Err(e) => {
                        tracing::warn!(id = %id, error = %e, "cannot store a Smoke participant");
                        return Outcome::Consumed;
                    }
                }
            }
            let bytes =
                request::share_id_confirmation(&view.ozones[ozone].1, &id, &temporary, unix_ms());
            send(ctx, link, vec![data_frame(&bytes)]);
            // SmokeStack floods the shared ID on.
            Outcome::Echo
        }
    }
}

/// Store an ozone copy in its recipient's mailbox (write quorum, synced). Waits for a slot
/// when `smoke.max_pending_stores` copies are in flight.
async fn store(ctx: &Arc<Ctx>, participant: String, data: Bytes) {
    let Ok(permit) = ctx.smoke.store_slots.clone().acquire_owned().await else {
        return;
    };
    let c = ctx.clone();
    ctx.tasks.spawn(async move {
        let (ctx, _permit) = (c, permit);
        let (addr, _) = mailbox(&participant);
        match oz::deposit(&ctx, addr, data, Notify::Nobody).await {
            Ok(_) => took(&ctx, "stored"),
            Err(e) => {
                refuse(&ctx, "not_durable");
                tracing::warn!(id = %participant, error = %e, "a Smoke message could not be stored durably; it is lost unless the sender resends");
            }
        }
    });
}

/// The participant's stored messages, oldest first, at most `smoke.max_release`.
async fn stored(
    ctx: &Arc<Ctx>,
    id: &str,
) -> Result<Vec<echomesh_proto::ozone::StoredMessage>, oz::ServiceError> {
    let (addr, proof) = mailbox(id);
    let max = ctx.smoke.cfg.max_release;
    let mut out = Vec::new();
    let mut after = None;
    while out.len() < max {
        let want = (max - out.len()).min(crate::limits::MAX_FETCH_MESSAGES as usize) as u32;
        let (page, more) = oz::fetch(ctx, addr, proof, after, want).await?;
        after = page.last().map(|m| echomesh_proto::wire::Position {
            seq: m.seq,
            id: echomesh_proto::wire::MsgId(m.id),
        });
        out.extend(page);
        if !more || after.is_none() {
            break;
        }
    }
    Ok(out)
}

async fn release(ctx: &Arc<Ctx>, link: &Link, id: &str, identity: &[u8]) {
    let started = Instant::now();
    match stored(ctx, id).await {
        Ok(msgs) => {
            let frames: Vec<Bytes> = msgs
                .iter()
                .map(|m| data_frame(&sp::released(&m.payload, identity)))
                .collect();
            let n = frames.len() as u64;
            send(ctx, link, frames);
            ctx.metrics.smoke.released.inc_by(n);
            tracing::debug!(id = %id, messages = n, ms = started.elapsed().as_millis() as u64, "Smoke messages released");
        }
        Err(e) => tracing::warn!(id = %id, error = %e, "Smoke retrieval failed"),
    }
}

/// Apply the read receipts gathered for participant `id`: one listing of its mailbox for all
/// the receipts that arrived together (a client reading 100 messages sends 100 receipts).
async fn mark_read(ctx: &Arc<Ctx>, id: &str) {
    // Receipts that arrive within this moment share the listing.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let digests = ctx.smoke.take_reads(id);
    if digests.is_empty() {
        return;
    }
    let msgs = match stored(ctx, id).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(id = %id, error = %e, "Smoke read receipt not applied: cannot list the mailbox");
            return;
        }
    };
    let ids: Vec<[u8; 32]> = msgs
        .iter()
        .filter(|m| digests.contains(&sha512(&[&m.payload])))
        .map(|m| m.id)
        .collect();
    if ids.is_empty() {
        return;
    }
    let (addr, proof) = mailbox(id);
    if let Err(e) = oz::ack(ctx, addr, proof, ids).await {
        tracing::warn!(id = %id, error = %e, "Smoke read receipt not applied");
    }
}
