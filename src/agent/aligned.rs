//! Buffers placed for direct I/O: a block received from a peer lands where the block store
//! can write it to the disk past the page cache (`O_DIRECT`), without a copy.

use bytes::{Buf, BytesMut};

/// Where and how much a direct write's buffer, length and file offset must be aligned to
/// (the page size; disks ask for their logical block size, at most this).
pub const DIRECT_ALIGN: usize = 4096;

/// An empty buffer with room for `capacity` bytes, placed so that byte `at` of what is put
/// in it falls on a [`DIRECT_ALIGN`] boundary: a frame read into it carries its block where
/// the block store can write it to the disk directly.
pub fn aligned_buffer(capacity: usize, at: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(capacity + DIRECT_ALIGN);
    let misalign = (buf.as_ptr() as usize + at) % DIRECT_ALIGN;
    let pad = (DIRECT_ALIGN - misalign) % DIRECT_ALIGN;
    buf.resize(pad, 0);
    buf.advance(pad);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aligned_buffer_puts_the_chosen_byte_on_a_boundary() {
        for at in [
            0,
            1,
            10,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            3 * DIRECT_ALIGN + 7,
        ] {
            let mut buf = aligned_buffer(1 << 16, at);
            assert!(buf.is_empty());
            assert!(buf.capacity() >= 1 << 16, "room for what was asked");
            buf.resize(at + 1, 0);
            assert_eq!(buf[at..].as_ptr() as usize % DIRECT_ALIGN, 0, "at {at}");
        }
    }
}
