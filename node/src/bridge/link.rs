//! One Echo connection, either direction: reads frames with the splitter's bounds (junk
//! closes the connection, counted by reason), handles link-local control frames (identities,
//! the Spot-On-Lite marker, keep-alives), hands data frames to the bridge, and writes what the
//! hub queues for it — after the start delay, with capabilities (and, towards a Spot-On-Lite
//! listener, the `0111` marker) at every keep-alive.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use echomesh_proto::bridge::filter::Registered;
use echomesh_proto::bridge::frame::{self, Frame, TYPE_IDENTITY, TYPE_SPOT_ON_LITE};
use echomesh_proto::bridge::{Junk, Splitter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::hub::{Direction, Link, Promotion};
use crate::ctx::Ctx;
use crate::rate::TokenBucket;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum End {
    #[error("closed by the other side")]
    Closed,
    #[error("node stopping")]
    Shutdown,
    #[error("silent for {0:?}")]
    Idle(Duration),
    #[error("junk: {0}")]
    Junk(Junk),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("write stalled for {0:?}")]
    WriteStalled(Duration),
}

const READ_CHUNK: usize = 16 * 1024;
const WRITE_BATCH: usize = 256 * 1024;

/// Serve one connection until it ends; the link is registered with the hub meanwhile.
pub async fn run<S>(ctx: Arc<Ctx>, link: Arc<Link>, stream: S) -> End
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    // Registered while this runs, also when the caller drops it (a removed outgoing link).
    struct Registered<'a>(&'a Ctx, u64);
    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            self.0.bridge.remove_link(self.1);
        }
    }
    ctx.bridge.add_link(link.clone());
    let registered = Registered(&ctx, link.key);
    let (rd, wr) = tokio::io::split(stream);
    let end = tokio::select! {
        _ = ctx.shutdown.cancelled() => End::Shutdown,
        e = read_loop(&ctx, &link, rd) => e,
        e = write_loop(&ctx, &link, wr) => e,
    };
    drop(registered);
    match &end {
        End::Junk(j) => {
            ctx.metrics
                .bridge
                .junk
                .with_label_values(&[j.label()])
                .inc();
            tracing::info!(remote = %link.remote, reason = j.label(), "closed an Echo connection that sent junk");
        }
        e if link.is_neighbor() => {
            tracing::info!(remote = %link.remote, reason = %e, "Echo link ended")
        }
        e => tracing::debug!(remote = %link.remote, reason = %e, "Echo connection ended"),
    }
    end
}

async fn read_loop<R: AsyncRead + Unpin>(ctx: &Arc<Ctx>, link: &Arc<Link>, mut rd: R) -> End {
    let cfg = &ctx.bridge.cfg;
    let idle = Duration::from_secs(cfg.idle_timeout_secs);
    let mut split = Splitter::new(
        cfg.max_frame_bytes,
        Duration::from_secs(cfg.frame_timeout_secs),
    );
    let mut bucket = TokenBucket::new(cfg.rate, Instant::now());
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let now = Instant::now();
        let silent_until = now + idle;
        let deadline = split
            .deadline()
            .map_or(silent_until, |d| d.min(silent_until));
        let n = match tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await {
            // The timer woke at the earlier deadline: the frame's, or the silence's.
            Err(_) if deadline < silent_until => return End::Junk(Junk::Incomplete),
            Err(_) => return End::Idle(idle),
            Ok(Ok(0)) => return End::Closed,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return End::Io(e),
        };
        let now = Instant::now();
        split.push(&buf[..n], now);
        loop {
            match split.next_frame(now) {
                Ok(Some(f)) => {
                    if let Err(j) = on_frame(ctx, link, f, &mut bucket).await {
                        return End::Junk(j);
                    }
                }
                Ok(None) => break,
                Err(j) => return End::Junk(j),
            }
        }
    }
}

