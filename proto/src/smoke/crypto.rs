//! The primitives Smoke and SmokeStack build their frames from: PBKDF2 key streams,
//! AES-256-CBC with the IV in front, HMAC-SHA512, and signature checks on X.509-encoded public
//! keys (ECDSA P-384 and RSA with SHA-512; Smoke's Rainbow and SPHINCS-256 are refused).

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};

/// Length of an AES key, of a SHA-512 digest and HMAC, and of a key stream.
pub const KEY_LEN: usize = 32;
pub const HASH_LEN: usize = 64;
pub const STREAM_LEN: usize = KEY_LEN + HASH_LEN;
const IV_LEN: usize = 16;

pub type HmacSha512 = Hmac<Sha512>;

/// An encryption key and a MAC key derived from one secret string (an ozone address or a
/// SipHash ID): `salt = SHA-512(s)`, `t = PBKDF2-SHA1(s, salt, 4096, 20)`,
/// `stream = PBKDF2-SHA1(base64(t), salt, 1, 96)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Stream {
    pub enc: [u8; KEY_LEN],
    pub mac: [u8; HASH_LEN],
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream(..)")
    }
}

impl Stream {
    pub fn derive(secret: &str) -> Stream {
        use base64::Engine;
        let s = secret.trim();
        let salt = sha512(&[s.as_bytes()]);
        let mut t = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(s.as_bytes(), &salt, 4096, &mut t);
        let pw = base64::engine::general_purpose::STANDARD.encode(t);
        let mut out = [0u8; STREAM_LEN];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(pw.as_bytes(), &salt, 1, &mut out);
        let mut enc = [0u8; KEY_LEN];
        let mut mac = [0u8; HASH_LEN];
        enc.copy_from_slice(&out[..KEY_LEN]);
        mac.copy_from_slice(&out[KEY_LEN..]);
        Stream { enc, mac }
    }

    /// The keyed MAC, ready to clone (the key schedule is paid once).
    pub fn mac(&self) -> HmacSha512 {
        // An HMAC key may have any length: this cannot fail.
        HmacSha512::new_from_slice(&self.mac).unwrap_or_else(|_| unreachable!())
    }

    /// `AES-CBC(enc, plain) || HMAC(mac, ciphertext)`: how Smoke seals ozone requests and
    /// how SmokeStack seals EPKS and `0x03` answers (before their destination tag).
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = encrypt(&self.enc, plain);
        let tag = hmac(&self.mac, &out);
        out.extend_from_slice(&tag);
        out
    }

    /// The plaintext of `ciphertext || HMAC`, if the MAC is this stream's.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let split = sealed.len().checked_sub(HASH_LEN)?;
        let (ct, tag) = sealed.split_at(split);
        let mut m = self.mac();
        m.update(ct);
        m.verify_slice(tag).ok()?;
        decrypt(&self.enc, ct)
    }
}

