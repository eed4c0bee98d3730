//! The record layer: one direction's frames, sealed by a [`Sealer`] and opened by an
//! [`Opener`], each counting frames so that a replayed, dropped or reordered frame fails.
//!
//! ```text
//! frame   = len: u32 BE ‖ ciphertext[len] ‖ tag[32]          (len ≤ MAX_FRAME)
//! ct      = AES-128-CTR(key, counter block) ⊕ plaintext
//! counter = (iv[0..8] ⊕ seq as u64 BE) ‖ iv[8..16] + block index (mod 2^64, BE)
//! tag     = HMAC-SHA256(mac key, dir: u8 ‖ seq: u64 BE ‖ len: u32 BE ‖ ct)
//! ```
//!
//! Frame `seq` owns the counter blocks whose first half is `iv[0..8] ⊕ seq`, so no two
//! frames share keystream; a frame holds at most 2^16 blocks of the 2^64 its half allows.
//! The tag is checked in constant time before anything is decrypted. Any failure closes
//! the sealer or opener for good, and neither goes past 2^32 frames. A frame's number and
//! keys are taken in order ([`Sealer::next_frame`], [`Opener::next_frame`]); the work on it
//! may then run on another thread, so that several frames of one direction are sealed or
//! opened at once.

use super::ChannelError;
use super::schedule::{DirectionKeys, hmac_sha256};
use aes::Aes128;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
use ctr::CtrCore;
use ctr::flavors::Ctr64BE;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use zeroize::Zeroizing;

/// Bytes of the length field in front of each frame.
pub const HEADER_LEN: usize = 4;
/// Bytes of the HMAC-SHA256 tag after each frame's ciphertext.
pub const TAG_LEN: usize = 32;
/// The largest plaintext of one frame: a 1 MiB block plus room for a header.
pub const MAX_FRAME: usize = (1 << 20) + (64 << 10);
/// Frames one key may seal or open (DESIGN §5).
pub const MAX_FRAMES: u64 = 1 << 32;

/// Which way a frame travels; part of what the tag covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the device that opened the connection.
    InitiatorToResponder = 1,
    /// Sent by the device that accepted it.
    ResponderToInitiator = 2,
}

/// Bytes encrypted and authenticated between two looks at the next chunk, so that the
/// sealer's two passes over a frame share the cache.
const CHUNK: usize = 16 * 1024;

/// One direction: the keys of its next frame, whose number counts up.
struct Keys(FrameKeys);

impl Keys {
    fn new(keys: &DirectionKeys, dir: Direction) -> Self {
        Self(FrameKeys {
            aes: Aes128::new(&keys.key.into()),
            mac: hmac_sha256(&keys.mac),
            iv: Zeroizing::new(keys.iv),
            dir,
            seq: 0,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The keys of the next frame, its number spent. Refuses once closed, or once the
    /// counter is spent.
    fn take(&mut self) -> Result<FrameKeys, ChannelError> {
        self.0.ready()?;
        if self.0.seq >= MAX_FRAMES {
            return self.0.fail(ChannelError::SequenceExhausted);
        }
        let frame = self.0.clone();
        self.0.seq += 1;
        Ok(frame)
    }
}

/// The keys of one numbered frame, taken from its direction in order. Sealing or opening a
/// frame is two passes over it (AES and HMAC), which may run on any thread, several frames
/// at once; the caller sends or accepts the frames in the order their keys were taken.
#[derive(Clone)]
struct FrameKeys {
    aes: Aes128,
    mac: Hmac<Sha256>,
    iv: Zeroizing<[u8; 16]>,
    dir: Direction,
    seq: u64,
    /// Set by any failure, in this frame or another of its direction; then nothing more is
    /// sealed or opened in that direction.
    closed: Arc<AtomicBool>,
}

impl FrameKeys {
    /// The keystream of this frame.
    fn cipher(&self) -> StreamCipherCoreWrapper<CtrCore<Aes128, Ctr64BE>> {
        let mut block = Zeroizing::new(*self.iv);
        for (b, s) in block.iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        StreamCipherCoreWrapper::from_core(CtrCore::inner_iv_init(
            self.aes.clone(),
            &(*block).into(),
        ))
    }

    /// The MAC of this frame after its header, ready for the ciphertext.
    fn mac(&self, len: u32) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(&[self.dir as u8]);
        mac.update(&self.seq.to_be_bytes());
        mac.update(&len.to_be_bytes());
        mac
    }

    /// Refuses once the direction this frame came from has closed (a frame taken before
    /// another failed is not worked on after it).
    fn ready(&self) -> Result<(), ChannelError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ChannelError::Closed);
        }
        Ok(())
    }

    /// Closes the direction this frame came from, and passes the error on.
    fn fail<T>(&self, e: ChannelError) -> Result<T, ChannelError> {
        self.closed.store(true, Ordering::Release);
        Err(e)
    }
}

