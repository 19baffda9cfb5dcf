//! Outgoing messages: `submit` checks, seals and queues a message durably (the API answers
//! 202 after it); `run` deposits each recipient's sealed pieces into their mailbox (or sends
//! them live when they publish none) and records the state per recipient. The pieces are
//! sealed once and stored, so a retry after a crash deposits the same bytes, which the
//! mailbox keeps once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use echomesh_client::mail::{self, ResolveError};
use echomesh_proto::clock::unix_ms;
use echomesh_proto::ozone::OzoneAddr;

use crate::mesh::LinkError;
use crate::records::{DeliveryState, FileMeta, OutMessage, OutRecipient};
use crate::store::IdemEntry;
use crate::Gateway;

/// What an application asked to send.
pub struct Submission {
    pub from: String,
    pub to: Vec<String>,
    pub text: Option<String>,
    pub file: Option<(String, Vec<u8>)>,
    pub token: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no identity named {0:?} on this gateway (GET /v1/identities lists them)")]
    UnknownIdentity(String),
    #[error("{0}")]
    BadRecipient(String),
    #[error("{0}")]
    UnknownRecipient(String),
    #[error("{0}")]
    Malformed(String),
    #[error("the mesh cannot be reached to look up recipients: {0}; try again later")]
    Unavailable(String),
    #[error(
        "the outbox holds {0} unfinished messages (limits.max_outbox_messages); try again later"
    )]
    OutboxFull(u64),
    #[error(
        "Idempotency-Key {0:?} was used for a different request; use a new key for a new message"
    )]
    IdempotencyConflict(String),
    #[error("a request with Idempotency-Key {0:?} is in progress; retry it in a moment")]
    IdempotencyBusy(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SubmitError {
    /// The refusal reason (metric label and problem type).
    pub fn reason(&self) -> &'static str {
        match self {
            SubmitError::UnknownIdentity(_) => "unknown_identity",
            SubmitError::BadRecipient(_) => "bad_recipient",
            SubmitError::UnknownRecipient(_) => "unknown_recipient",
            SubmitError::Malformed(_) => "malformed",
            SubmitError::Unavailable(_) => "mesh_unavailable",
            SubmitError::OutboxFull(_) => "outbox_full",
            SubmitError::IdempotencyConflict(_) | SubmitError::IdempotencyBusy(_) => {
                "idempotency_conflict"
            }
            SubmitError::TooLarge(_) => "too_large",
            SubmitError::Internal(_) => "internal",
        }
    }
}

/// A hash of what was asked, to tell a retry from a different request under the same key.
fn request_hash(s: &Submission) -> String {
    let mut h = Sha256::new();
    h.update(s.from.as_bytes());
    for t in &s.to {
        h.update([0]);
        h.update(t.as_bytes());
    }
    h.update([1]);
    if let Some(t) = &s.text {
        h.update(t.as_bytes());
    }
    h.update([2]);
    if let Some((n, d)) = &s.file {
        h.update(n.as_bytes());
        h.update(Sha256::digest(d));
    }
    hex::encode(h.finalize())
}

/// Idempotency keys of requests being handled now.
#[derive(Default)]
pub struct InFlight(std::sync::Mutex<HashSet<(String, String)>>);

struct InFlightGuard<'a>(&'a InFlight, (String, String));

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0
             .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Check, seal and queue. `Ok((id, replayed))`: replayed when an earlier request with the
