//! Random bytes as the peer's handshake messages, into both roles. The input is read the way
//! the channel's driver reads a stream: a message header, then the body it announces. The
//! ticket check admits anyone (real tickets cannot be forged by a fuzzer), so the input
//! reaches the key transports and Finished.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfs::crypto::channel::handshake::message::{HEADER_LEN, body_len};
use meshfs::crypto::channel::{ChannelError, Initiator, LocalPeer, PeerCheck, PeerInfo, Responder};
use rsa::PrivateKey;
use std::sync::{Arc, LazyLock};

static MINE: LazyLock<Arc<PrivateKey>> =
    LazyLock::new(|| Arc::new(meshfs::crypto::keys::generate()));
static THEIRS: LazyLock<PrivateKey> = LazyLock::new(meshfs::crypto::keys::generate);

struct Anyone;

impl PeerCheck for Anyone {
    fn check(&self, claimed_device: &str, _ticket: &str) -> Result<PeerInfo, ChannelError> {
        Ok(PeerInfo {
            device: claimed_device.to_owned(),
            user: "u".into(),
            key: THEIRS.to_public_key(),
            folder: None,
            expires: 0,
        })
    }
}

fn me() -> LocalPeer {
    LocalPeer {
        device: "me".into(),
        key: MINE.clone(),
        ticket: "h.p.s".into(),
        key_log: None,
    }
}

/// Splits `data` into messages as a stream reader would; stops at the first bad header.
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((header, _)) = data.split_first_chunk::<HEADER_LEN>() {
        let Ok(len) = body_len(*header) else {
            out.push(data);
            break;
        };
        let Some((msg, rest)) = data.split_at_checked(HEADER_LEN + len) else {
            out.push(data);
            break;
        };
        out.push(msg);
        data = rest;
    }
    out
}

fn as_initiator(msgs: &[&[u8]]) -> Option<()> {
    let (state, _) = Initiator::start(me(), "b").ok()?;
    let state = state.handle(msgs.first()?, &Anyone).ok()?;
    let (state, _) = state.handle(msgs.get(1)?).ok()?;
    state.handle(msgs.get(2)?).ok()?;
    Some(())
}

fn as_responder(msgs: &[&[u8]]) -> Option<()> {
    let state = Responder::read_hello(msgs.first()?, &Anyone).ok()?;
    let (state, _) = state.respond(me()).ok()?;
    let state = state.handle(msgs.get(1)?).ok()?;
    state.handle(msgs.get(2)?).ok()?;
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let msgs = messages(data);
    // Neither side may finish: the fuzzer knows no session key.
    assert!(as_initiator(&msgs).is_none());
    assert!(as_responder(&msgs).is_none());
});
