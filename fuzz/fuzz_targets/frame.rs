//! Random bytes into an `Opener`: as a stream of frames (header, then the announced body)
//! and as one frame. Also seals the input and checks that it opens back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfs::crypto::channel::record::{Direction, HEADER_LEN, MAX_FRAME, Opener, Sealer};
use meshfs::crypto::channel::schedule::DirectionKeys;

fn keys() -> DirectionKeys {
    DirectionKeys {
        key: [1; 16],
        mac: [2; 32],
        iv: [3; 16],
        finished: [4; 32],
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = Direction::InitiatorToResponder;

    // As a stream, the way the channel's reader takes it.
    let mut opener = Opener::new(&keys(), dir);
    let mut rest = data;
    while let Some((header, _)) = rest.split_first_chunk::<HEADER_LEN>() {
        let Ok((body, key)) = opener.next_frame(*header) else {
            break;
        };
        let Some((frame, next)) = rest.split_at_checked(HEADER_LEN + body) else {
            break;
        };
        let mut frame = frame.to_vec();
        if key.open_in_place(&mut frame).is_err() {
            // Closed for good: nothing after an error may open.
            assert!(opener.next_frame(*header).is_err());
            let mut again = frame.clone();
            assert!(opener.open_in_place(&mut again).is_err());
            break;
        }
        rest = next;
    }

    // As one frame.
    let mut whole = data.to_vec();
    let _ = Opener::new(&keys(), dir).open_in_place(&mut whole);

    // Sealed and opened back, in two frames.
    let mut sealer = Sealer::new(&keys(), dir);
    let mut opener = Opener::new(&keys(), dir);
    let (a, b) = data.split_at(data.len() / 2);
    for part in [a, b].into_iter().filter(|p| p.len() <= MAX_FRAME) {
        let mut frame = Vec::new();
        sealer.seal(part, &mut frame).unwrap();
        assert_eq!(opener.open_in_place(&mut frame).unwrap(), part);
    }
});