/// same idempotency key made the message.
pub async fn submit(gw: &Arc<Gateway>, sub: Submission) -> Result<(String, bool), SubmitError> {
    let internal = |e: crate::store::StoreError| SubmitError::Internal(e.to_string());
    let ident = gw
        .identity_index(&sub.from)
        .ok_or_else(|| SubmitError::UnknownIdentity(sub.from.clone()))?;
    if sub.text.is_none() && sub.file.is_none() {
        return Err(SubmitError::Malformed(
            "nothing to send: give \"text\" or a file".into(),
        ));
    }
    if sub.to.is_empty() {
        return Err(SubmitError::Malformed(
            "\"to\" is empty: name at least one participant ID".into(),
        ));
    }
    let limits = &gw.config.limits;
    if sub.to.len() > limits.max_recipients {
        return Err(SubmitError::TooLarge(format!(
            "{} recipients; at most {} per message (limits.max_recipients)",
            sub.to.len(),
            limits.max_recipients
        )));
    }
    if let Some(t) = &sub.text {
        if t.chars().count() > limits.max_text_chars {
            return Err(SubmitError::TooLarge(format!(
                "text of {} characters; at most {} (limits.max_text_chars); send longer texts as a file",
                t.chars().count(),
                limits.max_text_chars
            )));
        }
    }
    if let Some((_, d)) = &sub.file {
        if d.len() as u64 > limits.max_file_bytes {
            return Err(SubmitError::TooLarge(format!(
                "file of {} bytes; at most {} (limits.max_file_bytes)",
                d.len(),
                limits.max_file_bytes
            )));
        }
    }
    // Every ID is checked for typos before anything goes to the network.
    let mut ids = Vec::new();
    for t in &sub.to {
        let r = mail::parse_id(t).map_err(|e| SubmitError::BadRecipient(e.to_string()))?;
        if !ids.contains(&r) {
            ids.push(r);
        }
    }
    let hash = request_hash(&sub);
    let _guard = match &sub.idempotency_key {
        Some(k) => {
            let key = (sub.token.clone(), k.clone());
            if !gw
                .in_flight
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone())
            {
                return Err(SubmitError::IdempotencyBusy(k.clone()));
            }
            let guard = InFlightGuard(&gw.in_flight, key);
            let (token, k2) = (sub.token.clone(), k.clone());
            if let Some(e) = gw
                .store
                .run(move |s| s.idem_get(&token, &k2))
                .await
                .map_err(internal)?
            {
                if e.request_sha256 == hash {
                    return Ok((e.id, true));
                }
                return Err(SubmitError::IdempotencyConflict(k.clone()));
            }
            Some(guard)
        }
        None => None,
    };
    let queued = gw.store.outq_len.load(std::sync::atomic::Ordering::Relaxed);
    if queued >= limits.max_outbox_messages {
        return Err(SubmitError::OutboxFull(queued));
    }
    let mut recipients = Vec::new();
    for r in &ids {
        match gw.api_link.resolve(&r.to_string()).await {
            Ok(Ok(rec)) => recipients.push(rec),
            Ok(Err(
                e @ (ResolveError::NotPublished(_)
                | ResolveError::Ambiguous(..)
                | ResolveError::Unusable(..)),
            )) => return Err(SubmitError::UnknownRecipient(e.to_string())),
            Ok(Err(e)) => return Err(SubmitError::BadRecipient(e.to_string())),
            Err(e) => return Err(SubmitError::Unavailable(e.to_string())),
        }
    }
    let max_payload = gw
        .api_link
        .max_payload()
        .await
        .map_err(|e| SubmitError::Unavailable(e.to_string()))?;
    let file_meta = sub.file.as_ref().map(|(n, d)| FileMeta {
        name: n.clone(),
        size: d.len() as u64,
        sha256: hex::encode(Sha256::digest(d)),
    });
    let contents = mail::contents(
        sub.text.as_deref(),
        sub.file.as_ref().map(|(n, d)| (n.as_str(), d.as_slice())),
        mail::chunk_size(max_payload),
    );
    let gw2 = gw.clone();
    let recips = recipients.clone();
    let pieces: Vec<Vec<Bytes>> = tokio::task::spawn_blocking(move || {
        let me = &gw2.identities[ident].key;
        recips
            .iter()
            .map(|r| mail::seal_pieces(me, r, &contents, max_payload))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| SubmitError::Internal(e.to_string()))?
    .map_err(|e| SubmitError::TooLarge(e.to_string()))?;
    let now = unix_ms();
    let mut msg = OutMessage {
        id: format!("{:012x}{}", now, hex::encode(rand::random::<[u8; 10]>())),
        from: sub.from.clone(),
        from_id: gw.identities[ident].short_id.clone(),
        token: sub.token.clone(),
        created_at_ms: now,
        text: sub.text.clone(),
        file: file_meta,
        recipients: recipients
            .iter()
            .zip(&pieces)
            .map(|(r, p)| OutRecipient {
                id: r.fingerprint.short_id().to_string(),
                fingerprint: r.fingerprint.hex(),
                display_name: r.display_name.clone(),
                state: DeliveryState::Queued,
                copies: None,
                error: None,
                mailbox: r.mailbox.map(|a| hex::encode(a.0)),
                pieces: p.len() as u32,
            })
            .collect(),
        done: false,
        done_at_ms: None,
        seq: 0,
    };
    let idem = sub.idempotency_key.clone().map(|k| {
        (
            sub.token.clone(),
            k,
            IdemEntry {
                id: msg.id.clone(),
                request_sha256: hash,
                at_ms: now,
            },
        )
    });
    let msg = gw
        .store
        .run(move |s| {
            s.enqueue_out(
                &mut msg,
                &pieces,
                idem.as_ref()
                    .map(|(t, k, e)| (t.as_str(), k.as_str(), e.clone())),
            )?;
            Ok(msg)
        })
        .await
        .map_err(internal)?;
    gw.metrics.accepted.inc();
    gw.metrics
        .outbox
        .set(gw.store.outq_len.load(std::sync::atomic::Ordering::Relaxed) as i64);
    gw.outbox_wake.notify_one();
    tracing::info!(id = %msg.id, from = %msg.from, recipients = msg.recipients.len(), token = %msg.token, "message queued");
    Ok((msg.id, false))
}

