//! Staging files: where a file's writes wait until a commit cuts them into blocks. On a
//! plain cache one is an ordinary file. On a sealed cache it is a run of sealed chunks of
//! `CHUNK` bytes each (the last may be shorter), each in a slot of `CHUNK + OVERHEAD`
//! bytes, bound to the file and its place: a write seals again the chunks it touches, and
//! the length shows in the last slot's. Writes and reads of one sealed file take turns, so
//! a read never sees a chunk half written.

use super::Cache;
use crate::crypto::seal::{CacheKey, OVERHEAD};
use rand::Rng;
use std::io::{Error, ErrorKind, Result};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

/// The plaintext of one sealed chunk.
const CHUNK: u64 = 64 * 1024;
/// A chunk's slot on disk.
const SLOT: u64 = CHUNK + OVERHEAD as u64;

/// One staging file.
#[derive(Debug)]
pub enum StagingFile {
    Plain(std::fs::File),
    Sealed(Sealed),
}

pub struct Sealed {
    file: std::fs::File,
    key: Arc<CacheKey>,
    /// Names this file in each chunk's seal, so no chunk moves to another file.
    id: u64,
    turns: RwLock<()>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A new, empty staging file for `ino`, sealed if the cache is.
    pub fn create_staging(&self, ino: u64) -> Result<StagingFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.staging_path(ino))?;
        Ok(match &self.seal {
            Some(key) => StagingFile::Sealed(Sealed {
                file,
                key: Arc::clone(key),
                id: rand::rng().next_u64(),
                turns: RwLock::new(()),
            }),
            None => StagingFile::Plain(file),
        })
    }
}

impl StagingFile {
    /// Reads at `offset` into `buf`; fewer bytes at the end of the file, none past it.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        match self {
            StagingFile::Plain(f) => f.read_at(buf, offset),
            StagingFile::Sealed(s) => s.read_at(buf, offset),
        }
    }

    pub fn write_all_at(&self, data: &[u8], offset: u64) -> Result<()> {
        match self {
            StagingFile::Plain(f) => f.write_all_at(data, offset),
            StagingFile::Sealed(s) => s.write_all_at(data, offset),
        }
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        match self {
            StagingFile::Plain(f) => f.set_len(len),
            StagingFile::Sealed(s) => {
                let _w = s.turns.write().unwrap_or_else(|p| p.into_inner());
                s.resize(len)
            }
        }
    }

    /// `fallocate(2)` of `offset..offset + len`; `keep_size`: reserve only. A sealed file
    /// reserves nothing ahead (its chunks are written whole when written), and grows.
    pub fn allocate(&self, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        match self {
            StagingFile::Plain(f) => {
                let mode = match keep_size {
                    true => rustix::fs::FallocateFlags::KEEP_SIZE,
                    false => rustix::fs::FallocateFlags::empty(),
                };
                rustix::fs::fallocate(f, mode, offset, len).map_err(Error::from)
            }
            StagingFile::Sealed(_) if keep_size => Ok(()),
            StagingFile::Sealed(s) => {
                let _w = s.turns.write().unwrap_or_else(|p| p.into_inner());
                let end = offset.saturating_add(len);
                match s.len()? < end {
                    true => s.resize(end),
                    false => Ok(()),
                }
            }
        }
    }

    /// The plain file, for what only a plain cache does (passthrough views).
    pub fn plain(&self) -> Option<&std::fs::File> {
        match self {
            StagingFile::Plain(f) => Some(f),
            StagingFile::Sealed(_) => None,
        }
    }
}

impl Sealed {
    /// The plaintext length, from the file's: whole slots, and what the last one holds.
    fn len(&self) -> Result<u64> {
        let on_disk = self.file.metadata()?.len();
        let last = on_disk % SLOT;
        Ok(on_disk / SLOT * CHUNK + last.saturating_sub(OVERHEAD as u64))
    }

    fn aad(&self, chunk: u64) -> [u8; 16] {
        let mut aad = [0u8; 16];
        aad[..8].copy_from_slice(&self.id.to_be_bytes());
        aad[8..].copy_from_slice(&chunk.to_be_bytes());
        aad
    }

