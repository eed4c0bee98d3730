//! TLS for the cloud and for a relay on its own: a private CA made on first start
//! (`<dir>/ca.pem`, and `ca-key.pem` with mode 0600) that clients pin, and a server
//! certificate for the configured names signed by it. The CA is reused on every later start; the server
//! certificate and its key are made afresh at each start (in memory only), so a change of
//! names needs nothing but a restart.

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

pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The subject of the cloud's CA.
pub const CLOUD_CA_NAME: &str = "meshfs cloud CA";

/// The parameters of the CA named `name`. Fixed, so the issuer rebuilt at a later start
/// from `ca-key.pem` names the same subject and key identifier as the saved `ca.pem`.
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

/// The CA's key: loaded, or made with its certificate on first start.
fn load_or_create_ca(dir: &Path, name: &str) -> Result<KeyPair, TlsError> {
    let cert_path = dir.join(CA_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            KeyPair::from_pem(&pem).map_err(tls_err("reading ca-key.pem"))
        }
        (false, false) => {
            tracing::info!(path = %cert_path.display(), name, "creating a CA");
            let key = KeyPair::generate().map_err(tls_err("generating the CA key"))?;
            let cert = ca_params(name)
                .self_signed(&key)
                .map_err(tls_err("signing the CA"))?;
            write_file(&key_path, &key.serialize_pem(), 0o600)?;
            write_file(&cert_path, &cert.pem(), 0o644)?;
            Ok(key)
        }
        _ => Err(TlsError::CaIncomplete {
            dir: dir.display().to_string(),
        }),
    }
}

/// The server certificate for `names` signed by the CA `ca_name` in `dir`: (certificate
/// DER, PKCS#8 key DER).
fn server_cert(
    dir: &Path,
    ca_name: &str,
    names: &[String],
) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let issuer = Issuer::new(ca_params(ca_name), load_or_create_ca(dir, ca_name)?);
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
/// a relay (no ALPN), one certificate for both, signed by the CA `ca_name` in `dir`.
pub fn server_configs(
    dir: &Path,
    ca_name: &str,
    names: &[String],
) -> Result<(RustlsConfig, Arc<rustls::ServerConfig>), TlsError> {
    crate::crypto::install_tls_provider();
    let (cert, key) = server_cert(dir, ca_name, names)?;
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
    fn ca_is_made_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        server_cert(dir.path(), CLOUD_CA_NAME, &["localhost".into()]).unwrap();
        let ca = std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap();
        let key_mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(key_mode.mode() & 0o777, 0o600);
        server_cert(dir.path(), CLOUD_CA_NAME, &["127.0.0.1".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_FILE)).unwrap(),
            ca
        );
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CA_FILE), "x").unwrap();
        assert!(matches!(
            server_cert(dir.path(), CLOUD_CA_NAME, &["localhost".into()]),
            Err(TlsError::CaIncomplete { .. })
        ));
    }
}
