//! Node assembly: opens storage, binds QUIC and the admin API, spawns the tasks, and stops
//! them through one mechanism (a cancellation token plus a task tracker).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::Subscribers;
use crate::config::{Config, NeighborSpec, ADMIN_TOKEN_FILE, RUNTIME_FILE};
use crate::ctx::Ctx;
use crate::echo::{EchoConfig, EchoEngine};
use crate::identity::{write_private, Identity, NodeId};
use crate::invite::InviteBook;
use crate::keydir::{self, KeyDirectory};
use crate::metrics::{DropReason, HandshakeReason, Metrics};
use crate::peer::{self, NeighborTable};
use crate::router::{ControlChannel, Router};
use crate::store::{NeighborOrigin, NeighborRecord, Store};
use crate::{tags, wire};
use echomesh_proto::membership;

pub use echomesh_proto::admin::RuntimeInfo;

/// A started node.
pub struct NodeHandle {
    pub ctx: Arc<Ctx>,
    pub quic_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl NodeHandle {
    pub fn id(&self) -> NodeId {
        self.ctx.identity.id
    }

    /// Ask the node to stop (idempotent).
    pub fn shutdown(&self) {
        self.ctx.shutdown.cancel();
    }

    /// Stop and wait for every task to finish (bounded).
    pub async fn stop(self) {
        self.ctx.shutdown.cancel();
        self.wait().await;
    }

    /// Wait until the node has been asked to stop and its tasks have ended.
    pub async fn wait(&self) {
        self.ctx.shutdown.cancelled().await;
        self.ctx.ready.store(false, Ordering::SeqCst);
        self.ctx.metrics.ready.set(0);
        for n in self.ctx.neighbors().all() {
            n.close_all(wire::close::SHUTDOWN, b"node stopping");
            n.queue.close();
        }
        self.ctx.endpoint.close(
            quinn::VarInt::from_u32(wire::close::SHUTDOWN),
            b"node stopping",
        );
        self.ctx.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.ctx.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.ctx.tasks.len(),
                "tasks still running after 5 s; stopping anyway"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ctx.endpoint.wait_idle()).await;
        let _ = std::fs::remove_file(self.ctx.cfg.data_dir.join(RUNTIME_FILE));
        tracing::info!("node stopped");
    }
}

fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
    }
    Ok(())
}

/// Read the admin token, creating it (32 random bytes, hex, mode 0600) on first start.
pub fn load_or_create_admin_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let t = t.trim().to_string();
        anyhow::ensure!(
            t.len() >= 32,
            "admin token in {} is too short; delete the file to have a new one made at start",
            path.display()
        );
        return Ok(t);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Create the data directory, identity and admin token when missing, and load them.
pub fn init_data_dir(dir: &Path) -> anyhow::Result<(Identity, String)> {
    create_data_dir(dir)?;
    let identity = Identity::load_or_create(dir)?;
    let token = load_or_create_admin_token(dir)?;
    Ok((identity, token))
}

