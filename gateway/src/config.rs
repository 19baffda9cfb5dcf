//! The gateway's settings: defaults → `--config FILE` (TOML) → `ECHOMESH_GATEWAY_*`
//! environment (nested keys with `__`) → flags. Every bound has a default; `validate` says
//! which key is wrong and why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use echomesh_client::target::NodeTarget;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Keys, API tokens, the outbox and inbox database.
    pub data_dir: PathBuf,
    /// HTTP API address.
    pub listen: SocketAddr,
    /// Nodes to talk to, `HOST:PORT[#FINGERPRINT]`, tried in order (failover).
    pub nodes: Vec<String>,
    /// Service identities (created on first start).
    pub identities: Vec<IdentityConfig>,
    pub webhook: WebhookConfig,
    pub limits: Limits,
    pub retention: Retention,
    /// Node sessions and outbox retries.
    pub mesh: MeshConfig,
    /// Log format: `text` or `json`.
    pub log_format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Short name used in the API (`from`) and in scopes: letters, digits, `-`, `_`.
    pub name: String,
    /// Shown to people who look the ID up (default: the name).
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where incoming messages are POSTed (none: pull them with `GET /v1/inbox`).
    pub url: Option<String>,
    /// Files holding the signing secrets (one, or two while rotating); each file's bytes,
    /// surrounding whitespace trimmed, key HMAC-SHA256.
    pub secret_files: Vec<PathBuf>,
    /// Per-attempt timeout.
    pub timeout_secs: u64,
    /// First retry after this long; doubles per attempt (with jitter) up to `max_backoff_secs`.
    pub min_backoff_secs: f64,
    pub max_backoff_secs: f64,
    /// A message not accepted (2xx) for this long is dead-lettered.
    pub dead_letter_after_secs: u64,
    /// Files up to this size are inlined in the webhook body as base64; larger ones carry a
    /// download URL.
    pub inline_file_bytes: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Base URL put in front of download paths (default: `http://LISTEN`).
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body (JSON or multipart), bytes.
    pub max_body_bytes: usize,
    /// Largest file sent or received, bytes.
    pub max_file_bytes: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Text characters per message.
    pub max_text_chars: usize,
    /// Messages in the outbox not yet finished.
    pub max_outbox_messages: u64,
    /// Messages in the inbox not yet delivered; beyond it the gateway stops taking messages
    /// from its mailboxes (they wait in the mesh).
    pub max_inbox_messages: u64,
    /// Requests per second per API token (sustained), and the burst above it.
    pub token_rate: f64,
    pub token_burst: f64,
    /// Rejected (unverifiable) messages remembered for `GET /v1/rejected`.
    pub max_rejected: u64,
    /// Idempotency keys remembered.
    pub max_idempotency_keys: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Finished outbox messages (their states) are kept this long.
    pub outbox_secs: u64,
    /// Delivered inbox messages (and their files) are kept this long.
    pub inbox_secs: u64,
    /// Idempotency keys are honoured this long.
    pub idempotency_secs: u64,
    /// IDs of received messages are remembered this long, so a message fetched again after a
    /// crash is never delivered twice.
    pub dedupe_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// An outbox message that cannot be deposited for this long fails (with the reason).
    pub give_up_after_secs: u64,
    /// Check the mailboxes this often even without a live notice.
    pub poll_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./echomesh-gateway-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 4712)),
            nodes: Vec::new(),
            identities: Vec::new(),
            webhook: WebhookConfig::default(),
            limits: Limits::default(),
            retention: Retention::default(),
            mesh: MeshConfig::default(),
            log_format: "text".into(),
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret_files: Vec::new(),
            timeout_secs: 10,
            min_backoff_secs: 1.0,
            max_backoff_secs: 300.0,
            dead_letter_after_secs: 72 * 3600,
            inline_file_bytes: 1 << 20,
            concurrency: 8,
            public_url: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 24 << 20,
            max_file_bytes: 16 << 20,
            max_recipients: 100,
            max_text_chars: 16_384,
            max_outbox_messages: 100_000,
            max_inbox_messages: 100_000,
            token_rate: 50.0,
            token_burst: 200.0,
            max_rejected: 1000,
            max_idempotency_keys: 1_000_000,
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            outbox_secs: 7 * 86_400,
            inbox_secs: 7 * 86_400,
            idempotency_secs: 86_400,
            dedupe_secs: 30 * 86_400,
        }
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            give_up_after_secs: 3600,
            poll_secs: 5,
        }
    }
}

/// What flags set (merged over the file and the environment).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip)]
    pub nodes: Vec<String>,
    #[serde(skip)]
    pub identities: Vec<String>,
    #[serde(skip)]
    pub webhook_url: Option<String>,
    #[serde(skip)]
    pub webhook_secret_files: Vec<PathBuf>,
}

