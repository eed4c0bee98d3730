//! All of meshfs's cryptography, small and in one place: device and cloud RSA keys, the
//! JWS tickets signed with them, the peer channel's handshake and record layer, and the
//! seals of a protected device's disk. Nothing else in the crate calls an RSA, AES, HMAC,
//! HKDF or X25519 primitive.

pub mod channel;
pub mod keys;
pub mod seal;
pub mod ticket;

/// Makes rustls use the `ring` provider for every TLS connection of this process (the cloud's
/// server and the agent's HTTPS client), so one crypto backend is built and reviewed.
/// Calling it again is harmless.
///
/// AES-128-GCM is offered first (ring's order starts with AES-256-GCM): it is the strength
/// of the peer channel's AES-128 inside, and relayed blocks cross two TLS legs, each
/// encrypted once and decrypted once, where AES-256's extra rounds cost throughput.
pub fn install_tls_provider() {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    // Err only means a provider is already installed, which is what we want.
    let _ = provider.install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn tls_offers_aes_128_gcm_first() {
        super::install_tls_provider();
        let provider = rustls::crypto::CryptoProvider::get_default().expect("installed");
        assert_eq!(
            provider.cipher_suites.first().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}
