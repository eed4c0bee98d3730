//! How each open of a file is served, within the kernel's rule for FUSE passthrough
//! (fs/fuse/iomode.c): while an inode has a passthrough open, every other open of it must be
//! a passthrough to the same backing file, and while it has an open through the page cache,
//! none may be a passthrough; an open that breaks the rule fails with EIO in the program
//! that made it.
//!
//! [`IoModes`] keeps, per inode, which of the two it is in and how many opens hold it, and
//! picks each new open's way to stay within the rule: an inode with no open enters
//! passthrough with a reader of a view, or the page cache with anything else; later opens,
//! writers too, join the mode it is in. It counts an open until its `release`, which the
//! kernel sends after it let go of the open itself, so it never believes an inode free
//! while the kernel does not.

use std::collections::HashMap;
use std::sync::Arc;

/// How an open is served.
#[derive(Debug)]
pub enum Serve<B> {
    /// By the agent, through the kernel's page cache.
    Cached,
    /// By the kernel from a backing file (a view), without the agent.
    Passthrough(Arc<B>),
}

#[derive(Debug)]
enum Mode<B> {
    Cached,
    Passthrough(Arc<B>),
}

#[derive(Debug)]
struct Inode<B> {
    mode: Mode<B>,
    opens: u64,
}

/// The inodes with opens that count for the rule, and each counted open's inode.
#[derive(Debug)]
pub struct IoModes<B> {
    inodes: HashMap<u64, Inode<B>>,
    handles: HashMap<u64, u64>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        Self {
            inodes: HashMap::new(),
            handles: HashMap::new(),
        }
    }
}

impl<B> IoModes<B> {
    /// A new open of `ino` for writing (or a created file), counted now: it joins the mode
    /// the inode is in, else the page cache. Its handle is given by [`IoModes::bind`] once
    /// made, or the count taken back by [`IoModes::cancel`].
    pub fn open_writer(&mut self, ino: u64) -> Serve<B> {
        match self.inodes.get_mut(&ino) {
            Some(i) => {
                i.opens += 1;
                i.mode.serve()
            }
            None => self.enter(ino, Mode::Cached),
        }
    }

    /// A new open `fh` of `ino` for reading: it joins the mode the inode is in; an inode
    /// with no open enters passthrough if `register` makes a backing file of a view of its
    /// content (`None`: no view, or the kernel refused it), else the page cache.
    pub fn open_reader(
        &mut self,
        ino: u64,
        fh: u64,
        register: impl FnOnce() -> Option<B>,
    ) -> Serve<B> {
        let serve = match self.inodes.get_mut(&ino) {
            Some(i) => {
                i.opens += 1;
                i.mode.serve()
            }
            None => match register() {
                Some(b) => self.enter(ino, Mode::Passthrough(Arc::new(b))),
                None => self.enter(ino, Mode::Cached),
            },
        };
        self.handles.insert(fh, ino);
        serve
    }

    /// The open of `ino` counted by [`IoModes::open_writer`] is handle `fh`.
    pub fn bind(&mut self, ino: u64, fh: u64) {
        self.handles.insert(fh, ino);
    }

    /// The open of `ino` counted by [`IoModes::open_writer`] failed.
    pub fn cancel(&mut self, ino: u64) {
        self.let_go(ino);
    }

    /// `release` of `fh`: the inode leaves its mode with its last counted open (and a
    /// backing file is let go of).
    pub fn release(&mut self, fh: u64) {
        if let Some(ino) = self.handles.remove(&fh) {
            self.let_go(ino);
        }
    }

    /// The backing file `ino`'s opens are served from, if it is in passthrough.
    pub fn passthrough_of(&self, ino: u64) -> Option<Arc<B>> {
        match self.inodes.get(&ino).map(|i| &i.mode) {
            Some(Mode::Passthrough(b)) => Some(Arc::clone(b)),
            _ => None,
        }
    }

    /// Whether `ino` has no counted open (a reader now may enter passthrough).
    pub fn is_free(&self, ino: u64) -> bool {
        !self.inodes.contains_key(&ino)
    }

