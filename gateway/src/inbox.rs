//! Incoming messages: the gateway reads its identities' mailboxes like `echomeshctl recv`
//! does, opens each message (end-to-end: only the gateway holds the keys), records verified
//! ones durably in its inbox and only then acknowledges them to the mesh. A crash between the
//! two fetches the message again; its id (derived from the mailbox message ids) is already
//! recorded, so it is acknowledged and not delivered twice.
//!
//! One session subscribed to every identity's tags tells the gateway when something arrives;
//! it then drains the mailboxes. A poll every `mesh.poll_secs` covers notices lost while
//! reconnecting. When the inbox is full the gateway stops taking messages: they wait in the
//! mailboxes (replicated in the mesh), nothing is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use echomesh_client::e2e::{self, Content};
use echomesh_client::files::Reassembler;
use echomesh_client::{ClientReader, ClientSession, ClientWriter};
use echomesh_proto::clock::{unix_ms, unix_now};
use echomesh_proto::keydir::Fingerprint;
use echomesh_proto::ozone::StoredMessage;
use echomesh_proto::tags;
use echomesh_proto::wire::{ClientEvent, ClientRequest, MsgId, Position, SubscribeFilter};
use sha2::{Digest, Sha256};

use crate::records::{FileMeta, InMessage, InState, Rejected};
use crate::Gateway;

/// Messages per fetch page.
const PAGE: u32 = 64;
/// Files being reassembled whose pieces are remembered for acknowledgement.
const MAX_FILES_TRACKED: usize = 64;
/// Display names remembered.
const MAX_NAMES: usize = 10_000;
/// A second look after a drain that found messages.
const RECHECK: Duration = Duration::from_millis(200);

/// Run until cancelled: keep a session, drain mailboxes, reconnect on failure.
pub async fn run(gw: Arc<Gateway>) {
    let mut attempt = 0u32;
    let mut names: HashMap<Fingerprint, Option<String>> = HashMap::new();
    loop {
        if gw.shutdown.is_cancelled() {
            return;
        }
        match gw
            .nodes
            .connect(if attempt == 0 { "start" } else { "failover" })
            .await
        {
            Ok(s) => {
                attempt = 0;
                gw.metrics.node_connected.set(1);
                let r = receive(&gw, s, &mut names).await;
                gw.metrics.node_connected.set(0);
                match r {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "mailbox session ended; reconnecting"),
                }
            }
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, "cannot reach a node for the mailboxes; retrying");
            }
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::mesh::retry_wait(attempt)) => {}
        }
    }
}

struct Session<'a> {
    w: &'a mut ClientWriter,
    rd: &'a mut ClientReader,
    /// Something arrived since the last drain.
    dirty: bool,
    /// Where a draining node told us to go.
    redirect: Option<Vec<String>>,
}

impl Session<'_> {
    /// Send a request and read until its answer, noting deliveries and obeying redirects.
    async fn request(
        &mut self,
        req: &ClientRequest,
        want: fn(&ClientEvent) -> bool,
    ) -> Result<ClientEvent, String> {
        self.w.send_request(req).await.map_err(|e| e.to_string())?;
        loop {
            match self.rd.next_event().await.map_err(|e| e.to_string())? {
                Some(ev) if want(&ev) => return Ok(ev),
                Some(ClientEvent::Error { message, .. }) => {
                    return Err(format!("node refused: {message}"))
                }
                Some(other) => self.note(other)?,
                None => return Err("node closed the session".into()),
            }
        }
    }

    fn note(&mut self, ev: ClientEvent) -> Result<(), String> {
        match ev {
            ClientEvent::Deliver(_) | ClientEvent::DeliverAt { .. } => self.dirty = true,
            ClientEvent::Redirect { nodes, reason } => {
                let e = format!(
                    "node is draining ({reason}); moving to {}",
                    nodes.join(", ")
                );
                self.redirect = Some(nodes);
                return Err(e);
            }
            _ => {}
        }
        Ok(())
    }
}

async fn receive(
    gw: &Arc<Gateway>,
    mut s: ClientSession,
    names: &mut HashMap<Fingerprint, Option<String>>,
) -> Result<(), String> {
    let (w, rd) = s.parts();
    let mut sess = Session {
        w,
        rd,
        dirty: true,
        redirect: None,
    };
    let r = receive_on(gw, &mut sess, names).await;
    if let Some(nodes) = sess.redirect.take() {
        gw.nodes.hint(nodes);
    }
    s.conn.close(0u32.into(), b"moving");
    r
}

