//! The filesystem: `ops` holds the operations as plain functions over the cache, testable
//! without `/dev/fuse`; `fuse` is only the adapter that decodes kernel requests, hands the
//! ones that may touch the network to tokio, and replies; `readahead` tunes the kernel's
//! read-ahead for the mount.

pub mod error;
pub mod fuse;
pub mod ops;
pub mod readahead;

pub use error::FsError;
pub use ops::Fs;