async fn on_frame(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    f: Bytes,
    bucket: &mut TokenBucket,
) -> Result<(), Junk> {
    let m = &ctx.metrics.bridge;
    let kind = match frame::classify(&f) {
        Ok(k) => k,
        // Spot-On-Lite floods whatever its clients send, junk included: from a neighbor, a
        // well-delimited junk frame is dropped (counted) and the link stays. A client that
        // sends one is disconnected.
        Err(j) if link.is_neighbor() => {
            m.junk.with_label_values(&[j.label()]).inc();
            tracing::debug!(remote = %link.remote, reason = j.label(), "dropped a junk frame relayed by an Echo neighbor");
            return Ok(());
        }
        Err(j) => return Err(j),
    };
    if link.direction == Direction::In
        && !link.is_neighbor()
        && ctx.smoke.cfg.enabled
        && ctx.smoke.view().private_server
        && !link.login().authenticated
    {
        crate::smoke::login::gate(ctx, link, &kind);
        return Ok(());
    }
    match kind {
        Frame::Empty => {}
        Frame::Control { ty, content } if ty == TYPE_IDENTITY => {
            // Servers share their clients' identities with each other; a relay that is
            // not Spot-On-Lite has no use for them.
            if link.is_neighbor() {
                return Ok(());
            }
            match frame::parse_identity(content) {
                Some(id) => {
                    if link.identities().register(id, Instant::now()) == Registered::Full {
                        m.dropped.with_label_values(&["identities_full"]).inc();
                    }
                }
                None => m.dropped.with_label_values(&["bad_identity"]).inc(),
            }
        }
        Frame::Control { ty, .. } if ty == TYPE_SPOT_ON_LITE => {
            if link.direction == Direction::In && !link.is_neighbor() {
                if super::neighbor_allowed(ctx, link) {
                    match ctx.bridge.promote(link) {
                        Promotion::Done => {
                            tracing::info!(remote = %link.remote, "Echo neighbor (Spot-On-Lite) connected; it gets the unfiltered stream")
                        }
                        Promotion::Already => {}
                        Promotion::LinksFull => {
                            m.markers_refused.inc();
                            tracing::warn!(remote = %link.remote, limit = ctx.bridge.cfg.max_links, "Echo neighbor refused: bridge.max_links reached; it stays a filtered client");
                        }
                    }
                } else {
                    m.markers_refused.inc();
                    tracing::debug!(remote = %link.remote, "0111 from a connection not allowed as an Echo neighbor (bridge.neighbor_networks / neighbor_certs); it stays a filtered client");
                }
            }
        }
        Frame::Control { .. } => {}
        Frame::Data { .. } => {
            let delay = bucket.take_and_delay(1, f.len(), Instant::now());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            link.frames_in.fetch_add(1, Ordering::Relaxed);
            m.frames.with_label_values(&["in"]).inc();
            if crate::smoke::service::inspect(ctx, link, &f).await
                == crate::smoke::service::Outcome::Consumed
            {
                return Ok(());
            }
            super::ingest(ctx, link.key, f);
        }
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(ctx: &Ctx, link: &Link, mut wr: W) -> End {
    let cfg = &ctx.bridge.cfg;
    tokio::time::sleep(Duration::from_millis(cfg.start_delay_ms)).await;
    let stall = Duration::from_secs(cfg.idle_timeout_secs);
    let uuid = format!("{{{}}}", hex::encode(rand::random::<[u8; 16]>()));
    let mut hello = frame::capabilities_frame(&uuid, cfg.max_frame_bytes);
    if link.direction == Direction::Out {
        // To a Spot-On-Lite listener: "I am a server too" (unfiltered stream).
        hello.extend_from_slice(&frame::spot_on_lite_frame());
    }
    let hello = Bytes::from(hello);
    let mut keepalive = tokio::time::interval(Duration::from_secs(cfg.keepalive_secs));
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let (write, data) = tokio::select! {
            _ = keepalive.tick() => (vec![hello.clone()], 0),
            more = link.queue.pop_batch(WRITE_BATCH, &mut batch) => {
                if more.is_none() {
                    return End::Closed;
                }
                let n = batch.len() as u64;
                (std::mem::take(&mut batch), n)
            }
        };
        let res = tokio::time::timeout(stall, async {
            // One frame per write: a Spot-On-Lite peer child hashes what each read returns.
            for f in &write {
                wr.write_all(f).await?;
            }
            wr.flush().await
        })
        .await;
        match res {
            Err(_) => return End::WriteStalled(stall),
            Ok(Err(e)) => return End::Io(e),
            Ok(Ok(())) => {}
        }
        if data > 0 {
            link.frames_out.fetch_add(data, Ordering::Relaxed);
            ctx.metrics
                .bridge
                .frames
                .with_label_values(&["out"])
                .inc_by(data);
        }
    }
}
