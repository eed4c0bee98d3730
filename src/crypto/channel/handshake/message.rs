//! The handshake messages and their byte layout. Every field is bounded, and parsing
//! consumes a message exactly: a short, long or out-of-bounds message is refused.
//!
//! ```text
//! message      = type: u8 ‖ len: u16 BE ‖ body[len]
//! Hello        (type 1) = version: u8 (= 1)
//!                         ‖ device_len: u8 ‖ device[device_len]     1..=128 bytes, UTF-8
//!                         ‖ ticket_len: u16 BE ‖ ticket[ticket_len] 1..=8192 bytes, ASCII
//!                         ‖ nonce[32] ‖ x25519 public key[32]
//! KeyTransport (type 2) = RSA-OAEP-SHA256 ciphertext                 1..=1024 bytes
//! Finished     (type 3) = HMAC-SHA256[32]
//! ```

use crate::crypto::channel::ChannelError;
use crate::crypto::ticket::MAX_TOKEN_LEN;

/// The only handshake version.
pub const VERSION: u8 = 1;
/// Bytes in front of each message's body.
pub const HEADER_LEN: usize = 3;
/// The longest device id.
pub const MAX_DEVICE_LEN: usize = 128;
/// The longest ciphertext of a key transport (an RSA-8192 modulus).
pub const MAX_KEY_TRANSPORT: usize = 1024;
const HELLO_MAX: usize = 1 + 1 + MAX_DEVICE_LEN + 2 + MAX_TOKEN_LEN + 32 + 32;

const HELLO: u8 = 1;
const KEY_TRANSPORT: u8 = 2;
const FINISHED: u8 = 3;

/// The length of the body that follows `header`, checked against the bound of its type.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, ChannelError> {
    let [kind, hi, lo] = header;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let max = match kind {
        HELLO => HELLO_MAX,
        KEY_TRANSPORT => MAX_KEY_TRANSPORT,
        FINISHED => 32,
        _ => return Err(ChannelError::BadMessage("unknown message type")),
    };
    if len > max {
        return Err(ChannelError::BadMessage(
            "message longer than its type allows",
        ));
    }
    Ok(len)
}

/// The first message of each side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub device: String,
    pub ticket: String,
    pub nonce: [u8; 32],
    pub share: [u8; 32],
}

impl Hello {
    /// The message as sent.
    pub fn encode(&self) -> Result<Vec<u8>, ChannelError> {
        let device = u8::try_from(self.device.len())
            .ok()
            .filter(|&n| n > 0 && usize::from(n) <= MAX_DEVICE_LEN)
            .ok_or(ChannelError::BadMessage("device id empty or too long"))?;
        let ticket = u16::try_from(self.ticket.len())
            .ok()
            .filter(|&n| n > 0 && usize::from(n) <= MAX_TOKEN_LEN)
            .ok_or(ChannelError::BadMessage("ticket empty or too long"))?;
        let mut body = Vec::with_capacity(HELLO_MAX);
        body.push(VERSION);
        body.push(device);
        body.extend_from_slice(self.device.as_bytes());
        body.extend_from_slice(&ticket.to_be_bytes());
        body.extend_from_slice(self.ticket.as_bytes());
        body.extend_from_slice(&self.nonce);
        body.extend_from_slice(&self.share);
        frame(HELLO, &body)
    }

    /// Parses one whole Hello message.
    pub fn decode(msg: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader::new(expect(msg, HELLO)?);
        let version = r.u8()?;
        if version != VERSION {
            return Err(ChannelError::Version(version));
        }
        let device_len = usize::from(r.u8()?);
        if device_len == 0 || device_len > MAX_DEVICE_LEN {
            return Err(ChannelError::BadMessage("device id empty or too long"));
        }
        let device = std::str::from_utf8(r.take(device_len)?)
            .map_err(|_| ChannelError::BadMessage("device id is not UTF-8"))?
            .to_owned();
        let ticket_len = usize::from(u16::from_be_bytes(r.array()?));
        if ticket_len == 0 || ticket_len > MAX_TOKEN_LEN {
            return Err(ChannelError::BadMessage("ticket empty or too long"));
        }
        let ticket = r.take(ticket_len)?;
        if !ticket.is_ascii() {
            return Err(ChannelError::BadMessage("ticket is not ASCII"));
        }
        let ticket = String::from_utf8_lossy(ticket).into_owned();
        let hello = Self {
            device,
            ticket,
            nonce: r.array()?,
            share: r.array()?,
        };
        r.done()?;
        Ok(hello)
    }
}

/// A key-transport message around `ciphertext`.
pub fn encode_key_transport(ciphertext: &[u8]) -> Result<Vec<u8>, ChannelError> {
    if ciphertext.is_empty() || ciphertext.len() > MAX_KEY_TRANSPORT {
        return Err(ChannelError::KeyTransport(
            "ciphertext of an unusable length",
        ));
    }
    frame(KEY_TRANSPORT, ciphertext)
}

/// The ciphertext of one whole key-transport message.
pub fn decode_key_transport(msg: &[u8]) -> Result<&[u8], ChannelError> {
    let body = expect(msg, KEY_TRANSPORT)?;
    if body.is_empty() {
        return Err(ChannelError::BadMessage("empty key transport"));
    }
    Ok(body)
}