/// The outbox worker: until cancelled, take unfinished messages oldest first and move each
/// recipient's copy into the mesh.
pub async fn run(gw: Arc<Gateway>) {
    let mut idle_passes = 0u32;
    loop {
        let batch = match gw.store.run(|s| s.out_queue(64)).await {
            Ok(b) if !b.is_empty() => {
                tracing::debug!(messages = b.len(), "outbox pass");
                b
            }
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; retrying");
                Vec::new()
            }
        };
        let mut progress = false;
        let mut blocked = false;
        for msg in batch {
            if gw.shutdown.is_cancelled() {
                return;
            }
            match advance(&gw, msg).await {
                Ok(true) => progress = true,
                Ok(false) => blocked = true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot record outbox progress; retrying");
                    blocked = true;
                }
            }
        }
        gw.metrics
            .outbox
            .set(gw.store.outq_len.load(std::sync::atomic::Ordering::Relaxed) as i64);
        let wait = if blocked && !progress {
            idle_passes += 1;
            crate::mesh::retry_wait(idle_passes)
        } else if blocked || progress {
            idle_passes = 0;
            Duration::ZERO
        } else {
            idle_passes = 0;
            Duration::from_secs(60)
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = gw.outbox_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Try every queued recipient of one message once. `Ok(true)` when something moved.
async fn advance(gw: &Arc<Gateway>, mut msg: OutMessage) -> Result<bool, crate::store::StoreError> {
    let mut progress = false;
    let give_up = Duration::from_secs(gw.config.mesh.give_up_after_secs);
    for i in 0..msg.recipients.len() {
        if msg.recipients[i].state != DeliveryState::Queued {
            continue;
        }
        let (id, n) = (msg.id.clone(), msg.recipients[i].pieces);
        let pieces = gw.store.run(move |s| s.out_pieces(&id, i, n)).await?;
        let r = &mut msg.recipients[i];
        let mailbox = match r.mailbox.as_deref().map(hex::decode) {
            None => None,
            Some(Ok(b)) if b.len() == 32 => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&b);
                Some(a)
            }
            Some(_) => {
                return Err(crate::store::StoreError::Corrupt(format!(
                    "mailbox of {} in {}",
                    r.id, msg.id
                )))
            }
        };
        let outcome = match mailbox {
            Some(addr) => {
                let mut copies = u8::MAX;
                let mut err = None;
                for p in pieces {
                    tracing::debug!(id = %msg.id, recipient = %r.id, bytes = p.len(), "depositing");
                    match gw.send_link.deposit(OzoneAddr(addr), p).await {
                        Ok(c) => copies = copies.min(c),
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                match err {
                    None => Ok((DeliveryState::Deposited, Some(copies))),
                    Some(e) => Err(e),
                }
            }
            None => match mail::parse_id(&r.fingerprint) {
                Ok(echomesh_proto::keydir::ParticipantRef::Full(fp)) => gw
                    .send_link
                    .inject(&mail::live_packets(&fp, pieces))
                    .await
                    .map(|()| (DeliveryState::Live, None)),
                _ => Err(LinkError::Refused(format!(
                    "stored fingerprint {:?} is damaged",
                    r.fingerprint
                ))),
            },
        };
        match outcome {
            Ok((state, copies)) => {
                r.state = state;
                r.copies = copies;
                r.error = None;
                progress = true;
                gw.metrics
                    .recipient_outcomes
                    .with_label_values(&[if state == DeliveryState::Live {
                        "live"
                    } else {
                        "deposited"
                    }])
                    .inc();
            }
            Err(e) => {
                let age = Duration::from_millis(unix_ms().saturating_sub(msg.created_at_ms));
                let permanent = matches!(e, LinkError::Refused(_)) && age >= give_up;
                let unreachable_too_long = matches!(e, LinkError::Unavailable(_)) && age >= give_up;
                r.error = Some(e.to_string());
                if permanent || unreachable_too_long {
                    r.state = DeliveryState::Failed;
                    progress = true;
                    gw.metrics
                        .recipient_outcomes
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(id = %msg.id, recipient = %r.id, error = %e, "giving up on a recipient (mesh.give_up_after_secs)");
                } else {
                    tracing::info!(id = %msg.id, recipient = %r.id, error = %e, "recipient not reached yet; will retry");
                }
            }
        }
    }
    if msg.finished() {
        msg.done = true;
        msg.done_at_ms = Some(unix_ms());
        gw.metrics
            .send_seconds
            .observe(unix_ms().saturating_sub(msg.created_at_ms) as f64 / 1000.0);
    }
    let m = msg.clone();
    gw.store.run(move |s| s.out_update(&m)).await?;
    Ok(progress)
}
