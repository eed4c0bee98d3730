//! The key schedule: HKDF-SHA256 (RFC 5869) from both sides' secrets and the X25519 shared
//! secret, salted with the transcript hash, into per-direction record keys and Finished keys.
//!
//! ```text
//! PRK = HKDF-Extract(salt = SHA-256(transcript through both key transports),
//!                    ikm  = initiator secret ‖ responder secret ‖ X25519 shared secret)
//! per direction d in {"i->r", "r->i"}:
//!   key      = HKDF-Expand(PRK, "meshfs peer v1 d key", 16)
//!   mac      = HKDF-Expand(PRK, "meshfs peer v1 d mac", 32)
//!   iv       = HKDF-Expand(PRK, "meshfs peer v1 d iv", 16)
//!   finished = HKDF-Expand(PRK, "meshfs peer v1 d finished", 32)
//! ```

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The length of each side's key-transport secret and of the X25519 shared secret.
pub const SECRET_LEN: usize = 32;
/// A 32-byte secret that is wiped when dropped.
pub type Secret = Zeroizing<[u8; SECRET_LEN]>;

/// One direction's record keys.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DirectionKeys {
    /// AES-128 key.
    pub key: [u8; 16],
    /// HMAC-SHA256 key.
    pub mac: [u8; 32],
    /// The counter block of frame 0 (see `record`).
    pub iv: [u8; 16],
    /// Key of this direction's Finished MAC over the transcript.
    pub finished: [u8; 32],
}

/// Everything the handshake derives.
pub struct Schedule {
    /// Keys for what the initiator sends.
    pub i2r: DirectionKeys,
    /// Keys for what the responder sends.
    pub r2i: DirectionKeys,
}

/// Derives both directions' keys. `transcript` is the SHA-256 of every handshake message,
/// as sent, up to and including both key transports.
pub fn derive(
    initiator: &Secret,
    responder: &Secret,
    shared: &Secret,
    transcript: &[u8; 32],
) -> Schedule {
    let mut ikm = Zeroizing::new([0u8; 3 * SECRET_LEN]);
    for (dst, src) in ikm
        .chunks_exact_mut(SECRET_LEN)
        .zip([initiator, responder, shared])
    {
        dst.copy_from_slice(&src[..]);
    }
    let hk = Hkdf::<Sha256>::new(Some(transcript), &ikm[..]);
    Schedule {
        i2r: direction(&hk, "i->r"),
        r2i: direction(&hk, "r->i"),
    }
}

fn direction(hk: &Hkdf<Sha256>, dir: &str) -> DirectionKeys {
    let mut keys = DirectionKeys {
        key: [0; 16],
        mac: [0; 32],
        iv: [0; 16],
        finished: [0; 32],
    };
    for (what, out) in [
        ("key", &mut keys.key[..]),
        ("mac", &mut keys.mac[..]),
        ("iv", &mut keys.iv[..]),
        ("finished", &mut keys.finished[..]),
    ] {
        let label = format!("meshfs peer v1 {dir} {what}");
        // HKDF-SHA256 refuses only outputs over 255 * 32 bytes; these are at most 32.
        if hk.expand(label.as_bytes(), out).is_err() {
            unreachable!("HKDF output of {} bytes", out.len());
        }
    }
    keys
}

