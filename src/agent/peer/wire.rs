//! The block protocol that runs inside a peer channel: the asker sends requests, each with
//! an id, and may have many in flight; the answerer replies to each, in any order. Every
//! message is one channel frame.
//!
//! ```text
//! request  'Q' id:u32 folder_len:u16 folder entry_len:u16 entry hash:[u8; 33]
//!          (hash: the function, then the digest; see `proto::hash`)
//! answer   'A' id:u32 status:u8 block bytes (only with status 0)
//! ```
//!
//! The asker checks each block against its hash; a wrong one drops the peer.

use super::BlockRequest;
use crate::proto::BlockHash;
use crate::proto::hash::WIRE_LEN;

/// Longest folder or entry id accepted (they are UUIDs; the bound only stops abuse).
const MAX_ID: usize = 256;

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The block follows.
    Found = 0,
    /// This device does not hold the block.
    Missing = 1,
    /// The channel's ticket does not cover this folder or file.
    Forbidden = 2,
}

/// A message of the block protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request { id: u32, want: BlockRequest },
    Answer { id: u32, status: Status },
}

/// A message that does not parse: the channel is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed block protocol message")]
pub struct Malformed;

/// `Q id folder entry hash`.
pub fn request(id: u32, want: &BlockRequest) -> Result<Vec<u8>, Malformed> {
    let (folder, entry) = (want.folder.as_bytes(), want.entry.as_bytes());
    if folder.len() > MAX_ID || entry.len() > MAX_ID {
        return Err(Malformed);
    }
    let mut out = Vec::with_capacity(1 + 4 + 2 + folder.len() + 2 + entry.len() + WIRE_LEN);
    out.push(b'Q');
    out.extend_from_slice(&id.to_be_bytes());
    for part in [folder, entry] {
        // Bounded by MAX_ID above.
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&want.hash.to_wire());
    Ok(out)
}

/// The header of an answer; the block, if any, is appended by the caller.
pub fn answer_header(id: u32, status: Status) -> [u8; 6] {
    let mut out = [0u8; 6];
    out[0] = b'A';
    out[1..5].copy_from_slice(&id.to_be_bytes());
    out[5] = status as u8;
    out
}

/// Length of an answer's header: the block starts here.
pub const ANSWER_HEADER: usize = 6;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if len > MAX_ID {
            return Err(Malformed);
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| Malformed)
    }
}

/// Parses a message. For an answer, the block is `&frame[ANSWER_HEADER..]`.
pub fn parse(frame: &[u8]) -> Result<Message, Malformed> {
    let mut r = Reader(frame);
    let tag = r.take(1)?[0];
    let id = r.u32()?;
    match tag {
        b'Q' => {
            let folder = r.string()?;
            let entry = r.string()?;
            let mut wire = [0u8; WIRE_LEN];
            wire.copy_from_slice(r.take(WIRE_LEN)?);
            let hash = BlockHash::from_wire(&wire).ok_or(Malformed)?;
            if !r.0.is_empty() {
                return Err(Malformed);
            }
            Ok(Message::Request {
                id,
                want: BlockRequest {
                    folder,
                    entry,
                    hash,
                },
            })
        }
        b'A' => {
            let status = match r.take(1)?[0] {
                0 => Status::Found,
                1 => Status::Missing,
                2 => Status::Forbidden,
                _ => return Err(Malformed),
            };
            if status != Status::Found && !r.0.is_empty() {
                return Err(Malformed);
            }
            Ok(Message::Answer { id, status })
        }
        _ => Err(Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> BlockRequest {
        BlockRequest {
            folder: "f-1".into(),
            entry: "e-2".into(),
            hash: BlockHash::of(b"x"),
        }
    }

    #[test]
    fn a_request_round_trips() {
        let bytes = request(7, &want()).unwrap();
        assert_eq!(
            parse(&bytes),
            Ok(Message::Request {
                id: 7,
                want: want()
            })
        );
    }

    #[test]
    fn an_answer_carries_its_block_after_the_header() {
        let mut bytes = answer_header(9, Status::Found).to_vec();
        bytes.extend_from_slice(b"block");
        assert_eq!(
            parse(&bytes),
            Ok(Message::Answer {
                id: 9,
                status: Status::Found
            })
        );
        assert_eq!(&bytes[ANSWER_HEADER..], b"block");
        assert_eq!(
            parse(&answer_header(1, Status::Missing)),
            Ok(Message::Answer {
                id: 1,
                status: Status::Missing
            })
        );
    }

    #[test]
    fn every_cut_and_every_trailing_byte_is_refused() {
        let bytes = request(7, &want()).unwrap();
        for n in 0..bytes.len() {
            assert_eq!(parse(&bytes[..n]), Err(Malformed), "cut at {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(parse(&long), Err(Malformed));
        let mut missing = answer_header(1, Status::Missing).to_vec();
        missing.push(0);
        assert_eq!(parse(&missing), Err(Malformed));
    }

    #[test]
    fn unknown_tags_statuses_and_oversized_ids_are_refused() {
        assert_eq!(parse(b"Z\0\0\0\0"), Err(Malformed));
        let mut bad = answer_header(1, Status::Found);
        bad[5] = 9;
        assert_eq!(parse(&bad), Err(Malformed));
        let mut w = want();
        w.folder = "x".repeat(MAX_ID + 1);
        assert_eq!(request(1, &w), Err(Malformed));
    }
}