/// Environment variables with the prefix that are not settings.
const NON_CONFIG_ENV: &[&str] = &["CONFIG", "TOKEN"];

impl Config {
    pub fn load(file: Option<&Path>, o: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Missing(f.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(
            Env::prefixed("ECHOMESH_GATEWAY_")
                .split("__")
                .ignore(NON_CONFIG_ENV),
        );
        let mut cfg: Config = fig
            .merge(Serialized::defaults(o))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for n in &o.nodes {
            if !cfg.nodes.contains(n) {
                cfg.nodes.push(n.clone());
            }
        }
        for name in &o.identities {
            if !cfg.identities.iter().any(|i| &i.name == name) {
                cfg.identities.push(IdentityConfig {
                    name: name.clone(),
                    display_name: None,
                });
            }
        }
        if o.webhook_url.is_some() {
            cfg.webhook.url = o.webhook_url.clone();
        }
        if !o.webhook_secret_files.is_empty() {
            cfg.webhook.secret_files = o.webhook_secret_files.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configured nodes, parsed (validated by `validate`).
    pub fn node_targets(&self) -> Vec<NodeTarget> {
        self.nodes.iter().filter_map(|n| n.parse().ok()).collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for n in &self.nodes {
            if let Err(e) = n.parse::<NodeTarget>() {
                return bad(format!(
                    "nodes: {n:?}: {e} (expected HOST:PORT or HOST:PORT#FINGERPRINT)"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.identities {
            if !valid_name(&i.name) {
                return bad(format!(
                    "identities: {:?} is not a valid identity name (1 to 64 letters, digits, '-' or '_')",
                    i.name
                ));
            }
            if !seen.insert(i.name.as_str()) {
                return bad(format!("identities: {:?} is named twice", i.name));
            }
            if let Some(d) = &i.display_name {
                if d.is_empty() || d.chars().count() > 64 || d.chars().any(char::is_control) {
                    return bad(format!(
                        "identities: display name of {:?} must be 1 to 64 printable characters",
                        i.name
                    ));
                }
            }
        }
        if let Some(u) = &self.webhook.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad(format!(
                    "webhook.url: {u:?} must start with http:// or https://"
                ));
            }
            if self.webhook.secret_files.is_empty() {
                return bad("webhook.url is set but no webhook.secret_files (--webhook-secret-file): receivers could not check who is calling".into());
            }
        }
        if self.webhook.secret_files.len() > 2 {
            return bad(
                "webhook.secret_files: at most two (the current one and the next, while rotating)"
                    .into(),
            );
        }
        let w = &self.webhook;
        if w.timeout_secs == 0 || w.concurrency == 0 || w.concurrency > 256 {
            return bad("webhook.timeout_secs must be > 0 and webhook.concurrency 1 to 256".into());
        }
        if !(w.min_backoff_secs > 0.0 && w.max_backoff_secs >= w.min_backoff_secs) {
            return bad("webhook: need 0 < min_backoff_secs <= max_backoff_secs".into());
        }
        let l = &self.limits;
        if l.max_body_bytes < 1024 || l.max_recipients == 0 || l.max_text_chars == 0 {
            return bad(
                "limits: max_body_bytes >= 1024, max_recipients and max_text_chars > 0".into(),
            );
        }
        if l.max_file_bytes > 1 << 30 {
            return bad("limits.max_file_bytes: at most 1 GiB".into());
        }
        if !(l.token_rate > 0.0 && l.token_burst >= 1.0) {
            return bad("limits: token_rate must be > 0 and token_burst >= 1".into());
        }
        if self.mesh.poll_secs == 0 {
            return bad("mesh.poll_secs must be > 0".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(format!(
                "log_format: {:?} must be text or json",
                self.log_format
            ));
        }
        Ok(())
    }
}

/// Identity names: what scopes and URLs can carry without quoting.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_add_nodes_and_identities_and_bad_values_name_their_key() {
        let o = Overrides {
            nodes: vec!["127.0.0.1:4710".into()],
            identities: vec!["ordnungsamt".into()],
            ..Default::default()
        };
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.nodes, vec!["127.0.0.1:4710"]);
        assert_eq!(c.identities[0].name, "ordnungsamt");
        let o = Overrides {
            identities: vec!["bad name".into()],
            ..Default::default()
        };
        let e = Config::load(None, &o).unwrap_err().to_string();
        assert!(e.contains("identities"), "{e}");
        let o = Overrides {
            webhook_url: Some("http://127.0.0.1:9/hook".into()),
            ..Default::default()
        };
        let e = Config::load(None, &o).unwrap_err().to_string();
        assert!(e.contains("secret"), "{e}");
    }
}
