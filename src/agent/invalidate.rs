//! Telling the kernel to drop what it cached about names and inodes that changed under it
//! (a change from another device, a conflict copy renamed). The FUSE adapter implements
//! it with the session's notifier; tests record the calls.

/// Tells the kernel to drop what it cached.
pub trait Invalidator: Send + Sync {
    /// Forget the name `name` under directory `parent` (and the parent's cached listing).
    fn entry(&self, parent: u64, name: &str);
    /// Forget the attributes and cached pages of `ino`.
    fn inode(&self, ino: u64);
}

/// Records what it is told, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<String>>);

#[cfg(test)]
impl Recorder {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[cfg(test)]
impl Invalidator for Recorder {
    fn entry(&self, parent: u64, name: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("entry {parent} {name}"));
    }
    fn inode(&self, ino: u64) {
        self.0.lock().unwrap().push(format!("inode {ino}"));
    }
}