async fn receive_on(
    gw: &Arc<Gateway>,
    sess: &mut Session<'_>,
    names: &mut HashMap<Fingerprint, Option<String>>,
) -> Result<(), String> {
    let all_tags = |now| -> Vec<[u8; 32]> {
        gw.identities
            .iter()
            .flat_map(|i| i.tags_around(now))
            .collect()
    };
    let mut epoch = tags::epoch_of(unix_now());
    sess.request(
        &ClientRequest::Subscribe(SubscribeFilter::Tags(all_tags(unix_now()))),
        |e| matches!(e, ClientEvent::Subscribed),
    )
    .await?;
    let mut files = Reassembler::new(gw.config.limits.max_file_bytes);
    let mut file_pieces: HashMap<[u8; 32], HashSet<[u8; 32]>> = HashMap::new();
    let mut poll = tokio::time::interval(Duration::from_secs(gw.config.mesh.poll_secs));
    let mut full = false;
    // A notice can race its message's replication: after a drain that found something, look
    // once more shortly after.
    let mut recheck: Option<tokio::time::Instant> = None;
    loop {
        if sess.dirty {
            let pending = gw.store.pending_len.load(Ordering::Relaxed);
            gw.metrics.inbox_pending.set(pending as i64);
            if pending >= gw.config.limits.max_inbox_messages {
                if !full {
                    full = true;
                    gw.metrics.inbox_full.inc();
                    tracing::warn!(pending, "inbox full (limits.max_inbox_messages): messages wait in the mailboxes until the webhook catches up");
                }
            } else {
                full = false;
                sess.dirty = false;
                let mut found = 0;
                for i in 0..gw.identities.len() {
                    found += drain(gw, sess, i, &mut files, &mut file_pieces, names).await?;
                }
                recheck = (found > 0).then(|| tokio::time::Instant::now() + RECHECK);
                if files.evicted > 0 {
                    gw.metrics.files_evicted.inc_by(files.evicted);
                    files.evicted = 0;
                }
            }
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => return Ok(()),
            ev = sess.rd.next_event() => match ev.map_err(|e| e.to_string())? {
                Some(ev) => sess.note(ev)?,
                None => return Err("node closed the session".into()),
            },
            _ = poll.tick() => {
                sess.dirty = true;
                let now = tags::epoch_of(unix_now());
                if now != epoch {
                    epoch = now;
                    sess.w.subscribe(SubscribeFilter::Tags(all_tags(unix_now()))).await.map_err(|e| e.to_string())?;
                }
            }
            _ = gw.inbox_space.notified(), if full => sess.dirty = true,
            _ = tokio::time::sleep_until(recheck.unwrap_or_else(tokio::time::Instant::now)), if recheck.is_some() => {
                recheck = None;
                sess.dirty = true;
            }
        }
    }
}

/// Read one identity's mailbox to the end: record what is new, acknowledge what is recorded.
/// Returns how many messages the mailbox held.
async fn drain(
    gw: &Arc<Gateway>,
    sess: &mut Session<'_>,
    i: usize,
    files: &mut Reassembler,
    file_pieces: &mut HashMap<[u8; 32], HashSet<[u8; 32]>>,
    names: &mut HashMap<Fingerprint, Option<String>>,
) -> Result<usize, String> {
    let proof = gw.identities[i].mailbox;
    let mut after = None;
    let mut found = 0;
    loop {
        let ev = sess
            .request(
                &ClientRequest::Fetch {
                    addr: proof.address(),
                    proof,
                    after,
                    limit: PAGE,
                },
                |e| matches!(e, ClientEvent::Fetched { .. }),
            )
            .await?;
        let ClientEvent::Fetched { messages, more } = ev else {
            return Err("unexpected answer to a fetch".into());
        };
        let mut acks = Vec::new();
        found += messages.len();
        for m in messages {
            after = Some(Position {
                seq: m.seq,
                id: MsgId(m.id),
            });
            acks.extend(take(gw, i, m, files, file_pieces, names).await?);
        }
        if !acks.is_empty() {
            sess.request(
                &ClientRequest::Ack {
                    addr: proof.address(),
                    proof,
                    ids: acks.into_iter().map(MsgId).collect(),
                },
                |e| matches!(e, ClientEvent::Acked { .. }),
            )
            .await?;
        }
        if !more {
            return Ok(found);
        }
        if gw.store.pending_len.load(Ordering::Relaxed) >= gw.config.limits.max_inbox_messages {
            sess.dirty = true;
            return Ok(found);
        }
    }
}

