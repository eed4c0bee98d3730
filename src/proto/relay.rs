//! The relay's own protocol (DESIGN §5), spoken over TLS: a device either *listens* (one
//! long-lived control connection, on which the relay announces incoming rendezvous),
//! *dials* a peer (naming it with a cloud-issued peer ticket for the pair), or *accepts* an
//! announced rendezvous. Every message names the device with its relay ticket, which no
//! cloud accepts. Each message is a JSON object after a 4-byte big-endian length.
//!
//! Once a dial and its accept are paired, each side is told a single-use token and opens a
//! *data leg*: a plain TCP connection to the same address that starts with [`DATA_MAGIC`]
//! and the token ([`data_preamble`]) and then carries only the peers' end-to-end channel,
//! which needs no second layer of encryption. Tickets, which are bearer credentials at the
//! relay, travel only over TLS; a token is worth nothing once used or after the pairing
//! window.
//!
//! This module only encodes and decodes ([`encode`], [`body_len`], [`decode`]); each side
//! reads and writes its own sockets.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest relay message: two tickets and some JSON.
pub const MAX_MESSAGE: usize = 32 * 1024;

/// The first bytes of a data leg. A TLS connection starts with a handshake record (0x16),
/// so the relay tells the two apart by the first byte.
pub const DATA_MAGIC: [u8; 8] = *b"MESHDATA";

/// Bytes of a data leg's token.
pub const TOKEN_LEN: usize = 32;

/// A data leg's token: random, single-use, told over the TLS control connection.
pub type Token = [u8; TOKEN_LEN];

/// What a data leg sends first: [`DATA_MAGIC`], then the token.
pub fn data_preamble(token: &Token) -> [u8; DATA_MAGIC.len() + TOKEN_LEN] {
    let mut out = [0u8; DATA_MAGIC.len() + TOKEN_LEN];
    out[..DATA_MAGIC.len()].copy_from_slice(&DATA_MAGIC);
    out[DATA_MAGIC.len()..].copy_from_slice(token);
    out
}

/// What a device asks of the relay, as the first message of a connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Hello {
    /// Keep this connection to announce rendezvous for my device.
    Listen { relay_ticket: String },
    /// Connect me to the other device of this peer ticket.
    Dial {
        relay_ticket: String,
        peer_ticket: String,
    },
    /// Join the rendezvous the relay announced to me.
    Accept {
        relay_ticket: String,
        rendezvous: String,
    },
}

/// What the relay answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Reply {
    /// Listening: rendezvous are announced on this connection from now on.
    Ready,
    /// Paired with the other side: open a data leg with this token (hex) within the pairing
    /// window; this connection is done.
    Paired { token: String },
    /// On a listening connection: a peer dials this device; accept it on a new connection.
    Incoming { rendezvous: String, from: String },
    /// Refused, with the reason; the relay closes the connection.
    Refused { message: String },
}

/// Why a relay message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum RelayWireError {
    #[error("a relay message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("a relay message is not valid")]
    Malformed(#[from] serde_json::Error),
    #[error("a data leg token is not {TOKEN_LEN} bytes of hex")]
    BadToken,
}

/// A token as it goes in [`Reply::Paired`].
pub fn token_text(token: &Token) -> String {
    hex::encode(token)
}

/// The token of a [`Reply::Paired`].
pub fn parse_token(text: &str) -> Result<Token, RelayWireError> {
    let mut token = [0u8; TOKEN_LEN];
    hex::decode_to_slice(text, &mut token).map_err(|_| RelayWireError::BadToken)?;
    Ok(token)
}

/// Length of the header before each message: its body's length, 4 bytes big-endian.
pub const HEADER_LEN: usize = 4;

/// One message as it goes on the wire: the header, then the JSON body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, RelayWireError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n as usize <= MAX_MESSAGE)
        .ok_or(RelayWireError::TooLarge(body.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The length of the body a header announces, refused over [`MAX_MESSAGE`] before anything
/// is read.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, RelayWireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(RelayWireError::TooLarge(len));
    }
    Ok(len)
}

/// A message's body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, RelayWireError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_oversized_ones_are_refused() {
        let hello = Hello::Dial {
            relay_ticket: "r".into(),
            peer_ticket: "p".into(),
        };
        let bytes = encode(&hello).unwrap();
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        assert_eq!(body_len(header).unwrap(), bytes.len() - HEADER_LEN);
        assert_eq!(decode::<Hello>(&bytes[HEADER_LEN..]).unwrap(), hello);

        assert!(matches!(
            body_len((MAX_MESSAGE as u32 + 1).to_be_bytes()),
            Err(RelayWireError::TooLarge(_))
        ));
        let huge = Hello::Dial {
            relay_ticket: "r".repeat(MAX_MESSAGE),
            peer_ticket: "p".into(),
        };
        assert!(matches!(encode(&huge), Err(RelayWireError::TooLarge(_))));
        let ready = encode(&Reply::Ready).unwrap();
        assert!(
            decode::<Hello>(&ready[HEADER_LEN..]).is_err(),
            "not a hello"
        );
    }

    #[test]
    fn a_token_round_trips_and_a_data_leg_is_not_mistaken_for_tls() {
        let token: Token = std::array::from_fn(|i| i as u8);
        assert_eq!(parse_token(&token_text(&token)).unwrap(), token);
        assert!(matches!(parse_token("abcd"), Err(RelayWireError::BadToken)));
        assert!(matches!(
            parse_token(&"zz".repeat(TOKEN_LEN)),
            Err(RelayWireError::BadToken)
        ));
        let preamble = data_preamble(&token);
        assert_eq!(&preamble[..8], b"MESHDATA");
        assert_eq!(&preamble[8..], &token);
        assert_ne!(preamble[0], 0x16, "a TLS handshake record starts with 0x16");
    }
}
