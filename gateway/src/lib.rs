//! echomesh-gateway: the city's own software sends and receives end-to-end encrypted echomesh
//! messages over HTTP. The gateway is an ordinary echomesh client holding service identities;
//! nodes never see plaintext.
//!
//! - `config`: settings and bounds; `tokens`: API tokens and scopes; `identities`: the
//!   service keys.
//! - `store`: RocksDB outbox, inbox, dead letters, rejections; `records`: what is stored
//!   (also the API's JSON shapes).
//! - `mesh`: node sessions with failover and redirects; `outbox`: accept (202) and deposit;
//!   `inbox`: read the mailboxes; `webhook`: signed delivery with retries.
//! - `api`: the HTTP API (axum) and its OpenAPI document; `metrics`.
//!
//! `Gateway::start` wires them: one task each for the outbox, the mailboxes, the webhook and
//! housekeeping, all stopped through one cancellation token.

pub mod api;
pub mod config;
pub mod identities;
pub mod inbox;
pub mod mesh;
pub mod metrics;
pub mod outbox;
pub mod records;
pub mod store;
pub mod tokens;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::identities::Identity;
use crate::mesh::{Link, Nodes};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tokens::{TokenFile, Tokens};

/// Everything the tasks and handlers share.
pub struct Gateway {
    pub config: Config,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub identities: Vec<Identity>,
    pub tokens: Tokens,
    pub nodes: Arc<Nodes>,
    /// Lookups for the API (recipients, display names).
    pub api_link: Link,
    /// Deposits for the outbox worker.
    pub send_link: Link,
    pub outbox_wake: Notify,
    pub webhook_wake: Notify,
    /// Set with `webhook_wake` when an older message re-enters the queue (a replay).
    pub webhook_reread: std::sync::atomic::AtomicBool,
    /// Signalled when inbox messages leave `Pending`.
    pub inbox_space: Notify,
    pub in_flight: outbox::InFlight,
    pub rate: api::RateLimits,
    pub shutdown: CancellationToken,
    /// Identities published in the key directory.
    pub published: std::sync::atomic::AtomicBool,
}

impl Gateway {
    pub fn identity_index(&self, name: &str) -> Option<usize> {
        self.identities.iter().position(|i| i.name == name)
    }

    /// Base URL for links in webhook bodies.
    pub fn public_url(&self) -> String {
        self.config
            .webhook
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.config.listen))
            .trim_end_matches('/')
            .to_string()
    }

    /// Open the data dir (keys, tokens, database), creating what is missing; writes
    /// `<data-dir>/api.token` (every scope) on first start.
    pub async fn open(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<Gateway>> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let idc = config.identities.clone();
        let dir2 = dir.clone();
        let identities =
            tokio::task::spawn_blocking(move || identities::load_or_create(&dir2, &idc)).await??;
        let dir3 = dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir3)).await??;
        let tf = TokenFile::in_dir(&dir);
        if tf.load()?.is_empty() && !dir.join("api.token").exists() {
            let t = tf.create("admin", &["send:*".into(), "read:*".into()])?;
            echomesh_client::identity::write_private(
                &dir.join("api.token"),
                format!("{t}\n").as_bytes(),
            )?;
            tracing::info!(file = %dir.join("api.token").display(), "created an API token with every scope");
        }
        let tokens = Tokens::new(tf)?;
        let metrics = Arc::new(Metrics::new());
        let nodes = Nodes::new(
            config.node_targets(),
            echomesh_client::target::known_nodes_in(&dir),
            metrics.clone(),
        )?;
        let dead = store
            .run(|s| {
                Ok(
                    s.in_list(0, usize::MAX, |m| m.state == records::InState::Dead)?
                        .len(),
                )
            })
            .await?;
        metrics.dead_letters.set(dead as i64);
        metrics
            .outbox
            .set(store.outq_len.load(std::sync::atomic::Ordering::Relaxed) as i64);
        metrics
            .inbox_pending
            .set(store.pending_len.load(std::sync::atomic::Ordering::Relaxed) as i64);
        Ok(Arc::new(Gateway {
            rate: api::RateLimits::new(config.limits.token_rate, config.limits.token_burst),
            api_link: Link::new(nodes.clone()),
            send_link: Link::new(nodes.clone()),
            config,
            store,
            metrics,
            identities,
            tokens,
            nodes,
            outbox_wake: Notify::new(),
            webhook_wake: Notify::new(),
            webhook_reread: Default::default(),
            inbox_space: Notify::new(),
            in_flight: Default::default(),
            shutdown,
            published: Default::default(),
        }))
    }

    /// Start the background tasks; they end when `shutdown` is cancelled.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinSet<()> {
        let mut set = tokio::task::JoinSet::new();
        set.spawn(publish(self.clone()));
        set.spawn(outbox::run(self.clone()));
        set.spawn(inbox::run(self.clone()));
        set.spawn(webhook::run(self.clone()));
        set.spawn(housekeeping(self.clone()));
        set
    }
}

/// Publish every identity's key bundle (with its mailbox) until it is stored.
async fn publish(gw: Arc<Gateway>) {
    let mut attempt = 0;
    for i in 0..gw.identities.len() {
        loop {
            let id = &gw.identities[i];
            let bundle = id.key.bundle(
                echomesh_proto::keydir::BundleKind::Publish,
                &id.display_name,
                echomesh_proto::clock::unix_now(),
                true,
            );
            match gw.api_link.publish(bundle).await {
                Ok(_) => {
                    tracing::info!(identity = %id.name, id = %id.short_id, "identity published with its mailbox");
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(identity = %id.name, error = %e, "cannot publish the identity yet; retrying");
                    tokio::select! {
                        _ = gw.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(mesh::retry_wait(attempt)) => {}
                    }
                }
            }
        }
    }
    gw.published
        .store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Prune by retention every ten minutes.
async fn housekeeping(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (r, max_idem) = (
            gw.config.retention.clone(),
            gw.config.limits.max_idempotency_keys,
        );
        match gw
            .store
            .run(move |s| s.prune(echomesh_proto::clock::unix_ms(), &r, max_idem))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "pruned by retention"),
            Err(e) => tracing::error!(error = %e, "pruning failed"),
        }
    }
}
