//! Configuration reload (SIGHUP, `echomeshctl reload`): read the configuration again the way
//! the node was started (same file, same flags, current environment), validate it, and apply
//! what can change at run time — static neighbors, the per-neighbor rate limit, the log level.
//! Everything else is reported as needing a restart. An invalid configuration changes nothing.

use std::sync::Arc;

use crate::config::{Config, NeighborSpec};
use crate::ctx::Ctx;
use crate::store::{NeighborOrigin, NeighborRecord};

pub use crate::config::{LiveConfig, ReloadSource};

pub use echomesh_proto::admin::ReloadReport;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this node was not started from a configuration it can re-read")]
    NoSource,
    #[error("new configuration refused, the running one stays: {0}")]
    Invalid(String),
}

fn static_specs(cfg: &Config) -> Vec<NeighborSpec> {
    cfg.neighbors
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Re-read and apply the configuration.
pub async fn reload(ctx: &Arc<Ctx>) -> Result<ReloadReport, ReloadError> {
    let source = ctx
        .live
        .source
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or(ReloadError::NoSource)?;
    let new = Config::load(source.file.as_deref(), &source.overrides)
        .map_err(|e| ReloadError::Invalid(e.to_string()))?;
    let old = ctx
        .live
        .current
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut report = ReloadReport::default();

    // Static neighbors: removed, added, mode changed.
    let (old_n, new_n) = (static_specs(&old), static_specs(&new));
    for o in &old_n {
        if !new_n.iter().any(|n| n.id == o.id) {
            let is_static = ctx
                .neighbors()
                .get(&o.id)
                .is_some_and(|n| n.view().origin == NeighborOrigin::Static);
            if is_static {
                ctx.neighbors().remove(&o.id);
                report
                    .applied
                    .push(format!("neighbor {} removed", o.id.short()));
            }
        }
    }
    for n in &new_n {
        let before = old_n.iter().find(|o| o.id == n.id);
        if before.is_some_and(|b| b.addr == n.addr && b.mode == n.mode) {
            continue;
        }
        if n.id == ctx.identity.id {
            continue;
        }
        let rec = NeighborRecord {
            id: n.id,
            addr: Some(n.addr.clone()),
            mode: n.mode,
            origin: NeighborOrigin::Static,
            added_unix: 0,
        };
        match crate::peer::session::add_neighbor(ctx, rec).await {
            Ok(_) => report.applied.push(format!(
                "neighbor {} {}",
                n.id.short(),
                if before.is_some() { "updated" } else { "added" }
            )),
            Err(e) => report
                .applied
                .push(format!("neighbor {} NOT added: {e:#}", n.id.short())),
        }
    }
    if old.limits.neighbor_rate != new.limits.neighbor_rate {
        ctx.neighbors().set_rate_all(new.limits.neighbor_rate);
        report.applied.push("limits.neighbor_rate".into());
    }
    if old.log.level != new.log.level {
        match crate::telemetry::set_log_level(&new.log.level) {
            Ok(true) => report
                .applied
                .push(format!("log.level = {}", new.log.level)),
            Ok(false) => report
                .restart_needed
                .push("log.level (RUST_LOG is set and wins)".into()),
            Err(e) => return Err(ReloadError::Invalid(e.to_string())),
        }
    }
    // Everything else: compare section by section.
    let (a, b) = (toml_sections(&old), toml_sections(&new));
    for (key, value) in &b {
        if matches!(key.as_str(), "neighbors" | "log" | "limits") {
            continue;
        }
        if a.get(key) != Some(value) {
            report.restart_needed.push(key.clone());
        }
    }
    {
        let mut o = old.limits.clone();
        o.neighbor_rate = new.limits.neighbor_rate;
        if o != new.limits {
            report
                .restart_needed
                .push("limits (except neighbor_rate)".into());
        }
        if old.log.format != new.log.format {
            report.restart_needed.push("log.format".into());
        }
    }
    *ctx.live.current.lock().unwrap_or_else(|p| p.into_inner()) = new;
    tracing::info!(applied = ?report.applied, restart_needed = ?report.restart_needed, "configuration reloaded");
    Ok(report)
}

fn toml_sections(c: &Config) -> std::collections::BTreeMap<String, String> {
    let v = toml::Value::try_from(c).unwrap_or(toml::Value::Table(Default::default()));
    match v {
        toml::Value::Table(t) => t.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        _ => Default::default(),
    }
}
