//! TLS for the cloud and for a relay on its own: a private CA that clients pin, and a
//! server certificate for the configured names signed by it. A relay on its own keeps its
//! CA in its directory (`ca.pem`, and `ca-key.pem` with mode 0600), made on first start;
//! the cloud keeps its CA in the database, so that every process signs with the same one,
//! and writes it into each data directory in the same two files. The server certificate
//! and its key are made afresh at each start (in memory only), so a change of names needs
//! nothing but a restart.

use axum_server::tls_rustls::RustlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The subject of the cloud's CA.
pub const CLOUD_CA_NAME: &str = "meshfs cloud CA";

/// The parameters of the CA named `name`. Fixed, so the issuer rebuilt at a later start
/// from the CA's key names the same subject and key identifier as its certificate.
fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Why a CA or server certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("file or directory {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {context}")]
    Certificate {
        context: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "{dir} holds only one of ca.pem and ca-key.pem; restore the other or remove both to make a new CA (clients must then trust the new ca.pem)"
    )]
    CaIncomplete { dir: String },
    #[error(
        "{dir}/ca.pem is not the CA this cloud's database holds, so devices that pinned one of them could not reach this process; move ca.pem and ca-key.pem out of {dir} (the database's CA is written in their place), or give this process the database its CA belongs to"
    )]
    CaDiffers { dir: String },
    #[error("TLS configuration")]
    Config(#[source] rustls::Error),
}

fn tls_err(context: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Certificate { context, source }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write_file(path: &Path, data: &str, mode: u32) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// A CA: its certificate, which clients pin, and its private key, both PEM.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl Ca {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(tls_err("generating the CA key"))?;
        let cert = ca_params(name)
            .self_signed(&key)
            .map_err(tls_err("signing the CA"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// The CA kept in `dir`, if it holds one.
    pub fn read(dir: &Path) -> Result<Option<Self>, TlsError> {
        let cert_path = dir.join(CA_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok(Some(Self {
                cert_pem: std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?,
                key_pem: Zeroizing::new(
                    std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?,
                ),
            })),
            (false, false) => Ok(None),
            _ => Err(TlsError::CaIncomplete {
                dir: dir.display().to_string(),
            }),
        }
    }

    /// The CA kept in `dir`, made and written there on first start.
    pub fn in_dir(dir: &Path, name: &str) -> Result<Self, TlsError> {
        if let Some(ca) = Self::read(dir)? {
            return Ok(ca);
        }
        tracing::info!(dir = %dir.display(), name, "creating a CA");
        let ca = Self::generate(name)?;
        ca.write(dir)?;
        Ok(ca)
    }

    /// Writes this CA into `dir` unless it is there already; refuses if `dir` holds
    /// another.
    pub fn keep_in(&self, dir: &Path) -> Result<(), TlsError> {
        match Self::read(dir)? {
            None => self.write(dir),
            Some(kept) if kept.cert_pem == self.cert_pem && kept.key_pem == self.key_pem => Ok(()),
            Some(_) => Err(TlsError::CaDiffers {
                dir: dir.display().to_string(),
            }),
        }
    }

    fn write(&self, dir: &Path) -> Result<(), TlsError> {
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(CA_FILE), &self.cert_pem, 0o644)
    }

    fn issuer(&self, name: &str) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(tls_err("reading the CA's key"))?;
        Ok(Issuer::new(ca_params(name), key))
    }
}

/// The server certificate for `names` signed by `ca`, named `ca_name`: (certificate DER,
/// PKCS#8 key DER).
fn server_cert(ca: &Ca, ca_name: &str, names: &[String]) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let issuer = ca.issuer(ca_name)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(tls_err("server names"))?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(tls_err("generating the server key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_err("signing the server certificate"))?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// The rustls server configurations for HTTPS (with ALPN for HTTP/2 and HTTP/1.1) and for
/// a relay (no ALPN), one certificate for both, signed by `ca`, named `ca_name`.
pub fn server_configs(
    ca: &Ca,
    ca_name: &str,
    names: &[String],
) -> Result<(RustlsConfig, Arc<rustls::ServerConfig>), TlsError> {
    crate::crypto::install_tls_provider();
    let (cert, key) = server_cert(ca, ca_name, names)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let relay = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert)], key)
        .map_err(TlsError::Config)?;
    let mut https = relay.clone();
    https.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((RustlsConfig::from_config(Arc::new(https)), Arc::new(relay)))
}

/// An HTTPS client that trusts only the CA `ca_pem` (the cloud's, as a device or a relay
/// pinned it).
pub fn https_client(ca_pem: &[u8]) -> Result<reqwest::Client, reqwest::Error> {
    crate::crypto::install_tls_provider();
    let cert = reqwest::Certificate::from_pem(ca_pem)?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .https_only(true)
        .connect_timeout(Duration::from_secs(5))
        // A server that accepts but never answers must not hang a request forever; long
        // polls and block transfers set their own, longer timeouts.
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_ca_in_a_directory_is_made_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::in_dir(dir.path(), CLOUD_CA_NAME).unwrap();
        server_cert(&ca, CLOUD_CA_NAME, &["localhost".into()]).unwrap();
        let key_mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(key_mode.mode() & 0o777, 0o600);
        let again = Ca::in_dir(dir.path(), CLOUD_CA_NAME).unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        server_cert(&again, CLOUD_CA_NAME, &["127.0.0.1".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap(),
            ca.cert_pem
        );
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CA_FILE), "x").unwrap();
        assert!(matches!(
            Ca::in_dir(dir.path(), CLOUD_CA_NAME),
            Err(TlsError::CaIncomplete { .. })
        ));
    }

    #[test]
    fn a_directory_keeps_one_ca_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(CLOUD_CA_NAME).unwrap();
        ca.keep_in(dir.path()).unwrap();
        ca.keep_in(dir.path()).unwrap();
        let other = Ca::generate(CLOUD_CA_NAME).unwrap();
        assert!(matches!(
            other.keep_in(dir.path()),
            Err(TlsError::CaDiffers { .. })
        ));
        let kept = Ca::read(dir.path()).unwrap().unwrap();
        assert_eq!(kept.cert_pem, ca.cert_pem);
        assert_eq!(kept.key_pem, ca.key_pem);
    }
}