/// Seals the frames of one direction.
pub struct Sealer(Keys);

/// The next frame of a [`Sealer`], to be sealed anywhere and then sent after the frames
/// taken before it.
pub struct FrameSeal(FrameKeys);

impl Sealer {
    /// A sealer for `dir` starting at frame 0.
    pub fn new(keys: &DirectionKeys, dir: Direction) -> Self {
        Self(Keys::new(keys, dir))
    }

    /// Appends one frame carrying `plaintext` (at most [`MAX_FRAME`] bytes) to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let frame = self.next_frame()?;
        let start = out.len();
        out.reserve(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(plaintext);
        frame.seal_from(out, start)
    }

    /// Takes the next frame's number and keys.
    pub fn next_frame(&mut self) -> Result<FrameSeal, ChannelError> {
        self.0.take().map(FrameSeal)
    }

    /// A sealer whose next frame is `seq`, to test the end of the counter.
    #[cfg(test)]
    pub(crate) fn starting_at(keys: &DirectionKeys, dir: Direction, seq: u64) -> Self {
        let mut s = Self::new(keys, dir);
        s.0.0.seq = seq;
        s
    }
}

impl FrameSeal {
    /// Seals `frame` where it lies: on entry its first [`HEADER_LEN`] bytes are room for the
    /// header (their value does not matter) and the rest is the plaintext; on return it is
    /// the whole frame. Saves [`Sealer::seal`]'s copy of a large plaintext. A failure closes
    /// the sealer.
    pub fn seal_in_place(self, frame: &mut Vec<u8>) -> Result<(), ChannelError> {
        if frame.len() < HEADER_LEN {
            return self
                .0
                .fail(ChannelError::BadMessage("no room for the frame header"));
        }
        self.seal_from(frame, 0)
    }

    /// Seals `out[start..]`: header room, then plaintext.
    fn seal_from(self, out: &mut Vec<u8>, start: usize) -> Result<(), ChannelError> {
        let k = self.0;
        k.ready()?;
        let plain_len = out.len() - start - HEADER_LEN;
        let len = match u32::try_from(plain_len) {
            Ok(len) if plain_len <= MAX_FRAME => len,
            _ => return k.fail(ChannelError::FrameTooLarge(plain_len)),
        };
        out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        let mut cipher = k.cipher();
        let mut mac = k.mac(len);
        for chunk in out[start + HEADER_LEN..].chunks_mut(CHUNK) {
            cipher.apply_keystream(chunk);
            mac.update(chunk);
        }
        out.extend_from_slice(&mac.finalize().into_bytes());
        Ok(())
    }
}

/// Opens the frames of one direction, in order, each once.
pub struct Opener(Keys);

/// The next frame of an [`Opener`], to be checked and decrypted anywhere; the frames taken
/// after it are accepted only if it opens.
pub struct FrameOpen(FrameKeys);

impl Opener {
    /// An opener for `dir` expecting frame 0.
    pub fn new(keys: &DirectionKeys, dir: Direction) -> Self {
        Self(Keys::new(keys, dir))
    }

