//! The filesystem: `ops` holds the operations as plain functions over the cache, testable
//! without `/dev/fuse`; `fuse` is only the adapter that decodes kernel requests, hands the
//! ones that may touch the network to tokio, and replies; `readahead` holds the agent's
//! read-ahead window per open file and raises the kernel's for the mount.

pub mod error;
pub mod fuse;
pub mod ops;
pub mod readahead;

pub use error::FsError;
pub use ops::Fs;
