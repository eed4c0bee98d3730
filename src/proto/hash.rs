//! Content addresses: the hash of a block's bytes, tagged with the function that made it.
//!
//! New blocks are addressed by BLAKE3, several times faster a core than SHA-256, and every
//! block is hashed at least three times (when it is written, when the cloud stores it, when
//! another device fetches it). Blocks addressed by SHA-256, as meshfs made them before, stay valid:
//! a hash knows its function, and a block is checked with that function.
//!
//! ```text
//! text   BLAKE3   "b3-" ‖ 64 lowercase hex digits   (URLs, file names, JSON)
//!        SHA-256  64 lowercase hex digits            (the form of earlier versions)
//! wire   alg: u8 (0 SHA-256, 1 BLAKE3) ‖ digest: [u8; 32]
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The function a [`BlockHash`] was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlg {
    /// SHA-256, for blocks stored by earlier versions.
    Sha256 = 0,
    /// BLAKE3 (256-bit output), for every new block.
    Blake3 = 1,
}

/// Bytes of a hash in the peer protocol: the function, then the digest.
pub const WIRE_LEN: usize = 33;

const BLAKE3_PREFIX: &str = "b3-";

/// The content address of a block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash {
    alg: HashAlg,
    digest: [u8; 32],
}

impl BlockHash {
    /// The address of a new block: the BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self {
            alg: HashAlg::Blake3,
            digest: *blake3::hash(data).as_bytes(),
        }
    }

    /// `data`'s hash under `alg`.
    pub fn with(alg: HashAlg, data: &[u8]) -> Self {
        let digest = match alg {
            HashAlg::Sha256 => Sha256::digest(data).into(),
            HashAlg::Blake3 => *blake3::hash(data).as_bytes(),
        };
        Self { alg, digest }
    }

    /// Whether `data` is the block this hash names (hashed with this hash's function).
    pub fn matches(&self, data: &[u8]) -> bool {
        Self::with(self.alg, data) == *self
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// The digest alone, as lowercase hex (a fan-out directory name is cut from it).
    pub fn digest_hex(&self) -> String {
        let mut out = [0u8; 64];
        // 32 bytes always fit 64 hex digits, which are ASCII.
        match hex::encode_to_slice(self.digest, &mut out) {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            Err(_) => unreachable!("32 bytes as 64 hex digits"),
        }
    }

    /// The text form, used in URLs, file names and JSON.
    pub fn to_hex(self) -> String {
        match self.alg {
            HashAlg::Sha256 => self.digest_hex(),
            HashAlg::Blake3 => format!("{BLAKE3_PREFIX}{}", self.digest_hex()),
        }
    }

    /// The peer protocol's form.
    pub fn to_wire(&self) -> [u8; WIRE_LEN] {
        let mut out = [0u8; WIRE_LEN];
        out[0] = self.alg as u8;
        out[1..].copy_from_slice(&self.digest);
        out
    }

    /// Reads the peer protocol's form; `None` for an unknown function.
    pub fn from_wire(bytes: &[u8; WIRE_LEN]) -> Option<Self> {
        let alg = match bytes[0] {
            0 => HashAlg::Sha256,
            1 => HashAlg::Blake3,
            _ => return None,
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[1..]);
        Some(Self { alg, digest })
    }
}

/// A string that is not a block hash.
#[derive(Debug, thiserror::Error)]
#[error("not a block hash (want \"b3-\" and 64 hex digits, or 64 hex digits for SHA-256)")]
pub struct BadHash;

impl FromStr for BlockHash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        let (alg, hex) = match s.strip_prefix(BLAKE3_PREFIX) {
            Some(rest) => (HashAlg::Blake3, rest),
            None => (HashAlg::Sha256, s),
        };
        let mut digest = [0u8; 32];
        if hex.len() != 64 {
            return Err(BadHash);
        }
        hex::decode_to_slice(hex, &mut digest).map_err(|_| BadHash)?;
        // One spelling per hash: upper-case digits would name a second file for one block.
        if hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(BadHash);
        }
        Ok(Self { alg, digest })
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({:?} {})", self.alg, &self.digest_hex()[..12])
    }
}

impl Serialize for BlockHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlockHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BLAKE3 reference vectors (BLAKE3-team/BLAKE3, test_vectors.json): the input is
    /// the bytes 0, 1, … 250, 0, 1, … of the given length.
    #[test]
    fn blake3_matches_the_reference_vectors() {
        let input = |len: usize| (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        for (len, want) in [
            (
                0,
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            ),
            (
                1,
                "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
            ),
            (
                1024,
                "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
            ),
            (
                1025,
                "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
            ),
            (
                102400,
                "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
            ),
        ] {
            let h = BlockHash::of(&input(len));
            assert_eq!(h.to_hex(), format!("b3-{want}"), "length {len}");
            assert!(h.matches(&input(len)));
        }
    }

    #[test]
    fn sha256_blocks_of_earlier_versions_still_parse_and_check() {
        let legacy = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let h: BlockHash = legacy.parse().unwrap();
        assert_eq!(h.alg(), HashAlg::Sha256);
        assert_eq!(h, BlockHash::with(HashAlg::Sha256, b"abc"));
        assert!(h.matches(b"abc"));
        assert!(!h.matches(b"abd"));
        assert_eq!(h.to_hex(), legacy);
    }

    #[test]
    fn text_and_wire_forms_round_trip_and_name_their_function() {
        for h in [BlockHash::of(b"x"), BlockHash::with(HashAlg::Sha256, b"x")] {
            assert_eq!(h.to_hex().parse::<BlockHash>().unwrap(), h);
            assert_eq!(BlockHash::from_wire(&h.to_wire()), Some(h));
        }
        assert_ne!(BlockHash::of(b"x"), BlockHash::with(HashAlg::Sha256, b"x"));
        let mut wire = BlockHash::of(b"x").to_wire();
        wire[0] = 7;
        assert_eq!(BlockHash::from_wire(&wire), None);
    }

    #[test]
    fn rejects_short_non_hex_upper_case_and_unknown_prefixes() {
        assert!("abcd".parse::<BlockHash>().is_err());
        assert!("z".repeat(64).parse::<BlockHash>().is_err());
        assert!("A".repeat(64).parse::<BlockHash>().is_err());
        assert!(
            format!("b3-{}", "0".repeat(63))
                .parse::<BlockHash>()
                .is_err()
        );
        assert!(
            format!("b4-{}", "0".repeat(64))
                .parse::<BlockHash>()
                .is_err()
        );
    }
}
