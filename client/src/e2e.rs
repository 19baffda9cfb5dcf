//! End-to-end encryption of the reference client. Nodes never run this code and never see
//! what it protects.
//!
//! A message for one recipient is an [`Envelope`]:
//! - a fresh AES-256-GCM key, wrapped with the recipient's RSA-3072 key (RSA-OAEP, SHA-256);
//! - AES-GCM over a [`Sealed`] record: the sender's public key, the encoded [`Body`]
//!   (recipient fingerprint, time, random nonce, content) and the sender's RSA-PSS (SHA-256)
//!   signature over that body.
//!
//! Signing the recipient's fingerprint inside the body means a signed message cannot be
//! re-encrypted to somebody else and pass as addressed to them. Group messages are one
//! envelope per recipient: simple, and no recipient learns who else got the message.

use bytes::Bytes;
use echomesh_proto::keydir::{
    participant_key, BundleKind, Fingerprint, KeyBundle, BUNDLE_FORMAT, RSA_BITS,
};
use echomesh_proto::ozone::{OzoneAddr, OzoneProof};
use echomesh_proto::wire;
use rand::RngCore;
use rsa::pkcs8::EncodePublicKey;
use rsa::pss::{BlindedSigningKey, Signature, VerifyingKey};
use rsa::rand_core::OsRng;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

const ENVELOPE_FORMAT: u8 = 1;
const AAD_CONTEXT: &[u8] = b"echomesh message v1";
const SIGNING_CONTEXT: &[u8] = b"echomesh message signature v1\0";

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("key generation failed: {0}")]
    KeyGen(String),
    #[error("recipient key is unusable: {0}")]
    BadRecipient(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Why a received payload is not shown as an authentic message.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not an echomesh message ({0})")]
    Malformed(String),
    #[error("cannot decrypt: not encrypted to this key, or the key wrapping was altered")]
    NotForMe,
    #[error("ciphertext was altered in transit (authentication failed)")]
    Tampered,
    #[error("signature does not match the sender's key: forged or altered")]
    BadSignature { claimed: Fingerprint },
    #[error(
        "addressed to another participant ({0}); somebody re-sent a message not meant for you"
    )]
    WrongRecipient(Fingerprint, Fingerprint),
}

impl OpenError {
    /// The sender the message claims, when it got far enough to claim one.
    pub fn claimed_sender(&self) -> Option<Fingerprint> {
        match self {
            OpenError::BadSignature { claimed } => Some(*claimed),
            OpenError::WrongRecipient(_, sender) => Some(*sender),
            _ => None,
        }
    }
}

/// One participant's key pair.
pub struct Participant {
    key: RsaPrivateKey,
    public_der: Vec<u8>,
    fingerprint: Fingerprint,
}

impl Participant {
    pub fn generate() -> Result<Self, E2eError> {
        let key = RsaPrivateKey::new(&mut OsRng, RSA_BITS)
            .map_err(|e| E2eError::KeyGen(e.to_string()))?;
        Self::from_key(key)
    }

    pub fn from_key(key: RsaPrivateKey) -> Result<Self, E2eError> {
        let public_der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| E2eError::KeyGen(e.to_string()))?
            .as_bytes()
            .to_vec();
        participant_key(&public_der).map_err(|e| E2eError::KeyGen(e.to_string()))?;
        let fingerprint = Fingerprint::of_public_key(&public_der);
        Ok(Participant {
            key,
            public_der,
            fingerprint,
        })
    }

    pub fn private_key(&self) -> &RsaPrivateKey {
        &self.key
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn public_der(&self) -> &[u8] {
        &self.public_der
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let sig: Signature =
            BlindedSigningKey::<Sha256>::new(self.key.clone()).sign_with_rng(&mut OsRng, msg);
        sig.to_vec()
    }

    /// The proof of this participant's personal mailbox. Derived from the private key, so a
    /// key file is all one needs to read one's mailbox (and any key, old ones included, has
    /// one); the address it opens is what the key bundle names.
    pub fn mailbox(&self) -> OzoneProof {
        use rsa::pkcs8::EncodePrivateKey;
        let der = self
            .key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_else(|_| self.public_der.clone());
        OzoneProof::from_secret(&blake3::derive_key("echomesh personal mailbox v1", &der))
    }

    /// A signed key bundle for this key, naming its mailbox unless `mailbox` is false (then
    /// the participant is reachable only while connected).
    pub fn bundle(
        &self,
        kind: BundleKind,
        display_name: &str,
        created_at: u64,
        mailbox: bool,
    ) -> KeyBundle {
        let mailbox = mailbox.then(|| self.mailbox().address());
        let msg = KeyBundle::signed_bytes(
            BUNDLE_FORMAT,
            kind,
            &self.public_der,
            display_name,
            created_at,
            mailbox.as_ref(),
        );
        KeyBundle {
            format: BUNDLE_FORMAT,
            kind,
            public_key: Bytes::from(self.public_der.clone()),
            display_name: display_name.to_string(),
            created_at,
            signature: Bytes::from(self.sign(&msg)),
            mailbox,
        }
    }
}

