//! Content addresses: SHA-256 of a block, written as 64 lowercase hex digits.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The SHA-256 of a block's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Lowercase hex, the form used in URLs and file names.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a SHA-256 block hash (want 64 hex digits)")]
pub struct BadHash;

impl FromStr for BlockHash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(BadHash);
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| BadHash)?;
        Ok(Self(out))
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", &self.to_hex()[..12])
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

    #[test]
    fn sha256_of_abc_matches_fips_180_vector() {
        let h = BlockHash::of(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_hex().parse::<BlockHash>().unwrap(), h);
    }

    #[test]
    fn rejects_short_and_non_hex() {
        assert!("abcd".parse::<BlockHash>().is_err());
        assert!("z".repeat(64).parse::<BlockHash>().is_err());
    }
}