pub fn sha512(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn hmac(key: &[u8], data: &[u8]) -> [u8; HASH_LEN] {
    let mut m = HmacSha512::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Constant-time check of `tag == HMAC(key, data)`.
pub fn hmac_matches(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    let mut m = HmacSha512::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.verify_slice(tag).is_ok()
}

/// AES-256-CBC with PKCS#7 padding and a random IV in front (Smoke's `Cryptography.encrypt`).
pub fn encrypt(key: &[u8; KEY_LEN], plain: &[u8]) -> Vec<u8> {
    let iv: [u8; IV_LEN] = rand::random();
    let ct = cbc::Encryptor::<aes::Aes256>::new(key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    let mut out = Vec::with_capacity(IV_LEN + ct.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&ct);
    out
}

/// The inverse of [`encrypt`]; `None` for a short input or bad padding.
pub fn decrypt(key: &[u8; KEY_LEN], data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 2 * IV_LEN || data.len() % IV_LEN != 0 {
        return None;
    }
    let (iv, ct) = data.split_at(IV_LEN);
    let iv: [u8; IV_LEN] = iv.try_into().ok()?;
    cbc::Decryptor::<aes::Aes256>::new(key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ct)
        .ok()
}

/// Why a public key or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the public key is not X.509 SubjectPublicKeyInfo DER")]
    Undecodable,
    /// Rainbow, SPHINCS-256, McEliece or an unknown curve: echomesh checks ECDSA P-384 and
    /// RSA signatures only.
    #[error("unsupported public-key algorithm {0} (echomesh checks ECDSA P-384 and RSA only)")]
    Unsupported(String),
    #[error("the signature does not verify")]
    BadSignature,
}

impl KeyError {
    pub fn label(&self) -> &'static str {
        match self {
            KeyError::Undecodable => "undecodable_key",
            KeyError::Unsupported(_) => "unsupported_algorithm",
            KeyError::BadSignature => "bad_signature",
        }
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P384: &str = "1.3.132.0.34";

/// A participant's public key of a kind echomesh can check signatures with.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Ec(p384::ecdsa::VerifyingKey),
    Rsa(Box<rsa::RsaPublicKey>),
}

impl PublicKey {
    /// Parse an X.509 `SubjectPublicKeyInfo` (what Java's `getEncoded()` returns).
    pub fn from_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        use p384::pkcs8::der::Decode;
        use p384::pkcs8::DecodePublicKey;
        let info = p384::pkcs8::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|_| KeyError::Undecodable)?;
        let oid = info.algorithm.oid.to_string();
        match oid.as_str() {
            OID_RSA => rsa::RsaPublicKey::from_public_key_der(der)
                .map(|k| PublicKey::Rsa(Box::new(k)))
                .map_err(|_| KeyError::Undecodable),
            OID_EC => {
                let curve = info
                    .algorithm
                    .parameters_oid()
                    .map(|o| o.to_string())
                    .unwrap_or_default();
                if curve != OID_P384 {
                    return Err(KeyError::Unsupported(format!("EC curve {curve}")));
                }
                p384::ecdsa::VerifyingKey::from_public_key_der(der)
                    .map(PublicKey::Ec)
                    .map_err(|_| KeyError::Undecodable)
            }
            other => Err(KeyError::Unsupported(other.to_string())),
        }
    }

    /// Check Java's `SHA512withECDSA` (DER signature) or `SHA512withRSA` (PKCS#1 v1.5).
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let digest = sha512(&[data]);
        match self {
            PublicKey::Ec(k) => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                let sig = p384::ecdsa::Signature::from_der(signature)
                    .map_err(|_| KeyError::BadSignature)?;
                k.verify_prehash(&digest, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
            PublicKey::Rsa(k) => k
                .verify(rsa::Pkcs1v15Sign::new::<Sha512>(), &digest, signature)
                .map_err(|_| KeyError::BadSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_stream() {
        let a = Stream::derive("192.168.1.10:4710:TCP");
        let b = Stream::derive("192.168.1.10:4710:UDP");
        assert_eq!(a, Stream::derive("  192.168.1.10:4710:TCP "));
        let sealed = a.seal(b"retrieval");
        assert_eq!(a.open(&sealed).as_deref(), Some(&b"retrieval"[..]));
        assert_eq!(b.open(&sealed), None);
        assert_eq!(a.open(&sealed[..10]), None);
    }

    #[test]
    fn keys_of_other_algorithms_are_refused_with_their_name() {
        assert_eq!(
            PublicKey::from_der(b"garbage").unwrap_err(),
            KeyError::Undecodable
        );
        // An RSA key parses; its signature check fails on garbage.
        use rsa::pkcs8::EncodePublicKey;
        let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let der = k.to_public_key().to_public_key_der().unwrap();
        let pk = PublicKey::from_der(der.as_bytes()).unwrap();
        assert_eq!(pk.verify(b"x", b"y").unwrap_err(), KeyError::BadSignature);
        let sig = k
            .sign(rsa::Pkcs1v15Sign::new::<Sha512>(), &sha512(&[b"x"]))
            .unwrap();
        pk.verify(b"x", &sig).unwrap();
    }
}
