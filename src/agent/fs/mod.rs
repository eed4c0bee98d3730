//! The filesystem: [`Fs`] holds every operation as a method over the cache, testable
//! without `/dev/fuse` (`ops` the namespace and attributes, `content` reading and writing
//! files, `attr` the values `stat` and `statfs` report). `fuse` is only the adapter that
//! decodes kernel requests, hands the ones that may touch the network to tokio, and
//! replies; `iomode` keeps which opens the kernel serves by passthrough. `pins` holds pins
//! and the states a file manager shows; `readahead` holds the agent's read-ahead window per
//! open file and raises the kernel's for the mount.

pub mod attr;
pub mod content;
pub mod error;
pub mod fuse;
pub mod iomode;
#[cfg(test)]
mod model;
#[cfg(test)]
mod model_ops;
pub mod ops;
pub mod pins;
pub mod readahead;
#[cfg(test)]
mod tests;

pub use attr::{Attr, Owner, SetAttr, StatFs, TimeSet};
pub use content::{Allocate, Closing, Opened};
pub use error::FsError;
pub use ops::{DirEntry, Fs};
pub use pins::{FileState, OnDevice, PinRound};