/// Start a node: everything is bound and serving when this returns.
pub async fn start(cfg: Config) -> anyhow::Result<NodeHandle> {
    cfg.validate()?;
    let (identity, admin_token) = init_data_dir(&cfg.data_dir)?;
    let store = Store::open(&cfg.data_dir).await?;
    let metrics = Arc::new(Metrics::new());

    let endpoint = crate::transport::bind(&identity, cfg.listen, &cfg.peer.tuning())?;
    let quic_addr = endpoint
        .local_addr()
        .context("reading bound QUIC address")?;
    let advertise = if !cfg.advertise.is_empty() {
        cfg.advertise.clone()
    } else if quic_addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), quic_addr.port()).to_string()
    } else {
        quic_addr.to_string()
    };

    let engine = EchoEngine::new(
        EchoConfig {
            seen_ttl: Duration::from_secs(cfg.echo.seen_ttl_secs),
            seen_capacity: cfg.echo.seen_capacity,
            max_hops: cfg.echo.default_hops,
        },
        Instant::now(),
    );
    let neighbors = NeighborTable::new(
        cfg.limits.max_neighbors,
        cfg.limits.neighbor_queue_bytes,
        cfg.limits.neighbor_rate,
        cfg.peer.detector(),
        metrics.clone(),
    );
    let keydir = KeyDirectory::open(store.clone(), metrics.clone(), cfg.limits.max_key_bundles)
        .await
        .context("opening the key directory")?;
    let ozones = {
        let (st, limits) = (store.clone(), cfg.ozone.limits(cfg.echo.max_payload_bytes));
        tokio::task::spawn_blocking(move || {
            crate::ozone::store::OzoneStore::open_blocking(st, limits)
        })
        .await
        .context("opening ozone storage")?
        .context("opening ozone storage")?
    };
    let ozones = Arc::new(ozones);
    let ozone_commit = crate::ozone::commit::GroupCommit::start(ozones.clone(), metrics.clone())
        .context("starting the ozone writer thread")?;
    metrics.ozone_bytes.set(ozones.total_bytes() as i64);
    metrics
        .ozone_budget_bytes
        .set(i64::try_from(cfg.ozone.max_total_bytes).unwrap_or(i64::MAX));
    let (keydir_ch, keydir_rx) = ControlChannel::new(tags::keydir_tag(), DropReason::KeydirBusy);
    let (topology_ch, topology_rx) =
        ControlChannel::new(tags::topology_tag(), DropReason::TopologyBusy);
    let smoke = crate::smoke::Smoke::open(cfg.smoke.clone(), store.clone(), metrics.clone())
        .await
        .context("opening the Smoke configuration")?;
    let (smoke_ch, smoke_rx) = ControlChannel::new(tags::smoke_tag(), DropReason::SmokeBusy);
    let (mut bridge_ch, bridge_rx) =
        ControlChannel::new(tags::bridge_tag(), DropReason::BridgeBusy);
    // Echo frames reach a client that subscribes to the bridge tag by name (`tail --echo-frames`).
    bridge_ch.on_request = true;
    // Grafts find packets by ID only under lazy push; a flooding node needs no ID index.
    let log = crate::echo::PacketLog::new(cfg.echo.log_bytes, cfg.echo.log_ttl(), rand::random())
        .indexed(cfg.echo.broadcast == echomesh_proto::broadcast::Mode::Lazy);
    let router = Arc::new(Router::new(
        identity.id,
        engine,
        log,
        echomesh_proto::broadcast::BroadcastConfig {
            graft_timeout: Duration::from_millis(cfg.echo.graft_timeout_ms),
            ..echomesh_proto::broadcast::BroadcastConfig::new(cfg.echo.broadcast)
        },
        neighbors,
        Subscribers::new(cfg.limits.max_clients),
        metrics.clone(),
        cfg.echo.max_payload_bytes,
        vec![keydir_ch, topology_ch, bridge_ch, smoke_ch],
    ));
    let me = identity.id;
    let ctx = Arc::new(Ctx {
        invites: Mutex::new(InviteBook::new(cfg.invite.max_outstanding)),
        handshakes: Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_handshakes)),
        identity,
        endpoint,
        router,
        store,
        keydir,
        ozones,
        ozone_commit,
        drain: crate::drain::Drain::default(),
        topology: crate::topology::Topology::new(me),
        bridge: crate::bridge::hub::Hub::new(
            cfg.bridge.effective(cfg.echo.max_payload_bytes),
            metrics.clone(),
        ),
        smoke,
        live: crate::reload::LiveConfig {
            source: Mutex::new(None),
            current: Mutex::new(cfg.clone()),
        },
        metrics,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        started: Instant::now(),
        ready: AtomicBool::new(false),
        advertise,
        next_conn: AtomicU64::new(1),
        cfg,
    });

    // Neighbors: persisted (joins) first, then static ones from config (which win on mode).
    let (persisted, corrupt) = ctx.store.neighbors().await?;
    for e in corrupt {
        tracing::error!(error = %e, "skipping corrupt neighbor record");
    }
    for rec in persisted {
        if let Err(e) = crate::peer::session::add_neighbor(&ctx, rec).await {
            tracing::error!(error = %e, "cannot restore neighbor");
        }
    }
    for spec in &ctx.cfg.neighbors {
        let spec: NeighborSpec = spec.parse().map_err(anyhow::Error::msg)?;
        if spec.id == ctx.identity.id {
            tracing::warn!(neighbor = %spec, "ignoring a static neighbor that is this node itself");
            continue;
        }
        crate::peer::session::add_neighbor(
            &ctx,
            NeighborRecord {
                id: spec.id,
                addr: Some(spec.addr.clone()),
                mode: spec.mode,
                origin: NeighborOrigin::Static,
                added_unix: 0,
            },
        )
        .await?;
    }

    {
        let c = ctx.clone();
        ctx.tasks
            .spawn(crate::verify::run(c, bridge_rx, crate::bridge::verify));
        let c = ctx.clone();
        ctx.tasks
            .spawn(crate::verify::run(c, smoke_rx, crate::smoke::flood::verify));
    }
    crate::smoke::flood::add_configured_ozones(&ctx).await;
    crate::bridge::start(&ctx).await?;

    let admin_listener = tokio::net::TcpListener::bind(ctx.cfg.admin)
        .await
        .with_context(|| {
            format!(
                "binding admin API on {} (set --admin to another address)",
                ctx.cfg.admin
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;
    {
        let c = ctx.clone();
        ctx.tasks
            .spawn(crate::admin::serve(c, admin_listener, admin_token));
    }
    {
        let c = ctx.clone();
        ctx.tasks.spawn(accept_loop(c));
    }
    {
        let c = ctx.clone();
        ctx.tasks.spawn(housekeeping(c));
    }
    {
        let c = ctx.clone();
        ctx.tasks.spawn(peer::liveness::run(c));
    }
    {
        let c = ctx.clone();
        ctx.tasks.spawn(crate::drain::run(c));
    }
    {
        let c = ctx.clone();
        ctx.tasks
            .spawn(async move { c.router.run_broadcast_timers(c.shutdown.clone()).await });
    }
    {
        let c = ctx.clone();
        ctx.tasks
            .spawn(crate::verify::run(c, keydir_rx, keydir::flood::verify));
    }
    {
        let c = ctx.clone();
        ctx.tasks.spawn(crate::verify::run(
            c,
            topology_rx,
            crate::topology::flood::verify,
        ));
    }

    let info = RuntimeInfo {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        id: ctx.identity.id.short(),
        fingerprint: ctx.identity.id.fingerprint(),
        quic: quic_addr,
        admin: admin_addr,
    };
    let json = serde_json::to_vec_pretty(&info)?;
    write_private(&ctx.cfg.data_dir.join(RUNTIME_FILE), &json)?;

    ctx.ready.store(true, Ordering::SeqCst);
    ctx.metrics.ready.set(1);
    {
        let c = ctx.clone();
        ctx.tasks.spawn(crate::topology::flood::announce_loop(c));
    }
    tracing::info!(
        id = %ctx.identity.id,
        fingerprint = %ctx.identity.id.fingerprint(),
        quic = %quic_addr,
        admin = %admin_addr,
        cluster = %ctx.cfg.cluster,
        neighbors = ctx.neighbors().len(),
        "node serving"
    );
    Ok(NodeHandle {
        ctx,
        quic_addr,
        admin_addr,
    })
}

async fn accept_loop(ctx: Arc<Ctx>) {
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            i = ctx.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let permit = match ctx.handshakes.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                ctx.metrics
                    .connections_rejected
                    .with_label_values(&["handshakes_busy"])
                    .inc();
                tracing::debug!(remote = %incoming.remote_address(), "refusing connection: too many handshakes in flight");
                incoming.refuse();
                continue;
            }
        };
        let c = ctx.clone();
        ctx.tasks.spawn(async move {
            let remote = incoming.remote_address();
            let timeout = Duration::from_millis(c.cfg.peer.handshake_timeout_ms);
            let conn = match tokio::time::timeout(timeout, async { incoming.accept()?.await }).await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    let reason = classify_accept_error(&e);
                    c.metrics.handshake_failed(reason);
                    tracing::info!(%remote, reason = reason.label(), error = %e, "incoming handshake failed");
                    return;
                }
                Err(_) => {
                    c.metrics.handshake_failed(HandshakeReason::Timeout);
                    tracing::info!(%remote, "incoming handshake timed out");
                    return;
                }
            };
            drop(permit);
            match echomesh_client::tls::alpn(&conn).as_deref() {
                Some(wire::ALPN_PEER) => peer::session::serve_inbound(c, conn).await,
                Some(wire::ALPN_CLIENT) => crate::client::serve(c, conn).await,
                Some(wire::ALPN_JOIN) => peer::join::serve_inbound(c, conn).await,
                _ => {
                    c.metrics.handshake_failed(HandshakeReason::Alpn);
                    tracing::info!(%remote, "refusing connection without a known ALPN");
                    conn.close(quinn::VarInt::from_u32(wire::close::ALPN), b"unknown ALPN");
                }
            }
        });
    }
}

