//! The handshake between two real devices in memory, and one test per refusal.

use super::message::{self, HEADER_LEN};
use super::*;
use crate::crypto::channel::check::tests::{ALICE, BOB, MALLORY, checker, claims, signer, ticket};
use crate::crypto::channel::check::{PeerCheck, TicketRefusal};
use crate::crypto::channel::record::{HEADER_LEN as FRAME_HEADER, TAG_LEN};
use crate::crypto::ticket::{Signer, TicketError};

fn local(device: &str, key: &PrivateKey, ticket: String) -> LocalPeer {
    LocalPeer {
        device: device.into(),
        key: Arc::new(key.clone()),
        ticket,
        key_log: None,
    }
}

/// One line of a key log: label, session, secret.
type Line = (&'static str, [u8; 32], Vec<u8>);

/// Keeps what a side logged.
#[derive(Default)]
struct Logged(std::sync::Mutex<Vec<Line>>);

impl KeyLog for Logged {
    fn log(&self, label: &'static str, session: &[u8; 32], secret: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((label, *session, secret.to_vec()));
    }
}

fn alice() -> LocalPeer {
    local("alice", &ALICE, ticket("alice"))
}

fn bob() -> LocalPeer {
    local("bob", &BOB, ticket("bob"))
}

/// Splits what one side sent into its messages.
fn split(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    while let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() {
        let len = message::body_len(*header).unwrap();
        msgs.push(bytes[..HEADER_LEN + len].to_vec());
        bytes = &rest[len..];
    }
    assert!(bytes.is_empty());
    msgs
}

/// Message numbers as `run` passes them to `tamper`, in the order they are sent.
const I_HELLO: usize = 0;
const R_HELLO: usize = 1;
const R_KEY: usize = 2;
const I_KEY: usize = 3;
const I_FINISHED: usize = 4;
const R_FINISHED: usize = 5;

struct Sides {
    initiator: LocalPeer,
    expect: &'static str,
    responder: LocalPeer,
    initiator_check: Box<dyn PeerCheck>,
    responder_check: Box<dyn PeerCheck>,
}

fn sides() -> Sides {
    Sides {
        initiator: alice(),
        expect: "bob",
        responder: bob(),
        initiator_check: Box::new(checker("alice", &ALICE)),
        responder_check: Box::new(checker("bob", &BOB)),
    }
}

/// A whole handshake; every message passes through `tamper` on its way.
fn run(
    s: Sides,
    tamper: &mut dyn FnMut(usize, &mut Vec<u8>),
) -> Result<(Established, Established), ChannelError> {
    let (i, mut hello) = Initiator::start(s.initiator, s.expect)?;
    tamper(I_HELLO, &mut hello);
    let r = Responder::read_hello(&hello, &*s.responder_check)?;
    let (r, sent) = r.respond(s.responder)?;
    let mut sent = split(&sent);
    tamper(R_HELLO, &mut sent[0]);
    tamper(R_KEY, &mut sent[1]);
    let i = i.handle(&sent[0], &*s.initiator_check)?;
    let (i, sent) = i.handle(&sent[1])?;
    let mut sent = split(&sent);
    tamper(I_KEY, &mut sent[0]);
    tamper(I_FINISHED, &mut sent[1]);
    let r = r.handle(&sent[0])?;
    let (r, mut finished) = r.handle(&sent[1])?;
    tamper(R_FINISHED, &mut finished);
    let i = i.handle(&finished)?;
    Ok((i, r))
}

fn handshake(s: Sides) -> Result<(Established, Established), ChannelError> {
    run(s, &mut |_, _| {})
}

fn refusal(r: Result<(Established, Established), ChannelError>) -> ChannelError {
    match r {
        Ok(_) => panic!("the handshake succeeded"),
        Err(e) => e,
    }
}

fn ticket_refusal(r: Result<(Established, Established), ChannelError>) -> TicketRefusal {
    match refusal(r) {
        ChannelError::BadTicket(t) => t,
        other => panic!("expected a ticket refusal, got {other:?}"),
    }
}

/// Sends `pt` through `from`'s sealer and opens it with `to`'s opener.
fn carry(from: &mut Established, to: &mut Established, pt: &[u8]) -> Result<Vec<u8>, ChannelError> {
    let mut frame = Vec::new();
    from.sealer.seal(pt, &mut frame)?;
    assert_eq!(frame.len(), FRAME_HEADER + pt.len() + TAG_LEN);
    to.opener.open_in_place(&mut frame).map(|p| p.to_vec())
}

#[test]
fn full_handshake_between_two_real_devices_carries_frames_both_ways() {
    let (mut i, mut r) = handshake(sides()).unwrap();
    assert_eq!(i.peer.device, "bob");
    assert_eq!(i.peer.key, BOB.to_public_key());
    assert_eq!(r.peer.device, "alice");
    assert_eq!(r.peer.key, ALICE.to_public_key());
    for n in 0..3 {
        let pt = format!("from alice {n}");
        assert_eq!(carry(&mut i, &mut r, pt.as_bytes()).unwrap(), pt.as_bytes());
        let pt = format!("from bob {n}");
        assert_eq!(carry(&mut r, &mut i, pt.as_bytes()).unwrap(), pt.as_bytes());
    }
}

#[test]
fn a_key_log_gets_the_same_secrets_from_both_sides_and_they_are_the_record_keys() {
    let (il, rl) = (Arc::new(Logged::default()), Arc::new(Logged::default()));
    let mut s = sides();
    s.initiator.key_log = Some(il.clone());
    s.responder.key_log = Some(rl.clone());
    let (mut i, mut r) = handshake(s).unwrap();
    let (il, rl) = (il.0.lock().unwrap(), rl.0.lock().unwrap());
    assert_eq!(il.len(), 11);
    assert_eq!(
        *il, *rl,
        "both sides log the same secrets under the same session"
    );
    assert!(il.iter().all(|(_, session, _)| *session == il[0].1));
    let get = |label: &str| il.iter().find(|l| l.0 == label).unwrap().2.clone();
    let keys = crate::crypto::channel::schedule::DirectionKeys {
        key: get("I2R_KEY").try_into().unwrap(),
        mac: get("I2R_MAC_KEY").try_into().unwrap(),
        iv: get("I2R_IV").try_into().unwrap(),
        finished: get("I2R_FINISHED_KEY").try_into().unwrap(),
    };
    let mut frame = Vec::new();
    i.sealer
        .seal(b"seen with the logged keys", &mut frame)
        .unwrap();
    let mut copy = frame.clone();
    let mut outside = Opener::new(
        &keys,
        crate::crypto::channel::record::Direction::InitiatorToResponder,
    );
    assert_eq!(
        outside.open_in_place(&mut copy).unwrap(),
        b"seen with the logged keys"
    );
    assert_eq!(
        r.opener.open_in_place(&mut frame).unwrap(),
        b"seen with the logged keys"
    );
    // Nothing is logged without a key log.
    assert!(handshake(sides()).is_ok());
}

#[test]
fn each_handshake_makes_new_keys() {
    let (mut i1, _) = handshake(sides()).unwrap();
    let (_, mut r2) = handshake(sides()).unwrap();
    assert!(matches!(
        carry(&mut i1, &mut r2, b"from another session"),
        Err(ChannelError::BadMac)
    ));
}

#[test]
fn responder_knows_the_caller_before_it_needs_its_own_ticket() {
    let (_, hello) = Initiator::start(alice(), "bob").unwrap();
    let r = Responder::read_hello(&hello, &checker("bob", &BOB)).unwrap();
    assert_eq!(r.peer().device, "alice");
    assert_eq!(r.peer().user, "ann");
}

#[test]
fn refuses_a_ticket_from_an_unknown_signer() {
    let forged = |holder: &str| Signer::new("cloud1", MALLORY.clone()).sign(&claims(holder));
    let mut s = sides();
    s.initiator.ticket = forged("alice");
    assert_eq!(
        ticket_refusal(handshake(s)),
        TicketRefusal::Invalid(TicketError::BadSignature)
    );
    let mut s = sides();
    s.responder.ticket = forged("bob");
    assert_eq!(
        ticket_refusal(handshake(s)),
        TicketRefusal::Invalid(TicketError::BadSignature)
    );
}

#[test]
fn refuses_an_expired_ticket() {
    let mut c = claims("bob");
    c.exp = c.nbf;
    let mut s = sides();
    s.responder.ticket = signer().sign(&c);
    assert_eq!(
        ticket_refusal(handshake(s)),
        TicketRefusal::Invalid(TicketError::Expired)
    );
}

#[test]
fn refuses_a_ticket_naming_other_devices() {
    let mut c = claims("alice");
    if let Some(g) = c.peer.as_mut() {
        g.devices[1].id = "carol".into();
    }
    let mut s = sides();
    s.initiator.ticket = signer().sign(&c);
    assert_eq!(ticket_refusal(handshake(s)), TicketRefusal::NotForMe);
}

#[test]
fn refuses_a_ticket_whose_key_for_me_is_not_my_key() {
    // Bob's device key changed since the cloud recorded it (or the ticket is for another
    // "bob"): his side refuses, since the initiator would encrypt to a key he lacks.
    let mut s = sides();
    s.responder_check = Box::new(checker("bob", &MALLORY));
    assert_eq!(ticket_refusal(handshake(s)), TicketRefusal::NotMyKey);
}

#[test]
fn refuses_a_claimed_device_other_than_the_ticket_holder() {
    // Alice calls herself carol while showing her own ticket.
    let mut s = sides();
    s.initiator.device = "carol".into();
    assert_eq!(ticket_refusal(handshake(s)), TicketRefusal::NotHolder);
    // A responder that answers as bob with alice's ticket.
    let mut s = sides();
    s.responder.ticket = ticket("alice");
    assert_eq!(ticket_refusal(handshake(s)), TicketRefusal::NotHolder);
}

#[test]
fn refuses_a_responder_other_than_the_expected_device() {
    let mut s = sides();
    s.expect = "dave";
    match refusal(handshake(s)) {
        ChannelError::WrongPeer { expected, found } => {
            assert_eq!((expected.as_str(), found.as_str()), ("dave", "bob"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn refuses_a_responder_without_the_private_key_of_its_ticket() {
    // Mallory replays bob's ticket (it crossed the network in the clear) with her own key.
    let mut s = sides();
    s.responder = local("bob", &MALLORY, ticket("bob"));
    s.responder_check = Box::new(checker("bob", &BOB));
    // She cannot read alice's secret, so alice's Finished does not verify for her.
    assert!(matches!(refusal(handshake(s)), ChannelError::BadFinished));
    // Had she answered anyway, her Finished would not verify for alice.
    let mut s = sides();
    s.responder = local("bob", &MALLORY, ticket("bob"));
    s.responder_check = Box::new(checker("bob", &BOB));
    let (i, hello) = Initiator::start(s.initiator, "bob").unwrap();
    let r = Responder::read_hello(&hello, &*s.responder_check).unwrap();
    let (_, sent) = r.respond(s.responder).unwrap();
    let sent = split(&sent);
    let i = i.handle(&sent[0], &*s.initiator_check).unwrap();
    let (i, _) = i.handle(&sent[1]).unwrap();
    let guess = message::encode_finished(&[0x42; 32]).unwrap();
    assert!(matches!(i.handle(&guess), Err(ChannelError::BadFinished)));
}

#[test]
fn refuses_an_initiator_without_the_private_key_of_its_ticket() {
    let mut s = sides();
    s.initiator = local("alice", &MALLORY, ticket("alice"));
    s.initiator_check = Box::new(checker("alice", &ALICE));
    assert!(matches!(refusal(handshake(s)), ChannelError::BadFinished));
}

#[test]
fn refuses_a_small_order_x25519_share() {
    let r = run(sides(), &mut |n, msg| {
        if n == I_HELLO {
            let at = msg.len() - 32;
            msg[at..].fill(0);
        }
    });
    assert!(matches!(refusal(r), ChannelError::BadMessage(_)));
}

/// Bit positions worth flipping in a message: its header, the first bytes of its body and
/// a spread over the rest (every bit of every message would take minutes of RSA).
fn positions(len: usize) -> Vec<usize> {
    let mut bytes: Vec<usize> = (0..12.min(len)).collect();
    bytes.extend((12..len).step_by(len / 24 + 1));
    bytes.extend(len.saturating_sub(33)..len);
    bytes.sort_unstable();
    bytes.dedup();
    bytes
}

#[test]
fn refuses_a_flipped_bit_in_every_message() {
    // Lengths of each message in a genuine run.
    let mut lens = [0; 6];
    run(sides(), &mut |n, msg| lens[n] = msg.len()).unwrap();
    for (n, len) in lens.into_iter().enumerate() {
        for byte in positions(len) {
            let bit = byte % 8;
            let r = run(sides(), &mut |m, msg| {
                if m == n {
                    msg[byte] ^= 1 << bit;
                }
            });
            assert!(
                r.is_err(),
                "message {n} byte {byte} bit {bit} went unnoticed"
            );
        }
    }
}

#[test]
fn refuses_a_flipped_finished_with_bad_finished() {
    for n in [I_FINISHED, R_FINISHED] {
        let r = run(sides(), &mut |m, msg| {
            if m == n {
                msg[HEADER_LEN + 5] ^= 0x10;
            }
        });
        assert!(
            matches!(refusal(r), ChannelError::BadFinished),
            "message {n}"
        );
    }
}

#[test]
fn refuses_truncated_and_garbage_messages_without_panicking() {
    let mut lens = [0; 6];
    run(sides(), &mut |n, msg| lens[n] = msg.len()).unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1, 0xff, 0xff],
        vec![1, 0, 0],
        vec![2, 0, 0],
        vec![3, 0, 32],
        vec![0xff; 40],
        (0..=255).collect(),
    ];
    for (n, len) in lens.into_iter().enumerate() {
        for cut in [0, 1, 2, 3, 4, len / 2, len - 1] {
            let r = run(sides(), &mut |m, msg| {
                if m == n {
                    msg.truncate(cut);
                }
            });
            assert!(r.is_err(), "message {n} cut at {cut}");
        }
        for g in &garbage {
            let r = run(sides(), &mut |m, msg| {
                if m == n {
                    msg.clone_from(g);
                }
            });
            assert!(r.is_err(), "message {n} replaced by {g:?}");
        }
    }
}

/// Run by hand: `cargo test --release --lib handshake::tests::handshake_cost -- --ignored
/// --nocapture`. Prints the CPU time of one whole handshake, both sides on one thread.
#[test]
#[ignore]
fn handshake_cost() {
    let (a, b) = (alice(), bob());
    let rounds = 100;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        handshake(Sides {
            initiator: a.clone(),
            expect: "bob",
            responder: b.clone(),
            initiator_check: Box::new(checker("alice", &ALICE)),
            responder_check: Box::new(checker("bob", &BOB)),
        })
        .unwrap();
    }
    let each = start.elapsed().as_secs_f64() / f64::from(rounds);
    println!(
        "one handshake, both sides on one core: {:.2} ms ({:.0} handshakes/s a core, \
         about {:.2} ms a side)",
        each * 1e3,
        1.0 / each,
        each * 1e3 / 2.0
    );
}
