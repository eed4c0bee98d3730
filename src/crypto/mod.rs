//! All of meshfs's cryptography, small and in one place: device and cloud RSA keys, the
//! JWS tickets signed with them, and the peer channel's handshake and record layer. Nothing
//! else in the crate calls an RSA, AES, HMAC, HKDF or X25519 primitive.

pub mod channel;
pub mod keys;
pub mod ticket;

/// Makes rustls use the `ring` provider for every TLS connection of this process (the cloud's
/// server and the agent's HTTPS client), so one crypto backend is built and reviewed.
/// Calling it again is harmless.
pub fn install_tls_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