    /// How many bytes follow this header (ciphertext and tag); refuses a length over
    /// [`MAX_FRAME`] before anything is read.
    fn body_len(&mut self, header: [u8; HEADER_LEN]) -> Result<usize, ChannelError> {
        let k = &mut self.0;
        k.0.ready()?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return k.0.fail(ChannelError::FrameTooLarge(len));
        }
        Ok(len + TAG_LEN)
    }

    /// How many bytes follow this header (ciphertext and tag), and the keys of the frame it
    /// begins; refuses a length over [`MAX_FRAME`] before anything is read.
    pub fn next_frame(
        &mut self,
        header: [u8; HEADER_LEN],
    ) -> Result<(usize, FrameOpen), ChannelError> {
        let body = self.body_len(header)?;
        Ok((body, FrameOpen(self.0.take()?)))
    }

    /// Checks and decrypts one whole frame (header, ciphertext, tag) in place and returns
    /// the plaintext, which is `frame[HEADER_LEN..frame.len() - TAG_LEN]`.
    pub fn open_in_place<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a mut [u8], ChannelError> {
        FrameOpen(self.0.take()?).open_in_place(frame)
    }

    /// An opener whose next frame is `seq`, to test the end of the counter.
    #[cfg(test)]
    pub(crate) fn starting_at(keys: &DirectionKeys, dir: Direction, seq: u64) -> Self {
        let mut o = Self::new(keys, dir);
        o.0.0.seq = seq;
        o
    }
}

impl FrameOpen {
    /// Like [`Opener::open_in_place`], for this frame. A failure closes the opener.
    pub fn open_in_place(self, frame: &mut [u8]) -> Result<&mut [u8], ChannelError> {
        self.0.ready()?;
        match Self::open(&self.0, frame) {
            Ok(plain) => Ok(plain),
            Err(e) => self.0.fail(e),
        }
    }

