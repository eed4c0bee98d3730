//! Copying a relayed pair inside the kernel: each direction moves what one data leg sends
//! into a pipe and from the pipe into the other leg with splice(2), so the bytes never
//! enter the relay's memory. A data leg carries only the end-to-end channel, which the
//! relay has no reason to look at.

use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use std::io::{self, ErrorKind};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes a pipe holds: a channel frame (1 MiB) and its header move in a few calls. A
/// kernel that allows less keeps its default; splicing works the same, in more calls.
const PIPE_SIZE: usize = 1 << 20;

/// Copies bytes both ways between `a` and `b` until both have closed their sending side;
/// returns the bytes each sent.
pub async fn forward(a: TcpStream, b: TcpStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(&a, &b), one_way(&b, &a))
}

/// Moves what `from` sends to `to`, then shuts `to`'s sending side down.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let _ = fcntl_setpipe_size(&pipe_in, PIPE_SIZE);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so "would block" can only mean `from` has nothing yet.
        let n = loop {
            from.readable().await?;
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, PIPE_SIZE, flags)?)
            });
            match moved {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            rustix::net::shutdown(to, Shutdown::Write)?;
            return Ok(total);
        }
        // The pipe holds `n` bytes here, so "would block" can only mean `to` is full.
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe_out, None, to, None, left, flags)?)
            });
            match moved {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets: (the device's end, the relay's end).
    async fn leg(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (dev, relay) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (dev.unwrap(), relay.unwrap().0)
    }

    #[tokio::test]
    async fn every_byte_crosses_both_ways_and_a_close_reaches_the_other_side() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut dev_a, relay_a) = leg(&listener).await;
        let (mut dev_b, relay_b) = leg(&listener).await;
        let relay = tokio::spawn(forward(relay_a, relay_b));

        // More than a pipe holds, so that the copy waits on a full socket along the way.
        let from_a: Vec<u8> = (0..9 * PIPE_SIZE as u32 + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        let sent = from_a.clone();
        let a = tokio::spawn(async move {
            dev_a.write_all(&sent).await.unwrap();
            dev_a.shutdown().await.unwrap();
            let mut back = Vec::new();
            dev_a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        dev_b.read_to_end(&mut got).await.unwrap();
        assert!(got == from_a, "B got A's bytes, then A's close");
        dev_b.write_all(b"from b").await.unwrap();
        dev_b.shutdown().await.unwrap();
        assert_eq!(a.await.unwrap(), b"from b");
        assert_eq!(
            relay.await.unwrap().unwrap(),
            (from_a.len() as u64, 6),
            "the relay counts what each side sent"
        );
    }

    #[tokio::test]
    async fn a_leg_that_goes_away_ends_the_pair_with_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (dev_a, relay_a) = leg(&listener).await;
        let (mut dev_b, relay_b) = leg(&listener).await;
        let relay = tokio::spawn(forward(relay_a, relay_b));
        drop(dev_a);
        // B goes on sending into the pair; the relay's copy to A fails and ends the pair,
        // which then fails B's writes too.
        let writer = tokio::spawn(async move {
            let block = vec![7u8; 64 * 1024];
            while dev_b.write_all(&block).await.is_ok() {}
        });
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), relay)
            .await
            .expect("the pair ends");
        assert!(ended.unwrap().is_err(), "with the error of the broken leg");
        tokio::time::timeout(std::time::Duration::from_secs(30), writer)
            .await
            .expect("B's writes fail once the pair is gone")
            .unwrap();
    }
}
