//! The device agent: keeps a local view of the user's mesh (metadata and blocks in a cache),
//! serves it through FUSE, follows the change feed and pushes local writes to the cloud.
//!
//! Inside, the arrows point one way: `fs` → `cache`, `fetch`, `journal`, `invalidate`;
//! `feed` and `uploader` → `cache`, `remote`, `invalidate` (and `journal`, the uploader);
//! `fetch` → `cache`; `peer` → `remote` and traits of its own (`Shelf`). Nothing but
//! `mount`, which wires the parts together, imports `fs` (tests aside).

pub mod aligned;
pub mod cache;
pub mod client;
pub mod config;
pub mod evictor;
pub mod feed;
pub mod fetch;
pub mod fs;
pub mod home;
pub mod invalidate;
pub mod journal;
pub mod metrics;
pub mod mount;
pub mod peer;
pub mod remote;
pub mod secrets;
pub mod status;
#[cfg(test)]
pub mod testkit;
pub mod uploader;