/// `HMAC-SHA256(key, transcript_hash)`, the body of a Finished message.
pub fn finished_mac(key: &[u8; 32], transcript_hash: &[u8; 32]) -> [u8; 32] {
    let mut mac = hmac_sha256(key);
    mac.update(transcript_hash);
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA256 keyed with 32 bytes. RFC 2104 pads a key shorter than the 64-byte block
/// with zeros; doing that here makes the keying infallible.
pub(crate) fn hmac_sha256(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&(*block).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// RFC 5869 Appendix A.1, test case 1.
    #[test]
    fn hkdf_matches_rfc5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt: [u8; 13] = unhex("000102030405060708090a0b0c");
        let info: [u8; 10] = unhex("f0f1f2f3f4f5f6f7f8f9");
        let (prk, hk) = Hkdf::<Sha256>::extract(Some(&salt), &ikm);
        assert_eq!(
            hex::encode(prk),
            "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
        );
        let mut okm = [0u8; 42];
        hk.expand(&info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
             34007208d5b887185865"
        );
    }

    #[test]
    fn hmac_with_a_padded_key_is_hmac_with_the_key() {
        let key = [7u8; 32];
        let mut a = hmac_sha256(&key);
        let mut b = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        a.update(b"x");
        b.update(b"x");
        assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
    }

    /// The expected values were computed once, independently of this code, with python3's
    /// `hashlib`/`hmac` implementing RFC 5869 by hand:
    ///
    /// ```text
    /// import hashlib, hmac
    /// th  = hashlib.sha256(b"meshfs transcript").digest()
    /// prk = hmac.new(th, b"\x01"*32 + b"\x02"*32 + b"\x03"*32, hashlib.sha256).digest()
    /// out = lambda label, n: hmac.new(prk, label.encode() + b"\x01", hashlib.sha256).digest()[:n]
    /// out("meshfs peer v1 i->r key", 16).hex() …
    /// hmac.new(finished_i2r, th, hashlib.sha256).hexdigest()
    /// ```
    #[test]
    fn schedule_matches_independent_vectors() {
        let th: [u8; 32] = <Sha256 as sha2::Digest>::digest(b"meshfs transcript").into();
        let s = derive(
            &Zeroizing::new([1; 32]),
            &Zeroizing::new([2; 32]),
            &Zeroizing::new([3; 32]),
            &th,
        );
        let expect = [
            (&s.i2r.key[..], "5460756c2aedc435d39cc597a80acceb"),
            (
                &s.i2r.mac[..],
                "4b97efc97aaacef885a00d68cb83b17422f2ea64eab4a717c5a2c2bd67aed77c",
            ),
            (&s.i2r.iv[..], "b877290ea3fd280f0e10f8fee087d1ef"),
            (
                &s.i2r.finished[..],
                "b9ffb3f699db4c9d957f340fe35716afae32016a6b67c6d259c0580892233689",
            ),
            (&s.r2i.key[..], "000dfa1817bba0c625d23bd6493f26f4"),
            (
                &s.r2i.mac[..],
                "c5f3250e0f3285b5625597d0a208f3a5a661fa66cb7dbcf213111d046e77bedb",
            ),
            (&s.r2i.iv[..], "54d338eae788036a7aee70c4fbf264fd"),
            (
                &s.r2i.finished[..],
                "354ea9fa722d713aa25e15ae658db9e672449606e19a014197e1b55ea4e8fb15",
            ),
        ];
        for (got, want) in expect {
            assert_eq!(hex::encode(got), want);
        }
        assert_eq!(
            hex::encode(finished_mac(&s.i2r.finished, &th)),
            "076fcc56ee845199a37bd83b2bd30ac6208d1e404a2a925f752e596bde4d9417"
        );
    }

    #[test]
    fn every_input_changes_every_key() {
        let th = [9u8; 32];
        let base = derive(
            &Zeroizing::new([1; 32]),
            &Zeroizing::new([2; 32]),
            &Zeroizing::new([3; 32]),
            &th,
        );
        let variants = [
            derive(
                &Zeroizing::new([0; 32]),
                &Zeroizing::new([2; 32]),
                &Zeroizing::new([3; 32]),
                &th,
            ),
            derive(
                &Zeroizing::new([1; 32]),
                &Zeroizing::new([0; 32]),
                &Zeroizing::new([3; 32]),
                &th,
            ),
            derive(
                &Zeroizing::new([1; 32]),
                &Zeroizing::new([2; 32]),
                &Zeroizing::new([0; 32]),
                &th,
            ),
            derive(
                &Zeroizing::new([1; 32]),
                &Zeroizing::new([2; 32]),
                &Zeroizing::new([3; 32]),
                &[0; 32],
            ),
        ];
        for v in &variants {
            assert_ne!(v.i2r.key, base.i2r.key);
            assert_ne!(v.r2i.mac, base.r2i.mac);
            assert_ne!(v.i2r.finished, base.i2r.finished);
        }
        assert_ne!(base.i2r.key, base.r2i.key);
        assert_ne!(base.i2r.mac, base.r2i.mac);
    }
}
