//! RSA key pairs: generated on the device (never leaves it) or by the cloud for signing;
//! stored as PKCS#8 PEM with mode 0600; public halves travel as SPKI PEM.

pub use rsa::PrivateKey;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::{Generate, PublicKey};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or writing key file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a PKCS#8 RSA private key")]
    BadPrivate { path: String },
    #[error("not an SPKI PEM RSA public key")]
    BadPublic,
    #[error("encoding a key")]
    Encode,
}

/// Makes a new 2048-bit key (the library's default size).
pub fn generate() -> PrivateKey {
    PrivateKey::generate()
}

/// Writes `key` to `path` as PKCS#8 PEM, created with mode 0600 so no other user reads it.
pub fn save_private(key: &PrivateKey, path: &Path) -> Result<(), KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encode)?;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(pem.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// `key` as PKCS#8 DER, for sealing (heightened security keeps no plain key file).
pub fn private_der(key: &PrivateKey) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
    let doc = key.to_pkcs8_der().map_err(|_| KeyError::Encode)?;
    Ok(zeroize::Zeroizing::new(doc.as_bytes().to_vec()))
}

/// `key` as PKCS#8 PEM, for the cloud's database of signing keys.
pub fn private_pem(key: &PrivateKey) -> Result<zeroize::Zeroizing<String>, KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encode)?;
    Ok(zeroize::Zeroizing::new(pem.as_str().to_owned()))
}

/// The key in PKCS#8 PEM `pem`, as read from `what`.
pub fn private_from_pem(pem: &str, what: &str) -> Result<PrivateKey, KeyError> {
    PrivateKey::from_pkcs8_pem(pem).map_err(|_| KeyError::BadPrivate {
        path: what.to_owned(),
    })
}

/// The key in PKCS#8 DER `der`, as unsealed from `what`.
pub fn private_from_der(der: &[u8], what: &Path) -> Result<PrivateKey, KeyError> {
    PrivateKey::from_pkcs8_der(der).map_err(|_| KeyError::BadPrivate {
        path: what.display().to_string(),
    })
}

pub fn load_private(path: &Path) -> Result<PrivateKey, KeyError> {
    let pem =
        zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                path: path.display().to_string(),
                source,
            })?,
        );
    private_from_pem(&pem, &path.display().to_string())
}

/// The public half as SPKI PEM, the form the cloud records under the device node.
pub fn public_pem(key: &PublicKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encode)
}

pub fn parse_public_pem(pem: &str) -> Result<PublicKey, KeyError> {
    PublicKey::from_public_key_pem(pem).map_err(|_| KeyError::BadPublic)
}

/// The public half as SPKI DER in unpadded base64url, the form a peer ticket names it in.
pub fn spki_b64(key: &PublicKey) -> Result<String, KeyError> {
    use base64::Engine;
    let der = key.to_public_key_der().map_err(|_| KeyError::Encode)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der.as_bytes()))
}

/// Reads a key written by [`spki_b64`].
pub fn parse_spki_b64(s: &str) -> Result<PublicKey, KeyError> {
    use base64::Engine;
    let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| KeyError::BadPublic)?;
    PublicKey::from_public_key_der(&der).map_err(|_| KeyError::BadPublic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_key_file_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let key = generate();
        save_private(&key, &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_private(&path).unwrap(), key);
        let pem = public_pem(&key.to_public_key()).unwrap();
        assert_eq!(parse_public_pem(&pem).unwrap(), key.to_public_key());
        assert!(parse_public_pem("not a key").is_err());
        let b64 = spki_b64(&key.to_public_key()).unwrap();
        assert_eq!(parse_spki_b64(&b64).unwrap(), key.to_public_key());
        assert!(parse_spki_b64("AAAA").is_err());
    }
}
