//! The relay's own protocol (DESIGN §5), spoken over TLS before the relay starts copying
//! bytes: a device either *listens* (one long-lived control connection, on which the relay
//! announces incoming rendezvous), *dials* a peer (naming it with a cloud-issued peer
//! ticket for the pair), or *accepts* an announced rendezvous. Every message names the
//! device with its relay ticket, which no cloud accepts. Each message is a JSON object
//! after a 4-byte big-endian length; after both sides got `Ready`, the connection carries
//! only the peers' encrypted channel.
//!
//! This module only encodes and decodes ([`encode`], [`body_len`], [`decode`]); each side
//! reads and writes its own sockets.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest relay message: two tickets and some JSON.
pub const MAX_MESSAGE: usize = 32 * 1024;

/// Bytes both ends read from a relay socket at once, through a buffer under TLS: rustls
/// reads at most 4 KiB at a time, which for relayed blocks cost a system call (and a
/// wakeup) per 4 KiB on each of the two legs.
pub const SOCKET_READ: usize = 256 * 1024;

/// Bytes of TLS records both ends let build up before writing them out: a whole channel
/// frame (1 MiB and its headers) and then some, so that a relayed block leaves in one
/// system call rather than in the sixteen of rustls's default 64 KiB (each also a wakeup
/// of the side that reads it; on loopback that nearly tripled a leg's cost).
pub const TLS_SEND_BUFFER: usize = 2 << 20;

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
    /// Listening, or paired: from now on bytes are copied to the other side.
    Ready,
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
}
