//! Outgoing Echo links to Spot-On-Lite (or Spot-On) listeners: dial, TLS with the peer's
//! certificate pinned by SHA-256 (from the address, else on first use and kept), serve the
//! connection, and dial again with the protocol's backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use echomesh_proto::backoff::Backoff;
use echomesh_proto::bridge::EchoUrl;
use tokio_util::sync::CancellationToken;

use super::hub::{Direction, LinkState, OutgoingState};
use crate::ctx::Ctx;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// node_state keys: certificates pinned on first use, and links added through the API.
const PIN_PREFIX: &str = "bridge-pin/";
const LINK_PREFIX: &str = "bridge-link/";

/// Register an outgoing link and start dialing it. `origin` is `static` or `admin`.
pub async fn add(ctx: &Arc<Ctx>, spec: &str, origin: &'static str) -> anyhow::Result<String> {
    let url: EchoUrl = spec.parse()?;
    let id = url.id();
    let stop = ctx.shutdown.child_token();
    let st = OutgoingState {
        url: url.clone(),
        origin,
        state: LinkState::Connecting,
        since: Instant::now(),
        last_error: None,
        link: None,
        cert_sha256: url.cert_sha256,
        stop: stop.clone(),
    };
    ctx.bridge
        .add_outgoing(id.clone(), st)
        .map_err(anyhow::Error::msg)?;
    if origin == "admin" {
        if let Err(e) = ctx
            .store
            .put_state(
                format!("{LINK_PREFIX}{id}").into_bytes(),
                url.to_string().into_bytes(),
            )
            .await
        {
            ctx.bridge.remove_outgoing(&id);
            return Err(e).context("storing the Echo link");
        }
    }
    let c = ctx.clone();
    let i = id.clone();
    ctx.tasks.spawn(run(c, i, url, stop));
    Ok(id)
}

/// Remove an outgoing link (and forget its pin); `Err` names why not.
pub async fn remove(ctx: &Ctx, id: &str) -> anyhow::Result<OutgoingState> {
    let Some(st) = ctx
        .bridge
        .outgoing()
        .into_iter()
        .find(|(k, _)| k == id)
        .map(|x| x.1)
    else {
        bail!("{id} is not an Echo link of this node");
    };
    if st.origin == "static" {
        bail!("this Echo link comes from the configuration (bridge.neighbors or --bridge-neighbor); remove it there and restart");
    }
    ctx.store
        .delete_state(format!("{LINK_PREFIX}{id}").into_bytes())
        .await?;
    ctx.store
        .delete_state(format!("{PIN_PREFIX}{}", st.url.addr).into_bytes())
        .await?;
    ctx.bridge.remove_outgoing(id);
    if let Some(k) = st.link {
        ctx.bridge.remove_link(k);
    }
    tracing::info!(link = %id, url = %st.url, "Echo link removed through the admin API");
    Ok(st)
}

/// Links added through the admin API earlier.
pub async fn persisted(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    let items = ctx
        .store
        .scan_state(LINK_PREFIX.as_bytes().to_vec())
        .await?;
    Ok(items
        .into_iter()
        .filter_map(|(_, v)| String::from_utf8(v).ok())
        .collect())
}

