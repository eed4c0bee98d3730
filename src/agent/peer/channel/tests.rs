//! The channel over real streams: in-memory pipes, loopback TCP, and a man in the middle.

use super::*;
use crate::crypto::channel::check::tests::{ALICE, BOB, checker, ticket};
use crate::crypto::channel::record::TAG_LEN;
use std::sync::Mutex;
use tokio::io::{DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn check(me: &str, key: &PrivateKey) -> Arc<dyn PeerCheck + Send + Sync> {
    Arc::new(checker(me, key))
}

fn alice() -> LocalPeer {
    LocalPeer {
        device: "alice".into(),
        key: Arc::new(ALICE.clone()),
        ticket: ticket("alice"),
        key_log: None,
    }
}

/// Bob's side of the handshake: he holds a ticket for alice only.
async fn bob_accepts<S>(mut io: S) -> Result<Channel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let first = read_first(&mut io).await?;
    let ticket_for = |peer: PeerInfo| async move {
        match peer.device.as_str() {
            "alice" => Ok(ticket("bob")),
            _ => Err("bob has no ticket for this device"),
        }
    };
    accept(
        io,
        first,
        "bob",
        Arc::new(BOB.clone()),
        ticket_for,
        check("bob", &BOB),
        None,
    )
    .await
}

async fn alice_connects<S>(io: S) -> Result<Channel<S>, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    connect(io, alice(), "bob", check("alice", &ALICE)).await
}

async fn pair<S>(a: S, b: S) -> (Channel<S>, Channel<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (i, r) = tokio::join!(alice_connects(a), bob_accepts(b));
    (i.unwrap(), r.unwrap())
}

/// Frame `n` of a stream seeded `seed`: `len` bytes, stamped so that any mix-up shows.
fn frame(seed: u8, n: u32, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed).collect();
    for (b, s) in f.iter_mut().zip(n.to_be_bytes()) {
        *b = s;
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_then_64_mib_of_frames_both_ways_arrive_intact() {
    const FRAMES: u32 = 64;
    const LEN: usize = 1 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (i, r) = pair(a.unwrap(), b.unwrap().0).await;
    assert_eq!(i.peer.device, "bob");
    assert_eq!(r.peer.device, "alice");

    // Alice to bob goes the way of block answers: sealed several at once (`send_all`),
    // opened several at once (`open_ahead`), payloads from byte 6 on placed for direct I/O.
    // Bob to alice goes frame by frame.
    let (ir, mut iw) = i.into_split();
    let (mut rr, rw) = r.into_split();
    let alice_sends = tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel(4);
        let feed = tokio::spawn(async move {
            for n in 0..FRAMES {
                let mut f = frame_buffer(LEN);
                f.extend_from_slice(&frame(1, n, LEN));
                tx.send(f).await.unwrap();
            }
        });
        iw.send_all(&mut rx, 3).await.unwrap();
        feed.await.unwrap();
        iw.close().await.unwrap();
    });
    let bob_receives = tokio::spawn(async move {
        rr.align_payload_at(6);
        let mut frames = rr.open_ahead(3);
        for n in 0..FRAMES {
            let got = frames.recv().await.unwrap().plaintext().await.unwrap();
            assert!(got == frame(1, n, LEN), "frame {n} differs");
            let addr = got[6..].as_ptr() as usize;
            assert_eq!(addr % crate::agent::aligned::DIRECT_ALIGN, 0, "frame {n}");
        }
        assert!(frames.recv().await.is_none(), "a clean end");
    });
    let bob_sends = tokio::spawn(async move {
        let mut w = rw;
        let mut f = frame(2, 0, LEN);
        for n in 0..FRAMES {
            f[..4].copy_from_slice(&n.to_be_bytes());
            w.send(&f).await.unwrap();
        }
        w.close().await.unwrap();
    });
    let alice_receives = tokio::spawn(async move {
        let mut r = ir;
        let mut f = frame(2, 0, LEN);
        for n in 0..FRAMES {
            f[..4].copy_from_slice(&n.to_be_bytes());
            let got = r.recv().await.unwrap().unwrap();
            assert!(got == f, "frame {n} differs");
        }
        assert!(r.recv().await.unwrap().is_none());
    });
    for t in [alice_sends, bob_receives, bob_sends, alice_receives] {
        t.await.unwrap();
    }
}

/// Copies the handshake both ways untouched, then passes each frame the initiator sends
/// through `tamper`, which returns what to forward instead. Records every forwarded byte.
struct Mitm {
    wire: Arc<Mutex<Vec<u8>>>,
}

