//! Sealing what a protected device keeps on disk (heightened security mode): a passphrase
//! derives a key with Argon2id that seals the device's secrets, and a random cache key seals
//! each block and record the agent writes. Both seal with AES-256-GCM under a random nonce,
//! stored in front of the ciphertext; the associated data binds a sealed record to its
//! place (a block to its hash), so one cannot be swapped for another.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What sealing adds to a record: its nonce and tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of a cache key.
pub const KEY_LEN: usize = 32;

/// Why a sealed record or secret did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the passphrase is wrong (or the sealed secrets were changed)")]
    WrongPassphrase,
    #[error("a sealed record failed its check: damaged, or not sealed with this device's key")]
    Damaged,
    #[error("the sealed secrets name key-derivation settings this version cannot use")]
    BadParams,
}

/// The cache key: seals every block and record of a protected device, and tags names
/// where a record's key must be found again from a name (a directory's link to a child).
/// Both keys are derived from the stored one with HKDF-SHA256, one per use.
pub struct CacheKey {
    aead: Aes256Gcm,
    names: Hmac<Sha256>,
}

/// The length of a name's tag.
pub const NAME_TAG_LEN: usize = 16;

impl CacheKey {
    /// A new random key, and its bytes (to be sealed under the passphrase).
    pub fn generate() -> (Self, Zeroizing<[u8; KEY_LEN]>) {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(&mut bytes[..]);
        (Self::from_bytes(&bytes), bytes)
    }

    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, bytes);
        let derive = |label: &str| {
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            // HKDF-SHA256 refuses only outputs over 255 * 32 bytes.
            if hk.expand(label.as_bytes(), &mut out[..]).is_err() {
                unreachable!("HKDF output of {KEY_LEN} bytes");
            }
            out
        };
        let aead_key = derive("meshfs cache v1 records");
        let names_key = derive("meshfs cache v1 names");
        Self {
            aead: aead(&aead_key),
            names: <Hmac<Sha256> as KeyInit>::new_from_slice(&names_key[..])
                .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length")),
        }
    }

    /// `nonce || ciphertext || tag` of `plain`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal(&self.aead, aad, plain)
    }

    /// The plaintext of `sealed`, if it was sealed with this key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        open(&self.aead, aad, sealed).ok_or(SealError::Damaged)
    }

    /// A tag of `name` that finds it again without showing it: HMAC-SHA256, cut short.
    pub fn name_tag(&self, name: &[u8]) -> [u8; NAME_TAG_LEN] {
        let mut mac = self.names.clone();
        mac.update(name);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; NAME_TAG_LEN];
        tag.copy_from_slice(&full[..NAME_TAG_LEN]);
        tag
    }
}

fn aead(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    // Fails only past GCM's 64 GiB message bound; records here are far smaller.
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad })
        .unwrap_or_default();
    out.extend_from_slice(&sealed);
    out
}

fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < OVERHEAD {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .ok()
}

/// Argon2id's settings, kept beside what they sealed so that stronger ones can come later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// Random salt, base64.
    pub salt: String,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane (above OWASP's Argon2id minimum), with a fresh salt.
    pub fn fresh() -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
            salt: B64.encode(salt),
        }
    }

    /// The 32-byte key `passphrase` derives under these settings.
    fn derive(&self, passphrase: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
        use argon2::{Algorithm, Argon2, Params, Version};
        let salt = B64.decode(&self.salt).map_err(|_| SealError::BadParams)?;
        let params = Params::new(self.m_kib, self.t, self.p, Some(KEY_LEN))
            .map_err(|_| SealError::BadParams)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, &salt, &mut key[..])
            .map_err(|_| SealError::BadParams)?;
        Ok(key)
    }
}

/// Secrets sealed under a passphrase, as kept in a file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sealed {
    pub kdf: KdfParams,
    /// `nonce || ciphertext || tag`, base64.
    pub sealed: String,
}

/// What the secrets' seal is bound to.
const SECRETS_AAD: &[u8] = b"meshfs sealed secrets v1";