async fn run(ctx: Arc<Ctx>, id: String, url: EchoUrl, stop: CancellationToken) {
    let p = &ctx.cfg.peer;
    let mut backoff = Backoff::new(
        Duration::from_millis(p.backoff_min_ms),
        Duration::from_millis(p.backoff_max_ms),
    );
    loop {
        ctx.bridge.update_outgoing(&id, |s| {
            if s.state != LinkState::Connecting {
                s.state = LinkState::Connecting;
                s.since = Instant::now();
            }
        });
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect_and_serve(&ctx, &id, &url, &mut backoff) => r,
        };
        let err = match result {
            Ok(end) => end,
            Err(e) => format!("{e:#}"),
        };
        ctx.bridge.update_outgoing(&id, |s| {
            s.state = LinkState::Down;
            s.since = Instant::now();
            s.link = None;
            s.last_error = Some(err.clone());
        });
        let wait = backoff.ended(Instant::now(), rand::random::<f64>());
        tracing::debug!(link = %id, url = %url, error = %err, ?wait, "Echo link down; dialing again");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One connection: dial, handshake, serve until it ends. `Ok` carries why it ended.
async fn connect_and_serve(
    ctx: &Arc<Ctx>,
    id: &str,
    url: &EchoUrl,
    backoff: &mut Backoff,
) -> anyhow::Result<String> {
    let remote = tokio::net::lookup_host(&url.addr)
        .await
        .with_context(|| format!("resolving {}", url.addr))?
        .next()
        .with_context(|| format!("{} has no address", url.addr))?;
    let sock = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(remote))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {remote} within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to {remote}"))?;
    let _ = sock.set_nodelay(true);
    let key = ctx.next_conn_key();
    if !url.tls {
        let link = ctx
            .bridge
            .new_link(key, Direction::Out, remote, None, Some(id.into()));
        up(ctx, id, key, None, backoff);
        return Ok(super::link::run(ctx.clone(), link, sock).await.to_string());
    }
    let pin_key = format!("{PIN_PREFIX}{}", url.addr).into_bytes();
    let stored = match ctx.store.get_state(pin_key.clone()).await? {
        Some(v) => <[u8; 32]>::try_from(v.as_slice()).ok(),
        None => None,
    };
    let pin = url.cert_sha256.or(stored);
    let verifier = super::tls::PinVerifier::new(pin);
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(super::tls::client_config(verifier.clone())?));
    let host = url.addr.rsplit_once(':').map_or(url.addr.as_str(), |h| h.0);
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(remote.ip().into()));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, sock)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let seen = verifier.seen();
            if seen.mismatch {
                ctx.metrics
                    .bridge
                    .connections_rejected
                    .with_label_values(&["pin_mismatch"])
                    .inc();
                bail!(
                    "certificate of {} changed: pinned sha256 {}, presented {}. If the peer's certificate was replaced on purpose, remove this link and add it again with ?cert-sha256=<new>",
                    url.addr,
                    pin.map(hex::encode).unwrap_or_default(),
                    seen.sha256.map(hex::encode).unwrap_or_default()
                );
            }
            ctx.metrics
                .bridge
                .connections_rejected
                .with_label_values(&["tls"])
                .inc();
            return Err(e).with_context(|| format!("TLS handshake with {remote}"));
        }
        Err(_) => {
            ctx.metrics
                .bridge
                .connections_rejected
                .with_label_values(&["timeout"])
                .inc();
            bail!("TLS handshake with {remote} took longer than {HANDSHAKE_TIMEOUT:?}");
        }
    };
    let seen = verifier.seen().sha256;
    if pin.is_none() {
        if let Some(c) = seen {
            ctx.store.put_state(pin_key, c.to_vec()).await?;
            tracing::info!(link = %id, url = %url, cert_sha256 = %hex::encode(c), "pinned the Echo peer's certificate on first use");
        }
    }
    let link = ctx
        .bridge
        .new_link(key, Direction::Out, remote, seen, Some(id.into()));
    up(ctx, id, key, seen, backoff);
    Ok(super::link::run(ctx.clone(), link, tls).await.to_string())
}

fn up(ctx: &Ctx, id: &str, key: u64, cert: Option<[u8; 32]>, backoff: &mut Backoff) {
    backoff.connected(Instant::now());
    ctx.bridge.update_outgoing(id, |s| {
        s.state = LinkState::Up;
        s.since = Instant::now();
        s.link = Some(key);
        s.last_error = None;
        if cert.is_some() {
            s.cert_sha256 = cert;
        }
    });
    tracing::info!(link = %id, "Echo link up");
}