impl Mitm {
    fn start(
        client: DuplexStream,
        server: DuplexStream,
        mut tamper: impl FnMut(u32, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static,
    ) -> Self {
        let wire = Arc::new(Mutex::new(Vec::new()));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
        let seen = wire.clone();
        tokio::spawn(async move {
            // The initiator's Hello, KeyTransport and Finished.
            for _ in 0..3 {
                let m = read_message(&mut cr).await?;
                sw.write_all(&m).await?;
            }
            for n in 0.. {
                let mut f = vec![0; HEADER_LEN];
                if cr.read_exact(&mut f).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize + TAG_LEN;
                f.resize(HEADER_LEN + len, 0);
                cr.read_exact(&mut f[HEADER_LEN..]).await?;
                for out in tamper(n, f) {
                    seen.lock().unwrap().extend_from_slice(&out);
                    sw.write_all(&out).await?;
                }
            }
            sw.shutdown().await?;
            Ok::<_, ChannelError>(())
        });
        Self { wire }
    }
}

/// Alice and bob with `tamper` between them; alice sends frames 0..4 and hangs up. Bob
/// takes six results: frame by frame with `recv`, or, `pipelined`, through `open_ahead`
/// (from alice's `send_all`), where the end after an error reads as `Closed`.
async fn through_mitm(
    pipelined: bool,
    tamper: impl FnMut(u32, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static,
) -> (Vec<Result<Option<Bytes>, ChannelError>>, Mitm) {
    let (a, a_end) = duplex(1 << 16);
    let (b, b_end) = duplex(1 << 16);
    let mitm = Mitm::start(a_end, b_end, tamper);
    let (i, r) = pair(a, b).await;
    let (_ir, mut iw) = i.into_split();
    let (mut rr, _rw) = r.into_split();
    tokio::spawn(async move {
        if pipelined {
            let (tx, mut rx) = mpsc::channel(4);
            for n in 0..4 {
                let mut f = frame_buffer(1000);
                f.extend_from_slice(&frame(1, n, 1000));
                let _ = tx.send(f).await;
            }
            drop(tx);
            iw.send_all(&mut rx, 3).await?;
        } else {
            for n in 0..4 {
                iw.send(&frame(1, n, 1000)).await?;
            }
        }
        iw.close().await
    });
    let mut got = Vec::new();
    if pipelined {
        let mut frames = rr.open_ahead(3);
        let mut failed = false;
        for _ in 0..6 {
            let r = match frames.recv().await {
                Some(opening) => opening.plaintext().await.map(Some),
                None if failed => Err(ChannelError::Closed),
                None => Ok(None),
            };
            failed |= r.is_err();
            got.push(r);
        }
    } else {
        for _ in 0..6 {
            got.push(rr.recv().await);
        }
    }
    (got, mitm)
}

fn is_frame(r: &Result<Option<Bytes>, ChannelError>, n: u32) -> bool {
    matches!(r, Ok(Some(f)) if f[..] == frame(1, n, 1000)[..])
}

#[tokio::test]
async fn an_untouched_stream_arrives_whole_and_ends_cleanly() {
    for pipelined in [false, true] {
        let (got, mitm) = through_mitm(pipelined, |_, f| vec![f]).await;
        for n in 0..4 {
            assert!(is_frame(&got[n as usize], n), "{:?}", got[n as usize]);
        }
        assert!(matches!(got[4], Ok(None)));
        // What a relay forwards is ciphertext: no plaintext of a frame appears in it.
        let wire = mitm.wire.lock().unwrap();
        let pt = frame(1, 2, 1000);
        assert!(!wire.windows(32).any(|w| w == &pt[100..132]));
    }
}

#[tokio::test]
async fn a_flipped_bit_from_a_man_in_the_middle_closes_the_channel() {
    for pipelined in [false, true] {
        let (got, _) = through_mitm(pipelined, |n, mut f| {
            if n == 2 {
                f[HEADER_LEN + 10] ^= 0x04;
            }
            vec![f]
        })
        .await;
        assert_fails_from(&got, 2, pipelined);
    }
}

/// Frames from `first` on fail and nothing after them is delivered. One at a time, the
/// frames before it arrive, the first bad frame is refused (`BadMac`) and the next finds
/// the direction closed. Opened several at once on the blocking pool, a frame before the
/// bad one may be opened after it failed, and is refused too (`Closed`): the frames arrive
/// in order up to the first refusal, and none from there on.
fn assert_fails_from(got: &[Result<Option<Bytes>, ChannelError>], first: usize, pipelined: bool) {
    let refused = got.iter().position(|r| r.is_err()).unwrap_or(got.len());
    let summary = || {
        got.iter()
            .map(|r| r.as_ref().map(|f| f.as_ref().map(|f| f.len())))
            .collect::<Vec<_>>()
    };
    for (n, r) in got.iter().enumerate().take(refused.min(first)) {
        assert!(is_frame(r, n as u32), "frame {n}: {:?}", summary());
    }
    if pipelined {
        assert!(refused <= first, "{:?}", summary());
        assert!(got[refused..].iter().all(|r| r.is_err()), "{:?}", summary());
    } else {
        assert_eq!(refused, first, "{:?}", summary());
        assert!(
            matches!(got[first], Err(ChannelError::BadMac)),
            "{:?}",
            summary()
        );
        assert!(
            matches!(got[first + 1], Err(ChannelError::Closed)),
            "{:?}",
            summary()
        );
    }
}

#[tokio::test]
async fn a_replayed_frame_closes_the_channel() {
    for pipelined in [false, true] {
        let (got, _) = through_mitm(
            pipelined,
            |n, f| if n == 1 { vec![f.clone(), f] } else { vec![f] },
        )
        .await;
        assert_fails_from(&got, 2, pipelined);
    }
}

#[tokio::test]
async fn a_dropped_frame_closes_the_channel() {
    for pipelined in [false, true] {
        let (got, _) = through_mitm(pipelined, |n, f| if n == 1 { vec![] } else { vec![f] }).await;
        assert_fails_from(&got, 1, pipelined);
    }
}

#[tokio::test]
async fn a_stream_cut_inside_a_frame_is_an_error_not_the_end() {
    for pipelined in [false, true] {
        for cut in [2, HEADER_LEN + 500, HEADER_LEN + 1000 + TAG_LEN - 1] {
            let (got, _) = through_mitm(pipelined, move |n, mut f| match n {
                0 => vec![f],
                1 => {
                    f.truncate(cut);
                    vec![f]
                }
                // The proxy hangs up after the cut frame.
                _ => vec![],
            })
            .await;
            assert!(is_frame(&got[0], 0));
            // Frames after the cut are dropped by the proxy; it shuts down once alice does.
            assert!(
                matches!(got[1], Err(ChannelError::Truncated)),
                "cut {cut}: {:?}",
                got[1]
            );
        }
    }
}

#[tokio::test]
async fn connect_refuses_a_device_other_than_the_expected_one() {
    let (a, b) = duplex(1 << 16);
    let (i, r) = tokio::join!(
        connect(a, alice(), "carol", check("alice", &ALICE)),
        bob_accepts(b)
    );
    assert!(matches!(i, Err(ChannelError::WrongPeer { .. })));
    assert!(matches!(r, Err(ChannelError::Truncated)));
}

#[tokio::test]
async fn accept_without_a_ticket_for_the_caller_refuses() {
    let (a, mut b) = duplex(1 << 16);
    let no_ticket = |_: PeerInfo| async { Err::<String, _>("none") };
    let (i, r) = tokio::join!(alice_connects(a), async move {
        let first = read_first(&mut b).await?;
        accept(
            b,
            first,
            "bob",
            Arc::new(BOB.clone()),
            no_ticket,
            check("bob", &BOB),
            None,
        )
        .await
    });
    assert!(matches!(r, Err(ChannelError::NoTicket { device, .. }) if device == "alice"));
    assert!(matches!(i, Err(ChannelError::Truncated)));
}

#[tokio::test]
async fn a_silent_peer_times_the_handshake_out() {
    let (a, _silent) = duplex(1 << 16);
    let limit = Duration::from_millis(200);
    let r = within(limit, initiate(a, alice(), "bob", check("alice", &ALICE))).await;
    assert!(matches!(r, Err(ChannelError::Timeout(d)) if d == limit));
}

#[tokio::test]
async fn an_oversized_handshake_message_is_refused_before_it_is_read() {
    let (a, mut b) = duplex(1 << 16);
    let (i, _) = tokio::join!(alice_connects(a), async move {
        // Skip alice's Hello, then announce a Hello of 64 KiB.
        let _ = read_message(&mut b).await;
        b.write_all(&[1, 0xff, 0xff]).await.unwrap();
        b
    });
    assert!(matches!(i, Err(ChannelError::BadMessage(_))));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_sends_nothing_is_dropped_at_the_first_message_deadline() {
    let (_silent, mut b) = duplex(1 << 16);
    let r = read_first(&mut b).await;
    assert!(matches!(r, Err(ChannelError::Timeout(d)) if d == FIRST_MESSAGE_WITHIN));
}

#[tokio::test]
async fn a_first_message_other_than_a_hello_is_refused() {
    let (mut a, mut b) = duplex(1 << 16);
    let finished = message::encode_finished(&[7; 32]).unwrap();
    a.write_all(&finished).await.unwrap();
    assert!(matches!(
        read_first(&mut b).await,
        Err(ChannelError::BadMessage(_))
    ));
}

#[tokio::test]
async fn an_oversized_first_message_is_refused_before_its_body_arrives() {
    let (mut a, mut b) = duplex(1 << 16);
    // A Hello announcing 64 KiB, and none of its body.
    a.write_all(&[1, 0xff, 0xff]).await.unwrap();
    assert!(matches!(
        read_first(&mut b).await,
        Err(ChannelError::BadMessage(_))
    ));
}
