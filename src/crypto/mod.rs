//! All of meshfs's cryptography, small and in one place: device and cloud RSA keys, and the
//! JWS tickets signed with them. Nothing else in the crate calls an RSA primitive.

pub mod keys;
pub mod ticket;
