//! The relay's own protocol (DESIGN §5), spoken over TLS before the relay starts copying
//! bytes: a device either *listens* (one long-lived control connection, on which the relay
//! announces incoming rendezvous), *dials* a peer (naming it with a cloud-issued peer
//! ticket for the pair), or *accepts* an announced rendezvous. Each message is a JSON object
//! after a 4-byte big-endian length; after both sides got `Ready`, the connection carries
//! only the peers' encrypted channel.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    Listen { identity: String },
    /// Connect me to the other device of this peer ticket.
    Dial { identity: String, ticket: String },
    /// Join the rendezvous the relay announced to me.
    Accept {
        identity: String,
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

/// Why a relay message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RelayWireError {
    #[error("relay connection")]
    Io(#[from] std::io::Error),
    #[error("a relay message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("a relay message is not valid")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one message.
pub async fn write<W, T>(w: &mut W, msg: &T) -> Result<(), RelayWireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(RelayWireError::TooLarge(body.len()));
    }
    // Bounded by MAX_MESSAGE above.
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message.
pub async fn read<R, T>(r: &mut R) -> Result<T, RelayWireError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(RelayWireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = Hello::Dial {
            identity: "i".into(),
            ticket: "t".into(),
        };
        write(&mut a, &hello).await.unwrap();
        assert_eq!(read::<_, Hello>(&mut b).await.unwrap(), hello);

        a.write_all(&(MAX_MESSAGE as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read::<_, Hello>(&mut b).await,
            Err(RelayWireError::TooLarge(_))
        ));
        write(&mut a, &Reply::Ready).await.unwrap();
        assert!(read::<_, Hello>(&mut b).await.is_err(), "not a hello");
    }
}