impl Sealed {
    /// Seals `secret` under `passphrase` with fresh settings. Costs one Argon2id run.
    pub fn seal(passphrase: &[u8], secret: &[u8]) -> Result<Self, SealError> {
        let kdf = KdfParams::fresh();
        let key = kdf.derive(passphrase)?;
        let sealed = seal(&aead(&key), SECRETS_AAD, secret);
        Ok(Self {
            kdf,
            sealed: B64.encode(sealed),
        })
    }

    /// The secret, if `passphrase` is the one it was sealed under.
    pub fn open(&self, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let key = self.kdf.derive(passphrase)?;
        let sealed = B64
            .decode(&self.sealed)
            .map_err(|_| SealError::WrongPassphrase)?;
        open(&aead(&key), SECRETS_AAD, &sealed)
            .map(Zeroizing::new)
            .ok_or(SealError::WrongPassphrase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// NIST CAVS gcmEncryptExtIV256 (as in the aes-gcm crate's own tests): our framing
    /// (nonce in front, tag behind) opens the standard's ciphertext.
    #[test]
    fn aes_256_gcm_opens_a_nist_vector() {
        let key: [u8; 32] =
            unhex("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b")
                .try_into()
                .unwrap();
        let mut sealed = unhex("ac93a1a6145299bde902f21a");
        sealed.extend(unhex("8995ae2e6df3dbf96fac7b7137bae67f"));
        sealed.extend(unhex("eca5aa77d51d4a0a14d9c51e1da474ab"));
        let aad = unhex("1e0889016f67601c8ebea4943bc23ad6");
        let plain = open(&aead(&key), &aad, &sealed).unwrap();
        assert_eq!(plain, unhex("2d71bcfa914e4ac045b2aa60955fad24"));
    }

    /// The reference implementation's Argon2id v1.3 vector (t=2, m=64 MiB, p=1).
    #[test]
    fn argon2id_matches_the_reference_vector() {
        let params = KdfParams {
            m_kib: 1 << 16,
            t: 2,
            p: 1,
            salt: B64.encode(b"somesalt"),
        };
        let key = params.derive(b"password").unwrap();
        assert_eq!(
            hex::encode(&key[..]),
            "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7"
        );
    }

    #[test]
    fn a_record_opens_only_with_its_key_its_place_and_every_byte() {
        let (key, _) = CacheKey::generate();
        let sealed = key.seal(b"block 1", b"contents");
        assert_eq!(sealed.len(), b"contents".len() + OVERHEAD);
        assert_eq!(key.open(b"block 1", &sealed).unwrap(), b"contents");
        assert_eq!(key.open(b"block 2", &sealed), Err(SealError::Damaged));
        let (other, _) = CacheKey::generate();
        assert_eq!(other.open(b"block 1", &sealed), Err(SealError::Damaged));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(key.open(b"block 1", &bad), Err(SealError::Damaged), "{i}");
        }
        assert_eq!(key.open(b"block 1", &sealed[..10]), Err(SealError::Damaged));
        assert_ne!(
            key.seal(b"block 1", b"contents"),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_name_tag_is_the_same_for_a_name_and_differs_between_names_and_keys() {
        let (a, _) = CacheKey::generate();
        let (b, _) = CacheKey::generate();
        assert_eq!(a.name_tag(b"report.pdf"), a.name_tag(b"report.pdf"));
        assert_ne!(a.name_tag(b"report.pdf"), a.name_tag(b"report.pdg"));
        assert_ne!(a.name_tag(b"report.pdf"), b.name_tag(b"report.pdf"));
    }

    #[test]
    fn secrets_open_with_their_passphrase_only() {
        let sealed = Sealed::seal(b"correct horse", b"the secrets").unwrap();
        assert_eq!(&**sealed.open(b"correct horse").unwrap(), b"the secrets");
        assert_eq!(
            sealed.open(b"wrong horse").unwrap_err(),
            SealError::WrongPassphrase
        );
        let toml = toml::to_string(&sealed).unwrap();
        assert!(!toml.contains("the secrets"));
        let back: Sealed = toml::from_str(&toml).unwrap();
        assert_eq!(&**back.open(b"correct horse").unwrap(), b"the secrets");
    }
}
