//! Drain: take a node out of service without losing anything. Not ready at once (readyz 503),
//! new client sessions refused with a pointer elsewhere, every ozone this node holds handed to
//! its owners among the *other* live members (digest-compared, so only what they lack moves),
//! neighbor queues flushed; then "safe to stop". `undrain` reverses it. SIGTERM runs the same
//! sequence with a deadline before the node exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::node::Ctx;
use crate::ozone::{placement, service};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub draining: bool,
    /// `serving`, `handing_off`, `flushing`, `done` or `timed_out`.
    pub phase: String,
    pub ozones_total: usize,
    pub ozones_done: usize,
    /// Bytes still queued towards neighbors.
    pub queued_bytes: usize,
    pub safe_to_stop: bool,
    pub detail: Option<String>,
}

pub struct Drain {
    status: Mutex<DrainStatus>,
    /// Bumped by every drain/undrain, so an older drain task stops touching the status.
    generation: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            status: Mutex::new(DrainStatus {
                phase: "serving".into(),
                ..Default::default()
            }),
            generation: AtomicU64::new(0),
        }
    }
}

impl Drain {
    pub fn status(&self) -> DrainStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, gen: u64, f: impl FnOnce(&mut DrainStatus)) -> bool {
        if self.generation.load(Ordering::Acquire) != gen {
            return false;
        }
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
        true
    }
}

/// Start draining (idempotent: a drain in progress keeps going).
pub fn start(ctx: &Arc<Ctx>, deadline: Duration) -> DrainStatus {
    let d = &ctx.drain;
    if ctx.draining.swap(true, Ordering::SeqCst) {
        return d.status();
    }
    ctx.metrics.ready.set(0);
    let gen = d.generation.fetch_add(1, Ordering::AcqRel) + 1;
    *d.status.lock().unwrap_or_else(|p| p.into_inner()) = DrainStatus {
        draining: true,
        phase: "handing_off".into(),
        ..Default::default()
    };
    tracing::info!(
        deadline_secs = deadline.as_secs(),
        "draining: not ready, refusing new clients, handing off ozones"
    );
    let c = ctx.clone();
    ctx.tasks.spawn(async move { run(c, deadline, gen).await });
    d.status()
}

/// Serve again.
pub fn undrain(ctx: &Ctx) -> DrainStatus {
    let d = &ctx.drain;
    d.generation.fetch_add(1, Ordering::AcqRel);
    ctx.draining.store(false, Ordering::SeqCst);
    ctx.metrics.ready.set(1);
    *d.status.lock().unwrap_or_else(|p| p.into_inner()) = DrainStatus {
        phase: "serving".into(),
        ..Default::default()
    };
    tracing::info!("undrained: serving again");
    d.status()
}

async fn run(ctx: Arc<Ctx>, deadline: Duration, gen: u64) {
    let until = Instant::now() + deadline;
    let d = &ctx.drain;
    let addrs = service::list(&ctx).await.unwrap_or_default();
    d.update(gen, |s| s.ozones_total = addrs.len());
    let mut failed = 0usize;
    for addr in addrs {
        if Instant::now() > until || !d.update(gen, |_| {}) {
            break;
        }
        let members = service::Members::now(&ctx);
        let others: Vec<_> = members.peers.iter().map(|n| n.id).collect();
        let mut ok = !others.is_empty() || members.known == 1;
        for owner in placement::owners(&addr, &others, members.r) {
            if let Some(n) = members.peers.iter().find(|n| n.id == owner) {
                if service::sync_ozone(&ctx, n, addr).await.is_err() {
                    ok = false;
                }
            }
        }
        if !ok {
            failed += 1;
        }
        d.update(gen, |s| s.ozones_done += 1);
    }
    d.update(gen, |s| s.phase = "flushing".into());
    loop {
        let queued: usize = ctx.neighbors().all().iter().map(|n| n.queue.bytes()).sum();
        d.update(gen, |s| s.queued_bytes = queued);
        if queued == 0 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let timed_out = Instant::now() > until;
    d.update(gen, |s| {
        if timed_out || failed > 0 {
            s.phase = "timed_out".into();
            s.detail = Some(format!(
                "{} of {} ozones not handed off, {} bytes still queued",
                failed + s.ozones_total.saturating_sub(s.ozones_done),
                s.ozones_total,
                s.queued_bytes
            ));
        } else {
            s.phase = "done".into();
            s.safe_to_stop = true;
        }
    });
    let st = d.status();
    tracing::info!(phase = %st.phase, ozones = st.ozones_total, detail = ?st.detail, "drain finished");
}