/// Handle one stored message; returns the mailbox ids that may now be acknowledged.
async fn take(
    gw: &Arc<Gateway>,
    i: usize,
    m: StoredMessage,
    files: &mut Reassembler,
    file_pieces: &mut HashMap<[u8; 32], HashSet<[u8; 32]>>,
    names: &mut HashMap<Fingerprint, Option<String>>,
) -> Result<Vec<[u8; 32]>, String> {
    let gw2 = gw.clone();
    let payload = m.payload.clone();
    let opened = tokio::task::spawn_blocking(move || e2e::open(&gw2.identities[i].key, &payload))
        .await
        .map_err(|e| e.to_string())?;
    let ident = &gw.identities[i];
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            reject(gw, i, e.claimed_sender(), e.to_string()).await?;
            return Ok(vec![m.id]);
        }
    };
    let (id, text, file, pieces) = match opened.content {
        Content::Text(t) => (message_id(&[m.id]), Some(t), None, vec![m.id]),
        Content::FileChunk(c) => {
            let fid = c.file_id;
            let set = file_pieces.entry(fid).or_default();
            set.insert(m.id);
            match files.add(opened.sender.0, c) {
                Ok(None) => {
                    if file_pieces.len() > MAX_FILES_TRACKED {
                        // Forget the oldest tracking; its pieces stay unacknowledged in the
                        // mailbox and are read again.
                        if let Some(k) = file_pieces.keys().find(|k| **k != fid).copied() {
                            file_pieces.remove(&k);
                        }
                    }
                    return Ok(Vec::new());
                }
                Ok(Some(f)) => {
                    let mut ids: Vec<[u8; 32]> = file_pieces
                        .remove(&fid)
                        .unwrap_or_default()
                        .into_iter()
                        .collect();
                    ids.sort();
                    let meta = FileMeta {
                        name: f.name.clone(),
                        size: f.data.len() as u64,
                        sha256: hex::encode(Sha256::digest(&f.data)),
                    };
                    (message_id(&ids), None, Some((meta, f.data)), ids)
                }
                Err(e) => {
                    let ids: Vec<[u8; 32]> = file_pieces
                        .remove(&fid)
                        .unwrap_or_default()
                        .into_iter()
                        .collect();
                    reject(gw, i, Some(opened.sender), e.to_string()).await?;
                    return Ok(ids);
                }
            }
        }
    };
    let id2 = id.clone();
    if gw
        .store
        .run(move |s| s.in_seen(&id2))
        .await
        .map_err(|e| e.to_string())?
    {
        gw.metrics.duplicates.inc();
        tracing::debug!(%id, "message recorded before; acknowledging it again");
        return Ok(pieces);
    }
    let from_name = match names.get(&opened.sender) {
        Some(n) => n.clone(),
        None => {
            let n = gw.api_link.display_name(opened.sender).await;
            if names.len() >= MAX_NAMES {
                names.clear();
            }
            names.insert(opened.sender, n.clone());
            n
        }
    };
    let now = unix_ms();
    let mut rec = InMessage {
        id,
        identity: ident.name.clone(),
        to_id: ident.short_id.clone(),
        from_id: opened.sender.short_id().to_string(),
        from_fingerprint: opened.sender.hex(),
        from_name,
        verified: true,
        sent_at_ms: opened.sent_at_ms,
        received_at_ms: now,
        queued_at_ms: now,
        text,
        file: file.as_ref().map(|(m, _)| m.clone()),
        state: InState::Pending,
        delivered_at_ms: None,
        attempts: 0,
        last_error: None,
        seq: 0,
    };
    let data = file.map(|(_, d)| d);
    let rec = gw
        .store
        .run(move |s| {
            s.in_put(&mut rec, data.as_deref())?;
            Ok(rec)
        })
        .await
        .map_err(|e| e.to_string())?;
    gw.metrics.received.with_label_values(&["verified"]).inc();
    gw.metrics
        .inbox_pending
        .set(gw.store.pending_len.load(Ordering::Relaxed) as i64);
    tracing::info!(id = %rec.id, identity = %rec.identity, from = %rec.from_id, file = rec.file.is_some(), "message received");
    gw.webhook_wake.notify_one();
    Ok(pieces)
}

/// The id applications see: stable for the same mailbox message(s).
fn message_id(pieces: &[[u8; 32]]) -> String {
    let mut h = blake3::Hasher::new();
    for p in pieces {
        h.update(p);
    }
    hex::encode(&h.finalize().as_bytes()[..16])
}

async fn reject(
    gw: &Arc<Gateway>,
    i: usize,
    claimed: Option<Fingerprint>,
    reason: String,
) -> Result<(), String> {
    let r = Rejected {
        identity: gw.identities[i].name.clone(),
        received_at_ms: unix_ms(),
        claimed_from: claimed.map(|f| f.short_id().to_string()),
        reason,
    };
    tracing::warn!(identity = %r.identity, claimed_from = ?r.claimed_from, reason = %r.reason, "message rejected (not verifiable); not delivered");
    gw.metrics.received.with_label_values(&["rejected"]).inc();
    let keep = gw.config.limits.max_rejected;
    gw.store
        .run(move |s| s.rej_put(&r, keep))
        .await
        .map_err(|e| e.to_string())
}
