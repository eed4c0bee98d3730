//! JWS compact tokens signed with RSASSA-PSS SHA-256 (`PS256`, RFC 7515/7518), the form of
//! every meshfs ticket and of a device's signed assertion.
//!
//! Only [`KeySet::check`] builds a [`VerifiedTicket`]: code that needs an authorized caller
//! asks for one and so cannot run on an unchecked token (rustls' `verify.rs` habit).

use crate::proto::{Claims, Jwk, Jwks, TicketKind, claims::ISSUER};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::pss::{Signature, SigningKey, VerifyingKey};
use rsa::sha2::Sha256;
use rsa::signature::{Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::HashMap;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Allowed clock difference for `nbf`/`iat` in seconds.
pub const LEEWAY_SECS: i64 = 30;

/// Why a token was refused. Each names its fault so the cloud can answer precisely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is not a well-formed JWS")]
    Malformed,
    #[error("the ticket's algorithm is not PS256")]
    UnsupportedAlg,
    #[error("the ticket names a signing key (kid) this cloud does not have")]
    UnknownKid,
    #[error("the ticket's signature does not verify")]
    BadSignature,
    #[error("the ticket has expired")]
    Expired,
    #[error("the ticket is not valid yet")]
    NotYetValid,
    #[error("the ticket was issued for another audience or issuer")]
    WrongAudience,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Signs tokens with one RSA key, named by `kid` in each header.
pub struct Signer {
    kid: String,
    key: SigningKey<Sha256>,
    public: PublicKey,
}

impl Signer {
    pub fn new(kid: impl Into<String>, key: PrivateKey) -> Self {
        let public = key.to_public_key();
        Self {
            kid: kid.into(),
            key: SigningKey::new(key),
            public,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// `base64url(header) . base64url(payload) . base64url(PS256 signature)`.
    pub fn sign<T: Serialize>(&self, payload: &T) -> String {
        let header = Header {
            alg: "PS256".into(),
            kid: Some(self.kid.clone()),
            typ: Some("JWT".into()),
        };
        // Serializing plain structs of strings and integers cannot fail.
        let h = serde_json::to_vec(&header).unwrap_or_default();
        let p = serde_json::to_vec(payload).unwrap_or_default();
        let input = format!("{}.{}", B64.encode(h), B64.encode(p));
        let sig: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(Box::<[u8]>::from(sig)))
    }

    /// The public half as a JWK for `/.well-known/jwks.json`.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "RSA".into(),
            kid: self.kid.clone(),
            alg: "PS256".into(),
            use_: "sig".into(),
            n: B64.encode(self.public.n_bytes()),
            e: B64.encode(self.public.e_bytes()),
        }
    }
}

/// A token split and decoded, signature not yet checked.
struct Parsed<'a> {
    header: Header,
    payload: Vec<u8>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn parse(token: &str) -> Result<Parsed<'_>, TicketError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TicketError::Malformed);
    }
    let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(TicketError::Malformed)?;
    let (h_b64, p_b64) = signing_input
        .split_once('.')
        .ok_or(TicketError::Malformed)?;
    let decode = |s: &str| B64.decode(s).map_err(|_| TicketError::Malformed);
    let header: Header =
        serde_json::from_slice(&decode(h_b64)?).map_err(|_| TicketError::Malformed)?;
    if header.alg != "PS256" {
        return Err(TicketError::UnsupportedAlg);
    }
    Ok(Parsed {
        header,
        payload: decode(p_b64)?,
        signing_input,
        signature: decode(sig_b64)?,
    })
}

fn verify_sig(key: &VerifyingKey<Sha256>, parsed: &Parsed<'_>) -> Result<(), TicketError> {
    let sig =
        Signature::try_from(parsed.signature.as_slice()).map_err(|_| TicketError::BadSignature)?;
    key.verify(parsed.signing_input.as_bytes(), &sig)
        .map_err(|_| TicketError::BadSignature)
}

/// Checks a token signed by one known key (a device's assertion) and returns its payload.
pub fn verify_with_key<T: DeserializeOwned>(
    token: &str,
    key: &PublicKey,
) -> Result<T, TicketError> {
    let parsed = parse(token)?;
    verify_sig(&VerifyingKey::new(key.clone()), &parsed)?;
    serde_json::from_slice(&parsed.payload).map_err(|_| TicketError::Malformed)
}

/// A ticket whose signature, issuer, audience and time window were checked.
#[derive(Clone, Debug)]
pub struct VerifiedTicket {
    claims: Claims,
}

impl VerifiedTicket {
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Re-checks only the time window, for a ticket taken from a cache of verified ones.
    pub fn still_valid(&self, now: i64) -> Result<(), TicketError> {
        time_window(&self.claims, now)
    }
}

fn time_window(c: &Claims, now: i64) -> Result<(), TicketError> {
    if now >= c.exp {
        return Err(TicketError::Expired);
    }
    if now + LEEWAY_SECS < c.nbf {
        return Err(TicketError::NotYetValid);
    }
    Ok(())
}

/// The cloud's public signing keys by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey<Sha256>>,
}

impl KeySet {
    pub fn insert(&mut self, kid: impl Into<String>, key: PublicKey) {
        self.keys.insert(kid.into(), VerifyingKey::new(key));
    }

    /// Builds a key set from a JWKS document; keys that are not RSA PS256 are skipped.
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, TicketError> {
        let mut set = Self::default();
        for k in jwks
            .keys
            .iter()
            .filter(|k| k.kty == "RSA" && k.alg == "PS256")
        {
            let n = B64.decode(&k.n).map_err(|_| TicketError::Malformed)?;
            let e = B64.decode(&k.e).map_err(|_| TicketError::Malformed)?;
            let key = PublicKey::new(
                BoxedUint::from_be_slice_vartime(&n),
                BoxedUint::from_be_slice_vartime(&e),
            )
            .map_err(|_| TicketError::Malformed)?;
            set.insert(k.kid.clone(), key);
        }
        Ok(set)
    }