/// Someone to encrypt to, from a verified key bundle.
#[derive(Clone)]
pub struct Recipient {
    key: RsaPublicKey,
    pub fingerprint: Fingerprint,
    pub display_name: String,
    /// Their personal mailbox, when their bundle names one.
    pub mailbox: Option<OzoneAddr>,
}

impl Recipient {
    /// Check a bundle (signature, key shape, not revoked) and take its key.
    pub fn from_bundle(b: &KeyBundle, now_unix: u64) -> Result<Self, E2eError> {
        b.verify(now_unix)
            .map_err(|e| E2eError::BadRecipient(e.to_string()))?;
        if b.kind == BundleKind::Revoke {
            return Err(E2eError::BadRecipient(format!(
                "{} revoked this key; ask them for their new ID",
                b.fingerprint().short_id()
            )));
        }
        let key =
            participant_key(&b.public_key).map_err(|e| E2eError::BadRecipient(e.to_string()))?;
        Ok(Recipient {
            key,
            fingerprint: b.fingerprint(),
            display_name: b.display_name.clone(),
            mailbox: b.mailbox,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    Text(String),
    FileChunk(FileChunk),
}

/// One piece of a file. `file_id` is blake3 of the whole file: the receiver checks it after
/// reassembly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    #[serde(with = "echomesh_proto::wire::bytes32")]
    pub file_id: [u8; 32],
    pub name: String,
    pub total_len: u64,
    pub index: u32,
    pub count: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Body {
    pub recipient: Fingerprint,
    pub sent_at_ms: u64,
    /// Random: makes every payload unique, so the mesh never takes two messages for one.
    pub nonce: [u8; 16],
    pub content: Content,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    sender_key: Bytes,
    body: Bytes,
    signature: Bytes,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: u8,
    wrapped_key: Bytes,
    nonce: [u8; 12],
    ciphertext: Bytes,
}

/// A message that decrypted and whose signature verified.
#[derive(Debug, Clone)]
pub struct Opened {
    pub sender: Fingerprint,
    pub sent_at_ms: u64,
    pub content: Content,
}

use echomesh_proto::clock::unix_ms;

/// Encrypt and sign `content` from `sender` to `to`.
pub fn seal(sender: &Participant, to: &Recipient, content: Content) -> Result<Vec<u8>, E2eError> {
    let body = Body {
        recipient: to.fingerprint,
        sent_at_ms: unix_ms(),
        nonce: rand::random(),
        content,
    };
    seal_parts(sender.public_der(), sender, to, &body)
}

/// Lower level: claim `sender_key_der` as the sender but sign with `signer`. Equal in normal
/// use; tests use a mismatch to forge messages.
pub fn seal_parts(
    sender_key_der: &[u8],
    signer: &Participant,
    to: &Recipient,
    body: &Body,
) -> Result<Vec<u8>, E2eError> {
    let body_bytes = wire::record_to_vec(body).map_err(|e| E2eError::Encode(e.to_string()))?;
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&body_bytes);
    let sealed = Sealed {
        sender_key: Bytes::copy_from_slice(sender_key_der),
        body: Bytes::from(body_bytes),
        signature: Bytes::from(signer.sign(&msg)),
    };
    let plain = wire::record_to_vec(&sealed).map_err(|e| E2eError::Encode(e.to_string()))?;

    let mut aes_key = [0u8; 32];
    rand::rng().fill_bytes(&mut aes_key);
    let nonce: [u8; 12] = rand::random();
    let wrapped = to
        .key
        .encrypt(&mut OsRng, Oaep::new::<Sha256>(), &aes_key)
        .map_err(|e| E2eError::BadRecipient(e.to_string()))?;
    let cipher =
        Aes256Gcm::new_from_slice(&aes_key).map_err(|e| E2eError::Encode(e.to_string()))?;
    let aad = aad(&wrapped);
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        )
        .map_err(|e| E2eError::Encode(e.to_string()))?;
    let env = Envelope {
        format: ENVELOPE_FORMAT,
        wrapped_key: Bytes::from(wrapped),
        nonce,
        ciphertext: Bytes::from(ciphertext),
    };
    wire::record_to_vec(&env).map_err(|e| E2eError::Encode(e.to_string()))
}

fn aad(wrapped_key: &[u8]) -> Vec<u8> {
    let mut a = AAD_CONTEXT.to_vec();
    a.extend_from_slice(wrapped_key);
    a
}

/// Decrypt and verify a payload addressed to `me`.
pub fn open(me: &Participant, payload: &[u8]) -> Result<Opened, OpenError> {
    let env: Envelope =
        wire::decode_body(payload).map_err(|e| OpenError::Malformed(e.to_string()))?;
    if env.format != ENVELOPE_FORMAT {
        return Err(OpenError::Malformed(format!(
            "envelope format {}",
            env.format
        )));
    }
    let aes_key = me
        .key
        .decrypt(Oaep::new::<Sha256>(), &env.wrapped_key)
        .map_err(|_| OpenError::NotForMe)?;
    let cipher = Aes256Gcm::new_from_slice(&aes_key).map_err(|_| OpenError::NotForMe)?;
    let plain = cipher
        .decrypt(
            Nonce::from_slice(&env.nonce),
            Payload {
                msg: &env.ciphertext,
                aad: &aad(&env.wrapped_key),
            },
        )
        .map_err(|_| OpenError::Tampered)?;
    let sealed: Sealed =
        wire::decode_body(&plain).map_err(|e| OpenError::Malformed(e.to_string()))?;
    let claimed = Fingerprint::of_public_key(&sealed.sender_key);
    let key =
        participant_key(&sealed.sender_key).map_err(|_| OpenError::BadSignature { claimed })?;
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&sealed.body);
    let sig = Signature::try_from(sealed.signature.as_ref())
        .map_err(|_| OpenError::BadSignature { claimed })?;
    VerifyingKey::<Sha256>::new(key)
        .verify(&msg, &sig)
        .map_err(|_| OpenError::BadSignature { claimed })?;
    let body: Body =
        wire::decode_body(&sealed.body).map_err(|e| OpenError::Malformed(e.to_string()))?;
    if body.recipient != me.fingerprint {
        return Err(OpenError::WrongRecipient(body.recipient, claimed));
    }
    Ok(Opened {
        sender: claimed,
        sent_at_ms: body.sent_at_ms,
        content: body.content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use echomesh_proto::clock::unix_now;
    use std::sync::OnceLock;

    fn people() -> &'static (Participant, Participant, Participant) {
        static P: OnceLock<(Participant, Participant, Participant)> = OnceLock::new();
        P.get_or_init(|| {
            (
                Participant::generate().unwrap(),
                Participant::generate().unwrap(),
                Participant::generate().unwrap(),
            )
        })
    }

    fn recipient(p: &Participant) -> Recipient {
        Recipient::from_bundle(
            &p.bundle(BundleKind::Publish, "x", unix_now(), true),
            unix_now(),
        )
        .unwrap()
    }

    #[test]
    fn roundtrip_and_every_forgery_is_rejected() {
        let (alice, bob, eve) = people();
        let to_bob = recipient(bob);
        let payload = seal(alice, &to_bob, Content::Text("hello".into())).unwrap();
        let opened = open(bob, &payload).unwrap();
        assert_eq!(opened.sender, alice.fingerprint());
        assert_eq!(opened.content, Content::Text("hello".into()));

        // Not for Eve.
        assert!(matches!(open(eve, &payload), Err(OpenError::NotForMe)));
        // Any flipped ciphertext byte.
        let mut t = payload.clone();
        let last = t.len() - 5;
        t[last] ^= 1;
        assert!(matches!(open(bob, &t), Err(OpenError::Tampered)));
        // Claims Alice, signed by Eve.
        let body = Body {
            recipient: bob.fingerprint(),
            sent_at_ms: 1,
            nonce: [0; 16],
            content: Content::Text("pay Eve".into()),
        };
        let forged = seal_parts(alice.public_der(), eve, &to_bob, &body).unwrap();
        match open(bob, &forged) {
            Err(OpenError::BadSignature { claimed }) => assert_eq!(claimed, alice.fingerprint()),
            other => panic!("forgery accepted: {other:?}"),
        }
        // Alice's message to Eve, re-encrypted by Eve to Bob.
        let to_eve_body = Body {
            recipient: eve.fingerprint(),
            ..body.clone()
        };
        let resent = seal_parts(alice.public_der(), alice, &to_bob, &to_eve_body).unwrap();
        assert!(matches!(
            open(bob, &resent),
            Err(OpenError::WrongRecipient(..))
        ));
        // Junk.
        assert!(matches!(open(bob, b"junk"), Err(OpenError::Malformed(_))));
    }

    #[test]
    fn revoked_or_forged_bundles_are_not_recipients() {
        let (alice, _, eve) = people();
        let revoked = alice.bundle(BundleKind::Revoke, "a", unix_now(), true);
        assert!(Recipient::from_bundle(&revoked, unix_now()).is_err());
        let mut swapped = alice.bundle(BundleKind::Publish, "a", unix_now(), true);
        swapped.public_key = Bytes::from(eve.public_der().to_vec());
        assert!(Recipient::from_bundle(&swapped, unix_now()).is_err());
    }
}
