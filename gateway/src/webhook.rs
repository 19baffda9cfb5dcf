//! Webhook delivery, as the Standard Webhooks specification says: each incoming message is
//! POSTed as JSON with `webhook-id` (the message id: the same on every retry),
//! `webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature` (`v1,BASE64` of
//! HMAC-SHA256 over `{id}.{timestamp}.{body}`, one per configured secret, space-separated,
//! so that two secrets are valid while one is rotated). Retried with exponential backoff and
//! jitter until a 2xx; a message not accepted within `webhook.dead_letter_after_secs` is
//! dead-lettered (listed and replayable through the API).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinSet;
use tokio::time::Instant;

use echomesh_proto::clock::{unix_ms, unix_now};

use crate::records::{InMessage, InState};
use crate::Gateway;

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 4096;

/// `webhook-signature` for a body: one `v1,` signature per secret.
pub fn sign(secrets: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|k| {
            let mut mac = Hmac::<Sha256>::new_from_slice(k).expect("HMAC takes keys of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Read the signing secrets (surrounding whitespace trimmed).
pub fn read_secrets(files: &[std::path::PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    files
        .iter()
        .map(|f| {
            let len = std::fs::metadata(f)
                .map_err(|e| format!("webhook secret {}: {e}", f.display()))?
                .len();
            if len > MAX_SECRET_BYTES {
                return Err(format!(
                    "webhook secret {} is {len} bytes; at most {MAX_SECRET_BYTES}",
                    f.display()
                ));
            }
            let b = std::fs::read(f).map_err(|e| format!("webhook secret {}: {e}", f.display()))?;
            let t = b.trim_ascii().to_vec();
            if t.is_empty() {
                return Err(format!("webhook secret {} is empty", f.display()));
            }
            Ok(t)
        })
        .collect()
}

/// The JSON body for a message (the file inlined below the limit, else a download URL).
pub fn body(gw: &Gateway, m: &InMessage, file: Option<&[u8]>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "message.received",
        "id": m.id,
        "identity": m.identity,
        "to_id": m.to_id,
        "from_id": m.from_id,
        "from_fingerprint": m.from_fingerprint,
        "from_name": m.from_name,
        "verified": m.verified,
        "sent_at_ms": m.sent_at_ms,
        "received_at_ms": m.received_at_ms,
    });
    if let Some(t) = &m.text {
        v["text"] = t.clone().into();
    }
    if let Some(f) = &m.file {
        let mut fv = serde_json::json!({"name": f.name, "size": f.size, "sha256": f.sha256});
        match file {
            Some(d) if (d.len() as u64) <= gw.config.webhook.inline_file_bytes => {
                fv["content_base64"] = base64::engine::general_purpose::STANDARD.encode(d).into();
            }
            _ => {
                fv["url"] = format!("{}/v1/inbox/{}/file", gw.public_url(), m.id).into();
            }
        }
        v["file"] = fv;
    }
    v
}

/// Deliver until cancelled (returns at once without a webhook URL: pull mode).
pub async fn run(gw: Arc<Gateway>) {
    let Some(url) = gw.config.webhook.url.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(gw.config.webhook.timeout_secs))
        .user_agent(crate::mesh::AGENT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are off");
            return;
        }
    };
    // seq → when it is due. New messages are read after the highest seq seen; a replayed
    // dead letter (an older seq) asks for a full re-read.
    let mut schedule: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut in_flight: JoinSet<(u64, Option<Duration>)> = JoinSet::new();
    let mut busy = std::collections::HashSet::new();
    let mut refresh = true;
    let mut seen_up_to = 0u64;
    loop {
        if refresh {
            refresh = false;
            if gw.webhook_reread.swap(false, Ordering::Relaxed) {
                seen_up_to = 0;
            }
            let after = seen_up_to;
            let max = gw.config.limits.max_inbox_messages as usize;
            match gw.store.run(move |s| s.pending(after, max)).await {
                Ok(seqs) => {
                    let now = Instant::now();
                    for s in seqs {
                        seen_up_to = seen_up_to.max(s);
                        schedule.entry(s).or_insert(now);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the webhook queue"),
            }
        }
        let now = Instant::now();
        let due: Vec<u64> = schedule
            .iter()
            .filter(|(s, at)| **at <= now && !busy.contains(*s))
            .map(|(s, _)| *s)
            .take(
                gw.config
                    .webhook
                    .concurrency
                    .saturating_sub(in_flight.len()),
            )
            .collect();
        for seq in due {
            busy.insert(seq);
            let (gw2, client2, url2) = (gw.clone(), client.clone(), url.clone());
            in_flight.spawn(async move { (seq, attempt(&gw2, &client2, &url2, seq).await) });
        }
        let next = schedule
            .iter()
            .filter(|(s, _)| !busy.contains(*s))
            .map(|(_, at)| *at)
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        tokio::select! {
            _ = gw.shutdown.cancelled() => {
                // Attempts in flight finish or are dropped; unrecorded ones are retried at
                // the next start (the receiver deduplicates by id).
                return;
            }
            Some(r) = in_flight.join_next() => {
                if let Ok((seq, retry)) = r {
                    busy.remove(&seq);
                    match retry {
                        Some(d) => { schedule.insert(seq, Instant::now() + d); }
                        None => { schedule.remove(&seq); }
                    }
                }
            }
            _ = gw.webhook_wake.notified() => refresh = true,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// One attempt; `Some(wait)` to retry after `wait`, `None` when finished (delivered, dead,
/// or gone).
async fn attempt(
    gw: &Arc<Gateway>,
    client: &reqwest::Client,
    url: &str,
    seq: u64,
) -> Option<Duration> {
    let loaded = gw
        .store
        .run(move |s| {
            Ok(s.in_get_seq(seq)?.map(|m| {
                (
                    m.clone(),
                    if m.file.is_some() {
                        s.in_file(seq).ok().flatten()
                    } else {
                        None
                    },
                )
            }))
        })
        .await;
    let (m, file) = match loaded {
        Ok(Some(x)) => x,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, seq, "cannot read an inbox message; retrying");
            return Some(Duration::from_secs(5));
        }
    };
    if m.state != InState::Pending {
        return None;
    }
    let result = match read_secrets(&gw.config.webhook.secret_files) {
        Err(e) => Err(("network", e)),
        Ok(secrets) => {
            let body = serde_json::to_vec(&body(gw, &m, file.as_deref())).unwrap_or_default();
            let ts = unix_now();
            let sig = sign(&secrets, &m.id, ts, &body);
            let t0 = Instant::now();
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", &m.id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body)
                .send()
                .await;
            gw.metrics
                .webhook_seconds
                .observe(t0.elapsed().as_secs_f64());
            match r {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err((
                    "http_error",
                    format!("the webhook answered {}", resp.status()),
                )),
                Err(e) => Err(("network", format!("cannot reach the webhook: {e}"))),
            }
        }
    };
    let dead_after = Duration::from_secs(gw.config.webhook.dead_letter_after_secs);
    let outcome = result.clone();
    let recorded = gw
        .store
        .run(move |s| {
            s.in_transition(seq, &[InState::Pending], |m| {
                m.attempts += 1;
                match outcome {
                    Ok(()) => {
                        m.state = InState::Delivered;
                        m.delivered_at_ms = Some(unix_ms());
                        m.last_error = None;
                    }
                    Err((_, why)) => {
                        m.last_error = Some(why);
                        let waited =
                            Duration::from_millis(unix_ms().saturating_sub(m.queued_at_ms));
                        if waited >= dead_after {
                            m.state = InState::Dead;
                        }
                    }
                }
            })
        })
        .await;
    let m = match recorded {
        Ok(Some((_, m))) => m,
        // Acknowledged by a pull (or gone) meanwhile: nothing more to do.
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, id = %m.id, "cannot record the webhook outcome; it will be sent again");
            return Some(Duration::from_secs(5));
        }
    };
    let label = match &result {
        Ok(()) => "ok",
        Err((label, _)) => label,
    };
    gw.metrics
        .webhook_attempts
        .with_label_values(&[label])
        .inc();
    gw.metrics
        .inbox_pending
        .set(gw.store.pending_len.load(Ordering::Relaxed) as i64);
    match m.state {
        InState::Delivered => {
            gw.metrics.delivered.with_label_values(&["webhook"]).inc();
            gw.inbox_space.notify_one();
            None
        }
        InState::Dead => {
            gw.metrics.dead_lettered.inc();
            gw.metrics.dead_letters.inc();
            gw.inbox_space.notify_one();
            tracing::warn!(id = %m.id, attempts = m.attempts, error = ?m.last_error, "dead-lettered: the webhook did not accept it in time (replay with POST /v1/dead-letters/ID/replay)");
            None
        }
        InState::Pending => {
            let w = backoff(&gw.config.webhook, m.attempts);
            tracing::info!(id = %m.id, attempts = m.attempts, error = ?m.last_error, retry_in = ?w, "webhook attempt failed");
            Some(w)
        }
    }
}

/// Exponential backoff with jitter: `min · 2^(n-1)`, capped, each drawn in [b/2, b].
pub fn backoff(c: &crate::config::WebhookConfig, attempts: u32) -> Duration {
    let b = (c.min_backoff_secs * 2f64.powi(attempts.saturating_sub(1).min(30) as i32))
        .min(c.max_backoff_secs);
    Duration::from_secs_f64(b * (0.5 + rand::random::<f64>() * 0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // From the Standard Webhooks specification: secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
        // (base64 after the prefix), id msg_p5jXN8AQM9LWM0D4loKWxJek, timestamp 1614265330.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_secrets_sign_twice_and_backoff_grows_to_its_cap() {
        let s = sign(&[b"a".to_vec(), b"b".to_vec()], "id", 1, b"{}");
        assert_eq!(s.split(' ').count(), 2);
        let c = crate::config::WebhookConfig::default();
        assert!(backoff(&c, 1) <= Duration::from_secs(1));
        assert!(backoff(&c, 40) <= Duration::from_secs_f64(c.max_backoff_secs));
        assert!(backoff(&c, 40) >= Duration::from_secs_f64(c.max_backoff_secs / 2.0));
    }
}
