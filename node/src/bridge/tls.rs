//! TLS for Echo connections (TCP): the listener's certificate, made on first start and kept
//! for good (Smoke pins its exact bytes on first use), TLS 1.2 and 1.3 both ways, and the
//! dialing side's pin on the peer certificate's SHA-256 (from the address, or on first use).

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use echomesh_client::tls::HandshakeSignatures;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;
use sha2::Digest as _;

/// File names in the data directory.
pub const CERT_FILE: &str = "bridge-tls.crt.der";
pub const KEY_FILE: &str = "bridge-tls.key.der";

/// The listener's certificate and key.
pub struct ListenerCert {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl ListenerCert {
    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.cert)
    }
}

pub fn sha256(der: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(der).into()
}

/// Load the listener certificate from `dir`, or make one (ECDSA P-256, self-signed) and keep
/// it. Never replaced: a node that changed it would lock its Smoke users out.
pub fn load_or_create(dir: &Path) -> anyhow::Result<ListenerCert> {
    let (cp, kp) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cp.exists() || kp.exists() {
        let cert = std::fs::read(&cp).with_context(|| {
            format!(
                "reading the Echo listener certificate {} (restore it from a backup: Smoke users pinned it)",
                cp.display()
            )
        })?;
        let key = std::fs::read(&kp)
            .with_context(|| format!("reading the Echo listener key {}", kp.display()))?;
        let c = ListenerCert {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        };
        // Refuse a damaged pair now rather than at the first client.
        server_config(&c).with_context(|| {
            format!(
                "the Echo listener certificate in {} is damaged",
                dir.display()
            )
        })?;
        return Ok(c);
    }
    let key = rcgen::KeyPair::generate().context("generating the Echo listener key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .context("Echo listener certificate parameters")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "echomesh Echo listener");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "echomesh");
    // Valid from a day ago (clock skew) for a century: Smoke checks only the dates.
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
    params.not_after = (now + std::time::Duration::from_secs(100 * 365 * 86_400)).into();
    let cert = params
        .self_signed(&key)
        .context("signing the Echo listener certificate")?;
    crate::identity::write_private(&kp, &key.serialize_der())?;
    crate::identity::write_private(&cp, cert.der())?;
    tracing::info!(
        sha256 = %hex::encode(sha256(cert.der())),
        file = %cp.display(),
        "made the Echo listener certificate (kept for good: Smoke users pin it)"
    );
    Ok(ListenerCert {
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any client certificate (or none); whether its SHA-256 is allowed as a neighbor is
/// decided when the connection announces itself (`0111`).
#[derive(Debug)]
struct AnyClient {
    sigs: HandshakeSignatures,
}

impl ClientCertVerifier for AnyClient {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    echomesh_client::delegate_handshake_signatures!();
}

/// The listener's TLS configuration: TLS 1.2 (Smoke on Android 14+) and 1.3.
pub fn server_config(c: &ListenerCert) -> anyhow::Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(AnyClient {
            sigs: HandshakeSignatures::tls12_and_13(),
        }))
        .with_single_cert(
            vec![c.cert.clone()],
            PrivateKeyDer::Pkcs8(c.key.clone_key()),
        )
        .context("Echo listener certificate and key do not match")?;
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// What the dialer saw: the SHA-256 of the peer's certificate, and whether it broke the pin.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeenCert {
    pub sha256: Option<[u8; 32]>,
    pub mismatch: bool,
}

/// Pins the peer certificate by SHA-256; with no pin, accepts any and records it (the caller
/// stores it: trust on first use).
#[derive(Debug)]
pub struct PinVerifier {
    pin: Option<[u8; 32]>,
    seen: Mutex<SeenCert>,
    sigs: HandshakeSignatures,
}

impl PinVerifier {
    pub fn new(pin: Option<[u8; 32]>) -> Arc<Self> {
        Arc::new(PinVerifier {
            pin,
            seen: Mutex::new(SeenCert::default()),
            sigs: HandshakeSignatures::tls12_and_13(),
        })
    }

    pub fn seen(&self) -> SeenCert {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = sha256(end_entity);
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.sha256 = Some(got);
        match self.pin {
            Some(pin) if pin != got => {
                s.mismatch = true;
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }
    echomesh_client::delegate_handshake_signatures!();
}

/// The dialing side's TLS configuration (no client certificate).
pub fn client_config(verifier: Arc<PinVerifier>) -> anyhow::Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}