/// A Finished message carrying `mac`.
pub fn encode_finished(mac: &[u8; 32]) -> Result<Vec<u8>, ChannelError> {
    frame(FINISHED, mac)
}

/// The MAC of one whole Finished message.
pub fn decode_finished(msg: &[u8]) -> Result<[u8; 32], ChannelError> {
    let mut r = Reader::new(expect(msg, FINISHED)?);
    let mac = r.array()?;
    r.done()?;
    Ok(mac)
}

fn frame(kind: u8, body: &[u8]) -> Result<Vec<u8>, ChannelError> {
    let len = u16::try_from(body.len())
        .map_err(|_| ChannelError::BadMessage("message longer than 64 KiB"))?;
    let mut msg = Vec::with_capacity(HEADER_LEN + body.len());
    msg.push(kind);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(body);
    Ok(msg)
}

/// The body of `msg` if it is one whole message of type `kind`.
fn expect(msg: &[u8], kind: u8) -> Result<&[u8], ChannelError> {
    let (header, body) = msg
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(ChannelError::Truncated)?;
    if header[0] != kind {
        return Err(ChannelError::BadMessage("unexpected message type"));
    }
    let len = body_len(*header)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(ChannelError::Truncated),
        std::cmp::Ordering::Greater => Err(ChannelError::BadMessage("bytes after a message")),
        std::cmp::Ordering::Equal => Ok(body),
    }
}

/// Takes bounded pieces off the front of a body (rustls' `codec::Reader`).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self(body)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ChannelError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(ChannelError::BadMessage(
            "field runs past the end of its message",
        ))?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ChannelError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(ChannelError::BadMessage(
                "field runs past the end of its message",
            ))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, ChannelError> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn done(&self) -> Result<(), ChannelError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ChannelError::BadMessage("bytes after the last field"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            device: "alice".into(),
            ticket: "a.b.c".into(),
            nonce: [1; 32],
            share: [2; 32],
        }
    }

    #[test]
    fn hello_layout_is_as_documented() {
        let msg = hello().encode().unwrap();
        let mut want = vec![1, 0, 1 + 1 + 5 + 2 + 5 + 64, 1, 5];
        want.extend_from_slice(b"alice");
        want.extend_from_slice(&[0, 5]);
        want.extend_from_slice(b"a.b.c");
        want.extend_from_slice(&[1; 32]);
        want.extend_from_slice(&[2; 32]);
        assert_eq!(msg, want);
        assert_eq!(Hello::decode(&msg).unwrap(), hello());
    }

    #[test]
    fn finished_and_key_transport_round_trip() {
        let f = encode_finished(&[7; 32]).unwrap();
        assert_eq!(f[..3], [3, 0, 32]);
        assert_eq!(decode_finished(&f).unwrap(), [7; 32]);
        let k = encode_key_transport(&[9; 256]).unwrap();
        assert_eq!(k[..3], [2, 1, 0]);
        assert_eq!(decode_key_transport(&k).unwrap(), &[9; 256][..]);
    }

    #[test]
    fn refuses_every_truncation_and_extension() {
        for msg in [
            hello().encode().unwrap(),
            encode_finished(&[7; 32]).unwrap(),
        ] {
            for cut in 0..msg.len() {
                assert!(Hello::decode(&msg[..cut]).is_err());
                assert!(decode_finished(&msg[..cut]).is_err());
            }
            let mut long = msg.clone();
            long.push(0);
            assert!(Hello::decode(&long).is_err());
            assert!(decode_finished(&long).is_err());
        }
    }

    #[test]
    fn refuses_inner_lengths_that_disagree_with_the_body() {
        let msg = hello().encode().unwrap();
        for (at, value) in [(4, 0), (4, 6), (4, 200), (11, 0), (11, 6), (10, 0xff)] {
            let mut bad = msg.clone();
            bad[at] = value;
            assert!(Hello::decode(&bad).is_err(), "byte {at} = {value}");
        }
    }

    #[test]
    fn refuses_another_version_and_type() {
        let mut msg = hello().encode().unwrap();
        msg[3] = 2;
        assert!(matches!(Hello::decode(&msg), Err(ChannelError::Version(2))));
        let f = encode_finished(&[0; 32]).unwrap();
        assert!(matches!(
            Hello::decode(&f),
            Err(ChannelError::BadMessage(_))
        ));
        assert!(body_len([9, 0, 0]).is_err());
        assert!(body_len([3, 0, 33]).is_err());
        assert!(body_len([2, 4, 1]).is_err());
        assert_eq!(body_len([1, 0, 10]).unwrap(), 10);
    }

    #[test]
    fn refuses_oversized_fields_when_encoding() {
        let mut h = hello();
        h.device = "d".repeat(MAX_DEVICE_LEN + 1);
        assert!(h.encode().is_err());
        let mut h = hello();
        h.ticket = "t".repeat(MAX_TOKEN_LEN + 1);
        assert!(h.encode().is_err());
        assert!(encode_key_transport(&[]).is_err());
        assert!(encode_key_transport(&[0; MAX_KEY_TRANSPORT + 1]).is_err());
    }
}
