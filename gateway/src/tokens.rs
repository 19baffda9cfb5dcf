//! API tokens: one per calling application, each with scopes. Only a SHA-256 of each token is
//! stored, in `<data-dir>/tokens.json` (mode 0600), which `echomesh-gateway token
//! create|list|revoke` edits while the gateway runs; the gateway notices changes within a
//! second (a revoked token stops working then).
//!
//! Scopes: `send:NAME` (send as identity NAME), `read:NAME` (read NAME's inbox, dead letters
//! and rejections), `NAME` may be `*` for every identity.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read or write {0}: {1}")]
    File(String, String),
    #[error("{0} is damaged: {1}; restore it from a backup or delete it and create new tokens")]
    Corrupt(String, String),
    #[error("a token named {0:?} exists; revoke it first or pick another name")]
    Exists(String),
    #[error("no token named {0:?}")]
    Unknown(String),
    #[error("{0:?} is not a scope: use send:IDENTITY, read:IDENTITY (IDENTITY may be *)")]
    BadScope(String),
    #[error("{0:?} is not a valid token name (1 to 64 letters, digits, '-' or '_')")]
    BadName(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Send,
    Read,
}

impl Action {
    fn prefix(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Read => "read",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenEntry {
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub scopes: Vec<String>,
    pub created_at: u64,
}

impl TokenEntry {
    pub fn allows(&self, action: Action, identity: &str) -> bool {
        self.scopes.iter().any(|s| {
            s.split_once(':')
                .is_some_and(|(a, who)| a == action.prefix() && (who == "*" || who == identity))
        })
    }
}

pub fn check_scope(s: &str) -> Result<(), TokenError> {
    match s.split_once(':') {
        Some(("send" | "read", who)) if who == "*" || crate::config::valid_name(who) => Ok(()),
        _ => Err(TokenError::BadScope(s.into())),
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The tokens file.
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn in_dir(data_dir: &Path) -> Self {
        TokenFile {
            path: data_dir.join("tokens.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<Vec<TokenEntry>, TokenError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(TokenError::File(
                    self.path.display().to_string(),
                    e.to_string(),
                ))
            }
        };
        serde_json::from_str(&text)
            .map_err(|e| TokenError::Corrupt(self.path.display().to_string(), e.to_string()))
    }

    fn save(&self, entries: &[TokenEntry]) -> Result<(), TokenError> {
        let err =
            |e: std::io::Error| TokenError::File(self.path.display().to_string(), e.to_string());
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(entries)
            .map_err(|e| TokenError::Corrupt(self.path.display().to_string(), e.to_string()))?;
        echomesh_client::identity::write_private(&tmp, text.as_bytes())
            .map_err(|e| TokenError::File(tmp.display().to_string(), e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Create a token; returns the secret (shown once, never stored).
    pub fn create(&self, name: &str, scopes: &[String]) -> Result<String, TokenError> {
        if !crate::config::valid_name(name) {
            return Err(TokenError::BadName(name.into()));
        }
        for s in scopes {
            check_scope(s)?;
        }
        let mut entries = self.load()?;
        if entries.iter().any(|e| e.name == name) {
            return Err(TokenError::Exists(name.into()));
        }
        let secret = format!(
            "emg_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        );
        entries.push(TokenEntry {
            name: name.into(),
            sha256: hash(&secret),
            scopes: scopes.to_vec(),
            created_at: echomesh_proto::clock::unix_now(),
        });
        self.save(&entries)?;
        Ok(secret)
    }

    pub fn revoke(&self, name: &str) -> Result<(), TokenError> {
        let mut entries = self.load()?;
        let before = entries.len();
        entries.retain(|e| e.name != name);
        if entries.len() == before {
            return Err(TokenError::Unknown(name.into()));
        }
        self.save(&entries)
    }
}

/// The tokens as the running gateway sees them: re-read when the file changes (checked at
/// most once a second).
pub struct Tokens {
    file: TokenFile,
    state: Mutex<Cached>,
}

struct Cached {
    entries: Vec<TokenEntry>,
    /// Inode, size and modification time: a rewrite (new inode) or an edit changes it.
    modified: Option<(u64, u64, i64, i64)>,
    checked: Instant,
}

impl Tokens {
    pub fn new(file: TokenFile) -> Result<Self, TokenError> {
        let entries = file.load()?;
        let modified = stamp(file.path());
        Ok(Tokens {
            file,
            state: Mutex::new(Cached {
                entries,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// The entry for a presented token, if it is valid. The file is checked again when a
    /// token is not found (a token just created works at once) and at most a second after
    /// the last check otherwise (a revoked token stops working within a second).
    pub fn check(&self, presented: &str) -> Option<TokenEntry> {
        let h = hash(presented);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let found = find(&st.entries, &h);
        if found.is_some() && st.checked.elapsed() < Duration::from_secs(1) {
            return found;
        }
        st.checked = Instant::now();
        let m = stamp(self.file.path());
        if m == st.modified {
            return found;
        }
        match self.file.load() {
            Ok(e) => {
                st.entries = e;
                st.modified = m;
                tracing::info!(tokens = st.entries.len(), "API tokens reloaded");
            }
            // Keep the tokens we have: a half-edited file must not lock everyone out.
            Err(e) => tracing::warn!(error = %e, "API tokens not reloaded"),
        }
        find(&st.entries, &h)
    }
}

/// Compare hashes (fixed length): no early exit that leaks the token's bytes.
fn find(entries: &[TokenEntry], h: &str) -> Option<TokenEntry> {
    entries
        .iter()
        .find(|e| constant_eq(e.sha256.as_bytes(), h.as_bytes()))
        .cloned()
}

fn stamp(p: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_check_revoked_ones_do_not_and_scopes_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let f = TokenFile::in_dir(dir.path());
        let t = f
            .create("tickets", &["send:hausmeister".into(), "read:*".into()])
            .unwrap();
        assert!(f.create("tickets", &[]).is_err());
        assert!(f.create("x", &["write:all".into()]).is_err());
        let tokens = Tokens::new(TokenFile::in_dir(dir.path())).unwrap();
        let e = tokens.check(&t).unwrap();
        assert!(e.allows(Action::Send, "hausmeister"));
        assert!(!e.allows(Action::Send, "ordnungsamt"));
        assert!(e.allows(Action::Read, "ordnungsamt"));
        assert!(tokens.check("emg_wrong").is_none());
        f.revoke("tickets").unwrap();
        assert!(f.revoke("tickets").is_err());
        // The cache re-reads after a second.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(tokens.check(&t).is_none());
    }
}