fn classify_accept_error(e: &quinn::ConnectionError) -> HandshakeReason {
    // TLS alert 120: no_application_protocol.
    let alpn = quinn::TransportErrorCode::crypto(120);
    if matches!(e, quinn::ConnectionError::TransportError(t) if t.code == alpn)
        || matches!(e, quinn::ConnectionError::ConnectionClosed(c) if c.error_code == alpn)
    {
        HandshakeReason::Alpn
    } else if matches!(e, quinn::ConnectionError::TimedOut) {
        HandshakeReason::Timeout
    } else {
        HandshakeReason::Tls
    }
}

async fn housekeeping(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        if ticks % 60 == 0 {
            crate::ozone::service::sweep(&ctx).await;
        }
        if ticks % ctx.cfg.ozone.repair_interval_secs == 0 {
            crate::ozone::service::spawn_periodic_repair(&ctx);
        }
        if ticks % 5 == 1 {
            crate::ozone::service::update_gauges(&ctx).await;
        }
        ctx.router.tick();
        ctx.bridge.tick(Instant::now());
        ctx.neighbors().update_gauges();
        ctx.metrics
            .client_sessions
            .set(ctx.router.subscribers.sessions() as i64);
        ctx.metrics
            .client_queue_bytes
            .set(ctx.router.subscribers.queued_bytes() as i64);
        update_membership_gauges(&ctx);
    }
}

/// Cluster members and mesh nodes by state.
fn update_membership_gauges(ctx: &Ctx) {
    let neighbors = ctx.neighbors().all();
    let members: Vec<_> = neighbors.iter().map(|n| n.member()).collect();
    let me = membership::State::of_self(ctx.drain.departure());
    for (st, count) in membership::counts(me, &ctx.cfg.cluster, &members) {
        ctx.metrics
            .cluster_members
            .with_label_values(&[st.label()])
            .set(count);
    }
    let view = crate::topology::flood::view(ctx);
    for st in ["up", "draining", "left", "failed"] {
        ctx.metrics
            .topology_nodes
            .with_label_values(&[st])
            .set(view.count(st) as i64);
    }
}
