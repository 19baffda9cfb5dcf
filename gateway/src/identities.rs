//! Service identities: one participant key per name, in `<data-dir>/identities/NAME.key`
//! (PKCS#8 PEM without passphrase, mode 0600: the gateway starts unattended). These keys are
//! the city's service addresses: back them up (docs/GATEWAY.md); a lost key means a new ID
//! that every citizen has to learn again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use echomesh_client::e2e::Participant;
use echomesh_client::keyfile;
use echomesh_proto::keydir::Fingerprint;
use echomesh_proto::ozone::OzoneProof;
use echomesh_proto::tags;

use crate::config::IdentityConfig;

pub struct Identity {
    pub name: String,
    pub display_name: String,
    pub key: Participant,
    pub fingerprint: Fingerprint,
    pub short_id: String,
    pub mailbox: OzoneProof,
    pub file: PathBuf,
}

impl Identity {
    /// Tags this identity receives on around `now`: its mailbox's and its live inbox's.
    pub fn tags_around(&self, now: u64) -> Vec<[u8; 32]> {
        let mut t = tags::tags_around(&self.mailbox.address().0, now);
        t.extend(tags::tags_around(
            &tags::inbox_address(&self.fingerprint),
            now,
        ));
        t
    }
}

pub type Identities = Arc<Vec<Identity>>;

pub fn key_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("identities").join(format!("{name}.key"))
}

/// Load every configured identity, creating the missing ones (blocking: RSA key generation).
pub fn load_or_create(
    data_dir: &Path,
    configured: &[IdentityConfig],
) -> anyhow::Result<Vec<Identity>> {
    use anyhow::Context;
    let dir = data_dir.join("identities");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for c in configured {
        let path = key_path(data_dir, &c.name);
        let key = if path.exists() {
            keyfile::load(&path, None)
                .with_context(|| format!("loading identity {:?} from {} (restore it from your backup; a new key would be a new ID)", c.name, path.display()))?
        } else {
            let k = Participant::generate().context("generating a key")?;
            keyfile::save(&path, &k, None)
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(identity = %c.name, id = %k.fingerprint().short_id(), file = %path.display(), "created service identity: back this key file up");
            k
        };
        let fingerprint = key.fingerprint();
        out.push(Identity {
            name: c.name.clone(),
            display_name: c.display_name.clone().unwrap_or_else(|| c.name.clone()),
            short_id: fingerprint.short_id().to_string(),
            mailbox: key.mailbox(),
            fingerprint,
            key,
            file: path,
        });
    }
    Ok(out)
}
