//! TLS for QUIC: self-signed certificates pinned by fingerprint (no CA, no TOFU between nodes).
//!
//! * Dialing side: `PinnedServerVerifier` accepts exactly the expected node ID (or, for
//!   trust-on-first-use clients, records whatever it saw). A mismatch fails the handshake.
//! * Accepting side: `AnyClientCertVerifier` checks that a client certificate, if presented,
//!   is well-formed and proves key possession. Whether that identity is pinned is decided
//!   right after the handshake, where the ALPN is known (`peer::accept`): peers must be
//!   pinned, joiners present an invite secret, clients need no certificate.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Identity, NodeId};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Handshake signatures checked against the presented certificate's key with ring's
/// algorithms; the certificate itself is trusted by a pin, not by a CA. QUIC allows TLS 1.3
/// only; the Echo bridge (TCP) also TLS 1.2.
#[derive(Debug, Clone)]
pub struct HandshakeSignatures {
    pub algs: WebPkiSupportedAlgorithms,
    tls12: bool,
}

impl HandshakeSignatures {
    pub fn tls13_only() -> Self {
        HandshakeSignatures {
            algs: algorithms(),
            tls12: false,
        }
    }

    pub fn tls12_and_13() -> Self {
        HandshakeSignatures {
            algs: algorithms(),
            tls12: true,
        }
    }

    pub fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.tls12 {
            return Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ));
        }
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    pub fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The three signature methods of rustls's verifier traits, delegated to a
/// [`HandshakeSignatures`] field named `sigs` (one definition for every verifier).
#[macro_export]
macro_rules! delegate_handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.sigs.verify_tls12(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.sigs.verify_tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.sigs.schemes()
        }
    };
}

/// What the dialer saw of the server, for error classification and TOFU.
#[derive(Debug, Default)]
pub struct Observed {
    pub id: Option<NodeId>,
    pub mismatch: bool,
}

#[derive(Debug)]
pub struct PinnedServerVerifier {
    expected: Option<NodeId>,
    observed: Mutex<Observed>,
    sigs: HandshakeSignatures,
}

impl PinnedServerVerifier {
    /// `expected = None` accepts any well-formed certificate (trust on first use: the caller
    /// must check `observed()` against its known-nodes file).
    pub fn new(expected: Option<NodeId>) -> Arc<Self> {
        Arc::new(PinnedServerVerifier {
            expected,
            observed: Mutex::new(Observed::default()),
            sigs: HandshakeSignatures::tls13_only(),
        })
    }

    pub fn observed(&self) -> (Option<NodeId>, bool) {
        let o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        (o.id, o.mismatch)
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = crate::identity::node_id_of_cert(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        o.id = Some(id);
        match self.expected {
            Some(exp) if exp != id => {
                o.mismatch = true;
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    crate::delegate_handshake_signatures!();
}

#[derive(Debug)]
pub struct AnyClientCertVerifier {
    sigs: HandshakeSignatures,
}

impl ClientCertVerifier for AnyClientCertVerifier {
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
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        crate::identity::node_id_of_cert(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    crate::delegate_handshake_signatures!();
}

#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(String);

fn err<E: std::fmt::Display>(e: E) -> TlsError {
    TlsError(e.to_string())
}

/// Server side: our certificate; all three ALPNs.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_client_cert_verifier(Arc::new(AnyClientCertVerifier {
            sigs: HandshakeSignatures::tls13_only(),
        }))
        .with_single_cert(vec![identity.cert_der.clone()], identity.private_key())
        .map_err(err)?;
    cfg.alpn_protocols = vec![
        echomesh_proto::wire::ALPN_PEER.to_vec(),
        echomesh_proto::wire::ALPN_CLIENT.to_vec(),
        echomesh_proto::wire::ALPN_JOIN.to_vec(),
    ];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// Dialing side. `identity` is presented as client certificate (nodes); clients pass `None`.
pub fn client_config(
    identity: Option<&Identity>,
    verifier: Arc<PinnedServerVerifier>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert_der.clone()], id.private_key())
            .map_err(err)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// The node ID of the peer's certificate on an established connection, if it presented one.
pub fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let first = certs.first()?;
    crate::identity::node_id_of_cert(first).ok()
}

/// The negotiated ALPN of an established connection.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let any = conn.handshake_data()?;
    let hd = any
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    hd.protocol
}
