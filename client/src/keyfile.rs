//! Participant key files: PKCS#8 PEM, mode 0600. With a passphrase the key is encrypted
//! (PBES2: scrypt, AES-256-CBC — readable by `openssl pkey`); without one it is stored in the
//! clear and the file says so in its first line.

use std::path::Path;

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::rand_core::OsRng;
use rsa::RsaPrivateKey;

use crate::e2e::Participant;

const UNPROTECTED_NOTE: &str =
    "# echomesh participant key WITHOUT passphrase: anyone who can read this file can read your messages\n";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "{0} already exists; pick another --out or delete it first (it may be someone's only key)"
    )]
    Exists(String),
    #[error("cannot read key file {0}: {1}")]
    Read(String, String),
    #[error("cannot write key file {0}: {1}")]
    Write(String, String),
    #[error("key file {0} is protected by a passphrase: set ECHOMESH_PASSPHRASE or run in a terminal to be asked")]
    NeedPassphrase(String),
    #[error("wrong passphrase for {0} (or the file is damaged)")]
    WrongPassphrase(String),
    #[error("{0} is not an echomesh participant key: {1}")]
    NotAKey(String, String),
    #[error("{0}")]
    Key(String),
}

/// Whether a key file needs a passphrase.
pub fn is_protected(path: &Path) -> Result<bool, KeyFileError> {
    let text = read(path)?;
    Ok(text.contains("BEGIN ENCRYPTED PRIVATE KEY"))
}

fn read(path: &Path) -> Result<String, KeyFileError> {
    std::fs::read_to_string(path)
        .map_err(|e| KeyFileError::Read(path.display().to_string(), e.to_string()))
}

/// Write a new key file (refuses to overwrite).
pub fn save(path: &Path, who: &Participant, passphrase: Option<&str>) -> Result<(), KeyFileError> {
    let name = path.display().to_string();
    if path.exists() {
        return Err(KeyFileError::Exists(name));
    }
    let pem = match passphrase {
        Some(p) => who
            .private_key()
            .to_pkcs8_encrypted_pem(&mut OsRng, p.as_bytes(), LineEnding::LF)
            .map_err(|e| KeyFileError::Key(e.to_string()))?
            .to_string(),
        None => {
            let pem = who
                .private_key()
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeyFileError::Key(e.to_string()))?;
            format!("{UNPROTECTED_NOTE}{}", pem.as_str())
        }
    };
    crate::identity::write_private(path, pem.as_bytes())
        .map_err(|e| KeyFileError::Write(name, e.to_string()))
}

/// Load a key file; `passphrase` is needed only when the file is protected.
pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Participant, KeyFileError> {
    let name = path.display().to_string();
    let text = read(path)?;
    let key = if text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        let p = passphrase.ok_or_else(|| KeyFileError::NeedPassphrase(name.clone()))?;
        RsaPrivateKey::from_pkcs8_encrypted_pem(&text, p.as_bytes())
            .map_err(|_| KeyFileError::WrongPassphrase(name.clone()))?
    } else {
        let pem: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        RsaPrivateKey::from_pkcs8_pem(&pem)
            .map_err(|e| KeyFileError::NotAKey(name.clone(), e.to_string()))?
    };
    Participant::from_key(key).map_err(|e| KeyFileError::NotAKey(name, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_and_unprotected_keys_roundtrip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let who = Participant::generate().unwrap();
        let locked = dir.path().join("locked.key");
        save(&locked, &who, Some("correct horse")).unwrap();
        assert!(is_protected(&locked).unwrap());
        assert!(matches!(
            load(&locked, None),
            Err(KeyFileError::NeedPassphrase(_))
        ));
        assert!(matches!(
            load(&locked, Some("wrong")),
            Err(KeyFileError::WrongPassphrase(_))
        ));
        assert_eq!(
            load(&locked, Some("correct horse")).unwrap().fingerprint(),
            who.fingerprint()
        );
        assert!(matches!(
            save(&locked, &who, None),
            Err(KeyFileError::Exists(_))
        ));

        let open = dir.path().join("open.key");
        save(&open, &who, None).unwrap();
        assert!(!is_protected(&open).unwrap());
        assert!(std::fs::read_to_string(&open)
            .unwrap()
            .starts_with("# echomesh participant key WITHOUT"));
        assert_eq!(load(&open, None).unwrap().fingerprint(), who.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [&locked, &open] {
                let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600);
            }
        }
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "hello").unwrap();
        assert!(matches!(load(&junk, None), Err(KeyFileError::NotAKey(..))));
    }
}
