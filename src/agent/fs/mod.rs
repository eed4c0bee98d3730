//! The filesystem: `ops` holds the operations as plain functions over the cache, testable
//! without `/dev/fuse`; `fuse` is only the adapter that decodes kernel requests, hands the
//! ones that may touch the network to tokio, and replies.

pub mod error;
pub mod fuse;
pub mod ops;

pub use error::FsError;
pub use ops::Fs;