    /// Checks that one of these keys signed `token` and returns its payload, whose claims
    /// the caller checks.
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, TicketError> {
        let parsed = parse(token)?;
        let kid = parsed
            .header
            .kid
            .as_deref()
            .ok_or(TicketError::UnknownKid)?;
        let key = self.keys.get(kid).ok_or(TicketError::UnknownKid)?;
        verify_sig(key, &parsed)?;
        serde_json::from_slice(&parsed.payload).map_err(|_| TicketError::Malformed)
    }

    /// Full check of a ticket: well-formed, PS256, known `kid`, valid signature, this issuer
    /// and audience, inside its time window at `now` (seconds).
    pub fn check(&self, token: &str, aud: &str, now: i64) -> Result<VerifiedTicket, TicketError> {
        let claims: Claims = self.verify(token)?;
        if claims.iss != ISSUER || claims.aud != aud {
            return Err(TicketError::WrongAudience);
        }
        time_window(&claims, now)?;
        let complete = match claims.kind {
            TicketKind::Identity | TicketKind::Relay => true,
            TicketKind::Access => claims.res.is_some(),
            TicketKind::Peer => claims.peer.is_some(),
        };
        if !complete {
            return Err(TicketError::Malformed);
        }
        Ok(VerifiedTicket { claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Right, claims::AUDIENCE_CLOUD};
    use std::sync::LazyLock;

    static KEY: LazyLock<PrivateKey> = LazyLock::new(crate::crypto::keys::generate);

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "ann".into(),
            aud: AUDIENCE_CLOUD.into(),
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: "1".into(),
            dev: "dev1".into(),
            kind: TicketKind::Access,
            res: Some("/folders/f".into()),
            rights: vec![Right::Read],
            epoch: None,
            peer: None,
        }
    }

    fn setup() -> (Signer, KeySet) {
        let signer = Signer::new("k1", KEY.clone());
        let set = KeySet::from_jwks(&Jwks {
            keys: vec![signer.jwk()],
        })
        .unwrap();
        (signer, set)
    }

    #[test]
    fn signed_ticket_verifies_through_published_jwks() {
        let (signer, set) = setup();
        let t = signer.sign(&claims(1000));
        let v = set.check(&t, AUDIENCE_CLOUD, 1001).unwrap();
        assert_eq!(v.claims(), &claims(1000));
    }

    #[test]
    fn header_is_ps256_with_kid() {
        let (signer, _) = setup();
        let t = signer.sign(&claims(0));
        let h = B64.decode(t.split('.').next().unwrap()).unwrap();
        assert_eq!(h, br#"{"alg":"PS256","kid":"k1","typ":"JWT"}"#);
    }

    #[test]
    fn rejects_expired_and_not_yet_valid() {
        let (signer, set) = setup();
        let t = signer.sign(&claims(1000));
        assert_eq!(
            set.check(&t, AUDIENCE_CLOUD, 1600).unwrap_err(),
            TicketError::Expired
        );
        assert_eq!(
            set.check(&t, AUDIENCE_CLOUD, 900).unwrap_err(),
            TicketError::NotYetValid
        );
    }

    #[test]
    fn rejects_flipped_signature_bit_and_payload_swap() {
        let (signer, set) = setup();
        let t = signer.sign(&claims(1000));
        let (input, sig) = t.rsplit_once('.').unwrap();
        let mut raw = B64.decode(sig).unwrap();
        raw[10] ^= 1;
        let forged = format!("{input}.{}", B64.encode(&raw));
        assert_eq!(
            set.check(&forged, AUDIENCE_CLOUD, 1001).unwrap_err(),
            TicketError::BadSignature
        );

        let mut c = claims(1000);
        c.rights = vec![Right::Admin];
        let other = signer.sign(&c);
        let swapped = format!(
            "{}.{}.{}",
            t.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            sig
        );
        assert_eq!(
            set.check(&swapped, AUDIENCE_CLOUD, 1001).unwrap_err(),
            TicketError::BadSignature
        );
    }

    #[test]
    fn rejects_unknown_kid_other_alg_and_audience() {
        let (_, set) = setup();
        let stranger = Signer::new("k2", KEY.clone());
        let t = stranger.sign(&claims(1000));
        assert_eq!(
            set.check(&t, AUDIENCE_CLOUD, 1001).unwrap_err(),
            TicketError::UnknownKid
        );

        let none_alg = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(b"{}")
        );
        assert_eq!(
            set.check(&none_alg, AUDIENCE_CLOUD, 1).unwrap_err(),
            TicketError::UnsupportedAlg
        );

        let (signer, _) = setup();
        let t = signer.sign(&claims(1000));
        assert_eq!(
            set.check(&t, "other", 1001).unwrap_err(),
            TicketError::WrongAudience
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let (_, set) = setup();
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "e30.e30.",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(set.check(t, AUDIENCE_CLOUD, 0).is_err(), "{t:?}");
        }
    }

    #[test]
    fn device_assertion_checks_against_the_device_key() {
        let (signer, _) = setup();
        let t = signer.sign(&serde_json::json!({"iss": "dev1"}));
        let v: serde_json::Value = verify_with_key(&t, &KEY.to_public_key()).unwrap();
        assert_eq!(v["iss"], "dev1");
        let other = crate::crypto::keys::generate().to_public_key();
        assert!(verify_with_key::<serde_json::Value>(&t, &other).is_err());
    }
}