    /// Chunk `i`'s plaintext (empty past the end).
    fn chunk(&self, i: u64) -> Result<Vec<u8>> {
        let mut slot = vec![0u8; SLOT as usize];
        let mut filled = 0;
        while filled < slot.len() {
            let n = self
                .file
                .read_at(&mut slot[filled..], i * SLOT + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(Vec::new());
        }
        slot.truncate(filled);
        self.key
            .open(&self.aad(i), &slot)
            .map_err(|e| Error::new(ErrorKind::InvalidData, e))
    }

    fn put_chunk(&self, i: u64, plain: &[u8]) -> Result<()> {
        self.file
            .write_all_at(&self.key.seal(&self.aad(i), plain), i * SLOT)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let _r = self.turns.read().unwrap_or_else(|p| p.into_inner());
        let len = self.len()?;
        let end = len.min(offset.saturating_add(buf.len() as u64));
        let mut at = offset;
        while at < end {
            let i = at / CHUNK;
            let chunk = self.chunk(i)?;
            let from = (at - i * CHUNK) as usize;
            let to = chunk.len().min((end - i * CHUNK) as usize);
            if from >= to {
                break;
            }
            let done = (at - offset) as usize;
            buf[done..done + to - from].copy_from_slice(&chunk[from..to]);
            at += (to - from) as u64;
        }
        Ok(at.saturating_sub(offset) as usize)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let _w = self.turns.write().unwrap_or_else(|p| p.into_inner());
        if self.len()? < offset {
            self.resize(offset)?;
        }
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let i = at / CHUNK;
            let start = i * CHUNK;
            let to = end.min(start + CHUNK);
            let mut chunk = match (at == start, to == start + CHUNK) {
                // A whole chunk written: nothing of the old one stays.
                (true, true) => Vec::with_capacity(CHUNK as usize),
                _ => self.chunk(i)?,
            };
            let (from, upto) = ((at - start) as usize, (to - start) as usize);
            if chunk.len() < upto {
                chunk.resize(upto, 0);
            }
            chunk[from..upto]
                .copy_from_slice(&data[(at - offset) as usize..(to - offset) as usize]);
            self.put_chunk(i, &chunk)?;
            at = to;
        }
        Ok(())
    }

    /// Sets the plaintext length: cuts the last chunk kept, or fills with zeros up to it.
    /// The caller holds the write turn.
    fn resize(&self, len: u64) -> Result<()> {
        let old = self.len()?;
        if len < old {
            let (i, keep) = (len / CHUNK, (len % CHUNK) as usize);
            let mut last = match keep {
                0 => Vec::new(),
                _ => self.chunk(i)?,
            };
            self.file.set_len(i * SLOT)?;
            if keep > 0 {
                last.truncate(keep);
                self.put_chunk(i, &last)?;
            }
        } else {
            let mut at = old;
            while at < len {
                let i = at / CHUNK;
                let upto = len.min((i + 1) * CHUNK) - i * CHUNK;
                let mut chunk = self.chunk(i)?;
                chunk.resize(upto as usize, 0);
                self.put_chunk(i, &chunk)?;
                at = i * CHUNK + upto;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(dir: &std::path::Path) -> StagingFile {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("s"))
            .unwrap();
        StagingFile::Sealed(Sealed {
            file,
            key: Arc::new(CacheKey::generate().0),
            id: 7,
            turns: RwLock::new(()),
        })
    }

    fn read_all(f: &StagingFile) -> Vec<u8> {
        let mut out = vec![0u8; 1 << 20];
        let n = f.read_at(&mut out, 0).unwrap();
        out.truncate(n);
        out
    }

    /// A sealed staging file reads back what a plain one would, through writes across
    /// chunk borders, past the end, over holes, and resizes either way; and its file on
    /// disk shows none of it.
    #[test]
    fn a_sealed_staging_file_acts_as_a_plain_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = sealed(dir.path());
        let mut model: Vec<u8> = Vec::new();
        let write = |model: &mut Vec<u8>, at: usize, data: &[u8]| {
            if model.len() < at + data.len() {
                model.resize(at + data.len(), 0);
            }
            model[at..at + data.len()].copy_from_slice(data);
        };
        let marker = b"qmarkerq-staging";
        let ops: Vec<(usize, Vec<u8>)> = vec![
            (0, marker.repeat(10)),
            (65_530, marker.repeat(2)),
            (200_000, vec![9; 70_000]),
            (3, b"over".to_vec()),
            (131_072, vec![5; 65_536]),
        ];
        for (at, data) in &ops {
            f.write_all_at(data, *at as u64).unwrap();
            write(&mut model, *at, data);
            assert_eq!(read_all(&f), model, "after a write at {at}");
        }
        let mut some = vec![0u8; 100];
        assert_eq!(f.read_at(&mut some, 65_500).unwrap(), 100);
        assert_eq!(&some[..], &model[65_500..65_600]);
        for len in [150_000, 150_001, 131_072, 10, 0, 70_000] {
            f.set_len(len as u64).unwrap();
            model.resize(len, 0);
            assert_eq!(read_all(&f), model, "after set_len({len})");
        }
        f.allocate(100_000, 5, false).unwrap();
        model.resize(100_005, 0);
        assert_eq!(read_all(&f), model);
        f.write_all_at(marker, 0).unwrap();
        let on_disk = std::fs::read(dir.path().join("s")).unwrap();
        assert!(memchr::memmem::find(&on_disk, b"qmarkerq").is_none());
    }

    #[test]
    fn a_chunk_changed_on_disk_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = sealed(dir.path());
        f.write_all_at(&[1u8; 100], 0).unwrap();
        let path = dir.path().join("s");
        let mut on_disk = std::fs::read(&path).unwrap();
        on_disk[40] ^= 1;
        std::fs::write(&path, on_disk).unwrap();
        let mut buf = [0u8; 10];
        let err = f.read_at(&mut buf, 0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
    }
}
