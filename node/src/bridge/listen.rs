//! The Echo listener: TCP, TLS 1.2/1.3 with the kept certificate (or plain when asked for),
//! a bound on concurrent connections (beyond it, connections are closed at once and counted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use super::hub::Direction;
use crate::ctx::Ctx;

/// How long a TLS handshake may take (Smoke allows 20 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn start(ctx: &Arc<Ctx>, addr: SocketAddr) -> anyhow::Result<()> {
    let acceptor = if ctx.bridge.cfg.plain {
        None
    } else {
        let cert = super::tls::load_or_create(&ctx.cfg.data_dir)?;
        *ctx.bridge
            .listener_cert
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(cert.sha256());
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            super::tls::server_config(&cert)?,
        )))
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the Echo listener on {addr} (bridge.listen / --bridge-listen)")
    })?;
    let local = listener.local_addr()?;
    *ctx.bridge
        .listen_addr
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(local);
    tracing::info!(
        addr = %local,
        tls = acceptor.is_some(),
        cert_sha256 = %ctx.bridge.listener_cert.lock().unwrap_or_else(|p| p.into_inner()).map(hex::encode).unwrap_or_default(),
        "Echo listener serving"
    );
    let c = ctx.clone();
    ctx.tasks.spawn(accept_loop(c, listener, acceptor));
    Ok(())
}

async fn accept_loop(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(ctx.bridge.cfg.max_connections));
    let rejected = |r: &str| {
        ctx.metrics
            .bridge
            .connections_rejected
            .with_label_values(&[r])
            .inc()
    };
    loop {
        let (sock, remote) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "Echo listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            rejected("limit");
            tracing::debug!(%remote, limit = ctx.bridge.cfg.max_connections, "Echo connection refused: bridge.max_connections reached");
            continue;
        };
        let _ = sock.set_nodelay(true);
        let c = ctx.clone();
        let acceptor = acceptor.clone();
        ctx.tasks.spawn(async move {
            let _permit = permit;
            let key = c.next_conn_key();
            match acceptor {
                None => {
                    let link = c.bridge.new_link(key, Direction::In, remote, None, None);
                    super::link::run(c.clone(), link, sock).await;
                }
                Some(acc) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(sock)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| super::tls::sha256(c));
                            let link = c.bridge.new_link(key, Direction::In, remote, cert, None);
                            super::link::run(c.clone(), link, tls).await;
                        }
                        Ok(Err(e)) => {
                            c.metrics
                                .bridge
                                .connections_rejected
                                .with_label_values(&["tls"])
                                .inc();
                            tracing::debug!(%remote, error = %e, "Echo TLS handshake failed");
                        }
                        Err(_) => {
                            c.metrics
                                .bridge
                                .connections_rejected
                                .with_label_values(&["timeout"])
                                .inc();
                            tracing::debug!(%remote, "Echo TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}