    fn open<'a>(k: &FrameKeys, frame: &'a mut [u8]) -> Result<&'a mut [u8], ChannelError> {
        let (header, rest) = frame
            .split_first_chunk_mut::<HEADER_LEN>()
            .ok_or(ChannelError::Truncated)?;
        let len = u32::from_be_bytes(*header);
        let body = len as usize;
        if body > MAX_FRAME {
            return Err(ChannelError::FrameTooLarge(body));
        }
        if rest.len() < body + TAG_LEN {
            return Err(ChannelError::Truncated);
        }
        if rest.len() > body + TAG_LEN {
            return Err(ChannelError::BadMessage("bytes after the end of a frame"));
        }
        let (ct, tag) = rest.split_at_mut(body);
        let mut mac = k.mac(len);
        mac.update(ct);
        // `verify_slice` compares in constant time.
        mac.verify_slice(tag).map_err(|_| ChannelError::BadMac)?;
        k.cipher().apply_keystream(ct);
        Ok(ct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> DirectionKeys {
        DirectionKeys {
            key: std::array::from_fn(|i| seed.wrapping_add(i as u8)),
            mac: std::array::from_fn(|i| seed.wrapping_add(0x20 + i as u8)),
            iv: std::array::from_fn(|i| seed.wrapping_add(0xa0 + i as u8)),
            finished: [0; 32],
        }
    }

    const I2R: Direction = Direction::InitiatorToResponder;
    const R2I: Direction = Direction::ResponderToInitiator;

    fn pair() -> (Sealer, Opener) {
        (Sealer::new(&keys(0), I2R), Opener::new(&keys(0), I2R))
    }

    fn seal(s: &mut Sealer, pt: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(pt, &mut out).unwrap();
        out
    }

    fn open(o: &mut Opener, frame: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let mut f = frame.to_vec();
        o.open_in_place(&mut f).map(|p| p.to_vec())
    }

    /// Frame 1 (the second) of `seal` under `keys(0)` for this plaintext, computed once
    /// independently with openssl:
    ///
    /// ```text
    /// # counter block = iv with byte 7 XOR 1 (seq 1)
    /// printf '%s' "$PT" | openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f \
    ///     -iv a0a1a2a3a4a5a6a6a8a9aaabacadaeaf | xxd -p
    /// (printf '\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x38'; cat ct.bin) |
    ///     openssl dgst -sha256 -mac HMAC \
    ///     -macopt hexkey:202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
    /// ```
    const VECTOR_PT: &[u8] = b"hello, meshfs peer channel! this spans four AES blocks.!";
    const VECTOR_CT: &str = "abf525bbbdfbbe8befe582e3883e46c2e78478ff286b439f6b59fe5b546f5a191f97db1946565ee948d3fcb7fe27befd84aaf2c76979e15c";
    const VECTOR_TAG: &str = "071f5b499f09c54042a3079d64a8950b839ab146a635e190876d03dfc10143c5";

    #[test]
    fn frame_matches_independent_vector() {
        let (mut s, mut o) = pair();
        let first = seal(&mut s, b"frame zero");
        let frame = seal(&mut s, VECTOR_PT);
        assert_eq!(frame[..HEADER_LEN], (VECTOR_PT.len() as u32).to_be_bytes());
        let (ct, tag) = frame[HEADER_LEN..].split_at(VECTOR_PT.len());
        assert_eq!(hex::encode(ct), VECTOR_CT);
        assert_eq!(hex::encode(tag), VECTOR_TAG);
        assert_eq!(open(&mut o, &first).unwrap(), b"frame zero");
        assert_eq!(open(&mut o, &frame).unwrap(), VECTOR_PT);
    }

    #[test]
    fn frames_round_trip_in_order_including_empty_and_largest() {
        let (mut s, mut o) = pair();
        let big: Vec<u8> = (0..MAX_FRAME).map(|i| i as u8).collect();
        for pt in [&b""[..], b"x", &big[..1000], &big] {
            let frame = seal(&mut s, pt);
            assert_eq!(frame.len(), HEADER_LEN + pt.len() + TAG_LEN);
            if !pt.is_empty() {
                assert_ne!(&frame[HEADER_LEN..HEADER_LEN + pt.len()], pt);
            }
            let mut header = [0; HEADER_LEN];
            header.copy_from_slice(&frame[..HEADER_LEN]);
            assert_eq!(o.body_len(header).unwrap(), pt.len() + TAG_LEN);
            assert_eq!(open(&mut o, &frame).unwrap(), pt);
        }
    }

    #[test]
    fn sealing_in_place_gives_the_same_frames_as_sealing_a_copy() {
        let (mut a, mut b) = (Sealer::new(&keys(0), I2R), Sealer::new(&keys(0), I2R));
        for pt in [&b""[..], b"x", VECTOR_PT] {
            let mut frame = vec![0xee; HEADER_LEN];
            frame.extend_from_slice(pt);
            b.next_frame().unwrap().seal_in_place(&mut frame).unwrap();
            assert_eq!(frame, seal(&mut a, pt));
        }
        let mut short = vec![0; HEADER_LEN - 1];
        assert!(matches!(
            b.next_frame().unwrap().seal_in_place(&mut short),
            Err(ChannelError::BadMessage(_))
        ));
        assert!(matches!(b.seal(b"", &mut short), Err(ChannelError::Closed)));
    }

    #[test]
    fn same_plaintext_twice_gives_different_ciphertext() {
        let (mut s, _) = pair();
        let a = seal(&mut s, &[0; 64]);
        let b = seal(&mut s, &[0; 64]);
        assert_ne!(
            a[HEADER_LEN..HEADER_LEN + 64],
            b[HEADER_LEN..HEADER_LEN + 64]
        );
    }

    #[test]
    fn refuses_any_flipped_bit() {
        let (mut s, _) = pair();
        let frame = seal(&mut s, b"eleven byte");
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                let mut o = Opener::new(&keys(0), I2R);
                let err = open(&mut o, &bad).unwrap_err();
                // A flip in the length makes the frame too short, too long or unauthentic.
                assert!(
                    matches!(
                        err,
                        ChannelError::BadMac
                            | ChannelError::Truncated
                            | ChannelError::BadMessage(_)
                            | ChannelError::FrameTooLarge(_)
                    ),
                    "byte {byte} bit {bit}: {err:?}"
                );
                if byte >= HEADER_LEN {
                    assert!(matches!(err, ChannelError::BadMac), "{err:?}");
                }
            }
        }
    }

    #[test]
    fn refuses_a_replayed_frame() {
        let (mut s, mut o) = pair();
        let frame = seal(&mut s, b"once");
        open(&mut o, &frame).unwrap();
        assert!(matches!(open(&mut o, &frame), Err(ChannelError::BadMac)));
    }

    #[test]
    fn refuses_reordered_frames() {
        let (mut s, mut o) = pair();
        let a = seal(&mut s, b"a");
        let b = seal(&mut s, b"b");
        assert!(matches!(open(&mut o, &b), Err(ChannelError::BadMac)));
        let mut o = Opener::new(&keys(0), I2R);
        open(&mut o, &a).unwrap();
        open(&mut o, &b).unwrap();
    }

    #[test]
    fn refuses_a_frame_after_a_dropped_one() {
        let (mut s, mut o) = pair();
        let _dropped = seal(&mut s, b"a");
        let b = seal(&mut s, b"b");
        assert!(matches!(open(&mut o, &b), Err(ChannelError::BadMac)));
    }

    #[test]
    fn refuses_a_frame_from_the_other_direction() {
        // Other keys (the real case: each direction has its own).
        let mut theirs = Sealer::new(&keys(1), R2I);
        let mut o = Opener::new(&keys(0), I2R);
        assert!(matches!(
            open(&mut o, &seal(&mut theirs, b"x")),
            Err(ChannelError::BadMac)
        ));
        // The same keys: the direction byte alone tells them apart.
        let mut reflected = Sealer::new(&keys(0), R2I);
        let mut o = Opener::new(&keys(0), I2R);
        assert!(matches!(
            open(&mut o, &seal(&mut reflected, b"x")),
            Err(ChannelError::BadMac)
        ));
    }

    #[test]
    fn refuses_a_truncated_frame() {
        let (mut s, _) = pair();
        let frame = seal(&mut s, b"some bytes");
        for cut in 0..frame.len() {
            let mut o = Opener::new(&keys(0), I2R);
            assert!(
                matches!(open(&mut o, &frame[..cut]), Err(ChannelError::Truncated)),
                "cut at {cut}"
            );
        }
        let mut long = frame.clone();
        long.push(0);
        let mut o = Opener::new(&keys(0), I2R);
        assert!(matches!(
            open(&mut o, &long),
            Err(ChannelError::BadMessage(_))
        ));
    }

    #[test]
    fn refuses_an_oversized_length_before_the_body() {
        let mut o = Opener::new(&keys(0), I2R);
        let too_big = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            o.body_len(too_big),
            Err(ChannelError::FrameTooLarge(n)) if n == MAX_FRAME + 1
        ));
        assert!(matches!(
            o.body_len(0u32.to_be_bytes()),
            Err(ChannelError::Closed)
        ));
        let mut o = Opener::new(&keys(0), I2R);
        assert!(matches!(
            open(&mut o, &u32::MAX.to_be_bytes()),
            Err(ChannelError::FrameTooLarge(_))
        ));
        let (mut s, _) = pair();
        let mut out = Vec::new();
        assert!(matches!(
            s.seal(&vec![0; MAX_FRAME + 1], &mut out),
            Err(ChannelError::FrameTooLarge(_))
        ));
        assert!(matches!(s.seal(b"", &mut out), Err(ChannelError::Closed)));
    }

    #[test]
    fn opener_stays_closed_after_an_error() {
        let (mut s, mut o) = pair();
        let good = seal(&mut s, b"good");
        let mut bad = good.clone();
        bad[HEADER_LEN] ^= 1;
        assert!(matches!(open(&mut o, &bad), Err(ChannelError::BadMac)));
        // The genuine frame, the one the opener expects, is refused too.
        assert!(matches!(open(&mut o, &good), Err(ChannelError::Closed)));
        assert!(matches!(o.body_len([0; 4]), Err(ChannelError::Closed)));
    }

    #[test]
    fn frames_taken_in_order_seal_and_open_on_other_threads_in_any_order() {
        let (mut s, mut o) = pair();
        let plain: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        // Keys taken in order, sealed in reverse order, each on a thread of its own.
        let seals: Vec<_> = plain.iter().map(|_| s.next_frame().unwrap()).collect();
        let sealed: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = seals
                .into_iter()
                .zip(&plain)
                .rev()
                .map(|(seal, pt)| {
                    scope.spawn(move || {
                        let mut frame = vec![0; HEADER_LEN];
                        frame.extend_from_slice(pt);
                        seal.seal_in_place(&mut frame).unwrap();
                        frame
                    })
                })
                .collect();
            let mut out: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            out.reverse();
            out
        });
        // The same frames as a plain sealer makes one after another.
        let (mut again, _) = pair();
        for (frame, pt) in sealed.iter().zip(&plain) {
            assert_eq!(frame, &seal(&mut again, pt));
        }
        // Opened in reverse order too, each with the keys of its own number.
        let opens: Vec<_> = sealed
            .iter()
            .map(|f| {
                let header = f[..HEADER_LEN].try_into().unwrap();
                let (body, open) = o.next_frame(header).unwrap();
                assert_eq!(body, f.len() - HEADER_LEN);
                open
            })
            .collect();
        for ((open, frame), pt) in opens.into_iter().zip(sealed).zip(&plain).rev() {
            let mut frame = frame;
            assert_eq!(open.open_in_place(&mut frame).unwrap(), &pt[..]);
        }
    }

    #[test]
    fn a_frame_opened_with_another_frames_keys_fails_and_closes_the_opener() {
        let (mut s, mut o) = pair();
        let a = seal(&mut s, b"frame a");
        let b = seal(&mut s, b"frame b");
        let header = |f: &[u8]| f[..HEADER_LEN].try_into().unwrap();
        let (_, open_a) = o.next_frame(header(&a)).unwrap();
        let (_, open_b) = o.next_frame(header(&b)).unwrap();
        let mut b_copy = b.clone();
        assert!(matches!(
            open_a.open_in_place(&mut b_copy),
            Err(ChannelError::BadMac)
        ));
        // The failure closed the opener: no more frames, not even the right pairing.
        assert!(matches!(
            o.next_frame(header(&a)),
            Err(ChannelError::Closed)
        ));
        let mut b = b;
        assert!(
            matches!(open_b.open_in_place(&mut b), Err(ChannelError::Closed)),
            "a frame taken before the failure is not opened after it"
        );
        // And a failed seal closes its sealer.
        let bad = s.next_frame().unwrap();
        assert!(matches!(
            bad.seal_in_place(&mut vec![0; MAX_FRAME + HEADER_LEN + 1]),
            Err(ChannelError::FrameTooLarge(_))
        ));
        assert!(matches!(s.next_frame(), Err(ChannelError::Closed)));
    }

    #[test]
    fn refuses_past_2_pow_32_frames() {
        let mut s = Sealer::starting_at(&keys(0), I2R, MAX_FRAMES - 1);
        let mut o = Opener::starting_at(&keys(0), I2R, MAX_FRAMES - 1);
        let last = seal(&mut s, b"last");
        assert_eq!(open(&mut o, &last).unwrap(), b"last");
        let mut out = Vec::new();
        assert!(matches!(
            s.seal(b"one more", &mut out),
            Err(ChannelError::SequenceExhausted)
        ));
        assert!(matches!(s.seal(b"", &mut out), Err(ChannelError::Closed)));
        assert!(matches!(
            open(&mut o, &last),
            Err(ChannelError::SequenceExhausted)
        ));
        assert!(matches!(open(&mut o, &last), Err(ChannelError::Closed)));
    }

    /// Run by hand: `cargo test --release --lib record::tests::throughput -- --ignored
    /// --nocapture`. Prints the speed of sealing and of opening 1 GiB in 1 MiB frames.
    #[test]
    #[ignore]
    fn throughput() {
        let (mut s, mut o) = pair();
        let block = vec![0x5a; 1 << 20];
        let mut frame = Vec::with_capacity(MAX_FRAME + HEADER_LEN + TAG_LEN);
        let (mut sealing, mut opening) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for _ in 0..1024 {
            frame.clear();
            let t = std::time::Instant::now();
            s.seal(&block, &mut frame).unwrap();
            sealing += t.elapsed();
            let t = std::time::Instant::now();
            o.open_in_place(&mut frame).unwrap();
            opening += t.elapsed();
        }
        let mbps = |d: std::time::Duration| 1024.0 * 1.048576 / d.as_secs_f64();
        println!(
            "record layer, 1 GiB in 1 MiB frames: seal {:.0} MB/s, open {:.0} MB/s, both on one core {:.0} MB/s",
            mbps(sealing),
            mbps(opening),
            mbps(sealing + opening)
        );
    }
}