    fn enter(&mut self, ino: u64, mode: Mode<B>) -> Serve<B> {
        let serve = mode.serve();
        self.inodes.insert(ino, Inode { mode, opens: 1 });
        serve
    }

    fn let_go(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.opens -= 1;
            if i.opens == 0 {
                self.inodes.remove(&ino);
            }
        }
    }
}

impl<B> Mode<B> {
    fn serve(&self) -> Serve<B> {
        match self {
            Mode::Cached => Serve::Cached,
            Mode::Passthrough(b) => Serve::Passthrough(Arc::clone(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Opens `fh` of `ino` for reading with a view to offer; a backing file registered is
    /// numbered by `registered`.
    fn read(m: &mut IoModes<u64>, ino: u64, fh: u64, registered: &AtomicU64) -> Serve<u64> {
        m.open_reader(ino, fh, || {
            Some(registered.fetch_add(1, Ordering::SeqCst) + 1)
        })
    }

    fn backing(s: Serve<u64>) -> Option<u64> {
        match s {
            Serve::Passthrough(b) => Some(*b),
            Serve::Cached => None,
        }
    }

    #[test]
    fn readers_share_one_backing_file_until_the_last_release() {
        let reg = AtomicU64::new(0);
        let mut m = IoModes::default();
        assert_eq!(backing(read(&mut m, 7, 1, &reg)), Some(1));
        assert_eq!(backing(read(&mut m, 7, 2, &reg)), Some(1));
        assert_eq!(reg.load(Ordering::SeqCst), 1, "registered once");
        m.release(1);
        assert_eq!(m.passthrough_of(7).map(|b| *b), Some(1));
        m.release(2);
        assert!(m.is_free(7));
        assert!(m.passthrough_of(7).is_none());
        // Free again: the next reader registers anew.
        assert_eq!(backing(read(&mut m, 7, 3, &reg)), Some(2));
    }

    #[test]
    fn a_writer_beside_passthrough_readers_joins_their_backing_file() {
        let reg = AtomicU64::new(0);
        let mut m = IoModes::default();
        assert_eq!(backing(read(&mut m, 7, 1, &reg)), Some(1));
        assert_eq!(backing(m.open_writer(7)), Some(1));
        m.bind(7, 2);
        m.release(1);
        assert!(!m.is_free(7), "the writer holds the inode");
        assert_eq!(backing(read(&mut m, 7, 3, &reg)), Some(1));
        m.release(2);
        m.release(3);
        assert!(m.is_free(7));
        assert!(matches!(m.open_writer(7), Serve::Cached));
    }

    #[test]
    fn no_passthrough_while_the_page_cache_serves_an_open() {
        let reg = AtomicU64::new(0);
        let mut m = IoModes::default();
        assert!(matches!(m.open_writer(7), Serve::Cached));
        m.bind(7, 1);
        assert!(matches!(read(&mut m, 7, 2, &reg), Serve::Cached));
        assert_eq!(reg.load(Ordering::SeqCst), 0, "nothing registered");
        m.release(1);
        m.release(2);
        assert_eq!(backing(read(&mut m, 7, 3, &reg)), Some(1));
    }

    #[test]
    fn a_writer_that_failed_to_open_holds_nothing() {
        let reg = AtomicU64::new(0);
        let mut m = IoModes::default();
        assert!(matches!(m.open_writer(7), Serve::Cached));
        m.cancel(7);
        assert!(m.is_free(7));
        assert_eq!(backing(read(&mut m, 7, 1, &reg)), Some(1));
    }

    #[test]
    fn a_backing_file_the_kernel_refuses_leaves_the_reader_cached() {
        let mut m: IoModes<u64> = IoModes::default();
        assert!(matches!(m.open_reader(7, 1, || None), Serve::Cached));
        assert!(matches!(m.open_writer(7), Serve::Cached));
    }

    #[test]
    fn other_inodes_and_unknown_handles_are_their_own() {
        let reg = AtomicU64::new(0);
        let mut m = IoModes::default();
        assert!(matches!(m.open_writer(8), Serve::Cached));
        m.bind(8, 1);
        assert!(backing(read(&mut m, 7, 2, &reg)).is_some());
        m.release(99);
        assert!(!m.is_free(7));
        assert!(!m.is_free(8));
    }
}
