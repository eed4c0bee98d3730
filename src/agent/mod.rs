//! The device agent: keeps a local view of the user's mesh (metadata and blocks in a cache),
//! serves it through FUSE, follows the change feed and pushes local writes to the cloud.
//!
//! Inside: `fs` → `cache`/`fetch`/`journal`; `feed` → `cache`; nothing imports `fs` but
//! `mount`, which wires the parts together.

pub mod aligned;
pub mod cache;
pub mod client;
pub mod feed;
pub mod fetch;
pub mod fs;
pub mod home;
pub mod invalidate;
pub mod journal;
pub mod mount;
pub mod peer;
pub mod remote;
pub mod status;
#[cfg(test)]
pub mod testkit;
pub mod uploader;
