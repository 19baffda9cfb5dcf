//! Node identity: a long-term key pair and self-signed certificate made on first start. The
//! node ID ([`NodeId`], in `echomesh-proto`) is blake3 of the certificate's SubjectPublicKeyInfo.

use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use echomesh_proto::identity::{crockford_base32, FingerprintError, NodeId};

/// The node ID of a DER certificate (blake3 of its SPKI).
pub fn node_id_of_cert(cert: &[u8]) -> Result<NodeId, IdentityError> {
    let der = CertificateDer::from(cert);
    let parsed = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| IdentityError::BadCertificate(format!("{e:?}")))?;
    let spki = parsed.subject_public_key_info();
    Ok(NodeId(*blake3::hash(spki.as_ref()).as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write identity file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity file {path} is corrupt ({reason}); restore it from backup, or move the data directory away to start as a new node")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot generate identity: {0}")]
    Generate(String),
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    #[error(transparent)]
    BadFingerprint(#[from] FingerprintError),
}

/// The node's certificate and private key, and the ID derived from them.
pub struct Identity {
    pub id: NodeId,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            id: self.id,
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone(),
        }
    }
}

pub const CERT_FILE: &str = "node.crt";
pub const KEY_FILE: &str = "node.key";

impl Identity {
    /// Generate a fresh identity in memory (used by tests and by `load_or_create`).
    pub fn generate() -> Result<Self, IdentityError> {
        let ck = rcgen::generate_simple_self_signed(vec!["echomesh-node".to_string()])
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let cert_der = ck.cert.der().clone();
        let key_der = ck.signing_key.serialize_der();
        let id = node_id_of_cert(&cert_der)?;
        Ok(Identity {
            id,
            cert_der,
            key_der,
        })
    }

    /// Load the identity from `dir`, or create and persist one (files mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            return Self::load(&cert_path, &key_path);
        }
        let ident = Self::generate()?;
        let cert_pem = pem_encode("CERTIFICATE", &ident.cert_der);
        let key_pem = pem_encode("PRIVATE KEY", &ident.key_der);
        write_private(&key_path, key_pem.as_bytes())?;
        write_private(&cert_path, cert_pem.as_bytes())?;
        Ok(ident)
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| IdentityError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let corrupt = |p: &Path, reason: String| IdentityError::Corrupt {
            path: p.to_path_buf(),
            reason,
        };
        let cert_der = pem_decode(&read(cert_path)?, "CERTIFICATE")
            .ok_or_else(|| corrupt(cert_path, "no CERTIFICATE block".into()))?;
        let key_der = pem_decode(&read(key_path)?, "PRIVATE KEY")
            .ok_or_else(|| corrupt(key_path, "no PRIVATE KEY block".into()))?;
        let id = node_id_of_cert(&cert_der).map_err(|e| corrupt(cert_path, e.to_string()))?;
        // The key must belong to the certificate: compare public keys.
        let kp = rcgen::KeyPair::try_from(key_der.as_slice())
            .map_err(|e| corrupt(key_path, e.to_string()))?;
        let cert = CertificateDer::from(cert_der.clone());
        let parsed = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| corrupt(cert_path, format!("{e:?}")))?;
        if parsed.subject_public_key_info().as_ref() != kp.subject_public_key_info().as_slice() {
            return Err(corrupt(
                key_path,
                "private key does not match node.crt".into(),
            ));
        }
        Ok(Identity {
            id,
            cert_der: CertificateDer::from(cert_der),
            key_der,
        })
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Sign `msg` with the node key (ECDSA P-256, SHA-256, ASN.1 signature). Anyone holding
    /// the certificate checks it with [`verify_signed_by_cert`].
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.key_der, &rng)
            .map_err(|e| IdentityError::Generate(format!("node key cannot sign: {e}")))?;
        kp.sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| IdentityError::Generate(format!("signing failed: {e}")))
    }

    /// A secret derived from the private key, stable across restarts (stateless reset key).
    pub fn derived_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.key_der)
    }
}

/// Check that `signature` over `msg` was made by the key of `cert` (DER), and return the node
/// ID of that certificate.
pub fn verify_signed_by_cert(
    cert: &[u8],
    msg: &[u8],
    signature: &[u8],
) -> Result<NodeId, IdentityError> {
    let der = CertificateDer::from(cert);
    let parsed = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| IdentityError::BadCertificate(format!("{e:?}")))?;
    parsed
        .verify_signature(webpki::ring::ECDSA_P256_SHA256, msg, signature)
        .map_err(|e| IdentityError::BadSignature(format!("{e:?}")))?;
    Ok(NodeId(
        *blake3::hash(parsed.subject_public_key_info().as_ref()).as_bytes(),
    ))
}

use rcgen::PublicKeyData;

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = text[start..].find(&end)? + start;
    let body: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Write a file readable only by its owner (0600), atomically (temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.short().len(), 10);
        assert_eq!(a.id.fingerprint().len(), 64);
        assert_eq!(a.id.fingerprint().parse::<NodeId>().unwrap(), a.id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn mismatched_key_is_refused() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        Identity::load_or_create(d1.path()).unwrap();
        Identity::load_or_create(d2.path()).unwrap();
        std::fs::copy(d2.path().join(KEY_FILE), d1.path().join(KEY_FILE)).unwrap();
        let err = Identity::load_or_create(d1.path()).err().unwrap();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn corrupt_cert_is_refused() {
        let d = tempfile::tempdir().unwrap();
        Identity::load_or_create(d.path()).unwrap();
        std::fs::write(d.path().join(CERT_FILE), "garbage").unwrap();
        let err = Identity::load_or_create(d.path()).err().unwrap();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
